// SPDX-License-Identifier: Apache-2.0
//! The init's program between clone and exec, in order:
//!
//! 1. New session; own cgroup namespace, created only now that the parent has moved
//!    it into its cgroups, so that those become its cgroup root.
//! 2. All mounts private, then the overlay (fd slot 0) attached on `<state>/rootfs`
//!    and the working directory moved there. Up to here the process still has the
//!    host root's uid, which lets it reach the state directory.
//! 3. uid/gid 0 of the sandbox (host `host_start`); from now on files it creates
//!    belong to the sandbox's root and paths are relative to the new root.
//! 4. `/proc` (fresh, for the new pid namespace; this must happen while the host's
//!    `/proc` is still visible in the namespace, or the kernel refuses it), then
//!    `user.max_user_namespaces = 0` so no process inside can make a user
//!    namespace even if seccomp were bypassed.
//! 5. `/dev`: a tmpfs with the host's harmless device nodes bound in, `pts`
//!    (private devpts instance), `shm`, `mqueue` and the usual symlinks.
//! 6. `/sys`: the parent's read-only clone (fd slot 1), sensitive parts masked;
//!    `/run`: a fresh tmpfs.
//! 7. Docker's masks on `/proc` (files hidden behind `/dev/null`, directories behind
//!    empty read-only tmpfs) and read-only binds of kernel tunables.
//! 8. pivot_root into the overlay and detach the host's tree.
//! 9. Host name; bounding set; seccomp; capabilities; exec.

use crate::rootfs::StatePaths;
use crate::security::DEFAULT_CAPABILITIES;
use crate::spec::ContainerSpec;
use hearth_sys::clone::{ChildProgram, Exec, Step};
use hearth_sys::ns::NsKind;
use hearth_sys::seccomp::SeccompProgram;
use nix::mount::MsFlags;
use std::io;
use std::path::Path;

/// The fd slot of the overlay root.
pub(crate) const SLOT_ROOT: usize = 0;
/// The fd slot of the read-only sysfs clone.
pub(crate) const SLOT_SYS: usize = 1;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes bound from the host, as Docker provides them.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Files hidden behind `/dev/null` (Docker's masked paths that are files).
const MASKED_FILES: [&str; 6] = [
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
];

/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: [&str; 5] = [
    "proc/acpi",
    "proc/asound",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Kernel tunables made read-only.
const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Inputs prepared once per launcher.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    pub(crate) seccomp: &'a SeccompProgram,
    pub(crate) last_cap: u32,
}

/// Builds the program for `spec` (see the module documentation).
pub(crate) fn build(
    spec: &ContainerSpec,
    paths: &StatePaths,
    prepared: &Prepared<'_>,
) -> io::Result<ChildProgram> {
    let mut env: Vec<(&str, &str)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !env.iter().any(|(k, _)| *k == "PATH") {
        env.push(("PATH", DEFAULT_PATH));
    }
    let exec = Exec::new(&spec.init, &spec.args, env)?;
    let mut p = ChildProgram::new(exec);
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let rel = Path::new;

    // 1.
    p.push(Step::Setsid);
    p.push(Step::Unshare {
        kinds: vec![NsKind::Cgroup],
    });
    // 2.
    p.push(Step::MakeMountsPrivate);
    p.push(Step::move_mount(SLOT_ROOT, &paths.rootfs)?);
    p.push(Step::chdir(&paths.rootfs)?);
    // 3.
    p.push(Step::SetIds { uid: 0, gid: 0 });
    p.push(Step::Umask { mask: 0o022 });
    // 4.
    p.push(Step::mkdir(rel("proc"), 0o555)?);
    p.push(Step::mount(
        Some("proc"),
        rel("proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?);
    p.push(Step::write_file(
        rel("proc/sys/user/max_user_namespaces"),
        b"0",
    )?);
    // 5.
    p.push(Step::mkdir(rel("dev"), 0o755)?);
    p.push(Step::mount(
        Some("tmpfs"),
        rel("dev"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?);
    for dev in DEVICES {
        let target = Path::new("dev").join(dev);
        p.push(Step::create_file(&target, 0o666)?);
        p.push(Step::bind(&Path::new("/dev").join(dev), &target, false)?);
    }
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        p.push(Step::symlink(target, rel(link))?);
    }
    p.push(Step::mkdir(rel("dev/pts"), 0o755)?);
    p.push(Step::mount(
        Some("devpts"),
        rel("dev/pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?);
    // Page cache in tmpfs is charged to the memory cgroup; sizing it like the
    // memory limit keeps `df` honest.
    let shm_opts = format!("mode=1777,size={}", spec.limits.memory_bytes);
    p.push(Step::mkdir(rel("dev/shm"), 0o1777)?);
    p.push(Step::mount(
        Some("shm"),
        rel("dev/shm"),
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some(&shm_opts),
    )?);
    p.push(Step::mkdir(rel("dev/mqueue"), 0o755)?);
    p.push(Step::mount(
        Some("mqueue"),
        rel("dev/mqueue"),
        Some("mqueue"),
        nosuid_nodev_noexec,
        None,
    )?);
    // 6.
    p.push(Step::mkdir(rel("sys"), 0o555)?);
    p.push(Step::move_mount(SLOT_SYS, rel("sys"))?);
    let run_opts = format!("mode=755,size={}", spec.limits.memory_bytes);
    p.push(Step::mkdir(rel("run"), 0o755)?);
    p.push(Step::mount(
        Some("tmpfs"),
        rel("run"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&run_opts),
    )?);
    p.push(Step::mkdir(rel("run/lock"), 0o1777)?);
    // 7. Paths this kernel lacks are skipped (push_optional tolerates ENOENT).
    for file in MASKED_FILES {
        p.push_optional(Step::bind(Path::new("/dev/null"), rel(file), false)?);
    }
    for dir in MASKED_DIRS {
        p.push_optional(Step::mount(
            Some("tmpfs"),
            rel(dir),
            Some("tmpfs"),
            MsFlags::MS_RDONLY | nosuid_nodev_noexec,
            Some("mode=555"),
        )?);
    }
    for path in READ_ONLY {
        p.push_optional(Step::bind(rel(path), rel(path), false)?);
        p.push_optional(Step::remount_bind(
            rel(path),
            MsFlags::MS_RDONLY | nosuid_nodev_noexec,
        )?);
    }
    // 8.
    p.push(Step::PivotRoot);
    // 9.
    p.push(Step::SetHostname {
        name: spec.hostname.as_bytes().to_vec(),
    });
    p.push(Step::LimitBoundingSet {
        keep: DEFAULT_CAPABILITIES,
        last_cap: prepared.last_cap,
    });
    p.push(Step::Seccomp {
        program: prepared.seccomp.clone(),
    });
    p.push(Step::SetCapabilities {
        set: DEFAULT_CAPABILITIES,
    });
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{IdRange, Limits};

    #[test]
    fn program_ends_with_seccomp_then_capabilities() {
        let spec = ContainerSpec {
            id: "t".into(),
            layers: vec!["/l".into()],
            state_dir: "/s".into(),
            id_range: IdRange::new(1 << 20).unwrap(),
            netns: None,
            address: None,
            hostname: "h".into(),
            nameservers: vec![],
            limits: Limits::default(),
            init: "/init".into(),
            args: vec!["init".into()],
            env: vec![],
            output: None,
        };
        let seccomp = crate::security::seccomp_program().unwrap();
        let prepared = Prepared {
            seccomp: &seccomp,
            last_cap: 40,
        };
        let program = build(&spec, &StatePaths::new(&spec.state_dir), &prepared).unwrap();
        let steps: Vec<String> = program.steps().map(ToString::to_string).collect();
        let last = steps.len() - 1;
        assert!(steps[last].starts_with("set capabilities"), "{steps:?}");
        assert!(steps[last - 1].starts_with("install a seccomp filter"));
        let pivot = steps
            .iter()
            .position(|s| s.starts_with("pivot_root"))
            .unwrap();
        let proc_mount = steps
            .iter()
            .position(|s| s.starts_with("mount proc"))
            .unwrap();
        assert!(
            proc_mount < pivot,
            "proc must be mounted before the host tree goes"
        );
    }
}
