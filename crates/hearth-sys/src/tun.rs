// SPDX-License-Identifier: Apache-2.0
//! Persistent tap devices (the `/dev/net/tun` ioctls).
//!
//! A persistent tap outlives the fd that created it, so it can be made ahead of time in a
//! network slot and attached later by a VMM that opens it by name. It is created in the
//! network namespace of the calling thread.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The kernel's `struct ifreq` as the tun ioctls read it: a name and a flags word.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    // The real union is 24 bytes; the kernel copies the whole struct.
    _pad: [u8; 22],
}

/// Options for [`create_persistent_tap`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TapOptions {
    /// Uid allowed to attach without `CAP_NET_ADMIN` (TUNSETOWNER).
    pub owner: Option<u32>,
    /// Gid allowed to attach without `CAP_NET_ADMIN` (TUNSETGROUP).
    pub group: Option<u32>,
    /// Whether frames carry a virtio-net header (`IFF_VNET_HDR`), as QEMU's virtio-net wants.
    pub vnet_hdr: bool,
}

/// Creates a persistent tap device `name` in the calling thread's network namespace.
pub fn create_persistent_tap(name: &str, opts: TapOptions) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid interface name",
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if opts.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.flags = libc::c_short::try_from(flags).expect("tap flags fit in the ifreq short");
    tunsetiff(tun.as_fd(), &mut req)?;
    if let Some(uid) = opts.owner {
        tun_ioctl_int(tun.as_fd(), libc::TUNSETOWNER, uid.into())?;
    }
    if let Some(gid) = opts.group {
        tun_ioctl_int(tun.as_fd(), libc::TUNSETGROUP, gid.into())?;
    }
    tun_ioctl_int(tun.as_fd(), libc::TUNSETPERSIST, 1)?;
    Ok(())
}

/// Binds the open tun fd to a device (ioctl TUNSETIFF).
fn tunsetiff(fd: BorrowedFd<'_>, req: &mut IfReqFlags) -> io::Result<()> {
    // SAFETY: `fd` is an open /dev/net/tun fd for the borrow; `req` is an exclusive
    // borrow of a fully initialised struct as large as the kernel's `struct ifreq` (40
    // bytes), which TUNSETIFF reads and writes back (the device name) within its bounds.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, std::ptr::from_mut(req)) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Issues a tun ioctl whose argument is an integer passed by value.
fn tun_ioctl_int(fd: BorrowedFd<'_>, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST/TUNSETOWNER/TUNSETGROUP take their argument by value (the
    // kernel casts the pointer-sized argument to an integer) and touch no user memory;
    // `fd` is an open tun fd for the duration of the borrow.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }

    #[test]
    fn overlong_name_is_rejected() {
        let err = create_persistent_tap("a-very-long-tap-name", TapOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
