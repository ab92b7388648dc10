// SPDX-License-Identifier: Apache-2.0
//! Launch: namespaces, hostname, id mapping, mounts, the writable layer, errors.

use crate::common::*;
use anyhow::Result;
use hearth_runtime_container::ContainerError;
use hearth_sys::clone::CloneError;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

#[test]
fn init_is_pid_one_in_new_namespaces_with_hostname_and_id_map() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(
        base.path(),
        "echo pid=$$; echo host=$(hostname); cat /proc/self/uid_map /proc/self/gid_map; \
         echo uid=$(id -u) gid=$(id -g); \
         for n in user mnt pid uts ipc cgroup net; do echo ns=$(readlink /proc/self/ns/$n); done; \
         cat /proc/self/cgroup",
    );
    let out = run_to_end(&spec)?;
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains(&format!("host={}\n", spec.hostname)), "{out}");
    let map_line = format!("0 {} 65536", spec.id_range.host_start());
    let maps: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| *l == map_line)
        .collect();
    assert_eq!(maps.len(), 2, "uid and gid maps: {out}");
    assert!(out.contains("uid=0 gid=0"), "{out}");
    for n in ["user", "mnt", "pid", "uts", "ipc", "cgroup", "net"] {
        let host = fs::read_link(format!("/proc/self/ns/{n}"))?;
        let host = host.to_string_lossy();
        let inside = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("ns=")
                    .filter(|v| v.starts_with(&format!("{n}:")))
            })
            .unwrap_or_default();
        if n == "net" {
            assert_eq!(inside, host, "no netns given: the caller's");
        } else {
            assert_ne!(inside, host, "{n} namespace must be new");
        }
    }
    // The cgroup namespace is rooted at the sandbox's own cgroups.
    assert!(
        out.lines()
            .any(|l| l == "8:pids:/" || l.ends_with(":pids:/")),
        "{out}"
    );
    Ok(())
}

#[test]
fn mounts_inside_are_the_designed_ones_and_nothing_of_the_host() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(
        base.path(),
        "cat /proc/self/mountinfo; ls /dev; echo x > /dev/null && head -c 4 /dev/urandom | wc -c; \
         ls /sys/fs/cgroup | wc -l",
    );
    let out = run_to_end(&spec)?;
    let mounts: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next()?;
            Some((
                f.get(4)?.to_string(),
                fstype.to_string(),
                f.get(5)?.to_string(),
            ))
        })
        .collect();
    let find = |target: &str| mounts.iter().find(|(t, _, _)| t == target);
    assert_eq!(find("/").map(|m| m.1.as_str()), Some("overlay"), "{out}");
    assert!(find("/").unwrap().2.contains("nodev"), "root is nodev");
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
        ("/run", "tmpfs"),
        ("/sys/firmware", "tmpfs"),
        ("/proc/keys", "devtmpfs"),
    ] {
        assert_eq!(
            find(target).map(|m| m.1.as_str()),
            Some(fstype),
            "{target}: {out}"
        );
    }
    assert!(
        find("/sys").unwrap().2.starts_with("ro"),
        "/sys is read-only"
    );
    assert!(
        find("/proc/sys").unwrap().2.starts_with("ro"),
        "/proc/sys is read-only"
    );
    for host_only in [
        "/work",
        "/run/netns",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
    ] {
        assert!(find(host_only).is_none(), "{host_only} leaked: {out}");
    }
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    assert!(out.contains("\n4\n"), "urandom readable: {out}");
    assert!(out.ends_with("0\n"), "/sys/fs/cgroup is empty: {out}");
    Ok(())
}

#[test]
fn writes_land_in_upper_owned_by_the_range_and_layers_stay_untouched() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let layer = busybox_rootfs();
    let passwd_before = fs::read(layer.join("etc/passwd"))?;
    let spec = script(
        base.path(),
        "echo new > /root/file && mkdir -p /home/user/d && touch /home/user/d/f && \
         chown -R 1000:1000 /home/user/d && echo more >> /etc/passwd && rm /etc/group && echo ok",
    );
    let mut c = launcher().launch(&spec)?;
    c.wait(Duration::from_secs(30))?;
    c.kill(false)?;
    let guard_dir = spec.state_dir.clone();
    let result = (|| -> Result<()> {
        assert_eq!(output(&spec)?, "ok\n");
        let upper = spec.state_dir.join("upper");
        let root = spec.id_range.host_start();
        let meta = fs::metadata(upper.join("root/file"))?;
        assert_eq!((meta.uid(), meta.gid()), (root, root));
        let meta = fs::metadata(upper.join("home/user/d/f"))?;
        assert_eq!((meta.uid(), meta.gid()), (root + 1000, root + 1000));
        // Copy-up keeps the (idmapped) owner: root of the sandbox.
        let meta = fs::metadata(upper.join("etc/passwd"))?;
        assert_eq!(meta.uid(), root);
        assert!(fs::read_to_string(upper.join("etc/passwd"))?.ends_with("more\n"));
        // A deletion is a whiteout in upper; the layer keeps its file.
        let wh = fs::symlink_metadata(upper.join("etc/group"))?;
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(fs::read(layer.join("etc/passwd"))?, passwd_before);
        assert!(layer.join("etc/group").exists());
        assert!(!layer.join("root/file").exists());
        Ok(())
    })();
    hearth_runtime_container::remove_state_dir(&guard_dir)?;
    result
}

#[test]
fn etc_files_name_the_sandbox_without_touching_the_layer() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let mut spec = script(base.path(), "cat /etc/hosts /etc/hostname /etc/resolv.conf");
    spec.address = Some("169.254.0.21".parse()?);
    spec.nameservers = vec!["10.255.255.53".parse()?, "1.1.1.1".parse()?];
    let out = run_to_end(&spec)?;
    let h = &spec.hostname;
    assert!(
        out.contains(&format!("127.0.0.1\tlocalhost {h}\n")),
        "{out}"
    );
    assert!(out.contains(&format!("169.254.0.21\t{h}\n")), "{out}");
    assert!(out.contains(&format!("\n{h}\n")), "{out}");
    assert!(
        out.contains("nameserver 10.255.255.53\nnameserver 1.1.1.1\n"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(busybox_rootfs().join("etc/hosts"))?,
        "# from the layer\n"
    );
    Ok(())
}

#[test]
fn init_is_born_in_the_given_network_namespace() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let netns = Netns::new(&format!("netns-{}", std::process::id()))?;
    let base = state_base();
    let mut spec = script(base.path(), "readlink /proc/self/ns/net; cat /proc/net/dev");
    spec.netns = Some(netns.path());
    let out = run_to_end(&spec)?;
    let ino = fs::metadata(netns.path())?.ino();
    assert!(out.starts_with(&format!("net:[{ino}]\n")), "{out}");
    let ifaces: Vec<&str> = out
        .lines()
        .skip(3)
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        ifaces.iter().map(|s| s.trim()).collect::<Vec<_>>(),
        ["lo"],
        "{out}"
    );
    // The launching thread's namespace is untouched.
    assert_eq!(
        fs::read_link("/proc/thread-self/ns/net")?,
        fs::read_link("/proc/self/ns/net")?
    );
    Ok(())
}

#[test]
fn failing_init_is_a_typed_error_and_leaves_nothing() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let before = host_mounts_under(base.path());
    let spec = spec(
        base.path(),
        vec![busybox_rootfs().to_owned()],
        &["/nonexistent/init"],
    );
    let err = launcher().launch(&spec).unwrap_err();
    match &err {
        ContainerError::Start(CloneError::Step { step, err, .. }) => {
            assert_eq!(step, "exec /nonexistent/init");
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert!(
        !spec.state_dir.exists(),
        "state dir created by the launch is removed"
    );
    assert!(processes_in_range(spec.id_range).is_empty());
    assert_eq!(host_mounts_under(base.path()), before);
    Ok(())
}

#[test]
fn missing_layer_is_a_typed_error() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let mut spec = script(base.path(), "true");
    spec.layers.insert(0, "/nonexistent/layer".into());
    let err = launcher().launch(&spec).unwrap_err();
    assert!(
        matches!(
            err,
            ContainerError::Rootfs(hearth_runtime_container::RootfsError::Layer { .. })
        ),
        "{err:?}"
    );
    assert!(cgroup_dirs(&spec.id).is_empty());
    assert!(processes_in_range(spec.id_range).is_empty());
    Ok(())
}

#[test]
fn duplicate_id_is_rejected_without_harming_the_first() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let spec = script(base.path(), "exec sleep 1000");
    let first = Guard(Some(launcher().launch(&spec)?));
    let err = launcher().launch(&spec).unwrap_err();
    assert!(matches!(err, ContainerError::Exists { .. }), "{err:?}");
    let pid = first.0.as_ref().unwrap().pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(first);
    Ok(())
}

#[test]
fn planted_etc_symlink_in_a_resumed_upper_is_not_followed() -> Result<()> {
    if !privileged() {
        return Ok(());
    }
    let base = state_base();
    let victim = tempfile::tempdir()?;
    fs::write(victim.path().join("hosts"), "the host's file")?;
    let spec = script(base.path(), "cat /etc/hostname; readlink /etc || echo real");
    // What an earlier run of the sandbox could have left in its writable layer.
    fs::create_dir_all(spec.state_dir.join("upper"))?;
    std::os::unix::fs::symlink(victim.path(), spec.state_dir.join("upper/etc"))?;
    let out = run_to_end(&spec)?;
    assert_eq!(out, format!("{}\nreal\n", spec.hostname));
    assert_eq!(
        fs::read_to_string(victim.path().join("hosts"))?,
        "the host's file"
    );
    assert!(!victim.path().join("hostname").exists());
    Ok(())
}
