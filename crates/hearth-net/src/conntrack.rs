// SPDX-License-Identifier: Apache-2.0
//! Flushing connection-tracking state (ctnetlink), so a reused slot inherits no flows.
//!
//! Inside a router namespace every entry belongs to the slot, so the whole table goes.
//! On the host, only entries whose original source or destination is the slot's host
//! address go: recent kernels filter a flush in the kernel (`CTA_FILTER`); older ones
//! refuse that, and then the matching entries are dumped and deleted one by one.

use crate::netlink::{Attrs, Batch, Msg, NLM_F_DUMP, NetlinkError, Socket};
use std::net::Ipv4Addr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const FILTER_IP_SRC: u32 = 1 << 0;
const FILTER_IP_DST: u32 = 1 << 1;

fn nfgenmsg(family: u8) -> [u8; 4] {
    // version 0 (NFNETLINK_V0), res_id 0.
    [family, 0, 0, 0]
}

fn ct_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// Deletes every conntrack entry in the socket's namespace.
pub(crate) fn flush_all(sock: &mut Socket) -> Result<(), NetlinkError> {
    let mut batch = Batch::default();
    batch.push(
        Msg::new(
            ct_type(IPCTNL_MSG_CT_DELETE),
            0,
            &nfgenmsg(libc::AF_UNSPEC as u8),
        ),
        "flush conntrack table",
    );
    sock.execute(batch)
}

/// Which side of the original tuple an address filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Flows the address started (a sandbox's egress).
    Src,
    /// Flows started towards the address (the host reaching the sandbox).
    Dst,
}

fn filtered(msg_type: u16, flags: u16, addr: Ipv4Addr, side: Side) -> Msg {
    let (attr, flag) = match side {
        Side::Src => (CTA_IP_V4_SRC, FILTER_IP_SRC),
        Side::Dst => (CTA_IP_V4_DST, FILTER_IP_DST),
    };
    let mut m = Msg::new(ct_type(msg_type), flags, &nfgenmsg(libc::AF_INET as u8));
    m.begin(CTA_TUPLE_ORIG)
        .begin(CTA_TUPLE_IP)
        .attr(attr, &addr.octets())
        .end()
        .end();
    m.begin(CTA_FILTER)
        .attr_u32(CTA_FILTER_ORIG_FLAGS, flag)
        .attr_u32(CTA_FILTER_REPLY_FLAGS, 0)
        .end();
    m
}

/// Deletes the conntrack entries whose original source (or destination) is `addr`, for
/// each side in `sides`.
pub(crate) fn flush_addr(
    sock: &mut Socket,
    addr: Ipv4Addr,
    sides: &[Side],
) -> Result<(), NetlinkError> {
    let mut batch = Batch::default();
    for &side in sides {
        batch.push(
            filtered(IPCTNL_MSG_CT_DELETE, 0, addr, side),
            format!("flush conntrack entries of {addr}"),
        );
    }
    match sock.execute(batch) {
        // EOPNOTSUPP: filtered dumps but no filtered flush (5.8 to 6.10); EINVAL: older
        // kernels read the partial tuple as an exact one and reject it.
        Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            for &side in sides {
                delete_matching(sock, addr, side)?;
            }
            Ok(())
        }
        other => other,
    }
}

/// Fallback for kernels without filtered flush: dump (filtered in the kernel since
/// 5.8) and delete each entry by its original tuple.
fn delete_matching(sock: &mut Socket, addr: Ipv4Addr, side: Side) -> Result<(), NetlinkError> {
    let entries = sock.dump(
        filtered(IPCTNL_MSG_CT_GET, NLM_F_DUMP, addr, side),
        "dump conntrack entries",
    )?;
    let mut batch = Batch::default();
    for entry in &entries {
        let Some(body) = entry.get(4..) else {
            continue;
        };
        let attrs = Attrs::new(body);
        let Some(tuple) = attrs.get(CTA_TUPLE_ORIG) else {
            continue;
        };
        let mut m = Msg::new(
            ct_type(IPCTNL_MSG_CT_DELETE),
            0,
            &nfgenmsg(libc::AF_INET as u8),
        );
        m.begin(CTA_TUPLE_ORIG).raw(tuple).end();
        if let Some(zone) = attrs.get(CTA_ZONE) {
            m.attr(CTA_ZONE, zone);
        }
        batch.push(m, format!("delete a conntrack entry of {addr}"));
    }
    match sock.execute(batch) {
        // An entry that expired between the dump and the delete is already gone.
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
