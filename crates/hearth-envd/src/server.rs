// SPDX-License-Identifier: Apache-2.0
//! The HTTP/1.1 server: accept loop, connection settings and the router.
//!
//! Every concurrent stream of an SDK is its own keep-alive connection, so connections
//! are cheap tasks. `TCP_NODELAY` is set because stream events are small and must
//! reach the client as they are produced; hyper writes each body frame as a chunk.

use crate::state::Envd;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

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
        let service = TowerToHyperService::new(app.clone());
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
