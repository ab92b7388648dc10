// SPDX-License-Identifier: Apache-2.0
//! Starting one VM until envd answers: cold boot, template restore or full restore.
//!
//! Sequence: cgroups → QEMU (vCPUs stopped: `-S`, or `-incoming defer`) → join the
//! cgroups → QMP → feed the migration stream (restores) → `cont` → envd `/health`.
//! The guest runs no instruction before it is inside its cgroups. Any failure kills
//! QEMU and removes the cgroups and sockets; the disk belongs to the caller.

use crate::accel::Accel;
use crate::cgroup::{CgroupError, Limits, VmCgroup};
use crate::netns::{self, NetnsError};
use crate::qmp::{Qmp, QmpError};
use crate::state::{InstanceState, MachineInfo};
use crate::vm::{Cmdline, Jail, Memory, VmError, VmProcess, VmSpec, log_tail};
use crate::{Inner, fsutil};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QEMU's own memory on top of guest RAM (device emulation, block cache, heap),
/// besides the TCG translation cache.
const QEMU_OVERHEAD_MB: u64 = 192;

/// Starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The cgroups could not be set up.
    #[error("failed to set up the VM's cgroups")]
    Cgroup(#[source] CgroupError),
    /// QEMU could not be started.
    #[error("failed to start QEMU")]
    Spawn(#[source] VmError),
    /// A QMP step failed.
    #[error("failed to {step} (console: {console})")]
    Qmp {
        /// The step.
        step: &'static str,
        /// The end of the console log.
        console: String,
        /// The cause.
        #[source]
        err: QmpError,
    },
    /// envd did not answer in time.
    #[error("envd did not answer within {waited_ms} ms (console: {console})")]
    EnvdNotReady {
        /// How long we waited.
        waited_ms: u64,
        /// The end of the console log.
        console: String,
    },
    /// QEMU exited while starting.
    #[error("QEMU exited while starting (console: {console})")]
    Exited {
        /// The end of the console log.
        console: String,
    },
    /// The migration stream could not be opened.
    #[error("failed to open saved VM state {path}")]
    OpenState {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Probing envd inside the namespace failed.
    #[error("failed to reach envd inside the template network")]
    Netns(#[source] NetnsError),
}

/// How the guest starts.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// Boot the kernel.
    Boot {
        /// RAM backing.
        memory: Memory,
    },
    /// Load a migration stream.
    Restore {
        /// The stream.
        state_file: PathBuf,
        /// RAM backing.
        memory: Memory,
        /// Whether the stream skipped shared RAM (template restores).
        ignore_shared: bool,
        /// The template RAM image underneath (`memory` maps it), if any.
        base_memory: Option<PathBuf>,
    },
}

/// Where to check that envd answers.
#[derive(Debug, Clone)]
pub(crate) enum EnvdTarget {
    /// From the host, at the slot's address.
    Host(SocketAddr),
    /// From inside a network namespace, at the guest's own address.
    InNetns(PathBuf),
}

/// One launch.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec<'a> {
    /// Names the process (`hearth-<name>`) and its cgroups.
    pub name: &'a str,
    /// Directory for sockets and the console log.
    pub state_dir: &'a Path,
    /// The disk overlay.
    pub disk: PathBuf,
    /// Network namespace holding the tap.
    pub netns: Option<PathBuf>,
    /// The tap.
    pub tap: &'a str,
    /// Guest MAC.
    pub mac: &'a str,
    /// The sandbox's ordinal (selects QEMU's uid; stable across pauses).
    pub ordinal: u32,
    /// The machine.
    pub machine: MachineInfo,
    /// How it starts.
    pub start: Start,
    /// Guest hostname (cold boots).
    pub hostname: &'a str,
    /// Guest nameservers (cold boots).
    pub nameservers: &'a [Ipv4Addr],
    /// Where envd is checked.
    pub envd: EnvdTarget,
    /// How long until envd must answer.
    pub timeout: Duration,
}

/// How long each step of a launch took.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LaunchTimings {
    /// Until QMP answered (QEMU started).
    pub qmp_ms: f64,
    /// Until the migration stream was loaded (restores).
    pub restore_ms: f64,
    /// Until the vCPUs ran.
    pub running_ms: f64,
    /// Until envd answered `/health`: the whole launch.
    pub ready_ms: f64,
}

/// A launched VM.
#[derive(Debug)]
pub(crate) struct Launched {
    pub process: VmProcess,
    pub qmp: Qmp,
    pub cgroup: VmCgroup,
    pub state: InstanceState,
    pub timings: LaunchTimings,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Socket and log paths inside a state directory.
pub(crate) fn qmp_path(state_dir: &Path) -> PathBuf {
    state_dir.join("qmp.sock")
}
/// The serial console socket.
pub(crate) fn console_sock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("console.sock")
}
/// The sandbox log: serial console and QEMU's messages.
pub(crate) fn console_log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("console.log")
}

impl Inner {
    pub(crate) fn cgroup(&self, name: &str) -> VmCgroup {
        VmCgroup::new(&self.config.cgroup_root, &self.config.instance, name)
    }

    /// QEMU's `-name` for VM `name`.
    pub(crate) fn process_name(&self, name: &str) -> String {
        format!("{}-{name}", self.config.instance)
    }

    pub(crate) fn vm_spec(&self, l: &LaunchSpec<'_>) -> VmSpec {
        let m = &l.machine;
        let (memory, incoming) = match &l.start {
            Start::Boot { memory } => (memory.clone(), false),
            Start::Restore { memory, .. } => (memory.clone(), true),
        };
        let cmdline = Cmdline {
            accel: m.accel,
            tsc_khz: self.tsc_khz,
            hostname: l.hostname,
            nameservers: l.nameservers,
            probe: false,
        }
        .render();
        VmSpec {
            name: self.process_name(l.name),
            qemu: self.config.qemu.clone(),
            accel: m.accel,
            tb_size_mb: self.config.tb_size_mb,
            vcpus: m.vcpus,
            memory_mb: m.memory_mb,
            memory,
            legacy_timers: m.legacy_timers,
            kernel: m.guest.kernel.clone(),
            initramfs: m.guest.initramfs.clone(),
            cmdline,
            disk: l.disk.clone(),
            netns: l.netns.clone(),
            tap: l.tap.to_owned(),
            mac: l.mac.to_owned(),
            qmp: qmp_path(l.state_dir),
            console_sock: console_sock_path(l.state_dir),
            console: console_log_path(l.state_dir),
            jail: self.config.jail.then(|| Jail {
                uid: self.config.uid_base.saturating_add(l.ordinal),
                gid: self.config.uid_base.saturating_add(l.ordinal),
                chroot: self.root.join("empty"),
            }),
            incoming,
            start_paused: !incoming,
        }
    }

    /// The machine a new VM of `resources` gets on this host.
    pub(crate) fn machine_for(
        &self,
        memory_mb: u32,
        vcpus: u32,
        accel: Accel,
        guest: &crate::guest::GuestArtifacts,
        qemu_version: &str,
    ) -> MachineInfo {
        let legacy_timers = accel == Accel::Tcg && self.tsc_khz.is_none();
        let mut m = MachineInfo {
            memory_mb,
            vcpus: vcpus.max(1),
            accel,
            legacy_timers,
            fingerprint: String::new(),
            qemu_version: qemu_version.to_owned(),
            guest: guest.clone(),
        };
        m.fingerprint = self.fingerprint(&m);
        m
    }

    pub(crate) fn fingerprint(&self, m: &MachineInfo) -> String {
        let spec = VmSpec {
            name: String::new(),
            qemu: PathBuf::new(),
            accel: m.accel,
            tb_size_mb: 0,
            vcpus: m.vcpus,
            memory_mb: m.memory_mb,
            memory: Memory::Anonymous,
            legacy_timers: m.legacy_timers,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            cmdline: String::new(),
            disk: PathBuf::new(),
            netns: None,
            tap: String::new(),
            mac: String::new(),
            qmp: PathBuf::new(),
            console_sock: PathBuf::new(),
            console: PathBuf::new(),
            jail: None,
            incoming: false,
            start_paused: false,
        };
        spec.fingerprint()
    }

    /// Starts a VM and waits for envd.
    pub(crate) async fn launch(&self, l: LaunchSpec<'_>) -> Result<Launched, LaunchError> {
        let t0 = Instant::now();
        let spec = self.vm_spec(&l);
        for stale in [&spec.qmp, &spec.console_sock] {
            let _ = fsutil::remove_file_if_exists(stale);
        }
        let cgroup = self.cgroup(l.name);
        // Guest RAM counts twice: restored VMs map the template's RAM copy-on-write
        // from a shared memfd, and a guest reading a page the template never touched
        // allocates it (zeroed) in that memfd — charged to the first VM to touch it,
        // although every clone shares it afterwards — before its own write copies it.
        // A busy guest (a big write filling its page cache) reaches both; with the
        // limit at RAM + overhead the cgroup OOM-killed QEMU itself. The guest still
        // sees only its RAM; the host's real cost per VM stays RAM + its share.
        let limits = Limits {
            memory_bytes: (2 * u64::from(l.machine.memory_mb)
                + u64::from(self.config.tb_size_mb)
                + QEMU_OVERHEAD_MB)
                << 20,
            cpus: l.machine.vcpus,
            pids: 128,
        };
        if let Err(err) = cgroup.create(limits) {
            let _ = cgroup.remove(Duration::from_secs(1)).await;
            return Err(LaunchError::Cgroup(err));
        }
        let stdin = match &l.start {
            Start::Restore { state_file, .. } => match File::open(state_file) {
                Ok(f) => Some(f),
                Err(err) => {
                    let _ = cgroup.remove(Duration::from_secs(1)).await;
                    return Err(LaunchError::OpenState {
                        path: state_file.clone(),
                        err,
                    });
                }
            },
            Start::Boot { .. } => None,
        };
        let mut process = match spec.spawn(stdin, &cgroup.procs_files()) {
            Ok(p) => p,
            Err(err) => {
                let _ = cgroup.remove(Duration::from_secs(1)).await;
                return Err(LaunchError::Spawn(err));
            }
        };
        let result = self.bring_up(&l, &spec, &mut process, t0).await;
        match result {
            Ok((qmp, timings)) => {
                let state = InstanceState {
                    pid: process.pid,
                    start_time: process.start_time,
                    qmp: spec.qmp.clone(),
                    console_sock: spec.console_sock.clone(),
                    disk: l.disk.clone(),
                    machine: l.machine.clone(),
                    base_memory: match &l.start {
                        Start::Restore { base_memory, .. } => base_memory.clone(),
                        Start::Boot { .. } => None,
                    },
                };
                tracing::debug!(vm = l.name, ?timings, "VM ready");
                Ok(Launched {
                    process,
                    qmp,
                    cgroup,
                    state,
                    timings,
                })
            }
            Err(err) => {
                if let Err(e) = process.kill_and_wait().await {
                    tracing::error!(vm = l.name, error = %e, "cannot stop failed VM");
                }
                if let Err(e) = cgroup.remove(Duration::from_secs(2)).await {
                    tracing::error!(vm = l.name, error = %e, "cannot remove failed VM's cgroups");
                }
                for path in [&spec.qmp, &spec.console_sock] {
                    let _ = fsutil::remove_file_if_exists(path);
                }
                Err(err)
            }
        }
    }

    async fn bring_up(
        &self,
        l: &LaunchSpec<'_>,
        spec: &VmSpec,
        process: &mut VmProcess,
        t0: Instant,
    ) -> Result<(Qmp, LaunchTimings), LaunchError> {
        let console = || log_tail(&spec.console, 2000);
        let mut timings = LaunchTimings::default();
        let pid = process.pid;
        let start = process.start_time;
        let mut qmp = Qmp::connect_retry(&spec.qmp, l.timeout, || crate::vm::is_alive(pid, start))
            .await
            .map_err(|err| match err {
                QmpError::Closed => LaunchError::Exited { console: console() },
                err => LaunchError::Qmp {
                    step: "connect to QMP",
                    console: console(),
                    err,
                },
            })?;
        timings.qmp_ms = ms(t0.elapsed());
        let qerr = |step: &'static str| {
            move |err| LaunchError::Qmp {
                step,
                console: log_tail(&spec.console, 2000),
                err,
            }
        };
        if let Start::Restore { ignore_shared, .. } = &l.start {
            qmp.set_capabilities(&[("x-ignore-shared", *ignore_shared)])
                .await
                .map_err(qerr("set migration capabilities"))?;
            // The stream is QEMU's stdin.
            qmp.execute("migrate-incoming", Some(serde_json::json!({"uri": "fd:0"})))
                .await
                .map_err(qerr("start loading the saved VM"))?;
            qmp.wait_migration(l.timeout)
                .await
                .map_err(qerr("load the saved VM"))?;
            timings.restore_ms = ms(t0.elapsed());
        }
        qmp.execute("cont", None)
            .await
            .map_err(qerr("start the vCPUs"))?;
        timings.running_ms = ms(t0.elapsed());
        let remaining = l.timeout.saturating_sub(t0.elapsed());
        let ready = match &l.envd {
            EnvdTarget::Host(addr) => {
                let id = hearth_types::SandboxId::parse(l.name)
                    .unwrap_or_else(|_| hearth_types::SandboxId::generate());
                wait_envd_or_exit(&id, *addr, remaining, process).await
            }
            EnvdTarget::InNetns(ns) => {
                let addr = SocketAddr::from((
                    crate::initramfs::GUEST_ADDR
                        .parse::<Ipv4Addr>()
                        .expect("constant address parses"),
                    hearth_runtime::ENVD_PORT,
                ));
                netns::wait_envd_in(ns, addr, remaining)
                    .await
                    .map_err(LaunchError::Netns)
                    .map(|()| true)
            }
        };
        match ready {
            Ok(true) => {}
            Ok(false) => return Err(LaunchError::Exited { console: console() }),
            Err(
                LaunchError::EnvdNotReady { waited_ms, .. }
                | LaunchError::Netns(NetnsError::NotReady { waited_ms, .. }),
            ) => {
                return Err(LaunchError::EnvdNotReady {
                    waited_ms,
                    console: console(),
                });
            }
            Err(e) => return Err(e),
        }
        timings.ready_ms = ms(t0.elapsed());
        Ok((qmp, timings))
    }
}

/// Waits for envd; returns `Ok(false)` as soon as QEMU exits (a failed boot ends QEMU
/// thanks to `-no-reboot`), instead of waiting out the timeout.
async fn wait_envd_or_exit(
    id: &hearth_types::SandboxId,
    addr: SocketAddr,
    timeout: Duration,
    process: &mut VmProcess,
) -> Result<bool, LaunchError> {
    let start = Instant::now();
    let wait = hearth_runtime::wait_for_envd(id, addr, timeout);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            r = &mut wait => {
                return match r {
                    Ok(()) => Ok(true),
                    Err(_) => Err(LaunchError::EnvdNotReady {
                        waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                        console: String::new(),
                    }),
                };
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if !process.is_alive() {
                    return Ok(false);
                }
            }
        }
    }
}
