// SPDX-License-Identifier: Apache-2.0
//! A template's guest RAM, loaded once into a sealed memfd that every clone maps
//! copy-on-write.
//!
//! QEMU 7.2 opens a `memory-backend-file` read-write even when it maps it private, so
//! handing it the template's RAM file would let a compromised QEMU write the memory
//! every later sandbox starts from. A memfd sealed against writes, growth and
//! shrinking cannot be changed through any descriptor or mapping, yet can still be
//! mapped `MAP_PRIVATE` writable; QEMU reaches it as `/proc/<our pid>/fd/<n>` while it
//! is still root. Only the pages the template touched are copied (holes stay holes),
//! and all clones share them.

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::unistd::{Whence, lseek};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A sealed, read-only copy of a template's RAM.
#[derive(Debug)]
pub struct TemplateMemory {
    file: File,
    /// Bytes of data copied (the template's touched memory).
    pub resident: u64,
    /// Size of the RAM image.
    pub size: u64,
    /// Identity of the template boot this RAM belongs to (set by the loader).
    pub id: String,
    /// One bit per 4 KiB page: set when the page holds data (else it is zero).
    nonzero: Vec<u64>,
}

impl TemplateMemory {
    /// Loads `path` (a sparse RAM image) into a sealed memfd. Blocking.
    pub fn load(path: &Path) -> io::Result<Self> {
        let src = File::open(path)?;
        let size = src.metadata()?.len();
        let fd = memfd_create(
            c"hearth-template-ram",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        let dst = File::from(fd);
        dst.set_len(size)?;
        let mut resident = 0u64;
        let pages = usize::try_from(size.div_ceil(PAGE)).unwrap_or(usize::MAX);
        let mut nonzero = vec![0u64; pages.div_ceil(64)];
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < size {
            let Some(data) = seek(&src, off, Whence::SeekData)? else {
                break;
            };
            let hole = seek(&src, data, Whence::SeekHole)?.unwrap_or(size);
            let mut pos = data;
            while pos < hole {
                let want = usize::try_from((hole - pos).min(buf.len() as u64)).unwrap_or(buf.len());
                let n = src.read_at(&mut buf[..want], pos)?;
                if n == 0 {
                    break;
                }
                // All-zero pages stay holes: less memory, same content.
                for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                    if page.iter().any(|&b| b != 0) {
                        let at = pos + (i as u64) * PAGE;
                        dst.write_all_at(page, at)?;
                        resident += page.len() as u64;
                        let idx = usize::try_from(at / PAGE).unwrap_or(usize::MAX);
                        if let Some(word) = nonzero.get_mut(idx / 64) {
                            *word |= 1 << (idx % 64);
                        }
                    }
                }
                pos += n as u64;
            }
            off = hole;
        }
        let fd = OwnedFd::from(dst);
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(io::Error::from)?;
        Ok(Self {
            file: File::from(fd),
            resident,
            size,
            id: String::new(),
            nonzero,
        })
    }

    /// The path QEMU opens to reach the memfd (valid while this value lives).
    pub fn qemu_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }
}

impl crate::memdiff::Base for TemplateMemory {
    fn page(&self, offset: u64, buf: &mut [u8; 4096]) -> bool {
        self.file.read_exact_at(buf, offset).is_ok()
    }

    fn is_zero(&self, offset: u64) -> Option<bool> {
        let idx = usize::try_from(offset / PAGE).ok()?;
        let word = self.nonzero.get(idx / 64)?;
        Some(word & (1 << (idx % 64)) == 0)
    }
}

const PAGE: u64 = 4096;

/// `lseek` with SEEK_DATA/SEEK_HOLE; `None` when there is no more data (ENXIO).
fn seek(f: &File, off: u64, whence: Whence) -> io::Result<Option<u64>> {
    let off = i64::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match lseek(f, off, whence) {
        Ok(pos) => Ok(Some(pos.unsigned_abs())),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_memory_matches_and_cannot_be_written() {
        let p = std::env::temp_dir().join(format!("hearth-memfd-{}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 4096).unwrap();
        f.write_all_at(&[7u8; 4096], 5 << 20).unwrap();
        drop(f);
        let m = TemplateMemory::load(&p).unwrap();
        assert_eq!(m.size, 8 << 20);
        assert!(m.resident >= 4096 && m.resident < 4 << 20, "{}", m.resident);
        let view = File::open(m.qemu_path()).unwrap();
        let mut b = [0u8; 5];
        view.read_exact_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"hello");
        view.read_exact_at(&mut b, 5 << 20).unwrap();
        assert_eq!(b, [7; 5]);
        let rw = std::fs::OpenOptions::new()
            .write(true)
            .open(m.qemu_path())
            .unwrap();
        assert!(
            rw.write_all_at(b"x", 0).is_err(),
            "sealed memfd accepted a write"
        );
        std::fs::remove_file(p).unwrap();
    }
}
