// SPDX-License-Identifier: Apache-2.0
//! The microVM runtime: every sandbox is a QEMU `microvm` with its own kernel.
//!
//! What it does:
//! - **Guest artifacts** ([`guest`]): Debian's cloud kernel and an initramfs of ours
//!   (static busybox + a script loading the virtio modules), fetched with `apt-get
//!   download` and built on first use under `<home>/microvm`, content-addressed.
//! - **Templates** ([`MicroVm::prepare_template`]): an ext4 image of the template's
//!   root directory (envd is PID 1), booted once until envd answers and warmed up;
//!   then a snapshot: device state as a migration stream, guest RAM as a sparse file.
//! - **Sandboxes** ([`MicroVm`] implements [`hearth_runtime::Runtime`]): a qcow2
//!   overlay on the template image and a *restore* of the template snapshot (RAM
//!   mapped copy-on-write from a sealed memfd, device state loaded, vCPUs resumed):
//!   no boot. Without a usable snapshot, or with another RAM/vCPU shape than the
//!   template's, the VM cold-boots from the same image.
//! - **Pause** ([`hearth_runtime::Instance::pause`]): `memory=true` saves memory and
//!   devices into the pause directory and quits QEMU (RAM freed); resume restores
//!   them and every process continues. A sandbox running on a template's RAM saves
//!   only the pages that differ from it ([`memdiff`]). `memory=false` syncs the
//!   guest's filesystems and remounts them read-only (SysRq over the serial console
//!   socket), keeps only the disk, and resume cold-boots. Pauses are crash-safe (see
//!   the `instance` module). Snapshots ([`hearth_runtime::Instance::snapshot`]) are
//!   the same without stopping the sandbox.
//!
//! Contract (on top of the runtime seam's): QEMU runs in the slot's router network
//! namespace on the slot's tap, inside cgroups `<controller>/<instance>/<id>` (memory
//! = RAM + overhead, cpu quota = vCPUs, pids) that it joins before it starts. It opens
//! what it needs as root, then drops to uid `uid_base + ordinal` with no
//! capabilities, chrooted into an empty directory, under QEMU's seccomp sandbox (no
//! spawning, no obsolete or resource-control calls). A pid or mount namespace would
//! add nothing on top (no `/proc` in the chroot, a uid of its own, no way to run
//! another program) and QEMU's `-runas` would clear the parent-death signal that
//! makes a wrapper process killable, so there is none. The template image and RAM
//! are never written. `kill` leaves no process, cgroup, socket or overlay.
//!
//! Limits: x86_64 hosts; QEMU 7.2 (its migration stream format is parsed for memory
//! differences) with `qemu-img`, `nsenter`, `ip`, `mkfs.ext4` (e2fsprogs ≥ 1.43),
//! `apt-get` and `dpkg-deb` on the host; cgroup v1 controllers. A snapshot restores
//! only into the same QEMU version, accelerator and machine shape it was taken with.
//! Paused sandboxes and memory snapshots of template-based sandboxes need their
//! template's files as long as they exist. Clones of a snapshot wake with one kernel
//! RNG state: the node's `/init` carries fresh entropy, which envd mixes in and
//! reseeds the generator with. Under TCG every restored VM re-translates the guest code it runs, so
//! the first request and the first command after a restore cost extra.

pub mod accel;
pub mod baseline;
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
