// SPDX-License-Identifier: Apache-2.0
//! One slot: building it, checking it is clean, scrubbing its state, tearing it down.
//!
//! ```text
//!  host ns                 router ns <name>-r<i>                 guest ns <name>-g<i>
//!  hv<i> 10.12.x.2i/31 ─── eth0 10.12.x.2i+1/31                  (container slots)
//!  route <host_addr>/32    veth0 169.254.0.22/30 ──────────────── eth0 169.254.0.21/30
//!    via router eth0       (or tap0 169.254.0.22/30: microVM)    default via .22
//!                          DNAT <host_addr> → .21, SNAT back
//! ```

use crate::config::{
    ETH0, GATEWAY_ADDR, GATEWAY_MAC, GUEST_ADDR, GUEST_MAC, GUEST_PREFIX, GUEST_VETH,
    HOST_IF_GROUP, Layout, SlotKind, SlotNames, TAP,
};
use crate::conntrack::{self, Side};
use crate::netlink::{Batch, NetlinkError, Socket};
use crate::{nft, rtnl};
use hearth_sys::cmd::CmdError;
use hearth_sys::netns::{self, NetnsError};
use hearth_sys::tun::{TapOptions, create_persistent_tap};
use nix::sys::socket::SockProtocol;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Fixed ifindexes inside the namespaces we create (each has its own index space).
const LO_INDEX: i32 = 1;
const ETH0_INDEX: i32 = 2;
const VETH_INDEX: i32 = 3;

/// A network slot handed to a sandbox runtime.
///
/// The runtime joins [`Slot::guest_netns`] (containers; before creating a user
/// namespace, since the namespace belongs to the host's user namespace) or starts QEMU
/// inside [`Slot::router_netns`] attached to [`Slot::tap`] (microVMs). The host reaches
/// the guest at `host_addr:<port>`; the guest sees `guest_addr/30` via `gateway`.
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    /// Slot index (names and addresses derive from it).
    pub index: u32,
    /// What the slot is built for.
    pub kind: SlotKind,
    /// The address the host uses to reach the guest (DNAT to `guest_addr`).
    pub host_addr: Ipv4Addr,
    /// The router namespace (`/run/netns/<name>-r<idx>`).
    pub router_netns: PathBuf,
    /// The guest namespace a container joins (container slots only).
    pub guest_netns: Option<PathBuf>,
    /// The tap device inside the router namespace (microVM slots only).
    pub tap: Option<String>,
    /// The guest's address, the same in every slot.
    pub guest_addr: Ipv4Addr,
    /// The guest's default gateway, the same in every slot.
    pub gateway: Ipv4Addr,
    /// Prefix length of the guest link.
    pub prefix_len: u8,
    /// The guest's MAC (set on the container's eth0; the VMM gives it to virtio-net).
    pub mac: [u8; 6],
    /// Nameservers to write into the sandbox's resolv.conf.
    pub nameservers: Vec<Ipv4Addr>,
}

impl Slot {
    pub(crate) fn new(names: &SlotNames, kind: SlotKind, nameservers: Vec<Ipv4Addr>) -> Self {
        Self {
            index: names.index,
            kind,
            host_addr: names.host_addr,
            router_netns: names.router_ns.clone(),
            guest_netns: (kind == SlotKind::Container).then(|| names.guest_ns.clone()),
            tap: (kind == SlotKind::MicroVm).then(|| TAP.to_owned()),
            guest_addr: GUEST_ADDR,
            gateway: GATEWAY_ADDR,
            prefix_len: GUEST_PREFIX,
            mac: GUEST_MAC,
            nameservers,
        }
    }

    /// The guest MAC as `02:fc:00:00:00:01`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A failed slot operation.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// A namespace could not be created, entered or removed.
    #[error("slot {index}: namespace operation failed")]
    Netns {
        /// Slot index.
        index: u32,
        /// The cause.
        #[source]
        err: NetnsError,
    },
    /// A namespace-local setting (sysctl, tap) could not be applied.
    #[error("slot {index}: failed to configure {what}")]
    Configure {
        /// Slot index.
        index: u32,
        /// What was being configured.
        what: String,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// A netlink request failed.
    #[error("slot {index}: netlink request failed")]
    Netlink {
        /// Slot index.
        index: u32,
        /// The cause.
        #[source]
        err: NetlinkError,
    },
    /// Applying nftables rules failed.
    #[error("slot {index}: nftables update failed")]
    Nft {
        /// Slot index.
        index: u32,
        /// The cause.
        #[source]
        err: CmdError,
    },
    /// The slot is not in the state it was left in: it must not be reused.
    #[error("slot {index} is dirty: {detail}")]
    Dirty {
        /// Slot index.
        index: u32,
        /// What differs.
        detail: String,
    },
}

fn write_sysctl(index: u32, path: &str, value: &str, optional: bool) -> Result<(), SlotError> {
    match std::fs::write(path, value) {
        Ok(()) => Ok(()),
        // Kernels built without IPv6 have no /proc/sys/net/ipv6.
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(SlotError::Configure {
            index,
            what: path.to_owned(),
            err,
        }),
    }
}

/// Opens a netlink socket inside the namespace pinned at `ns`.
pub(crate) fn socket_in(index: u32, ns: &Path, proto: SockProtocol) -> Result<Socket, SlotError> {
    netns::enter(ns, || Socket::open(proto))
        .map_err(|err| SlotError::Netns { index, err })?
        .map_err(|err| SlotError::Netlink { index, err })
}

fn open_ns(index: u32, path: &Path) -> Result<File, SlotError> {
    File::open(path).map_err(|err| SlotError::Netns {
        index,
        err: NetnsError::Open {
            path: path.to_owned(),
            err,
        },
    })
}

/// Builds slot `names` of `kind` from nothing. On failure everything created so far is
/// removed again.
pub(crate) fn create(layout: &Layout, names: &SlotNames, kind: SlotKind) -> Result<(), SlotError> {
    let result = build(layout, names, kind);
    if result.is_err() {
        let _ = destroy(names);
    }
    result
}

fn build(layout: &Layout, names: &SlotNames, kind: SlotKind) -> Result<(), SlotError> {
    let index = names.index;
    let nl = |err| SlotError::Netlink { index, err };
    let tap_opts = TapOptions {
        owner: layout.cfg.tap_owner,
        group: None,
        vnet_hdr: true,
    };

    // 1. Router namespace: no IPv6, forwarding on; keep a socket. (A microVM's tap is
    //    made in step 3b: the router's eth0 must be created first, at index 2.)
    let mut router = netns::create(&names.router_ns, || {
        write_sysctl(index, "/proc/sys/net/ipv6/conf/all/disable_ipv6", "1", true)?;
        write_sysctl(
            index,
            "/proc/sys/net/ipv6/conf/default/disable_ipv6",
            "1",
            true,
        )?;
        write_sysctl(index, "/proc/sys/net/ipv4/ip_forward", "1", false)?;
        Socket::open(SockProtocol::NetlinkRoute).map_err(nl)
    })
    .map_err(|err| SlotError::Netns { index, err })??;

    // 2. Guest namespace (containers): no IPv6, unprivileged ping allowed.
    let mut guest = match kind {
        SlotKind::Container => Some(
            netns::create(&names.guest_ns, || {
                write_sysctl(index, "/proc/sys/net/ipv6/conf/all/disable_ipv6", "1", true)?;
                write_sysctl(
                    index,
                    "/proc/sys/net/ipv6/conf/default/disable_ipv6",
                    "1",
                    true,
                )?;
                write_sysctl(
                    index,
                    "/proc/sys/net/ipv4/ping_group_range",
                    "0 2147483647",
                    false,
                )?;
                Socket::open(SockProtocol::NetlinkRoute).map_err(nl)
            })
            .map_err(|err| SlotError::Netns { index, err })??,
        ),
        SlotKind::MicroVm => None,
    };

    // 3. Host side: the veth pair into the router, its /31 and the host-address route.
    let router_fd = open_ns(index, &names.router_ns)?;
    let mut host = Socket::open(SockProtocol::NetlinkRoute).map_err(nl)?;
    let mut batch = Batch::default();
    batch.push(
        rtnl::new_veth(
            &rtnl::LinkSpec {
                group: Some(HOST_IF_GROUP),
                ..rtnl::LinkSpec::named(&names.host_if)
            },
            &rtnl::LinkSpec {
                index: ETH0_INDEX,
                netns: Some(router_fd.as_fd()),
                ..rtnl::LinkSpec::named(ETH0)
            },
        ),
        format!("create veth {} <-> router {ETH0}", names.host_if),
    );
    host.execute(batch).map_err(nl)?;
    let host_if_index = nix::net::if_::if_nametoindex(names.host_if.as_str())
        .map_err(|e| SlotError::Configure {
            index,
            what: format!("lookup of {}", names.host_if),
            err: e.into(),
        })
        .and_then(|i| {
            i32::try_from(i).map_err(|_| SlotError::Configure {
                index,
                what: format!("lookup of {}", names.host_if),
                err: io::ErrorKind::InvalidData.into(),
            })
        })?;
    let mut batch = Batch::default();
    // The router has IPv6 off; a link-local address on the host side would only be noise.
    batch.push(
        rtnl::set_link_up(host_if_index, None, true),
        format!("bring {} up", names.host_if),
    );
    batch.push(
        rtnl::add_addr(host_if_index, names.host_veth_addr, 31),
        format!("add {}/31 to {}", names.host_veth_addr, names.host_if),
    );
    batch.push(
        rtnl::add_route(
            Some((names.host_addr, 32)),
            names.router_addr,
            host_if_index,
        ),
        format!("route {} via {}", names.host_addr, names.router_addr),
    );
    host.execute(batch).map_err(nl)?;

    // 3b. MicroVM slots: the tap, now that eth0 holds index 2 in the router.
    let tap_index = if kind == SlotKind::MicroVm {
        let cfg = |err| SlotError::Configure {
            index,
            what: format!("tap {TAP}"),
            err,
        };
        let i = netns::enter(&names.router_ns, || {
            create_persistent_tap(TAP, tap_opts).map_err(cfg)?;
            nix::net::if_::if_nametoindex(TAP).map_err(|e| cfg(e.into()))
        })
        .map_err(|err| SlotError::Netns { index, err })??;
        Some(i32::try_from(i).map_err(|_| cfg(io::ErrorKind::InvalidData.into()))?)
    } else {
        None
    };

    // 4. Router side: uplink address and default route, the guest-facing device.
    let mut batch = Batch::default();
    batch.push(
        rtnl::set_link_up(LO_INDEX, None, false),
        "bring router lo up",
    );
    batch.push(
        rtnl::set_link_up(ETH0_INDEX, None, false),
        format!("bring router {ETH0} up"),
    );
    batch.push(
        rtnl::add_addr(ETH0_INDEX, names.router_addr, 31),
        format!("add {}/31 to router {ETH0}", names.router_addr),
    );
    batch.push(
        rtnl::add_route(None, names.host_veth_addr, ETH0_INDEX),
        "add router default route",
    );
    let guest_fd = match kind {
        SlotKind::Container => Some(open_ns(index, &names.guest_ns)?),
        SlotKind::MicroVm => None,
    };
    let guest_if_index = match (&guest_fd, tap_index) {
        (Some(fd), _) => {
            batch.push(
                rtnl::new_veth(
                    &rtnl::LinkSpec {
                        index: VETH_INDEX,
                        mac: Some(GATEWAY_MAC),
                        ..rtnl::LinkSpec::named(GUEST_VETH)
                    },
                    &rtnl::LinkSpec {
                        index: ETH0_INDEX,
                        mac: Some(GUEST_MAC),
                        netns: Some(fd.as_fd()),
                        ..rtnl::LinkSpec::named(ETH0)
                    },
                ),
                format!("create veth {GUEST_VETH} <-> guest {ETH0}"),
            );
            batch.push(
                rtnl::set_link_up(VETH_INDEX, None, false),
                format!("bring {GUEST_VETH} up"),
            );
            VETH_INDEX
        }
        (None, Some(tap)) => {
            batch.push(
                rtnl::set_link_up(tap, Some(GATEWAY_MAC), false),
                format!("bring {TAP} up"),
            );
            tap
        }
        (None, None) => unreachable!("a microVM slot always has a tap"),
    };
    batch.push(
        rtnl::add_addr(guest_if_index, GATEWAY_ADDR, GUEST_PREFIX),
        format!("add {GATEWAY_ADDR}/{GUEST_PREFIX} to the guest-facing device"),
    );
    router.execute(batch).map_err(nl)?;

    // 5. Guest side: loopback, address, default route.
    if let Some(guest) = guest.as_mut() {
        let mut batch = Batch::default();
        batch.push(
            rtnl::set_link_up(LO_INDEX, None, false),
            "bring guest lo up",
        );
        batch.push(
            rtnl::set_link_up(ETH0_INDEX, None, false),
            format!("bring guest {ETH0} up"),
        );
        batch.push(
            rtnl::add_addr(ETH0_INDEX, GUEST_ADDR, GUEST_PREFIX),
            format!("add {GUEST_ADDR}/{GUEST_PREFIX} to guest {ETH0}"),
        );
        batch.push(
            rtnl::add_route(None, GATEWAY_ADDR, ETH0_INDEX),
            "add guest default route",
        );
        guest.execute(batch).map_err(nl)?;
    }

    // 6. The router's NAT and filter rules.
    let guest_if = match kind {
        SlotKind::Container => GUEST_VETH,
        SlotKind::MicroVm => TAP,
    };
    let script = nft::router_script(names.host_addr, guest_if);
    netns::enter(&names.router_ns, || nft::apply(&script))
        .map_err(|err| SlotError::Netns { index, err })?
        .map_err(|err| SlotError::Nft { index, err })
}

/// Removes everything of slot `names`: the host veth (which takes its route and the
/// router's end with it) and both namespace pins. Idempotent.
pub(crate) fn destroy(names: &SlotNames) -> Result<(), SlotError> {
    let index = names.index;
    let mut host = Socket::open(SockProtocol::NetlinkRoute)
        .map_err(|err| SlotError::Netlink { index, err })?;
    let mut batch = Batch::default();
    batch.push(
        rtnl::del_link(&names.host_if),
        format!("delete {}", names.host_if),
    );
    match host.execute(batch) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::ENODEV) => {}
        Err(err) => return Err(SlotError::Netlink { index, err }),
    }
    netns::remove(&names.router_ns).map_err(|err| SlotError::Netns { index, err })?;
    netns::remove(&names.guest_ns).map_err(|err| SlotError::Netns { index, err })
}

/// Drops every connection-tracking entry of the slot: the router namespace's whole table
/// and the host's entries to or from the slot's host address.
pub(crate) fn flush_conntrack(names: &SlotNames) -> Result<(), SlotError> {
    let index = names.index;
    let nl = |err| SlotError::Netlink { index, err };
    let mut router = socket_in(index, &names.router_ns, SockProtocol::NetlinkNetFilter)?;
    conntrack::flush_all(&mut router).map_err(nl)?;
    let mut host = Socket::open(SockProtocol::NetlinkNetFilter).map_err(nl)?;
    conntrack::flush_addr(&mut host, names.host_addr, &[Side::Src, Side::Dst]).map_err(nl)
}

/// Drops the host's conntrack entries of flows the slot started, so a changed egress
/// policy also judges connections already open (they are re-checked on their next
/// packet). Flows the host started towards the slot are kept.
pub(crate) fn flush_egress_conntrack(names: &SlotNames) -> Result<(), SlotError> {
    let index = names.index;
    let nl = |err| SlotError::Netlink { index, err };
    let mut host = Socket::open(SockProtocol::NetlinkNetFilter).map_err(nl)?;
    conntrack::flush_addr(&mut host, names.host_addr, &[Side::Src]).map_err(nl)
}

/// Checks that the slot looks exactly as [`create`] left it: no extra links, addresses
/// or routes in the guest namespace, nothing added to the router, and (microVM) no
/// process still attached to the tap.
pub(crate) fn verify(names: &SlotNames, kind: SlotKind) -> Result<(), SlotError> {
    let index = names.index;
    let nl = |err| SlotError::Netlink { index, err };
    let dirty = |detail: String| Err(SlotError::Dirty { index, detail });

    let mut router = socket_in(index, &names.router_ns, SockProtocol::NetlinkRoute)?;
    let links = rtnl::dump_links(&mut router).map_err(nl)?;
    let guest_if = match kind {
        SlotKind::Container => GUEST_VETH,
        SlotKind::MicroVm => TAP,
    };
    let mut got: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    got.sort_unstable();
    let mut want = vec!["lo", ETH0, guest_if];
    want.sort_unstable();
    if got != want {
        return dirty(format!("router links {got:?}, expected {want:?}"));
    }
    if let Some(tap) = links.iter().find(|l| l.name == TAP)
        && tap.carrier
    {
        return dirty(format!("{TAP} is still attached to a process"));
    }

    let SlotKind::Container = kind else {
        return Ok(());
    };
    let mut guest = socket_in(index, &names.guest_ns, SockProtocol::NetlinkRoute)?;
    let links = rtnl::dump_links(&mut guest).map_err(nl)?;
    let mut got: Vec<(i32, &str, bool)> = links
        .iter()
        .map(|l| (l.index, l.name.as_str(), l.up))
        .collect();
    got.sort_unstable();
    if got != [(LO_INDEX, "lo", true), (ETH0_INDEX, ETH0, true)] {
        return dirty(format!("guest links {got:?}"));
    }
    let mut addrs: Vec<(i32, Ipv4Addr, u8)> = rtnl::dump_addrs(&mut guest)
        .map_err(nl)?
        .iter()
        .map(|a| (a.index, a.addr, a.prefix))
        .collect();
    addrs.sort_unstable();
    if addrs
        != [
            (LO_INDEX, Ipv4Addr::LOCALHOST, 8),
            (ETH0_INDEX, GUEST_ADDR, GUEST_PREFIX),
        ]
    {
        return dirty(format!("guest addresses {addrs:?}"));
    }
    let mut routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, i32)> = rtnl::dump_main_routes(&mut guest)
        .map_err(nl)?
        .iter()
        .map(|r| (r.dst, r.dst_len, r.gateway, r.oif))
        .collect();
    routes.sort_unstable();
    let subnet = Ipv4Addr::from(u32::from(GUEST_ADDR) & !3);
    let expected = [
        (Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY_ADDR), ETH0_INDEX),
        (subnet, GUEST_PREFIX, None, ETH0_INDEX),
    ];
    if routes != expected {
        return dirty(format!("guest routes {routes:?}"));
    }
    Ok(())
}

/// Whether the namespace pin at `path` exists.
pub(crate) fn pinned(path: &Path) -> bool {
    path.exists()
}
