// SPDX-License-Identifier: Apache-2.0
//! Pool configuration and the deterministic naming/addressing of slots.

use crate::cidr::Ipv4Cidr;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The address every guest has, in every slot (so snapshots move between slots).
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 21);
/// The guest's gateway: the router namespace's side of the guest link.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 22);
/// Prefix length of the guest link.
pub const GUEST_PREFIX: u8 = 30;
/// The guest's MAC address, in every slot.
pub const GUEST_MAC: [u8; 6] = [0x02, 0xfc, 0, 0, 0, 0x01];
/// The gateway's MAC address, in every slot: a restored VM's ARP cache stays valid.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xfc, 0, 0, 0, 0x02];
/// The interface group of every host-side slot veth, shared by all pools on a host so a
/// pool's "drop forwarding that is not Hearth's" rule spares the others.
pub const HOST_IF_GROUP: u32 = 0x6865;
/// Name of the guest's interface (container slots) and the router's uplink.
pub const ETH0: &str = "eth0";
/// Name of the router's veth facing a container guest.
pub const GUEST_VETH: &str = "veth0";
/// Name of the router's tap facing a microVM guest.
pub const TAP: &str = "tap0";

/// What kind of sandbox a slot is for. The two put the same guest subnet on different
/// devices of the router namespace, so one slot holds one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// A guest network namespace joined to the router by a veth pair.
    Container,
    /// A persistent tap `tap0` in the router namespace for QEMU's virtio-net.
    #[serde(rename = "microvm")]
    MicroVm,
}

impl SlotKind {
    pub(crate) fn slot_index(self) -> usize {
        match self {
            Self::Container => 0,
            Self::MicroVm => 1,
        }
    }
}

/// User-facing pool settings; [`PoolConfig::validate`] turns them into a [`Layout`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Names everything Hearth creates: the host nftables table `inet <name>` and the
    /// namespaces `<name>-r<idx>` / `<name>-g<idx>`. `[a-z][a-z0-9_]*`, at most 24 chars.
    pub name: String,
    /// Host-side veth names are `<ifname_prefix><idx>`. No pool's prefix may be a prefix
    /// of another's (nftables matches `<prefix>*`).
    pub ifname_prefix: String,
    /// One host-reachable /32 per slot: slot `i` is the `i`th address (index 0 unused).
    pub host_cidr: Ipv4Cidr,
    /// One /31 per slot between host and router: slot `i` uses addresses `2i`, `2i+1`.
    pub transit_cidr: Ipv4Cidr,
    /// Where namespaces are pinned (`ip netns` looks in `/run/netns`).
    pub netns_dir: PathBuf,
    /// Host-wide bookkeeping shared by pools (the saved `ip_forward` value).
    pub run_dir: PathBuf,
    /// Container slots kept ready.
    pub warm_containers: usize,
    /// MicroVM slots kept ready.
    pub warm_microvms: usize,
    /// Upper bound on slots (idle plus in use); default: what the address ranges allow.
    pub max_slots: Option<u32>,
    /// Nameservers sandboxes use; default: the host's, from `/etc/resolv.conf`.
    pub dns_servers: Option<Vec<Ipv4Addr>>,
    /// More ranges to deny from every sandbox (e.g. the host's LAN).
    pub extra_deny: Vec<Ipv4Cidr>,
    /// Uid allowed to attach to microVM taps without `CAP_NET_ADMIN` (an unprivileged QEMU).
    pub tap_owner: Option<u32>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "hearth".into(),
            ifname_prefix: "hv".into(),
            host_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 11, 0, 0), 16).expect("valid"),
            transit_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 12, 0, 0), 16).expect("valid"),
            netns_dir: PathBuf::from(hearth_sys::netns::RUN_DIR),
            run_dir: PathBuf::from("/run/hearth-net"),
            warm_containers: 8,
            warm_microvms: 0,
            max_slots: None,
            dns_servers: None,
            extra_deny: Vec::new(),
            tap_owner: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The name is not a safe nftables/namespace identifier.
    #[error("pool name {name:?} must match [a-z][a-z0-9_]* and be at most 24 chars")]
    Name {
        /// The name given.
        name: String,
    },
    /// The interface prefix leaves no room for indexes or has odd characters.
    #[error("interface prefix {prefix:?} must be 1-8 chars of [a-z0-9]")]
    IfnamePrefix {
        /// The prefix given.
        prefix: String,
    },
    /// The two ranges overlap.
    #[error("host range {host} and transit range {transit} overlap")]
    Overlap {
        /// Host-reachable range.
        host: Ipv4Cidr,
        /// Transit range.
        transit: Ipv4Cidr,
    },
    /// The ranges leave room for no slot.
    #[error("address ranges allow no slot")]
    NoRoom,
}

/// A validated configuration plus the naming and addressing rules derived from it.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub cfg: PoolConfig,
    pub max_index: u32,
}

impl PoolConfig {
    /// Checks the configuration and derives the slot layout.
    pub(crate) fn validate(self) -> Result<Layout, ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 24
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(ConfigError::Name { name: self.name });
        }
        let prefix_ok = (1..=8).contains(&self.ifname_prefix.len())
            && self
                .ifname_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !prefix_ok {
            return Err(ConfigError::IfnamePrefix {
                prefix: self.ifname_prefix,
            });
        }
        if self.host_cidr.overlaps(&self.transit_cidr) {
            return Err(ConfigError::Overlap {
                host: self.host_cidr,
                transit: self.transit_cidr,
            });
        }
        // Index 0 is unused so host addresses never end in .0 of the range; indexes
        // must also fit the 15-byte interface name with the prefix.
        let by_host = self.host_cidr.size().saturating_sub(1);
        let by_transit = (self.transit_cidr.size() / 2).saturating_sub(1);
        let digits = 15 - self.ifname_prefix.len();
        let by_name = 10u64.saturating_pow(u32::try_from(digits).expect("small")) - 1;
        let mut max = by_host
            .min(by_transit)
            .min(by_name)
            .min(u64::from(u32::MAX));
        if let Some(limit) = self.max_slots {
            max = max.min(u64::from(limit));
        }
        if max == 0 {
            return Err(ConfigError::NoRoom);
        }
        Ok(Layout {
            max_index: u32::try_from(max).expect("clamped to u32"),
            cfg: self,
        })
    }
}

/// Everything that is a pure function of a slot's index.
#[derive(Debug, Clone)]
pub(crate) struct SlotNames {
    pub index: u32,
    pub router_ns: PathBuf,
    pub guest_ns: PathBuf,
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub host_veth_addr: Ipv4Addr,
    pub router_addr: Ipv4Addr,
}

impl Layout {
    /// Names and addresses of slot `index` (1..=max_index).
    pub(crate) fn names(&self, index: u32) -> SlotNames {
        debug_assert!((1..=self.max_index).contains(&index));
        let i = u64::from(index);
        SlotNames {
            index,
            router_ns: self
                .cfg
                .netns_dir
                .join(format!("{}-r{index}", self.cfg.name)),
            guest_ns: self
                .cfg
                .netns_dir
                .join(format!("{}-g{index}", self.cfg.name)),
            host_if: format!("{}{index}", self.cfg.ifname_prefix),
            host_addr: self.cfg.host_cidr.nth(i).expect("index <= max_index"),
            host_veth_addr: self
                .cfg
                .transit_cidr
                .nth(2 * i)
                .expect("index <= max_index"),
            router_addr: self
                .cfg
                .transit_cidr
                .nth(2 * i + 1)
                .expect("index <= max_index"),
        }
    }

    /// The index encoded in a namespace file name of this pool (`<name>-r<idx>` or
    /// `<name>-g<idx>`), if it is one.
    pub(crate) fn index_of_netns(&self, file: &str) -> Option<u32> {
        let rest = file.strip_prefix(&self.cfg.name)?.strip_prefix('-')?;
        let digits = rest.strip_prefix('r').or_else(|| rest.strip_prefix('g'))?;
        parse_index(digits, self.max_index)
    }

    /// The index encoded in a host interface name of this pool, if it is one.
    pub(crate) fn index_of_ifname(&self, ifname: &str) -> Option<u32> {
        parse_index(
            ifname.strip_prefix(&self.cfg.ifname_prefix)?,
            self.max_index,
        )
    }
}

fn parse_index(digits: &str, max: u32) -> Option<u32> {
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|i| (1..=max).contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_the_e2b_shape() {
        let l = PoolConfig::default().validate().unwrap();
        let n = l.names(300);
        assert_eq!(n.host_addr, Ipv4Addr::new(10, 11, 1, 44));
        assert_eq!(n.host_veth_addr, Ipv4Addr::new(10, 12, 2, 88));
        assert_eq!(n.router_addr, Ipv4Addr::new(10, 12, 2, 89));
        assert_eq!(n.host_if, "hv300");
        assert_eq!(n.router_ns, PathBuf::from("/run/netns/hearth-r300"));
        assert_eq!(l.max_index, 32767);
    }

    #[test]
    fn names_parse_back_to_indexes() {
        let l = PoolConfig::default().validate().unwrap();
        assert_eq!(l.index_of_netns("hearth-r12"), Some(12));
        assert_eq!(l.index_of_netns("hearth-g7"), Some(7));
        assert_eq!(l.index_of_netns("hearth-x7"), None);
        assert_eq!(l.index_of_netns("hearthy-r7"), None);
        assert_eq!(l.index_of_netns("hearth-r007"), None);
        assert_eq!(l.index_of_netns("hearth-r0"), None);
        assert_eq!(l.index_of_ifname("hv42"), Some(42));
        assert_eq!(l.index_of_ifname("hva42"), None);
        assert_eq!(l.index_of_ifname("hv99999999"), None);
    }

    #[test]
    fn bad_names_and_overlaps_are_refused() {
        let bad = |f: fn(&mut PoolConfig)| {
            let mut c = PoolConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.name = "Hearth".into()),
            ConfigError::Name { .. }
        ));
        assert!(matches!(
            bad(|c| c.name = "a b".into()),
            ConfigError::Name { .. }
        ));
        assert!(matches!(
            bad(|c| c.ifname_prefix = "hv-".into()),
            ConfigError::IfnamePrefix { .. }
        ));
        assert!(matches!(
            bad(|c| c.transit_cidr = "10.11.128.0/17".parse().unwrap()),
            ConfigError::Overlap { .. }
        ));
        assert!(matches!(
            bad(|c| c.max_slots = Some(0)),
            ConfigError::NoRoom
        ));
    }
}
