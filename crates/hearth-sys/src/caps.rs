// SPDX-License-Identifier: Apache-2.0
//! Linux capabilities: sets, the bounding set, and capset.
//!
//! The raw operations here are async-signal-safe: they are used between clone and
//! exec by [`crate::clone`].

use std::io;

/// A capability number (`CAP_*` from `<linux/capability.h>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capability(u8);

#[allow(missing_docs)]
impl Capability {
    pub const CHOWN: Self = Self(0);
    pub const DAC_OVERRIDE: Self = Self(1);
    pub const DAC_READ_SEARCH: Self = Self(2);
    pub const FOWNER: Self = Self(3);
    pub const FSETID: Self = Self(4);
    pub const KILL: Self = Self(5);
    pub const SETGID: Self = Self(6);
    pub const SETUID: Self = Self(7);
    pub const SETPCAP: Self = Self(8);
    pub const NET_BIND_SERVICE: Self = Self(10);
    pub const NET_RAW: Self = Self(13);
    pub const SYS_CHROOT: Self = Self(18);
    pub const SYS_PTRACE: Self = Self(19);
    pub const SYS_ADMIN: Self = Self(21);
    pub const MKNOD: Self = Self(27);
    pub const AUDIT_WRITE: Self = Self(29);
    pub const SETFCAP: Self = Self(31);
}

impl Capability {
    /// The capability's number.
    pub const fn number(self) -> u8 {
        self.0
    }
}

/// A set of capabilities as a 64-bit mask (bit `n` is capability `n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// The set holding exactly `caps`.
    pub const fn of(caps: &[Capability]) -> Self {
        let mut mask = 0u64;
        let mut i = 0;
        while i < caps.len() {
            mask |= 1 << caps[i].0;
            i += 1;
        }
        Self(mask)
    }

    /// Whether capability number `cap` is in the set.
    pub const fn contains_number(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// Whether `cap` is in the set.
    pub const fn contains(self, cap: Capability) -> bool {
        self.contains_number(cap.0 as u32)
    }

    /// The raw mask.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Parses a hex mask as printed in `/proc/<pid>/status` (`CapBnd:` and friends).
    pub fn from_hex(hex: &str) -> Option<Self> {
        u64::from_str_radix(hex.trim(), 16).ok().map(Self)
    }
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_cap() -> io::Result<u32> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad cap_last_cap"))
}

/// Removes capability number `cap` from the calling thread's bounding set
/// (prctl(PR_CAPBSET_DROP)). Async-signal-safe; returns the errno on failure.
pub(crate) fn raw_bounding_drop(cap: u32) -> Result<(), i32> {
    // SAFETY: PR_CAPBSET_DROP takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

/// Clears the ambient set (prctl(PR_CAP_AMBIENT_CLEAR_ALL)). Async-signal-safe.
pub(crate) fn raw_ambient_clear() -> Result<(), i32> {
    // SAFETY: PR_CAP_AMBIENT with CLEAR_ALL takes only integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable sets (capset(2)).
/// Async-signal-safe.
pub(crate) fn raw_capset(
    effective: CapSet,
    permitted: CapSet,
    inheritable: CapSet,
) -> Result<(), i32> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |s: CapSet| (s.0 as u32, (s.0 >> 32) as u32);
    let (e0, e1) = split(effective);
    let (p0, p1) = split(permitted);
    let (i0, i1) = split(inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: `header` and `data` are initialised, correctly laid out per
    // <linux/capability.h> for version 3 (two data elements), and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

/// The calling thread's errno. Async-signal-safe.
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_holds_exactly_its_members() {
        let set = CapSet::of(&[Capability::CHOWN, Capability::SETFCAP]);
        assert!(set.contains(Capability::CHOWN));
        assert!(set.contains(Capability::SETFCAP));
        assert!(!set.contains(Capability::SYS_ADMIN));
        assert_eq!(set.bits(), 1 | (1 << 31));
    }

    #[test]
    fn hex_mask_from_proc_status_parses() {
        assert_eq!(
            CapSet::from_hex("00000000a80425fb\n").map(CapSet::bits),
            Some(0xa80425fb)
        );
        assert_eq!(CapSet::from_hex("zz"), None);
    }

    #[test]
    fn kernel_reports_a_last_capability() {
        assert!(last_cap().unwrap() >= 40);
    }
}
