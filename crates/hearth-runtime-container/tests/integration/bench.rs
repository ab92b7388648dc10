// SPDX-License-Identifier: Apache-2.0
//! Launch latency: from `launch()` to envd answering `/health` inside the netns.

use crate::common::*;
use anyhow::Result;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn envd_answers_health_and_launch_latency_is_measured() -> Result<()> {
    if !privileged() || static_envd().is_none() {
        return Ok(());
    }
    let netns = Netns::new(&format!("bench-{}", std::process::id()))?;
    let base = state_base();
    let runs = std::env::var("HEARTH_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50usize);
    let mut launch = Vec::new();
    let mut health = Vec::new();
    for _ in 0..runs {
        let mut spec = spec(
            base.path(),
            vec![busybox_rootfs().to_owned()],
            &["/usr/bin/hearth-envd", "--log-level", "warn"],
        );
        spec.netns = Some(netns.path());
        spec.env = vec![
            ("E2B_SANDBOX".into(), "true".into()),
            ("E2B_SANDBOX_ID".into(), spec.id.clone()),
        ];
        let t0 = Instant::now();
        let mut c = launcher().launch(&spec)?;
        launch.push(t0.elapsed());
        let h = wait_health(&netns, t0, Duration::from_secs(10));
        c.kill(true)?;
        health.push(h?);
    }
    launch.sort();
    health.sort();
    eprintln!(
        "launch() over {runs}: p50 {:?} p90 {:?} max {:?}",
        percentile(&launch, 0.5),
        percentile(&launch, 0.9),
        launch[launch.len() - 1]
    );
    eprintln!(
        "launch() to envd /health over {runs}: p50 {:?} p90 {:?} max {:?}",
        percentile(&health, 0.5),
        percentile(&health, 0.9),
        health[health.len() - 1]
    );
    // Generous bound for a loaded 2-core CI machine; the report carries the numbers.
    assert!(percentile(&health, 0.5) < Duration::from_millis(250));
    Ok(())
}

#[test]
fn launch_latency_with_a_disk_limit_is_measured() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let Some(v) = Volume::new() else {
        return Ok(());
    };
    let mut launch = Vec::new();
    let mut kill = Vec::new();
    for _ in 0..30 {
        let mut spec = script(v.volume.mount_point(), "exec sleep 1000");
        spec.output = None;
        spec.limits.disk_bytes = Some(1 << 30);
        let t0 = Instant::now();
        let mut c = launcher().launch(&spec)?;
        launch.push(t0.elapsed());
        let t1 = Instant::now();
        c.kill(true)?;
        kill.push(t1.elapsed());
    }
    launch.sort();
    kill.sort();
    eprintln!(
        "launch() with a btrfs disk limit over 30: p50 {:?} p90 {:?}; kill(remove_state) p50 {:?}",
        percentile(&launch, 0.5),
        percentile(&launch, 0.9),
        percentile(&kill, 0.5)
    );
    Ok(())
}
