// SPDX-License-Identifier: Apache-2.0
//! The microVM runtime in `hearth serve`: choosing it, and preparing templates for it.

use anyhow::Context;
use hearth_runtime::{Artifacts, Resources};
use hearth_runtime_microvm::{Accel, AccelReport, MicroVm, MicroVmConfig, TemplateRequest};
use hearth_store::{Store, TemplateRecord};
use std::net::Ipv4Addr;
use std::path::Path;

/// Which runtime `hearth serve` uses by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeChoice {
    /// Linux namespaces + overlayfs + cgroups.
    Container,
    /// A QEMU microVM per sandbox (KVM where usable, TCG otherwise).
    Microvm,
    /// microvm where `/dev/kvm` can boot a stock guest, else container.
    Auto,
}

/// Forwards the microVM runtime's progress to the builder's reporter (one spinner).
struct Forward<'a>(&'a dyn hearth_builder::Progress);

impl hearth_runtime_microvm::Progress for Forward<'_> {
    fn phase(&self, message: &str) {
        self.0.phase(message);
    }
    fn detail(&self, line: &str) {
        self.0.detail(line);
    }
    fn finish(&self, message: &str) {
        self.0.finish(message);
    }
}

/// The microVM runtime of this server.
pub fn runtime(home: &Path, instance: &str) -> anyhow::Result<MicroVm> {
    MicroVm::new(MicroVmConfig {
        instance: instance.to_owned(),
        ..MicroVmConfig::new(home)
    })
    .context("failed to set up the microVM runtime")
}

/// Which accelerator VMs would use and why (builds the guest kernel on first use and
/// test-boots it under KVM once per host).
pub async fn accel(
    vm: &MicroVm,
    progress: &dyn hearth_builder::Progress,
) -> anyhow::Result<AccelReport> {
    vm.doctor(&Forward(progress))
        .await
        .context("failed to probe the microVM accelerator")
}

/// Whether `auto` means microVMs on this host.
pub fn auto_picks_microvm(report: &AccelReport) -> bool {
    report.accel == Accel::Kvm
}

/// Gives template `source` microVM artifacts (root image and a booted snapshot, built
/// once and cached by build) and registers it as `name` — the same template when
/// `name == source`, else a copy pinned to the microVM runtime.
pub async fn prepare(
    vm: &MicroVm,
    home: &Path,
    store: &Store,
    source: &str,
    name: &str,
    nameservers: &[Ipv4Addr],
    progress: &dyn hearth_builder::Progress,
) -> anyhow::Result<TemplateRecord> {
    let t = store
        .template(source)?
        .with_context(|| format!("no template {source} to prepare for microVMs"))?;
    let artifacts: Artifacts = serde_json::from_value(t.artifacts.clone())
        .with_context(|| format!("template {} has unreadable artifacts", t.id))?;
    let out_dir = home
        .join("templates")
        .join(format!("{}-{}", t.id, t.build_id));
    let vm_artifacts = vm
        .prepare_template(&TemplateRequest {
            layers: &artifacts.layers,
            resources: Resources {
                cpu_count: t.cpu_count,
                memory_mb: t.memory_mb,
                disk_mb: t.disk_mb,
            },
            out_dir: &out_dir,
            slot: None,
            hostname: "e2b.local",
            nameservers,
            progress: &Forward(progress),
        })
        .await
        .with_context(|| format!("failed to prepare template {} for microVMs", t.id))?;
    let merged = Artifacts {
        layers: artifacts.layers.clone(),
        disk_image: vm_artifacts.disk_image,
        vm_state: vm_artifacts.vm_state,
    };
    let mut record = t.clone();
    record.artifacts = serde_json::to_value(&merged)?;
    if name != source {
        record.id = name.to_owned();
        record.names = vec![name.to_owned()];
        record.runtime = Some("microvm".to_owned());
    }
    store.upsert_template(&record)?;
    vm.warm(&merged)
        .await
        .context("failed to load the template's memory")?;
    tracing::info!(template = %record.id, "template ready for microVMs");
    Ok(record)
}
