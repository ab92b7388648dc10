// SPDX-License-Identifier: Apache-2.0
//! Privileged integration tests of the container runtime: real namespaces, cgroups,
//! overlayfs, seccomp and disk limits. They need root; a test whose prerequisite is
//! missing prints why and returns:
//!
//! - `busybox-static` (every test's root filesystem), `iproute2` (`ip netns`);
//! - `btrfs-progs` (disk-limit tests make a loop-mounted btrfs volume);
//! - `mmdebstrap` and access to Debian's mirror (sudo, seccomp probes: a bookworm
//!   root filesystem built once and cached in `/var/cache/hearth-test`);
//! - the static envd for the latency benchmark:
//!   `RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile envd
//!   --target x86_64-unknown-linux-gnu -p hearth-envd`.
//!
//! `HEARTH_BENCH_RUNS` sets the benchmark's launches (default 50); run it alone,
//! in release mode, for meaningful numbers:
//! `cargo test --release -p hearth-runtime-container --test integration -- --test-threads=1 --nocapture bench::`.

mod bench;
mod common;
mod isolation;
mod launch;
mod lifecycle;
mod limits;
