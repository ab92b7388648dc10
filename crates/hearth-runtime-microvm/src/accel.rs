// SPDX-License-Identifier: Apache-2.0
//! Choosing the accelerator: KVM where `/dev/kvm` can really boot our guest, TCG
//! otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts it is backed by a module that
//! runs only specially built guests (e.g. `kvm_pvm`, which starts QEMU fine but never
//! gets a stock kernel past its first instructions). So the probe boots the real guest
//! kernel and initramfs under KVM in probe mode (`hearth.probe=1`: the init prints a
//! marker and powers off) with a short timeout. The verdict is cached under the
//! microVM home, keyed by everything it depends on (host kernel, KVM modules, QEMU
//! version, guest artifacts), so the probe runs once per host configuration.

use crate::fsutil;
use crate::guest::GuestArtifacts;
use crate::initramfs::PROBE_MARKER;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a KVM test boot may take before KVM is declared unusable. A working KVM
/// reaches the initramfs in well under a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator (multi-threaded TCG).
    Tcg,
}

impl Accel {
    /// The name QEMU and Hearth use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe: KVM if it boots the guest, else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

impl AccelChoice {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "kvm" => Some(Self::Kvm),
            "tcg" => Some(Self::Tcg),
            _ => None,
        }
    }
}

/// The verdict, with the evidence `hearth doctor` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelReport {
    /// The accelerator VMs will use.
    pub accel: Accel,
    /// Why, in one sentence.
    pub reason: String,
    /// Whether `/dev/kvm` exists and opens read-write.
    pub kvm_device: bool,
    /// KVM-related kernel modules loaded on the host (`kvm`, `kvm_intel`, `kvm_pvm`…).
    pub kvm_modules: Vec<String>,
    /// Whether a KVM test boot ran (now or when the cache entry was made).
    pub probed: bool,
    /// Cache key the verdict is valid for.
    pub key: String,
}

/// Host facts the verdict depends on.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `/dev/kvm` opens read-write.
    pub kvm_device: bool,
    /// Loaded KVM modules.
    pub kvm_modules: Vec<String>,
    /// Host kernel release.
    pub host_kernel: String,
}

impl HostFacts {
    /// Reads the facts from `/dev/kvm`, `/sys/module` and `uname`.
    pub fn read() -> Self {
        let kvm_device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let mut kvm_modules: Vec<String> = std::fs::read_dir("/sys/module")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n == "kvm" || n.starts_with("kvm_"))
                    .collect()
            })
            .unwrap_or_default();
        kvm_modules.sort();
        let host_kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            kvm_device,
            kvm_modules,
            host_kernel,
        }
    }
}

/// Decides the accelerator. `choice` other than `Auto` is obeyed (KVM only if the
/// device exists). `Auto` uses the cache in `root/accel.json` or runs the probe.
pub async fn select(
    choice: AccelChoice,
    root: &Path,
    qemu: &Path,
    qemu_version: &str,
    guest: &GuestArtifacts,
) -> AccelReport {
    let facts = HostFacts::read();
    let key = fsutil::sha256(
        format!(
            "{}|{}|{}|{}|{}",
            facts.host_kernel,
            facts.kvm_modules.join(","),
            facts.kvm_device,
            qemu_version,
            guest.id
        )
        .as_bytes(),
    )[..16]
        .to_owned();
    let report = |accel, reason: String, probed| AccelReport {
        accel,
        reason,
        kvm_device: facts.kvm_device,
        kvm_modules: facts.kvm_modules.clone(),
        probed,
        key: key.clone(),
    };
    match choice {
        AccelChoice::Tcg => return report(Accel::Tcg, "TCG was requested".into(), false),
        AccelChoice::Kvm if facts.kvm_device => {
            return report(Accel::Kvm, "KVM was requested".into(), false);
        }
        AccelChoice::Kvm => {
            return report(
                Accel::Tcg,
                "KVM was requested but /dev/kvm cannot be opened; using TCG".into(),
                false,
            );
        }
        AccelChoice::Auto => {}
    }
    if !facts.kvm_device {
        return report(
            Accel::Tcg,
            "/dev/kvm is missing or cannot be opened: QEMU emulates the CPU (TCG)".into(),
            false,
        );
    }
    let cache = root.join("accel.json");
    if let Ok(bytes) = std::fs::read(&cache)
        && let Ok(cached) = serde_json::from_slice::<AccelReport>(&bytes)
        && cached.key == key
    {
        return cached;
    }
    let r = match probe_kvm(root, qemu, guest).await {
        Ok(()) => report(
            Accel::Kvm,
            format!(
                "a test boot under KVM reached the guest's userspace (modules: {})",
                facts.kvm_modules.join(", ")
            ),
            true,
        ),
        Err(why) => report(
            Accel::Tcg,
            format!(
                "/dev/kvm exists (modules: {}) but cannot boot a stock guest kernel: {why}; \
                 QEMU emulates the CPU (TCG)",
                facts.kvm_modules.join(", ")
            ),
            true,
        ),
    };
    if let Ok(json) = serde_json::to_vec_pretty(&r) {
        let _ = fsutil::write_atomic(&cache, &json);
    }
    r
}

/// Boots the guest under KVM in probe mode; `Err` says why it is not usable.
async fn probe_kvm(root: &Path, qemu: &Path, guest: &GuestArtifacts) -> Result<(), String> {
    let dir = fsutil::temp_sibling(&root.join("tmp").join("kvm-probe"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let console = dir.join("console.log");
    let result = run_probe(qemu, guest, &console).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_probe(qemu: &Path, guest: &GuestArtifacts, console: &PathBuf) -> Result<(), String> {
    let cmdline = "console=ttyS0 quiet panic=-1 pci=off hearth.probe=1";
    let mut child = crate::vm::bare_boot(qemu, guest, cmdline, console)
        .args(["-M", "microvm,acpi=on,x-option-roms=off"])
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let stderr = child.stderr.take();
    let waited = tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await;
    let marker = std::fs::read_to_string(console)
        .map(|s| s.contains(PROBE_MARKER))
        .unwrap_or(false);
    if marker {
        let _ = child.kill().await;
        return Ok(());
    }
    match waited {
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "a test boot did not reach userspace within {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        }
        Ok(_) => {
            let mut msg = String::new();
            if let Some(mut e) = stderr {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut msg).await;
            }
            Err(format!(
                "QEMU exited before the guest reached userspace ({})",
                msg.trim().lines().last().unwrap_or("no message")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(AccelChoice::parse("auto"), Some(AccelChoice::Auto));
        assert_eq!(AccelChoice::parse("tcg"), Some(AccelChoice::Tcg));
        assert_eq!(AccelChoice::parse("hvf"), None);
    }
}
