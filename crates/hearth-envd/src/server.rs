// SPDX-License-Identifier: Apache-2.0
//! The HTTP/1.1 server: accept loop, connection settings and the router.
//!
//! Every concurrent stream of an SDK is its own keep-alive connection, so connections
//! are cheap tasks. `TCP_NODELAY` is set because stream events are small and must
//! reach the client as they are produced; hyper writes each body frame as a chunk.
//!
//! Request bodies linger: when a handler answers without reading its whole body (a
//! full disk, an oversized message), the rest is read and discarded for a while
//! before the connection may close. Closing a socket with unread data makes the
//! kernel send a reset, and a client (or `hearth serve`'s proxy) still sending the
//! body then fails with EPIPE and usually loses the answer already sent.

use crate::state::Envd;
use axum::Router;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long an unfinished request body is still read after its handler dropped it.
const LINGER_TIME: Duration = Duration::from_secs(10);
/// How much of it is read at most.
const LINGER_BYTES: usize = 1 << 30;

/// Builds the whole application: plain endpoints, Connect services and auth.
pub fn router(state: Arc<Envd>) -> Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(crate::process::ProcessService::new(state.clone())))
        .add_service(Arc::new(crate::filesystem::FilesystemService::new(
            state.clone(),
        )));
    let limits = connectrpc::Limits::default()
        .with_max_request_body_size(state.config.max_unary_body)
        .with_max_message_size(state.config.max_unary_body);
    let connect = connectrpc::ConnectRpcService::new(connect).with_limits(limits);
    crate::http::routes()
        .fallback_service(connect)
        .layer(axum::middleware::from_fn(crate::auth::check_content_type))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ))
        .with_state(state)
}

/// Binds the listener and serves until the process ends.
pub async fn serve(state: Arc<Envd>) -> anyhow::Result<()> {
    let addr = SocketAddr::new(state.config.addr, state.config.port);
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, version = crate::ENVD_VERSION, "envd listening");
    serve_listener(listener, router(state)).await
}

/// Serves `app` on an already bound listener (used by tests and benchmarks).
pub async fn serve_listener(listener: TcpListener, app: Router) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning, keep serving.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            app.clone().oneshot(req.map(Lingering::new))
        });
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().keep_alive(true).half_close(false);
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, "connection ended with error");
            }
        });
    }
}

/// A request body that, dropped before its end, keeps being read (and discarded) in
/// the background for at most [`LINGER_TIME`] and [`LINGER_BYTES`].
struct Lingering {
    inner: Option<Incoming>,
}

impl Lingering {
    fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl Body for Lingering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

async fn drain(mut body: Incoming) {
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
            if seen > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read).await;
}
