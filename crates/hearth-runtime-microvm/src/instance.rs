// SPDX-License-Identifier: Apache-2.0
//! One running microVM sandbox, and pausing, resuming, adopting and cleaning up.
//!
//! Pause is crash-safe by ordering, with a marker (`pause.intent` in the state
//! directory) written first:
//! 1. memory pause: stop the vCPUs, stream memory + devices into `vm.state` under a
//!    temporary name, fsync, rename; filesystem pause: sync the guest's filesystems
//!    (SysRq `s` over the serial console), stop the vCPUs;
//! 2. quit QEMU (it flushes and closes the disk);
//! 3. fsync the overlay and move it into the pause directory;
//! 4. write `paused.json` (atomically) — from here on the pause is complete;
//! 5. remove cgroups and sockets. The marker stays until resume or kill.
//!
//! A failure before step 2 resumes the VM (it keeps running). After a crash, adopt
//! finds QEMU either still running or stopped short of a saved state (it deletes the
//! partial state and keeps the VM running), or stopped with its state saved (it ends
//! QEMU and reports the sandbox gone). A filesystem pause always goes forward once
//! its marker exists (the guest may already be read-only): adopt syncs the guest
//! again, ends QEMU and reports the sandbox gone; `recovered_pause` then completes steps 3–5
//! from the marker, so the node records the pause instead of discarding the sandbox.

use crate::cgroup::VmCgroup;
use crate::fsutil;
use crate::image;
use crate::launch::{self, LaunchTimings, Launched};
use crate::memdiff;
use crate::qmp::{Qmp, QmpError};
use crate::runtime::{Inner, MicroVmError, io_err};
use crate::state::{self, InstanceState, PauseIntent, PauseRecord, SavedKind, VmManifest};
use crate::vm::{self, VmProcess};
use async_trait::async_trait;
use hearth_runtime::{
    Artifacts, Instance, PauseMode, PausedState, Resources, RuntimeError, SandboxSpec, Snapshot,
    Stats,
};
use hearth_types::SandboxId;
use serde_json::json;
use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Printed by the guest kernel when an emergency sync finished.
const SYNC_DONE: &str = "Emergency Sync complete";
/// Printed by the guest kernel when an emergency read-only remount finished.
const REMOUNT_DONE: &str = "Emergency Remount complete";

/// A running microVM.
#[derive(Debug)]
pub struct MicroVmInstance {
    id: SandboxId,
    inner: Arc<Inner>,
    envd: SocketAddr,
    state: InstanceState,
    resources: Resources,
    state_dir: PathBuf,
    process: Mutex<VmProcess>,
    qmp: Mutex<Option<Qmp>>,
    cgroup: VmCgroup,
    timings: LaunchTimings,
    gone: bool,
}

impl MicroVmInstance {
    pub(crate) fn new(
        id: SandboxId,
        inner: Arc<Inner>,
        envd: SocketAddr,
        resources: Resources,
        state_dir: PathBuf,
        launched: Launched,
    ) -> Self {
        Self {
            id,
            inner,
            envd,
            state: launched.state,
            resources,
            state_dir,
            process: Mutex::new(launched.process),
            qmp: Mutex::new(Some(launched.qmp)),
            cgroup: launched.cgroup,
            timings: launched.timings,
            gone: false,
        }
    }

    /// How long the start took, step by step (zero for adopted instances).
    pub fn timings(&self) -> LaunchTimings {
        self.timings
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// The sandbox log (serial console and QEMU's messages).
    pub fn console_log(&self) -> PathBuf {
        launch::console_log_path(&self.state_dir)
    }

    /// The disk overlay.
    pub fn disk(&self) -> &Path {
        &self.state.disk
    }

    /// The cgroups QEMU runs in.
    pub fn cgroup(&self) -> &VmCgroup {
        &self.cgroup
    }

    async fn qmp_step(&self, step: &'static str, cmd: &str) -> Result<(), MicroVmError> {
        let mut guard = self.qmp.lock().await;
        let q = guard.as_mut().ok_or(MicroVmError::Qmp {
            step,
            err: QmpError::Closed,
        })?;
        q.execute(cmd, None)
            .await
            .map(drop)
            .map_err(|err| MicroVmError::Qmp { step, err })
    }

    /// Ends QEMU: `quit` over QMP, then SIGKILL if it lingers.
    async fn stop_process(&self) -> Result<(), MicroVmError> {
        let mut process = self.process.lock().await;
        if process.is_alive() {
            if let Some(q) = self.qmp.lock().await.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(2), q.quit()).await;
            }
            if !process.wait_exit(Duration::from_secs(5)).await {
                tracing::warn!(sandbox_id = %self.id, "QEMU ignored quit; killing it");
                process.kill_and_wait().await.map_err(MicroVmError::Vm)?;
            }
        } else {
            // Reap it if it was our child.
            let _ = process.wait_exit(Duration::from_millis(100)).await;
        }
        *self.qmp.lock().await = None;
        Ok(())
    }

    /// Removes cgroups and sockets (not the disk).
    async fn release(&self) -> Result<(), MicroVmError> {
        let cg = self.cgroup.remove(Duration::from_secs(3)).await;
        for p in [&self.state.qmp, &self.state.console_sock] {
            fsutil::remove_file_if_exists(p).map_err(io_err("remove", p))?;
        }
        cg.map_err(MicroVmError::Cgroup)
    }

    /// Asks the guest kernel to write all dirty data to its disk (SysRq `s` over the
    /// serial console) and waits until it is there.
    ///
    /// An emergency sync only *starts* the ext4 journal commit. Before a pause
    /// (`final_sync`) the guest is about to disappear, so SysRq `u` then remounts its
    /// filesystems read-only, which flushes the journal and waits. Before a snapshot
    /// the guest runs on; there we wait for the disk to go quiet instead.
    ///
    /// The completion reports are ordinary kernel messages, hidden under `quiet`; so
    /// the console log level is raised first (SysRq `5`) and restored afterwards
    /// (SysRq `4`). Each key waits for the previous one's answer: a break overtakes
    /// queued characters.
    async fn guest_sync(&self, final_sync: bool) -> Result<(), MicroVmError> {
        let mut sock = tokio::net::UnixStream::connect(&self.state.console_sock)
            .await
            .map_err(io_err("connect to", &self.state.console_sock))?;
        let result = async {
            self.sysrq(&mut sock, b'5', Some("Loglevel set to 5"))
                .await?;
            self.sysrq(&mut sock, b's', Some(SYNC_DONE)).await?;
            if final_sync {
                self.sysrq(&mut sock, b'u', Some(REMOUNT_DONE)).await
            } else {
                self.wait_disk_quiet().await
            }
        }
        .await;
        if !final_sync {
            let _ = self.sysrq(&mut sock, b'4', None).await;
        }
        result
    }

    /// Waits until the root disk saw no request for a while (3 s at most).
    async fn wait_disk_quiet(&self) -> Result<(), MicroVmError> {
        let counters = |v: &serde_json::Value| -> Vec<u64> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|dev| dev.get("stats"))
                .flat_map(|s| {
                    ["wr_operations", "flush_operations", "rd_operations"]
                        .map(|k| s.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0))
                })
                .collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut last = Vec::new();
        let mut quiet_since = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            let now = {
                let mut guard = self.qmp.lock().await;
                let q = guard.as_mut().ok_or(MicroVmError::Qmp {
                    step: "query the disk",
                    err: QmpError::Closed,
                })?;
                let v =
                    q.execute("query-blockstats", None)
                        .await
                        .map_err(|err| MicroVmError::Qmp {
                            step: "query the disk",
                            err,
                        })?;
                counters(&v)
            };
            if now != last {
                last = now;
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(150) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Sends SysRq `key` through the console socket and waits (20 s at most) for
    /// `answer` to appear in the console log.
    async fn sysrq(
        &self,
        sock: &mut tokio::net::UnixStream,
        key: u8,
        answer: Option<&str>,
    ) -> Result<(), MicroVmError> {
        use tokio::io::AsyncWriteExt;
        let log = self.console_log();
        let before = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        {
            let mut guard = self.qmp.lock().await;
            let q = guard.as_mut().ok_or(MicroVmError::Qmp {
                step: "send SysRq",
                err: QmpError::Closed,
            })?;
            q.execute("chardev-send-break", Some(json!({"id": "con"})))
                .await
                .map_err(|err| MicroVmError::Qmp {
                    step: "send a break to the console",
                    err,
                })?;
        }
        sock.write_all(&[key])
            .await
            .map_err(io_err("write to", &self.state.console_sock))?;
        let Some(answer) = answer else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut sink = [0u8; 4096];
        loop {
            // Drain what the guest prints to the socket so its console never blocks.
            while let Ok(n) = sock.try_read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            if console_since(&log, before).contains(answer) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MicroVmError::BadState {
                    dir: self.state_dir.clone(),
                    reason: format!("the guest did not answer SysRq {:?}", char::from(key)),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Streams memory + devices of the stopped VM into `out` (fsynced) and returns
    /// the manifest describing it. A VM running on a template's RAM saves only what
    /// differs from it (see [`crate::memdiff`]), falling back to everything if that
    /// fails.
    async fn save_state(&self, out: &Path) -> Result<VmManifest, MicroVmError> {
        let m = &self.state.machine;
        let mut manifest = VmManifest {
            format: state::FORMAT,
            kind: SavedKind::Full,
            state_file: state::FULL_STATE.into(),
            memory_file: None,
            memory_mb: m.memory_mb,
            vcpus: m.vcpus,
            accel: m.accel,
            legacy_timers: m.legacy_timers,
            fingerprint: m.fingerprint.clone(),
            qemu_version: m.qemu_version.clone(),
            guest: m.guest.clone(),
            state_bytes: 0,
            base_memory: None,
            base_id: None,
            recipe: 0,
        };
        if let Some(base) = &self.state.base_memory {
            match self.save_diff(out, base).await {
                Ok((bytes, id)) => {
                    manifest.state_bytes = bytes;
                    manifest.base_memory = Some(base.clone());
                    manifest.base_id = Some(id);
                    return Ok(manifest);
                }
                Err(err) => {
                    tracing::warn!(sandbox_id = %self.id, error = %hearth_types::ErrorChain(&err), "saving only the memory changes failed; saving all memory");
                }
            }
        }
        let file = create_state_file(out)?;
        {
            let mut guard = self.qmp.lock().await;
            let q = guard.as_mut().ok_or(MicroVmError::Qmp {
                step: "save the VM",
                err: QmpError::Closed,
            })?;
            migrate_to(q, file.as_fd(), false).await?;
        }
        file.sync_all().map_err(io_err("sync", out))?;
        manifest.state_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(manifest)
    }

    /// Saves through a pipe, dropping pages equal to the template's `base` RAM.
    /// Returns the bytes written and the template's identity.
    async fn save_diff(&self, out: &Path, base: &Path) -> Result<(u64, String), MicroVmError> {
        let tm = self.inner.template_memory(base).await?;
        let id = tm.id.clone();
        let file = create_state_file(out)?;
        let (rx, tx) =
            nix::unistd::pipe().map_err(|e| io_err("create a pipe for", out)(e.into()))?;
        let out_path = out.to_owned();
        let rewriter =
            tokio::task::spawn_blocking(move || {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
                let stats = memdiff::rewrite(fs::File::from(rx), &mut w, vm::RAM_BLOCK, &*tm)
                    .map_err(|e| MicroVmError::BadState {
                        dir: out_path.clone(),
                        reason: format!("cannot diff the saved memory: {e}"),
                    })?;
                drop(w);
                file.sync_all().map_err(io_err("sync", &out_path))?;
                Ok::<_, MicroVmError>(stats)
            });
        let migrated = {
            let mut guard = self.qmp.lock().await;
            let q = guard.as_mut().ok_or(MicroVmError::Qmp {
                step: "save the VM",
                err: QmpError::Closed,
            })?;
            let started = start_migration(q, tx.as_fd(), false).await;
            // QEMU has its own copy now; ours would keep the rewriter from seeing EOF.
            drop(tx);
            match started {
                Ok(()) => q
                    .wait_migration(Duration::from_secs(600))
                    .await
                    .map(drop)
                    .map_err(|err| MicroVmError::Qmp {
                        step: "save the VM",
                        err,
                    }),
                Err(e) => Err(e),
            }
        };
        let rewritten = rewriter.await.map_err(MicroVmError::Task)?;
        // The rewriter's error explains a migration that failed on a closed pipe.
        let stats = rewritten?;
        migrated?;
        tracing::debug!(sandbox_id = %self.id, pages = stats.pages, kept = stats.kept, bytes = stats.bytes_out, "saved memory changes");
        Ok((stats.bytes_out, id))
    }

    /// Copies the VM (memory + devices if `memory`) and its disk into `dir` while the
    /// vCPUs are stopped, then lets it run on. `dir` must not exist; it appears only
    /// complete (built under a temporary name, then renamed).
    async fn snapshot_inner(&self, memory: bool, dir: &Path) -> Result<Snapshot, MicroVmError> {
        if dir.exists() {
            return Err(MicroVmError::BadState {
                dir: dir.to_owned(),
                reason: "the snapshot directory already exists".into(),
            });
        }
        let tmp = fsutil::temp_sibling(dir);
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        if !memory && let Err(err) = self.guest_sync(false).await {
            tracing::warn!(sandbox_id = %self.id, error = %hearth_types::ErrorChain(&err), "guest filesystem sync failed");
        }
        self.qmp_step("stop the vCPUs", "stop").await?;
        let copied = async {
            let saved = if memory {
                Some(self.save_state(&tmp.join(state::FULL_STATE)).await?)
            } else {
                None
            };
            // QEMU flushed the overlay when it stopped the VM: the copy is consistent.
            let disk = tmp.join(state::DISK);
            fs::copy(&self.state.disk, &disk).map_err(io_err("copy", &self.state.disk))?;
            fs::File::open(&disk)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", &disk))?;
            Ok::<_, MicroVmError>(saved)
        }
        .await;
        let resumed = self.qmp_step("resume the vCPUs", "cont").await;
        let saved = match copied.and_then(|s| resumed.map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                let _ = fsutil::remove_dir_if_exists(&tmp);
                return Err(e);
            }
        };
        if let Some(manifest) = saved {
            manifest.write(&tmp).map_err(io_err("write", &tmp))?;
        }
        fs::rename(&tmp, dir).map_err(io_err("install", dir))?;
        if let Some(parent) = dir.parent() {
            fsutil::sync_dir(parent).map_err(io_err("sync", parent))?;
        }
        Ok(Snapshot {
            mode: if memory {
                PauseMode::Full
            } else {
                PauseMode::Filesystem
            },
            artifacts: Artifacts {
                layers: Vec::new(),
                disk_image: Some(dir.join(state::DISK)),
                vm_state: memory.then(|| dir.to_owned()),
            },
        })
    }

    async fn pause_inner(&self, memory: bool, dir: &Path) -> Result<PausedState, MicroVmError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let intent = PauseIntent {
            dir: dir.to_owned(),
            memory,
            resources: self.resources,
            machine: self.state.machine.clone(),
        };
        let intent_path = self.state_dir.join(state::PAUSE_INTENT);
        fsutil::write_atomic(
            &intent_path,
            &serde_json::to_vec(&intent).expect("intent serialises"),
        )
        .map_err(io_err("write", &intent_path))?;
        let full = dir.join(state::FULL_STATE);
        if memory {
            self.qmp_step("stop the vCPUs", "stop").await?;
            let tmp = fsutil::temp_sibling(&full);
            let saved = match self.save_state(&tmp).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            // The manifest first: the state file's rename is the commit point.
            saved.write(dir).map_err(io_err("write", dir))?;
            fs::rename(&tmp, &full).map_err(io_err("rename", &tmp))?;
            fsutil::sync_dir(dir).map_err(io_err("sync", dir))?;
        } else {
            // Without the guest's dirty pages the disk is not what the guest believes
            // it wrote; a sync failure is logged, not fatal (the data the guest had
            // flushed itself is still safe).
            if let Err(err) = self.guest_sync(true).await {
                tracing::warn!(sandbox_id = %self.id, error = %hearth_types::ErrorChain(&err), "guest filesystem sync failed");
            }
            // The guest's filesystems may be read-only now: there is no going back
            // to running, so a failed `stop` only means QEMU is ended less gently.
            if let Err(err) = self.qmp_step("stop the vCPUs", "stop").await {
                tracing::warn!(sandbox_id = %self.id, error = %hearth_types::ErrorChain(&err), "cannot stop the vCPUs before ending QEMU");
            }
        }
        // From here the VM is not resumed on error: the saved state is the truth.
        self.stop_process().await?;
        let record = finish_pause(&intent, &self.state.disk, &self.state_dir)?;
        self.release().await?;
        Ok(paused_state(&record))
    }
}

/// Steps 3–5 of a pause, once QEMU is gone: move the disk, write the record. For a
/// memory pause the saved state and its manifest must be in the pause directory.
fn finish_pause(
    intent: &PauseIntent,
    disk: &Path,
    state_dir: &Path,
) -> Result<PauseRecord, MicroVmError> {
    let dir = &intent.dir;
    let vm = if intent.memory {
        let m = VmManifest::read(dir).map_err(io_err("read", dir))?;
        let full = dir.join(state::FULL_STATE);
        if !full.is_file() {
            return Err(MicroVmError::BadState {
                dir: dir.clone(),
                reason: "the saved memory is missing".into(),
            });
        }
        Some(m)
    } else {
        None
    };
    let target = dir.join(state::DISK);
    if disk != target {
        fs::File::open(disk)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", disk))?;
        move_file(disk, &target)?;
        fsutil::sync_dir(state_dir).map_err(io_err("sync", state_dir))?;
    }
    fsutil::sync_dir(dir).map_err(io_err("sync", dir))?;
    let record = PauseRecord {
        dir: dir.clone(),
        memory: vm.is_some(),
        vm,
        machine: intent.machine.clone(),
        resources: intent.resources,
    };
    let path = dir.join(state::PAUSE_RECORD);
    fsutil::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&record).expect("record serialises"),
    )
    .map_err(io_err("write", &path))?;
    // The marker stays until the node resumes or kills the sandbox: it is how
    // `recovered_pause` finds this pause if the node never learnt of it.
    Ok(record)
}

fn create_state_file(path: &Path) -> Result<fs::File, MicroVmError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))
}

/// Renames `from` to `to`, copying across filesystems.
fn move_file(from: &Path, to: &Path) -> Result<(), MicroVmError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(nix::libc::EXDEV) => {
            let tmp = fsutil::temp_sibling(to);
            fs::copy(from, &tmp).map_err(io_err("copy", from))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", &tmp))?;
            fs::rename(&tmp, to).map_err(io_err("rename", &tmp))?;
            fs::remove_file(from).map_err(io_err("remove", from))
        }
        Err(err) => Err(io_err("move", from)(err)),
    }
}

/// The `PausedState` for a record.
pub(crate) fn paused_state(r: &PauseRecord) -> PausedState {
    PausedState {
        mode: if r.memory {
            PauseMode::Full
        } else {
            PauseMode::Filesystem
        },
        data: serde_json::to_value(r).expect("record serialises"),
    }
}

/// The record of a complete pause in `dir`.
pub(crate) fn read_pause_record(dir: &Path) -> Option<PauseRecord> {
    let bytes = fs::read(dir.join(state::PAUSE_RECORD)).ok()?;
    let r: PauseRecord = serde_json::from_slice(&bytes).ok()?;
    let complete = r.disk().is_file() && (!r.memory || dir.join(state::FULL_STATE).is_file());
    complete.then_some(r)
}

fn read_intent(state_dir: &Path) -> Option<PauseIntent> {
    let bytes = fs::read(state_dir.join(state::PAUSE_INTENT)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn console_since(log: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(log) else {
        return String::new();
    };
    let mut s = Vec::new();
    let _ = f
        .seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_to_end(&mut s));
    String::from_utf8_lossy(&s).into_owned()
}

/// Starts saving the stopped VM into `fd` (QMP `getfd` + `migrate fd:`); QEMU holds
/// its own copy of `fd` afterwards.
pub(crate) async fn start_migration(
    q: &mut Qmp,
    fd: std::os::fd::BorrowedFd<'_>,
    ignore_shared: bool,
) -> Result<(), MicroVmError> {
    let e = |step| move |err| MicroVmError::Qmp { step, err };
    q.set_capabilities(&[("x-ignore-shared", ignore_shared)])
        .await
        .map_err(e("set migration capabilities"))?;
    // Without this QEMU throttles to 32 MiB/s; the VM is stopped, nothing is gained.
    q.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": 1u64 << 40, "downtime-limit": 60_000})),
    )
    .await
    .map_err(e("set migration parameters"))?;
    q.execute_with_fd("getfd", Some(json!({"fdname": "hearth-save"})), fd)
        .await
        .map_err(e("pass the state file"))?;
    q.execute("migrate", Some(json!({"uri": "fd:hearth-save"})))
        .await
        .map_err(e("start saving the VM"))?;
    Ok(())
}

/// Saves the stopped VM into `fd` and waits until it is written.
pub(crate) async fn migrate_to(
    q: &mut Qmp,
    fd: std::os::fd::BorrowedFd<'_>,
    ignore_shared: bool,
) -> Result<serde_json::Value, MicroVmError> {
    start_migration(q, fd, ignore_shared).await?;
    q.wait_migration(Duration::from_secs(600))
        .await
        .map_err(|err| MicroVmError::Qmp {
            step: "save the VM",
            err,
        })
}

#[async_trait]
impl Instance for MicroVmInstance {
    fn envd_addr(&self) -> SocketAddr {
        self.envd
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("instance state serialises")
    }

    fn is_alive(&self) -> bool {
        !self.gone && vm::is_alive(self.state.pid, self.state.start_time)
    }

    async fn kill(&mut self) -> Result<(), RuntimeError> {
        if self.gone {
            return Ok(());
        }
        let id = self.id.clone();
        let op = |e| RuntimeError::op(&id, "kill", e);
        self.stop_process().await.map_err(op)?;
        let released = self.release().await;
        let disk = fsutil::remove_file_if_exists(&self.state.disk)
            .map_err(io_err("remove", &self.state.disk));
        self.gone = true;
        released.map_err(op)?;
        disk.map_err(op)
    }

    async fn stats(&self) -> Result<Stats, RuntimeError> {
        let (used, cache) = self.cgroup.memory();
        let disk_used = image::allocated_size(&self.state.disk).unwrap_or(0);
        let disk_total = image::virtual_size(&self.state.disk).unwrap_or(0);
        Ok(Stats {
            cpu_count: self.state.machine.vcpus,
            cpu_time_ns: self.cgroup.cpu_time_ns(),
            mem_used: used.saturating_sub(cache),
            mem_total: u64::from(self.state.machine.memory_mb) << 20,
            mem_cache: cache,
            disk_used,
            disk_total,
        })
    }

    async fn snapshot(&mut self, memory: bool, dir: &Path) -> Result<Snapshot, RuntimeError> {
        if self.gone {
            return Err(RuntimeError::op(&self.id, "snapshot", "the VM is gone"));
        }
        self.snapshot_inner(memory, dir)
            .await
            .map_err(|e| RuntimeError::op(&self.id, "snapshot", e))
    }

    async fn pause(&mut self, memory: bool, dir: &Path) -> Result<PausedState, RuntimeError> {
        if self.gone {
            return Err(RuntimeError::op(&self.id, "pause", "the VM is gone"));
        }
        match self.pause_inner(memory, dir).await {
            Ok(p) => {
                self.gone = true;
                Ok(p)
            }
            Err(err) => {
                let running = vm::is_alive(self.state.pid, self.state.start_time);
                if running {
                    // Undo: the VM keeps running as if nothing happened.
                    let _ = fs::remove_file(dir.join(state::FULL_STATE));
                    let _ = fs::remove_file(self.state_dir.join(state::PAUSE_INTENT));
                    if let Err(e) = self.qmp_step("resume the vCPUs", "cont").await {
                        tracing::error!(sandbox_id = %self.id, error = %hearth_types::ErrorChain(&e), "cannot resume VM after failed pause");
                    }
                } else {
                    self.gone = true;
                }
                Err(RuntimeError::op(&self.id, "pause", err))
            }
        }
    }
}

/// Whether `pid` is the QEMU of VM `name` (its `-name` argument).
pub(crate) fn is_our_qemu(pid: u32, name: &str) -> bool {
    let args = vm::proc_cmdline(pid);
    args.windows(2)
        .any(|w| w[0] == "-name" && w[1].split(',').next() == Some(name))
}

/// Finds the VM of a previous hearth process again.
pub(crate) async fn adopt(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    st: InstanceState,
) -> Result<Option<MicroVmInstance>, MicroVmError> {
    let name = inner.process_name(spec.id.as_str());
    if !vm::is_alive(st.pid, st.start_time) || !is_our_qemu(st.pid, &name) {
        return Ok(None);
    }
    let mut process = VmProcess::adopted(st.pid, st.start_time);
    let connected = tokio::time::timeout(Duration::from_secs(5), Qmp::connect(&st.qmp)).await;
    let mut qmp = match connected {
        Ok(Ok(q)) => q,
        _ => {
            // A QEMU we cannot control is of no use: end it; cleanup does the rest.
            tracing::warn!(sandbox_id = %spec.id, "adopted QEMU has no working QMP socket; killing it");
            process.kill_and_wait().await.map_err(MicroVmError::Vm)?;
            return Ok(None);
        }
    };
    let status = qmp.status().await.map_err(|err| MicroVmError::Qmp {
        step: "query the VM",
        err,
    })?;
    let running = status == "running";
    if let Some(intent) = read_intent(&spec.state_dir) {
        let saved = intent.dir.join(state::FULL_STATE).is_file();
        let far_enough =
            read_pause_record(&intent.dir).is_some() || (!running && (saved || !intent.memory));
        if far_enough {
            // The pause reached the point where its files are the truth: end QEMU
            // (it flushes the disk) and let `recovered_pause` finish it.
            let _ = tokio::time::timeout(Duration::from_secs(2), qmp.quit()).await;
            if !process.wait_exit(Duration::from_secs(5)).await {
                process.kill_and_wait().await.map_err(MicroVmError::Vm)?;
            }
            return Ok(None);
        }
        if !intent.memory {
            // A filesystem pause may have remounted the guest's filesystems read-only
            // (SysRq `u`) before hearth died: running on would leave a sandbox that
            // cannot write. Finish the pause instead (sync again, end QEMU) and let
            // `recovered_pause` record it: the files are all on the disk.
            let vm = adopted_instance(inner, spec, st, process, qmp);
            if let Err(err) = vm.guest_sync(true).await {
                tracing::warn!(sandbox_id = %spec.id, error = %hearth_types::ErrorChain(&err), "guest filesystem sync failed");
            }
            vm.stop_process().await?;
            tracing::info!(sandbox_id = %spec.id, "finishing a filesystem pause interrupted by a restart");
            return Ok(None);
        }
        // A memory pause not far enough: forget it and keep running (the guest
        // was only stopped, never told anything).
        fsutil::remove_file_if_exists(&intent.dir.join(state::FULL_STATE))
            .map_err(io_err("remove", &intent.dir))?;
        let p = spec.state_dir.join(state::PAUSE_INTENT);
        fsutil::remove_file_if_exists(&p).map_err(io_err("remove", &p))?;
    }
    if !running {
        qmp.execute("cont", None)
            .await
            .map_err(|err| MicroVmError::Qmp {
                step: "resume the VM",
                err,
            })?;
    }
    Ok(Some(adopted_instance(inner, spec, st, process, qmp)))
}

/// The instance of an adopted QEMU (its process and QMP connection found again).
fn adopted_instance(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    st: InstanceState,
    process: VmProcess,
    qmp: Qmp,
) -> MicroVmInstance {
    MicroVmInstance::new(
        spec.id.clone(),
        inner.clone(),
        SocketAddr::from((spec.slot.host_addr, hearth_runtime::ENVD_PORT)),
        spec.resources,
        spec.state_dir.clone(),
        Launched {
            process,
            qmp,
            cgroup: inner.cgroup(spec.id.as_str()),
            state: st,
            timings: LaunchTimings::default(),
        },
    )
}

/// A pause that completed on disk, or that got far enough to complete now (QEMU is
/// gone): see the module docs. Blocking but quick (renames and small writes).
pub(crate) fn recovered_pause(inner: &Inner, spec: &SandboxSpec) -> Option<PausedState> {
    let intent = read_intent(&spec.state_dir)?;
    if let Some(r) = read_pause_record(&intent.dir) {
        return Some(paused_state(&r));
    }
    let disk = spec.state_dir.join(state::DISK);
    if !disk.is_file() || (intent.memory && !intent.dir.join(state::FULL_STATE).is_file()) {
        return None;
    }
    match finish_pause(&intent, &disk, &spec.state_dir) {
        Ok(r) => {
            inner.cgroup(spec.id.as_str()).remove_now();
            for p in [
                launch::qmp_path(&spec.state_dir),
                launch::console_sock_path(&spec.state_dir),
            ] {
                let _ = fsutil::remove_file_if_exists(&p);
            }
            tracing::info!(sandbox_id = %spec.id, dir = %intent.dir.display(), "finished a pause interrupted by a restart");
            Some(paused_state(&r))
        }
        Err(err) => {
            tracing::error!(sandbox_id = %spec.id, error = %hearth_types::ErrorChain(&err), "cannot finish an interrupted pause");
            None
        }
    }
}

/// Removes what a dead VM left: process, cgroups, sockets, overlay, pause marker.
pub(crate) async fn cleanup(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    st: Option<InstanceState>,
) -> Result<(), MicroVmError> {
    let name = inner.process_name(spec.id.as_str());
    if let Some(st) = &st
        && vm::is_alive(st.pid, st.start_time)
        && is_our_qemu(st.pid, &name)
    {
        VmProcess::adopted(st.pid, st.start_time)
            .kill_and_wait()
            .await
            .map_err(MicroVmError::Vm)?;
    }
    inner
        .cgroup(spec.id.as_str())
        .remove(Duration::from_secs(3))
        .await
        .map_err(MicroVmError::Cgroup)?;
    let mut files = vec![
        launch::qmp_path(&spec.state_dir),
        launch::console_sock_path(&spec.state_dir),
        spec.state_dir.join(state::PAUSE_INTENT),
        spec.state_dir.join(state::DISK),
    ];
    // Only the running VM's overlay: a paused one lives in its pause directory.
    if let Some(st) = &st
        && st.disk.starts_with(&spec.state_dir)
    {
        files.push(st.disk.clone());
    }
    for p in files {
        fsutil::remove_file_if_exists(&p).map_err(io_err("remove", &p))?;
    }
    Ok(())
}

/// Kills QEMU processes and removes empty cgroups of this instance that belong to no
/// sandbox in `live`.
pub(crate) async fn reclaim(inner: &Arc<Inner>, live: &[SandboxId]) -> Result<(), MicroVmError> {
    let prefix = format!("{}-", inner.config.instance);
    let is_live = |name: &str| live.iter().any(|id| id.as_str() == name);
    let procs = fs::read_dir("/proc").map_err(io_err("list", Path::new("/proc")))?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let args = vm::proc_cmdline(pid);
        let Some(name) = args
            .windows(2)
            .find(|w| w[0] == "-name")
            .and_then(|w| w[1].split(',').next())
        else {
            continue;
        };
        let Some(id) = name.strip_prefix(&prefix) else {
            continue;
        };
        // Sandbox ids have no '-': template builds (`template-…`) are not ours to end.
        let is_qemu = args
            .first()
            .is_some_and(|a| a.contains("qemu-system") || a.ends_with("nsenter"));
        if is_qemu && !id.contains('-') && !is_live(id) {
            tracing::warn!(pid, sandbox_id = id, "killing QEMU of an unknown sandbox");
            let start = vm::proc_start_time(pid).unwrap_or(0);
            VmProcess::adopted(pid, start)
                .kill_and_wait()
                .await
                .map_err(MicroVmError::Vm)?;
        }
    }
    for ctrl in crate::cgroup::CONTROLLERS {
        let parent = inner
            .config
            .cgroup_root
            .join(ctrl)
            .join(&inner.config.instance);
        let Ok(dir) = fs::read_dir(&parent) else {
            continue;
        };
        for d in dir.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if d.path().is_dir() && !is_live(&name) && !name.contains('-') {
                // Only empty cgroups go; a busy one belongs to something still running.
                let _ = fs::remove_dir(d.path());
            }
        }
    }
    Ok(())
}

/// Starts a paused sandbox again: from its saved memory if it has one and
/// `restore_memory`, else by a cold boot over its disk. On success the pause is
/// consumed (its state file and record are removed, so a memory pause resumed cold
/// discards its memory); on failure it is left intact.
pub(crate) async fn resume(
    inner: &Arc<Inner>,
    spec: &SandboxSpec,
    record: PauseRecord,
    restore_memory: bool,
) -> Result<MicroVmInstance, MicroVmError> {
    fs::create_dir_all(&spec.state_dir).map_err(io_err("create", &spec.state_dir))?;
    // The pause is recorded by the node now; its marker has done its job.
    let intent = spec.state_dir.join(state::PAUSE_INTENT);
    fsutil::remove_file_if_exists(&intent).map_err(io_err("remove", &intent))?;
    let paused_disk = record.disk();
    let disk = spec.state_dir.join(state::DISK);
    // An earlier resume may have been interrupted after moving the disk.
    if !disk.is_file() {
        if !paused_disk.is_file() {
            return Err(MicroVmError::BadState {
                dir: record.dir.clone(),
                reason: "its disk is missing".into(),
            });
        }
        move_file(&paused_disk, &disk)?;
    }
    let plan = if record.memory && restore_memory {
        let vm_dir = &record.dir;
        match inner
            .restore_plan(vm_dir, record.machine.memory_mb, record.machine.vcpus)
            .await
        {
            Ok(Some(plan)) => Some(plan),
            Ok(None) => {
                let _ = move_file(&disk, &paused_disk);
                return Err(MicroVmError::BadState {
                    dir: vm_dir.clone(),
                    reason: "the saved memory cannot be restored on this host".into(),
                });
            }
            Err(e) => {
                let _ = move_file(&disk, &paused_disk);
                return Err(e);
            }
        }
    } else {
        None
    };
    let mut shaped = spec.clone();
    shaped.resources.memory_mb = record.machine.memory_mb;
    shaped.resources.cpu_count = record.machine.vcpus;
    match inner.start_sandbox(&shaped, disk.clone(), plan).await {
        Ok(i) => {
            for f in [state::FULL_STATE, state::MANIFEST, state::PAUSE_RECORD] {
                let p = record.dir.join(f);
                if let Err(err) = fsutil::remove_file_if_exists(&p) {
                    tracing::warn!(sandbox_id = %spec.id, path = %p.display(), error = %err, "cannot remove consumed pause file");
                }
            }
            Ok(i)
        }
        Err(e) => {
            if let Err(err) = move_file(&disk, &paused_disk) {
                tracing::error!(sandbox_id = %spec.id, error = %hearth_types::ErrorChain(&err), "cannot put the disk back into the pause");
            }
            Err(e)
        }
    }
}
