// SPDX-License-Identifier: Apache-2.0
//! Detection of network and userspace filesystems, on which inotify sees only local
//! changes: watches there are refused unless the client opts in.

use std::io;
use std::path::Path;

/// `f_type` magic numbers (include/uapi/linux/magic.h and fs/*/): NFS, CIFS, SMB,
/// SMB2, FUSE (which includes virtiofs), 9P, Ceph, AFS, Coda and NCP.
const NETWORK_MAGICS: &[u64] = &[
    0x6969,      // NFS_SUPER_MAGIC
    0xFF53_4D42, // CIFS_SUPER_MAGIC
    0x517B,      // SMB_SUPER_MAGIC
    0xFE53_4D42, // SMB2_SUPER_MAGIC
    0x6573_5546, // FUSE_SUPER_MAGIC
    0x0102_1997, // V9FS_MAGIC
    0x00C3_6400, // CEPH_SUPER_MAGIC
    0x5346_414F, // AFS_SUPER_MAGIC
    0x7375_7245, // CODA_SUPER_MAGIC
    0x564C,      // NCP_SUPER_MAGIC
];

/// Whether a statfs(2) filesystem type is a network or FUSE filesystem.
pub fn is_network_magic(f_type: u64) -> bool {
    NETWORK_MAGICS.contains(&(f_type & 0xFFFF_FFFF))
}

/// Whether `path` lives on a network or FUSE filesystem.
pub fn is_network_mount(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    // `f_type` is a signed long on glibc; the magic lives in its low 32 bits.
    #[allow(clippy::cast_sign_loss)]
    let f_type = st.filesystem_type().0 as u64;
    Ok(is_network_magic(f_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_cifs_and_fuse_are_network() {
        assert!(is_network_magic(0x6969));
        assert!(is_network_magic(0xFF53_4D42));
        assert!(is_network_magic(0x6573_5546));
        // Sign-extended as a negative 64-bit long.
        assert!(is_network_magic(0xFFFF_FFFF_FF53_4D42));
    }

    #[test]
    fn local_filesystems_are_not() {
        assert!(!is_network_magic(0xEF53)); // ext4
        assert!(!is_network_magic(0x0102_1994)); // tmpfs
        assert!(!is_network_mount(Path::new("/proc")).unwrap());
    }
}
