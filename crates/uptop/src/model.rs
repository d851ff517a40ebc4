//! What uptop knows about the controller and its services, and the one rule it highlights by.
//!
//! A [`Fleet`] holds the state of the link to the controller, the last status of every
//! configured service (as `list` answered it), and for each service the events seen recently:
//! the automatic restarts of the last hour (for the restart count and the sparkline) and the
//! latest events (for the detail pane). Everything arrives as an [`Update`] from the
//! connection thread and is applied by [`Fleet::apply`]; nothing here touches a socket or the
//! terminal, so all of it is unit-tested. Events are keyed by their row id, so the same event
//! arriving twice (a snapshot overlapping a subscription, a detail query overlapping both)
//! counts once.

use libupkeeper::{
    Access, EventKind, EventRow, Record, ServiceSummary, StateName, Stats, Status, Want,
};
use std::collections::{BTreeMap, HashMap};

/// One hour in microseconds: the window of the restart count.
pub const HOUR_US: i64 = 3_600_000_000;

/// How many recent events each service keeps for its detail pane.
const RECENT_MAX: usize = 200;

/// What can be asked of a selected service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Want it up and start it.
    Start,
    /// Want it down and stop it.
    Stop,
    /// Stop it if it runs, then start it.
    Restart,
    /// Run its reload action.
    Reload,
}

impl Verb {
    /// The word an operator types and reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
        }
    }
}

/// The state of the link to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet.
    Connecting,
    /// Subscribed.
    Connected {
        /// The controller's pid.
        pid: i32,
        /// What it lets us do.
        access: Access,
    },
    /// The controller could not be reached (or went away); uptop is retrying.
    Unreachable {
        /// Why, in one sentence.
        error: String,
        /// Since when (wall microseconds).
        since_us: i64,
    },
}

/// What the connection thread tells the view.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Subscribed (again): the services as they are now and the automatic restarts of the
    /// last hour up to the subscription's start.
    Connected {
        /// The controller's pid.
        pid: i32,
        /// What it lets us do.
        access: Access,
        /// Every configured service.
        services: Vec<ServiceSummary>,
        /// Stored `started` events of the last hour.
        starts: Vec<EventRow>,
    },
    /// The services as they are now (after events).
    Services(Vec<ServiceSummary>),
    /// An event, as the controller stored it.
    Event(EventRow),
    /// The controller cannot be reached; retrying.
    Unreachable(String),
    /// A service's recent history and statistics, for its detail pane.
    Detail {
        /// The service.
        service: String,
        /// Its latest events.
        events: Vec<EventRow>,
        /// Its figures over the last 24 hours.
        stats: Option<Stats>,
    },
    /// A command ended.
    Done {
        /// What was asked.
        verb: Verb,
        /// Of which service.
        service: String,
        /// What came of it, in a few words.
        result: Result<String, String>,
    },
    /// A query failed; one sentence for the message line.
    Failed(String),
}

/// The events uptop remembers of one service.
#[derive(Debug, Default, Clone)]
pub struct Activity {
    /// Automatic restarts: row id -> wall microseconds.
    starts: BTreeMap<i64, i64>,
    /// Latest events by row id.
    recent: BTreeMap<i64, EventRow>,
    /// Figures from the last detail query.
    pub stats: Option<Stats>,
}

impl Activity {
    fn record(&mut self, row: EventRow) {
        if is_automatic_restart(&row.record) {
            self.starts.insert(row.id, row.record.wall_us);
        }
        self.recent.insert(row.id, row);
        while self.recent.len() > RECENT_MAX {
            self.recent.pop_first();
        }
    }

    /// Automatic restarts at or after `since_us`.
    pub fn restarts_since(&self, since_us: i64) -> usize {
        self.starts.values().filter(|&&t| t >= since_us).count()
    }

    /// Automatic restarts of the hour before `now_us` in `bins` equal slices, oldest first.
    pub fn restart_bins(&self, now_us: i64, bins: usize) -> Vec<u64> {
        let mut out = vec![0; bins];
        let width = HOUR_US / bins.max(1) as i64;
        for &t in self.starts.values() {
            let age = now_us - t;
            if (0..HOUR_US).contains(&age) {
                let slot = bins - 1 - (age / width) as usize;
                out[slot] += 1;
            }
        }
        out
    }

    /// The flapping score of the store's statistics (docs/audit.md), over the restarts uptop
    /// knows (the last hour's): `S / (S + 3)`, where each restart weighs `2^-(age / 1 h)`.
    pub fn flapping_score(&self, now_us: i64) -> f64 {
        let s: f64 = (self.starts.values())
            .map(|&t| (now_us.saturating_sub(t).max(0) as f64) / HOUR_US as f64)
            .map(|hours| 0.5f64.powf(hours))
            .sum();
        s / (s + 3.0)
    }

    /// Flapping: a score of [`FLAPPING`] or more (three restarts just now, or about five spread
    /// over the hour).
    pub fn flapping(&self, now_us: i64) -> bool {
        self.flapping_score(now_us) >= FLAPPING
    }

    /// The latest events, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &EventRow> {
        self.recent.values().rev()
    }

    fn forget_before(&mut self, since_us: i64) {
        self.starts.retain(|_, t| *t >= since_us);
    }
}

/// The flapping score from which uptop flags a service.
pub const FLAPPING: f64 = 0.5;

/// True for a start the restart policy made (the store's definition of a restart).
pub fn is_automatic_restart(record: &Record) -> bool {
    matches!(record.kind, EventKind::Started { .. }) && record.cause == "policy"
}

/// The highlight rule: the actual state is not what the desired state asks for. Wanted up,
/// anything but running (or stopping, the first half of a restart) differs; wanted down, a
/// running service differs; run once, only `failed` differs.
pub fn differs(status: &Status) -> bool {
    match status.want {
        Want::Up => !matches!(
            status.state,
            StateName::Running | StateName::Ready | StateName::Stopping
        ),
        Want::Down => status.state.is_up(),
        Want::Once => status.state == StateName::Failed,
    }
}

/// The want that counts for a listed service: the controller's desired state when the list
/// carries it (someone who talked to the buddy directly changed only the buddy's own want),
/// else the buddy's.
pub fn wanted(s: &ServiceSummary) -> Option<Want> {
    let st = s.status.as_ref()?;
    Some(s.desired.unwrap_or(st.want))
}

/// [`differs`] for a listed service, against [`wanted`].
pub fn summary_differs(s: &ServiceSummary) -> bool {
    match (&s.status, wanted(s)) {
        (Some(st), Some(want)) => differs(&Status { want, ..st.clone() }),
        _ => false,
    }
}

/// Everything uptop knows.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The link to the controller.
    pub link: Link,
    services: Vec<ServiceSummary>,
    activity: HashMap<String, Activity>,
    empty: Activity,
    /// Each running service's CPU time when its usage was last seen (µs, and when), and the
    /// share of one CPU it used between the last two looks.
    cpu: HashMap<String, (u64, i64, Option<f64>)>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            link: Link::Connecting,
            services: Vec::new(),
            activity: HashMap::new(),
            empty: Activity::default(),
            cpu: HashMap::new(),
        }
    }
}

/// Counts for the header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Configured services.
    pub services: usize,
    /// Count per state, in [`STATE_ORDER`].
    pub by_state: Vec<(StateName, usize)>,
    /// Services without a status file.
    pub unknown: usize,
    /// Services whose state differs from the desired one.
    pub differing: usize,
}

/// The order states are counted and sorted in: trouble first.
pub const STATE_ORDER: [StateName; 7] = [
    StateName::Failed,
    StateName::Paused,
    StateName::Backoff,
    StateName::Stopping,
    StateName::Stopped,
    StateName::Running,
    StateName::Ready,
];

impl Fleet {
    /// Applies one update at wall time `now_us`.
    pub fn apply(&mut self, update: Update, now_us: i64) {
        match update {
            Update::Connected {
                pid,
                access,
                services,
                starts,
            } => {
                self.link = Link::Connected { pid, access };
                self.set_services(services, now_us);
                for row in starts {
                    self.record(row);
                }
            }
            Update::Services(services) => self.set_services(services, now_us),
            Update::Event(row) => self.record(row),
            Update::Unreachable(error) => {
                let since_us = match &self.link {
                    Link::Unreachable { since_us, .. } => *since_us,
                    _ => now_us,
                };
                self.link = Link::Unreachable { error, since_us };
            }
            Update::Detail {
                service,
                events,
                stats,
            } => {
                let activity = self.activity.entry(service).or_default();
                activity.stats = stats;
                for row in events {
                    activity.record(row);
                }
            }
            Update::Done { .. } | Update::Failed(_) => {}
        }
        for activity in self.activity.values_mut() {
            activity.forget_before(now_us - HOUR_US);
        }
    }

    /// A new list of services: the CPU share of each is its CPU time since the last list
    /// over the wall time between them.
    fn set_services(&mut self, services: Vec<ServiceSummary>, now_us: i64) {
        let mut cpu = HashMap::new();
        for s in &services {
            let Some(u) = s.usage else { continue };
            let share = match self.cpu.get(&s.service) {
                Some(&(before, at, _)) if now_us > at && u.cpu_us >= before => {
                    Some((u.cpu_us - before) as f64 / (now_us - at) as f64 * 100.0)
                }
                Some(&(_, at, share)) if now_us == at => share,
                _ => None,
            };
            cpu.insert(s.service.clone(), (u.cpu_us, now_us, share));
        }
        self.cpu = cpu;
        self.services = services;
    }

    /// The share of one CPU (percent) service `id` used between the last two lists.
    pub fn cpu_percent(&self, id: &str) -> Option<f64> {
        self.cpu.get(id).and_then(|c| c.2)
    }

    fn record(&mut self, row: EventRow) {
        self.activity
            .entry(row.service.clone())
            .or_default()
            .record(row);
    }

    /// Every configured service, in id order.
    pub fn services(&self) -> &[ServiceSummary] {
        &self.services
    }

    /// One service by id.
    pub fn service(&self, id: &str) -> Option<&ServiceSummary> {
        self.services.iter().find(|s| s.service == id)
    }

    /// What uptop remembers of a service's events (nothing yet: an empty one).
    pub fn activity(&self, id: &str) -> &Activity {
        self.activity.get(id).unwrap_or(&self.empty)
    }

    /// Services that are flapping at `now_us` ([`Activity::flapping`]).
    pub fn flapping(&self, now_us: i64) -> usize {
        let flaps = |s: &&ServiceSummary| self.activity(&s.service).flapping(now_us);
        self.services.iter().filter(flaps).count()
    }

    /// True while the controller is reachable.
    pub fn connected(&self) -> bool {
        matches!(self.link, Link::Connected { .. })
    }

    /// Counts for the header.
    pub fn totals(&self) -> Totals {
        let states = || self.services.iter().filter_map(|s| s.status.as_ref());
        Totals {
            services: self.services.len(),
            by_state: STATE_ORDER
                .iter()
                .map(|&st| (st, states().filter(|s| s.state == st).count()))
                .filter(|&(_, n)| n > 0)
                .collect(),
            unknown: self.services.iter().filter(|s| s.status.is_none()).count(),
            differing: self.services.iter().filter(|s| summary_differs(s)).count(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use libupkeeper::Exit;

    pub fn status(id: &str, state: StateName, want: Want) -> Status {
        Status {
            service: id.into(),
            state,
            want,
            pid: (state == StateName::Running).then_some(100),
            pid_start: None,
            since_us: 0,
            buddy_pid: 1,
            restarts: 0,
            failures: 0,
            last_exit: None,
            next_start_us: None,
            incarnation: String::new(),
            seq: 1,
            acked: 1,
            loggers: Vec::new(),
            needs_ready: false,
            ready_timed_out: false,
            health: None,
            containment: Default::default(),
        }
    }

    pub fn summary(id: &str, state: StateName, want: Want) -> ServiceSummary {
        ServiceSummary {
            service: id.into(),
            uuid: None,
            file: format!("/etc/upkeeper.d/{id}.conf"),
            linked: true,
            status: Some(status(id, state, want)),
            desired: None,
            usage: None,
        }
    }

    pub fn event(id: i64, service: &str, wall_us: i64, kind: EventKind, cause: &str) -> EventRow {
        EventRow {
            id,
            service: service.into(),
            record: Record {
                seq: id as u64,
                wall_us,
                mono_us: wall_us,
                from: StateName::Backoff,
                to: StateName::Running,
                pid: Some(7),
                cause: cause.into(),
                kind,
            },
        }
    }

    #[test]
    fn the_highlight_rule() {
        use StateName::*;
        let cases = [
            (Want::Up, Running, false),
            (Want::Up, Stopping, false),
            (Want::Up, Stopped, true),
            (Want::Up, Failed, true),
            (Want::Up, Backoff, true),
            (Want::Up, Paused, true),
            (Want::Down, Stopped, false),
            (Want::Down, Stopping, false),
            (Want::Down, Running, true),
            (Want::Once, Running, false),
            (Want::Once, Stopped, false),
            (Want::Once, Failed, true),
        ];
        for (want, state, expected) in cases {
            assert_eq!(
                differs(&status("x", state, want)),
                expected,
                "{want:?}/{state:?}"
            );
        }
    }

    #[test]
    fn the_controllers_desired_state_wins_over_the_buddys_want() {
        // Stopped through its buddy's socket: the buddy wants it down, the controller up.
        let mut s = summary("x", StateName::Stopped, Want::Down);
        assert!(
            !summary_differs(&s),
            "without the controller's word, the buddy's want"
        );
        s.desired = Some(Want::Up);
        assert!(summary_differs(&s));
        assert_eq!(wanted(&s), Some(Want::Up));
        s.desired = Some(Want::Down);
        assert!(!summary_differs(&s));
    }

    #[test]
    fn restarts_count_once_and_only_automatic_ones_within_the_hour() {
        let now = 10 * HOUR_US;
        let mut fleet = Fleet::default();
        let policy = |id, ago| event(id, "web", now - ago, EventKind::STARTED, "policy");
        fleet.apply(
            Update::Connected {
                pid: 9,
                access: Access::Control,
                services: vec![summary("web", StateName::Running, Want::Up)],
                starts: vec![
                    policy(1, HOUR_US + 1), // too old
                    policy(2, 50 * 60_000_000),
                    event(3, "web", now - 1000, EventKind::STARTED, "uptop (uid 0)"),
                ],
            },
            now,
        );
        // The subscription replays the last snapshot event, then a new one.
        fleet.apply(Update::Event(policy(2, 50 * 60_000_000)), now);
        fleet.apply(Update::Event(policy(4, 1_000_000)), now);
        let web = fleet.activity("web");
        assert_eq!(web.restarts_since(now - HOUR_US), 2);
        let bins = web.restart_bins(now, 12);
        assert_eq!(bins.len(), 12);
        assert_eq!(bins[11], 1, "the newest slice: one second ago");
        assert_eq!(bins[1], 1, "fifty minutes ago: the second slice");
        assert_eq!(bins.iter().sum::<u64>(), 2);
        // Fifty minutes and one second old: S = 2^-(50/60) + ~1 = 1.56, below flapping.
        assert!((web.flapping_score(now) - 1.56 / 4.56).abs() < 0.01);
        assert!(!web.flapping(now));
        fleet.apply(Update::Event(policy(5, 1_000_000)), now);
        fleet.apply(Update::Event(policy(6, 1_000_000)), now);
        assert!(
            fleet.activity("web").flapping(now),
            "three restarts just now: 0.5"
        );
        assert_eq!(fleet.flapping(now), 1);
        let web = fleet.activity("web");
        assert_eq!(
            web.recent().map(|e| e.id).collect::<Vec<_>>(),
            [6, 5, 4, 3, 2, 1],
            "every event once, newest first"
        );
        // An hour later, both have aged out.
        fleet.apply(Update::Services(fleet.services().to_vec()), now + HOUR_US);
        assert_eq!(fleet.activity("web").restarts_since(0), 0);
        assert_eq!(fleet.activity("nope").restarts_since(0), 0);
    }

    #[test]
    fn the_link_remembers_since_when_it_is_down() {
        let mut fleet = Fleet::default();
        assert_eq!(fleet.link, Link::Connecting);
        fleet.apply(Update::Unreachable("gone".into()), 5);
        fleet.apply(Update::Unreachable("still gone".into()), 9);
        assert_eq!(
            fleet.link,
            Link::Unreachable {
                error: "still gone".into(),
                since_us: 5
            }
        );
        assert!(!fleet.connected());
    }

    #[test]
    fn totals_count_states_and_differences() {
        let mut fleet = Fleet::default();
        let mut gone = summary("c", StateName::Stopped, Want::Up);
        gone.status = None;
        let mut failed = summary("b", StateName::Failed, Want::Up);
        if let Some(s) = failed.status.as_mut() {
            s.last_exit = Some(Exit::Exited { code: 3 });
        }
        fleet.apply(
            Update::Services(vec![
                summary("a", StateName::Running, Want::Up),
                failed,
                gone,
                summary("d", StateName::Running, Want::Up),
            ]),
            0,
        );
        assert_eq!(
            fleet.totals(),
            Totals {
                services: 4,
                by_state: vec![(StateName::Failed, 1), (StateName::Running, 2)],
                unknown: 1,
                differing: 1,
            }
        );
    }
}
