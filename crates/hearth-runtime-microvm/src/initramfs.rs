// SPDX-License-Identifier: Apache-2.0
//! The guest's initramfs: a static busybox and a shell script as `/init`.
//!
//! The init loads the virtio drivers (in dependency order, resolved on the host),
//! mounts the root disk (`/dev/vda`, ext4), sets up the E2B guest link
//! (`eth0` 169.254.0.21/30 via 169.254.0.22, `lo` up), hostname and nameservers from
//! the kernel command line, and `switch_root`s to `/usr/bin/hearth-envd` as PID 1.
//! Any failure prints `hearth-init: …` on the console and reboots, which ends QEMU
//! (`-no-reboot`), so a broken image fails fast instead of hanging.
//!
//! Kernel command line parameters read by the init: `hearth.hostname=<name>`,
//! `hearth.ns=<ip>[,<ip>…]` and `hearth.probe=1` (print [`PROBE_MARKER`] and power
//! off: the accelerator probe).

use crate::cpio::CpioWriter;
use crate::kmod::Module;
use std::io;

/// Printed by the init in probe mode once userspace runs.
pub const PROBE_MARKER: &str = "HEARTH-PROBE-OK";
/// The first line userspace prints (boot-time measurements key on it).
pub const USERSPACE_MARKER: &str = "hearth-init: userspace";
/// Printed right before envd takes over.
pub const HANDOFF_MARKER: &str = "hearth-init: starting hearth-envd";

/// The guest's address on its link (same in every slot, so snapshots move freely).
pub const GUEST_ADDR: &str = "169.254.0.21";
/// The guest's gateway: the tap in the slot's router namespace.
pub const GATEWAY_ADDR: &str = "169.254.0.22";
/// Prefix length of the guest link.
pub const GUEST_PREFIX: u8 = 30;

/// The `/init` script for the given module load order.
pub fn init_script(modules: &[Module]) -> String {
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    format!(
        r#"#!/bin/busybox sh
# Hearth microVM init: drivers, root disk, guest link, then hearth-envd as PID 1.
B=/bin/busybox
echo "{userspace}"
fail() {{ echo "hearth-init: $*"; $B sleep 1; $B reboot -f; }}
$B mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "cannot mount /dev"
$B mount -t proc -o nosuid,nodev,noexec proc /proc || fail "cannot mount /proc"
for m in {modules}; do
  $B insmod /lib/modules/$m.ko || fail "cannot load module $m"
done
PROBE= HN= NS=
for a in $($B cat /proc/cmdline); do
  case "$a" in
    hearth.probe=*) PROBE=${{a#*=}} ;;
    hearth.hostname=*) HN=${{a#*=}} ;;
    hearth.ns=*) NS=${{a#*=}} ;;
  esac
done
if [ -n "$PROBE" ]; then echo "{probe}"; $B reboot -f; fi
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -gt 5000 ] && fail "no root disk /dev/vda"
  $B usleep 1000
done
$B mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount the root disk"
[ -x /newroot/usr/bin/hearth-envd ] || fail "the root disk has no /usr/bin/hearth-envd"
$B ip link set lo up
$B ip link set eth0 up || fail "no eth0"
$B ip addr add {addr}/{prefix} dev eth0 || fail "cannot address eth0"
$B ip route add default via {gw} || fail "cannot add the default route"
if [ -n "$HN" ]; then
  $B hostname "$HN"
  # The image's files must agree with the name (sudo, for one, resolves it).
  if [ -d /newroot/etc ]; then
    echo "$HN" > /newroot/etc/hostname
    $B printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{addr}\t%s\n' "$HN" > /newroot/etc/hosts
  fi
fi
if [ -n "$NS" ] && [ -d /newroot/etc ]; then
  $B rm -f /newroot/etc/resolv.conf
  for s in $($B echo "$NS" | $B tr , ' '); do echo "nameserver $s"; done > /newroot/etc/resolv.conf
fi
$B umount /proc
$B mkdir -p /newroot/dev
$B mount --move /dev /newroot/dev || $B umount /dev
echo "{handoff}"
exec $B switch_root /newroot /usr/bin/hearth-envd
fail "switch_root failed"
"#,
        modules = names.join(" "),
        probe = PROBE_MARKER,
        userspace = USERSPACE_MARKER,
        handoff = HANDOFF_MARKER,
        addr = GUEST_ADDR,
        prefix = GUEST_PREFIX,
        gw = GATEWAY_ADDR,
    )
}

/// Builds the initramfs (an uncompressed `newc` cpio: the kernel unpacks it without a
/// decompressor, which matters under TCG) from a static busybox and the modules.
pub fn build(busybox: &[u8], modules: &[(Module, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let order: Vec<Module> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut w = CpioWriter::new(Vec::with_capacity(
        busybox.len() + modules.iter().map(|(_, d)| d.len()).sum::<usize>() + 64 * 1024,
    ));
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        w.dir(dir, 0o755)?;
    }
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    for (m, data) in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, data)?;
    }
    w.file("init", 0o755, init_script(&order).as_bytes())?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn module(name: &str) -> Module {
        Module {
            name: name.into(),
            path: PathBuf::from(format!("/x/{name}.ko")),
        }
    }

    #[test]
    fn script_loads_modules_in_the_given_order() {
        let s = init_script(&[
            module("virtio_ring"),
            module("virtio"),
            module("virtio_blk"),
        ]);
        assert!(
            s.contains("for m in virtio_ring virtio virtio_blk; do"),
            "{s}"
        );
        assert!(s.contains("ip addr add 169.254.0.21/30 dev eth0"));
        assert!(s.contains("switch_root /newroot /usr/bin/hearth-envd"));
    }

    #[test]
    fn archive_holds_init_busybox_and_modules() {
        let bytes = build(b"BUSYBOX", &[(module("virtio"), b"KO".to_vec())]).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["bin/busybox", "lib/modules/virtio.ko", "init", "TRAILER!!!"] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }
}
