// SPDX-License-Identifier: Apache-2.0
//! Limits: cgroup settings, statistics and the disk quota of the writable layer.

use crate::common::*;
use anyhow::Result;
use hearth_runtime_container::ensure_data_volume;
use std::fs;
use std::path::Path;
use std::time::Duration;

#[test]
fn limits_are_written_to_the_cgroups() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let mut spec = script(base.path(), "exec sleep 1000");
    spec.limits.cpu_count = Some(2);
    spec.limits.memory_bytes = 256 << 20;
    spec.limits.pids_max = 333;
    let mut guard = Guard(Some(launcher().launch(&spec)?));
    let cg = |c: &str, f: &str| {
        fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("hearth")
                .join(&spec.id)
                .join(f),
        )
        .map(|s| s.trim().to_owned())
    };
    assert_eq!(cg("cpu", "cpu.cfs_quota_us")?, "200000");
    assert_eq!(cg("cpu", "cpu.cfs_period_us")?, "100000");
    assert_eq!(
        cg("memory", "memory.limit_in_bytes")?,
        (256u64 << 20).to_string()
    );
    if let Ok(memsw) = cg("memory", "memory.memsw.limit_in_bytes") {
        assert_eq!(memsw, (256u64 << 20).to_string());
    }
    assert_eq!(cg("pids", "pids.max")?, "333");
    let pid = guard.0.as_ref().unwrap().pid().to_string();
    for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
        assert!(cg(c, "cgroup.procs")?.lines().any(|l| l == pid), "{c}");
    }
    let stats = guard.0.as_ref().unwrap().stats()?;
    assert_eq!(stats.memory_limit_bytes, 256 << 20);
    assert!(stats.memory_usage_bytes > 0);
    assert_eq!(stats.pids, 1);
    assert!(stats.cpu_usage_ns > 0);
    assert_eq!(stats.disk_used_bytes, None);
    guard.0.take().unwrap().kill(true)?;
    Ok(())
}

#[test]
fn data_volume_is_idempotent() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let Some(v) = Volume::new() else {
        return Ok(());
    };
    let again = ensure_data_volume(
        v.volume.mount_point(),
        &v.dir.path().join("data.img"),
        512 << 20,
    )?;
    assert_eq!(again.mount_point(), v.volume.mount_point());
    assert!(hearth_runtime_container::supports_disk_limits(
        v.volume.mount_point()
    )?);
    let mounts = host_mounts();
    let here = v.volume.mount_point().to_string_lossy().into_owned();
    assert_eq!(
        mounts
            .iter()
            .filter(|m| m.ends_with(&format!(" {here}")))
            .count(),
        1
    );
    // After an unmount (a host reboot, say) the same image comes back with its data.
    fs::write(v.volume.mount_point().join("marker"), "kept")?;
    v.volume.unmount()?;
    let back = ensure_data_volume(
        v.volume.mount_point(),
        &v.dir.path().join("data.img"),
        512 << 20,
    )?;
    assert_eq!(
        fs::read_to_string(back.mount_point().join("marker"))?,
        "kept"
    );
    Ok(())
}

#[test]
fn disk_limit_stops_writes_and_copy_ups_past_it() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let Some(v) = Volume::new() else {
        return Ok(());
    };
    // A second layer above busybox holding a file larger than the limit.
    let big_layer = tempfile::Builder::new().prefix("hearth-layer-").tempdir()?;
    fs::write(big_layer.path().join("big"), vec![7u8; 24 << 20])?;
    let mut spec = spec(
        v.volume.mount_point(),
        vec![big_layer.path().to_owned(), busybox_rootfs().to_owned()],
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/fill bs=1M count=64 2>&1 | tail -1; sync; \
             du -k /fill | cut -f1; rm /fill; echo x >> /big; echo append=$?; exec sleep 1000",
        ],
    );
    spec.output = Some(v.dir.path().join("out"));
    spec.limits.disk_bytes = Some(16 << 20);
    let mut guard = Guard(Some(launcher().launch(&spec)?));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !output(&spec)?.contains("append=") {
        assert!(std::time::Instant::now() < deadline, "{}", output(&spec)?);
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = output(&spec)?;
    assert!(out.contains("Disk quota exceeded"), "{out}");
    let written_kib: u64 = out
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (8 << 10..=16 << 10).contains(&written_kib),
        "wrote {written_kib} KiB: {out}"
    );
    assert!(
        out.contains("append=1"),
        "copy-up of a 24 MiB file must fail: {out}"
    );
    let stats = guard.0.as_ref().unwrap().stats()?;
    assert_eq!(stats.disk_limit_bytes, Some(16 << 20));
    assert!(stats.disk_used_bytes.unwrap() <= 16 << 20, "{stats:?}");
    guard.0.take().unwrap().kill(true)?;
    assert!(!spec.state_dir.exists());
    Ok(())
}
