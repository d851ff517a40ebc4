//! What the metrics say about each service, kept in memory as the loop sees it: the statuses
//! buddies answer with and the records they push (before the store has them, so a scrape
//! shows a state change at once), and the store's counters as each commit hands them back.
//! Pure: no I/O, fed by the loop, read by [`render`](super::render).
//!
//! A status carries the seq of the last record its buddy made, so records at or below the
//! seq last applied for the same incarnation (a backlog re-sent after a reconnection) are
//! skipped: an old record never moves a service back.

use std::collections::{BTreeMap, HashMap};

use crate::store::{Committed, Counters, Origin, ServiceCounters};
use upk_core::event::{EventKind, Exit, Health, Record, StateName};
use upk_core::status::Status;

/// Consecutive failures from which a service counts as crash-looping (unless it is paused or
/// failed, which count at once).
pub const CRASH_LOOP_FAILURES: u32 = 2;

/// One service as last seen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Live {
    incarnation: String,
    seq: u64,
    /// Its state; `None` until its buddy answered or sent a record.
    pub state: Option<StateName>,
    /// It has a readiness protocol (from its status).
    pub needs_ready: bool,
    /// Its health, while it runs with a health check.
    pub health: Option<Health>,
    /// Wall microseconds its current run started, while it runs.
    pub run_started_us: Option<i64>,
    /// How its last run ended.
    pub last_exit: Option<Exit>,
    /// Consecutive failures the restart policy counts.
    pub failures: u32,
}

impl Live {
    /// The main process runs.
    pub fn up(&self) -> bool {
        self.state.is_some_and(StateName::is_up)
    }

    /// It serves: `ready`, or `running` without a readiness protocol.
    pub fn ready(&self) -> bool {
        match self.state {
            Some(StateName::Ready) => true,
            Some(StateName::Running) => !self.needs_ready,
            _ => false,
        }
    }

    /// Restarts are paused or given up, or [`CRASH_LOOP_FAILURES`] failures in a row are not
    /// yet forgiven by a stable run.
    pub fn crash_looping(&self) -> bool {
        matches!(self.state, Some(StateName::Paused | StateName::Failed))
            || self.failures >= CRASH_LOOP_FAILURES
    }

    fn take_status(&mut self, st: &Status) {
        self.incarnation.clone_from(&st.incarnation);
        self.seq = st.seq;
        self.state = Some(st.state);
        self.needs_ready = st.needs_ready;
        self.health = st.health;
        self.last_exit = st.last_exit;
        self.failures = st.failures;
        self.run_started_us = match st.state {
            // For `ready`, `since_us` is when its run started.
            s if s.is_up() => Some(st.since_us),
            StateName::Stopping => self.run_started_us,
            _ => None,
        };
    }

    fn apply(&mut self, r: &Record) {
        self.state = Some(r.to);
        match &r.kind {
            EventKind::Started { .. } => {
                self.run_started_us = Some(r.wall_us);
                self.health = self.health.map(|_| Health::Unknown);
            }
            EventKind::Adopted => {
                self.run_started_us.get_or_insert(r.wall_us);
            }
            EventKind::Died { exit, .. } => self.last_exit = Some(*exit),
            EventKind::Health { health, .. } => self.health = Some(*health),
            EventKind::RestartScheduled { failures, .. } | EventKind::GaveUp { failures, .. } => {
                self.failures = *failures
            }
            EventKind::Stable { .. } => self.failures = 0,
            _ => {}
        }
        if !r.to.is_up() && r.to != StateName::Stopping {
            self.run_started_us = None;
        }
    }
}

/// Everything the metrics are rendered from, but the fleet itself.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    live: HashMap<String, Live>,
    counters: BTreeMap<String, ServiceCounters>,
    /// Event rows ever stored.
    pub events_stored: u64,
    /// Records ever lost.
    pub events_lost: u64,
    /// Transactions of the store's writer that failed since the controller started.
    pub write_errors: u64,
}

impl Observed {
    /// Starts from the store's counters.
    pub fn new(counters: Counters) -> Observed {
        Observed {
            live: HashMap::new(),
            counters: counters.services,
            events_stored: counters.events,
            events_lost: counters.lost,
            write_errors: 0,
        }
    }

    /// What `service` was last seen doing.
    pub fn live(&self, service: &str) -> Option<&Live> {
        self.live.get(service)
    }

    /// The store's counters of `service`.
    pub fn counters(&self, service: &str) -> Option<&ServiceCounters> {
        self.counters.get(service)
    }

    /// A buddy's status (the answer to a subscription or a relayed request): it wins unless a
    /// newer record of the same incarnation was applied already.
    pub fn status(&mut self, service: &str, st: &Status) {
        let live = self.live.entry(service.to_owned()).or_default();
        if live.state.is_none() || live.incarnation != st.incarnation || st.seq >= live.seq {
            live.take_status(st);
        }
    }

    /// A record a buddy pushed (not yet stored).
    pub fn record(&mut self, origin: &Origin, r: &Record) {
        let live = self.live.entry(origin.service.clone()).or_default();
        if live.incarnation == origin.incarnation && live.state.is_some() && r.seq <= live.seq {
            return;
        }
        live.incarnation.clone_from(&origin.incarnation);
        live.seq = r.seq;
        live.apply(r);
    }

    /// A committed transaction: its rows are stored, its counters current.
    pub fn committed(&mut self, c: &Committed) {
        self.events_stored = self.events_stored.saturating_add(c.inserted);
        for row in &c.rows {
            if let EventKind::Lost { count, .. } = row.record.kind {
                self.events_lost = self.events_lost.saturating_add(count);
            }
        }
        // The larger of each: a store file put in place of the old one (which the writer then
        // follows) may count less, and a counter must not go backwards while this runs.
        for (service, new) in &c.counters {
            let old = self.counters.entry(service.clone()).or_default();
            old.events = old.events.max(new.events);
            old.lost = old.lost.max(new.lost);
            old.restarts = old.restarts.max(new.restarts);
            for (reason, n) in &new.deaths {
                let d = old.deaths.entry(reason.clone()).or_default();
                *d = (*d).max(*n);
            }
        }
    }

    /// A transaction of the store's writer failed.
    pub fn write_failed(&mut self) {
        self.write_errors = self.write_errors.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upk_core::history::EventRow;

    fn rec(seq: u64, to: StateName, kind: EventKind) -> Record {
        Record {
            seq,
            wall_us: 1_000_000 * seq as i64,
            mono_us: 0,
            from: StateName::Running,
            to,
            pid: None,
            cause: "policy".into(),
            kind,
        }
    }

    fn status(seq: u64, state: StateName) -> Status {
        serde_json::from_value(serde_json::json!({
            "service": "web", "state": state, "want": "up", "since_us": 5_000_000,
            "buddy_pid": 1, "restarts": 0, "failures": 0, "incarnation": "a",
            "seq": seq, "acked": 0,
        }))
        .expect("status")
    }

    fn origin() -> Origin {
        Origin {
            service: "web".into(),
            incarnation: "a".into(),
        }
    }

    #[test]
    fn a_crash_loop_is_seen_from_the_records_and_a_stable_run_ends_it() {
        let mut o = Observed::default();
        o.status("web", &status(3, StateName::Running));
        let live = o.live("web").expect("seen");
        assert!(live.up() && live.ready() && !live.crash_looping());
        assert_eq!(live.run_started_us, Some(5_000_000));
        let died = EventKind::died(
            Exit::Killed {
                signal: 9,
                core: false,
            },
            1.0,
        );
        for (seq, failures) in [(4, 1), (7, 2)] {
            o.record(&origin(), &rec(seq, StateName::Backoff, died.clone()));
            let delay = 1.0;
            let kind = EventKind::RestartScheduled { delay, failures };
            o.record(&origin(), &rec(seq + 1, StateName::Backoff, kind));
            o.record(
                &origin(),
                &rec(seq + 2, StateName::Running, EventKind::STARTED),
            );
        }
        let live = o.live("web").expect("seen");
        assert!(live.crash_looping() && live.up());
        assert_eq!(live.run_started_us, Some(9_000_000));
        assert_eq!(
            live.last_exit,
            Some(Exit::Killed {
                signal: 9,
                core: false
            })
        );
        o.record(
            &origin(),
            &rec(10, StateName::Running, EventKind::Stable { failures: 2 }),
        );
        assert!(!o.live("web").expect("seen").crash_looping());
    }

    #[test]
    fn a_re_sent_backlog_never_moves_a_service_back() {
        let mut o = Observed::default();
        o.record(&origin(), &rec(5, StateName::Running, EventKind::STARTED));
        o.record(&origin(), &rec(2, StateName::Failed, EventKind::Stopped));
        assert_eq!(
            o.live("web").and_then(|l| l.state),
            Some(StateName::Running)
        );
        // An older status neither.
        o.status("web", &status(4, StateName::Stopped));
        assert_eq!(
            o.live("web").and_then(|l| l.state),
            Some(StateName::Running)
        );
        // A new incarnation starts its seqs again.
        let fresh = Origin {
            service: "web".into(),
            incarnation: "b".into(),
        };
        o.record(&fresh, &rec(1, StateName::Stopped, EventKind::Stopped));
        let live = o.live("web").expect("seen");
        assert_eq!(
            (live.state, live.run_started_us),
            (Some(StateName::Stopped), None)
        );
    }

    #[test]
    fn commits_bring_the_counters_and_the_totals() {
        let mut o = Observed::new(Counters {
            events: 10,
            lost: 1,
            ..Counters::default()
        });
        let lost = EventKind::Lost {
            count: 4,
            reason: "ring overflow".into(),
        };
        let c = Committed {
            inserted: 2,
            rows: vec![EventRow {
                id: 1,
                service: "web".into(),
                record: rec(9, StateName::Running, lost),
            }],
            counters: [(
                "web".to_owned(),
                ServiceCounters {
                    restarts: 3,
                    ..ServiceCounters::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Committed::default()
        };
        o.committed(&c);
        o.write_failed();
        assert_eq!((o.events_stored, o.events_lost, o.write_errors), (12, 5, 1));
        assert_eq!(o.counters("web").map(|c| c.restarts), Some(3));
        // A store that counts less (a file put in place of the old one) lowers nothing.
        let mut lower = c.clone();
        lower.rows.clear();
        lower.inserted = 0;
        if let Some(web) = lower.counters.get_mut("web") {
            web.restarts = 1;
        }
        o.committed(&lower);
        assert_eq!(o.counters("web").map(|c| c.restarts), Some(3));
    }
}
