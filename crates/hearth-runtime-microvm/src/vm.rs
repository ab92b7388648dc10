// SPDX-License-Identifier: Apache-2.0
//! One QEMU process: its command line, launch, identity and end.
//!
//! The machine is QEMU's `microvm` with ACPI (Debian's cloud kernel finds the
//! virtio-mmio devices through ACPI), no default devices, a virtio-blk root disk, a
//! virtio-net NIC on the slot's tap, a virtio-rng and the serial console appended to
//! the sandbox log. QEMU is started (through `nsenter`) inside the slot's router
//! network namespace, where the tap lives.
//!
//! Hardening: QEMU opens everything it needs (tap, disk, kernel, sockets) as root,
//! then `-runas` drops to a uid of its own (no capabilities left) and `-chroot`
//! confines it to an empty directory; `-sandbox` installs QEMU's seccomp filter
//! (obsolete syscalls, spawning processes and resource control denied). Privilege
//! elevation cannot be denied by the filter because `-runas` itself needs
//! `setuid`/`setgid`: after the drop there is no privilege left to elevate to.
//! Migration files are handed over as descriptors (stdin, or `getfd` over QMP).

use crate::accel::Accel;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A VM failed to launch or stop.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The process could not be started.
    #[error("failed to start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// A file QEMU needs could not be opened.
    #[error("failed to open {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The process did not exit after being killed.
    #[error("QEMU process {pid} did not exit")]
    Stuck {
        /// Its pid.
        pid: u32,
    },
}

/// The id of the guest RAM's memory backend, hence of its RAM block in migration
/// streams.
pub const RAM_BLOCK: &str = "mem";

/// Where the guest's RAM comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// Anonymous memory (cold boots and full-state restores).
    Anonymous,
    /// A file mapped shared: the guest's RAM *is* the file (template preparation).
    SharedFile(PathBuf),
    /// A file mapped private (copy-on-write): a template's RAM, never written.
    PrivateFile(PathBuf),
}

/// How QEMU drops privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// Uid QEMU runs as after setup.
    pub uid: u32,
    /// Gid QEMU runs as after setup.
    pub gid: u32,
    /// Empty root-owned directory QEMU is chrooted into.
    pub chroot: PathBuf,
}

/// Everything that defines one QEMU launch.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Process name (`-name`), also how an adopted process is recognised.
    pub name: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// TCG translation cache size, MiB.
    pub tb_size_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, MiB.
    pub memory_mb: u32,
    /// RAM backing.
    pub memory: Memory,
    /// Whether the PIT and PIC are present (needed under TCG when the TSC frequency
    /// cannot be told to the guest).
    pub legacy_timers: bool,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Root disk (qcow2 overlay).
    pub disk: PathBuf,
    /// Network namespace to run in (holds the tap).
    pub netns: Option<PathBuf>,
    /// Tap device name.
    pub tap: String,
    /// Guest MAC.
    pub mac: String,
    /// QMP socket path.
    pub qmp: PathBuf,
    /// Serial console socket (input: the host sends SysRq through it).
    pub console_sock: PathBuf,
    /// Console log (serial output and QEMU's own messages).
    pub console: PathBuf,
    /// Privilege drop; `None` runs QEMU as root (tests of the launcher only).
    pub jail: Option<Jail>,
    /// Start with `-incoming defer` (a migration stream follows over QMP).
    pub incoming: bool,
    /// Start with vCPUs stopped (`-S`).
    pub start_paused: bool,
}

impl VmSpec {
    /// The `-M` value.
    fn machine(&self) -> String {
        let timers = if self.legacy_timers { "on" } else { "off" };
        format!(
            "microvm,acpi=on,rtc=on,isa-serial=on,x-option-roms=off,pit={timers},pic={timers},memory-backend={RAM_BLOCK}"
        )
    }

    fn cpu(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }

    /// The arguments that define the guest-visible machine: a snapshot restores only
    /// into a QEMU whose fingerprint matches.
    pub fn fingerprint(&self) -> String {
        let parts = [
            self.machine(),
            self.accel.as_str().to_owned(),
            self.cpu().to_owned(),
            self.vcpus.to_string(),
            self.memory_mb.to_string(),
            "virtio-blk-device,virtio-net-device,virtio-rng-device,isa-serial".to_owned(),
        ];
        crate::fsutil::sha256(parts.join("|").as_bytes())[..16].to_owned()
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::with_capacity(64);
        let mut push = |s: &str| a.push(s.into());
        push("-name");
        push(&format!("{},debug-threads=on", self.name));
        push("-M");
        push(&self.machine());
        match self.accel {
            Accel::Kvm => {
                push("-accel");
                push("kvm");
            }
            Accel::Tcg => {
                push("-accel");
                push(&format!("tcg,thread=multi,tb-size={}", self.tb_size_mb));
            }
        }
        push("-cpu");
        push(self.cpu());
        push("-smp");
        push(&self.vcpus.to_string());
        push("-m");
        push(&format!("{}M", self.memory_mb));
        let backend = match &self.memory {
            Memory::Anonymous => {
                format!("memory-backend-ram,id={RAM_BLOCK},size={}M", self.memory_mb)
            }
            Memory::SharedFile(p) => format!(
                "memory-backend-file,id={RAM_BLOCK},size={}M,mem-path={},share=on",
                self.memory_mb,
                p.display()
            ),
            Memory::PrivateFile(p) => format!(
                "memory-backend-file,id={RAM_BLOCK},size={}M,mem-path={},share=off",
                self.memory_mb,
                p.display()
            ),
        };
        push("-object");
        push(&backend);
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-msg",
            "timestamp=on",
        ] {
            push(s);
        }
        push("-kernel");
        a.push(self.kernel.clone().into());
        let mut push = |s: &str| a.push(s.into());
        push("-initrd");
        push(&self.initramfs.to_string_lossy());
        push("-append");
        push(&self.cmdline);
        // A socket chardev so the host can send a break + SysRq key (emergency sync
        // before a filesystem-only pause); its log file is the sandbox log and gets
        // every byte whether or not anyone is connected.
        push("-chardev");
        push(&format!(
            "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
            self.console_sock.display(),
            self.console.display()
        ));
        push("-serial");
        push("chardev:con");
        // file.auto-read-only=off: the overlay stays open read-write, so migration's
        // inactivation and activation never reopen it by path (impossible once
        // chrooted). cache.direct=on: the sandbox's own writes bypass the host page
        // cache, whose dirty pages would otherwise be charged to QEMU's memory cgroup
        // and OOM-kill the VM when the guest writes a lot (seen: a 3 GB dd). The
        // template image underneath stays cached (backing.cache.direct=off): every
        // VM reads the same pages.
        push("-drive");
        push(&format!(
            "id=root,file={},format=qcow2,if=none,discard=unmap,detect-zeroes=unmap,file.auto-read-only=off,cache.direct=on,backing.cache.direct=off",
            self.disk.display()
        ));
        push("-device");
        push("virtio-blk-device,drive=root");
        push("-netdev");
        push(&format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            self.tap
        ));
        push("-device");
        push(&format!("virtio-net-device,netdev=net0,mac={}", self.mac));
        push("-object");
        push("rng-random,id=rng0,filename=/dev/urandom");
        push("-device");
        push("virtio-rng-device,rng=rng0");
        push("-chardev");
        push(&format!(
            "socket,id=qmp,path={},server=on,wait=off",
            self.qmp.display()
        ));
        push("-mon");
        push("chardev=qmp,mode=control");
        push("-sandbox");
        push("on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny");
        if let Some(j) = &self.jail {
            push("-runas");
            push(&format!("{}:{}", j.uid, j.gid));
            push("-chroot");
            push(&j.chroot.to_string_lossy());
        }
        if self.incoming {
            push("-incoming");
            push("defer");
        }
        if self.start_paused {
            push("-S");
        }
        a
    }

    /// Starts QEMU. `stdin` is handed to it as fd 0 (a migration stream), stdout is
    /// discarded and stderr is appended to the console log.
    ///
    /// A one-line shell joins the cgroups whose `cgroup.procs` files are given and
    /// then `exec`s `nsenter` (into the slot's namespace), which `exec`s QEMU: one
    /// process throughout, inside its cgroups before QEMU allocates anything.
    pub fn spawn(
        &self,
        stdin: Option<File>,
        cgroup_procs: &[PathBuf],
    ) -> Result<VmProcess, VmError> {
        let console = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console)
            .map_err(|err| VmError::Open {
                path: self.console.clone(),
                err,
            })?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(TRAMPOLINE).arg("hearth-vm");
        cmd.args(cgroup_procs).arg("--");
        if let Some(ns) = &self.netns {
            let mut opt = OsString::from("--net=");
            opt.push(ns);
            cmd.arg("nsenter").arg(opt).arg("--");
        }
        cmd.arg(&self.qemu)
            .args(self.args())
            .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::null())
            .stderr(Stdio::from(console))
            // VMs outlive a restart of hearth and are adopted afterwards.
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|err| VmError::Spawn {
            program: self.qemu.clone(),
            err,
        })?;
        let pid = child.id().ok_or_else(|| VmError::Spawn {
            program: self.qemu.clone(),
            err: std::io::Error::other("child exited before its pid was read"),
        })?;
        // Set at fork, unchanged by the execs that follow.
        let start_time = proc_start_time(pid).unwrap_or(0);
        Ok(VmProcess {
            pid,
            start_time,
            child: Some(child),
        })
    }
}

/// `sh -c` script: write our pid into each file argument up to `--`, then exec the
/// rest. Exit status 125 reports a failed cgroup join.
const TRAMPOLINE: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// A running (or exited) QEMU process.
#[derive(Debug)]
pub struct VmProcess {
    /// Host pid.
    pub pid: u32,
    /// Start time (clock ticks since boot, `/proc/<pid>/stat` field 22): with the pid
    /// it identifies the process across pid reuse.
    pub start_time: u64,
    /// The child handle when this process started it.
    child: Option<tokio::process::Child>,
}

impl VmProcess {
    /// A process found again after a restart (no child handle).
    pub fn adopted(pid: u32, start_time: u64) -> Self {
        Self {
            pid,
            start_time,
            child: None,
        }
    }

    /// Whether the process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        is_alive(self.pid, self.start_time)
    }

    /// Waits up to `timeout` for the process to end; reaps it when it is our child.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(child) = &mut self.child {
            return match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(_) => {
                    self.child = None;
                    true
                }
                Err(_) => false,
            };
        }
        while self.is_alive() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Sends SIGKILL if the process is still the one we started.
    pub fn kill(&self) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills the process and waits for it; errors only if it survives.
    pub async fn kill_and_wait(&mut self) -> Result<(), VmError> {
        self.kill();
        if self.wait_exit(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(VmError::Stuck { pid: self.pid })
        }
    }
}

/// Start time of `pid` from `/proc/<pid>/stat`, `None` if it does not exist.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let (state, start) = proc_stat(pid)?;
    let _ = state;
    Some(start)
}

fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the
    // last ')'. Field 3 is the state, field 22 the start time.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` runs and started at `start_time` (0 = do not check).
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((state, start)) => state != 'Z' && (start_time == 0 || start == start_time),
        None => false,
    }
}

/// The process's command line, NUL-separated arguments as strings.
pub fn proc_cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The host's TSC frequency in kHz when the kernel reports a constant, known TSC.
///
/// Under TCG the guest's TSC runs at the host's rate; telling the guest that rate
/// (`tsc_early_khz`) lets it boot without the PIT and PIC, which it would otherwise
/// need to calibrate (and without them it hangs).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_tsc_khz(&info)
}

fn parse_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let cpu0 = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        cpu0.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let flags = field("flags")?;
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    if !(has("constant_tsc") && has("tsc_known_freq")) {
        return None;
    }
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let khz = (mhz * 1000.0).round();
    (1.0..1e9).contains(&khz).then_some(khz as u64)
}

/// Everything needed to build a guest kernel command line.
#[derive(Debug, Clone)]
pub struct Cmdline<'a> {
    /// Accelerator (TCG adds clock hints).
    pub accel: Accel,
    /// Host TSC kHz under TCG, if known.
    pub tsc_khz: Option<u64>,
    /// Guest hostname.
    pub hostname: &'a str,
    /// Guest nameservers.
    pub nameservers: &'a [std::net::Ipv4Addr],
    /// Probe mode (accelerator check).
    pub probe: bool,
}

impl Cmdline<'_> {
    /// The command line string.
    pub fn render(&self) -> String {
        // quiet: the serial port is slow under TCG and the console log is the user's.
        // panic=-1 with -no-reboot: a dead guest ends QEMU at once.
        // mitigations=off: everything in a sandbox is one tenant (with sudo), and the
        // boundary that matters is the VM's; the mitigations cost a lot under TCG.
        // sysrq_always_enabled: SysRq arrives only from the host (serial socket) and
        // is how a filesystem-only pause syncs the guest.
        let mut s = String::from(
            "console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 mitigations=off \
             random.trust_cpu=on sysrq_always_enabled",
        );
        if self.accel == Accel::Tcg
            && let Some(khz) = self.tsc_khz
        {
            s.push_str(&format!(" tsc_early_khz={khz} tsc=reliable no_timer_check"));
        }
        if is_safe_token(self.hostname) {
            s.push_str(&format!(" hearth.hostname={}", self.hostname));
        }
        if !self.nameservers.is_empty() {
            let ns: Vec<String> = self.nameservers.iter().map(ToString::to_string).collect();
            s.push_str(&format!(" hearth.ns={}", ns.join(",")));
        }
        if self.probe {
            s.push_str(" hearth.probe=1");
        }
        s
    }
}

fn is_safe_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Reads the last `max` bytes of a log file (for error messages).
pub fn log_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// A bare QEMU boot of the guest kernel and initramfs, without Hearth's jail,
/// cgroups, QMP or disk: the serial console goes to `console`. Callers add the
/// machine, accelerator and shape. Used by the KVM probe and the benchmark's raw-boot
/// baseline.
pub(crate) fn bare_boot(
    qemu: &std::path::Path,
    guest: &crate::guest::GuestArtifacts,
    cmdline: &str,
    console: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&guest.kernel)
    .arg("-initrd")
    .arg(&guest.initramfs)
    .args(["-append", cmdline])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "hearth-x".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            tb_size_mb: 64,
            vcpus: 2,
            memory_mb: 512,
            memory: Memory::Anonymous,
            legacy_timers: false,
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "console=ttyS0".into(),
            disk: "/d.qcow2".into(),
            netns: None,
            tap: "tap0".into(),
            mac: "02:fc:00:00:00:01".into(),
            qmp: "/q.sock".into(),
            console_sock: "/c.sock".into(),
            console: "/c.log".into(),
            jail: Some(Jail {
                uid: 4000,
                gid: 4000,
                chroot: "/empty".into(),
            }),
            incoming: true,
            start_paused: false,
        }
    }

    #[test]
    fn args_describe_a_hardened_microvm() {
        let args: Vec<String> = spec()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        for needle in [
            "-M microvm,acpi=on",
            "-accel tcg,thread=multi,tb-size=64",
            "-nodefaults",
            "-sandbox on,obsolete=deny",
            "spawn=deny",
            "-runas 4000:4000",
            "-chroot /empty",
            "-incoming defer",
            "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:01",
            "memory-backend-ram,id=mem,size=512M",
        ] {
            assert!(joined.contains(needle), "missing {needle} in {joined}");
        }
        assert!(!args.contains(&"-S".to_owned()));
    }

    #[test]
    fn fingerprint_ignores_paths_but_not_the_machine() {
        let a = spec();
        let mut b = spec();
        b.disk = "/other.qcow2".into();
        b.tap = "tap9".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.memory_mb = 1024;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn tsc_is_read_only_when_known_and_constant() {
        let ok = "processor\t: 0\ncpu MHz\t\t: 2793.438\nflags\t\t: fpu tsc constant_tsc tsc_known_freq\n\nprocessor\t: 1\n";
        assert_eq!(parse_tsc_khz(ok), Some(2_793_438));
        let unknown = "cpu MHz\t\t: 2793.438\nflags\t\t: fpu tsc constant_tsc\n";
        assert_eq!(parse_tsc_khz(unknown), None);
    }

    #[test]
    fn cmdline_carries_clock_hints_only_under_tcg() {
        let ns = ["10.0.0.1".parse().unwrap()];
        let mut c = Cmdline {
            accel: Accel::Tcg,
            tsc_khz: Some(1000),
            hostname: "e2b.local",
            nameservers: &ns,
            probe: false,
        };
        let s = c.render();
        assert!(s.contains("tsc_early_khz=1000"));
        assert!(s.contains("hearth.hostname=e2b.local hearth.ns=10.0.0.1"));
        c.accel = Accel::Kvm;
        assert!(!c.render().contains("tsc_early_khz"));
        c.hostname = "bad name";
        assert!(!c.render().contains("hearth.hostname"));
    }

    #[test]
    fn own_process_is_alive_and_identified() {
        let pid = std::process::id();
        let start = proc_start_time(pid).unwrap();
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start + 1));
        assert!(!proc_cmdline(pid).is_empty());
    }
}
