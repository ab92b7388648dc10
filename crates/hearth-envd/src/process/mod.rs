// SPDX-License-Identifier: Apache-2.0
//! The `process.Process` Connect service (§2.3 of the protocol reference).
//!
//! - [`table`]: the registry of running and recently ended processes;
//! - [`spawn`]: starting one (identity, session, stdio, reaper registration);
//! - [`output`]: the per-process pump that reads, chunks and fans out output;
//! - [`stream`]: one attached stream with its start, keepalives and deadline;
//! - [`input`], [`pty`], [`signal`], [`env`], [`exit`]: the smaller pieces.
//!
//! A process outlives the stream that started it: closing a stream only detaches
//! it, a `Connect` attaches another, and only a signal, the `Start` deadline
//! (`Connect-Timeout-Ms`) or its own exit ends it.

mod env;
mod exit;
mod input;
mod output;
mod pty;
mod signal;
mod spawn;
mod stream;
mod table;

pub use table::ProcessTable;

use crate::error::EnvdError;
use crate::state::Envd;
use connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::StreamExt;
use hearth_envd_proto::process::*;
use hearth_sys::pty::WindowSize;
use spawn::StartSpec;
use std::sync::{Arc, OnceLock};
use stream::{EventStream, keepalive_interval};
use table::{Found, ProcHandle, ProcIo, Selector, replay};

/// Terminal size when a PTY request gives none.
const DEFAULT_PTY_SIZE: WindowSize = WindowSize { cols: 80, rows: 24 };

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

    fn start_process(
        &self,
        ctx: &RequestContext,
        req: StartRequest,
    ) -> Result<EventStream, EnvdError> {
        let state = &self.state;
        let user = state.user_from_headers(ctx.headers())?;
        let StartRequest {
            process,
            pty,
            tag,
            stdin,
            ..
        } = req;
        let config = process
            .into_option()
            .ok_or_else(|| EnvdError::InvalidArgument("process is required".to_owned()))?;
        env::validate(&config.envs)?;
        let cwd = state.resolve(config.cwd.as_deref().unwrap_or_default(), &user)?;
        if matches!(std::fs::metadata(&cwd), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            return Err(EnvdError::InvalidArgument(format!(
                "cwd '{}' does not exist",
                cwd.display()
            )));
        }
        let pty = pty.as_option().map(pty_size).transpose()?;
        let env = env::compose(envd_path(), &user, &state.env_vars(), &config.envs);
        let spawned = spawn::spawn(
            &state.children,
            StartSpec {
                config: &config,
                pty,
                // Absent means a pipe, for clients older than the field.
                stdin: stdin.unwrap_or(true),
                user: &user,
                cwd,
                env,
            },
        )?;
        let pid = spawned.pid;
        tracing::info!(
            pid,
            cmd = %config.cmd,
            user = %user.name,
            tag = ?tag,
            pty = pty.is_some(),
            "process started"
        );
        let (handle, rx) = ProcHandle::new(pid, tag, config, spawned.io, state.children.clone());
        state.processes.insert(handle.clone());
        let deadline = ctx.deadline().map(tokio::time::Instant::from_std);
        output::start(
            handle.clone(),
            spawned.outputs,
            spawned.exit,
            deadline,
            state.processes.clone(),
        );
        Ok(EventStream::new(
            pid,
            rx,
            keepalive_interval(ctx.headers()),
            deadline,
            Some(handle),
        ))
    }

    fn attach(&self, ctx: &RequestContext, req: &ConnectRequest) -> Result<EventStream, EnvdError> {
        let selector = Selector::from_wire(req.process.as_option())?;
        let (pid, rx) = match self.state.processes.find(&selector)? {
            Found::Running(h) => (h.pid, h.subscribe()),
            Found::Ended { pid, end } => (pid, replay(end)),
        };
        Ok(EventStream::new(
            pid,
            rx,
            keepalive_interval(ctx.headers()),
            ctx.deadline().map(tokio::time::Instant::from_std),
            None,
        ))
    }

    fn running(&self, selector: Option<&ProcessSelector>) -> Result<Arc<ProcHandle>, EnvdError> {
        self.state
            .processes
            .running(&Selector::from_wire(selector)?)
    }

    async fn stream_input_inner(
        &self,
        mut requests: InboundStream<StreamInputRequest>,
    ) -> Result<(), ConnectError> {
        use stream_input_request::Event as In;
        let mut target: Option<Arc<ProcHandle>> = None;
        while let Some(msg) = requests.next().await {
            match msg?.to_owned_message().event {
                Some(In::Start(start)) => target = Some(self.running(start.process.as_option())?),
                Some(In::Data(data)) => {
                    let handle = target.as_ref().ok_or_else(|| {
                        EnvdError::InvalidArgument(
                            "the first input message must be start".to_owned(),
                        )
                    })?;
                    input::write(handle, data.input.as_option()).await?;
                }
                Some(In::Keepalive(_)) => {}
                None => {
                    return Err(EnvdError::InvalidArgument(
                        "input message without an event".to_owned(),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// envd's own `PATH`, read once (as PID 1 there is none).
fn envd_path() -> Option<&'static str> {
    static PATH: OnceLock<Option<String>> = OnceLock::new();
    PATH.get_or_init(|| std::env::var("PATH").ok()).as_deref()
}

/// The terminal size asked for by `pty`.
fn pty_size(pty: &PTY) -> Result<WindowSize, EnvdError> {
    let Some(size) = pty.size.as_option() else {
        return Ok(DEFAULT_PTY_SIZE);
    };
    let dim = |v: u32, what: &str| {
        u16::try_from(v).map_err(|_| {
            EnvdError::InvalidArgument(format!("pty {what} {v} is larger than {}", u16::MAX))
        })
    };
    Ok(WindowSize {
        cols: dim(size.cols, "cols")?,
        rows: dim(size.rows, "rows")?,
    })
}

fn wrap<T>(stream: EventStream, f: fn(ProcessEvent) -> T) -> ServiceStream<T>
where
    T: Send + 'static,
{
    Box::pin(stream.map(move |r| r.map(f)))
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        Response::ok(ListResponse {
            processes: self.state.processes.list(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let stream = self.attach(&ctx, &request.to_owned_message())?;
        Ok(Response::new(wrap(stream, |event| ConnectResponse {
            event: event.into(),
            ..Default::default()
        })))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let stream = self.start_process(&ctx, request.to_owned_message())?;
        Ok(Response::new(wrap(stream, |event| StartResponse {
            event: event.into(),
            ..Default::default()
        })))
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = request.to_owned_message();
        let handle = self.running(req.process.as_option())?;
        let ProcIo::Pty(master) = &handle.io else {
            return Err(EnvdError::InvalidArgument(format!(
                "process {} has no pty to resize",
                handle.pid
            ))
            .into());
        };
        let Some(pty) = req.pty.as_option() else {
            return Err(EnvdError::InvalidArgument("pty is required".to_owned()).into());
        };
        master.resize(pty_size(pty)?).map_err(|err| {
            EnvdError::io(
                format!("failed to resize the pty of process {}", handle.pid),
                err,
            )
        })?;
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        requests: InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        self.stream_input_inner(requests).await?;
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let req = request.to_owned_message();
        let handle = self.running(req.process.as_option())?;
        input::write(&handle, req.input.as_option()).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let req = request.to_owned_message();
        let signal = signal::from_wire(req.signal)?;
        let handle = self.running(req.process.as_option())?;
        handle.signal(signal)?;
        tracing::info!(pid = handle.pid, %signal, "signal sent");
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let req = request.to_owned_message();
        let handle = self.running(req.process.as_option())?;
        input::close_stdin(&handle).await?;
        Response::ok(CloseStdinResponse::default())
    }
}
