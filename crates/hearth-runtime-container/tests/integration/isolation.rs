// SPDX-License-Identifier: Apache-2.0
//! Isolation: unprivileged host identity, capabilities, seccomp, masks, sudo,
//! and the memory and pids limits holding under attack.

use crate::common::*;
use anyhow::Result;
use std::time::{Duration, Instant};

#[test]
fn sandbox_root_is_an_unprivileged_host_user_with_bounded_capabilities() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(base.path(), "exec sleep 1000");
    let c = Guard(Some(launcher().launch(&spec)?));
    let pid = c.0.as_ref().unwrap().pid();
    let root = spec.id_range.host_start();
    let ids = format!("{root}\t{root}\t{root}\t{root}");
    assert_eq!(status_field(pid, "Uid").as_deref(), Some(ids.as_str()));
    assert_eq!(status_field(pid, "Gid").as_deref(), Some(ids.as_str()));
    assert_eq!(
        status_field(pid, "CapBnd").as_deref(),
        Some("00000000a80425fb")
    );
    assert_eq!(
        status_field(pid, "CapEff").as_deref(),
        Some("00000000a80425fb")
    );
    assert_eq!(
        status_field(pid, "CapInh").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("0"));
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(pid, "Seccomp_filters").as_deref(), Some("1"));
    Ok(())
}

#[test]
fn namespace_and_mount_tools_are_refused_inside() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(
        base.path(),
        "cat /proc/sys/user/max_user_namespaces; \
         unshare -U true; echo unshare_user=$?; unshare -m true; echo unshare_mnt=$?; \
         mkdir -p /mnt; mount -t tmpfs t /mnt; echo mount=$?; umount /proc; echo umount=$?; \
         nsenter -t 1 -m true; echo nsenter=$?; echo 1 > /proc/sys/kernel/ns_last_pid; echo sysctl=$?; \
         wc -c < /proc/keys; ls /sys/firmware | wc -l; hostname other; echo hostname=$?",
    );
    let out = run_to_end(&spec)?;
    assert!(
        out.starts_with("0\n"),
        "nested user namespaces are disabled: {out}"
    );
    for name in [
        "unshare_user",
        "unshare_mnt",
        "mount",
        "umount",
        "nsenter",
        "sysctl",
        "hostname",
    ] {
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|c| c.parse::<u32>().ok());
        assert!(code.is_some_and(|c| c != 0), "{name} must fail: {out}");
    }
    // /proc/keys is /dev/null, /sys/firmware an empty tmpfs.
    assert!(out.contains("\n0\n0\n"), "{out}");
    Ok(())
}

/// Each probe: a name, a syscall number and its arguments, and the errno expected
/// (0: allowed).
const PROBES: &str = r#"
import ctypes, os, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    print(f"{name}={0 if r >= 0 else ctypes.get_errno()}")
probe("unshare_user", 272, 0x10000000)
probe("unshare_net", 272, 0x40000000)
probe("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
probe("clone3", 435, 0, 0)
probe("keyctl", 250, 0, -3, 0)
probe("add_key", 248, 0, 0, 0, 0, 0)
probe("request_key", 249, 0, 0, 0, 0)
probe("bpf", 321, 0, 0, 0)
probe("perf_event_open", 298, 0, 0, -1, -1, 0)
probe("userfaultfd", 323, 0)
probe("mount", 165, 0, 0, 0, 0, 0)
probe("umount2", 166, 0, 0)
probe("fsopen", 430, 0, 0)
probe("open_tree", 428, -100, 0, 0)
probe("pivot_root", 155, 0, 0)
probe("setns", 308, 0, 0)
probe("open_by_handle_at", 304, 0, 0, 0)
probe("init_module", 175, 0, 0, 0)
probe("finit_module", 313, 0, 0, 0)
probe("kexec_load", 246, 0, 0, 0, 0)
probe("reboot", 169, 0, 0, 0, 0)
probe("swapon", 167, 0, 0)
probe("io_uring_setup", 425, 1, 0)
probe("personality_bad", 135, 0x0400000)
probe("socket_vsock", 41, 40, 1, 0)
probe("personality_query", 135, 0xffffffff)
probe("getpid", 39)
pid = os.fork()
if pid == 0:
    os._exit(7)
print(f"fork={os.waitpid(pid, 0)[1] >> 8}")
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("threads=ok")
"#;

#[test]
fn seccomp_refuses_dangerous_calls_like_docker() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let Some(bookworm) = bookworm_rootfs() else {
        return Ok(());
    };
    let base = state_base();
    let spec = spec(
        base.path(),
        vec![bookworm.to_owned()],
        &["/usr/bin/python3", "-c", PROBES],
    );
    let out = run_to_end(&spec)?;
    let eperm = libc::EPERM.to_string();
    for name in [
        "unshare_user",
        "unshare_net",
        "clone_newuser",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "mount",
        "umount2",
        "fsopen",
        "open_tree",
        "pivot_root",
        "setns",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "kexec_load",
        "reboot",
        "swapon",
        "io_uring_setup",
        "personality_bad",
        "socket_vsock",
    ] {
        assert!(out.contains(&format!("{name}={eperm}\n")), "{name}: {out}");
    }
    assert!(out.contains(&format!("clone3={}\n", libc::ENOSYS)), "{out}");
    for allowed in ["personality_query=0", "getpid=0", "fork=7", "threads=ok"] {
        assert!(out.contains(allowed), "{allowed}: {out}");
    }
    Ok(())
}

#[test]
fn sudo_works_for_user_1000() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let Some(bookworm) = bookworm_rootfs() else {
        return Ok(());
    };
    let base = state_base();
    let spec = spec(
        base.path(),
        vec![bookworm.to_owned()],
        &[
            "/bin/sh",
            "-c",
            "setpriv --reuid=1000 --regid=1000 --init-groups sh -c 'id -u; sudo -n id -u; echo rc=$?' 2>&1",
        ],
    );
    let out = run_to_end(&spec)?;
    assert_eq!(out, "1000\n0\nrc=0\n");
    Ok(())
}

#[test]
fn memory_hog_is_oom_killed_inside_and_init_survives() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let mut spec = script(
        base.path(),
        "awk 'BEGIN { s = \"x\"; while (1) s = s s }'; echo hog=$?; echo alive; exec sleep 1000",
    );
    spec.limits.memory_bytes = 64 << 20;
    let mut guard = Guard(Some(launcher().launch(&spec)?));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !output(&spec)?.contains("alive") {
        assert!(
            Instant::now() < deadline,
            "hog not killed: {}",
            output(&spec)?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(output(&spec)?.contains("hog=137"), "{}", output(&spec)?);
    let c = guard.0.as_ref().unwrap();
    let stats = c.stats()?;
    assert_eq!(stats.memory_limit_bytes, 64 << 20);
    let oom = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/hearth/{}/memory.oom_control",
        spec.id
    ))?;
    assert!(
        oom.lines()
            .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
        "{oom}"
    );
    guard.0.take().unwrap().kill(true)?;
    Ok(())
}

#[test]
fn fork_bomb_is_contained_by_pids_max() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let mut spec = script(
        base.path(),
        "bomb() { bomb | bomb & }; bomb; exec sleep 1000",
    );
    spec.limits.pids_max = 64;
    spec.limits.cpu_count = Some(1);
    let mut guard = Guard(Some(launcher().launch(&spec)?));
    std::thread::sleep(Duration::from_millis(1500));
    let stats = guard.0.as_ref().unwrap().stats()?;
    assert!(stats.pids <= 64, "pids {}", stats.pids);
    assert!(stats.pids >= 32, "the bomb was running: {}", stats.pids);
    // The host can still start processes.
    assert!(std::process::Command::new("true").status()?.success());
    guard.0.take().unwrap().kill(true)?;
    assert!(processes_in_range(spec.id_range).is_empty());
    assert!(cgroup_dirs(&spec.id).is_empty());
    Ok(())
}
