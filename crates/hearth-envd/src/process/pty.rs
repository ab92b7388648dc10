// SPDX-License-Identifier: Apache-2.0
//! The envd side of a process's pseudo-terminal: async reads, writes and resizing.
//!
//! One descriptor serves the output pump (reads) and input RPCs (writes); writers
//! are serialised so concurrent inputs never interleave inside one write. A read
//! returning `EIO` means every slave descriptor is closed (the terminal hung up) and
//! is reported as end of file.

use hearth_sys::pty::{WindowSize, async_master, set_window_size};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The master side of a process's terminal.
#[derive(Debug)]
pub(crate) struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
    write_lock: tokio::sync::Mutex<()>,
}

impl PtyMaster {
    /// Wraps a non-blocking master descriptor (must be called inside the runtime).
    pub(crate) fn new(master: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: async_master(master)?,
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads what the terminal has; `Ok(0)` once it hung up.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is buffered now without waiting: `None` when nothing is.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        match nix::unistd::read(self.fd.get_ref(), buf) {
            Ok(n) => Some(Ok(n)),
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(nix::errno::Errno::EIO) => Some(Ok(0)),
            Err(err) => Some(Err(io::Error::from(err))),
        }
    }

    /// Writes all of `data` to the terminal, as typed input.
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let _serialised = self.write_lock.lock().await;
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Resizes the terminal; the kernel signals SIGWINCH to its foreground group.
    pub(crate) fn resize(&self, size: WindowSize) -> io::Result<()> {
        set_window_size(self.fd.get_ref().as_fd(), size)
    }
}
