// SPDX-License-Identifier: Apache-2.0
//! A minimal synchronous netlink client: message building, batched requests with acks,
//! and dumps.
//!
//! Slots are built on blocking threads that each sit in one network namespace, so a
//! plain blocking socket per namespace is the simplest fit; the handful of rtnetlink and
//! ctnetlink messages Hearth sends are encoded here rather than pulling in an async
//! netlink stack. Requests are batched: one `send` carries every message of a step and
//! the acks are read back together.

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const HDR_LEN: usize = 16;

/// A failed netlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or bound.
    #[error("failed to open netlink socket")]
    Open {
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// Sending or receiving failed.
    #[error("netlink i/o failed during {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The kernel refused a request.
    #[error("kernel refused to {op}")]
    Refused {
        /// What was asked.
        op: String,
        /// The errno the kernel answered with.
        #[source]
        err: io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("malformed netlink reply during {op}")]
    Malformed {
        /// What was being done.
        op: &'static str,
    },
}

impl NetlinkError {
    /// The errno of a refusal, if this is one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}

/// One netlink message under construction: header, fixed family header, attributes.
#[derive(Debug)]
pub(crate) struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// Starts a message of type `ty` with `flags` (NLM_F_REQUEST is added) whose fixed
    /// family header is `fixed`.
    pub(crate) fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends an attribute with a raw payload.
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attributes stay small");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad(&mut self.buf);
        self
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Appends a native-endian u32 attribute.
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; close it with [`Msg::end`].
    pub(crate) fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Appends raw bytes inside the current nest (a nested family header).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        pad(&mut self.buf);
        self
    }

    /// Closes the innermost nested attribute.
    pub(crate) fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end() matches a begin()");
        let len = u16::try_from(self.buf.len() - start).expect("netlink nests stay small");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unbalanced nests");
        let len = u32::try_from(self.buf.len()).expect("netlink messages stay small");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A blocking netlink socket bound to the network namespace it was opened in.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    rbuf: Vec<u8>,
}

impl Socket {
    /// Opens a socket for `proto` in the calling thread's network namespace.
    pub(crate) fn open(proto: SockProtocol) -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            proto,
        )
        .map_err(|e| NetlinkError::Open { err: e.into() })?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| NetlinkError::Open { err: e.into() })?;
        // The kernel always answers; the timeout turns a lost answer into an error, not a hang.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(10, 0))
            .map_err(|e| NetlinkError::Open { err: e.into() })?;
        Ok(Self {
            fd,
            seq: 0,
            rbuf: vec![0; 64 * 1024],
        })
    }

    /// Sends every message of `batch` in one write and waits for all their acks. Returns
    /// the first refusal, labelled with the operation that caused it.
    pub(crate) fn execute(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        if batch.labels.is_empty() {
            return Ok(());
        }
        let first_seq = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(batch.msgs.iter().map(|m| m.buf.len()).sum());
        for msg in batch.msgs {
            self.seq = self.seq.wrapping_add(1);
            out.extend_from_slice(&msg.finish(self.seq));
        }
        self.send_all(&out, "send request")?;
        let count = batch.labels.len();
        let mut acked = 0;
        let mut first_err: Option<NetlinkError> = None;
        while acked < count {
            let n = self.recv_some("receive ack")?;
            for (ty, seq, payload) in Messages::new(&self.rbuf[..n]) {
                let index = seq.wrapping_sub(first_seq) as usize;
                if ty != NLMSG_ERROR || index >= count {
                    continue;
                }
                acked += 1;
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(NetlinkError::Malformed { op: "read ack" })?;
                if code != 0 && first_err.is_none() {
                    first_err = Some(NetlinkError::Refused {
                        op: batch.labels[index].clone(),
                        err: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends a dump request and returns each reply message's payload (after the netlink
    /// header).
    pub(crate) fn dump(
        &mut self,
        msg: Msg,
        op: &'static str,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send_all(&msg.finish(seq), op)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv_some(op)?;
            let mut done = false;
            for (ty, rseq, payload) in Messages::new(&self.rbuf[..n]) {
                if rseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .ok_or(NetlinkError::Malformed { op })?;
                        if code != 0 {
                            return Err(NetlinkError::Refused {
                                op: op.to_owned(),
                                err: io::Error::from_raw_os_error(-code),
                            });
                        }
                        done = true;
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    fn send_all(&self, buf: &[u8], op: &'static str) -> Result<(), NetlinkError> {
        let n = send(self.fd.as_raw_fd(), buf, MsgFlags::empty())
            .map_err(|e| NetlinkError::Io { op, err: e.into() })?;
        if n != buf.len() {
            return Err(NetlinkError::Io {
                op,
                err: io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            });
        }
        Ok(())
    }

    fn recv_some(&mut self, op: &'static str) -> Result<usize, NetlinkError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.rbuf, MsgFlags::empty()) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Io { op, err: e.into() }),
            }
        }
    }
}

/// Messages sent together, each labelled for error messages.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    msgs: Vec<Msg>,
    labels: Vec<String>,
}

impl Batch {
    /// Adds `msg` (which gets NLM_F_ACK) with a label saying what it does.
    pub(crate) fn push(&mut self, mut msg: Msg, label: impl Into<String>) {
        let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.msgs.push(msg);
        self.labels.push(label.into());
    }
}

/// Iterates over the netlink messages in a received buffer as (type, seq, payload).
struct Messages<'a> {
    buf: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = (u16, u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(self.buf[0..4].try_into().ok()?) as usize;
        if len < HDR_LEN || len > self.buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(self.buf[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(self.buf[8..12].try_into().ok()?);
        let payload = &self.buf[HDR_LEN..len];
        let next = (len + 3) & !3;
        self.buf = self.buf.get(next..).unwrap_or(&[]);
        Some((ty, seq, payload))
    }
}

/// Iterates over the attributes in `buf` as (type without flags, payload).
#[derive(Debug, Clone)]
pub(crate) struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Attributes starting at the beginning of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The payload of the first attribute of type `ty`, if any.
    pub(crate) fn get(&self, ty: u16) -> Option<&'a [u8]> {
        Iterator::find(&mut self.clone(), |(t, _)| *t == ty).map(|(_, p)| p)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        if len < 4 || len > self.buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & !(NLA_F_NESTED | 1 << 14);
        let payload = &self.buf[4..len];
        let next = (len + 3) & !3;
        self.buf = self.buf.get(next..).unwrap_or(&[]);
        Some((ty, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut m = Msg::new(16, 0, &[1, 2, 3]);
        m.begin(18)
            .attr_str(1, "veth")
            .begin(2)
            .attr_u32(7, 42)
            .end()
            .end();
        let bytes = m.finish(9);
        let (ty, seq, payload) = Messages::new(&bytes).next().unwrap();
        assert_eq!((ty, seq), (16, 9));
        // The 3-byte fixed header is padded to 4.
        let outer = Attrs::new(&payload[4..]).get(18).unwrap();
        assert_eq!(Attrs::new(outer).get(1).unwrap(), b"veth\0");
        let inner = Attrs::new(outer).get(2).unwrap();
        assert_eq!(Attrs::new(inner).get(7).unwrap(), 42u32.to_ne_bytes());
    }

    #[test]
    fn truncated_buffer_yields_no_message() {
        assert!(Messages::new(&[0; 10]).next().is_none());
        let mut bad = vec![0u8; 16];
        bad[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(Messages::new(&bad).next().is_none());
    }
}
