// SPDX-License-Identifier: Apache-2.0
//! What is written to disk about VMs: saved-VM manifests, the state a running
//! instance needs to be adopted, and pause records.

use crate::accel::Accel;
use crate::fsutil;
use crate::guest::GuestArtifacts;
use hearth_runtime::Resources;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of a saved VM's manifest inside its directory.
pub const MANIFEST: &str = "vm.json";
/// File name of a pause's record inside the pause directory.
pub const PAUSE_RECORD: &str = "paused.json";
/// File name of the pause-in-progress marker inside a sandbox's state directory.
pub const PAUSE_INTENT: &str = "pause.intent";
/// The disk overlay's file name (state directory while running, pause directory
/// while paused).
pub const DISK: &str = "disk.qcow2";
/// A full VM state (memory + devices) inside a pause directory.
pub const FULL_STATE: &str = "vm.state";
/// Current manifest format.
pub const FORMAT: u32 = 1;

/// What a saved VM state contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedKind {
    /// Device state only; RAM is the separate `memory_file` (a template).
    Template,
    /// Memory and devices in one migration stream (a memory pause or snapshot).
    Full,
}

/// A saved VM: how to restore it, and what it must be restored into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmManifest {
    /// Manifest format version.
    pub format: u32,
    /// What the state file holds.
    pub kind: SavedKind,
    /// The migration stream, relative to the manifest's directory.
    pub state_file: String,
    /// The RAM image for [`SavedKind::Template`], relative to the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<String>,
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Accelerator the state was saved under.
    pub accel: Accel,
    /// Whether the PIT/PIC were present.
    pub legacy_timers: bool,
    /// Machine fingerprint ([`crate::vm::VmSpec::fingerprint`]).
    pub fingerprint: String,
    /// `qemu-system-x86_64 --version` of the saving QEMU.
    pub qemu_version: String,
    /// Kernel and initramfs the guest booted.
    pub guest: GuestArtifacts,
    /// Size of the state file, bytes.
    pub state_bytes: u64,
    /// For a [`SavedKind::Full`] state holding only what differs from a template's
    /// RAM: that RAM image (restored copy-on-write underneath the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_memory: Option<PathBuf>,
    /// Identity of `base_memory`'s template boot; a mismatch refuses the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_id: Option<String>,
    /// For templates: the preparation recipe (`TEMPLATE_RECIPE`) that made it.
    #[serde(default)]
    pub recipe: u32,
}

impl VmManifest {
    /// Reads `dir/vm.json`.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(dir.join(MANIFEST))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Writes `dir/vm.json` atomically and durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        fsutil::write_atomic(&dir.join(MANIFEST), &json)
    }
}

/// What the node persists for a running instance (see `Instance::state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// QEMU's pid.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Serial console socket.
    pub console_sock: PathBuf,
    /// Disk overlay.
    pub disk: PathBuf,
    /// Machine the VM runs (needed to save it).
    pub machine: MachineInfo,
    /// The template RAM image the VM's memory is mapped from, copy-on-write (saves
    /// store only the difference); `None` for anonymous memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_memory: Option<PathBuf>,
}

/// The guest-visible machine of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// PIT/PIC present.
    pub legacy_timers: bool,
    /// Machine fingerprint.
    pub fingerprint: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Kernel and initramfs.
    pub guest: GuestArtifacts,
}

/// The runtime-specific part of a `PausedState`, also stored as `paused.json` in the
/// pause directory once the pause is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// The pause directory.
    pub dir: PathBuf,
    /// Whether memory was saved.
    pub memory: bool,
    /// The saved VM (memory pauses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmManifest>,
    /// The machine at pause time (filesystem pauses boot the same shape).
    pub machine: MachineInfo,
    /// The resources the sandbox had.
    pub resources: Resources,
}

impl PauseRecord {
    /// The disk overlay inside the pause directory.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
}

/// A pause in progress, recorded in the state directory before anything is written
/// so a restart can finish or undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseIntent {
    /// Where the pause goes.
    pub dir: PathBuf,
    /// Whether memory is being saved.
    pub memory: bool,
    /// The sandbox's resources.
    pub resources: Resources,
    /// Its machine.
    pub machine: MachineInfo,
}
