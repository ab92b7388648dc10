// SPDX-License-Identifier: Apache-2.0
//! Preparing a template for microVMs: root image, one boot, snapshot.
//!
//! The template VM's RAM is a file mapped shared (`memory-backend-file,share=on`), so
//! when the VM is stopped the file *is* its memory; the migration stream then only
//! carries device state (`x-ignore-shared`) and is tiny. Clones map that memory
//! copy-on-write. The boot's disk writes (mount state, journal) are committed into
//! the image afterwards, so the image matches what the saved guest believes is on
//! its disk. The result is installed by renaming a temporary directory.

use crate::fsutil;
use crate::image;
use crate::instance::migrate_to;
use crate::launch::{EnvdTarget, LaunchSpec, Start};
use crate::netns::{self, PrivateNet};
use crate::progress::Progress;
use crate::runtime::{MicroVm, MicroVmError, io_err};
use crate::state::{self, SavedKind, VmManifest};
use crate::vm::Memory;
use hearth_runtime::{Artifacts, ENVD_PORT, NetSlot, Resources};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory under the output directory holding microVM artifacts.
pub const ARTIFACT_DIR: &str = "microvm";
/// The root image's file name.
pub const ROOT_IMAGE: &str = "rootfs.ext4";
/// The saved template VM's directory name.
pub const VM_DIR: &str = "vm";
/// Version of how templates are prepared: artifacts made by another version are
/// rebuilt by [`MicroVm::prepare_template`].
pub const TEMPLATE_RECIPE: u32 = 3;
/// Commands run once in the template VM before its snapshot.
const WARM_UP: &[&[&str]] = &[
    &["/bin/sh", "-c", "true"],
    &["/bin/bash", "-l", "-c", "true"],
];

/// What to prepare.
pub struct TemplateRequest<'a> {
    /// Root filesystem layers, upper-most first; must contain `/usr/bin/hearth-envd`.
    pub layers: &'a [PathBuf],
    /// The template's sandbox shape: RAM and vCPUs of the snapshot, disk size.
    pub resources: Resources,
    /// Where to put the artifacts (`<out_dir>/microvm/`).
    pub out_dir: &'a Path,
    /// Network slot to boot in; `None` uses a private namespace with the same layout.
    pub slot: Option<&'a NetSlot>,
    /// Guest hostname.
    pub hostname: &'a str,
    /// Guest nameservers (written into the image's `/etc/resolv.conf`).
    pub nameservers: &'a [Ipv4Addr],
    /// Progress reporting.
    pub progress: &'a dyn Progress,
}

impl std::fmt::Debug for TemplateRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateRequest")
            .field("layers", &self.layers)
            .field("resources", &self.resources)
            .field("out_dir", &self.out_dir)
            .finish_non_exhaustive()
    }
}

impl MicroVm {
    /// Builds a template's root image and snapshot under `<out_dir>/microvm` and
    /// returns the artifacts for sandboxes (`disk_image` + `vm_state`). If usable
    /// artifacts are already there, returns them without work.
    pub async fn prepare_template(
        &self,
        req: &TemplateRequest<'_>,
    ) -> Result<Artifacts, MicroVmError> {
        let inner = &self.inner;
        let final_dir = req.out_dir.join(ARTIFACT_DIR);
        let artifacts = |dir: &Path| Artifacts {
            layers: req.layers.to_vec(),
            disk_image: Some(dir.join(ROOT_IMAGE)),
            vm_state: Some(dir.join(VM_DIR)),
        };
        let guest = inner.guest(req.progress).await?;
        let accel = inner.accel().await?.accel;
        let version = inner.qemu_version().await?;
        fs::create_dir_all(req.out_dir).map_err(io_err("create", req.out_dir))?;
        // One preparation per output directory at a time (across processes too).
        let lock_path = req.out_dir.join(".microvm.lock");
        let lp = lock_path.clone();
        let _lock = tokio::task::spawn_blocking(move || fsutil::FileLock::acquire(&lp))
            .await
            .map_err(MicroVmError::Task)?
            .map_err(io_err("lock", &lock_path))?;
        fsutil::remove_stale_temps(req.out_dir);
        if let Ok(m) = VmManifest::read(&final_dir.join(VM_DIR))
            && m.recipe == TEMPLATE_RECIPE
            && final_dir.join(ROOT_IMAGE).is_file()
            && inner
                .incompatibility(&m, req.resources.memory_mb, req.resources.cpu_count)
                .await?
                .is_none()
        {
            return Ok(artifacts(&final_dir));
        }
        let tmp = fsutil::temp_sibling(&final_dir);
        let vm_dir = tmp.join(VM_DIR);
        fs::create_dir_all(&vm_dir).map_err(io_err("create", &vm_dir))?;
        let result = self.build(req, &tmp, &guest, accel, &version).await;
        if let Err(e) = result {
            if std::env::var_os("HEARTH_MICROVM_KEEP_FAILED").is_none()
                && let Err(err) = fsutil::remove_dir_if_exists(&tmp)
            {
                tracing::warn!(dir = %tmp.display(), error = %err, "cannot remove failed template build");
            }
            return Err(e);
        }
        fsutil::remove_dir_if_exists(&final_dir).map_err(io_err("replace", &final_dir))?;
        fs::rename(&tmp, &final_dir).map_err(io_err("install", &final_dir))?;
        fsutil::sync_dir(req.out_dir).map_err(io_err("sync", req.out_dir))?;
        req.progress.finish("microVM template ready");
        Ok(artifacts(&final_dir))
    }

    async fn build(
        &self,
        req: &TemplateRequest<'_>,
        tmp: &Path,
        guest: &crate::guest::GuestArtifacts,
        accel: crate::accel::Accel,
        version: &str,
    ) -> Result<(), MicroVmError> {
        let inner = &self.inner;
        req.progress.phase("building the root disk image");
        let t = Instant::now();
        let root_image = tmp.join(ROOT_IMAGE);
        let (layers, disk_mb, img, scratch) = (
            req.layers.to_vec(),
            req.resources.disk_mb,
            root_image.clone(),
            tmp.to_owned(),
        );
        let size = tokio::task::spawn_blocking(move || {
            image::build_root_image(&layers, disk_mb, &img, &scratch)
        })
        .await
        .map_err(MicroVmError::Task)?
        .map_err(MicroVmError::Image)?;
        // The flattening mountpoint (unmounted by now) is not an artifact.
        let _ = fs::remove_dir(tmp.join("flattened"));
        req.progress.detail(&format!(
            "{} MiB image in {:.1} s",
            size >> 20,
            t.elapsed().as_secs_f64()
        ));

        let boot_disk = tmp.join("boot.qcow2");
        image::create_overlay(&inner.config.qemu_img, &root_image, &boot_disk)
            .map_err(MicroVmError::Image)?;
        let machine = inner.machine_for(
            req.resources.memory_mb,
            req.resources.cpu_count,
            accel,
            guest,
            version,
        );
        let vm_dir = tmp.join(VM_DIR);
        let mem_file = vm_dir.join("memory");
        let f = fs::File::create(&mem_file).map_err(io_err("create", &mem_file))?;
        f.set_len(u64::from(machine.memory_mb) << 20)
            .map_err(io_err("size", &mem_file))?;
        drop(f);

        req.progress.phase(&format!(
            "booting the template VM ({}, {} MiB, {} vCPU)",
            accel.as_str(),
            machine.memory_mb,
            machine.vcpus
        ));
        let private;
        let (netns_path, tap, mac, envd) = match req.slot {
            Some(s) => (
                s.router_netns.clone(),
                s.tap
                    .clone()
                    .ok_or_else(|| MicroVmError::BadSlot { index: s.index })?,
                s.mac.clone(),
                EnvdTarget::Host(SocketAddr::from((s.host_addr, ENVD_PORT))),
            ),
            None => {
                private = PrivateNet::create().map_err(MicroVmError::Netns)?;
                (
                    private.path(),
                    netns::TAP.to_owned(),
                    netns::GUEST_MAC.to_owned(),
                    EnvdTarget::InNetns(private.path()),
                )
            }
        };
        let name = format!(
            "template-{}",
            &fsutil::sha256(tmp.to_string_lossy().as_bytes())[..12]
        );
        let warm_target = envd.clone();
        let t = Instant::now();
        let mut launched = inner
            .launch(LaunchSpec {
                name: &name,
                state_dir: tmp,
                disk: boot_disk.clone(),
                netns: Some(netns_path),
                tap: &tap,
                mac: &mac,
                ordinal: 0,
                machine: machine.clone(),
                start: Start::Boot {
                    memory: Memory::SharedFile(mem_file.clone()),
                },
                hostname: req.hostname,
                nameservers: req.nameservers,
                envd: envd.clone(),
                timeout: inner.config.boot_timeout,
            })
            .await
            .map_err(MicroVmError::Launch)?;
        req.progress.detail(&format!(
            "envd answered after {:.1} s",
            t.elapsed().as_secs_f64()
        ));

        // What a sandbox runs first (the SDKs start commands with `bash -l -c`) is
        // then in the guest's page cache and dentry caches of every clone.
        req.progress.phase("warming up the template");
        let guest_addr = match &warm_target {
            EnvdTarget::Host(addr) => *addr,
            EnvdTarget::InNetns(_) => SocketAddr::from((
                crate::initramfs::GUEST_ADDR
                    .parse::<Ipv4Addr>()
                    .expect("constant address parses"),
                ENVD_PORT,
            )),
        };
        let warm = move || {
            for argv in WARM_UP {
                if let Err(err) = crate::envd::run(guest_addr, argv, Duration::from_secs(60)) {
                    tracing::warn!(command = ?argv, error = %hearth_types::ErrorChain(&err), "template warm-up command failed");
                }
            }
        };
        match &warm_target {
            EnvdTarget::InNetns(ns) => {
                netns::run_in(ns, warm).await.map_err(MicroVmError::Netns)?;
            }
            EnvdTarget::Host(_) => {
                tokio::task::spawn_blocking(warm)
                    .await
                    .map_err(MicroVmError::Task)?;
            }
        }

        req.progress.phase("saving the template snapshot");
        let state_path = vm_dir.join("device.state");
        let saved = async {
            let q = &mut launched.qmp;
            q.execute("stop", None)
                .await
                .map_err(|err| MicroVmError::Qmp {
                    step: "stop the template VM",
                    err,
                })?;
            let file = fs::File::create(&state_path).map_err(io_err("create", &state_path))?;
            migrate_to(q, file.as_fd(), true).await?;
            file.sync_all().map_err(io_err("sync", &state_path))?;
            let _ = tokio::time::timeout(Duration::from_secs(2), q.quit()).await;
            Ok::<u64, MicroVmError>(file.metadata().map(|m| m.len()).unwrap_or(0))
        }
        .await;
        if !launched.process.wait_exit(Duration::from_secs(10)).await {
            launched
                .process
                .kill_and_wait()
                .await
                .map_err(MicroVmError::Vm)?;
        }
        launched
            .cgroup
            .remove(Duration::from_secs(3))
            .await
            .map_err(MicroVmError::Cgroup)?;
        for p in [&launched.state.qmp, &launched.state.console_sock] {
            let _ = fsutil::remove_file_if_exists(p);
        }
        let state_bytes = saved?;

        // The guest's disk writes during boot become part of the image it remembers.
        image::commit_overlay(&inner.config.qemu_img, &boot_disk).map_err(MicroVmError::Image)?;
        fs::remove_file(&boot_disk).map_err(io_err("remove", &boot_disk))?;
        for f in [&root_image, &mem_file] {
            fs::File::open(f)
                .and_then(|f| f.sync_all())
                .map_err(io_err("sync", f))?;
        }
        let manifest = VmManifest {
            format: state::FORMAT,
            kind: SavedKind::Template,
            state_file: "device.state".into(),
            memory_file: Some("memory".into()),
            memory_mb: machine.memory_mb,
            vcpus: machine.vcpus,
            accel: machine.accel,
            legacy_timers: machine.legacy_timers,
            fingerprint: machine.fingerprint.clone(),
            qemu_version: machine.qemu_version.clone(),
            guest: machine.guest.clone(),
            state_bytes,
            base_memory: None,
            base_id: None,
            recipe: TEMPLATE_RECIPE,
        };
        manifest.write(&vm_dir).map_err(io_err("write", &vm_dir))?;
        let mem_used = image::allocated_size(&mem_file).unwrap_or(0);
        req.progress.detail(&format!(
            "device state {} KiB, memory {} MiB touched",
            state_bytes >> 10,
            mem_used >> 20
        ));
        Ok(())
    }
}
