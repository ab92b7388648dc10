// SPDX-License-Identifier: Apache-2.0
//! Privileged integration tests: real namespaces, real nftables, real traffic.
//!
//! Each test runs its own pool with its own name, interface prefix and address ranges
//! (`10.211.<k>.0/24` host, `10.212.<k>.0/24` transit), so tests run in parallel and
//! never touch a real Hearth pool. They skip (pass with a message) without root, `nft`,
//! `/dev/net/tun`, `nsenter`, `curl` or `python3`.

use anyhow::{Context, Result, bail, ensure};
use hearth_net::{EgressPolicy, Ipv4Cidr, PoolConfig, Slot, SlotKind, SlotPool};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn prerequisites() -> bool {
    let missing: Vec<&str> = [
        ("root", nix_is_root()),
        ("nft", which("nft")),
        ("nsenter", which("nsenter")),
        ("curl", which("curl")),
        ("python3", which("python3")),
        ("/dev/net/tun", Path::new("/dev/net/tun").exists()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!("skipping: missing {}", missing.join(", "));
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A pool config private to one test: `tag` is one lowercase letter, `k` picks the /24s.
fn config(tag: char, k: u8) -> PoolConfig {
    PoolConfig {
        name: format!("htest{tag}"),
        ifname_prefix: format!("ht{tag}"),
        host_cidr: format!("10.211.{k}.0/24").parse().unwrap(),
        transit_cidr: format!("10.212.{k}.0/24").parse().unwrap(),
        warm_containers: 2,
        warm_microvms: 0,
        ..PoolConfig::default()
    }
}

/// Runs `args` inside the namespace at `ns`, returning (success, stdout).
fn in_ns(ns: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["timeout", "20"])
        .args(args)
        .output()
        .expect("nsenter runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// A python HTTP server on `port` inside `ns` (or on the host when `ns` is None).
struct Server(Child);

impl Server {
    fn start(ns: Option<&Path>, port: u16) -> Self {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("python3");
                c
            }
            None => Command::new("python3"),
        };
        let child = cmd
            .args(["-m", "http.server", "--bind", "0.0.0.0", &port.to_string()])
            .current_dir("/tmp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        Self(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HTTP status of `url` fetched from inside `ns` ("000" when it could not connect).
fn http_from(ns: &Path, url: &str) -> String {
    in_ns(
        ns,
        &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url],
    )
    .1
}

/// HTTP status of `url` fetched from the host, retried until `want` or 5 s pass.
fn http_from_host_eventually(url: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url])
            .output()
            .expect("curl runs");
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if code == want || Instant::now() > deadline {
            return code;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn guest(slot: &Slot) -> &Path {
    slot.guest_netns.as_deref().expect("container slot")
}

/// Waits until a server inside `ns` listens on `port`.
fn wait_listening(ns: Option<&Path>, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = format!(
        "import socket; s=socket.socket(); s.settimeout(0.5); s.connect(('127.0.0.1',{port}))"
    );
    loop {
        let ok = match ns {
            Some(ns) => in_ns(ns, &["python3", "-c", &probe]).0,
            None => Command::new("python3")
                .args(["-c", &probe])
                .status()
                .is_ok_and(|s| s.success()),
        };
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host's address on its default-route interface (192.0.2.2 here).
fn host_public_addr() -> Result<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .context("ip route get")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let src = text
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .context("no src in ip route get")?;
    Ok(src.parse()?)
}

fn nft_tables() -> String {
    String::from_utf8_lossy(
        &Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft runs")
            .stdout,
    )
    .into_owned()
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn host_links() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip runs")
            .stdout,
    )
    .into_owned()
}

/// Asserts nothing of pool `cfg` is left on the host.
fn assert_nothing_left(cfg: &PoolConfig) -> Result<()> {
    let ns: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", cfg.name)))
        .collect();
    ensure!(ns.is_empty(), "namespaces left: {ns:?}");
    let links: Vec<String> = host_links()
        .lines()
        .filter(|l| l.contains(&format!(": {}", cfg.ifname_prefix)))
        .map(str::to_owned)
        .collect();
    ensure!(links.is_empty(), "links left: {links:?}");
    let routes = String::from_utf8_lossy(
        &Command::new("ip").args(["-4", "route", "show"]).output()?.stdout,
    )
    .into_owned();
    let host_prefix = cfg.host_cidr.to_string();
    let host_prefix = host_prefix.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
    ensure!(
        !routes.contains(host_prefix),
        "routes left for {host_prefix}: {routes}"
    );
    let tables = nft_tables();
    ensure!(
        !tables.contains(&format!("inet {}\n", cfg.name)),
        "nft table left: {tables}"
    );
    Ok(())
}

/// Runs `body` with a fresh pool and always shuts it down, then checks nothing is left.
fn with_pool(cfg: PoolConfig, body: impl FnOnce(&SlotPool) -> Result<()>) -> Result<()> {
    let pool = SlotPool::new(cfg.clone()).context("start pool")?;
    let outcome = body(&pool);
    let down = pool.shutdown();
    outcome?;
    down.context("shutdown")?;
    assert_nothing_left(&cfg)
}

#[test]
fn host_reaches_guest_and_guest_reaches_internet_and_dns() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    with_pool(config('a', 1), |pool| {
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        assert_eq!(slot.guest_addr, Ipv4Addr::new(169, 254, 0, 21));
        assert_eq!(slot.mac_string(), "02:fc:00:00:00:01");
        let _server = Server::start(Some(guest(&slot)), 8000);
        wait_listening(Some(guest(&slot)), 8000)?;
        let code = http_from_host_eventually(&format!("http://{}:8000/", slot.host_addr), "200");
        ensure!(code == "200", "host -> guest server: {code}");

        let (ok, ip) = in_ns(
            guest(&slot),
            &["python3", "-c", "import socket; print(socket.gethostbyname('pypi.org'))"],
        );
        ensure!(ok && ip.parse::<Ipv4Addr>().is_ok(), "dns from guest: {ok} {ip}");
        let code = http_from(guest(&slot), "https://pypi.org/simple/");
        ensure!(code == "200", "guest -> internet: {code}");
        pool.release(slot)?;
        Ok(())
    })
}
