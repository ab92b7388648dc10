// SPDX-License-Identifier: Apache-2.0
//! The rtnetlink messages a slot needs: veth pairs, link state, IPv4 addresses and
//! routes, and dumps of links, addresses and routes for verification.

use crate::netlink::{Attrs, Msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NetlinkError, Socket};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_GROUP: u16 = 27;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_CARRIER: u16 = 33;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u16 = libc::AF_INET6 as u16;
const IFF_UP: u32 = libc::IFF_UP as u32;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// One end of a link to create.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkSpec<'a> {
    /// Interface name.
    pub name: &'a str,
    /// Requested ifindex in its namespace (0 lets the kernel choose).
    pub index: i32,
    /// MAC address, if fixed.
    pub mac: Option<[u8; 6]>,
    /// Namespace to create the link in (default: the socket's).
    pub netns: Option<BorrowedFd<'a>>,
    /// Interface group (for nftables `iifgroup`).
    pub group: Option<u32>,
}

impl<'a> LinkSpec<'a> {
    /// A link named `name` with every option at its default.
    pub(crate) fn named(name: &'a str) -> Self {
        Self {
            name,
            index: 0,
            mac: None,
            netns: None,
            group: None,
        }
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn link_attrs(m: &mut Msg, spec: &LinkSpec<'_>) {
    m.attr_str(IFLA_IFNAME, spec.name);
    if let Some(mac) = spec.mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(fd) = spec.netns {
        let fd = u32::try_from(fd.as_raw_fd()).expect("open fds are non-negative");
        m.attr_u32(IFLA_NET_NS_FD, fd);
    }
    if let Some(group) = spec.group {
        m.attr_u32(IFLA_GROUP, group);
    }
}

/// Creates a veth pair `a` ↔ `b`, both down: a veth cannot go up before its peer is
/// attached (`veth_open` answers ENOTCONN), so bring them up with [`set_link_up`].
pub(crate) fn new_veth(a: &LinkSpec<'_>, b: &LinkSpec<'_>) -> Msg {
    let mut m = Msg::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(a.index, 0, 0),
    );
    link_attrs(&mut m, a);
    m.begin(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "veth")
        .begin(IFLA_INFO_DATA)
        .begin(VETH_INFO_PEER)
        .raw(&ifinfomsg(b.index, 0, 0));
    link_attrs(&mut m, b);
    m.end().end().end();
    m
}

/// Brings link `index` up, optionally setting its MAC address and turning off IPv6
/// link-local address generation (which the kernel only accepts on an existing link, so
/// do it before the link first goes up).
pub(crate) fn set_link_up(index: i32, mac: Option<[u8; 6]>, no_ipv6_ll: bool) -> Msg {
    let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP));
    if let Some(mac) = mac {
        m.attr(IFLA_ADDRESS, &mac);
    }
    if no_ipv6_ll {
        m.begin(IFLA_AF_SPEC)
            .begin(AF_INET6)
            .attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE])
            .end()
            .end();
    }
    m
}

/// Deletes the link called `name` (for a veth, both ends go).
pub(crate) fn del_link(name: &str) -> Msg {
    let mut m = Msg::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
    m.attr_str(IFLA_IFNAME, name);
    m
}

/// Adds `addr/prefix` to link `index`.
pub(crate) fn add_addr(index: i32, addr: Ipv4Addr, prefix: u8) -> Msg {
    let mut fixed = [0u8; 8];
    fixed[0] = AF_INET;
    fixed[1] = prefix;
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &fixed);
    m.attr(IFA_LOCAL, &addr.octets());
    m.attr(IFA_ADDRESS, &addr.octets());
    m
}

/// Adds a route to `dst` (None: the default route) via `gateway` out of link `oif`.
pub(crate) fn add_route(dst: Option<(Ipv4Addr, u8)>, gateway: Ipv4Addr, oif: i32) -> Msg {
    let fixed = [
        AF_INET,
        dst.map_or(0, |(_, len)| len),
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &fixed);
    if let Some((addr, _)) = dst {
        m.attr(RTA_DST, &addr.octets());
    }
    m.attr(RTA_GATEWAY, &gateway.octets());
    m.attr_u32(RTA_OIF, u32::try_from(oif).expect("ifindexes are positive"));
    m
}

/// A link as seen in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// Interface index.
    pub index: i32,
    /// Interface name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// Carrier present (for a tap: a process has it open).
    pub carrier: bool,
    /// Interface group.
    pub group: u32,
}

/// Lists the links in the socket's namespace.
pub(crate) fn dump_links(sock: &mut Socket) -> Result<Vec<LinkInfo>, NetlinkError> {
    let msg = Msg::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
    let replies = sock.dump(msg, "dump links")?;
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        if r.len() < 16 {
            return Err(NetlinkError::Malformed { op: "dump links" });
        }
        let index = i32::from_ne_bytes(r[4..8].try_into().expect("4 bytes"));
        let flags = u32::from_ne_bytes(r[8..12].try_into().expect("4 bytes"));
        let attrs = Attrs::new(&r[16..]);
        let name = attrs
            .get(IFLA_IFNAME)
            .map(|b| String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(b)).into_owned())
            .unwrap_or_default();
        let carrier = attrs
            .get(IFLA_CARRIER)
            .is_some_and(|b| b.first() == Some(&1));
        let group = attrs
            .get(IFLA_GROUP)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes);
        out.push(LinkInfo {
            index,
            name,
            up: flags & IFF_UP != 0,
            carrier,
            group,
        });
    }
    Ok(out)
}

/// An IPv4 address as seen in a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AddrInfo {
    /// Link it sits on.
    pub index: i32,
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// Lists the IPv4 addresses in the socket's namespace.
pub(crate) fn dump_addrs(sock: &mut Socket) -> Result<Vec<AddrInfo>, NetlinkError> {
    let mut fixed = [0u8; 8];
    fixed[0] = AF_INET;
    let replies = sock.dump(Msg::new(RTM_GETADDR, NLM_F_DUMP, &fixed), "dump addresses")?;
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        if r.len() < 8 || r[0] != AF_INET {
            continue;
        }
        let index = i32::from_ne_bytes(r[4..8].try_into().expect("4 bytes"));
        let attrs = Attrs::new(&r[8..]);
        let Some(addr) = attrs
            .get(IFA_LOCAL)
            .or_else(|| attrs.get(IFA_ADDRESS))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Err(NetlinkError::Malformed {
                op: "dump addresses",
            });
        };
        out.push(AddrInfo {
            index,
            addr: Ipv4Addr::from(addr),
            prefix: r[1],
        });
    }
    Ok(out)
}

/// An IPv4 route of the main table as seen in a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    /// Destination (0.0.0.0 for the default route).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Outgoing link.
    pub oif: i32,
}

/// Lists the IPv4 routes of the main table in the socket's namespace.
pub(crate) fn dump_main_routes(sock: &mut Socket) -> Result<Vec<RouteInfo>, NetlinkError> {
    let mut fixed = [0u8; 12];
    fixed[0] = AF_INET;
    let replies = sock.dump(Msg::new(RTM_GETROUTE, NLM_F_DUMP, &fixed), "dump routes")?;
    let mut out = Vec::new();
    for r in replies {
        if r.len() < 12 || r[0] != AF_INET {
            continue;
        }
        let attrs = Attrs::new(&r[12..]);
        let table = attrs
            .get(RTA_TABLE)
            .and_then(|b| b.try_into().ok())
            .map_or(u32::from(r[4]), u32::from_ne_bytes);
        if table != u32::from(RT_TABLE_MAIN) {
            continue;
        }
        let ip = |ty| {
            attrs
                .get(ty)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(Ipv4Addr::from)
        };
        out.push(RouteInfo {
            dst: ip(RTA_DST).unwrap_or(Ipv4Addr::UNSPECIFIED),
            dst_len: r[1],
            gateway: ip(RTA_GATEWAY),
            oif: attrs
                .get(RTA_OIF)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i32::from_ne_bytes),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifinfomsg_places_index_and_flags() {
        let b = ifinfomsg(7, IFF_UP, IFF_UP);
        assert_eq!(i32::from_ne_bytes(b[4..8].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), IFF_UP);
    }
}
