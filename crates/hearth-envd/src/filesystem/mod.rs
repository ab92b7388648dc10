// SPDX-License-Identifier: Apache-2.0
//! The `filesystem.Filesystem` Connect service (§2.4).

use crate::state::Envd;
use connectrpc::{ConnectError, RequestContext, ServiceRequest, ServiceResult, ServiceStream};
use hearth_envd_proto::filesystem::*;
use std::sync::Arc;

/// Polling watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`), by id.
#[derive(Debug, Default)]
pub struct WatcherTable {}

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
}

fn todo_err() -> ConnectError {
    ConnectError::unimplemented("not implemented yet")
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let _ = &self.state;
        Err(todo_err())
    }
    async fn make_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        Err(todo_err())
    }
    async fn r#move(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        Err(todo_err())
    }
    async fn list_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        Err(todo_err())
    }
    async fn remove(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        Err(todo_err())
    }
    async fn watch_dir(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        Err(todo_err())
    }
    async fn create_watcher(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        Err(todo_err())
    }
    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        Err(todo_err())
    }
    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        Err(todo_err())
    }
}
