// SPDX-License-Identifier: Apache-2.0
//! The registry of started processes: running ones by pid, and the `end` events of
//! recently ended ones so a late `Connect` can still learn how they ended.
//!
//! Each running process has one [`ProcHandle`]: its identity, its input side, and
//! its subscribers (one bounded queue per attached stream). The output pump
//! ([`super::output`]) is the only producer into those queues; streams are the
//! consumers. Lock order: the table before a handle's subscriber list.

use super::pty::PtyMaster;
use crate::error::EnvdError;
use crate::reaper::Children;
use bytes::Bytes;
use hearth_envd_proto::process::process_event::EndEvent;
use hearth_envd_proto::process::process_selector::Selector as WireSelector;
use hearth_envd_proto::process::{ProcessConfig, ProcessInfo, ProcessSelector};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// Chunks a subscriber may have queued before the process's output waits for it.
pub(crate) const SUBSCRIBER_QUEUE: usize = 32;
/// How many ended processes are remembered for `Connect`.
const ENDED_KEPT: usize = 128;
/// How long an ended process is remembered for `Connect`.
const ENDED_TTL: Duration = Duration::from_secs(600);

/// One piece of what a process produced, or its end.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// A chunk of standard output.
    Stdout(Bytes),
    /// A chunk of standard error.
    Stderr(Bytes),
    /// A chunk of terminal output.
    Pty(Bytes),
    /// The process ended; nothing follows.
    End(EndEvent),
}

/// What one attached stream receives.
pub(crate) type Subscription = mpsc::Receiver<Output>;

/// A subscription that only delivers `end` (for a process that already ended).
pub(crate) fn replay(end: EndEvent) -> Subscription {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Output::End(end));
    rx
}

/// How input reaches a process.
#[derive(Debug)]
pub(crate) enum ProcIo {
    /// Plain pipes; `stdin` is `None` once closed or when never enabled.
    Pipes {
        /// The write end of the process's stdin pipe.
        stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    },
    /// A pseudo-terminal: input is typed into it.
    Pty(Arc<PtyMaster>),
}

#[derive(Debug, Default)]
struct Subscribers {
    queues: Vec<mpsc::Sender<Output>>,
    end: Option<EndEvent>,
}

/// One running process.
#[derive(Debug)]
pub(crate) struct ProcHandle {
    /// Its pid, which is also its process group and session id.
    pub(crate) pid: u32,
    /// The tag it was started with.
    pub(crate) tag: Option<String>,
    /// The configuration it was started with (for `List`).
    pub(crate) config: ProcessConfig,
    /// Its input side.
    pub(crate) io: ProcIo,
    started: Instant,
    children: Arc<Children>,
    subscribers: Mutex<Subscribers>,
}

impl ProcHandle {
    /// A handle with one subscriber already attached (the `Start` stream), so no
    /// output can be produced before someone listens.
    pub(crate) fn new(
        pid: u32,
        tag: Option<String>,
        config: ProcessConfig,
        io: ProcIo,
        children: Arc<Children>,
    ) -> (Arc<Self>, Subscription) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let handle = Arc::new(Self {
            pid,
            tag,
            config,
            io,
            started: Instant::now(),
            children,
            subscribers: Mutex::new(Subscribers {
                queues: vec![tx],
                end: None,
            }),
        });
        (handle, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a new stream: it gets all output produced from now on and the end,
    /// or only the end if the process has ended already.
    pub(crate) fn subscribe(&self) -> Subscription {
        let mut subs = self.lock();
        if let Some(end) = &subs.end {
            return replay(end.clone());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        subs.queues.push(tx);
        rx
    }

    /// Copies the current subscriber queues into `into` (to send without the lock).
    pub(crate) fn subscribers(&self, into: &mut Vec<mpsc::Sender<Output>>) {
        into.extend(self.lock().queues.iter().cloned());
    }

    /// Forgets subscribers whose stream is gone.
    pub(crate) fn prune(&self) {
        self.lock().queues.retain(|q| !q.is_closed());
    }

    /// Records the end and detaches every subscriber, returning their queues so the
    /// caller can deliver the end to each.
    fn take_for_end(&self, end: &EndEvent) -> Vec<mpsc::Sender<Output>> {
        let mut subs = self.lock();
        subs.end = Some(end.clone());
        std::mem::take(&mut subs.queues)
    }

    /// Sends `signal` to the process's group. `not_found` if it has already exited:
    /// the reaper lock guarantees the pid was not reused in between.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), EnvdError> {
        let pid = self.pid;
        let pgrp = i32::try_from(pid)
            .map_err(|_| EnvdError::Internal(format!("pid {pid} out of range")))?;
        match self.children.while_unreaped(pid, || {
            nix::sys::signal::killpg(Pid::from_raw(pgrp), signal)
        }) {
            Some(Ok(())) => Ok(()),
            Some(Err(errno)) => Err(EnvdError::io(
                format!("failed to send {signal} to process group {pid}"),
                errno.into(),
            )),
            None => Err(not_found_pid(pid)),
        }
    }
}

/// Which process a request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// By pid.
    Pid(u32),
    /// By the tag given at start.
    Tag(String),
}

impl Selector {
    /// The selector of a request; a missing one is `invalid_argument`.
    pub(crate) fn from_wire(selector: Option<&ProcessSelector>) -> Result<Self, EnvdError> {
        match selector.and_then(|s| s.selector.as_ref()) {
            Some(WireSelector::Pid(pid)) => Ok(Self::Pid(*pid)),
            Some(WireSelector::Tag(tag)) => Ok(Self::Tag(tag.clone())),
            None => Err(EnvdError::InvalidArgument(
                "a process selector (pid or tag) is required".to_owned(),
            )),
        }
    }

    fn not_found(&self) -> EnvdError {
        match self {
            Self::Pid(pid) => not_found_pid(*pid),
            Self::Tag(tag) => EnvdError::NotFound(format!("process with tag '{tag}' not found")),
        }
    }
}

fn not_found_pid(pid: u32) -> EnvdError {
    EnvdError::NotFound(format!("process with pid {pid} not found"))
}

/// A process found by a selector.
#[derive(Debug)]
pub(crate) enum Found {
    /// It is running.
    Running(Arc<ProcHandle>),
    /// It ended recently, like this.
    Ended {
        /// Its pid.
        pid: u32,
        /// Its `end` event.
        end: EndEvent,
    },
}

#[derive(Debug)]
struct Ended {
    pid: u32,
    tag: Option<String>,
    end: EndEvent,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<u32, Arc<ProcHandle>>,
    ended: VecDeque<Ended>,
}

impl Inner {
    fn running(&self, selector: &Selector) -> Option<&Arc<ProcHandle>> {
        match selector {
            Selector::Pid(pid) => self.running.get(pid),
            // The newest process wins when a tag was reused.
            Selector::Tag(tag) => self
                .running
                .values()
                .filter(|h| h.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|h| h.started),
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .ended
            .front()
            .is_some_and(|e| now.duration_since(e.at) > ENDED_TTL)
        {
            self.ended.pop_front();
        }
    }
}

/// Processes started through the service.
#[derive(Debug, Clone, Default)]
pub struct ProcessTable {
    inner: Arc<Mutex<Inner>>,
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `signal` to every running process's process group.
    pub fn signal_all(&self, signal: Signal) {
        let handles: Vec<_> = self.lock().running.values().cloned().collect();
        for h in handles {
            if let Err(err) = h.signal(signal) {
                tracing::debug!(pid = h.pid, error = %err, "cannot signal process");
            }
        }
    }

    /// Whether any started process is still running.
    pub fn any_running(&self) -> bool {
        !self.lock().running.is_empty()
    }

    /// Registers a started process.
    pub(crate) fn insert(&self, handle: Arc<ProcHandle>) {
        self.lock().running.insert(handle.pid, handle);
    }

    /// The running process `selector` means, else `not_found`.
    pub(crate) fn running(&self, selector: &Selector) -> Result<Arc<ProcHandle>, EnvdError> {
        self.lock()
            .running(selector)
            .cloned()
            .ok_or_else(|| selector.not_found())
    }

    /// The running or recently ended process `selector` means, else `not_found`.
    pub(crate) fn find(&self, selector: &Selector) -> Result<Found, EnvdError> {
        let mut inner = self.lock();
        if let Some(h) = inner.running(selector) {
            return Ok(Found::Running(h.clone()));
        }
        inner.expire(Instant::now());
        inner
            .ended
            .iter()
            .rev()
            .find(|e| match selector {
                Selector::Pid(pid) => e.pid == *pid,
                Selector::Tag(tag) => e.tag.as_deref() == Some(tag.as_str()),
            })
            .map(|e| Found::Ended {
                pid: e.pid,
                end: e.end.clone(),
            })
            .ok_or_else(|| selector.not_found())
    }

    /// Every running process, by pid.
    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        let inner = self.lock();
        let mut out: Vec<ProcessInfo> = inner
            .running
            .values()
            .map(|h| ProcessInfo {
                config: h.config.clone().into(),
                pid: h.pid,
                tag: h.tag.clone(),
                ..Default::default()
            })
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Moves `handle` from the running to the ended processes and returns the queues
    /// of its subscribers, who are still owed `end`.
    pub(crate) fn finish(&self, handle: &ProcHandle, end: &EndEvent) -> Vec<mpsc::Sender<Output>> {
        let mut inner = self.lock();
        if inner
            .running
            .get(&handle.pid)
            .is_some_and(|h| std::ptr::eq(Arc::as_ptr(h), handle))
        {
            inner.running.remove(&handle.pid);
        }
        let now = Instant::now();
        inner.expire(now);
        if inner.ended.len() >= ENDED_KEPT {
            inner.ended.pop_front();
        }
        inner.ended.push_back(Ended {
            pid: handle.pid,
            tag: handle.tag.clone(),
            end: end.clone(),
            at: now,
        });
        handle.take_for_end(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::exit::end_event;
    use hearth_sys::process::ChildExit;

    fn handle(pid: u32, tag: Option<&str>) -> (Arc<ProcHandle>, Subscription) {
        ProcHandle::new(
            pid,
            tag.map(str::to_owned),
            ProcessConfig {
                cmd: "/bin/true".into(),
                ..Default::default()
            },
            ProcIo::Pipes {
                stdin: tokio::sync::Mutex::new(None),
            },
            Arc::new(Children::default()),
        )
    }

    #[test]
    fn unknown_pid_and_tag_are_not_found() {
        let t = ProcessTable::default();
        assert!(matches!(
            t.running(&Selector::Pid(7)),
            Err(EnvdError::NotFound(m)) if m == "process with pid 7 not found"
        ));
        assert!(matches!(
            t.find(&Selector::Tag("x".into())),
            Err(EnvdError::NotFound(_))
        ));
    }

    #[test]
    fn missing_selector_is_invalid_argument() {
        assert!(matches!(
            Selector::from_wire(None),
            Err(EnvdError::InvalidArgument(_))
        ));
        assert!(matches!(
            Selector::from_wire(Some(&ProcessSelector::default())),
            Err(EnvdError::InvalidArgument(_))
        ));
    }

    #[test]
    fn ended_process_replays_its_end_to_late_subscribers() {
        let t = ProcessTable::default();
        let (h, _first) = handle(41, Some("svc"));
        t.insert(h.clone());
        assert!(t.any_running());
        assert_eq!(t.list().len(), 1);
        let owed = t.finish(&h, &end_event(ChildExit::Exited(2)));
        assert_eq!(owed.len(), 1, "the start stream is still owed the end");
        assert!(!t.any_running());
        assert!(t.list().is_empty());
        for sel in [Selector::Pid(41), Selector::Tag("svc".into())] {
            match t.find(&sel).unwrap() {
                Found::Ended { pid, end } => {
                    assert_eq!(pid, 41);
                    assert_eq!(end.exit_code, 2);
                }
                Found::Running(_) => panic!("must have ended"),
            }
        }
        let mut late = h.subscribe();
        assert!(matches!(late.try_recv(), Ok(Output::End(e)) if e.exit_code == 2));
        assert!(late.try_recv().is_err(), "nothing after end");
        assert!(t.running(&Selector::Pid(41)).is_err());
    }

    #[test]
    fn ended_memory_is_bounded() {
        let t = ProcessTable::default();
        for pid in 0..(ENDED_KEPT as u32 + 10) {
            let (h, _s) = handle(pid + 1, None);
            t.insert(h.clone());
            t.finish(&h, &end_event(ChildExit::Exited(0)));
        }
        assert_eq!(t.lock().ended.len(), ENDED_KEPT);
        assert!(
            t.find(&Selector::Pid(1)).is_err(),
            "the oldest is forgotten"
        );
    }

    #[test]
    fn tag_selects_the_newest_running_process() {
        let t = ProcessTable::default();
        let (a, _sa) = handle(10, Some("web"));
        t.insert(a);
        std::thread::sleep(Duration::from_millis(2));
        let (b, _sb) = handle(5, Some("web"));
        t.insert(b);
        assert_eq!(t.running(&Selector::Tag("web".into())).unwrap().pid, 5);
    }

    #[test]
    fn signal_of_unregistered_child_is_not_found() {
        let (h, _s) = handle(999_999, None);
        assert!(matches!(
            h.signal(Signal::SIGTERM),
            Err(EnvdError::NotFound(_))
        ));
    }

    #[test]
    fn dropped_subscribers_are_pruned() {
        let (h, first) = handle(3, None);
        let second = h.subscribe();
        drop(first);
        h.prune();
        let mut v = Vec::new();
        h.subscribers(&mut v);
        assert_eq!(v.len(), 1);
        drop(second);
    }
}
