// SPDX-License-Identifier: Apache-2.0
//! The nftables rules of a pool, rendered as `nft` scripts and applied atomically.
//!
//! Host table `inet <name>` (one per pool):
//! - `prerouting`: drop IPv6 and spoofed sources from slot veths (reverse-path check).
//! - `input`: from slot veths only established/related traffic and DNS to the
//!   nameservers get in; everything else aimed at the host (any of its addresses, any
//!   port: the API included) is rejected.
//! - `forward`: nothing new is forwarded *into* a slot; traffic *from* a slot goes
//!   through `egress` (see [`crate::EgressPolicy`] for the order); when the host did not
//!   forward before Hearth, forwarding between non-Hearth interfaces stays dropped.
//! - `postrouting`: masquerade slot traffic leaving through any non-slot interface.
//! - sets keyed by the slot's host address (`dns_blocked`, `allow_out`, `deny_out`), so
//!   one slot's policy is a few element changes in one transaction.
//!
//! Router table `inet hearth` (one per router namespace): DNAT host address → guest,
//! SNAT guest → host address, forward only that (with anti-spoofing), accept nothing
//! addressed to the router itself but ping.

use crate::cidr::{Ipv4Cidr, collapse};
use crate::config::{ETH0, GUEST_ADDR, HOST_IF_GROUP, Layout};
use crate::policy::EgressPolicy;
use hearth_sys::cmd::{CmdError, execute_with_stdin};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;

/// Ranges no sandbox may reach (IPv4; slots carry no IPv6 at all).
const ALWAYS_DENY: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// The name of the table inside each router namespace.
pub(crate) const ROUTER_TABLE: &str = "hearth";

/// Runs an `nft` script as one transaction in the calling thread's namespace.
pub(crate) fn apply(script: &str) -> Result<(), CmdError> {
    execute_with_stdin(Command::new("nft").args(["-f", "-"]), script.as_bytes()).map(|_| ())
}

/// Inputs for the host table.
#[derive(Debug)]
pub(crate) struct HostTable<'a> {
    pub layout: &'a Layout,
    pub nameservers: &'a [Ipv4Addr],
    /// Drop forwarding between non-Hearth interfaces (the host did not forward before).
    pub contain_forwarding: bool,
    /// Policies of slots that already exist (re-adopted), by host address.
    pub policies: &'a [(Ipv4Addr, EgressPolicy)],
}

fn set_elements(out: &mut String, items: impl IntoIterator<Item = String>) {
    let items: Vec<String> = items.into_iter().collect();
    if !items.is_empty() {
        let _ = write!(out, " elements = {{ {} }};", items.join(", "));
    }
}

impl HostTable<'_> {
    /// The always-denied ranges of this pool, collapsed.
    fn deny_list(&self) -> Vec<Ipv4Cidr> {
        let cfg = &self.layout.cfg;
        let mut list: Vec<Ipv4Cidr> = ALWAYS_DENY
            .iter()
            .map(|&(a, l)| Ipv4Cidr::new(a, l).expect("constant ranges are valid"))
            .chain([cfg.host_cidr, cfg.transit_cidr])
            .chain(cfg.extra_deny.iter().copied())
            .collect();
        collapse(&mut list);
        list
    }

    /// A script that atomically replaces the table (creating it if absent).
    pub(crate) fn render(&self) -> String {
        let cfg = &self.layout.cfg;
        let t = &cfg.name;
        let hv = format!("\"{}*\"", cfg.ifname_prefix);
        let mut s = String::with_capacity(4096);
        // `add` makes the `delete` valid when the table does not exist yet; all three are
        // one transaction, so there is no instant without the rules.
        let _ = writeln!(
            s,
            "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
        );
        let _ = write!(s, "  set always_deny {{ type ipv4_addr; flags interval;");
        set_elements(&mut s, self.deny_list().iter().map(ToString::to_string));
        let _ = writeln!(s, " }}");
        let _ = write!(s, "  set dns_servers {{ type ipv4_addr;");
        set_elements(&mut s, self.nameservers.iter().map(ToString::to_string));
        let _ = writeln!(s, " }}");
        let _ = writeln!(s, "  set dns_blocked {{ type ipv4_addr; }}");
        let _ = writeln!(
            s,
            "  set allow_out {{ type ipv4_addr . ipv4_addr; flags interval; }}"
        );
        let _ = writeln!(
            s,
            "  set deny_out {{ type ipv4_addr . ipv4_addr; flags interval; }}"
        );
        let _ = writeln!(
            s,
            "  chain prerouting {{ type filter hook prerouting priority raw; policy accept;\n\
             \x20   iifname {hv} meta nfproto ipv6 drop\n\
             \x20   iifname {hv} fib saddr . iif oif missing drop\n  }}"
        );
        let dns = "ip daddr @dns_servers meta l4proto { tcp, udp } th dport 53 \
                   ip saddr != @dns_blocked accept";
        let _ = writeln!(
            s,
            "  chain input {{ type filter hook input priority filter; policy accept;\n\
             \x20   iifname != {hv} accept\n\
             \x20   ct state established,related accept\n\
             \x20   {dns}\n\
             \x20   reject with icmpx admin-prohibited\n  }}"
        );
        let _ = write!(
            s,
            "  chain forward {{ type filter hook forward priority filter; policy accept;\n\
             \x20   oifname {hv} ct state established,related accept\n\
             \x20   oifname {hv} reject with icmpx admin-prohibited\n\
             \x20   iifname {hv} jump egress\n"
        );
        if self.contain_forwarding {
            let _ = writeln!(
                s,
                "    iifgroup != {HOST_IF_GROUP} oifgroup != {HOST_IF_GROUP} drop"
            );
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  chain egress {{\n\
             \x20   ct state established,related accept\n\
             \x20   {dns}\n\
             \x20   ip daddr @always_deny reject with icmpx admin-prohibited\n\
             \x20   ip saddr . ip daddr @allow_out accept\n\
             \x20   ip saddr . ip daddr @deny_out reject with icmpx admin-prohibited\n\
             \x20   accept\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   ip saddr {} oifname != {hv} masquerade\n  }}\n}}",
            cfg.host_cidr
        );
        for (addr, policy) in self.policies {
            s.push_str(&policy_script(t, *addr, policy, PolicyOp::Add));
        }
        s
    }
}

/// A script deleting the host table (absent or not).
pub(crate) fn delete_host_table(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// Whether a policy's elements are being added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyOp {
    Add,
    Delete,
}

/// Statements adding or deleting the elements `policy` needs for the slot at `addr`.
/// Empty for the default policy. `policy` must be normalized.
pub(crate) fn policy_script(
    table: &str,
    addr: Ipv4Addr,
    policy: &EgressPolicy,
    op: PolicyOp,
) -> String {
    let verb = match op {
        PolicyOp::Add => "add",
        PolicyOp::Delete => "delete",
    };
    let mut s = String::new();
    if !policy.allow_dns {
        let _ = writeln!(s, "{verb} element inet {table} dns_blocked {{ {addr} }}");
    }
    for (set, list) in [
        ("allow_out", &policy.allow_out),
        ("deny_out", &policy.deny_out),
    ] {
        if list.is_empty() {
            continue;
        }
        let items: Vec<String> = list.iter().map(|c| format!("{addr} . {c}")).collect();
        let _ = writeln!(
            s,
            "{verb} element inet {table} {set} {{ {} }}",
            items.join(", ")
        );
    }
    s
}

/// The router namespace's table for a slot whose host address is `host_addr` and whose
/// guest sits behind `guest_if`.
pub(crate) fn router_script(host_addr: Ipv4Addr, guest_if: &str) -> String {
    format!(
        "table inet {ROUTER_TABLE} {{\n\
         \x20 chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   iifname \"{ETH0}\" ip daddr {host_addr} dnat ip to {GUEST_ADDR}\n  }}\n\
         \x20 chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"{ETH0}\" ip saddr {GUEST_ADDR} snat ip to {host_addr}\n  }}\n\
         \x20 chain forward {{ type filter hook forward priority filter; policy drop;\n\
         \x20   ct state established,related accept\n\
         \x20   iifname \"{ETH0}\" oifname \"{guest_if}\" ct status dnat accept\n\
         \x20   iifname \"{guest_if}\" oifname \"{ETH0}\" ip saddr {GUEST_ADDR} accept\n  }}\n\
         \x20 chain input {{ type filter hook input priority filter; policy drop;\n\
         \x20   iif lo accept\n\
         \x20   ct state established,related accept\n\
         \x20   icmp type echo-request limit rate 10/second accept\n  }}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    #[test]
    fn host_table_denies_pool_ranges_without_overlaps() {
        let layout = PoolConfig::default().validate().unwrap();
        let t = HostTable {
            layout: &layout,
            nameservers: &[Ipv4Addr::new(10, 255, 255, 53)],
            contain_forwarding: true,
            policies: &[],
        };
        let s = t.render();
        // 10.11/16 and 10.12/16 collapse into 10/8.
        assert!(s.contains("10.0.0.0/8"), "{s}");
        assert!(!s.contains("10.11.0.0/16,"), "{s}");
        assert!(s.contains("elements = { 10.255.255.53 }"), "{s}");
        assert!(s.contains("iifgroup != 26725"), "{s}");
        assert!(s.starts_with("add table inet hearth\ndelete table inet hearth\n"));
    }

    #[test]
    fn empty_nameservers_leave_the_set_empty() {
        let layout = PoolConfig::default().validate().unwrap();
        let t = HostTable {
            layout: &layout,
            nameservers: &[],
            contain_forwarding: false,
            policies: &[],
        };
        let s = t.render();
        assert!(s.contains("set dns_servers { type ipv4_addr; }"), "{s}");
        assert!(!s.contains("iifgroup"), "{s}");
    }

    #[test]
    fn default_policy_needs_no_statements() {
        let a = Ipv4Addr::new(10, 11, 0, 5);
        assert!(policy_script("hearth", a, &EgressPolicy::default(), PolicyOp::Add).is_empty());
    }

    #[test]
    fn policy_elements_are_keyed_by_slot_address() {
        let a = Ipv4Addr::new(10, 11, 0, 5);
        let mut p = EgressPolicy::no_internet();
        p.allow_out = vec!["1.2.3.0/24".parse().unwrap()];
        p.allow_dns = false;
        let s = policy_script("hearth", a, &p, PolicyOp::Delete);
        assert_eq!(
            s,
            "delete element inet hearth dns_blocked { 10.11.0.5 }\n\
             delete element inet hearth allow_out { 10.11.0.5 . 1.2.3.0/24 }\n\
             delete element inet hearth deny_out { 10.11.0.5 . 0.0.0.0/0 }\n"
        );
    }
}
