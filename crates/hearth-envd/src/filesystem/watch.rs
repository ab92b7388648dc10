// SPDX-License-Identifier: Apache-2.0
//! Directory watches on inotify: the `WatchDir` stream and the polled watchers
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`).
//!
//! Events map to E2B's types the way upstream's fsnotify does: `IN_CREATE` and
//! `IN_MOVED_TO` are CREATE, `IN_MODIFY` is WRITE, `IN_ATTRIB` is CHMOD,
//! `IN_MOVED_FROM` and `IN_MOVE_SELF` are RENAME, `IN_DELETE` and `IN_DELETE_SELF` are
//! REMOVE. Names are relative to the watched directory (`sub/file.txt` in a recursive
//! watch, `.` for the directory itself). A recursive watch adds every subdirectory,
//! including ones created or moved in later.
//!
//! Limits: at most [`MAX_WATCHERS`] watches (streams and polled watchers together)
//! per envd, each polled watcher buffers at most [`MAX_BUFFERED_EVENTS`] events
//! between polls (later ones are dropped and counted in the log), and a watch fails
//! with `resource_exhausted` when the kernel's inotify queue overflows.

use crate::error::EnvdError;
use crate::filesystem::entry::entry_info;
use crate::state::Envd;
use hearth_envd_proto::filesystem::__buffa::oneof::watch_dir_response::Event as WatchEvent;
use hearth_envd_proto::filesystem::watch_dir_response::{KeepAlive, StartEvent};
use hearth_envd_proto::filesystem::{EventType, FilesystemEvent, WatchDirResponse};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Most concurrent watches (streams plus polled watchers) per envd. Each is an
/// inotify instance, and the kernel allows 128 per user by default
/// (`fs.inotify.max_user_instances`): envd keeps half for the sandbox's own tools.
pub const MAX_WATCHERS: usize = 64;
/// Most events a polled watcher keeps between two polls.
pub const MAX_BUFFERED_EVENTS: usize = 10_000;
/// A polled watcher not polled for this long may be evicted to make room for a new
/// watch once [`MAX_WATCHERS`] is reached (clients that never call `RemoveWatcher`).
pub const IDLE_EVICTION: Duration = Duration::from_secs(600);
/// Keepalive interval when the client sends no (valid) `Keepalive-Ping-Interval`.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// What to watch, resolved and validated by the caller.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Absolute path of the watched directory.
    pub root: PathBuf,
    /// Watch subdirectories too.
    pub recursive: bool,
    /// Attach the entry's info to create, write and chmod events.
    pub include_entry: bool,
}

/// Counts live watches so one envd cannot exhaust the kernel's inotify instances.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn acquire(count: &Arc<AtomicUsize>) -> Result<Self, EnvdError> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WATCHERS).then_some(n + 1)
            })
            .map_err(|_| {
                EnvdError::ResourceExhausted(format!(
                    "too many directory watchers (limit {MAX_WATCHERS})"
                ))
            })?;
        Ok(Self(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `Inotify` with `AsRawFd`, which `AsyncFd` needs.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// One live inotify watch of a directory (tree).
#[derive(Debug)]
pub struct Watch {
    state: Arc<Envd>,
    fd: AsyncFd<InotifyFd>,
    spec: WatchSpec,
    /// Watched directories, relative to the root (`""` is the root itself).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root_wd: WatchDescriptor,
    /// Held while the watch lives; a polled watcher moves it to its table entry so
    /// removal frees the slot at once, not when the aborted task is next polled.
    slot: Option<Slot>,
}

impl Watch {
    /// Starts watching; the caller has checked that `spec.root` is a local directory.
    pub fn start(state: Arc<Envd>, spec: WatchSpec) -> Result<Self, EnvdError> {
        let slot = Slot::acquire(&state.watchers.active)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| EnvdError::io("error creating inotify instance", e.into()))?;
        let root_wd = inotify
            .add_watch(spec.root.as_path(), watch_mask())
            .map_err(|e| watch_error(&spec.root, e.into()))?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may hand out
        // different or closed fds over time; `InotifyFd` owns its fd and always
        // returns it, which is exactly the contract `AsyncFd::register` spells out as
        // unsafe. Keeping the safe constructor keeps `unsafe` out of this crate.
        #[allow(deprecated)]
        let fd = AsyncFd::new(InotifyFd(inotify))
            .map_err(|e| EnvdError::io("error registering inotify instance", e))?;
        let mut watch = Self {
            state,
            fd,
            dirs: HashMap::from([(root_wd, PathBuf::new())]),
            root_wd,
            spec,
            slot: Some(slot),
        };
        if watch.spec.recursive {
            watch.add_tree(Path::new(""))?;
        }
        Ok(watch)
    }

    /// Adds watches for every directory below `rel` (relative to the root).
    fn add_tree(&mut self, rel: &Path) -> Result<(), EnvdError> {
        let mut pending = vec![rel.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(read) = std::fs::read_dir(self.spec.root.join(&dir)) else {
                continue;
            };
            for entry in read.filter_map(Result::ok) {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = dir.join(entry.file_name());
                self.add_dir(&child)?;
                pending.push(child);
            }
        }
        Ok(())
    }

    fn add_dir(&mut self, rel: &Path) -> Result<(), EnvdError> {
        let abs = self.spec.root.join(rel);
        let mask = watch_mask() | AddWatchFlags::IN_DONT_FOLLOW;
        match self.fd.get_ref().0.add_watch(abs.as_path(), mask) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_path_buf());
                Ok(())
            }
            // Gone or replaced by a file meanwhile: nothing to watch.
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => Ok(()),
            Err(e) => Err(watch_error(&abs, e.into())),
        }
    }

    /// Forgets `rel` and everything below it (a subdirectory moved away).
    fn drop_subtree(&mut self, rel: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(wd, p)| **wd != self.root_wd && p.starts_with(rel))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Waits for the next batch of events.
    pub async fn next_events(&mut self) -> Result<Vec<FilesystemEvent>, EnvdError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| EnvdError::io("error waiting for inotify", e))?;
            let read = guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from));
            let raw = match read {
                Ok(Ok(raw)) => raw,
                Ok(Err(e)) => return Err(EnvdError::io("error reading inotify events", e)),
                Err(_would_block) => continue,
            };
            let mut out = Vec::new();
            for event in raw {
                self.translate(event, &mut out)?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn translate(
        &mut self,
        event: InotifyEvent,
        out: &mut Vec<FilesystemEvent>,
    ) -> Result<(), EnvdError> {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            return Err(EnvdError::ResourceExhausted(format!(
                "inotify event queue overflowed watching {}",
                self.spec.root.display()
            )));
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return Ok(());
        }
        let Some(dir) = self.dirs.get(&event.wd).cloned() else {
            return Ok(());
        };
        let rel = match &event.name {
            Some(name) => dir.join(name),
            // Self events of subdirectories repeat what their parent reports.
            None if event.wd != self.root_wd => {
                if mask.contains(AddWatchFlags::IN_MOVE_SELF) {
                    self.drop_subtree(&dir);
                }
                return Ok(());
            }
            None => PathBuf::from("."),
        };
        if self.spec.recursive
            && mask.contains(AddWatchFlags::IN_ISDIR)
            && mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            && let Err(err) = self.add_dir(&rel).and_then(|()| self.add_tree(&rel))
        {
            tracing::warn!(error = %err.client_message(), "cannot extend recursive watch");
        }
        // Same order as upstream when one event carries several operations.
        let ops = [
            (
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
                EventType::EVENT_TYPE_CREATE,
            ),
            (
                AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_MOVE_SELF,
                EventType::EVENT_TYPE_RENAME,
            ),
            (AddWatchFlags::IN_ATTRIB, EventType::EVENT_TYPE_CHMOD),
            (AddWatchFlags::IN_MODIFY, EventType::EVENT_TYPE_WRITE),
            (
                AddWatchFlags::IN_DELETE | AddWatchFlags::IN_DELETE_SELF,
                EventType::EVENT_TYPE_REMOVE,
            ),
        ];
        let name = rel.to_string_lossy().into_owned();
        for (bits, kind) in ops {
            if !mask.intersects(bits) {
                continue;
            }
            let mut ev = FilesystemEvent {
                name: name.clone(),
                r#type: kind.into(),
                ..Default::default()
            };
            let wants_entry = matches!(
                kind,
                EventType::EVENT_TYPE_CREATE
                    | EventType::EVENT_TYPE_WRITE
                    | EventType::EVENT_TYPE_CHMOD
            );
            if self.spec.include_entry && wants_entry {
                let path = if event.name.is_some() {
                    self.spec.root.join(&rel)
                } else {
                    self.spec.root.clone()
                };
                // The entry may be gone already; then the event carries none.
                if let Ok(entry) = entry_info(&self.state.users, &path) {
                    ev.entry = entry.into();
                }
            }
            out.push(ev);
        }
        Ok(())
    }
}

fn watch_error(path: &Path, err: io::Error) -> EnvdError {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        return EnvdError::ResourceExhausted(format!(
            "inotify watch limit reached watching {}",
            path.display()
        ));
    }
    EnvdError::io(format!("error adding {} to watcher", path.display()), err)
}

/// Reads `Keepalive-Ping-Interval` (seconds); missing or invalid means 90 s.
pub fn keepalive_interval(headers: &http::HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}

fn response(event: WatchEvent) -> WatchDirResponse {
    WatchDirResponse {
        event: Some(event),
        ..Default::default()
    }
}

struct StreamState {
    watch: Watch,
    pending: VecDeque<FilesystemEvent>,
    keepalive: Duration,
    next_keepalive: tokio::time::Instant,
    started: bool,
    failed: bool,
}

/// The `WatchDir` response stream: `start`, then events and keepalives.
///
/// Dropping the stream (the client went away) drops the watch and its inotify fd.
pub fn stream(
    watch: Watch,
    keepalive: Duration,
) -> impl futures::Stream<Item = Result<WatchDirResponse, connectrpc::ConnectError>> + Send {
    let state = StreamState {
        watch,
        pending: VecDeque::new(),
        keepalive,
        next_keepalive: tokio::time::Instant::now() + keepalive,
        started: false,
        failed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if !st.started {
            st.started = true;
            return Some((Ok(response(WatchEvent::from(StartEvent::default()))), st));
        }
        loop {
            if let Some(ev) = st.pending.pop_front() {
                st.next_keepalive = tokio::time::Instant::now() + st.keepalive;
                return Some((Ok(response(WatchEvent::from(ev))), st));
            }
            if st.failed {
                return None;
            }
            tokio::select! {
                res = st.watch.next_events() => match res {
                    Ok(events) => st.pending.extend(events),
                    Err(err) => {
                        st.failed = true;
                        return Some((Err(err.into()), st));
                    }
                },
                () = tokio::time::sleep_until(st.next_keepalive) => {
                    st.next_keepalive = tokio::time::Instant::now() + st.keepalive;
                    return Some((Ok(response(WatchEvent::from(KeepAlive::default()))), st));
                }
            }
        }
    })
}

#[derive(Debug, Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    dropped: u64,
    /// A failure of the watch, reported on every later poll (as upstream).
    error: Option<(connectrpc::ErrorCode, String)>,
}

#[derive(Debug)]
struct Polled {
    buffer: Arc<Mutex<Buffer>>,
    task: tokio::task::JoinHandle<()>,
    _slot: Option<Slot>,
    /// Creation or last poll.
    last_used: Mutex<std::time::Instant>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polled watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`), by id.
#[derive(Debug, Default)]
pub struct WatcherTable {
    polled: Mutex<HashMap<String, Polled>>,
    /// Live watches of both kinds, bounded by [`MAX_WATCHERS`].
    active: Arc<AtomicUsize>,
    next_id: AtomicU64,
}

impl WatcherTable {
    fn new_id(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u32(std::process::id());
        format!("w{:016x}{n:x}", h.finish())
    }

    /// Starts a polled watcher; its events buffer until fetched.
    pub fn create(&self, mut watch: Watch) -> String {
        let slot = watch.slot.take();
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let sink = buffer.clone();
        let id = self.new_id();
        let log_id = id.clone();
        let task = tokio::spawn(async move {
            let mut watch = watch;
            loop {
                let result = watch.next_events().await;
                let mut buf = sink.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(events) => {
                        let room = MAX_BUFFERED_EVENTS.saturating_sub(buf.events.len());
                        if events.len() > room {
                            let lost = events.len() - room;
                            if buf.dropped == 0 {
                                tracing::warn!(watcher = %log_id, "watcher buffer full; dropping events until polled");
                            }
                            buf.dropped += u64::try_from(lost).unwrap_or(u64::MAX);
                        }
                        buf.events.extend(events.into_iter().take(room));
                    }
                    Err(err) => {
                        tracing::warn!(watcher = %log_id, error = %err.client_message(), "watcher failed");
                        buf.error = Some((err.connect_code(), err.client_message()));
                        return;
                    }
                }
            }
        });
        self.polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Polled {
                    buffer,
                    task,
                    _slot: slot,
                    last_used: Mutex::new(std::time::Instant::now()),
                },
            );
        id
    }

    /// Returns and clears the buffered events of watcher `id`.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, EnvdError> {
        let table = self.polled.lock().unwrap_or_else(|p| p.into_inner());
        let watcher = table.get(id).ok_or_else(|| not_found(id))?;
        *watcher.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        let mut buf = watcher.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, message)) = &buf.error {
            return Err(match code {
                connectrpc::ErrorCode::ResourceExhausted => {
                    EnvdError::ResourceExhausted(message.clone())
                }
                _ => EnvdError::Internal(message.clone()),
            });
        }
        if buf.dropped > 0 {
            tracing::warn!(watcher = %id, dropped = buf.dropped, "events were dropped since the last poll");
            buf.dropped = 0;
        }
        Ok(std::mem::take(&mut buf.events))
    }

    /// Stops and forgets watcher `id`.
    pub fn remove(&self, id: &str) -> Result<(), EnvdError> {
        let removed = self
            .polled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        removed.map(drop).ok_or_else(|| not_found(id))
    }

    /// When every watch slot is taken, drops polled watchers idle for longer than
    /// `idle`, so abandoned watchers cannot lock out new ones forever.
    pub fn evict_idle(&self, idle: Duration) {
        if self.active() < MAX_WATCHERS {
            return;
        }
        let mut table = self.polled.lock().unwrap_or_else(|p| p.into_inner());
        table.retain(|id, w| {
            let last = *w.last_used.lock().unwrap_or_else(|p| p.into_inner());
            let keep = last.elapsed() < idle;
            if !keep {
                tracing::info!(watcher = %id, "evicting idle watcher to make room");
            }
            keep
        });
    }

    /// Number of live watches of both kinds.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

fn not_found(id: &str) -> EnvdError {
    EnvdError::NotFound(format!("watcher with id {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_header_parses_seconds_with_default() {
        let mut h = http::HeaderMap::new();
        assert_eq!(keepalive_interval(&h), DEFAULT_KEEPALIVE);
        h.insert("keepalive-ping-interval", "50".parse().unwrap());
        assert_eq!(keepalive_interval(&h), Duration::from_secs(50));
        h.insert("keepalive-ping-interval", "soon".parse().unwrap());
        assert_eq!(keepalive_interval(&h), DEFAULT_KEEPALIVE);
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let count = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_WATCHERS)
            .map(|_| Slot::acquire(&count).unwrap())
            .collect();
        assert!(matches!(
            Slot::acquire(&count),
            Err(EnvdError::ResourceExhausted(_))
        ));
        drop(slots);
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
