// SPDX-License-Identifier: Apache-2.0
//! Privileged integration tests of the container runtime: real namespaces, cgroups,
//! overlayfs, seccomp and quotas. They need root; a test whose prerequisite is
//! missing (root, the static envd, the cached bookworm rootfs, mkfs.xfs) prints why
//! and returns.

mod bench;
mod common;
mod isolation;
mod launch;
mod lifecycle;
mod limits;
