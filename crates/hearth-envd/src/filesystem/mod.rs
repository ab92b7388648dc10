// SPDX-License-Identifier: Apache-2.0
//! The `filesystem.Filesystem` Connect service (§2.4).
//!
//! Every RPC acts as the request's user (`Authorization: Basic`, else the default
//! user): relative paths and `~` resolve against that user's home (or the default
//! workdir) and what envd creates belongs to that user. Filesystem calls block, so
//! each RPC runs them on the blocking pool. See [`entry`] for what an `EntryInfo`
//! holds and [`watch`] for the watch semantics and limits.

pub mod entry;
pub mod list;
pub mod metadata;
pub mod netfs;
pub mod ops;
pub mod watch;

pub use watch::WatcherTable;

use crate::error::EnvdError;
use crate::state::Envd;
use crate::users::User;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use hearth_envd_proto::filesystem::*;
use std::path::PathBuf;
use std::sync::Arc;

/// The service implementation.
#[derive(Debug)]
pub struct FilesystemService {
    state: Arc<Envd>,
}

impl FilesystemService {
    /// A service over `state`.
    pub fn new(state: Arc<Envd>) -> Self {
        Self { state }
    }

    /// The request's user and `path` resolved for them.
    fn user_and_path(
        &self,
        ctx: &RequestContext,
        path: &str,
    ) -> Result<(User, PathBuf), EnvdError> {
        let user = self.state.user_from_headers(ctx.headers())?;
        let path = self.state.resolve(path, &user)?;
        Ok((user, path))
    }
}

/// What a `WatchDir` or `CreateWatcher` request asks for.
struct WatchRequest {
    path: String,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
}

/// Validates a watch request and starts the inotify watch (blocking: a recursive
/// watch walks the tree).
fn start_watch(
    state: Arc<Envd>,
    headers: &http::HeaderMap,
    req: WatchRequest,
) -> Result<watch::Watch, EnvdError> {
    let user = state.user_from_headers(headers)?;
    let root = state.resolve(&req.path, &user)?;
    let meta = std::fs::metadata(&root).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            EnvdError::NotFound(format!("path {} not found", root.display()))
        }
        _ => EnvdError::io(format!("error statting path {}", root.display()), err),
    })?;
    if !meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path {} not a directory",
            root.display()
        )));
    }
    let network = netfs::is_network_mount(&root).map_err(|err| {
        EnvdError::io(
            format!("error checking mount status of {}", root.display()),
            err,
        )
    })?;
    if network && !req.allow_network_mounts {
        return Err(EnvdError::InvalidArgument(format!(
            "cannot watch path on network filesystem: {}",
            root.display()
        )));
    }
    state.watchers.evict_idle(watch::IDLE_EVICTION);
    watch::Watch::start(
        state,
        watch::WatchSpec {
            root,
            recursive: req.recursive,
            include_entry: req.include_entry,
        },
    )
}

/// Runs `f` on the blocking pool and converts its error for the RPC.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnvdError> + Send + 'static,
) -> Result<T, ConnectError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ConnectError::from),
        Err(err) => Err(EnvdError::Internal(format!("filesystem task failed: {err}")).into()),
    }
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let (_, path) = self.user_and_path(&ctx, r.path)?;
        let state = self.state.clone();
        let entry = blocking(move || entry::entry_info(&state.users, &path)).await?;
        Ok(Response::new(StatResponse {
            entry: entry.into(),
            ..Default::default()
        }))
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let (user, path) = self.user_and_path(&ctx, r.path)?;
        let state = self.state.clone();
        let entry = blocking(move || ops::make_dir(&state.users, &user, &path)).await?;
        Ok(Response::new(MakeDirResponse {
            entry: entry.into(),
            ..Default::default()
        }))
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let (user, source) = self.user_and_path(&ctx, r.source)?;
        let destination = self.state.resolve(r.destination, &user)?;
        let state = self.state.clone();
        let entry =
            blocking(move || ops::rename(&state.users, &user, &source, &destination)).await?;
        Ok(Response::new(MoveResponse {
            entry: entry.into(),
            ..Default::default()
        }))
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let (_, path) = self.user_and_path(&ctx, r.path)?;
        let depth = r.depth;
        let state = self.state.clone();
        let entries = blocking(move || list::list_dir(&state.users, &path, depth)).await?;
        Ok(Response::new(ListDirResponse {
            entries,
            ..Default::default()
        }))
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let (_, path) = self.user_and_path(&ctx, r.path)?;
        blocking(move || ops::remove(&path)).await?;
        Ok(Response::new(RemoveResponse::default()))
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let req = WatchRequest {
            path: r.path.to_owned(),
            recursive: r.recursive,
            include_entry: r.include_entry,
            allow_network_mounts: r.allow_network_mounts,
        };
        let state = self.state.clone();
        let keepalive = watch::keepalive_interval(ctx.headers());
        let watch = blocking(move || start_watch(state, ctx.headers(), req)).await?;
        Response::stream_ok(watch::stream(watch, keepalive))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let req = WatchRequest {
            path: r.path.to_owned(),
            recursive: r.recursive,
            include_entry: r.include_entry,
            allow_network_mounts: r.allow_network_mounts,
        };
        let state = self.state.clone();
        let watch = blocking(move || start_watch(state, ctx.headers(), req)).await?;
        let watcher_id = self.state.watchers.create(watch);
        Ok(Response::new(CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        }))
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        let events = self.state.watchers.take_events(r.watcher_id)?;
        Ok(Response::new(GetWatcherEventsResponse {
            events,
            ..Default::default()
        }))
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        self.state.watchers.remove(r.watcher_id)?;
        Ok(Response::new(RemoveWatcherResponse::default()))
    }
}
