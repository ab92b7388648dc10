// SPDX-License-Identifier: Apache-2.0
//! `hearth serve`: the API and the sandbox proxy on one port, and the node behind
//! them.
//!
//! Start-up order: store → API keys → network → runtime → templates → node
//! (reconciles leftovers) → listener. Shut-down (SIGTERM/SIGINT): stop accepting, let
//! the node kill its sandboxes (unless `--keep-sandboxes`) and release the network,
//! then remove the runtime's parent cgroups and unmount the data volume.

use crate::cli::ServeArgs;
use crate::wiring::microvm::RuntimeChoice;
use anyhow::Context;
use axum::body::Body;
use hearth_api::ApiState;
use hearth_node::{Network, Node, NodeConfig};
use hearth_proxy::Proxy;
use hearth_runtime::Runtime;
use hearth_store::Store;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tower::ServiceExt;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let sim = args.unsafe_sim_runtime.clone();
    if sim.is_none() && !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "hearth serve must run as root (it creates namespaces, cgroups and network devices)"
        );
    }
    std::fs::create_dir_all(&args.home)
        .with_context(|| format!("failed to create {}", args.home.display()))?;
    let store = Store::open(&args.home.join("hearth.db"))?;
    register_keys(&store, &args)?;

    let mut config = NodeConfig::new(args.home.clone());
    config.max_ordinal = hearth_runtime_container::MAX_ORDINAL;
    config.keep_sandboxes_on_exit = args.keep_sandboxes;
    config.ca_bundle = ca_bundle(&args)?;
    let mut data_volume = None;
    let mut container_runtime = None;
    let (runtimes, network): (Vec<Arc<dyn Runtime>>, Arc<dyn Network>) = match sim {
        Some(envd) => {
            tracing::warn!("UNSAFE sim runtime: sandboxes are unisolated host processes");
            config.default_user = "root".to_owned();
            register_sim_template(&store)?;
            (
                vec![Arc::new(hearth_runtime_sim::SimRuntime::new(envd))],
                Arc::new(hearth_runtime_sim::SimNetwork::default()),
            )
        }
        None => {
            let progress = hearth_builder::ConsoleProgress::new();
            let home = args.home.clone();
            let store_ref = &store;
            crate::wiring::templates::ensure_base(&home, store_ref, &progress)?;
            let disk_limits = if args.no_disk_limits {
                tracing::warn!("per-sandbox disk limits are off (--no-disk-limits)");
                false
            } else {
                data_volume = Some(ensure_data_volume(&config, args.data_gb)?);
                true
            };
            let launcher = hearth_runtime_container::Launcher::new(
                &hearth_runtime_container::LauncherConfig {
                    cgroup_parent: args.instance.clone(),
                    ..Default::default()
                },
            )
            .context("failed to set up the container launcher")?;
            let vm = match (args.runtime, args.microvm_templates.is_empty()) {
                (RuntimeChoice::Container, true) => None,
                _ => Some(Arc::new(crate::wiring::microvm::runtime(
                    &home,
                    &args.instance,
                )?)),
            };
            let default_vm = match (args.runtime, &vm) {
                (RuntimeChoice::Microvm, _) => true,
                (RuntimeChoice::Auto, Some(vm)) => {
                    let report = crate::wiring::microvm::accel(vm, &progress).await?;
                    let pick = crate::wiring::microvm::auto_picks_microvm(&report);
                    tracing::info!(
                        runtime = if pick { "microvm" } else { "container" },
                        accel = report.accel.as_str(),
                        reason = %report.reason,
                        "--runtime auto"
                    );
                    pick
                }
                _ => false,
            };
            let pool_config = hearth_net::PoolConfig {
                name: args.instance.clone(),
                ifname_prefix: ifname_prefix(&args.instance),
                host_cidr: args.host_cidr,
                transit_cidr: args.transit_cidr,
                warm_containers: if default_vm { 2 } else { args.warm_slots },
                warm_microvms: match (&vm, default_vm) {
                    (_, true) => args.warm_slots,
                    (Some(_), false) => 2,
                    (None, _) => 0,
                },
                max_slots: Some(60_000),
                ..Default::default()
            };
            let adopt = Node::adoptable_slots(&store)?;
            let (network, lost) = crate::wiring::net::SlotNetwork::start(pool_config, adopt)
                .await
                .context("failed to start the sandbox network")?;
            if !lost.is_empty() {
                tracing::warn!(slots = ?lost, "network slots of earlier sandboxes were lost");
            }
            let container = Arc::new(hearth_runtime_container::ContainerRuntime::new(
                launcher,
                disk_limits,
            ));
            container_runtime = Some(container.clone());
            let container: Arc<dyn Runtime> = container;
            let mut runtimes = vec![container];
            if let Some(vm) = &vm {
                let nameservers = network.nameservers();
                if default_vm {
                    crate::wiring::microvm::prepare(
                        vm,
                        &home,
                        &store,
                        "base",
                        "base",
                        &nameservers,
                        &progress,
                    )
                    .await?;
                }
                for name in &args.microvm_templates {
                    crate::wiring::microvm::prepare(
                        vm,
                        &home,
                        &store,
                        "base",
                        name,
                        &nameservers,
                        &progress,
                    )
                    .await?;
                }
                let vm: Arc<dyn Runtime> = vm.clone();
                if default_vm {
                    runtimes.insert(0, vm);
                } else {
                    runtimes.push(vm);
                }
            }
            (runtimes, Arc::new(network))
        }
    };
    let node = Node::start(config, store, runtimes, network).await?;
    let proxy = Proxy::new(node.clone(), args.domain.clone());
    let api = hearth_api::router(ApiState {
        node: node.clone(),
        domain: args.public_domain.clone(),
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, home = %args.home.display(), "hearth serving");
    eprintln!("hearth is ready on http://{}", args.listen);

    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (proxy, api) = (proxy.clone(), api.clone());
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (proxy, api) = (proxy.clone(), api.clone());
                    async move {
                        let req = req.map(Body::new);
                        let resp = match proxy.wants(&req) {
                            Some(target) => proxy.forward(target, req).await,
                            None => match api.oneshot(req).await {
                                Ok(r) => r,
                                Err(never) => match never {},
                            },
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http1().keep_alive(true);
                    if let Err(err) = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, error = %err, "connection ended with error");
                    }
                });
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    if let Some(runtime) = container_runtime
        && !args.keep_sandboxes
        && let Err(e) = runtime.remove_parent_cgroups()
    {
        tracing::warn!(error = %hearth_types::ErrorChain(&e), "cgroup parent stays");
    }
    if let Some(volume) = data_volume
        && !args.keep_sandboxes
        && let Err(e) = volume.unmount()
    {
        tracing::warn!(error = %hearth_types::ErrorChain(&e), "data volume stays mounted");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Mounts the btrfs data volume (sandbox state with per-sandbox disk limits, and
/// snapshots as copy-on-write copies of it) at `$HEARTH_HOME/data`, from a sparse
/// image under `$HEARTH_HOME`.
fn ensure_data_volume(
    config: &NodeConfig,
    size_gb: u64,
) -> anyhow::Result<hearth_runtime_container::DataVolume> {
    let image = config.home.join("data.btrfs");
    let size = if size_gb > 0 {
        size_gb << 30
    } else {
        let st = nix::sys::statvfs::statvfs(&config.home)?;
        let free = st.blocks_available() * st.fragment_size();
        (free / 10 * 8).clamp(1 << 30, 256 << 30)
    };
    hearth_runtime_container::ensure_data_volume(&config.data_dir(), &image, size).context(
        "failed to mount the sandbox data volume (use --no-disk-limits to run without disk limits)",
    )
}

/// The prefix of the instance's host-side slot interfaces. The pool matches its
/// interfaces by prefix, so instances need prefixes none of which is a prefix of
/// another: the default instance keeps `hv`, any other gets `h` + 6 hex digits of a
/// hash of its name (hex has no `v`, and equal lengths cannot nest).
fn ifname_prefix(instance: &str) -> String {
    use sha2::{Digest, Sha256};
    if instance == "hearth" {
        return "hv".to_owned();
    }
    let digest = Sha256::digest(instance.as_bytes());
    format!("h{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2])
}

/// The extra CAs sandboxes trust: `--ca-bundle`, else the host's locally added ones.
fn ca_bundle(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    if args.no_host_cas {
        return Ok(None);
    }
    if let Some(path) = &args.ca_bundle {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        return Ok(Some(pem));
    }
    let dir = std::path::Path::new("/usr/local/share/ca-certificates");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let mut pem = String::new();
    for p in &paths {
        if let Ok(text) = std::fs::read_to_string(p) {
            pem.push_str(&text);
            pem.push('\n');
        }
    }
    if !pem.is_empty() {
        tracing::info!(
            count = paths.len(),
            "sandboxes will trust the host's locally added CAs"
        );
    }
    Ok((!pem.is_empty()).then_some(pem))
}

/// The name keys registered from `HEARTH_API_KEY` get.
const ENV_KEY_NAME: &str = "HEARTH_API_KEY";

fn register_keys(store: &Store, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        let rec = hearth_api::auth::register_key(store, key, ENV_KEY_NAME)?;
        tracing::info!(key = %rec.mask, "registered API key from the environment");
    }
    // Keys from the environment belong to automation (tests, `hearth bench`), which
    // may well have used this home first: they do not make it set up.
    let from_env = |k: &hearth_store::ApiKeyRecord| k.name == ENV_KEY_NAME;
    if store.list_api_keys()?.iter().all(from_env) {
        // First start: make a key so the service is usable, and say where it is.
        let key = hearth_api::auth::generate_key();
        hearth_api::auth::register_key(store, &key, "first-start")?;
        let path = args.home.join("api-key");
        write_secret(&path, &key)?;
        eprintln!("created an API key (saved to {}): {key}", path.display());
    }
    Ok(())
}

fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

fn register_sim_template(store: &Store) -> anyhow::Result<()> {
    store.upsert_template(&hearth_store::TemplateRecord {
        id: "base".into(),
        kind: hearth_store::TemplateKind::Template,
        build_id: "sim".into(),
        names: vec!["base".into()],
        runtime: None,
        cpu_count: 1,
        memory_mb: 512,
        disk_mb: 1024,
        envd_version: hearth_node::ENVD_VERSION.into(),
        artifacts: serde_json::json!({}),
        source_sandbox: None,
        created_at: time::OffsetDateTime::now_utc(),
    })?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) still applies; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_instance_keeps_the_historic_interface_prefix() {
        assert_eq!(ifname_prefix("hearth"), "hv");
    }

    #[test]
    fn instance_prefixes_never_nest() {
        let names = [
            "hearth", "hct1", "hct12", "hct123", "a", "b", "test", "testx",
        ];
        let prefixes: Vec<String> = names.iter().map(|n| ifname_prefix(n)).collect();
        for (i, a) in prefixes.iter().enumerate() {
            assert!(a.len() <= 8, "{a} is too long for an interface prefix");
            for (j, b) in prefixes.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a.as_str()), "{a} is a prefix of {b}");
                }
            }
        }
    }
}
