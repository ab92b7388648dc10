// SPDX-License-Identifier: Apache-2.0
//! Which nameservers sandboxes use.
//!
//! Sandboxes use the host's own IPv4 nameservers, reached through the slot's NAT, and
//! only those get through the private-range block (port 53 only). A loopback resolver
//! (systemd-resolved's 127.0.0.53, a local dnsmasq on 127.0.0.1) is unreachable from a
//! sandbox, so it is skipped; when that leaves nothing, the upstream servers
//! systemd-resolved lists in `/run/systemd/resolve/resolv.conf` are used. When even that
//! is empty the list is empty: DNS fails inside sandboxes until the operator sets
//! `PoolConfig::dns_servers` (e.g. to a public resolver).

use std::net::Ipv4Addr;
use std::path::Path;

/// The file systemd-resolved writes with its upstream (non-stub) servers.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The usable IPv4 nameservers in resolv.conf text, in order, without duplicates.
pub(crate) fn parse(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() || out.contains(&ip) {
            continue;
        }
        out.push(ip);
    }
    out
}

/// The host's nameservers for sandboxes, read from `resolv_conf` with the fallback above.
pub(crate) fn host_nameservers(resolv_conf: &Path) -> Vec<Ipv4Addr> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| parse(&t))
            .unwrap_or_default()
    };
    let servers = read(resolv_conf);
    if servers.is_empty() {
        read(Path::new(RESOLVED_UPSTREAM))
    } else {
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_ipv6_servers_are_skipped() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.255.255.53\n\
                    options edns0\nnameserver 1.1.1.1 \nnameserver 10.255.255.53\n";
        assert_eq!(
            parse(text),
            vec![Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }

    #[test]
    fn missing_file_gives_no_servers() {
        assert!(parse("").is_empty());
        assert!(host_nameservers(Path::new("/nonexistent/resolv.conf")).len() < 100);
    }
}
