// SPDX-License-Identifier: Apache-2.0
//! The slot pool: warm slots made ahead of time, handed out and scrubbed for reuse.
//!
//! Two background threads serve the pool. The *refiller* keeps `warm_*` slots of each
//! kind ready; the *cleaner* scrubs released slots (policy elements removed, conntrack
//! flushed, layout verified) before they go back, and destroys any that fail. Neither
//! holds the pool lock while working, so `acquire` is a queue pop plus, for a non-default
//! policy, one `nft` run; when the queue is empty, `acquire` builds a slot itself rather
//! than waiting for the refiller.
//!
//! All calls block (netlink, `nft`); call them from a blocking context
//! (`tokio::task::spawn_blocking`). The calling thread must be in the host's network
//! namespace.

use crate::config::{ConfigError, Layout, PoolConfig, SlotKind};
use crate::netlink::{NetlinkError, Socket};
use crate::nft::{self, HostTable, PolicyOp};
use crate::policy::EgressPolicy;
use crate::slot::{self, Slot, SlotError};
use crate::{host, resolv, rtnl};
use hearth_sys::cmd::CmdError;
use hearth_sys::netns::{self, NetnsError};
use hearth_types::ErrorChain;
use nix::sys::socket::SockProtocol;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the refiller waits after a failed creation before trying again.
const REFILL_BACKOFF: Duration = Duration::from_secs(1);
/// How long `acquire` waits for a slot still being built or scrubbed when every index
/// is taken.
const EXHAUSTED_WAIT: Duration = Duration::from_secs(10);

/// A failed pool operation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The namespace directory could not be prepared.
    #[error("failed to prepare the namespace directory")]
    PrepareNetnsDir(#[source] NetnsError),
    /// IPv4 forwarding could not be switched.
    #[error("failed to manage host forwarding")]
    Forwarding(#[source] host::HostError),
    /// The host nftables table could not be installed or removed.
    #[error("failed to update host nftables table {table}")]
    HostTable {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        err: CmdError,
    },
    /// Existing slots could not be listed.
    #[error("failed to list existing slots in {what}")]
    List {
        /// What was listed.
        what: String,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Host links could not be listed.
    #[error("failed to list host links")]
    ListLinks(#[source] NetlinkError),
    /// A background thread could not be started.
    #[error("failed to start thread {name}")]
    SpawnWorker {
        /// The thread's name.
        name: &'static str,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// Every slot index is taken.
    #[error("all {max} network slots are in use")]
    Exhausted {
        /// The pool's slot limit.
        max: u32,
    },
    /// The pool was shut down.
    #[error("the slot pool is shut down")]
    ShutDown,
    /// The slot is not one this pool handed out (or it was released already).
    #[error("slot {index} is not in use")]
    NotInUse {
        /// The index.
        index: u32,
    },
    /// A slot could not be built, scrubbed or removed.
    #[error("slot operation failed")]
    Slot(#[source] SlotError),
    /// A slot's egress policy could not be applied.
    #[error("failed to apply the egress policy of slot {index}")]
    Policy {
        /// The slot.
        index: u32,
        /// The cause.
        #[source]
        err: CmdError,
    },
    /// Teardown finished but some parts could not be removed.
    #[error("{failures} teardown step(s) failed, the first")]
    Teardown {
        /// How many steps failed.
        failures: usize,
        /// The first failure.
        #[source]
        first: Box<PoolError>,
    },
}

/// A slot that outlived a previous run of the pool (its sandbox survived a restart).
#[derive(Debug, Clone)]
pub struct Adopt {
    /// The slot's index.
    pub index: u32,
    /// The slot's kind.
    pub kind: SlotKind,
    /// The sandbox's egress policy, re-installed in the fresh host table.
    pub policy: EgressPolicy,
}

/// The result of re-adopting slots at start.
#[derive(Debug, Default)]
pub struct AdoptReport {
    /// Slots found intact, now in use again.
    pub slots: Vec<Slot>,
    /// Indexes asked for whose slot was missing or broken; their remains were removed.
    pub lost: Vec<u32>,
}

/// A snapshot of the pool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Ready container slots.
    pub idle_containers: usize,
    /// Ready microVM slots.
    pub idle_microvms: usize,
    /// Slots handed out.
    pub in_use: usize,
    /// Released slots waiting to be scrubbed.
    pub cleaning: usize,
    /// Slots being built.
    pub creating: usize,
}

#[derive(Debug)]
struct Released {
    index: u32,
    kind: SlotKind,
    policy: EgressPolicy,
}

#[derive(Debug, Default)]
struct State {
    idle: [VecDeque<u32>; 2],
    in_use: HashMap<u32, (SlotKind, EgressPolicy)>,
    released: VecDeque<Released>,
    /// Warm slots being built by the refiller, by kind.
    creating: [usize; 2],
    /// Slots being built by `acquire` for its own caller.
    on_demand: usize,
    /// Every index the pool answers for: idle, in use, released, being built, or
    /// quarantined (its policy elements could not be removed).
    owned: BTreeSet<u32>,
    /// Released slots being scrubbed right now.
    scrubbing: usize,
    next_hint: u32,
    stopping: bool,
    shut_down: bool,
}

#[derive(Debug)]
struct Inner {
    layout: Layout,
    nameservers: Vec<Ipv4Addr>,
    state: Mutex<State>,
    /// Wakes the background threads (work to do, or stopping).
    wake: Condvar,
    /// Signals waiters of `wait_warm` and `wait_idle`.
    changed: Condvar,
    /// Serialises policy replacements so each sees the elements the last one left.
    policy_lock: Mutex<()>,
}

/// A pool of network slots. See the module docs.
#[derive(Debug)]
pub struct SlotPool {
    inner: Arc<Inner>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warm(&self, kind: SlotKind) -> usize {
        match kind {
            SlotKind::Container => self.layout.cfg.warm_containers,
            SlotKind::MicroVm => self.layout.cfg.warm_microvms,
        }
    }

    /// Reserves a free index, or `None` when every index is taken.
    fn allocate(&self, st: &mut State) -> Option<u32> {
        let max = self.layout.max_index;
        if st.owned.len() >= max as usize {
            return None;
        }
        let start = st.next_hint.clamp(1, max);
        let mut i = start;
        loop {
            if !st.owned.contains(&i) {
                st.owned.insert(i);
                st.next_hint = if i == max { 1 } else { i + 1 };
                return Some(i);
            }
            i = if i == max { 1 } else { i + 1 };
            if i == start {
                return None;
            }
        }
    }

    fn slot(&self, index: u32, kind: SlotKind) -> Slot {
        Slot::new(&self.layout.names(index), kind, self.nameservers.clone())
    }

    fn table(&self) -> &str {
        &self.layout.cfg.name
    }

    fn apply_policy(
        &self,
        index: u32,
        old: &EgressPolicy,
        new: &EgressPolicy,
    ) -> Result<(), PoolError> {
        if old == new {
            return Ok(());
        }
        let addr = self.layout.names(index).host_addr;
        let mut script = nft::policy_script(self.table(), addr, old, PolicyOp::Delete);
        script.push_str(&nft::policy_script(self.table(), addr, new, PolicyOp::Add));
        nft::apply(&script).map_err(|err| PoolError::Policy { index, err })
    }

    /// Builds a slot at a reserved index, for the warm queue or for an `acquire`; on
    /// failure the index is freed.
    fn build(&self, index: u32, kind: SlotKind, warm: bool) -> Result<(), PoolError> {
        let names = self.layout.names(index);
        let result = slot::create(&self.layout, &names, kind).map_err(PoolError::Slot);
        let mut st = self.lock();
        if warm {
            st.creating[kind.slot_index()] -= 1;
        } else {
            st.on_demand -= 1;
        }
        if result.is_err() {
            st.owned.remove(&index);
            self.changed.notify_all();
        }
        result
    }

    fn refill_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.stopping {
                return;
            }
            let need = [SlotKind::Container, SlotKind::MicroVm]
                .into_iter()
                .find(|&k| {
                    st.idle[k.slot_index()].len() + st.creating[k.slot_index()] < self.warm(k)
                });
            let Some(kind) = need else {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let Some(index) = self.allocate(&mut st) else {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            st.creating[kind.slot_index()] += 1;
            drop(st);
            let result = self.build(index, kind, true);
            st = self.lock();
            match result {
                Ok(()) => {
                    st.idle[kind.slot_index()].push_back(index);
                    self.changed.notify_all();
                }
                Err(e) => {
                    self.changed.notify_all();
                    tracing::warn!(slot = index, error = %ErrorChain(&e), "building a warm network slot failed");
                    st = self
                        .wake
                        .wait_timeout(st, REFILL_BACKOFF)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    fn clean_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.stopping {
                return;
            }
            let Some(rel) = st.released.pop_front() else {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            st.scrubbing += 1;
            drop(st);
            let outcome = self.scrub(&rel);
            st = self.lock();
            match outcome {
                Scrub::Clean => st.idle[rel.kind.slot_index()].push_back(rel.index),
                Scrub::Destroyed => {
                    st.owned.remove(&rel.index);
                }
                Scrub::Quarantined => {}
            }
            st.scrubbing -= 1;
            self.wake.notify_all();
            self.changed.notify_all();
        }
    }

    /// Makes a released slot fit for the next sandbox, or removes it.
    fn scrub(&self, rel: &Released) -> Scrub {
        let names = self.layout.names(rel.index);
        // Policy first: once its elements are gone the slot behaves like a fresh one, and
        // the conntrack flush after it catches flows the old policy let in.
        if let Err(e) = self.apply_policy(rel.index, &rel.policy, &EgressPolicy::default()) {
            tracing::error!(slot = rel.index, error = %ErrorChain(&e),
                "removing a released slot's policy failed; the slot is quarantined");
            let _ = slot::destroy(&names);
            return Scrub::Quarantined;
        }
        let checked = slot::flush_conntrack(&names).and_then(|()| slot::verify(&names, rel.kind));
        match checked {
            Ok(()) => Scrub::Clean,
            Err(e) => {
                tracing::warn!(slot = rel.index, error = %ErrorChain(&e),
                    "released network slot is not clean; destroying it");
                match slot::destroy(&names) {
                    Ok(()) => Scrub::Destroyed,
                    Err(e) => {
                        tracing::error!(slot = rel.index, error = %ErrorChain(&e),
                            "destroying a dirty network slot failed; the slot is quarantined");
                        Scrub::Quarantined
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scrub {
    Clean,
    Destroyed,
    Quarantined,
}

impl SlotPool {
    /// Starts a pool with nothing to re-adopt: every leftover slot of this pool's name
    /// from an earlier run is removed.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        Self::start(config, Vec::new()).map(|(pool, _)| pool)
    }

    /// Starts a pool, re-adopting the slots of sandboxes that survived a restart.
    ///
    /// In order: validate the configuration; turn on forwarding; atomically replace the
    /// host table (with the adopted slots' policies already in it, so they never run
    /// unfiltered); re-adopt the slots that are intact; remove every other leftover of
    /// this pool's name; start the background threads, which fill the warm queues.
    pub fn start(config: PoolConfig, adopt: Vec<Adopt>) -> Result<(Self, AdoptReport), PoolError> {
        let layout = config.validate()?;
        let cfg = &layout.cfg;
        let nameservers = match &cfg.dns_servers {
            Some(list) => list.clone(),
            None => resolv::host_nameservers(Path::new("/etc/resolv.conf")),
        };
        netns::prepare_dir(&cfg.netns_dir).map_err(PoolError::PrepareNetnsDir)?;
        let forwarded_before = host::enable_forwarding(&cfg.run_dir, &cfg.name, layout.max_index)
            .map_err(PoolError::Forwarding)?;

        let mut report = AdoptReport::default();
        let (adopt, out_of_range): (Vec<Adopt>, Vec<Adopt>) = adopt
            .into_iter()
            .map(|a| Adopt {
                policy: a.policy.normalized(),
                ..a
            })
            .partition(|a| (1..=layout.max_index).contains(&a.index));
        report.lost.extend(out_of_range.iter().map(|a| a.index));
        let policies: Vec<(Ipv4Addr, EgressPolicy)> = adopt
            .iter()
            .map(|a| (layout.names(a.index).host_addr, a.policy.clone()))
            .collect();
        let script = HostTable {
            layout: &layout,
            nameservers: &nameservers,
            contain_forwarding: !forwarded_before,
            policies: &policies,
        }
        .render();
        nft::apply(&script).map_err(|err| PoolError::HostTable {
            table: cfg.name.clone(),
            err,
        })?;

        let inner = Arc::new(Inner {
            layout,
            nameservers,
            state: Mutex::new(State {
                next_hint: 1,
                ..State::default()
            }),
            wake: Condvar::new(),
            changed: Condvar::new(),
            policy_lock: Mutex::new(()),
        });
        let pool = Self {
            inner,
            workers: Mutex::new(Vec::new()),
        };

        for a in adopt {
            let names = pool.inner.layout.names(a.index);
            let intact = slot::pinned(&names.router_ns)
                && (a.kind == SlotKind::MicroVm || slot::pinned(&names.guest_ns))
                && nix::net::if_::if_nametoindex(names.host_if.as_str()).is_ok();
            if intact {
                let mut st = pool.inner.lock();
                st.owned.insert(a.index);
                st.in_use.insert(a.index, (a.kind, a.policy));
                drop(st);
                report.slots.push(pool.inner.slot(a.index, a.kind));
            } else {
                // Its elements are in the table already: take them out with the remains.
                let _ = pool
                    .inner
                    .apply_policy(a.index, &a.policy, &EgressPolicy::default());
                let _ = slot::destroy(&names);
                report.lost.push(a.index);
            }
        }
        pool.reclaim_stale()?;

        let mut workers = pool.workers.lock().unwrap_or_else(|p| p.into_inner());
        for (name, job) in [
            ("hearth-net-refill", Inner::refill_loop as fn(&Inner)),
            ("hearth-net-clean", Inner::clean_loop as fn(&Inner)),
        ] {
            let inner = Arc::clone(&pool.inner);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || job(&inner))
                .map_err(|err| PoolError::SpawnWorker { name, err })?;
            workers.push(handle);
        }
        drop(workers);
        Ok((pool, report))
    }

    /// The nameservers sandboxes should use (also on every [`Slot`]).
    pub fn nameservers(&self) -> &[Ipv4Addr] {
        &self.inner.nameservers
    }

    /// The highest slot index this pool uses.
    pub fn max_index(&self) -> u32 {
        self.inner.layout.max_index
    }

    /// Hands out a slot of `kind` with `policy` installed. Takes a warm slot when one is
    /// ready, else builds one on the calling thread.
    pub fn acquire(&self, kind: SlotKind, policy: EgressPolicy) -> Result<Slot, PoolError> {
        let policy = policy.normalized();
        let inner = &self.inner;
        let mut st = inner.lock();
        let deadline = Instant::now() + EXHAUSTED_WAIT;
        let index = loop {
            if st.shut_down || st.stopping {
                return Err(PoolError::ShutDown);
            }
            if let Some(index) = st.idle[kind.slot_index()].pop_front() {
                inner.wake.notify_all();
                drop(st);
                break index;
            }
            if let Some(index) = inner.allocate(&mut st) {
                st.on_demand += 1;
                drop(st);
                inner.build(index, kind, false)?;
                break index;
            }
            // Every index is taken. An idle slot of the other kind gives up its index.
            let other = match kind {
                SlotKind::Container => SlotKind::MicroVm,
                SlotKind::MicroVm => SlotKind::Container,
            };
            if let Some(index) = st.idle[other.slot_index()].pop_front() {
                st.on_demand += 1;
                drop(st);
                if let Err(e) = slot::destroy(&inner.layout.names(index)) {
                    let mut st = inner.lock();
                    st.on_demand -= 1;
                    st.idle[other.slot_index()].push_back(index);
                    return Err(PoolError::Slot(e));
                }
                inner.build(index, kind, false)?;
                break index;
            }
            // One may also come back from a build or a scrub in flight.
            let pending =
                st.creating.iter().sum::<usize>() + st.on_demand + st.released.len() + st.scrubbing;
            let now = Instant::now();
            if pending == 0 || now >= deadline {
                return Err(PoolError::Exhausted {
                    max: inner.layout.max_index,
                });
            }
            st = inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        if let Err(e) = inner.apply_policy(index, &EgressPolicy::default(), &policy) {
            // The transaction is atomic: nothing was installed, the slot is still clean.
            let mut st = inner.lock();
            st.idle[kind.slot_index()].push_front(index);
            return Err(e);
        }
        inner.lock().in_use.insert(index, (kind, policy));
        Ok(inner.slot(index, kind))
    }

    /// Replaces the egress policy of a slot in use (E2B's `PUT /sandboxes/{id}/network`).
    /// Open connections of the sandbox are judged again by the new policy on their next
    /// packet; connections from the host (the proxy) are untouched.
    pub fn set_policy(&self, slot: &Slot, policy: EgressPolicy) -> Result<(), PoolError> {
        let policy = policy.normalized();
        let _serial = self
            .inner
            .policy_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = match self.inner.lock().in_use.get(&slot.index) {
            Some((_, p)) => p.clone(),
            None => return Err(PoolError::NotInUse { index: slot.index }),
        };
        self.inner.apply_policy(slot.index, &old, &policy)?;
        if let Some(entry) = self.inner.lock().in_use.get_mut(&slot.index) {
            entry.1 = policy;
        }
        slot::flush_egress_conntrack(&self.inner.layout.names(slot.index)).map_err(PoolError::Slot)
    }

    /// The egress policy installed for a slot in use.
    pub fn policy(&self, slot: &Slot) -> Option<EgressPolicy> {
        self.inner
            .lock()
            .in_use
            .get(&slot.index)
            .map(|(_, p)| p.clone())
    }

    /// Gives a slot back. Its sandbox must be gone (no process left in its namespaces).
    /// The slot is scrubbed in the background and reused, or destroyed if it is not clean.
    pub fn release(&self, slot: Slot) -> Result<(), PoolError> {
        let mut st = self.inner.lock();
        let Some((kind, policy)) = st.in_use.remove(&slot.index) else {
            return Err(PoolError::NotInUse { index: slot.index });
        };
        st.released.push_back(Released {
            index: slot.index,
            kind,
            policy,
        });
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let st = self.inner.lock();
        PoolStats {
            idle_containers: st.idle[0].len(),
            idle_microvms: st.idle[1].len(),
            in_use: st.in_use.len(),
            cleaning: st.released.len(),
            creating: st.creating.iter().sum::<usize>() + st.on_demand,
        }
    }

    /// Waits until the warm queues are full and no released slot awaits scrubbing;
    /// `false` on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        let mut st = inner.lock();
        loop {
            let warm = [SlotKind::Container, SlotKind::MicroVm]
                .into_iter()
                .all(|k| st.idle[k.slot_index()].len() >= inner.warm(k));
            if warm && st.released.is_empty() && st.scrubbing == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Removes every namespace and host link of this pool's name whose index the pool
    /// does not own: the leftovers of a run that crashed. Returns the indexes removed.
    pub fn reclaim_stale(&self) -> Result<Vec<u32>, PoolError> {
        let layout = &self.inner.layout;
        let mut found = BTreeSet::new();
        let dir = &layout.cfg.netns_dir;
        let entries = std::fs::read_dir(dir).map_err(|err| PoolError::List {
            what: dir.display().to_string(),
            err,
        })?;
        for entry in entries.flatten() {
            if let Some(i) = entry
                .file_name()
                .to_str()
                .and_then(|n| layout.index_of_netns(n))
            {
                found.insert(i);
            }
        }
        let mut sock = Socket::open(SockProtocol::NetlinkRoute).map_err(PoolError::ListLinks)?;
        for link in rtnl::dump_links(&mut sock).map_err(PoolError::ListLinks)? {
            if let Some(i) = layout.index_of_ifname(&link.name) {
                found.insert(i);
            }
        }
        let owned = self.inner.lock().owned.clone();
        let stale: Vec<u32> = found.difference(&owned).copied().collect();
        let mut first_err = None;
        let mut failures = 0;
        for &i in &stale {
            if let Err(e) = slot::destroy(&layout.names(i)) {
                failures += 1;
                first_err.get_or_insert(PoolError::Slot(e));
            }
        }
        match first_err {
            None => Ok(stale),
            Some(first) => Err(PoolError::Teardown {
                failures,
                first: Box::new(first),
            }),
        }
    }

    fn stop_workers(&self) {
        self.inner.lock().stopping = true;
        self.inner.wake.notify_all();
        let workers: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }

    /// Removes everything the pool created: every slot (in use or not), the host table,
    /// and its claim on IPv4 forwarding (restored by the last pool out). Idempotent.
    pub fn shutdown(&self) -> Result<(), PoolError> {
        self.stop_workers();
        let (indexes, was_down) = {
            let mut st = self.inner.lock();
            let was_down = std::mem::replace(&mut st.shut_down, true);
            st.idle = Default::default();
            st.in_use.clear();
            st.released.clear();
            (std::mem::take(&mut st.owned), was_down)
        };
        if was_down {
            return Ok(());
        }
        let cfg = &self.inner.layout.cfg;
        let mut errors: Vec<PoolError> = Vec::new();
        for i in indexes {
            if let Err(e) = slot::destroy(&self.inner.layout.names(i)) {
                errors.push(PoolError::Slot(e));
            }
        }
        if let Err(err) = nft::apply(&nft::delete_host_table(&cfg.name)) {
            errors.push(PoolError::HostTable {
                table: cfg.name.clone(),
                err,
            });
        }
        if let Err(e) = host::release_forwarding(&cfg.run_dir, &cfg.name) {
            errors.push(PoolError::Forwarding(e));
        }
        teardown_result(errors)
    }

    /// Stops the pool but leaves slots in use, the host table and forwarding in place,
    /// for a restart that re-adopts them ([`SlotPool::start`]). Idle and released slots
    /// are removed.
    pub fn detach(&self) -> Result<(), PoolError> {
        self.stop_workers();
        let (idle, released) = {
            let mut st = self.inner.lock();
            st.shut_down = true;
            let idle: Vec<u32> = st.idle.iter_mut().flat_map(|q| q.drain(..)).collect();
            let released: Vec<Released> = st.released.drain(..).collect();
            for i in idle.iter().chain(released.iter().map(|r| &r.index)) {
                st.owned.remove(i);
            }
            (idle, released)
        };
        let mut errors = Vec::new();
        for rel in &released {
            if let Err(e) =
                self.inner
                    .apply_policy(rel.index, &rel.policy, &EgressPolicy::default())
            {
                errors.push(e);
            }
        }
        for i in idle.into_iter().chain(released.iter().map(|r| r.index)) {
            if let Err(e) = slot::destroy(&self.inner.layout.names(i)) {
                errors.push(PoolError::Slot(e));
            }
        }
        teardown_result(errors)
    }
}

fn teardown_result(mut errors: Vec<PoolError>) -> Result<(), PoolError> {
    if errors.is_empty() {
        return Ok(());
    }
    let failures = errors.len();
    Err(PoolError::Teardown {
        failures,
        first: Box::new(errors.swap_remove(0)),
    })
}

impl Drop for SlotPool {
    /// Stops the background threads only: what the pool built stays, exactly as after a
    /// crash, for [`SlotPool::start`] to re-adopt or reclaim. Call
    /// [`SlotPool::shutdown`] or [`SlotPool::detach`] for an orderly end.
    fn drop(&mut self) {
        self.stop_workers();
    }
}
