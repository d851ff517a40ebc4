//! The buddy's account of itself: event records and the status file.
//!
//! [`Records`] stamps the machine's notes into records (sequence number, wall and monotonic
//! time) in the [`Ring`] that only an acknowledgement empties, keeps the latest summaries for
//! hooks (`UPK_EVENTS`), and queues every new record, encoded, for the subscribers. The queue
//! keeps one invariant: records go out only after the status file that agrees with them is
//! written ([`Records::write_status`] hands them over), so a client that reads the status on an
//! event never finds the state before it. The status file is rewritten atomically; a write
//! that fails is retried every [`STATUS_RETRY`] until it succeeds.

use crate::buddy::Buddy;
use crate::fds::{out_of_fds, Spare};
use crate::hooks;
use crate::logs::{BuddyLog, Stream};
use crate::machine::{Machine, Note, State};
use crate::ring::Ring;
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};
use upk_core::event::{EventKind, Record, StateName};
use upk_core::proto::{self, BuddyReply, Envelope};
use upk_core::status::{self, Status};

/// How soon a status write that failed is tried again.
pub const STATUS_RETRY: Duration = Duration::from_millis(100);

/// Records and status of one buddy.
pub struct Records {
    /// The records not yet acknowledged.
    pub ring: Ring,
    /// The record sequence the ring's seqs belong to ([`Status::incarnation`]).
    pub incarnation: String,
    /// When the current state began (wall clock, µs).
    since_us: i64,
    /// The latest records' summaries, for hooks; kept only when hooks exist.
    recent: VecDeque<String>,
    /// Encoded records for the subscribers, sent after the next status write.
    outbox: Vec<u8>,
    /// The status file could not be written: retried at this time.
    retry_at: Option<Instant>,
}

impl Records {
    /// Goes on from `ring` in `incarnation`.
    pub fn new(ring: Ring, incarnation: String) -> Records {
        Records {
            ring,
            incarnation,
            since_us: upk_core::time::wall_us(),
            recent: VecDeque::new(),
            outbox: Vec::new(),
            retry_at: None,
        }
    }

    /// A record of `kind` in state `s`, not yet numbered.
    pub fn blank(s: StateName, kind: EventKind) -> Record {
        Record {
            seq: 0,
            wall_us: upk_core::time::wall_us(),
            mono_us: upk_core::time::mono_us(),
            from: s,
            to: s,
            pid: None,
            cause: String::new(),
            kind,
        }
    }

    /// Stamps `note` into the ring; `for_hooks` keeps its summary, `subscribed` queues it for
    /// the subscribers (encoding sits on the restart path: only when someone listens).
    pub fn record(&mut self, note: Note, for_hooks: bool, subscribed: bool) {
        let mut r = Records::blank(note.from, note.kind);
        (r.from, r.to, r.pid, r.cause) = (note.from, note.to, note.pid, note.cause);
        // `since_us` dates the state, except that `ready` keeps the start of its run: uptime
        // counts from the start, not from the readiness signal.
        if r.from != r.to && !(r.from == StateName::Running && r.to == StateName::Ready) {
            self.since_us = r.wall_us;
        }
        if for_hooks {
            if self.recent.len() == hooks::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(hooks::recent_line(&r));
        }
        let stored = self.ring.push(r);
        if subscribed {
            let line = proto::encode(&Envelope {
                id: None,
                body: BuddyReply::Event {
                    record: stored.clone(),
                },
            });
            self.outbox.extend(line);
        }
    }

    /// The latest summaries, oldest first.
    pub fn recent(&self) -> &VecDeque<String> {
        &self.recent
    }

    /// Encoded records waiting for the subscribers; call after [`Records::write_status`].
    pub fn take_outbox(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    /// When a failed status write is due again.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The status as of now.
    pub fn status(&self, machine: &Machine, service: &str, streams: &[Stream]) -> Status {
        let state = machine.state();
        let next_start_us = match state {
            State::Backoff { until }
            | State::Paused { until }
            | State::Failed {
                retry_at: Some(until),
            } => {
                let left = until.saturating_duration_since(Instant::now());
                Some(upk_core::time::wall_us() + left.as_micros() as i64)
            }
            _ => None,
        };
        Status {
            service: service.to_owned(),
            state: state.name(),
            want: machine.want(),
            pid: state.pid(),
            pid_start: state.pid_start(),
            since_us: self.since_us,
            buddy_pid: std::process::id() as i32,
            restarts: machine.restarts(),
            failures: machine.failures(),
            last_exit: machine.last_exit(),
            next_start_us,
            incarnation: self.incarnation.clone(),
            seq: self.ring.last_seq(),
            acked: self.ring.acked(),
            loggers: streams
                .iter()
                .filter_map(|s| {
                    Some(status::Proc {
                        pid: s.logger?,
                        start: s.logger_start?,
                    })
                })
                .collect(),
            needs_ready: machine.needs_ready(),
            ready_timed_out: machine.ready_timed_out(),
            health: machine.health(),
            containment: Default::default(),
        }
    }

    /// Writes `status` to `path`. It names the main process, so that a successor adopts it
    /// instead of starting a second copy: out of descriptors, the spare one is given up for
    /// it; a write that fails anyway is retried every [`STATUS_RETRY`].
    pub fn write_status(
        &mut self,
        status: &Status,
        path: &Path,
        spare: &mut Spare,
        log: &mut BuddyLog,
    ) {
        let mut result = status.write(path);
        if result.as_ref().is_err_and(out_of_fds) {
            if let Some(again) = spare.give_up_for(|| status.write(path)) {
                result = again;
            }
        }
        match result {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    log.line("the status file is written again");
                }
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    log.line(&format!(
                        "cannot write the status file: {e}; retrying every {} ms",
                        STATUS_RETRY.as_millis()
                    ));
                }
                self.retry_at = Some(Instant::now() + STATUS_RETRY);
            }
        }
    }
}

/// The loop's side: what it records, and when the status is written.
impl Buddy {
    /// A record that changes no state.
    pub(crate) fn note(&mut self, pid: Option<i32>, cause: &str, kind: EventKind) {
        let s = self.machine.state().name();
        let cause = cause.into();
        self.record(Note {
            from: s,
            to: s,
            pid,
            cause,
            kind,
        });
    }

    pub(crate) fn record(&mut self, note: Note) {
        let for_hooks = !self.settings.service.notify.is_empty();
        let subscribed = self.peers.any_subscribed();
        self.records.record(note, for_hooks, subscribed);
        self.phone_home(Instant::now());
    }

    pub(crate) fn status(&self) -> Status {
        let id = self.settings.service.id.to_string();
        let mut status = self.records.status(&self.machine, &id, &self.streams);
        status.containment = Box::new(self.contain.describe());
        status
    }

    /// Records what containment has newly to say (no cgroup, a limit not enforced).
    pub(crate) fn note_containment(&mut self) {
        for note in self.contain.take_fresh() {
            self.log.line(&format!("containment: {note}"));
            self.note(None, "containment", EventKind::Containment { note });
        }
    }

    /// Rewrites the status file, then sends the records it reflects.
    pub(crate) fn write_status(&mut self) {
        let status = self.status();
        let path = self.dir.status();
        self.records
            .write_status(&status, &path, &mut self.spare, &mut self.log);
        let sent = self.records.take_outbox();
        self.peers.publish(&sent);
    }
}
