// SPDX-License-Identifier: Apache-2.0
//! Fixtures: root filesystems, network namespaces, specs and host-side probes.

use anyhow::{Context, Result, bail};
use hearth_runtime_container::{
    Container, ContainerSpec, IdRange, Launcher, LauncherConfig, Limits,
};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the privileged prerequisites hold; prints why not.
pub fn privileged() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: container tests need root");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: container tests need a static busybox (apt install busybox-static)");
        return false;
    }
    true
}

/// The process-wide launcher (as the server holds one).
pub fn launcher() -> &'static Launcher {
    static L: OnceLock<Launcher> = OnceLock::new();
    L.get_or_init(|| Launcher::new(&LauncherConfig::default()).expect("launcher"))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique id and id range for one test sandbox.
pub fn unique() -> (String, IdRange) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    // Ranges of concurrently live sandboxes must not overlap: 200 per test
    // process (reused round-robin), offset by pid so two processes rarely collide.
    let index = 20_000 + (pid % 200) * 200 + n % 200;
    (
        format!("t{pid}-{n}"),
        IdRange::new(index * IdRange::LEN).expect("range"),
    )
}

fn root_of_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static envd binary, if built (see the crate's tests README in the report).
pub fn static_envd() -> Option<PathBuf> {
    let p = root_of_workspace().join("target/x86_64-unknown-linux-gnu/envd/hearth-envd");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: no static envd; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --profile envd --target x86_64-unknown-linux-gnu -p hearth-envd"
        );
        None
    }
}

/// A minimal root filesystem: static busybox, users root and user (1000), and the
/// static envd if built. Cached in `/var/cache/hearth-test` and rebuilt when the
/// envd binary changes; shared read-only by every test, as templates are.
pub fn busybox_rootfs() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| build_busybox().expect("busybox rootfs"))
}

fn build_busybox() -> Result<PathBuf> {
    let dir = PathBuf::from("/var/cache/hearth-test/rootfs-busybox");
    let envd = static_envd();
    let stamp = match &envd {
        Some(p) => {
            let m = fs::metadata(p)?;
            format!("{:?} {}", m.modified()?, m.len())
        }
        None => "no envd".to_owned(),
    };
    let stamp_file = dir.join(".hearth-test-stamp");
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    fs::create_dir_all("/var/cache/hearth-test")?;
    let lock = fs::File::create("/var/cache/hearth-test/rootfs-busybox.lock")?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the busybox rootfs cache")?;
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    let tmp = PathBuf::from("/var/cache/hearth-test/rootfs-busybox.tmp");
    let _ = fs::remove_dir_all(&tmp);
    let root = tmp.as_path();
    fs::create_dir_all(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "home/user",
        "usr/bin",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000))?;
    fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8(list.stdout)?.lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )?;
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nuser:x:1000:\n",
    )?;
    fs::write(root.join("etc/hosts"), "# from the layer\n")?;
    if let Some(envd) = envd {
        fs::copy(envd, root.join("usr/bin/hearth-envd"))?;
    }
    fs::write(root.join(".hearth-test-stamp"), &stamp)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// A Debian bookworm root filesystem with sudo, python3 and procps, and user 1000
/// with passwordless sudo; built with mmdebstrap once and cached across runs.
pub fn bookworm_rootfs() -> Option<&'static Path> {
    static R: OnceLock<Option<PathBuf>> = OnceLock::new();
    R.get_or_init(|| match build_bookworm() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("skipped: no bookworm rootfs: {e:#}");
            None
        }
    })
    .as_deref()
}

const BOOKWORM: &str = "/var/cache/hearth-test/rootfs-bookworm";

fn build_bookworm() -> Result<PathBuf> {
    let dir = PathBuf::from(BOOKWORM);
    let marker = dir.join(".hearth-test-complete");
    if marker.exists() {
        return Ok(dir);
    }
    fs::create_dir_all("/var/cache/hearth-test")?;
    let lock = fs::File::create("/var/cache/hearth-test/rootfs-bookworm.lock")?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the rootfs cache")
        .and_then(|_guard| {
            if marker.exists() {
                return Ok(dir.clone());
            }
            let tmp = PathBuf::from(format!("{BOOKWORM}.tmp"));
            let _ = fs::remove_dir_all(&tmp);
            let status = Command::new("mmdebstrap")
                .args([
                    "--variant=apt",
                    "--include=sudo,python3,procps,util-linux",
                    "bookworm",
                ])
                .arg(&tmp)
                .status()
                .context("run mmdebstrap (apt install mmdebstrap)")?;
            if !status.success() {
                bail!("mmdebstrap failed: {status}");
            }
            finish_bookworm(&tmp)?;
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&tmp, &dir)?;
            fs::write(&marker, "")?;
            Ok(dir.clone())
        })
}

/// Adds user 1000 with passwordless sudo to a fresh mmdebstrap tree.
pub fn finish_bookworm(root: &Path) -> Result<()> {
    let status = Command::new("chroot")
        .arg(root)
        .args(["useradd", "-m", "-u", "1000", "-s", "/bin/bash", "user"])
        .status()?;
    if !status.success() {
        bail!("useradd failed: {status}");
    }
    fs::write(
        root.join("etc/sudoers.d/user"),
        "user ALL=(ALL:ALL) NOPASSWD: ALL\n",
    )?;
    fs::set_permissions(
        root.join("etc/sudoers.d/user"),
        fs::Permissions::from_mode(0o440),
    )?;
    Ok(())
}

/// A throwaway network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("hearth-ct-{tag}");
        if Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it opens live
    /// there).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = hearth_sys::ns::open_ns(&self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                hearth_sys::ns::setns(fd.as_fd(), hearth_sys::ns::NsKind::Net).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A temporary directory for sandbox state directories.
pub fn state_base() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hearth-state-")
        .tempdir()
        .expect("state tempdir")
}

/// A spec for `layers` running `args` as init, state under `base`, output to
/// `base/<id>.out`.
pub fn spec(base: &Path, layers: Vec<PathBuf>, args: &[&str]) -> ContainerSpec {
    let (id, range) = unique();
    ContainerSpec {
        state_dir: base.join(&id),
        output: Some(base.join(format!("{id}.out"))),
        hostname: format!("h-{id}"),
        id,
        layers,
        id_range: range,
        netns: None,
        address: None,
        nameservers: vec![],
        limits: Limits::default(),
        init: args[0].into(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![],
    }
}

/// A spec running a shell script as init in the busybox rootfs.
pub fn script(base: &Path, script: &str) -> ContainerSpec {
    spec(
        base,
        vec![busybox_rootfs().to_owned()],
        &["/bin/sh", "-c", script],
    )
}

/// Launches `spec`, waits for init to exit, kills (tears down) and returns output.
pub fn run_to_end(spec: &ContainerSpec) -> Result<String> {
    let mut c = launcher().launch(spec)?;
    let exit = c.wait(Duration::from_secs(60))?;
    if exit.is_none() {
        c.kill(true)?;
        bail!("init did not exit in time");
    }
    c.kill(true)?;
    output(spec)
}

pub fn output(spec: &ContainerSpec) -> Result<String> {
    let path = spec.output.as_ref().expect("output set");
    Ok(fs::read_to_string(path).unwrap_or_default())
}

/// Host uids of a process (`Uid:` of /proc/<pid>/status).
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// Pids of every process whose real uid lies in `range`.
pub fn processes_in_range(range: IdRange) -> Vec<u32> {
    let lo = range.host_start();
    let hi = lo + IdRange::LEN;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            status_field(*pid, "Uid")
                .and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok())
                .is_some_and(|uid| uid >= lo && uid < hi)
        })
        .collect()
}

/// Host mounts that mention `base` (as mount point, source or option, such as an
/// overlay's `upperdir`): none may exist while sandboxes under `base` run or after.
/// Tests running in parallel mount other things, hence the filter.
pub fn host_mounts_under(base: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let needle = base.to_string_lossy();
    text.lines()
        .filter(|l| l.contains(needle.as_ref()))
        .map(str::to_owned)
        .collect()
}

/// Mount points of the host (fields 4 and 5 of mountinfo), for counting.
pub fn host_mounts() -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .map(|l| l.split(' ').skip(3).take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The sandbox cgroup directories that exist for `id`.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    ["cpu", "cpuacct", "memory", "pids", "freezer", "unified"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("hearth").join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Sends `GET /health` to envd at 127.0.0.1:49983 from inside `netns` until it
/// answers, and returns how long that took after `since`.
pub fn wait_health(netns: &Netns, since: Instant, timeout: Duration) -> Result<Duration> {
    netns.within(|| {
        let deadline = since + timeout;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:49983") {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                let head = String::from_utf8_lossy(&buf[..n]);
                if head.starts_with("HTTP/1.1 2") {
                    return Ok(since.elapsed());
                }
                bail!("health answered {head:?}");
            }
            if Instant::now() > deadline {
                bail!("envd did not answer within {timeout:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

/// Kills `c` (removing state) even if the test failed half-way.
pub struct Guard(pub Option<Container>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill(true);
        }
    }
}

/// A loop-mounted btrfs volume in a temporary directory, unmounted on drop.
pub struct Volume {
    pub dir: tempfile::TempDir,
    pub volume: hearth_runtime_container::DataVolume,
}

impl Volume {
    pub fn new() -> Option<Self> {
        if which("mkfs.btrfs").is_none() {
            eprintln!("skipped: mkfs.btrfs missing (apt install btrfs-progs)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("hearth-btrfs-")
            .tempdir()
            .ok()?;
        let volume = hearth_runtime_container::ensure_data_volume(
            &dir.path().join("mnt"),
            &dir.path().join("data.img"),
            512 << 20,
        )
        .expect("data volume");
        Some(Self { dir, volume })
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = self.volume.unmount();
        let _ = &self.dir;
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .chain([
            Path::new("/usr/sbin").join(tool),
            Path::new("/sbin").join(tool),
        ])
        .find(|p| p.exists())
}
