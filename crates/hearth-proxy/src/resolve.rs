// SPDX-License-Identifier: Apache-2.0
//! Names for upstream connections, one per sandbox incarnation.
//!
//! The HTTP client pools keep-alive connections by host name. Slots are reused, and
//! a resumed sandbox may get another slot, so pooling by address would hand a new
//! sandbox a connection to its predecessor (dead, or worse, a different sandbox's
//! stack answering with resets). Every request therefore goes to
//! `<sandbox id>-<generation>.sandbox.invalid`, which this resolver maps to the
//! address of that very incarnation and to nothing once it is gone.

use hearth_node::{Node, Route};
use hearth_types::SandboxId;
use hyper_util::client::legacy::connect::dns::Name;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The suffix of upstream host names (`.invalid` can never resolve elsewhere).
pub(crate) const SUFFIX: &str = ".sandbox.invalid";

/// The upstream host name of one incarnation of a sandbox.
pub(crate) fn upstream_host(id: &SandboxId, generation: u64) -> String {
    format!("{id}-{generation}{SUFFIX}")
}

/// Resolves upstream host names through the node's routes.
#[derive(Debug, Clone)]
pub(crate) struct SandboxResolver {
    pub(crate) node: Node,
}

/// A name that is no (longer a) running sandbox incarnation.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a running sandbox")]
pub(crate) struct Unresolvable(String);

impl tower::Service<Name> for SandboxResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Unresolvable;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let result = resolve(&self.node, name.as_str());
        Box::pin(async move { result })
    }
}

fn resolve(node: &Node, name: &str) -> Result<std::vec::IntoIter<SocketAddr>, Unresolvable> {
    let fail = || Unresolvable(name.to_owned());
    let label = name.strip_suffix(SUFFIX).ok_or_else(fail)?;
    let (id, generation) = label.rsplit_once('-').ok_or_else(fail)?;
    let id = SandboxId::parse(id).map_err(|_| fail())?;
    let generation: u64 = generation.parse().map_err(|_| fail())?;
    match node.route(&id) {
        Route::Running {
            generation: g,
            host,
            ..
        } if g == generation => Ok(vec![SocketAddr::new(host, 0)].into_iter()),
        _ => Err(fail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_round_trip() {
        let id = SandboxId::parse("iabc123").unwrap();
        let host = upstream_host(&id, 42);
        assert_eq!(host, "iabc123-42.sandbox.invalid");
        let label = host.strip_suffix(SUFFIX).unwrap();
        assert_eq!(label.rsplit_once('-'), Some(("iabc123", "42")));
    }
}
