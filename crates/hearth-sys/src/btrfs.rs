// SPDX-License-Identifier: Apache-2.0
//! btrfs subvolumes and qgroup limits: a directory tree with its own space limit.
//!
//! A subvolume is created and destroyed with one ioctl each (destruction of its
//! contents continues in the background), and once quotas are enabled on the
//! filesystem each subvolume has a qgroup whose referenced-bytes limit is enforced
//! at write time, whatever the writer's capabilities. After a subvolume is fully
//! dropped the kernel removes its qgroup.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// Inode number of every subvolume's root directory.
const FIRST_FREE_OBJECTID: u64 = 256;

// From <linux/btrfs.h> (checked against the header: see the tests).
const IOC_SNAP_CREATE: libc::c_ulong = 0x5000_9401;
const IOC_SUBVOL_CREATE: libc::c_ulong = 0x5000_940e;
const IOC_SNAP_DESTROY: libc::c_ulong = 0x5000_940f;
const IOC_INO_LOOKUP: libc::c_ulong = 0xd000_9412;
const IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
const IOC_QUOTA_CTL: libc::c_ulong = 0xc010_9428;
const IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942b;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
const VOL_NAME_MAX: usize = 4087;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_fs_info_args` (only the fsid is read).
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

fn ioctl<T>(fd: BorrowedFd<'_>, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the repr(C) struct that `request` is defined over
    // (sizes encoded in the request numbers and asserted in the tests); it lives
    // across the call, and the kernel keeps no pointer to it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn vol_args(name: &OsStr) -> io::Result<Box<VolArgs>> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > VOL_NAME_MAX || bytes.contains(&b'/') || bytes.contains(&0)
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; VOL_NAME_MAX + 1],
    });
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// Whether `fd` is on btrfs.
pub fn is_btrfs(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether the directory `fd` is the root of a btrfs subvolume.
pub fn is_subvolume(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !is_btrfs(fd)? {
        return Ok(false);
    }
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok(st.st_ino == FIRST_FREE_OBJECTID)
}

/// Creates subvolume `name` in the directory `parent` (BTRFS_IOC_SUBVOL_CREATE).
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    ioctl(parent, IOC_SUBVOL_CREATE, &mut *args)
}

/// Creates `name` in the directory `parent` as a writable snapshot of the subvolume
/// `source` (BTRFS_IOC_SNAP_CREATE): an atomic, copy-on-write copy of its whole tree
/// at this instant, made in one ioctl whatever the tree's size.
pub fn snapshot_subvolume(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    let mut args = vol_args(name)?;
    args.fd = i64::from(source.as_raw_fd());
    ioctl(parent, IOC_SNAP_CREATE, &mut *args)
}

/// Destroys subvolume `name` in the directory `parent`, contents and all
/// (BTRFS_IOC_SNAP_DESTROY); space is reclaimed in the background.
pub fn destroy_subvolume(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let mut args = vol_args(name)?;
    ioctl(parent, IOC_SNAP_DESTROY, &mut *args)
}

/// The id of the subvolume holding `fd` (BTRFS_IOC_INO_LOOKUP).
pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    });
    ioctl(fd, IOC_INO_LOOKUP, &mut *args)?;
    Ok(args.treeid)
}

/// The filesystem's UUID as printed under `/sys/fs/btrfs/` (BTRFS_IOC_FS_INFO).
pub fn filesystem_uuid(fd: BorrowedFd<'_>) -> io::Result<String> {
    let mut args = Box::new(FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    });
    ioctl(fd, IOC_FS_INFO, &mut *args)?;
    let h: String = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Enables quota groups on the filesystem holding `fd` (a no-op when enabled).
pub fn enable_quota(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    ioctl(fd, IOC_QUOTA_CTL, &mut args)
}

/// Limits the bytes referenced by the subvolume holding `fd` to `bytes`
/// (BTRFS_IOC_QGROUP_LIMIT on its own qgroup). Writes past it fail with `EDQUOT`.
pub fn set_referenced_limit(fd: BorrowedFd<'_>, bytes: u64) -> io::Result<()> {
    let mut args = QgroupLimitArgs {
        // 0: the qgroup of the subvolume `fd` is in.
        qgroupid: 0,
        flags: QGROUP_LIMIT_MAX_RFER,
        max_rfer: bytes,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    ioctl(fd, IOC_QGROUP_LIMIT, &mut args)
}

/// Bytes referenced by subvolume `id` and its limit (0: none), from sysfs.
///
/// The numbers are updated when btrfs commits a transaction (at most every 30 s
/// by default), so they trail the writes; enforcement does not.
pub fn referenced(uuid: &str, id: u64) -> io::Result<(u64, u64)> {
    let dir = format!("/sys/fs/btrfs/{uuid}/qgroups/0_{id}");
    let read = |f: &str| -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("{dir}/{f}"))?;
        text.trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}/{f}: {text:?}")))
    };
    Ok((read("referenced")?, read("max_referenced")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn argument_structures_match_the_ioctl_sizes() {
        let size = |req: libc::c_ulong| ((req >> 16) & 0x3fff) as usize;
        assert_eq!(std::mem::size_of::<VolArgs>(), size(IOC_SUBVOL_CREATE));
        assert_eq!(std::mem::size_of::<VolArgs>(), size(IOC_SNAP_DESTROY));
        assert_eq!(std::mem::size_of::<VolArgs>(), size(IOC_SNAP_CREATE));
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), size(IOC_INO_LOOKUP));
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), size(IOC_FS_INFO));
        assert_eq!(std::mem::size_of::<QuotaCtlArgs>(), size(IOC_QUOTA_CTL));
        assert_eq!(
            std::mem::size_of::<QgroupLimitArgs>(),
            size(IOC_QGROUP_LIMIT)
        );
    }

    #[test]
    fn names_with_slashes_are_rejected() {
        assert!(vol_args(OsStr::new("a/b")).is_err());
        assert!(vol_args(OsStr::new("")).is_err());
        assert!(vol_args(OsStr::new("ok")).is_ok());
    }

    #[test]
    fn a_non_btrfs_directory_is_no_subvolume() {
        let dir = std::fs::File::open("/proc").unwrap();
        assert!(!is_btrfs(dir.as_fd()).unwrap());
        assert!(!is_subvolume(dir.as_fd()).unwrap());
    }
}
