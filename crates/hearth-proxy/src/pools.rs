// SPDX-License-Identifier: Apache-2.0
//! Connection pools to sandboxes: one per running incarnation of each sandbox.
//!
//! A kept-alive connection belongs to the instance it was opened to. One pool shared
//! by every sandbox, keyed by address, hands a connection to whatever runs at that
//! address next: a microVM that is killed or paused sends no FIN, so its idle
//! connections look alive, and the next instance at its slot address (another sandbox,
//! or the same one resumed by a cold boot) answers the first request on one with a
//! reset. Here each incarnation (a `Route::Running`, identified by its cancellation
//! token) has its own pool, dropped with its idle connections when the incarnation
//! ends; in-flight requests keep their connections until they finish.

use hearth_types::SandboxId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio_util::sync::CancellationToken;

/// The pools (of type `T`, a cheaply cloned client) of the running sandboxes.
#[derive(Debug)]
pub(crate) struct Pools<T> {
    by_sandbox: Mutex<HashMap<SandboxId, Incarnation<T>>>,
}

#[derive(Debug)]
struct Incarnation<T> {
    /// Cancelled when this incarnation ends (the node replaces its route).
    ended: CancellationToken,
    client: T,
}

impl<T: Clone + Send + 'static> Pools<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            by_sandbox: Mutex::new(HashMap::new()),
        })
    }

    /// The pool of sandbox `id`'s current incarnation (whose route carries `ended`),
    /// made by `make` if there is none yet. A route is never replaced by another
    /// running one without a non-running route in between, so an uncancelled stored
    /// token is the current incarnation's.
    pub(crate) fn get(
        self: &Arc<Self>,
        id: &SandboxId,
        ended: &CancellationToken,
        make: impl FnOnce() -> T,
    ) -> T {
        let mut map = self.by_sandbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = map.get(id)
            && !i.ended.is_cancelled()
        {
            return i.client.clone();
        }
        let client = make();
        map.insert(
            id.clone(),
            Incarnation {
                ended: ended.clone(),
                client: client.clone(),
            },
        );
        drop(map);
        tokio::spawn(forget_when_ended(
            Arc::downgrade(self),
            id.clone(),
            ended.clone(),
        ));
        client
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Drops the incarnation's pool (closing its idle connections) once it has ended,
/// unless a newer incarnation has taken its place already.
async fn forget_when_ended<T>(pools: Weak<Pools<T>>, id: SandboxId, ended: CancellationToken) {
    ended.cancelled().await;
    let Some(pools) = pools.upgrade() else {
        return;
    };
    let mut map = pools.by_sandbox.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(&id).is_some_and(|i| i.ended.is_cancelled()) {
        map.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_incarnation_keeps_its_pool_and_the_next_gets_a_fresh_one() {
        let pools = Pools::new();
        let id = SandboxId::generate();
        let first = CancellationToken::new();
        assert_eq!(pools.get(&id, &first, || 1), 1);
        assert_eq!(
            pools.get(&id, &first, || 2),
            1,
            "same incarnation, same pool"
        );
        first.cancel();
        let second = CancellationToken::new();
        assert_eq!(
            pools.get(&id, &second, || 3),
            3,
            "a new incarnation, a new pool"
        );
        assert_eq!(pools.get(&id, &second, || 4), 3);
        // The first one's watcher must not drop the second one's pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pools.len(), 1);
        assert_eq!(pools.get(&id, &second, || 5), 3);
    }

    #[tokio::test]
    async fn an_ended_incarnation_is_forgotten() {
        let pools = Pools::new();
        let ended = CancellationToken::new();
        pools.get(&SandboxId::generate(), &ended, || ());
        pools.get(&SandboxId::generate(), &CancellationToken::new(), || ());
        assert_eq!(pools.len(), 2);
        ended.cancel();
        for _ in 0..100 {
            if pools.len() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the ended incarnation's pool was kept");
    }
}
