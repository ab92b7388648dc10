// SPDX-License-Identifier: Apache-2.0
//! `hearth bench serve`: sandbox creation and the data plane, end to end, against two
//! baselines measured in the same run on the same root filesystem:
//! - the floor: `unshare` (mount, pid, uts, ipc namespaces) + `chroot` + `/bin/true`;
//! - a common runtime: `runc run` of `/bin/true` (when `runc` is installed).
//!
//! It starts its own `hearth serve` (this binary) on a free port with the given home,
//! so nothing else may be serving from that home or owning Hearth's network names.

use super::{Row, Summary, machine, print_table};
use anyhow::Context;
use hearth_client::{Api, Created};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `hearth bench serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeBenchArgs {
    /// Hearth home for the server the benchmark starts.
    #[arg(long, env = "HEARTH_HOME", default_value = "/var/lib/hearth")]
    pub home: PathBuf,
    /// Sequential create-to-first-command samples.
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Creates per throughput level.
    #[arg(long, default_value_t = 64)]
    pub throughput_creates: usize,
    /// Idle-sandbox counts for the memory measurement.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub idle_counts: Vec<usize>,
    /// The sandbox runtime to measure. `microvm` measures what matters for VMs
    /// instead: a raw QEMU boot (baseline), cold boot, create from the template
    /// snapshot, memory pause and resume, memory per idle VM.
    #[arg(long, value_enum, default_value = "container")]
    pub runtime: BenchRuntime,
    /// Cold boots (and raw QEMU boots) measured with `--runtime microvm`.
    #[arg(long, default_value_t = 3)]
    pub cold_boots: usize,
    /// Extra arguments for the server, space-separated.
    #[arg(long, default_value = "")]
    pub server_args: String,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The runtime a server benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchRuntime {
    /// Container sandboxes.
    Container,
    /// microVM sandboxes.
    Microvm,
}

impl BenchRuntime {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Microvm => "microvm",
        }
    }
}

pub(crate) struct Server {
    child: tokio::process::Child,
    pub(crate) api: Api,
}

impl Server {
    pub(crate) async fn start(args: &ServeBenchArgs) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let key = hearth_api::auth::generate_key();
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--warm-slots",
            "64",
        ])
        .arg("--home")
        .arg(&args.home)
        .args(["--runtime", args.runtime.as_str()])
        .args(args.server_args.split_whitespace())
        .env("HEARTH_API_KEY", &key)
        .env("HEARTH_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
        let child = cmd.spawn().context("failed to start hearth serve")?;
        let base = format!("http://127.0.0.1:{port}");
        let api = Api::new(base.clone(), key);
        let t = Instant::now();
        loop {
            if api.list().await.is_ok() {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("hearth serve did not come up on {base}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { child, api })
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await;
    }
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The base template's lowest layer (the Debian root) from the server's store.
fn base_rootfs(home: &Path) -> anyhow::Result<PathBuf> {
    let store = hearth_store::Store::open(&home.join("hearth.db"))?;
    let t = store
        .template("base")?
        .context("no base template in the store")?;
    let layers: Vec<PathBuf> =
        serde_json::from_value(t.artifacts["layers"].clone()).unwrap_or_default();
    layers
        .last()
        .cloned()
        .context("base template has no layers")
}

fn time_command(
    n: usize,
    mut make: impl FnMut() -> std::process::Command,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let t = Instant::now();
        let status = make().status()?;
        anyhow::ensure!(status.success(), "baseline command failed: {status}");
        if i >= 3 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

fn runc_bundle(rootfs: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearth-bench-runc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
                     "env": ["PATH=/usr/bin:/bin"], "cwd": "/", "noNewPrivileges": true},
        "root": {"path": rootfs, "readonly": true},
        "hostname": "runc",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(dir)
}

async fn create_and_run(api: &Api) -> anyhow::Result<(Created, Duration)> {
    let t = Instant::now();
    let sbx = api.create("base", 120).await?;
    let out = api.envd(&sbx).exec("/bin/true", &[]).await?;
    anyhow::ensure!(out.exit_code == 0, "first command failed");
    Ok((sbx, t.elapsed()))
}

pub async fn run(args: ServeBenchArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let server = Server::start(&args).await?;
    let api = server.api.clone();
    let measured = match args.runtime {
        BenchRuntime::Container => containers(&args, &api, &mut rows).await,
        BenchRuntime::Microvm => microvms(&args, &api, &mut rows).await,
    };
    server.stop().await;
    measured?;
    print_table(
        &format!("hearth bench serve ({})", server_desc(&args)),
        &rows,
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"benchmark": "serve", "machine": machine(), "runtime": args.runtime, "server_args": args.server_args, "rows": rows});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// Create to first command, sequential, `n` samples after 3 warm-ups.
async fn sequential_creates(api: &Api, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let (sbx, d) = create_and_run(api).await?;
        if i >= 3 {
            samples.push(d);
        }
        api.kill(&sbx.sandbox_id).await?;
    }
    Ok(samples)
}

/// Command round trips through the proxy to one sandbox.
async fn proxy_round_trips(api: &Api, n: usize) -> anyhow::Result<Vec<Duration>> {
    let sbx = api.create("base", 300).await?;
    let envd = api.envd(&sbx);
    let mut rt = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        envd.exec("/bin/true", &[]).await?;
        if i >= 10 {
            rt.push(t.elapsed());
        }
    }
    api.kill(&sbx.sandbox_id).await?;
    Ok(rt)
}

/// The base template's microVM root image, from the server's store.
fn base_disk_image(home: &Path) -> anyhow::Result<PathBuf> {
    let store = hearth_store::Store::open(&home.join("hearth.db"))?;
    let t = store
        .template("base")?
        .context("no base template in the store")?;
    let image = t.artifacts["disk_image"]
        .as_str()
        .context("the base template has no microVM root image")?;
    Ok(PathBuf::from(image))
}

/// Proportional set size of every process whose command line names `needle`.
fn pss_kib_of(needle: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Creates `count` sandboxes (8 at a time) that stay idle; failures are reported
/// and skipped.
async fn create_idle(api: &Api, count: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (api, sem) = (api.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            api.create("base", 1800).await.map_err(anyhow::Error::from)
        });
    }
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => ids.push(s.sandbox_id),
            Err(e) => eprintln!("create failed during the memory run: {e:#}"),
        }
    }
    Ok(ids)
}

/// The microVM runtime: boots, restores, pauses and what an idle VM costs, with a
/// raw QEMU boot of the same kernel and image as the baseline.
async fn microvms(args: &ServeBenchArgs, api: &Api, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use hearth_runtime_microvm::{MicroVm, MicroVmConfig, NoProgress, baseline};
    let vm = MicroVm::new(MicroVmConfig::new(&args.home))?;
    let guest = vm.guest(&NoProgress).await?;
    let accel = vm.doctor(&NoProgress).await?.accel;
    let image = base_disk_image(&args.home)?;
    let mut raw = Vec::new();
    for _ in 0..args.cold_boots {
        let dir = args.home.join("microvm/tmp/bench-raw-boot");
        raw.push(baseline::raw_boot(&guest, &image, accel, &dir).await?);
    }
    rows.push(Row::latency(
        &format!(
            "baseline: raw QEMU ({}) boot → first userspace line",
            accel.as_str()
        ),
        Summary::of(&raw),
        None,
    ));

    // A cold boot is what a filesystem pause's resume does: boot the kernel over
    // the disk, wait for envd, `/init`.
    let sbx = api.create("base", 1800).await?;
    let mut cold = Vec::new();
    for _ in 0..args.cold_boots {
        api.pause(&sbx.sandbox_id, false).await?;
        let t = Instant::now();
        api.connect(&sbx.sandbox_id, 1800).await?;
        cold.push(t.elapsed());
    }
    let cold = Summary::of(&cold);
    rows.push(Row::latency(
        "cold boot → envd ready (filesystem resume)",
        cold.clone(),
        None,
    ));

    // The create (restore, envd ready, `/init`) and the first command apart: under
    // TCG a fresh QEMU translates every guest code path it runs for the first time.
    let (mut creates, mut firsts) = (Vec::new(), Vec::new());
    for i in 0..args.iterations + 3 {
        let t = Instant::now();
        let sbx = api.create("base", 120).await?;
        let created = t.elapsed();
        let out = api.envd(&sbx).exec("/bin/true", &[]).await?;
        anyhow::ensure!(out.exit_code == 0, "first command failed");
        if i >= 3 {
            creates.push(created);
            firsts.push(t.elapsed());
        }
        api.kill(&sbx.sandbox_id).await?;
    }
    rows.push(Row::latency(
        "create from template snapshot (envd ready)",
        Summary::of(&creates),
        Some(400.0),
    ));
    let created = Summary::of(&firsts);
    rows.push(Row::latency(
        "create from template snapshot → first command",
        created.clone(),
        Some(400.0),
    ));
    let speedup = cold.p50_ms / created.p50_ms;
    rows.push(Row::value(
        "  speed-up over a cold boot (p50)",
        speedup,
        "x",
        "≥ 4x",
        Some(speedup >= 4.0),
    ));

    // Memory pause and resume of an idle VM.
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    for _ in 0..args.cold_boots.max(5) {
        let t = Instant::now();
        api.pause(&sbx.sandbox_id, true).await?;
        pauses.push(t.elapsed());
        let t = Instant::now();
        api.connect(&sbx.sandbox_id, 1800).await?;
        resumes.push(t.elapsed());
        api.envd(&sbx).exec("/bin/true", &[]).await?;
    }
    rows.push(Row::measured(
        "pause (memory, idle VM)",
        Summary::of(&pauses),
    ));
    rows.push(Row::latency(
        "resume (memory, idle VM)",
        Summary::of(&resumes),
        Some(500.0),
    ));
    api.kill(&sbx.sandbox_id).await?;

    rows.push(Row::measured(
        "command round trip through the proxy",
        Summary::of(&proxy_round_trips(api, args.iterations * 4).await?),
    ));

    // Host memory per idle VM: what MemAvailable loses, and the QEMU processes'
    // proportional share (template memory shared between VMs counted once).
    for &count in &args.idle_counts {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = mem_available_kib();
        let ids = create_idle(api, count).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = mem_available_kib();
        let per = before.saturating_sub(after) as f64 / 1024.0 / ids.len().max(1) as f64;
        rows.push(Row::value(
            &format!(
                "host memory per idle VM ({} running, MemAvailable)",
                ids.len()
            ),
            per,
            "MiB",
            "-",
            None,
        ));
        let pss: u64 = ids.iter().map(|id| pss_kib_of(id)).sum();
        rows.push(Row::value(
            "  QEMU proportional set size per idle VM",
            pss as f64 / 1024.0 / ids.len().max(1) as f64,
            "MiB",
            "-",
            None,
        ));
        kill_all(api, ids).await;
    }
    Ok(())
}

/// The container runtime: the issue-3 targets with unshare+chroot and runc as
/// baselines.
async fn containers(args: &ServeBenchArgs, api: &Api, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rootfs = base_rootfs(&args.home)?;
    let n = args.iterations;

    // Baselines on the same root filesystem.
    let floor = time_command(n, || {
        let mut c = std::process::Command::new("unshare");
        c.args([
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--fork",
            "--propagation",
            "private",
            "chroot",
        ])
        .arg(&rootfs)
        .arg("/bin/true");
        c
    })?;
    rows.push(Row::latency(
        "baseline: unshare + chroot /bin/true (floor)",
        Summary::of(&floor),
        None,
    ));
    if which("runc") {
        let bundle = runc_bundle(&rootfs)?;
        let mut i = 0u32;
        let runc = time_command(n, || {
            i += 1;
            let mut c = std::process::Command::new("runc");
            c.args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("hearth-bench-{}-{i}", std::process::id()));
            c.stdout(std::process::Stdio::null());
            c
        });
        let _ = std::fs::remove_dir_all(&bundle);
        match runc {
            Ok(v) => rows.push(Row::latency(
                "baseline: runc run /bin/true",
                Summary::of(&v),
                None,
            )),
            Err(e) => eprintln!("runc baseline skipped: {e:#}"),
        }
    }

    rows.push(Row::latency(
        "create → first command finished (sequential)",
        Summary::of(&sequential_creates(api, n).await?),
        Some(20.0),
    ));
    rows.push(Row::latency(
        "command round trip through the proxy",
        Summary::of(&proxy_round_trips(api, n * 4).await?),
        Some(3.0),
    ));

    // Throughput at several concurrency levels.
    for inflight in [2usize, 8, 32] {
        let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.throughput_creates {
            let (api, sem) = (api.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                api.create("base", 300).await.map_err(anyhow::Error::from)
            });
        }
        let mut ids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            ids.push(r??.sandbox_id);
        }
        let rate = ids.len() as f64 / t.elapsed().as_secs_f64();
        rows.push(Row::value(
            &format!("create throughput, {inflight} in flight"),
            rate,
            "creates/s",
            "≥ 100/s",
            Some(rate >= 100.0),
        ));
        kill_all(api, ids).await;
    }

    // Host memory per idle sandbox.
    for &count in &args.idle_counts {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = mem_available_kib();
        let ids = create_idle(api, count).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = mem_available_kib();
        let per = before.saturating_sub(after) as f64 / 1024.0 / ids.len().max(1) as f64;
        rows.push(Row::value(
            &format!(
                "host memory per idle sandbox ({} running, MemAvailable)",
                ids.len()
            ),
            per,
            "MiB",
            "≤ 6 MiB",
            Some(per <= 6.0),
        ));
        // Cross-check: what the sandboxes' own memory cgroups charge (user memory,
        // page cache and kernel objects of their processes; not the slot's netns).
        let mut charged = Vec::new();
        for id in ids.iter().take(20) {
            if let Ok(Some(m)) = api.latest_metric(id).await {
                charged.push(m);
            }
        }
        if !charged.is_empty() {
            let mean = charged.iter().sum::<u64>() as f64 / charged.len() as f64 / 1048576.0;
            rows.push(Row::value(
                &format!(
                    "  memory charged to an idle sandbox's cgroup ({} sampled)",
                    charged.len()
                ),
                mean,
                "MiB",
                "≤ 6 MiB",
                Some(mean <= 6.0),
            ));
        }
        kill_all(api, ids).await;
    }
    Ok(())
}

fn server_desc(args: &ServeBenchArgs) -> String {
    format!("{} {}", args.runtime.as_str(), args.server_args)
        .trim()
        .to_owned()
}

async fn kill_all(api: &Api, ids: Vec<String>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let (api, sem) = (api.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let _ = api.kill(&id).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_bundle_is_valid_json_with_the_rootfs() {
        let b = runc_bundle(Path::new("/tmp/rootfs")).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["root"]["path"], "/tmp/rootfs");
        std::fs::remove_dir_all(b).unwrap();
    }
}
