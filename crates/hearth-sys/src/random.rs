// SPDX-License-Identifier: Apache-2.0
//! The kernel's random number generator: mixing in entropy from outside and forcing
//! a reseed, so that VMs restored from one snapshot stop sharing generator state.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// `RNDRESEEDCRNG` from `<linux/random.h>`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `seed` into the kernel's input pool (a write to `/dev/urandom`, which needs
/// no privilege and credits no entropy) and then makes the generator reseed from
/// that pool at once (needs `CAP_SYS_ADMIN`; otherwise it reseeds on its own
/// schedule, within a minute). Returns whether the immediate reseed happened.
pub fn mix_and_reseed(seed: &[u8]) -> io::Result<bool> {
    let mut urandom = OpenOptions::new().write(true).open("/dev/urandom")?;
    urandom.write_all(seed)?;
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory; the fd
    // is open for the duration of the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Unprivileged, or a kernel without the ioctl: the mix still counts.
        Some(libc::EPERM | libc::EINVAL | libc::ENOTTY) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_works_with_or_without_privilege() {
        // As root this reseeds; otherwise it only mixes. Either way it succeeds.
        mix_and_reseed(&[7u8; 32]).unwrap();
    }
}
