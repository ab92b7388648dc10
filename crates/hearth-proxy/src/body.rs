// SPDX-License-Identifier: Apache-2.0
//! A response body that ends with an error when its sandbox goes away.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Forwards `inner` until `cancel` fires, then fails the body, which makes hyper
/// abort the client connection: the client sees its stream cut, not a hang.
pub(crate) struct Cancellable {
    inner: Incoming,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Cancellable {
    pub(crate) fn new(inner: Incoming, cancel: CancellationToken) -> Self {
        Self {
            inner,
            cancelled: Box::pin(cancel.cancelled_owned()),
        }
    }
}

/// Why a proxied body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyBodyError {
    /// The sandbox was killed or paused.
    #[error("the sandbox went away")]
    SandboxGone,
    /// The upstream connection failed.
    #[error("upstream body failed")]
    Upstream(#[source] hyper::Error),
}

impl Body for Cancellable {
    type Data = Bytes;
    type Error = ProxyBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(ProxyBodyError::SandboxGone)));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(ProxyBodyError::Upstream)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
