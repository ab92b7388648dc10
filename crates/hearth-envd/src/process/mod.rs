// SPDX-License-Identifier: Apache-2.0
//! The `process.Process` Connect service (§2.3).

use crate::state::Envd;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use hearth_envd_proto::process::*;
use std::sync::Arc;

/// Processes started through the service, by pid.
#[derive(Debug, Default)]
pub struct ProcessTable {}

impl ProcessTable {
    /// Sends `signal` to every running process's process group.
    pub fn signal_all(&self, _signal: nix::sys::signal::Signal) {}

    /// Whether any started process is still running.
    pub fn any_running(&self) -> bool {
        false
    }
}

/// The service implementation.
#[derive(Debug)]
pub struct ProcessService {
    state: Arc<Envd>,
}

impl ProcessService {
    /// A service over `state`.
    pub fn new(state: Arc<Envd>) -> Self {
        Self { state }
    }
}

fn todo_err() -> ConnectError {
    ConnectError::unimplemented("not implemented yet")
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let _ = &self.state;
        Err(todo_err())
    }

    async fn connect(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        Err(todo_err())
    }

    async fn start(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        Err(todo_err())
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        Err(todo_err())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        _requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        Err(todo_err())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        Err(todo_err())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        Err(todo_err())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let _ = Response::ok(CloseStdinResponse::default());
        Err(todo_err())
    }
}
