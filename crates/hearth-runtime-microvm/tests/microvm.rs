// SPDX-License-Identifier: Apache-2.0
//! End-to-end tests of the microVM runtime against real QEMU, real namespaces and the
//! real envd (privileged; skipped with a message when prerequisites are missing).
//!
//! The default set stays within a few minutes under TCG. The first run also builds
//! the guest artifacts, the base layers and the template snapshot (cached after).
#![allow(clippy::unwrap_used)]
// The VM tests hold one process-wide lock for their whole run, across awaits, on
// purpose: it serialises them (see `common::serial`).
#![allow(clippy::await_holding_lock)]

mod common;

use hearth_runtime::{PauseMode, Runtime};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_from_template_snapshot_runs_commands_and_leaves_nothing() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().expect("net");
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let t = Instant::now();
    let mut inst = vm.create(&spec).await.expect("create");
    let created = t.elapsed();
    let addr = inst.envd_addr();
    assert_eq!(common::health(addr).unwrap(), 204);
    // What the node does next: /init with env vars and the host's clock (the
    // template's memory holds a clock from when it was built).
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .unwrap();
    let body = serde_json::json!({
        "envVars": {"HEARTH_MV": "yes"},
        "timestamp": String::from_utf8_lossy(&now.stdout).trim(),
    })
    .to_string();
    let (status, _) = common::http(
        addr,
        "POST",
        "/init",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 204);
    let (_, envs) = common::http(addr, "GET", "/envs", &[], b"").unwrap();
    assert!(String::from_utf8_lossy(&envs).contains("\"HEARTH_MV\":\"yes\""));
    let guest_now: i64 = common::run(addr, "date +%s")
        .unwrap()
        .stdout
        .trim()
        .parse()
        .unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest_now - host_now).abs() <= 5,
        "guest clock {guest_now} vs host {host_now}"
    );
    let ran = common::run(addr, "echo hello from $(uname -r); id -un").expect("run");
    assert_eq!(ran.exit_code, 0, "{ran:?}");
    assert!(ran.stdout.contains("hello from 6."), "{ran:?}");
    eprintln!(
        "created from snapshot in {created:?}; output {:?}",
        ran.stdout
    );
    let stats = inst.stats().await.unwrap();
    assert_eq!(stats.cpu_count, common::TEMPLATE.cpu_count);
    assert!(
        stats.mem_used > 0 && stats.disk_total >= 2 << 30,
        "{stats:?}"
    );
    assert!(inst.is_alive());
    inst.kill().await.expect("kill");
    assert!(!inst.is_alive());
    inst.kill().await.expect("second kill is a no-op");
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_artifacts_build_and_doctor_explains_the_accelerator() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let guest = vm
        .guest(&hearth_runtime_microvm::NoProgress)
        .await
        .expect("guest artifacts");
    assert!(guest.kernel.is_file() && guest.initramfs.is_file());
    let cpio = std::fs::read(&guest.initramfs).unwrap();
    for needle in [
        "virtio_mmio.ko",
        "virtio_blk.ko",
        "virtio_net.ko",
        "bin/busybox",
    ] {
        assert!(
            cpio.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "initramfs lacks {needle}"
        );
    }
    // A second call is served from the index without rebuilding.
    let again = common::runtime()
        .guest(&hearth_runtime_microvm::NoProgress)
        .await
        .unwrap();
    assert_eq!(again, guest);
    let report = vm
        .doctor(&hearth_runtime_microvm::NoProgress)
        .await
        .expect("doctor");
    eprintln!("accelerator: {} ({})", report.accel.as_str(), report.reason);
    assert!(!report.reason.is_empty());
    if !report.kvm_device {
        assert_eq!(report.accel, hearth_runtime_microvm::Accel::Tcg);
    }
    if report.kvm_modules.iter().any(|m| m == "kvm_pvm")
        && !report
            .kvm_modules
            .iter()
            .any(|m| m == "kvm_intel" || m == "kvm_amd")
    {
        // This project's CI host: PVM-backed /dev/kvm cannot boot a stock kernel.
        assert_eq!(
            report.accel,
            hearth_runtime_microvm::Accel::Tcg,
            "{report:?}"
        );
        assert!(report.probed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_from_one_snapshot_are_independent() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let (na, nb) = (
        common::TestNet::new().unwrap(),
        common::TestNet::new().unwrap(),
    );
    let (sa, sb) = (
        common::spec(&artifacts, &na, common::TEMPLATE),
        common::spec(&artifacts, &nb, common::TEMPLATE),
    );
    let _guard = common::Guard::new(&[&sa, &sb]);
    let mut a = vm.create(&sa).await.expect("create a");
    let mut b = vm.create(&sb).await.expect("create b");
    let w = common::run(
        a.envd_addr(),
        "echo only-in-a > /tmp/mark && sync && cat /tmp/mark",
    )
    .unwrap();
    assert_eq!(w.stdout.trim(), "only-in-a", "{w:?}");
    let r = common::run(b.envd_addr(), "cat /tmp/mark 2>/dev/null || echo absent").unwrap();
    assert_eq!(r.stdout.trim(), "absent", "b sees a's file: {r:?}");
    assert_ne!(a.state()["disk"], b.state()["disk"]);
    a.kill().await.unwrap();
    b.kill().await.unwrap();
    assert_eq!(common::leftovers(&sa, &na), Vec::<String>::new());
    assert_eq!(common::leftovers(&sb, &nb), Vec::<String>::new());
    for s in [&sa, &sb] {
        let _ = std::fs::remove_dir_all(&s.state_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pause_and_resume_keep_boot_id_processes_and_files() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let mut inst = vm.create(&spec).await.expect("create");
    let addr = inst.envd_addr();
    let boot = common::boot_id(addr).unwrap();
    let pid = common::run(
        addr,
        "setsid sleep 100000 >/dev/null 2>&1 < /dev/null & echo $!; echo kept > ~/f",
    )
    .unwrap()
    .stdout
    .trim()
    .to_owned();
    assert!(!pid.is_empty());
    let dir = spec.state_dir.join("pause");
    let t = Instant::now();
    let paused = inst.pause(true, &dir).await.expect("pause");
    let pause_time = t.elapsed();
    assert_eq!(paused.mode, PauseMode::Full);
    assert!(!inst.is_alive());
    let size = std::fs::metadata(dir.join("vm.state")).unwrap().len();
    assert!(!net.tap_in_use(), "QEMU still holds the tap while paused");
    let t = Instant::now();
    let mut resumed = vm.resume(&spec, &paused).await.expect("resume");
    let resume_time = t.elapsed();
    eprintln!(
        "memory pause {pause_time:?} ({} MiB), resume {resume_time:?}",
        size >> 20
    );
    let addr = resumed.envd_addr();
    assert_eq!(
        common::boot_id(addr).unwrap(),
        boot,
        "memory resume rebooted"
    );
    let alive = common::run(addr, &format!("kill -0 {pid} && echo alive; cat ~/f")).unwrap();
    assert_eq!(alive.stdout, "alive\nkept\n", "{alive:?}");
    // The pause was consumed; a second pause/resume cycle works the same.
    assert!(!dir.join("vm.state").exists());
    let again = resumed.pause(true, &dir).await.expect("second pause");
    let mut resumed = vm.resume(&spec, &again).await.expect("second resume");
    assert_eq!(common::boot_id(resumed.envd_addr()).unwrap(), boot);
    resumed.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_pause_reboots_and_keeps_unsynced_writes() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let mut inst = vm.create(&spec).await.expect("create");
    let addr = inst.envd_addr();
    let boot = common::boot_id(addr).unwrap();
    // No sync: the pause itself must flush the guest's page cache.
    let w = common::run(
        addr,
        "head -c 3000000 /dev/urandom > ~/blob && sha256sum ~/blob",
    )
    .unwrap();
    let sum = w.stdout.split_whitespace().next().unwrap().to_owned();
    let dir = spec.state_dir.join("pause");
    let t = Instant::now();
    let paused = inst.pause(false, &dir).await.expect("pause");
    let pause_time = t.elapsed();
    assert_eq!(paused.mode, PauseMode::Filesystem);
    let log = std::fs::read_to_string(spec.state_dir.join("console.log")).unwrap();
    assert!(
        log.contains("Emergency Sync complete"),
        "no guest sync in {log}"
    );
    assert!(!dir.join("vm.state").exists());
    let t = Instant::now();
    let mut resumed = vm.resume(&spec, &paused).await.expect("resume");
    eprintln!(
        "filesystem pause {pause_time:?}, resume (cold boot) {:?}",
        t.elapsed()
    );
    let addr = resumed.envd_addr();
    assert_ne!(
        common::boot_id(addr).unwrap(),
        boot,
        "filesystem resume kept the boot"
    );
    let r = common::run(addr, "sha256sum ~/blob").unwrap();
    assert_eq!(
        r.stdout.split_whitespace().next(),
        Some(sum.as_str()),
        "{r:?}"
    );
    resumed.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_boot_without_snapshot_reaches_envd() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let mut artifacts = common::template(&vm).await.expect("template");
    artifacts.vm_state = None;
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let t = Instant::now();
    let mut inst = vm.create(&spec).await.expect("cold boot");
    eprintln!("cold boot to envd in {:?}", t.elapsed());
    let r = common::run(inst.envd_addr(), "hostname; cat /proc/cmdline").unwrap();
    assert!(r.stdout.starts_with("e2b.local\n"), "{r:?}");
    inst.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_adopts_the_vm_or_cleans_up() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let inst = vm.create(&spec).await.expect("create");
    let state = inst.state();
    drop(inst); // as if hearth exited: QEMU keeps running
    let vm2 = common::runtime();
    assert!(
        vm2.adopt(&spec, &serde_json::json!({"bogus": true}))
            .await
            .unwrap()
            .is_none()
    );
    let mut adopted = vm2.adopt(&spec, &state).await.unwrap().expect("adopt");
    assert_eq!(common::health(adopted.envd_addr()).unwrap(), 204);
    assert_eq!(
        common::run(adopted.envd_addr(), "echo ok").unwrap().stdout,
        "ok\n"
    );
    adopted.kill().await.unwrap();
    assert!(
        vm2.adopt(&spec, &state).await.unwrap().is_none(),
        "a dead VM was adopted"
    );
    vm2.cleanup(&spec, Some(&state)).await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());

    // A VM nobody adopts is removed by cleanup.
    let inst = vm.create(&spec).await.expect("create");
    let state = inst.state();
    drop(inst);
    vm2.cleanup(&spec, Some(&state)).await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_interrupted_after_stopping_the_vm_is_recovered() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let inst = vm.create(&spec).await.expect("create");
    common::run(inst.envd_addr(), "echo survived > ~/f && sync").unwrap();
    let state = inst.state();
    drop(inst);
    // Replay a filesystem pause up to "vCPUs stopped", then "crash".
    let dir = spec.state_dir.join("pause");
    std::fs::create_dir_all(&dir).unwrap();
    let intent = serde_json::json!({
        "dir": dir, "memory": false, "resources": spec.resources, "machine": state["machine"],
    });
    std::fs::write(spec.state_dir.join("pause.intent"), intent.to_string()).unwrap();
    let qmp_path = std::path::PathBuf::from(state["qmp"].as_str().unwrap());
    let mut q = hearth_runtime_microvm::qmp::Qmp::connect(&qmp_path)
        .await
        .unwrap();
    q.execute("stop", None).await.unwrap();
    drop(q);
    let vm2 = common::runtime();
    assert!(vm2.adopt(&spec, &state).await.unwrap().is_none());
    let paused = vm2.recovered_pause(&spec).expect("recovered pause");
    assert_eq!(paused.mode, PauseMode::Filesystem);
    let mut resumed = vm2.resume(&spec, &paused).await.expect("resume");
    let r = common::run(resumed.envd_addr(), "cat ~/f").unwrap();
    assert_eq!(r.stdout, "survived\n");
    resumed.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_pause_interrupted_after_the_read_only_remount_goes_forward() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let inst = vm.create(&spec).await.expect("create");
    // Unsynced on purpose: the recovery must sync it.
    let addr = inst.envd_addr();
    common::run(addr, "echo kept > ~/f").unwrap();
    let state = inst.state();
    drop(inst);
    // Replay a filesystem pause up to the guest's read-only remount, then "crash"
    // with the VM still running: running on would leave it unable to write.
    let dir = spec.state_dir.join("pause");
    std::fs::create_dir_all(&dir).unwrap();
    let intent = serde_json::json!({
        "dir": dir, "memory": false, "resources": spec.resources, "machine": state["machine"],
    });
    std::fs::write(spec.state_dir.join("pause.intent"), intent.to_string()).unwrap();
    let r = common::run(addr, "echo u > /proc/sysrq-trigger; sleep 1; touch /probe").unwrap();
    assert_ne!(r.exit_code, 0, "the guest's root should be read-only now");
    let vm2 = common::runtime();
    assert!(vm2.adopt(&spec, &state).await.unwrap().is_none());
    let paused = vm2.recovered_pause(&spec).expect("recovered pause");
    assert_eq!(paused.mode, PauseMode::Filesystem);
    let mut resumed = vm2.resume(&spec, &paused).await.expect("resume");
    let r = common::run(resumed.envd_addr(), "cat ~/f && echo w > ~/g && cat ~/g").unwrap();
    assert_eq!(r.stdout, "kept\nw\n");
    resumed.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_interrupted_before_saving_keeps_the_vm_running() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let inst = vm.create(&spec).await.expect("create");
    let state = inst.state();
    drop(inst);
    // A memory pause that stopped the vCPUs but never finished writing its state.
    let dir = spec.state_dir.join("pause");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".vm.state.1.0.tmp"), b"partial").unwrap();
    let intent = serde_json::json!({
        "dir": dir, "memory": true, "resources": spec.resources, "machine": state["machine"],
    });
    std::fs::write(spec.state_dir.join("pause.intent"), intent.to_string()).unwrap();
    let qmp_path = std::path::PathBuf::from(state["qmp"].as_str().unwrap());
    let mut q = hearth_runtime_microvm::qmp::Qmp::connect(&qmp_path)
        .await
        .unwrap();
    q.execute("stop", None).await.unwrap();
    drop(q);
    let vm2 = common::runtime();
    let mut adopted = vm2
        .adopt(&spec, &state)
        .await
        .unwrap()
        .expect("still running");
    assert_eq!(
        common::run(adopted.envd_addr(), "echo up").unwrap().stdout,
        "up\n"
    );
    assert!(!spec.state_dir.join("pause.intent").exists());
    assert!(vm2.recovered_pause(&spec).is_none());
    adopted.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_snapshot_forks_running_processes_into_new_sandboxes() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let mut inst = vm.create(&spec).await.expect("create");
    let addr = inst.envd_addr();
    let pid = common::run(
        addr,
        "setsid sleep 100000 >/dev/null 2>&1 < /dev/null & echo $!; echo parent > ~/f",
    )
    .unwrap()
    .stdout
    .trim()
    .to_owned();
    let snap_dir = spec.state_dir.join("snap");
    let snap = inst.snapshot(true, &snap_dir).await.expect("snapshot");
    assert_eq!(snap.mode, PauseMode::Full);
    // The source runs on.
    assert_eq!(
        common::run(addr, "echo changed > ~/f; echo ok")
            .unwrap()
            .stdout,
        "ok\n"
    );
    let fork_artifacts = artifacts.with_snapshot(&snap.artifacts);
    let net2 = common::TestNet::new().unwrap();
    let fspec = common::spec(&fork_artifacts, &net2, common::TEMPLATE);
    let _guard2 = common::Guard::new(&[&fspec]);
    let mut fork = vm.create(&fspec).await.expect("create from snapshot");
    let r = common::run(
        fork.envd_addr(),
        &format!("kill -0 {pid} && echo alive; cat ~/f"),
    )
    .unwrap();
    assert_eq!(r.stdout, "alive\nparent\n", "{r:?}");
    fork.kill().await.unwrap();
    inst.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    assert_eq!(common::leftovers(&fspec, &net2), Vec::<String>::new());
    for s in [&spec, &fspec] {
        let _ = std::fs::remove_dir_all(&s.state_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_create_kill_cycles_leave_nothing() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let mut times = Vec::new();
    for _ in 0..20 {
        let spec = common::spec(&artifacts, &net, common::TEMPLATE);
        let _guard = common::Guard::new(&[&spec]);
        let t = Instant::now();
        let mut inst = vm.create(&spec).await.expect("create");
        times.push(t.elapsed());
        inst.kill().await.expect("kill");
        assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
        std::fs::remove_dir_all(&spec.state_dir).unwrap();
    }
    times.sort();
    eprintln!(
        "create p50 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let cgroups = std::fs::read_dir(format!("/sys/fs/cgroup/memory/{}", common::INSTANCE))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(
        cgroups,
        0,
        "sandbox cgroups left under {}",
        common::INSTANCE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_snapshot_keeps_unsynced_files_and_the_source_runs_on() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let mut inst = vm.create(&spec).await.expect("create");
    let addr = inst.envd_addr();
    common::run(addr, "echo snapshotted > ~/f").unwrap();
    let snap_dir = spec.state_dir.join("snap");
    let snap = inst.snapshot(false, &snap_dir).await.expect("snapshot");
    assert_eq!(snap.mode, PauseMode::Filesystem);
    assert!(snap.artifacts.vm_state.is_none());
    // The source is writable and running after the sync.
    let r = common::run(addr, "echo later >> ~/f && cat ~/f").unwrap();
    assert_eq!(r.stdout, "snapshotted\nlater\n", "{r:?}");
    let net2 = common::TestNet::new().unwrap();
    let fspec = common::spec(
        &artifacts.with_snapshot(&snap.artifacts),
        &net2,
        common::TEMPLATE,
    );
    let _guard2 = common::Guard::new(&[&fspec]);
    let mut copy = vm.create(&fspec).await.expect("boot from snapshot");
    assert_eq!(
        common::run(copy.envd_addr(), "cat ~/f").unwrap().stdout,
        "snapshotted\n"
    );
    copy.kill().await.unwrap();
    inst.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
    assert_eq!(common::leftovers(&fspec, &net2), Vec::<String>::new());
    for s in [&spec, &fspec] {
        let _ = std::fs::remove_dir_all(&s.state_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_confined_in_the_slot_its_cgroups_and_a_jail() {
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let spec = common::spec(&artifacts, &net, common::TEMPLATE);
    let _guard = common::Guard::new(&[&spec]);
    let mut inst = vm.create(&spec).await.expect("create");
    let pid = inst.state()["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uid = (vm.config().uid_base + spec.ordinal).to_string();
    assert_eq!(field("Uid:"), [uid.as_str(); 4], "{status}");
    assert_eq!(field("Gid:"), [uid.as_str(); 4], "{status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("Seccomp:"), ["2"], "no seccomp filter");
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(
        root.ends_with("microvm/empty"),
        "not chrooted: {}",
        root.display()
    );
    let ns = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    assert_eq!(
        ns(&format!("/proc/{pid}/ns/net")),
        ns(&format!("/run/netns/{}", net.name)),
        "QEMU is not in the slot's network namespace"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for ctrl in ["memory", "pids"] {
        let want = format!(":{ctrl}:/{}/{}", common::INSTANCE, spec.id.as_str());
        assert!(cgroups.lines().any(|l| l.ends_with(&want)), "{cgroups}");
    }
    let limit: u64 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/{}/memory.limit_in_bytes",
        common::INSTANCE,
        spec.id.as_str()
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    // Twice the guest's RAM (the shared template memory is charged to whichever VM
    // touches it first, on top of the VM's own copy) plus QEMU's overhead, bounded.
    assert!(
        limit > 2 * (512 << 20) && limit < 2 << 30,
        "memory limit {limit}"
    );
    inst.kill().await.unwrap();
    assert_eq!(common::leftovers(&spec, &net), Vec::<String>::new());
}
