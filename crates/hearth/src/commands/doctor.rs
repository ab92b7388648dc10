// SPDX-License-Identifier: Apache-2.0
//! `hearth doctor`: can this host run Hearth, and which runtime would it use?
//!
//! Every check reads the real host (files under /proc and /sys, tool versions, a
//! probe of /dev/kvm); nothing is assumed from the distribution.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
struct Check {
    name: &'static str,
    level: Level,
    detail: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Where a cgroup controller is available: "v2", "v1" or missing.
pub fn controller_location(ctrl: &str) -> Option<&'static str> {
    let v2_roots = [
        "/sys/fs/cgroup/unified/cgroup.controllers",
        "/sys/fs/cgroup/cgroup.controllers",
    ];
    if v2_roots
        .iter()
        .any(|p| read(p).split_whitespace().any(|c| c == ctrl))
    {
        return Some("v2");
    }
    let mounts = read("/proc/self/mountinfo");
    let v1 = mounts.lines().any(|l| {
        l.contains(" - cgroup ")
            && l.rsplit(' ')
                .next()
                .is_some_and(|opts| opts.split(',').any(|o| o == ctrl))
    });
    v1.then_some("v1")
}

fn checks(home: &Path, kvm: &KvmFinding) -> Vec<Check> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    out.push(check(
        "root",
        if root { Level::Ok } else { Level::Fail },
        if root {
            "running as root"
        } else {
            "hearth serve needs root (namespaces, cgroups, nftables)"
        },
    ));
    let uname = nix::sys::utsname::uname().ok();
    out.push(check(
        "kernel",
        Level::Ok,
        uname
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    let mut layout = Vec::new();
    let mut missing = Vec::new();
    for ctrl in ["cpu", "memory", "pids", "freezer"] {
        match controller_location(ctrl) {
            Some(v) => layout.push(format!("{ctrl}:{v}")),
            None => missing.push(ctrl),
        }
    }
    out.push(check(
        "cgroups",
        if missing.is_empty() {
            Level::Ok
        } else {
            Level::Fail
        },
        if missing.is_empty() {
            format!("controllers {}", layout.join(" "))
        } else {
            format!("missing controllers {missing:?}; have {}", layout.join(" "))
        },
    ));
    let fs = read("/proc/filesystems");
    out.push(check(
        "overlayfs",
        if fs.contains("overlay") {
            Level::Ok
        } else {
            Level::Fail
        },
        if fs.contains("overlay") {
            "available"
        } else {
            "overlay filesystem not available"
        },
    ));
    let userns: u64 = read("/proc/sys/user/max_user_namespaces")
        .trim()
        .parse()
        .unwrap_or(0);
    out.push(check(
        "user namespaces",
        if userns > 0 { Level::Ok } else { Level::Fail },
        format!("max_user_namespaces = {userns}"),
    ));
    match which("nft") {
        Some(p) => {
            let ok = std::process::Command::new(&p)
                .args(["list", "tables"])
                .output()
                .is_ok_and(|o| o.status.success());
            out.push(check(
                "nftables",
                if ok { Level::Ok } else { Level::Fail },
                if ok {
                    format!("{} works", p.display())
                } else {
                    "nft cannot list tables (no nf_tables or not root)".into()
                },
            ));
        }
        None => out.push(check(
            "nftables",
            Level::Fail,
            "nft not found (apt install nftables)",
        )),
    }
    out.push(check("kvm", kvm.level, kvm.detail.clone()));
    out.push(check("microvm accelerator", Level::Ok, kvm.accel.clone()));
    for (tool, why) in [
        ("mmdebstrap", "builds the base template"),
        ("qemu-system-x86_64", "runs microVM sandboxes"),
        ("mkfs.ext4", "builds microVM root images"),
        ("qemu-img", "creates copy-on-write disks"),
    ] {
        out.push(match which(tool) {
            Some(p) => check("tool", Level::Ok, format!("{tool}: {}", p.display())),
            None => check(
                "tool",
                Level::Warn,
                format!("{tool} missing ({why}); scripts/install-deps installs it"),
            ),
        });
    }
    let probe = if home.exists() {
        home.to_path_buf()
    } else {
        PathBuf::from("/")
    };
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(st) => {
            let free = st.blocks_available() * st.fragment_size();
            let gib = free as f64 / f64::from(1u32 << 30);
            out.push(check(
                "disk",
                if gib >= 10.0 {
                    Level::Ok
                } else if gib >= 2.0 {
                    Level::Warn
                } else {
                    Level::Fail
                },
                format!("{gib:.1} GiB free at {}", probe.display()),
            ));
        }
        Err(e) => out.push(check(
            "disk",
            Level::Warn,
            format!("cannot stat {}: {e}", probe.display()),
        )),
    }
    out
}

/// What the microVM runtime found out about KVM on this host.
struct KvmFinding {
    level: Level,
    detail: String,
    accel: String,
    usable: bool,
}

/// Asks the microVM runtime, which test-boots its own guest kernel under KVM once per
/// host (cached) — the only reliable answer: a `/dev/kvm` may exist and open and still
/// be unable to boot a stock kernel (e.g. kvm_pvm).
async fn kvm_finding(home: &Path) -> KvmFinding {
    let progress = hearth_builder::ConsoleProgress::new();
    let report = match crate::wiring::microvm::runtime(home, "hearth") {
        Ok(vm) => crate::wiring::microvm::accel(&vm, &progress).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => {
            let usable = crate::wiring::microvm::auto_picks_microvm(&r);
            KvmFinding {
                level: if usable { Level::Ok } else { Level::Warn },
                detail: format!(
                    "/dev/kvm {}; modules: {}",
                    if r.kvm_device {
                        "opens read-write"
                    } else {
                        "unusable or missing"
                    },
                    if r.kvm_modules.is_empty() {
                        "none".to_owned()
                    } else {
                        r.kvm_modules.join(", ")
                    }
                ),
                accel: format!("{} — {}", r.accel.as_str(), r.reason),
                usable,
            }
        }
        Err(e) => KvmFinding {
            level: Level::Warn,
            detail: format!("cannot probe: {e:#}"),
            accel: "unknown (the microVM runtime could not start)".into(),
            usable: false,
        },
    }
}

pub async fn run(home: &Path) -> anyhow::Result<()> {
    let kvm = kvm_finding(home).await;
    let checks = checks(home, &kvm);
    let mut failed = false;
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed = true;
                "FAIL"
            }
        };
        println!("[{tag}] {:<20} {}", c.name, c.detail);
    }
    let runtime = if kvm.usable { "microvm" } else { "container" };
    println!("\n--runtime auto would choose: {runtime}");
    if failed {
        anyhow::bail!("some checks failed");
    }
    Ok(())
}
