// SPDX-License-Identifier: Apache-2.0
//! `hearth_node::Network` over `hearth_net::SlotPool`.
//!
//! The pool's calls block (netlink, `nft`); they run on the blocking pool. The adapter
//! keeps the pool's `Slot` of every slot in use, because the pool's operations take
//! its own type while the node only stores the runtime-facing `NetSlot`.

use async_trait::async_trait;
use hearth_net::{
    Adopt, EgressPolicy as NetPolicy, Ipv4Cidr, PoolConfig, Slot, SlotKind, SlotPool,
};
use hearth_node::{EgressPolicy, Network, NetworkError};
use hearth_runtime::{NetSlot, RuntimeKind};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// The production network.
#[derive(Debug)]
pub struct SlotNetwork {
    pool: Arc<SlotPool>,
    in_use: Mutex<HashMap<u32, Slot>>,
}

fn err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> NetworkError {
    NetworkError {
        context: context.to_owned(),
        source: Some(Box::new(e)),
    }
}

fn kind_of(k: RuntimeKind) -> SlotKind {
    match k {
        RuntimeKind::Container => SlotKind::Container,
        RuntimeKind::Microvm => SlotKind::MicroVm,
    }
}

fn parse_cidrs(list: &[String]) -> Vec<Ipv4Cidr> {
    list.iter()
        .filter_map(|t| {
            let (addr, len) = t.split_once('/').unwrap_or((t.as_str(), "32"));
            let addr: Ipv4Addr = addr.parse().ok()?;
            Ipv4Cidr::new(addr, len.parse().ok()?)
        })
        .collect()
}

/// The pool's policy for the node's.
pub fn net_policy(p: &EgressPolicy) -> NetPolicy {
    NetPolicy::from_e2b(
        p.internet,
        parse_cidrs(&p.allow_out),
        parse_cidrs(&p.deny_out),
    )
}

fn to_net_slot(s: &Slot) -> NetSlot {
    NetSlot {
        index: s.index,
        kind: match s.kind {
            SlotKind::Container => RuntimeKind::Container,
            SlotKind::MicroVm => RuntimeKind::Microvm,
        },
        host_addr: s.host_addr,
        guest_netns: s.guest_netns.clone(),
        router_netns: s.router_netns.clone(),
        tap: s.tap.clone(),
        mac: s.mac_string(),
        nameservers: s.nameservers.clone(),
    }
}

impl SlotNetwork {
    /// Starts the pool, re-adopting `adopt` (slots of sandboxes that may still run).
    /// Returns the network and the indices of adopted slots that were lost.
    pub async fn start(
        config: PoolConfig,
        adopt: Vec<(NetSlot, EgressPolicy)>,
    ) -> anyhow::Result<(Self, Vec<u32>)> {
        let adopt: Vec<Adopt> = adopt
            .iter()
            .map(|(slot, policy)| Adopt {
                index: slot.index,
                kind: kind_of(slot.kind),
                policy: net_policy(policy),
            })
            .collect();
        let (pool, report) =
            tokio::task::spawn_blocking(move || SlotPool::start(config, adopt)).await??;
        let in_use = report.slots.into_iter().map(|s| (s.index, s)).collect();
        Ok((
            Self {
                pool: Arc::new(pool),
                in_use: Mutex::new(in_use),
            },
            report.lost,
        ))
    }

    /// The nameservers sandboxes use.
    pub fn nameservers(&self) -> Vec<Ipv4Addr> {
        self.pool.nameservers().to_vec()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Network for SlotNetwork {
    async fn acquire(
        &self,
        kind: RuntimeKind,
        policy: &EgressPolicy,
    ) -> Result<NetSlot, NetworkError> {
        let pool = self.pool.clone();
        let policy = net_policy(policy);
        let slot = tokio::task::spawn_blocking(move || pool.acquire(kind_of(kind), policy))
            .await
            .map_err(|e| err("acquire task failed", e))?
            .map_err(|e| err("failed to acquire a network slot", e))?;
        let net = to_net_slot(&slot);
        self.slots().insert(slot.index, slot);
        Ok(net)
    }

    async fn set_policy(&self, slot: &NetSlot, policy: &EgressPolicy) -> Result<(), NetworkError> {
        let pool = self.pool.clone();
        let policy = net_policy(policy);
        let index = slot.index;
        // The pool needs its own Slot; take it out for the call and put it back.
        let Some(s) = self.slots().remove(&index) else {
            return Err(NetworkError {
                context: format!("slot {index} is not in use"),
                source: None,
            });
        };
        let (s, res) = tokio::task::spawn_blocking(move || {
            let r = pool.set_policy(&s, policy);
            (s, r)
        })
        .await
        .map_err(|e| err("set_policy task failed", e))?;
        self.slots().insert(index, s);
        res.map_err(|e| err("failed to apply the egress policy", e))
    }

    async fn release(&self, slot: NetSlot) -> Result<(), NetworkError> {
        let Some(s) = self.slots().remove(&slot.index) else {
            return Ok(());
        };
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.release(s))
            .await
            .map_err(|e| err("release task failed", e))?
            .map_err(|e| err("failed to release a network slot", e))
    }

    async fn shutdown(&self, keep_in_use: bool) -> Result<(), NetworkError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            if keep_in_use {
                pool.detach()
            } else {
                pool.shutdown()
            }
        })
        .await
        .map_err(|e| err("shutdown task failed", e))?
        .map_err(|e| err("failed to shut the network down", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_maps_internet_off_to_deny_all() {
        let p = net_policy(&EgressPolicy {
            internet: false,
            allow_out: vec!["1.2.3.4".into()],
            deny_out: vec![],
        });
        assert_eq!(p.allow_out.len(), 1);
        assert_eq!(p.allow_out[0].prefix_len(), 32);
        assert!(p.deny_out.iter().any(|c| c.prefix_len() == 0));
    }
}
