// SPDX-License-Identifier: Apache-2.0
//! `hearth bench pause`: pause and resume latency (memory and filesystem-only),
//! snapshot size (idle, and after writing 100 MB) and fork latency per copy, on the
//! runtime the server runs (`--server-args "--runtime microvm"` for VMs).
//!
//! Latencies are measured at the API (what a client waits for); sizes are the bytes
//! the snapshot adds on disk (`du` of its directory, shared copy-on-write extents
//! counted once).

use super::serve::{BenchRuntime, ServeBenchArgs, Server};
use super::{Row, Summary, machine, print_table};
use hearth_client::Api;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `hearth bench pause`.
#[derive(Debug, Clone, clap::Args)]
pub struct PauseBenchArgs {
    /// Hearth home for the server the benchmark starts.
    #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
    pub home: PathBuf,
    /// Pause/resume cycles per mode.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Forks per fork measurement.
    #[arg(long, default_value_t = 4)]
    pub forks: usize,
    /// The sandbox runtime to measure.
    #[arg(long, value_enum, default_value = "container")]
    pub runtime: BenchRuntime,
    /// Extra arguments for the server, space-separated.
    #[arg(long, default_value = "")]
    pub server_args: String,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn du_bytes(dir: &Path) -> u64 {
    std::process::Command::new("du")
        .args(["-sb"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn newest_snapshot_dir(home: &Path) -> Option<PathBuf> {
    std::fs::read_dir(home.join("data/snapshots"))
        .ok()?
        .flatten()
        .max_by_key(|d| d.metadata().and_then(|m| m.modified()).ok())
        .map(|d| d.path())
}

async fn cycle(api: &Api, id: &str, memory: bool) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    api.pause(id, memory).await?;
    let pause = t.elapsed();
    let t = Instant::now();
    api.connect(id, 300).await?;
    Ok((pause, t.elapsed()))
}

pub async fn run(args: PauseBenchArgs) -> anyhow::Result<()> {
    let server = Server::start(&ServeBenchArgs {
        home: args.home.clone(),
        iterations: 0,
        throughput_creates: 0,
        idle_counts: vec![],
        runtime: args.runtime,
        cold_boots: 0,
        server_args: args.server_args.clone(),
        json: None,
    })
    .await?;
    let api = server.api.clone();
    let mut rows = Vec::new();

    for memory in [true, false] {
        let sbx = api.create("base", 600).await?;
        let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
        for i in 0..args.iterations + 2 {
            let (p, r) = cycle(&api, &sbx.sandbox_id, memory).await?;
            // The resumed sandbox serves: prove it before the next cycle.
            api.envd(&sbx).exec("/bin/true", &[]).await?;
            if i >= 2 {
                pauses.push(p);
                resumes.push(r);
            }
        }
        let mode = if memory { "memory" } else { "filesystem" };
        rows.push(Row::measured(
            &format!("pause ({mode})"),
            Summary::of(&pauses),
        ));
        let name = format!("resume ({mode})");
        rows.push(if memory && args.runtime == BenchRuntime::Microvm {
            Row::latency(&name, Summary::of(&resumes), Some(500.0))
        } else {
            Row::measured(&name, Summary::of(&resumes))
        });
        let both: Vec<Duration> = pauses.iter().zip(&resumes).map(|(p, r)| *p + *r).collect();
        let name = format!("pause + resume ({mode})");
        rows.push(if !memory && args.runtime == BenchRuntime::Container {
            Row::latency(&name, Summary::of(&both), Some(100.0))
        } else {
            Row::measured(&name, Summary::of(&both))
        });
        api.kill(&sbx.sandbox_id).await?;
    }

    // Snapshot sizes.
    let sbx = api.create("base", 600).await?;
    let envd = api.envd(&sbx);
    let t = Instant::now();
    let first = api.snapshot(&sbx.sandbox_id).await?;
    let snap_idle = t.elapsed();
    let idle = newest_snapshot_dir(&args.home)
        .map(|d| du_bytes(&d))
        .unwrap_or(0);
    rows.push(Row::measured(
        "snapshot (idle sandbox)",
        Summary::of(&[snap_idle]),
    ));
    let idle_mb = idle as f64 / 1e6;
    rows.push(match args.runtime {
        // The microVM target: an idle 512 MiB VM stores only its touched memory.
        BenchRuntime::Microvm => Row::value(
            "snapshot size, idle (512 MiB VM)",
            idle_mb,
            "MB",
            "≤ 150 MB",
            Some(idle_mb <= 150.0),
        ),
        BenchRuntime::Container => Row::value("snapshot size, idle", idle_mb, "MB", "-", None),
    });
    let out = envd
        .exec(
            "/bin/sh",
            &[
                "-c",
                "head -c 100000000 /dev/urandom > /home/user/blob && sync",
            ],
        )
        .await?;
    anyhow::ensure!(
        out.exit_code == 0,
        "writing 100 MB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    let second = api.snapshot(&sbx.sandbox_id).await?;
    let snap_full = t.elapsed();
    let full = newest_snapshot_dir(&args.home)
        .map(|d| du_bytes(&d))
        .unwrap_or(0);
    rows.push(Row::measured(
        "snapshot (after writing 100 MB)",
        Summary::of(&[snap_full]),
    ));
    rows.push(Row::value(
        "snapshot size, after writing 100 MB",
        full as f64 / 1e6,
        "MB",
        "-",
        None,
    ));

    // Fork latency per copy.
    let t = Instant::now();
    let forks = api.fork(&sbx.sandbox_id, args.forks).await?;
    let per = t.elapsed() / u32::try_from(args.forks.max(1)).unwrap_or(1);
    rows.push(Row::measured(
        &format!("fork, per copy ({} copies)", args.forks),
        Summary::of(&[per]),
    ));
    for f in forks {
        let _ = api.kill(&f).await;
    }
    api.kill(&sbx.sandbox_id).await?;
    for snapshot in [first, second] {
        api.delete_snapshot(&snapshot).await?;
    }

    server.stop().await;
    print_table(
        &format!(
            "hearth bench pause ({})",
            format!("{} {}", args.runtime.as_str(), args.server_args).trim()
        ),
        &rows,
    );
    if let Some(path) = args.json {
        let doc = serde_json::json!({"benchmark": "pause", "machine": machine(), "runtime": args.runtime, "server_args": args.server_args, "rows": rows});
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
