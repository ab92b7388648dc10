// SPDX-License-Identifier: Apache-2.0
//! Pseudo-terminals: opening a pair and sizing it.
//!
//! Both descriptors are opened close-on-exec, so a concurrent spawn elsewhere in the
//! process can never inherit them (glibc's `openpty(3)` leaves them inheritable). The
//! master is non-blocking because its reader is an event loop; the slave is blocking
//! because it becomes a child's stdin/stdout/stderr.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// The controlling side, kept by the caller (non-blocking, close-on-exec).
    pub master: OwnedFd,
    /// The terminal side, given to the child (blocking, close-on-exec).
    pub slave: OwnedFd,
}

/// Registers a pseudo-terminal master (or any owned non-blocking descriptor) with the
/// tokio reactor for readiness-based reads and writes. Must be called inside a
/// runtime.
pub fn async_master(master: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns a valid open descriptor, which stays open and unchanged
    // until the `AsyncFd` (its only owner from now on) drops it, and its `as_raw_fd`
    // always returns that same descriptor.
    unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|err| err.into_parts().1)
}

/// Opens a new pseudo-terminal pair of size `size` (posix_openpt(3) + unlockpt(3) +
/// TIOCGPTPEER, falling back to opening `/dev/pts/<n>` on kernels before 4.13).
pub fn openpty(size: WindowSize) -> io::Result<Pty> {
    let master = open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    unlockpt(master.as_fd())?;
    let slave = match open_peer(master.as_fd()) {
        Ok(slave) => slave,
        Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {
            let n = pty_number(master.as_fd())?;
            open(
                format!("/dev/pts/{n}").as_str(),
                OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?
        }
        Err(err) => return Err(err),
    };
    set_window_size(master.as_fd(), size)?;
    Ok(Pty { master, slave })
}

/// Unlocks the slave of `master` (unlockpt(3), the TIOCSPTLCK ioctl).
fn unlockpt(master: BorrowedFd<'_>) -> io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: `master` is an open descriptor for the borrow; TIOCSPTLCK reads one int
    // through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the slave of `master` without a path lookup (the TIOCGPTPEER ioctl).
fn open_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `master` is an open descriptor for the borrow; TIOCGPTPEER takes its flags
    // by value and returns a new descriptor, touching no memory of ours.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The number `n` of the slave `/dev/pts/<n>` of `master` (the TIOCGPTN ioctl).
fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: `master` is an open descriptor for the borrow; TIOCGPTN writes one
    // unsigned int through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Sets the window size of the terminal behind `fd` (the TIOCSWINSZ ioctl); the
/// kernel then sends SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is an open descriptor for the borrow; TIOCSWINSZ reads one winsize
    // through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal behind `fd` (the TIOCGWINSZ ioctl).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `fd` is an open descriptor for the borrow; TIOCGWINSZ writes one winsize
    // through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(WindowSize {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openpty_sets_size_and_resize_is_visible_on_slave() {
        let pty = match openpty(WindowSize { cols: 91, rows: 17 }) {
            Ok(p) => p,
            Err(err) => {
                eprintln!("skipping: no /dev/ptmx ({err})");
                return;
            }
        };
        assert_eq!(
            window_size(pty.slave.as_fd()).unwrap(),
            WindowSize { cols: 91, rows: 17 }
        );
        set_window_size(
            pty.master.as_fd(),
            WindowSize {
                cols: 120,
                rows: 40,
            },
        )
        .unwrap();
        assert_eq!(
            window_size(pty.slave.as_fd()).unwrap(),
            WindowSize {
                cols: 120,
                rows: 40
            }
        );
    }

    #[test]
    fn pty_fds_are_close_on_exec() {
        let Ok(pty) = openpty(WindowSize { cols: 80, rows: 24 }) else {
            eprintln!("skipping: no /dev/ptmx");
            return;
        };
        for fd in [&pty.master, &pty.slave] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(flags & libc::FD_CLOEXEC != 0);
        }
        let fl = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(fl & libc::O_NONBLOCK != 0, "master must be non-blocking");
    }
}
