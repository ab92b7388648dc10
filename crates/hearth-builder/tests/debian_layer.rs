// SPDX-License-Identifier: Apache-2.0
//! Builds (or reuses) the real Debian layer and checks it from the inside.
//!
//! Needs root, `mmdebstrap` and access to the Debian archive; skips with a message
//! otherwise. The layer is cached in `$HEARTH_TEST_HOME` (default
//! `/var/cache/hearth-test`), shared with the compatibility harness, so only the
//! first run on a machine pays for the build.

use hearth_builder::{ConsoleProgress, ensure_debian_layer};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn test_home() -> PathBuf {
    std::env::var_os("HEARTH_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hearth-test"))
}

fn prerequisites_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/usr/bin/mmdebstrap").exists() {
        return Some("mmdebstrap is not installed (scripts/install-deps)".into());
    }
    None
}

fn chroot_output(rootfs: &Path, argv: &[&str]) -> String {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(argv)
        .output()
        .expect("chroot runs");
    assert!(
        out.status.success(),
        "chroot {argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn debian_layer_has_user_sudo_and_working_python() {
    if let Some(why) = prerequisites_missing() {
        eprintln!("skipping debian_layer_has_user_sudo_and_working_python: {why}");
        return;
    }
    let layer = ensure_debian_layer(&test_home(), &ConsoleProgress::new()).unwrap();
    let root = layer.rootfs();

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l == "user:x:1000:1000::/home/user:/bin/bash"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "user:x:1000:"), "{group}");
    let sudo = group.lines().find(|l| l.starts_with("sudo:")).unwrap();
    assert!(
        sudo.split(':')
            .nth(3)
            .unwrap()
            .split(',')
            .any(|u| u == "user")
    );

    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    let root_entry = shadow.lines().find(|l| l.starts_with("root:")).unwrap();
    assert_eq!(
        root_entry.split(':').nth(1),
        Some(""),
        "root keeps a password"
    );

    let sudoers = root.join("etc/sudoers.d/user");
    assert_eq!(
        std::fs::read_to_string(&sudoers).unwrap(),
        "user ALL=(ALL:ALL) NOPASSWD: ALL\n"
    );
    let meta = std::fs::metadata(&sudoers).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o440);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    let home = std::fs::metadata(root.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "hearth\n"
    );
    assert!(
        std::fs::read_dir(root.join("var/lib/apt/lists"))
            .unwrap()
            .flatten()
            .all(|e| e.file_type().unwrap().is_dir() || e.file_name() == "lock"),
        "apt lists were left in the layer"
    );

    let version = chroot_output(&root, &["python", "--version"]);
    assert!(version.starts_with("Python 3."), "{version}");
    let whoami = chroot_output(
        &root,
        &["su", "-s", "/bin/bash", "user", "-c", "sudo -n whoami"],
    );
    assert!(whoami.lines().any(|l| l == "root"), "{whoami}");
    for tool in [
        ["git", "--version"],
        ["tput", "-V"],
        ["ip", "-V"],
        ["curl", "--version"],
    ] {
        chroot_output(&root, &tool);
    }
    // procps needs /proc to run; its presence is enough here.
    chroot_output(&root, &["sh", "-c", "command -v ps && command -v pkill"]);
}
