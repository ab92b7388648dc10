// SPDX-License-Identifier: Apache-2.0
//! Privileged integration tests: real namespaces, real nftables, real traffic.
//!
//! Each test runs its own pool with its own name, interface prefix and address ranges
//! (`10.211.<k>.0/24` host, `10.212.<k>.0/24` transit), so tests run in parallel and
//! never touch a real Hearth pool. They skip (pass with a message) without root, `nft`,
//! `/dev/net/tun`, `nsenter`, `curl` or `python3`.

use anyhow::{Context, Result, bail, ensure};
use hearth_net::{Adopt, EgressPolicy, Ipv4Cidr, PoolConfig, Slot, SlotKind, SlotPool};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
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
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
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
        host_cidr: format!("10.211.{k}.0/24").parse().expect("valid cidr"),
        transit_cidr: format!("10.212.{k}.0/24").parse().expect("valid cidr"),
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
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            url,
        ],
    )
    .1
}

/// HTTP status of `url` fetched from the host, retried until `want` or 5 s pass.
fn http_from_host_eventually(url: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                url,
            ])
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
                .stderr(Stdio::null())
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
        &Command::new("ip")
            .args(["-4", "route", "show"])
            .output()?
            .stdout,
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
            &[
                "python3",
                "-c",
                "import socket; print(socket.gethostbyname('pypi.org'))",
            ],
        );
        ensure!(
            ok && ip.parse::<Ipv4Addr>().is_ok(),
            "dns from guest: {ok} {ip}"
        );
        let code = http_from(guest(&slot), "https://pypi.org/simple/");
        ensure!(code == "200", "guest -> internet: {code}");
        pool.release(slot)?;
        Ok(())
    })
}

/// A stand-in for the host's LAN: a namespace holding addresses from 10/8, 172.16/12 and
/// 192.168/16, routed from the host over a veth, with a web server on port 8000. It
/// keeps the "private ranges are unreachable" checks on this machine.
struct Lan {
    ns: String,
    host_if: String,
    addrs: Vec<Ipv4Addr>,
    _server: Server,
}

impl Lan {
    fn start(tag: char, k: u8) -> Result<Self> {
        let ns = format!("htlan{tag}");
        let host_if = format!("htl{tag}");
        let nets = [
            format!("10.213.{k}"),
            format!("172.30.{k}"),
            format!("192.168.{k}"),
        ];
        let mut script = format!(
            "ip netns add {ns}\n\
             ip link add {host_if} type veth peer name eth0 netns {ns}\n\
             ip link set {host_if} up\n\
             ip -n {ns} link set lo up\n\
             ip -n {ns} link set eth0 up\n"
        );
        for n in &nets {
            script.push_str(&format!(
                "ip addr add {n}.2/24 dev {host_if}\nip -n {ns} addr add {n}.1/24 dev eth0\n"
            ));
        }
        let out = Command::new("sh").args(["-ec", &script]).output()?;
        let lan_path = Path::new("/run/netns").join(&ns);
        let server = Server::start(Some(&lan_path), 8000);
        let lan = Self {
            ns,
            host_if,
            addrs: nets
                .iter()
                .map(|n| format!("{n}.1").parse().expect("valid address"))
                .collect(),
            _server: server,
        };
        ensure!(
            out.status.success(),
            "lan setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_listening(Some(&lan_path), 8000)?;
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The host-side veth address of `slot` (the /31 peer of the router).
fn host_veth_addr(cfg: &PoolConfig, slot: &Slot) -> Ipv4Addr {
    let base = u32::from(cfg.transit_cidr.addr());
    Ipv4Addr::from(base + 2 * slot.index)
}

#[test]
fn guest_cannot_reach_host_private_ranges_or_other_slots() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = config('b', 2);
    let lan = Lan::start('b', 2)?;
    let host_port = 18_602;
    let _host_server = Server::start(None, host_port);
    wait_listening(None, host_port)?;
    with_pool(cfg.clone(), |pool| {
        let a = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let b = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let _server_b = Server::start(Some(guest(&b)), 8000);
        wait_listening(Some(guest(&b)), 8000)?;

        // Sanity: each target is reachable from the host, so a failure below is the policy.
        for lan_addr in &lan.addrs {
            let code = http_from_host_eventually(&format!("http://{lan_addr}:8000/"), "200");
            ensure!(code == "200", "host -> lan {lan_addr}: {code}");
        }
        let code = http_from_host_eventually(&format!("http://{}:8000/", b.host_addr), "200");
        ensure!(code == "200", "host -> slot b: {code}");

        let public = host_public_addr()?;
        let mut targets = vec![
            format!("http://{}:{host_port}/", host_veth_addr(&cfg, &a)),
            format!("http://{public}:{host_port}/"),
            format!("http://{}:8000/", b.host_addr),
            format!("http://{}:8000/", host_veth_addr(&cfg, &b)),
        ];
        targets.extend(lan.addrs.iter().map(|l| format!("http://{l}:8000/")));
        for url in &targets {
            let code = http_from(guest(&a), url);
            ensure!(code == "000", "guest reached {url}: {code}");
        }
        // The guest's own loopback is its own: 127.0.0.1 is not the host.
        let (ok, _) = in_ns(
            guest(&a),
            &[
                "python3",
                "-c",
                &format!(
                    "import socket; s=socket.socket(); s.settimeout(1); s.connect(('127.0.0.1',{host_port}))"
                ),
            ],
        );
        ensure!(!ok, "guest loopback reached the host's server");
        // DNS is the one private destination that works, on port 53 only.
        let dns = pool.nameservers().first().copied();
        if let Some(dns) = dns {
            let code = http_from(guest(&a), &format!("http://{dns}:80/"));
            ensure!(
                code == "000",
                "guest reached the nameserver on port 80: {code}"
            );
        }
        pool.release(a)?;
        pool.release(b)?;
        Ok(())
    })
}

/// The address pypi.org resolves to from inside `ns`.
fn resolve_in(ns: &Path, name: &str) -> Option<Ipv4Addr> {
    let (ok, out) = in_ns(
        ns,
        &[
            "python3",
            "-c",
            &format!("import socket; print(socket.gethostbyname('{name}'))"),
        ],
    );
    if ok { out.parse().ok() } else { None }
}

#[test]
fn egress_policy_lists_and_updates_apply() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    with_pool(config('c', 3), |pool| {
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::no_internet())?;
        let g = guest(&slot);
        let pypi = resolve_in(g, "pypi.org").context("dns must work without internet")?;
        ensure!(
            http_from(g, "https://pypi.org/simple/") == "000",
            "no_internet slot reached pypi"
        );

        // Allow beats deny.
        let only_pypi = EgressPolicy::from_e2b(false, vec![Ipv4Cidr::host(pypi)], vec![]);
        pool.set_policy(&slot, only_pypi.clone())?;
        assert_eq!(pool.policy(&slot), Some(only_pypi));
        let code = http_from(g, "https://pypi.org/simple/");
        ensure!(code == "200", "allowed destination under deny-all: {code}");

        // A deny list without allow.
        let deny_pypi = EgressPolicy::from_e2b(true, vec![], vec![Ipv4Cidr::host(pypi)]);
        pool.set_policy(&slot, deny_pypi)?;
        let code = http_from(g, "https://pypi.org/simple/");
        ensure!(code == "000", "denied destination reached: {code}");

        // Private ranges stay denied even when allowed.
        let allow_private = EgressPolicy::from_e2b(true, vec!["10.0.0.0/8".parse()?], vec![]);
        pool.set_policy(&slot, allow_private)?;
        let code = http_from(g, &format!("http://{}:8000/", slot.host_addr));
        ensure!(code == "000", "allow_out opened a private range: {code}");

        // DNS can be turned off.
        let no_dns = EgressPolicy {
            allow_dns: false,
            ..EgressPolicy::default()
        };
        pool.set_policy(&slot, no_dns)?;
        ensure!(
            resolve_in(g, "pypi.org").is_none(),
            "dns worked with allow_dns=false"
        );

        pool.set_policy(&slot, EgressPolicy::default())?;
        let code = http_from(g, "https://pypi.org/simple/");
        ensure!(code == "200", "default policy restored: {code}");
        ensure!(resolve_in(g, "pypi.org").is_some(), "dns restored");
        pool.release(slot)?;
        Ok(())
    })
}

/// Conntrack lines of the namespace at `ns` (the host's when None) mentioning `addr`.
fn conntrack_lines(ns: Option<&Path>, addr: Option<Ipv4Addr>) -> Vec<String> {
    let text = match ns {
        Some(ns) => in_ns(ns, &["cat", "/proc/net/nf_conntrack"]).1,
        None => std::fs::read_to_string("/proc/net/nf_conntrack").unwrap_or_default(),
    };
    text.lines()
        .filter(|l| addr.is_none_or(|a| l.contains(&format!("={a} "))))
        .map(str::to_owned)
        .collect()
}

fn nft_set(table: &str, set: &str) -> String {
    String::from_utf8_lossy(
        &Command::new("nft")
            .args(["list", "set", "inet", table, set])
            .output()
            .expect("nft runs")
            .stdout,
    )
    .into_owned()
}

#[test]
fn released_slot_comes_back_without_policy_or_conntrack_state() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = PoolConfig {
        max_slots: Some(1),
        warm_containers: 1,
        ..config('d', 4)
    };
    with_pool(cfg.clone(), |pool| {
        let mut policy = EgressPolicy::no_internet();
        policy.allow_out.push("1.2.3.0/24".parse()?);
        let slot = pool.acquire(SlotKind::Container, policy)?;
        let index = slot.index;
        let addr = slot.host_addr;
        {
            let _server = Server::start(Some(guest(&slot)), 8000);
            wait_listening(Some(guest(&slot)), 8000)?;
            let code = http_from_host_eventually(&format!("http://{addr}:8000/"), "200");
            ensure!(code == "200", "host -> guest: {code}");
            resolve_in(guest(&slot), "pypi.org").context("dns")?;
        }
        ensure!(
            !conntrack_lines(None, Some(addr)).is_empty(),
            "expected host conntrack entries"
        );
        ensure!(
            !conntrack_lines(Some(&slot.router_netns), None).is_empty(),
            "expected router conntrack entries"
        );
        ensure!(nft_set(&cfg.name, "deny_out").contains(&addr.to_string()));

        pool.release(slot)?;
        ensure!(
            pool.wait_ready(Duration::from_secs(10)),
            "slot not scrubbed in time"
        );
        let again = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        ensure!(again.index == index, "max_slots=1 must reuse slot {index}");
        let left = conntrack_lines(None, Some(addr));
        ensure!(left.is_empty(), "host conntrack left: {left:?}");
        let left = conntrack_lines(Some(&again.router_netns), None);
        ensure!(left.is_empty(), "router conntrack left: {left:?}");
        for set in ["allow_out", "deny_out", "dns_blocked"] {
            let text = nft_set(&cfg.name, set);
            ensure!(
                !text.contains(&addr.to_string()),
                "{set} still has {addr}: {text}"
            );
        }
        let code = http_from(guest(&again), "https://pypi.org/simple/");
        ensure!(code == "200", "reused slot has the default policy: {code}");

        // Exhausted while the only slot is in use.
        let err = pool
            .acquire(SlotKind::Container, EgressPolicy::default())
            .unwrap_err();
        ensure!(err.to_string().contains("in use"), "{err}");
        pool.release(again)?;
        Ok(())
    })
}

#[test]
fn dirty_slot_is_destroyed_not_reused() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = PoolConfig {
        warm_containers: 1,
        max_slots: Some(1),
        ..config('e', 5)
    };
    with_pool(cfg, |pool| {
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let (ok, _) = in_ns(
            guest(&slot),
            &["ip", "addr", "add", "169.254.0.25/30", "dev", "eth0"],
        );
        ensure!(ok, "adding a stray address");
        let (ok, _) = in_ns(
            guest(&slot),
            &[
                "ip", "link", "add", "stray0", "type", "veth", "peer", "name", "stray1",
            ],
        );
        ensure!(ok, "adding a stray link");
        pool.release(slot)?;
        ensure!(
            pool.wait_ready(Duration::from_secs(10)),
            "pool not ready again"
        );
        let fresh = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let (_, addrs) = in_ns(guest(&fresh), &["ip", "-o", "addr"]);
        ensure!(
            !addrs.contains("169.254.0.25"),
            "stray address survived: {addrs}"
        );
        let (_, links) = in_ns(guest(&fresh), &["ip", "-o", "link"]);
        ensure!(!links.contains("stray0"), "stray link survived: {links}");
        pool.release(fresh)?;
        Ok(())
    })
}

#[test]
fn microvm_slot_has_a_tap_and_an_attached_tap_is_not_reused() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = PoolConfig {
        warm_containers: 0,
        warm_microvms: 1,
        ..config('f', 6)
    };
    with_pool(cfg, |pool| {
        ensure!(
            pool.wait_ready(Duration::from_secs(10)),
            "warm microVM slot"
        );
        let slot = pool.acquire(SlotKind::MicroVm, EgressPolicy::default())?;
        ensure!(slot.guest_netns.is_none());
        ensure!(slot.tap.as_deref() == Some("tap0"));
        let (_, addr) = in_ns(
            &slot.router_netns,
            &["ip", "-o", "-4", "addr", "show", "tap0"],
        );
        ensure!(addr.contains("169.254.0.22/30"), "tap0 address: {addr}");
        let (_, link) = in_ns(&slot.router_netns, &["ip", "-o", "link", "show", "tap0"]);
        ensure!(link.contains("02:fc:00:00:00:02"), "tap0 mac: {link}");
        // Regression: the tap was once made before the uplink and took the index the
        // uplink's configuration assumed, so the transit address landed on tap0 and
        // the uplink stayed down: no traffic ever reached a microVM.
        ensure!(!addr.contains("/31"), "transit address on tap0: {addr}");
        let (_, uplink) = in_ns(
            &slot.router_netns,
            &["ip", "-o", "-4", "addr", "show", "eth0"],
        );
        ensure!(
            uplink.contains("/31"),
            "router eth0 has no transit address: {uplink}"
        );
        let (_, uplink_link) = in_ns(&slot.router_netns, &["ip", "-o", "link", "show", "eth0"]);
        ensure!(
            uplink_link.contains("state UP") || uplink_link.contains(",UP"),
            "router eth0 is down: {uplink_link}"
        );

        // A stand-in VMM attaches to the tap and keeps it open.
        let attach = "import fcntl,os,struct,time\n\
            fd=os.open('/dev/net/tun',os.O_RDWR)\n\
            fcntl.ioctl(fd,0x400454ca,struct.pack('16sH22x',b'tap0',0x0002|0x1000|0x4000))\n\
            print('attached',flush=True)\n\
            time.sleep(30)\n";
        let mut vmm = Command::new("nsenter")
            .arg(format!("--net={}", slot.router_netns.display()))
            .args(["python3", "-c", attach])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(vmm.stdout.take().context("stdout")?),
            &mut line,
        )?;
        ensure!(line.trim() == "attached", "vmm stand-in: {line}");
        let router = slot.router_netns.clone();
        pool.release(slot)?;
        ensure!(
            pool.wait_ready(Duration::from_secs(10)),
            "pool ready after release"
        );
        let _ = vmm.kill();
        let _ = vmm.wait();
        // The slot with a live tap user was destroyed; its replacement is a new one
        // (the namespace pin was removed and re-created, or another index was used).
        let again = pool.acquire(SlotKind::MicroVm, EgressPolicy::default())?;
        let (_, link) = in_ns(&again.router_netns, &["ip", "-o", "link", "show", "tap0"]);
        ensure!(!link.contains("LOWER_UP"), "reused an attached tap: {link}");
        let _ = router;
        // In use at shutdown: shutdown must still remove it.
        Ok(())
    })
}

#[test]
fn crashed_pool_is_reclaimed_and_adopted_slots_survive() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = config('g', 7);
    let pool = SlotPool::new(cfg.clone())?;
    let kept = pool.acquire(SlotKind::Container, EgressPolicy::no_internet())?;
    let lost = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
    ensure!(pool.wait_ready(Duration::from_secs(10)), "warm");
    drop(pool); // a crash: nothing is torn down

    let _server = Server::start(Some(guest(&kept)), 8000);
    wait_listening(Some(guest(&kept)), 8000)?;
    // No warm slots this time, so no new slot takes the reclaimed index.
    let restart = PoolConfig {
        warm_containers: 0,
        ..cfg.clone()
    };
    let (pool, report) = SlotPool::start(
        restart,
        vec![Adopt {
            index: kept.index,
            kind: SlotKind::Container,
            policy: EgressPolicy::no_internet(),
        }],
    )?;
    let result = (|| -> Result<()> {
        ensure!(report.lost.is_empty(), "lost: {:?}", report.lost);
        ensure!(
            report.slots.len() == 1 && report.slots[0] == kept,
            "{:?}",
            report.slots
        );
        ensure!(!lost.router_netns.exists(), "stale slot not reclaimed");
        ensure!(
            !lost.guest_netns.as_deref().is_some_and(Path::exists),
            "stale guest ns not reclaimed"
        );
        let code = http_from_host_eventually(&format!("http://{}:8000/", kept.host_addr), "200");
        ensure!(code == "200", "adopted slot unreachable: {code}");
        let code = http_from(guest(&kept), "https://pypi.org/simple/");
        ensure!(code == "000", "adopted slot lost its policy: {code}");
        let adopted = report.slots.into_iter().next().context("adopted slot")?;
        pool.release(adopted)?;
        Ok(())
    })();
    let down = pool.shutdown();
    result?;
    down?;
    assert_nothing_left(&cfg)
}

#[test]
fn many_concurrent_acquires_get_distinct_working_slots() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = PoolConfig {
        warm_containers: 4,
        ..config('h', 8)
    };
    with_pool(cfg, |pool| {
        let n = 32;
        let barrier = Arc::new(Barrier::new(n));
        let indexes = std::thread::scope(|s| -> Result<Vec<u32>> {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let barrier = Arc::clone(&barrier);
                    s.spawn(move || -> Result<u32> {
                        let policy = if i % 2 == 0 {
                            EgressPolicy::default()
                        } else {
                            EgressPolicy::no_internet()
                        };
                        let slot = pool.acquire(SlotKind::Container, policy)?;
                        let index = slot.index;
                        barrier.wait();
                        pool.release(slot)?;
                        Ok(index)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        })?;
        let mut sorted = indexes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(sorted.len() == n, "slots shared while held: {indexes:?}");
        ensure!(pool.wait_ready(Duration::from_secs(30)), "pool settles");
        let stats = pool.stats();
        ensure!(stats.in_use == 0 && stats.cleaning == 0, "{stats:?}");
        // Every scrubbed slot still works.
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let _server = Server::start(Some(guest(&slot)), 8000);
        wait_listening(Some(guest(&slot)), 8000)?;
        let code = http_from_host_eventually(&format!("http://{}:8000/", slot.host_addr), "200");
        ensure!(code == "200", "reused slot: {code}");
        pool.release(slot)?;
        Ok(())
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    println!(
        "{name}: n={} p50={:.3?} p99={:.3?} max={:.3?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

fn meminfo_kib(field: &str) -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn measure_slot_costs() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    // Creation on demand (no warm slots), then reuse from the warm queue.
    let cfg = PoolConfig {
        warm_containers: 0,
        ..config('m', 9)
    };
    with_pool(cfg, |pool| {
        for (kind, label) in [
            (SlotKind::Container, "container"),
            (SlotKind::MicroVm, "microvm"),
        ] {
            let mut times = Vec::new();
            let mut slots = Vec::new();
            for _ in 0..40 {
                let t = Instant::now();
                slots.push(pool.acquire(kind, EgressPolicy::default())?);
                times.push(t.elapsed());
            }
            summary(&format!("create {label} slot (cold, on demand)"), times);
            let t = Instant::now();
            for s in slots {
                pool.release(s)?;
            }
            ensure!(pool.wait_ready(Duration::from_secs(60)), "scrub");
            println!(
                "scrub 40 released {label} slots (background): {:.3?}",
                t.elapsed()
            );
        }
        for (policy, label) in [
            (EgressPolicy::default(), "default policy"),
            (EgressPolicy::no_internet(), "no_internet policy"),
        ] {
            let mut acquire = Vec::new();
            let mut release = Vec::new();
            for _ in 0..40 {
                let t = Instant::now();
                let slot = pool.acquire(SlotKind::Container, policy.clone())?;
                acquire.push(t.elapsed());
                let t = Instant::now();
                pool.release(slot)?;
                release.push(t.elapsed());
                ensure!(pool.wait_ready(Duration::from_secs(10)), "scrub");
            }
            summary(&format!("acquire warm slot, {label}"), acquire);
            summary(&format!("release call, {label}"), release);
        }
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        let mut update = Vec::new();
        for i in 0..20 {
            let p = if i % 2 == 0 {
                EgressPolicy::no_internet()
            } else {
                EgressPolicy::default()
            };
            let t = Instant::now();
            pool.set_policy(&slot, p)?;
            update.push(t.elapsed());
        }
        summary("set_policy (alternating)", update);
        pool.release(slot)?;
        Ok(())
    })?;

    // Kernel memory per idle container slot.
    let n = 100;
    let fields = [
        "Slab",
        "SUnreclaim",
        "Percpu",
        "KernelStack",
        "MemAvailable",
    ];
    let before: Vec<i64> = fields.iter().map(|f| meminfo_kib(f)).collect();
    let cfg = PoolConfig {
        warm_containers: n,
        ..config('n', 10)
    };
    let t = Instant::now();
    with_pool(cfg, |pool| {
        ensure!(
            pool.wait_ready(Duration::from_secs(300)),
            "warm fill of {n}"
        );
        println!(
            "background fill of {n} container slots: {:.3?}",
            t.elapsed()
        );
        let after: Vec<i64> = fields.iter().map(|f| meminfo_kib(f)).collect();
        for ((f, b), a) in fields.iter().zip(&before).zip(&after) {
            println!(
                "{f}: {:+} KiB total, {:+.1} KiB per slot",
                a - b,
                (a - b) as f64 / n as f64
            );
        }
        Ok(())
    })
}

#[test]
fn full_pool_turns_an_idle_slot_of_the_other_kind() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let cfg = PoolConfig {
        max_slots: Some(1),
        warm_containers: 0,
        warm_microvms: 1,
        ..config('i', 11)
    };
    with_pool(cfg, |pool| {
        ensure!(
            pool.wait_ready(Duration::from_secs(10)),
            "warm microVM slot"
        );
        let slot = pool.acquire(SlotKind::Container, EgressPolicy::default())?;
        ensure!(slot.kind == SlotKind::Container && slot.guest_netns.is_some());
        let (_, links) = in_ns(&slot.router_netns, &["ip", "-o", "link"]);
        ensure!(
            !links.contains("tap0"),
            "container slot kept the tap: {links}"
        );
        pool.release(slot)?;
        Ok(())
    })
}
