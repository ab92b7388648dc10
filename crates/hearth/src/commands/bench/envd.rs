// SPDX-License-Identifier: Apache-2.0
//! `hearth bench envd`: envd over loopback, against the host's own fork+exec floor.
//!
//! envd runs as a child process on a free loopback port (as the invoking user); the
//! client is Rust over keep-alive HTTP/1.1, so the numbers are envd's, not an SDK's.

use super::{Row, Summary, machine, print_table};
use anyhow::Context;
use bytes::Bytes;
use hearth_client::Envd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `hearth bench envd`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvdBenchArgs {
    /// The envd binary to measure (default: next to this binary).
    #[arg(long)]
    pub envd: Option<PathBuf>,
    /// Iterations per latency benchmark.
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn default_envd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [
        dir.join("hearth-envd"),
        dir.join("../x86_64-unknown-linux-gnu/envd/hearth-envd"),
        dir.join("../../x86_64-unknown-linux-gnu/envd/hearth-envd"),
    ] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no hearth-envd next to {}; pass --envd", exe.display())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

async fn time_n<F, Fut>(n: usize, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // Warm connections and caches first; the first calls measure set-up, not steady state.
    for _ in 0..n.min(10) {
        f().await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

pub async fn run(args: EnvdBenchArgs) -> anyhow::Result<()> {
    let envd_bin = match args.envd.clone() {
        Some(p) => p,
        None => default_envd()?,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let root = tempfile_root()?;
    let mut child = tokio::process::Command::new(&envd_bin)
        .args([
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--default-user",
            "root",
            "--log-level",
            "warn",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start {}", envd_bin.display()))?;
    let pid = child.id().context("envd exited")?;
    let base = format!("http://127.0.0.1:{port}");
    let envd = Envd::direct(&base, None);
    let ready = Instant::now();
    while envd
        .unary("/process.Process/List", serde_json::json!({}))
        .await
        .is_err()
    {
        if ready.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("envd did not come up on {base}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(pid)?;
    let n = args.iterations;
    let mut rows = Vec::new();

    // Floor: the host's own fork+exec+wait of /bin/true.
    let floor = {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            std::process::Command::new("/bin/true").status()?;
            v.push(t.elapsed());
        }
        v
    };
    rows.push(Row::latency(
        "host fork+exec /bin/true (floor)",
        Summary::of(&floor),
        None,
    ));

    let cmd = time_n(n, || async {
        let out = envd.exec("/bin/true", &[]).await?;
        anyhow::ensure!(out.exit_code == 0, "true failed");
        Ok(())
    })
    .await?;
    rows.push(Row::latency(
        "command round trip (/bin/true)",
        Summary::of(&cmd),
        Some(2.0),
    ));

    let small = Bytes::from(vec![b'x'; 4096]);
    let big = Bytes::from(vec![b'y'; 4 << 20]);
    let w4k = time_n(n, || async {
        Ok(envd
            .write_file(&root.join("4k").to_string_lossy(), small.clone())
            .await?)
    })
    .await?;
    rows.push(Row::latency("write 4 KiB file", Summary::of(&w4k), None));
    let r4k = time_n(n, || async {
        let b = envd.read_file(&root.join("4k").to_string_lossy()).await?;
        anyhow::ensure!(b.len() == 4096, "short read");
        Ok(())
    })
    .await?;
    rows.push(Row::latency(
        "read 4 KiB file",
        Summary::of(&r4k),
        Some(0.5),
    ));
    let big_n = (n / 5).max(20);
    let w4m = time_n(big_n, || async {
        Ok(envd
            .write_file(&root.join("4m").to_string_lossy(), big.clone())
            .await?)
    })
    .await?;
    let w4m_s = Summary::of(&w4m);
    rows.push(Row::latency("write 4 MiB file", w4m_s.clone(), None));
    rows.push(Row::value(
        "write 4 MiB throughput (p50)",
        4.0 * 1.048576 / (w4m_s.p50_ms / 1e3),
        "MB/s",
        "-",
        None,
    ));
    let r4m = time_n(big_n, || async {
        let b = envd.read_file(&root.join("4m").to_string_lossy()).await?;
        anyhow::ensure!(b.len() == 4 << 20, "short read");
        Ok(())
    })
    .await?;
    let r4m_s = Summary::of(&r4m);
    rows.push(Row::latency("read 4 MiB file", r4m_s.clone(), None));
    let mbps = 4.0 * 1.048576 / (r4m_s.p50_ms / 1e3);
    rows.push(Row::value(
        "read 4 MiB throughput (p50)",
        mbps,
        "MB/s",
        "≥ 500 MB/s",
        Some(mbps >= 500.0),
    ));
    rows.push(Row::value(
        "envd idle RSS",
        idle_rss as f64 / 1024.0,
        "MiB",
        "≤ 8 MiB",
        Some(idle_rss <= 8 * 1024),
    ));

    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&root);

    print_table(
        &format!("hearth bench envd ({})", envd_bin.display()),
        &rows,
    );
    if let Some(path) = args.json {
        let doc = serde_json::json!({"benchmark": "envd", "machine": machine(), "envd": envd_bin, "rows": rows});
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

fn tempfile_root() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
