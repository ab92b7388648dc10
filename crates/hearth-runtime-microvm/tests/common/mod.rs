// SPDX-License-Identifier: Apache-2.0
//! Shared fixtures for the microVM tests: a runtime with a cached home, the base
//! template's layers and snapshot, a slot-like network per sandbox, and a tiny envd
//! client (HTTP/1.1 + Connect JSON streaming).
//!
//! Caches (kept between runs): `/var/cache/hearth-test/microvm-home` (guest kernel,
//! initramfs, templates) and the layer cache of `hearth-builder` under
//! `/var/cache/hearth-test/layers`.

#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use base64::Engine;
use hearth_runtime::{Artifacts, NetSlot, Resources, RuntimeKind, SandboxSpec};
use hearth_runtime_microvm::{MicroVm, MicroVmConfig, NoProgress, TemplateRequest};
use hearth_types::SandboxId;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Where the tests keep guest artifacts and templates between runs.
pub const HOME: &str = "/var/cache/hearth-test/microvm-home";
/// The builder's cache home (layers).
pub const LAYER_HOME: &str = "/var/cache/hearth-test";
/// The instance name: cgroups `<ctrl>/hmvtest/<id>`, QEMU names `hmvtest-<id>`.
pub const INSTANCE: &str = "hmvtest";
/// The template shape (the base template's: E2B's defaults).
pub const TEMPLATE: Resources = Resources {
    cpu_count: 2,
    memory_mb: 512,
    disk_mb: 2048,
};

/// Why the tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("microVM tests need root".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "nsenter",
        "ip",
        "nft",
        "mkfs.ext4",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// Skips the calling test (returns from it) when prerequisites are missing.
#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// VM tests run one at a time: TCG on a small host is slow enough without them
/// competing for the CPUs (timings would become meaningless).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTH_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime under test.
pub fn runtime() -> MicroVm {
    let mut config = MicroVmConfig::new(HOME);
    config.instance = INSTANCE.into();
    MicroVm::new(config).expect("runtime")
}

/// The base template's layers (Debian bookworm + static envd), built on first use.
pub fn base_layers() -> Result<Vec<PathBuf>> {
    static LAYERS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    if let Some(l) = LAYERS.get() {
        return Ok(l.clone());
    }
    let envd = hearth_builder::find_envd_binary().context(
        "build the static envd first: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build \
         --profile envd --target x86_64-unknown-linux-gnu -p hearth-envd",
    )?;
    let layers = hearth_builder::base_template_layers(
        Path::new(LAYER_HOME),
        &envd,
        &hearth_builder::NoProgress,
    )?;
    Ok(LAYERS.get_or_init(|| layers).clone())
}

/// The base template prepared for microVMs (snapshot included), cached by its layers.
pub async fn template(vm: &MicroVm) -> Result<Artifacts> {
    let layers = base_layers()?;
    let key: String = {
        let joined = layers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("|");
        hearth_runtime_microvm::fsutil::sha256(
            format!("{joined}|{}|{}", TEMPLATE.cpu_count, TEMPLATE.memory_mb).as_bytes(),
        )[..16]
            .to_owned()
    };
    let out = PathBuf::from(HOME).join("templates").join(key);
    Ok(vm
        .prepare_template(&TemplateRequest {
            layers: &layers,
            resources: TEMPLATE,
            out_dir: &out,
            slot: None,
            hostname: "e2b.local",
            nameservers: &[],
            progress: &NoProgress,
        })
        .await?)
}

/// A slot-like network: router namespace with `tap0` (gateway address and MAC), a
/// veth to the host, and a DNAT of `host_addr:49983` to the guest. Deleted on drop.
#[derive(Debug)]
pub struct TestNet {
    pub name: String,
    pub k: u32,
}

impl TestNet {
    pub fn new() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        for _ in 0..50 {
            let k = (std::process::id() % 200 + NEXT.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
            let name = format!("hmvt-{k}");
            if Path::new("/run/netns").join(&name).exists() {
                continue;
            }
            // Constructed first: a failed setup is undone by Drop.
            let net = Self { name, k };
            net.setup()?;
            return Ok(net);
        }
        bail!("no free test network index")
    }

    fn setup(&self) -> Result<()> {
        let (n, k) = (self.name.as_str(), self.k);
        let host_if = format!("hmvh{k}");
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(args[0]).args(&args[1..]).output()?;
            if !out.status.success() {
                bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(&["ip", "netns", "add", n])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", n,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{k}.1/30"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("10.213.{k}.2/30"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", n, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", n, "tuntap", "add", "tap0", "mode", "tap"])?;
        run(&[
            "ip",
            "-n",
            n,
            "link",
            "set",
            "tap0",
            "address",
            "02:fc:00:00:00:02",
        ])?;
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "169.254.0.22/30",
            "dev",
            "tap0",
        ])?;
        run(&["ip", "-n", n, "link", "set", "tap0", "up"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        let rules = format!(
            "table ip hmv {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
             ip daddr 10.213.{k}.2 tcp dport 49983 dnat to 169.254.0.21\n }}\n}}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", n, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        nft.stdin.take().unwrap().write_all(rules.as_bytes())?;
        if !nft.wait()?.success() {
            bail!("nft failed");
        }
        Ok(())
    }

    pub fn slot(&self) -> NetSlot {
        NetSlot {
            index: self.k,
            kind: RuntimeKind::Microvm,
            host_addr: self.host_addr(),
            guest_netns: None,
            router_netns: PathBuf::from("/run/netns").join(&self.name),
            tap: Some("tap0".into()),
            mac: "02:fc:00:00:00:01".into(),
            nameservers: vec![],
        }
    }

    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, u8::try_from(self.k).unwrap(), 2)
    }

    /// Whether a process holds the tap open (its carrier is up).
    pub fn tap_in_use(&self) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.name, "link", "show", "tap0"])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        !text.contains("NO-CARRIER")
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        // The veth pair dies with the namespace unless setup failed half-way.
        let _ = Command::new("ip")
            .args(["link", "delete", &format!("hmvh{}", self.k)])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A sandbox spec on `net` from `artifacts`.
pub fn spec(artifacts: &Artifacts, net: &TestNet, resources: Resources) -> SandboxSpec {
    let id = SandboxId::generate();
    SandboxSpec {
        state_dir: PathBuf::from(HOME).join("sandboxes").join(id.as_str()),
        id,
        template_id: "base".into(),
        artifacts: artifacts.clone(),
        resources,
        slot: net.slot(),
        ordinal: net.k,
        hostname: "e2b.local".into(),
    }
}

/// Removes what the sandboxes of a failed test left (QEMU, cgroups, state dirs), so a
/// panic does not leak VMs into later tests. Does nothing for clean sandboxes.
#[derive(Debug, Default)]
pub struct Guard(pub Vec<SandboxSpec>);

impl Guard {
    pub fn new(specs: &[&SandboxSpec]) -> Self {
        Self(specs.iter().map(|s| (*s).clone()).collect())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for spec in &self.0 {
            let name = format!("{INSTANCE}-{}", spec.id.as_str());
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
                    && String::from_utf8_lossy(&cmd).contains(&name)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    while Path::new(&format!("/proc/{pid}/stat")).exists()
                        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .unwrap_or_default()
                            .contains(") Z")
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            for ctrl in ["memory", "cpu", "cpuacct", "pids"] {
                let p = Path::new("/sys/fs/cgroup")
                    .join(ctrl)
                    .join(INSTANCE)
                    .join(spec.id.as_str());
                for _ in 0..100 {
                    if !p.exists() || std::fs::remove_dir(&p).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = std::fs::remove_dir_all(&spec.state_dir);
        }
    }
}

/// Everything of sandbox `spec` that must be gone after kill.
pub fn leftovers(spec: &SandboxSpec, net: &TestNet) -> Vec<String> {
    let mut out = Vec::new();
    let name = format!("{INSTANCE}-{}", spec.id.as_str());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&name)
        {
            out.push(format!("process {}", entry.file_name().to_string_lossy()));
        }
    }
    for ctrl in ["memory", "cpu", "cpuacct", "pids"] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(INSTANCE)
            .join(spec.id.as_str());
        if p.exists() {
            out.push(format!("cgroup {}", p.display()));
        }
    }
    for f in ["disk.qcow2", "qmp.sock", "console.sock"] {
        let p = spec.state_dir.join(f);
        if p.exists() {
            out.push(format!("file {}", p.display()));
        }
    }
    if net.tap_in_use() {
        out.push("tap still attached".into());
    }
    out
}

/// Minimal HTTP/1.1 exchange with `Connection: close`; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: envd\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])?
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Output of a command run through envd's process service.
#[derive(Debug, Default)]
pub struct Ran {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sh -c script` through envd (`process.Process/Start`, Connect JSON streaming).
pub fn run(addr: SocketAddr, script: &str) -> Result<Ran> {
    let body = serde_json::json!({
        "process": {"cmd": "/bin/sh", "args": ["-c", script]},
        "stdin": false,
    })
    .to_string();
    let mut env = vec![0u8];
    env.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
    env.extend_from_slice(body.as_bytes());
    let (status, resp) = http(
        addr,
        "POST",
        "/process.Process/Start",
        &[
            ("Content-Type", "application/connect+json"),
            ("Connect-Protocol-Version", "1"),
        ],
        &env,
    )?;
    if status != 200 {
        bail!(
            "process start answered {status}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ran = Ran::default();
    let mut rest = resp.as_slice();
    while rest.len() >= 5 {
        let flags = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into()?) as usize;
        let msg: Value = serde_json::from_slice(&rest[5..5 + len])?;
        rest = &rest[5 + len..];
        if flags & 2 != 0 {
            if let Some(e) = msg.get("error") {
                bail!("process stream error: {e}");
            }
            break;
        }
        let ev = &msg["event"];
        if let Some(d) = ev.get("data") {
            if let Some(x) = d.get("stdout").and_then(Value::as_str) {
                ran.stdout
                    .push_str(&String::from_utf8_lossy(&b64.decode(x)?));
            }
            if let Some(x) = d.get("stderr").and_then(Value::as_str) {
                ran.stderr
                    .push_str(&String::from_utf8_lossy(&b64.decode(x)?));
            }
        }
        if let Some(e) = ev.get("end") {
            ran.exit_code = e.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        }
    }
    Ok(ran)
}

/// The guest's boot id.
pub fn boot_id(addr: SocketAddr) -> Result<String> {
    let r = run(addr, "cat /proc/sys/kernel/random/boot_id")?;
    Ok(r.stdout.trim().to_owned())
}

/// `GET /health` status.
pub fn health(addr: SocketAddr) -> Result<u16> {
    Ok(http(addr, "GET", "/health", &[], b"")?.0)
}
