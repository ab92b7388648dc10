// SPDX-License-Identifier: Apache-2.0
//! Measurements of the microVM runtime (not a pass/fail test). Runs only with
//! `HEARTH_MICROVM_BENCH=1`; use a release build for realistic runtime overhead:
//!
//! ```text
//! HEARTH_MICROVM_BENCH=1 cargo test --release -p hearth-runtime-microvm --test bench -- --nocapture
//! ```
//!
//! Prints a table and writes `target/microvm-bench.json`. Knobs:
//! `HEARTH_MICROVM_BENCH_N` (creates, default 20), `..._COLD` (cold boots, default 3),
//! `..._PAUSES` (memory pause/resume cycles, default 5).
#![allow(clippy::unwrap_used)]
#![allow(clippy::await_holding_lock)]

mod common;

use hearth_runtime::{Instance, Runtime};
use hearth_runtime_microvm::{MicroVmInstance, NoProgress};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn summary(v: &[f64]) -> serde_json::Value {
    json!({"n": v.len(), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "min": pct(v, 0.0), "max": pct(v, 1.0)})
}

fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_microvm() {
    if std::env::var_os("HEARTH_MICROVM_BENCH").is_none() {
        eprintln!("skipping: set HEARTH_MICROVM_BENCH=1 to measure");
        return;
    }
    require_env!();
    let _serial = common::serial();
    let vm = common::runtime();
    let guest = vm.guest(&NoProgress).await.unwrap();
    let artifacts = common::template(&vm).await.expect("template");
    let net = common::TestNet::new().unwrap();
    let mut report = serde_json::Map::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.insert("loadavg_start".into(), json!(load.trim()));

    // 1. Raw QEMU baseline.
    let raw: Vec<f64> = {
        let mut v = Vec::new();
        for _ in 0..env_n("HEARTH_MICROVM_BENCH_COLD", 3) {
            v.push(ms(hearth_runtime_microvm::baseline::raw_boot(
                &guest,
                artifacts.disk_image.as_ref().unwrap(),
                hearth_runtime_microvm::Accel::Tcg,
                Path::new("/var/cache/hearth-test/microvm-home/raw"),
            )
            .await
            .unwrap()));
        }
        v
    };
    report.insert("raw_qemu_to_first_userspace_line_ms".into(), summary(&raw));

    // 2. Cold boot to envd ready (no snapshot).
    let mut cold_artifacts = artifacts.clone();
    cold_artifacts.vm_state = None;
    let mut cold = Vec::new();
    for _ in 0..env_n("HEARTH_MICROVM_BENCH_COLD", 3) {
        let spec = common::spec(&cold_artifacts, &net, common::TEMPLATE);
        let _g = common::Guard::new(&[&spec]);
        let t = Instant::now();
        let mut i = vm.create(&spec).await.unwrap();
        cold.push(ms(t.elapsed()));
        i.kill().await.unwrap();
    }
    report.insert("cold_boot_to_envd_ms".into(), summary(&cold));

    // 3. Create from the template snapshot: to /health, to a first command.
    let n = env_n("HEARTH_MICROVM_BENCH_N", 20);
    let (mut ready, mut first_cmd, mut qmp, mut restore) = (vec![], vec![], vec![], vec![]);
    let mut running = vec![];
    for _ in 0..n {
        let spec = common::spec(&artifacts, &net, common::TEMPLATE);
        let _g = common::Guard::new(&[&spec]);
        let t = Instant::now();
        let mut i: MicroVmInstance = vm.create_vm(&spec).await.unwrap();
        ready.push(ms(t.elapsed()));
        let r = common::run(i.envd_addr(), "true").unwrap();
        assert_eq!(r.exit_code, 0);
        first_cmd.push(ms(t.elapsed()));
        let tm = i.timings();
        qmp.push(tm.qmp_ms);
        restore.push(tm.restore_ms);
        running.push(tm.running_ms);
        i.kill().await.unwrap();
    }
    report.insert("create_from_snapshot_to_health_ms".into(), summary(&ready));
    report.insert(
        "create_from_snapshot_to_first_command_ms".into(),
        summary(&first_cmd),
    );
    report.insert("create_step_qemu_up_ms".into(), summary(&qmp));
    report.insert("create_step_state_loaded_ms".into(), summary(&restore));
    report.insert("create_step_vcpus_running_ms".into(), summary(&running));

    // 4. Idle footprint: RSS of QEMU and cgroup usage after 5 s idle; idle CPU.
    {
        let spec = common::spec(&artifacts, &net, common::TEMPLATE);
        let _g = common::Guard::new(&[&spec]);
        let mut i = vm.create_vm(&spec).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pid = i.pid();
        let cpu0 = i.stats().await.unwrap().cpu_time_ns;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stats = i.stats().await.unwrap();
        report.insert(
            "idle_vm".into(),
            json!({
                "rss_kib": proc_kb(pid, "VmRSS"),
                "rss_anon_kib": proc_kb(pid, "RssAnon"),
                "rss_file_kib": proc_kb(pid, "RssFile"),
                "rss_shmem_kib": proc_kb(pid, "RssShmem"),
                "cgroup_mem_used_kib": stats.mem_used / 1024,
                "cpu_percent_idle": (stats.cpu_time_ns - cpu0) as f64 / 5e9 * 100.0,
                "disk_used_kib": stats.disk_used / 1024,
            }),
        );
        i.kill().await.unwrap();
    }

    // 5. Memory pause/resume cycles of an idle sandbox, and after writing 100 MB.
    {
        let spec = common::spec(&artifacts, &net, common::TEMPLATE);
        let _g = common::Guard::new(&[&spec]);
        let mut inst: Box<dyn Instance> = vm.create(&spec).await.unwrap();
        let dir = spec.state_dir.join("pause");
        let (mut pauses, mut resumes, mut sizes) = (vec![], vec![], vec![]);
        for _ in 0..env_n("HEARTH_MICROVM_BENCH_PAUSES", 5) {
            let t = Instant::now();
            let p = inst.pause(true, &dir).await.unwrap();
            pauses.push(ms(t.elapsed()));
            sizes.push(std::fs::metadata(dir.join("vm.state")).unwrap().len() as f64 / 1048576.0);
            let t = Instant::now();
            inst = vm.resume(&spec, &p).await.unwrap();
            resumes.push(ms(t.elapsed()));
        }
        common::run(
            inst.envd_addr(),
            "head -c 100000000 /dev/urandom > /tmp/big",
        )
        .unwrap();
        let t = Instant::now();
        let p = inst.pause(true, &dir).await.unwrap();
        let big_pause = ms(t.elapsed());
        let big_size = std::fs::metadata(dir.join("vm.state")).unwrap().len() as f64 / 1048576.0;
        let t = Instant::now();
        inst = vm.resume(&spec, &p).await.unwrap();
        let big_resume = ms(t.elapsed());
        report.insert("memory_pause_ms".into(), summary(&pauses));
        report.insert("memory_resume_ms".into(), summary(&resumes));
        report.insert("memory_snapshot_mib_idle".into(), summary(&sizes));
        report.insert(
            "memory_after_100mb_write".into(),
            json!({"pause_ms": big_pause, "resume_ms": big_resume, "snapshot_mib": big_size}),
        );
        // Filesystem pause/resume.
        let t = Instant::now();
        let p = inst.pause(false, &dir).await.unwrap();
        let fs_pause = ms(t.elapsed());
        let t = Instant::now();
        inst = vm.resume(&spec, &p).await.unwrap();
        let fs_resume = ms(t.elapsed());
        report.insert(
            "filesystem_pause".into(),
            json!({"pause_ms": fs_pause, "resume_cold_boot_ms": fs_resume}),
        );
        // Fork latency: memory snapshot + create from it.
        let snap_dir = spec.state_dir.join("snap");
        let t = Instant::now();
        let snap = inst.snapshot(true, &snap_dir).await.unwrap();
        let snap_ms = ms(t.elapsed());
        let fork_artifacts = artifacts.with_snapshot(&snap.artifacts);
        let fspec = common::spec(&fork_artifacts, &net, common::TEMPLATE);
        inst.kill().await.unwrap();
        let _g2 = common::Guard::new(&[&fspec]);
        let t = Instant::now();
        let mut fork = vm.create(&fspec).await.unwrap();
        let fork_ms = ms(t.elapsed());
        report.insert(
            "fork".into(),
            json!({"snapshot_ms": snap_ms, "create_ms": fork_ms}),
        );
        fork.kill().await.unwrap();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.insert("loadavg_end".into(), json!(load.trim()));
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap();
    eprintln!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/microvm-bench.json");
    std::fs::write(out, &text).unwrap();
}
