// SPDX-License-Identifier: Apache-2.0
//! [`MicroVm`]: configuration, shared state and the [`Runtime`] implementation.

use crate::accel::{self, AccelChoice, AccelReport};
use crate::cgroup::CgroupError;
use crate::fsutil;
use crate::guest::{self, GuestArtifacts, GuestError};
use crate::image::{self, ImageError};
use crate::instance::{self, MicroVmInstance};
use crate::launch::{EnvdTarget, LaunchError, LaunchSpec, Start};
use crate::memfd::TemplateMemory;
use crate::netns::NetnsError;
use crate::progress::{NoProgress, Progress};
use crate::qmp::QmpError;
use crate::state::{self, InstanceState, PauseRecord, SavedKind, VmManifest};
use crate::vm::{Memory, VmError};
use async_trait::async_trait;
use hearth_runtime::{
    ENVD_PORT, Instance, MemoryPause, PauseMode, PausedState, Runtime, RuntimeError, RuntimeKind,
    SandboxSpec,
};
use hearth_types::SandboxId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the microVM runtime runs QEMU.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// Hearth's home; the runtime keeps its files in `<home>/microvm`.
    pub home: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
    /// Accelerator choice.
    pub accel: AccelChoice,
    /// QEMU runs as uid/gid `uid_base + slot index`.
    pub uid_base: u32,
    /// Whether to drop QEMU's privileges (`-runas`, `-chroot`); off only for debugging.
    pub jail: bool,
    /// Where the cgroup v1 controllers are mounted.
    pub cgroup_root: PathBuf,
    /// This hearth's instance name: parent cgroup of every VM's cgroup and prefix of
    /// every QEMU process name (`<instance>-<sandbox id>`), so instances sharing a
    /// host never touch each other's VMs.
    pub instance: String,
    /// TCG translation cache, MiB (counted in the memory limit).
    pub tb_size_mb: u32,
    /// How long a cold boot may take until envd answers.
    pub boot_timeout: Duration,
    /// How long a restore may take until envd answers.
    pub restore_timeout: Duration,
}

impl MicroVmConfig {
    /// Defaults for `home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            accel: AccelChoice::Auto,
            // High above login users and container id ranges (which start at
            // 65536 per sandbox); one uid per slot keeps VMs from signalling each other.
            uid_base: 0xF000_0000,
            jail: true,
            cgroup_root: "/sys/fs/cgroup".into(),
            instance: "hearth".into(),
            tb_size_mb: 128,
            boot_timeout: Duration::from_secs(120),
            restore_timeout: Duration::from_secs(30),
        }
    }
}

/// A microVM runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    /// The guest kernel or initramfs could not be built.
    #[error("failed to build the guest kernel and initramfs")]
    Guest(#[source] GuestError),
    /// A disk image step failed.
    #[error("failed to prepare the disk")]
    Image(#[source] ImageError),
    /// The VM did not start.
    #[error("failed to start the VM")]
    Launch(#[source] LaunchError),
    /// A QMP step on a running VM failed.
    #[error("failed to {step}")]
    Qmp {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        err: QmpError,
    },
    /// A file operation failed.
    #[error("failed to {what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// QEMU could not be run at all.
    #[error("cannot run {qemu}")]
    Qemu {
        /// The binary.
        qemu: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Saved state exists but cannot be used.
    #[error("the saved VM in {dir} is unusable: {reason}")]
    BadState {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The template's private network failed.
    #[error("failed to set up the template network")]
    Netns(#[source] NetnsError),
    /// cgroups could not be removed.
    #[error("the baseline QEMU boot did not reach userspace (see {log})")]
    BaselineBoot {
        /// Its serial console.
        log: PathBuf,
    },
    #[error("failed to remove the VM's cgroups")]
    Cgroup(#[source] CgroupError),
    /// QEMU could not be stopped.
    #[error("failed to stop QEMU")]
    Vm(#[source] VmError),
    /// The network slot has no tap (it was made for containers).
    #[error("network slot {index} has no tap: it is not a microVM slot")]
    BadSlot {
        /// The slot.
        index: u32,
    },
    /// A blocking helper task died.
    #[error("a blocking task failed")]
    Task(#[source] tokio::task::JoinError),
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MicroVmError + 'a {
    move |err| MicroVmError::Io {
        what,
        path: path.to_owned(),
        err,
    }
}

/// State shared by the runtime and its instances.
#[derive(Debug)]
pub struct Inner {
    pub(crate) config: MicroVmConfig,
    /// `<home>/microvm`.
    pub(crate) root: PathBuf,
    /// Host TSC frequency (TCG clock hint), if known.
    pub(crate) tsc_khz: Option<u64>,
    guest: tokio::sync::OnceCell<GuestArtifacts>,
    accel: tokio::sync::OnceCell<AccelReport>,
    qemu_version: tokio::sync::OnceCell<String>,
    templates: Mutex<HashMap<PathBuf, Arc<TemplateMemory>>>,
}

/// The microVM runtime. Cheap to clone; clones share caches.
#[derive(Debug, Clone)]
pub struct MicroVm {
    pub(crate) inner: Arc<Inner>,
}

impl MicroVm {
    /// A runtime keeping its files under `<config.home>/microvm`. Nothing slow happens
    /// here: artifacts are built and the accelerator probed on first need.
    pub fn new(config: MicroVmConfig) -> Result<Self, MicroVmError> {
        let root = config.home.join("microvm");
        let empty = root.join("empty");
        for dir in [&root, &root.join("tmp"), &empty] {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        fsutil::remove_stale_temps(&root.join("tmp"));
        // QEMU is chrooted here after dropping root: it must stay empty and unwritable.
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o555))
            .map_err(io_err("protect", &empty))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                root,
                tsc_khz: crate::vm::host_tsc_khz(),
                guest: tokio::sync::OnceCell::new(),
                accel: tokio::sync::OnceCell::new(),
                qemu_version: tokio::sync::OnceCell::new(),
                templates: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &MicroVmConfig {
        &self.inner.config
    }

    /// The guest kernel and initramfs, built on first call (minutes at most).
    pub async fn guest(&self, progress: &dyn Progress) -> Result<GuestArtifacts, MicroVmError> {
        self.inner.guest(progress).await
    }

    /// Which accelerator VMs use and why (`hearth doctor`). May build the guest
    /// artifacts and run a short KVM test boot the first time on a host.
    pub async fn doctor(&self, progress: &dyn Progress) -> Result<AccelReport, MicroVmError> {
        self.inner.guest(progress).await?;
        self.inner.accel().await
    }

    /// Drops the cached RAM of a template that is being deleted. Running sandboxes
    /// keep their own mappings; paused sandboxes and snapshots made from the template
    /// still need its files (their memory is stored as a difference to it).
    pub fn forget(&self, artifacts: &hearth_runtime::Artifacts) {
        if let Some(dir) = &artifacts.vm_state
            && let Ok(m) = VmManifest::read(dir)
            && let Some(mem) = &m.memory_file
        {
            self.inner
                .templates
                .lock()
                .expect("template cache lock is never poisoned")
                .remove(&dir.join(mem));
        }
    }

    /// Loads a template's RAM so the first sandbox from it starts as fast as the rest.
    pub async fn warm(&self, artifacts: &hearth_runtime::Artifacts) -> Result<(), MicroVmError> {
        if let Some(dir) = &artifacts.vm_state {
            let m = VmManifest::read(dir).map_err(io_err("read", dir))?;
            if let Some(mem) = &m.memory_file {
                self.inner.template_memory(&dir.join(mem)).await?;
            }
        }
        Ok(())
    }
}

impl MicroVm {
    /// [`Runtime::create`] with the concrete instance (its timings, pid, console).
    pub async fn create_vm(&self, spec: &SandboxSpec) -> Result<MicroVmInstance, RuntimeError> {
        let inner = &self.inner;
        let backing = spec.artifacts.disk_image.clone().ok_or_else(|| {
            RuntimeError::create(
                &spec.id,
                format!("template {} has no microVM disk image", spec.template_id),
            )
        })?;
        std::fs::create_dir_all(&spec.state_dir)
            .map_err(io_err("create", &spec.state_dir))
            .map_err(create_err(spec))?;
        let plan = match &spec.artifacts.vm_state {
            Some(dir) => inner
                .restore_plan(dir, spec.resources.memory_mb, spec.resources.cpu_count)
                .await
                .map_err(create_err(spec))?,
            None => None,
        };
        let disk = spec.state_dir.join(state::DISK);
        let qemu_img = inner.config.qemu_img.clone();
        let d = disk.clone();
        tokio::task::spawn_blocking(move || image::create_overlay(&qemu_img, &backing, &d))
            .await
            .map_err(|e| RuntimeError::create(&spec.id, MicroVmError::Task(e)))?
            .map_err(|e| RuntimeError::create(&spec.id, MicroVmError::Image(e)))?;
        match inner.start_sandbox(spec, disk.clone(), plan).await {
            Ok(i) => Ok(i),
            Err(e) => {
                let _ = fsutil::remove_file_if_exists(&disk);
                Err(RuntimeError::create(&spec.id, e))
            }
        }
    }
}

impl Inner {
    pub(crate) async fn guest(
        &self,
        progress: &dyn Progress,
    ) -> Result<GuestArtifacts, MicroVmError> {
        self.guest
            .get_or_try_init(|| async {
                let root = self.root.clone();
                // The build runs on a blocking thread that cannot borrow `progress`;
                // report the phase here and let it log through `tracing`.
                progress.phase("preparing the microVM guest kernel and initramfs");
                tokio::task::spawn_blocking(move || {
                    guest::ensure(&root, &crate::progress::LogProgress)
                })
                .await
                .map_err(MicroVmError::Task)?
                .map_err(MicroVmError::Guest)
            })
            .await
            .cloned()
    }

    pub(crate) async fn qemu_version(&self) -> Result<String, MicroVmError> {
        self.qemu_version
            .get_or_try_init(|| async {
                let out = tokio::process::Command::new(&self.config.qemu)
                    .arg("--version")
                    .output()
                    .await
                    .map_err(|err| MicroVmError::Qemu {
                        qemu: self.config.qemu.clone(),
                        err,
                    })?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("unknown")
                    .trim()
                    .to_owned())
            })
            .await
            .cloned()
    }

    pub(crate) async fn accel(&self) -> Result<AccelReport, MicroVmError> {
        let guest = self.guest(&NoProgress).await?;
        let version = self.qemu_version().await?;
        self.accel
            .get_or_try_init(|| async {
                let r = accel::select(
                    self.config.accel,
                    &self.root,
                    &self.config.qemu,
                    &version,
                    &guest,
                )
                .await;
                tracing::info!(accel = r.accel.as_str(), reason = %r.reason, "microVM accelerator");
                Ok::<_, MicroVmError>(r)
            })
            .await
            .cloned()
    }

    pub(crate) async fn template_memory(
        &self,
        path: &Path,
    ) -> Result<Arc<TemplateMemory>, MicroVmError> {
        if let Some(m) = self
            .templates
            .lock()
            .expect("template cache lock is never poisoned")
            .get(path)
        {
            return Ok(m.clone());
        }
        let p = path.to_owned();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut m = TemplateMemory::load(&p)?;
            m.id = template_memory_id(&p)?;
            Ok::<_, std::io::Error>(m)
        })
        .await
        .map_err(MicroVmError::Task)?
        .map_err(io_err("load template memory", path))?;
        tracing::info!(path = %path.display(), resident_mb = loaded.resident >> 20, "template memory loaded");
        let loaded = Arc::new(loaded);
        Ok(self
            .templates
            .lock()
            .expect("template cache lock is never poisoned")
            .entry(path.to_owned())
            .or_insert(loaded)
            .clone())
    }

    /// Why a saved VM cannot be restored here, or `None` if it can.
    pub(crate) async fn incompatibility(
        &self,
        m: &VmManifest,
        memory_mb: u32,
        vcpus: u32,
    ) -> Result<Option<String>, MicroVmError> {
        let accel = self.accel().await?.accel;
        let version = self.qemu_version().await?;
        let mut machine = self.machine_for(m.memory_mb, m.vcpus, m.accel, &m.guest, &version);
        machine.legacy_timers = m.legacy_timers;
        let reason = if m.format != state::FORMAT {
            format!("manifest format {} (expected {})", m.format, state::FORMAT)
        } else if m.memory_mb != memory_mb || m.vcpus != vcpus.max(1) {
            format!(
                "saved with {} MiB / {} vCPUs, asked for {} MiB / {} vCPUs",
                m.memory_mb, m.vcpus, memory_mb, vcpus
            )
        } else if m.accel != accel {
            format!(
                "saved under {}, this host uses {}",
                m.accel.as_str(),
                accel.as_str()
            )
        } else if m.qemu_version != version {
            format!("saved by {}, this host runs {version}", m.qemu_version)
        } else if m.fingerprint != self.fingerprint(&machine) {
            "machine configuration changed".to_owned()
        } else if !m.guest.kernel.is_file() || !m.guest.initramfs.is_file() {
            "its kernel or initramfs is gone".to_owned()
        } else {
            return Ok(None);
        };
        Ok(Some(reason))
    }

    /// How to start a VM from `vm_dir` (a saved VM), or `None` to cold-boot.
    pub(crate) async fn restore_plan(
        &self,
        vm_dir: &Path,
        memory_mb: u32,
        vcpus: u32,
    ) -> Result<Option<(VmManifest, Start)>, MicroVmError> {
        let m = VmManifest::read(vm_dir).map_err(io_err("read", vm_dir))?;
        if let Some(reason) = self.incompatibility(&m, memory_mb, vcpus).await? {
            tracing::info!(dir = %vm_dir.display(), %reason, "cannot restore saved VM; cold-booting");
            return Ok(None);
        }
        let state_file = vm_dir.join(&m.state_file);
        let start = match (m.kind, &m.memory_file) {
            (SavedKind::Template, Some(mem)) => {
                let path = vm_dir.join(mem);
                let tm = self.template_memory(&path).await?;
                Start::Restore {
                    state_file,
                    memory: Memory::PrivateFile(tm.qemu_path()),
                    ignore_shared: true,
                    base_memory: Some(path),
                }
            }
            (SavedKind::Template, None) => {
                return Err(MicroVmError::BadState {
                    dir: vm_dir.to_owned(),
                    reason: "template state without a memory file".into(),
                });
            }
            (SavedKind::Full, _) => match &m.base_memory {
                Some(base) => {
                    let tm = self.template_memory(base).await?;
                    if m.base_id.as_deref() != Some(tm.id.as_str()) {
                        return Err(MicroVmError::BadState {
                            dir: vm_dir.to_owned(),
                            reason: format!(
                                "its base memory {} belongs to another template build",
                                base.display()
                            ),
                        });
                    }
                    Start::Restore {
                        state_file,
                        memory: Memory::PrivateFile(tm.qemu_path()),
                        ignore_shared: false,
                        base_memory: Some(base.clone()),
                    }
                }
                None => Start::Restore {
                    state_file,
                    memory: Memory::Anonymous,
                    ignore_shared: false,
                    base_memory: None,
                },
            },
        };
        Ok(Some((m, start)))
    }

    /// Starts a sandbox VM on `disk` (already created) and wraps it as an instance.
    pub(crate) async fn start_sandbox(
        self: &Arc<Self>,
        spec: &SandboxSpec,
        disk: PathBuf,
        plan: Option<(VmManifest, Start)>,
    ) -> Result<MicroVmInstance, MicroVmError> {
        let version = self.qemu_version().await?;
        let (machine, start, timeout) = match plan {
            Some((m, start)) => {
                let mut machine =
                    self.machine_for(m.memory_mb, m.vcpus, m.accel, &m.guest, &version);
                machine.legacy_timers = m.legacy_timers;
                machine.fingerprint = m.fingerprint.clone();
                (machine, start, self.config.restore_timeout)
            }
            None => {
                let guest = self.guest(&NoProgress).await?;
                let accel = self.accel().await?.accel;
                let machine = self.machine_for(
                    spec.resources.memory_mb,
                    spec.resources.cpu_count,
                    accel,
                    &guest,
                    &version,
                );
                (
                    machine,
                    Start::Boot {
                        memory: Memory::Anonymous,
                    },
                    self.config.boot_timeout,
                )
            }
        };
        let envd = SocketAddr::from((spec.slot.host_addr, ENVD_PORT));
        let tap = spec.slot.tap.as_deref().ok_or(MicroVmError::BadSlot {
            index: spec.slot.index,
        })?;
        let launched = self
            .launch(LaunchSpec {
                name: spec.id.as_str(),
                state_dir: &spec.state_dir,
                disk,
                netns: Some(spec.slot.router_netns.clone()),
                tap,
                mac: &spec.slot.mac,
                ordinal: spec.ordinal,
                machine,
                start,
                hostname: &spec.hostname,
                nameservers: &spec.slot.nameservers,
                envd: EnvdTarget::Host(envd),
                timeout,
            })
            .await
            .map_err(MicroVmError::Launch)?;
        Ok(MicroVmInstance::new(
            spec.id.clone(),
            self.clone(),
            envd,
            spec.resources,
            spec.state_dir.clone(),
            launched,
        ))
    }
}

/// Identity of a template boot: a hash of its device state, which differs for every
/// boot (timestamps, RNG state) and lives next to its RAM image.
fn template_memory_id(memory: &Path) -> std::io::Result<String> {
    let dir = memory.parent().unwrap_or(Path::new("."));
    let m = VmManifest::read(dir)?;
    Ok(fsutil::sha256_file(&dir.join(m.state_file))?[..16].to_owned())
}

fn create_err(spec: &SandboxSpec) -> impl FnOnce(MicroVmError) -> RuntimeError + '_ {
    move |e| RuntimeError::create(&spec.id, e)
}

#[async_trait]
impl Runtime for MicroVm {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Microvm
    }

    fn memory_pause(&self) -> MemoryPause {
        MemoryPause::Snapshot
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        Ok(Box::new(self.create_vm(spec).await?))
    }

    async fn adopt(
        &self,
        spec: &SandboxSpec,
        state: &serde_json::Value,
    ) -> Result<Option<Box<dyn Instance>>, RuntimeError> {
        let Ok(st) = serde_json::from_value::<InstanceState>(state.clone()) else {
            return Ok(None);
        };
        instance::adopt(&self.inner, spec, st)
            .await
            .map(|o| o.map(|i| Box::new(i) as Box<dyn Instance>))
            .map_err(|e| RuntimeError::op(&spec.id, "adopt", e))
    }

    async fn cleanup(
        &self,
        spec: &SandboxSpec,
        state: Option<&serde_json::Value>,
    ) -> Result<(), RuntimeError> {
        let st = state.and_then(|s| serde_json::from_value::<InstanceState>(s.clone()).ok());
        instance::cleanup(&self.inner, spec, st)
            .await
            .map_err(|e| RuntimeError::op(&spec.id, "cleanup", e))
    }

    async fn resume(
        &self,
        spec: &SandboxSpec,
        paused: &PausedState,
    ) -> Result<Box<dyn Instance>, RuntimeError> {
        let record: PauseRecord = serde_json::from_value(paused.data.clone()).map_err(|e| {
            RuntimeError::op(&spec.id, "resume", format!("unreadable pause state: {e}"))
        })?;
        // A memory pause may be resumed by a cold boot over its disk (the node asks
        // for that with a filesystem mode: `on_resume: reboot`); a filesystem pause
        // has no memory to restore.
        let restore_memory = paused.mode == PauseMode::Full;
        if restore_memory && !record.memory {
            return Err(RuntimeError::op(
                &spec.id,
                "resume",
                "the pause kept no memory to restore",
            ));
        }
        instance::resume(&self.inner, spec, record, restore_memory)
            .await
            .map(|i| Box::new(i) as Box<dyn Instance>)
            .map_err(|e| RuntimeError::op(&spec.id, "resume", e))
    }

    fn recovered_pause(&self, spec: &SandboxSpec) -> Option<PausedState> {
        instance::recovered_pause(&self.inner, spec)
    }

    async fn reclaim(&self, live: &[SandboxId]) -> Result<(), RuntimeError> {
        instance::reclaim(&self.inner, live)
            .await
            .map_err(|e| RuntimeError::Unavailable {
                runtime: RuntimeKind::Microvm,
                reason: hearth_types::ErrorChain(&e).to_string(),
            })
    }
}
