// SPDX-License-Identifier: Apache-2.0
//! The baseline `hearth bench` measures microVM starts against: QEMU alone (no
//! namespaces, cgroups, jail, QMP or snapshot) booting the same kernel, initramfs
//! and root image to the guest's first userspace line.

use crate::accel::Accel;
use crate::guest::GuestArtifacts;
use crate::image;
use crate::initramfs::USERSPACE_MARKER;
use crate::runtime::{MicroVmError, io_err};
use crate::vm;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a raw boot may take before it counts as failed.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// Boots `image` (through a throwaway overlay in `dir`, removed afterwards) with
/// `accel` and returns the time from spawning QEMU to the guest's first userspace
/// line on the serial console.
pub async fn raw_boot(
    guest: &GuestArtifacts,
    image_path: &Path,
    accel: Accel,
    dir: &Path,
) -> Result<Duration, MicroVmError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let disk = dir.join("raw.qcow2");
    let log = dir.join("raw.log");
    for p in [&disk, &log] {
        crate::fsutil::remove_file_if_exists(p).map_err(io_err("remove", p))?;
    }
    image::create_overlay(Path::new("qemu-img"), image_path, &disk).map_err(MicroVmError::Image)?;
    let tsc = vm::host_tsc_khz();
    // The same legacy-timer choice as the runtime: with a known TSC the guest
    // needs neither PIT nor PIC.
    let timers = if tsc.is_some() { "off" } else { "on" };
    let cmdline = vm::Cmdline {
        accel,
        tsc_khz: tsc,
        hostname: "baseline",
        nameservers: &[],
        probe: false,
    }
    .render();
    let accel_arg = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg,thread=multi",
    };
    let t = Instant::now();
    let qemu = Path::new("qemu-system-x86_64");
    let mut child = vm::bare_boot(qemu, guest, &cmdline, &log)
        .arg("-M")
        .arg(format!(
            "microvm,acpi=on,rtc=on,isa-serial=on,x-option-roms=off,pit={timers},pic={timers}"
        ))
        .args([
            "-accel", accel_arg, "-cpu", "max", "-smp", "2", "-m", "512M",
        ])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=qcow2,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .spawn()
        .map_err(io_err("run", qemu))?;
    let result = loop {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(USERSPACE_MARKER)) {
            break Ok(t.elapsed());
        }
        if t.elapsed() > BOOT_LIMIT || matches!(child.try_wait(), Ok(Some(_))) {
            break Err(MicroVmError::BaselineBoot { log: log.clone() });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}
