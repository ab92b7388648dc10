// SPDX-License-Identifier: Apache-2.0
//! The microVM runtime: every sandbox is a QEMU `microvm` with its own kernel.
//!
//! What it does:
//! - **Guest artifacts** ([`guest`]): Debian's cloud kernel and an initramfs of ours
//!   (static busybox + a script loading the virtio modules), fetched and built on
//!   first use under `<home>/microvm`, content-addressed.
//! - **Templates** ([`MicroVm::prepare_template`]): an ext4 image of the template's
//!   root directory (envd is PID 1), booted once until envd answers; then a snapshot
//!   is saved: device state as a migration stream, guest RAM as a sparse file.
//! - **Sandboxes** ([`MicroVm`] implements [`hearth_runtime::Runtime`]): a qcow2
//!   overlay on the template image and a *restore* of the template snapshot (RAM mapped
//!   copy-on-write from a sealed memfd, device state loaded, vCPUs resumed): no boot.
//!   Without a usable snapshot, or with resources other than the template's, the VM
//!   cold-boots from the same image.
//! - **Pause** ([`hearth_runtime::Instance::pause`]): `memory=true` saves memory and
//!   devices into the pause directory and quits QEMU (RAM freed); resume restores
//!   them, every process continues. `memory=false` syncs the guest's filesystems
//!   (SysRq over the serial console), keeps only the disk, and resume cold-boots.
//!
//! Contract (on top of the runtime seam's): QEMU runs in the slot's router network
//! namespace on the slot's tap, inside cgroups `<controller>/hearth/<id>` (memory =
//! RAM + overhead, cpu quota = vCPUs, pids), as uid `uid_base + slot index` chrooted
//! into an empty directory, under QEMU's seccomp sandbox. The template image and RAM
//! are never written. `kill` leaves no process, cgroup, socket or overlay.
//!
//! Limits: x86_64 hosts; QEMU ≥ 7.2 and `qemu-img`, `nsenter`, `ip`, `mkfs.ext4`
//! (e2fsprogs ≥ 1.43), `apt-get` and `dpkg-deb` on the host; cgroup v1 controllers.
//! A snapshot restores only into the same QEMU version, accelerator and machine shape
//! (RAM, vCPUs) it was taken with. Clones of a template share its RNG state until the
//! guest kernel reseeds (at most a minute): envd should mix in fresh entropy on
//! `/init`.

pub mod accel;
pub mod cgroup;
pub mod cpio;
pub mod debian;
pub mod envd;
pub mod fsutil;
pub mod guest;
pub mod image;
pub mod initramfs;
mod instance;
pub mod kmod;
mod launch;
pub mod memdiff;
pub mod memfd;
pub mod netns;
pub mod progress;
pub mod qmp;
mod runtime;
pub mod state;
mod template;
pub mod vm;

pub use accel::{Accel, AccelChoice, AccelReport};
pub use guest::GuestArtifacts;
pub use instance::MicroVmInstance;
pub use launch::LaunchTimings;
pub use progress::{LogProgress, NoProgress, Progress};
pub use runtime::{MicroVm, MicroVmConfig, MicroVmError};
pub use template::{TEMPLATE_RECIPE, TemplateRequest};

pub(crate) use runtime::Inner;
