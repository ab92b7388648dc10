// SPDX-License-Identifier: Apache-2.0
//! One attached stream (`Start` or `Connect`) as a sequence of `ProcessEvent`s.
//!
//! Order: exactly one `start{pid}` first (at once: SDKs block on it), then `data`
//! events, `keepalive{}` after every `Keepalive-Ping-Interval` seconds without data,
//! and one `end`, after which the stream finishes. If the stream's deadline
//! (`Connect-Timeout-Ms`) passes first, it finishes with `deadline_exceeded`; for
//! `Start` that deadline is also the process's lifetime, so it kills the process
//! group. Dropping the stream (client gone) only detaches it: the process runs on.

use super::output::kill_at_deadline;
use super::table::{Output, ProcHandle, Subscription};
use connectrpc::ConnectError;
use futures::Stream;
use hearth_envd_proto::process::ProcessEvent;
use hearth_envd_proto::process::process_event::{DataEvent, Event, StartEvent, data_event};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Keepalive interval when the request names none (as upstream).
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// The keepalive interval asked for by `Keepalive-Ping-Interval: <seconds>`.
pub(crate) fn keepalive_interval(headers: &http::HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Streaming,
    Done,
}

/// The events of one attached stream.
#[derive(Debug)]
pub(crate) struct EventStream {
    pid: u32,
    phase: Phase,
    rx: Subscription,
    keepalive: Duration,
    idle: Pin<Box<Sleep>>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Killed at the deadline (`Start` streams only).
    owner: Option<Arc<ProcHandle>>,
}

impl EventStream {
    /// A stream of `rx` for process `pid`. At `deadline` it ends with
    /// `deadline_exceeded`, and kills `owner`'s process group if given.
    pub(crate) fn new(
        pid: u32,
        rx: Subscription,
        keepalive: Duration,
        deadline: Option<Instant>,
        owner: Option<Arc<ProcHandle>>,
    ) -> Self {
        Self {
            pid,
            phase: Phase::Start,
            rx,
            keepalive,
            idle: Box::pin(tokio::time::sleep(keepalive)),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            owner,
        }
    }

    fn reset_idle(&mut self) {
        let next = Instant::now() + self.keepalive;
        self.idle.as_mut().reset(next);
    }
}

fn event(event: Event) -> ProcessEvent {
    ProcessEvent {
        event: Some(event),
        ..Default::default()
    }
}

fn data(output: data_event::Output) -> ProcessEvent {
    event(Event::Data(Box::new(DataEvent {
        output: Some(output),
        ..Default::default()
    })))
}

/// The wire event for one piece of output.
fn output_event(out: Output) -> ProcessEvent {
    match out {
        Output::Stdout(b) => data(data_event::Output::Stdout(b.to_vec())),
        Output::Stderr(b) => data(data_event::Output::Stderr(b.to_vec())),
        Output::Pty(b) => data(data_event::Output::Pty(b.to_vec())),
        Output::End(end) => event(Event::End(Box::new(end))),
    }
}

impl Stream for EventStream {
    type Item = Result<ProcessEvent, ConnectError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.phase {
            Phase::Done => return Poll::Ready(None),
            Phase::Start => {
                this.phase = Phase::Streaming;
                this.reset_idle();
                return Poll::Ready(Some(Ok(event(Event::Start(Box::new(StartEvent {
                    pid: this.pid,
                    ..Default::default()
                }))))));
            }
            Phase::Streaming => {}
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.phase = Phase::Done;
            let message = match this.owner.take() {
                Some(handle) => {
                    kill_at_deadline(&handle);
                    "the process timeout elapsed and the process was killed"
                }
                None => "the stream timeout elapsed",
            };
            return Poll::Ready(Some(Err(ConnectError::deadline_exceeded(message))));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(out)) => {
                if matches!(out, Output::End(_)) {
                    this.phase = Phase::Done;
                } else {
                    this.reset_idle();
                }
                return Poll::Ready(Some(Ok(output_event(out))));
            }
            // The pump always sends `end` before letting go; this is a lost process.
            Poll::Ready(None) => {
                this.phase = Phase::Done;
                return Poll::Ready(Some(Err(ConnectError::internal(
                    "the process output ended without an end event",
                ))));
            }
            Poll::Pending => {}
        }
        if this.idle.as_mut().poll(cx).is_ready() {
            this.reset_idle();
            return Poll::Ready(Some(Ok(event(Event::Keepalive(Box::default())))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::table::replay;
    use bytes::Bytes;
    use futures::StreamExt;
    use hearth_envd_proto::process::process_event::EndEvent;

    fn kind(ev: &ProcessEvent) -> &'static str {
        match ev.event.as_ref() {
            Some(Event::Start(_)) => "start",
            Some(Event::Data(_)) => "data",
            Some(Event::End(_)) => "end",
            Some(Event::Keepalive(_)) => "keepalive",
            None => "none",
        }
    }

    #[test]
    fn keepalive_header_parses_seconds_with_default() {
        let mut h = http::HeaderMap::new();
        assert_eq!(keepalive_interval(&h), DEFAULT_KEEPALIVE);
        h.insert("keepalive-ping-interval", "50".parse().unwrap());
        assert_eq!(keepalive_interval(&h), Duration::from_secs(50));
        for bad in ["0", "-1", "abc", ""] {
            h.insert("keepalive-ping-interval", bad.parse().unwrap());
            assert_eq!(keepalive_interval(&h), DEFAULT_KEEPALIVE, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn replayed_end_follows_start_and_finishes() {
        let end = EndEvent {
            exit_code: 4,
            exited: true,
            status: "exit status 4".into(),
            ..Default::default()
        };
        let s = EventStream::new(9, replay(end), DEFAULT_KEEPALIVE, None, None);
        let events: Vec<_> = s.map(|e| e.unwrap()).collect().await;
        let kinds: Vec<_> = events.iter().map(kind).collect();
        assert_eq!(kinds, ["start", "end"]);
        match events[0].event.as_ref() {
            Some(Event::Start(s)) => assert_eq!(s.pid, 9),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn idle_stream_sends_keepalives_and_data_resets_the_timer() {
        let tick = Duration::from_millis(100);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut s = EventStream::new(1, rx, tick, None, None);
        assert_eq!(kind(&s.next().await.unwrap().unwrap()), "start");
        let t0 = Instant::now();
        assert_eq!(kind(&s.next().await.unwrap().unwrap()), "keepalive");
        assert!(t0.elapsed() >= tick, "{:?}", t0.elapsed());
        tokio::time::sleep(tick / 2).await;
        tx.send(Output::Stdout(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(kind(&s.next().await.unwrap().unwrap()), "data");
        let t1 = Instant::now();
        assert_eq!(kind(&s.next().await.unwrap().unwrap()), "keepalive");
        assert!(t1.elapsed() >= tick * 9 / 10, "{:?}", t1.elapsed());
    }

    #[tokio::test]
    async fn deadline_ends_the_stream_with_deadline_exceeded() {
        let (_tx, rx) = tokio::sync::mpsc::channel(4);
        let at = Instant::now() + Duration::from_millis(50);
        let mut s = EventStream::new(1, rx, Duration::from_secs(60), Some(at), None);
        assert_eq!(kind(&s.next().await.unwrap().unwrap()), "start");
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code, connectrpc::ErrorCode::DeadlineExceeded);
        assert!(s.next().await.is_none());
    }
}
