// SPDX-License-Identifier: Apache-2.0
//! The one crate in Hearth allowed to hold `unsafe` code.
//!
//! Every raw system call sits behind a small safe function here, with a `SAFETY:`
//! comment on why it is sound, so the rest of the workspace can keep
//! `unsafe_code = "deny"`. External tools (`mkfs.ext4`, `nft`, …) run through
//! [`cmd::execute`], whose error keeps argv, status and output.
#![allow(unsafe_code)]

pub mod btrfs;
pub mod caps;
pub mod cgroup;
pub mod clone;
pub mod cmd;
pub mod fs;
pub mod mount;
pub mod netns;
pub mod ns;
pub mod pidfd;
pub mod process;
pub mod pty;
pub mod random;
pub mod seccomp;
pub mod term;
pub mod tun;
mod util;
