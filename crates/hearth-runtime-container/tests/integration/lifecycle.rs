// SPDX-License-Identifier: Apache-2.0
//! Lifecycle: exit, freeze/thaw, exact teardown, repeated cycles, adoption.

use crate::common::*;
use anyhow::Result;
use hearth_runtime_container::{Exit, Persisted};
use hearth_sys::process::ChildExit;
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn init_exit_status_is_reported() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(base.path(), "exit 3");
    let mut c = launcher().launch(&spec)?;
    assert_eq!(
        c.wait(Duration::from_secs(10))?,
        Some(Exit::Status(ChildExit::Exited(3)))
    );
    c.kill(true)?;
    c.kill(true)?;
    assert!(cgroup_dirs(&spec.id).is_empty());
    Ok(())
}

#[test]
fn freeze_stops_every_process_and_thaw_resumes() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(
        base.path(),
        "(i=0; while true; do i=$((i+1)); echo $i > /tmp/tick; usleep 5000; done) & exec sleep 1000",
    );
    let mut guard = Guard(Some(launcher().launch(&spec)?));
    let tick = spec.state_dir.join("upper/tmp/tick");
    let read = || fs::read_to_string(&tick).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = guard.0.as_ref().unwrap();
    c.freeze()?;
    assert!(c.is_frozen()?);
    let frozen_at = read();
    let cpu = c.stats()?.cpu_usage_ns;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read(), frozen_at, "nothing runs while frozen");
    assert_eq!(c.stats()?.cpu_usage_ns, cpu);
    c.thaw()?;
    assert!(!c.is_frozen()?);
    std::thread::sleep(Duration::from_millis(100));
    assert_ne!(read(), frozen_at, "runs again after thaw");
    // Killing a frozen sandbox works too.
    c.freeze()?;
    guard.0.take().unwrap().kill(true)?;
    assert!(processes_in_range(spec.id_range).is_empty());
    Ok(())
}

#[test]
fn kill_leaves_no_process_cgroup_mount_or_file() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let before = host_mounts_under(base.path());
    let spec = script(base.path(), "sleep 1000 & sleep 1000 & exec sleep 1000");
    let mut c = launcher().launch(&spec)?;
    std::thread::sleep(Duration::from_millis(50));
    // While it runs, the host sees its processes but none of its mounts.
    assert_eq!(processes_in_range(spec.id_range).len(), 3);
    assert_eq!(host_mounts_under(base.path()), before);
    assert_eq!(cgroup_dirs(&spec.id).len(), 5);
    c.kill(true)?;
    assert!(processes_in_range(spec.id_range).is_empty());
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert_eq!(host_mounts_under(base.path()), before);
    assert!(!spec.state_dir.exists());
    Ok(())
}

#[test]
fn hundred_launch_kill_cycles_leave_nothing_behind() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let netns = Netns::new(&format!("cycles-{}", std::process::id()))?;
    let base = state_base();
    let before = host_mounts_under(base.path());
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..100 {
        let mut spec = script(base.path(), "exec sleep 1000");
        spec.netns = Some(netns.path());
        spec.output = None;
        let mut c = launcher().launch(&spec)?;
        c.kill(true)?;
        ids.push((spec.id.clone(), spec.id_range));
    }
    eprintln!("100 launch+kill cycles: {:?} per cycle", t0.elapsed() / 100);
    for (id, range) in &ids {
        assert!(cgroup_dirs(id).is_empty(), "{id}");
        assert!(processes_in_range(*range).is_empty(), "{id}");
    }
    assert_eq!(host_mounts_under(base.path()), before);
    assert_eq!(fs::read_dir(base.path())?.count(), 0);
    Ok(())
}

#[test]
fn adopt_after_a_simulated_restart_then_kill() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(base.path(), "exec sleep 1000");
    let c = launcher().launch(&spec)?;
    let saved: Persisted = serde_json::from_str(&serde_json::to_string(c.persisted())?)?;
    drop(c);
    // A recycled pid (same number, other start time) is never adopted.
    let mut wrong = saved.clone();
    wrong.start_time += 1;
    assert!(launcher().adopt(&wrong)?.is_none());
    let mut other = saved.clone();
    other.pid = std::process::id();
    other.start_time = 0;
    assert!(launcher().adopt(&other)?.is_none());

    let mut adopted = launcher().adopt(&saved)?.expect("still running");
    assert_eq!(adopted.pid(), saved.pid);
    assert!(adopted.stats()?.pids >= 1);
    adopted.kill(true)?;
    assert!(launcher().adopt(&saved)?.is_none());
    launcher().cleanup_stale(&saved, true)?;
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert!(processes_in_range(spec.id_range).is_empty());
    Ok(())
}

#[test]
fn orphaned_cgroups_are_cleaned_up() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(base.path(), "sleep 1000 & exec sleep 1000");
    let c = launcher().launch(&spec)?;
    let pid = c.pid();
    // The handle and its persisted state are lost (a crash before storing them).
    drop(c);
    let removed = launcher().cleanup_orphans(|id| id != spec.id)?;
    assert_eq!(removed, vec![spec.id.clone()]);
    // We are still init's parent here: collect the zombie.
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None)?;
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert!(processes_in_range(spec.id_range).is_empty());
    hearth_runtime_container::remove_state_dir(&spec.state_dir)?;
    Ok(())
}
