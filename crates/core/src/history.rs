//! What the audit store answers with: stored events, audited commands, configuration changes
//! and per-service statistics, plus the filter of a history query.
//!
//! The controller's store produces these and the client protocol carries them, so they live
//! here, where the controller and every client (libupkeeper) share them. Times are
//! microseconds since the epoch; row ids are cursors (larger is newer).

use crate::event::Record;
use serde::{Deserialize, Serialize};

/// One audited operator command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEntry {
    /// When it was received, microseconds since the epoch.
    pub wall_us: i64,
    /// The caller's uid (SO_PEERCRED).
    pub uid: u32,
    /// The caller's gid.
    pub gid: u32,
    /// The caller's pid.
    pub pid: i32,
    /// The caller's command line (`/proc/PID/cmdline`, spaces between arguments).
    pub cmdline: String,
    /// The request as received.
    pub request: serde_json::Value,
    /// The service it names, if any.
    pub service: Option<String>,
    /// What happened (the buddy's answer, or the refusal).
    pub result: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Where the caller said it came from (its `hello`'s `origin`, e.g. `ssh ADDRESS:PORT`
    /// from `upkctl bridge`): reported by the caller, kept beside the authenticated `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// One configuration change: a file (re)loaded or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// When, microseconds since the epoch.
    pub wall_us: i64,
    /// The file.
    pub file: String,
    /// Its content hash (empty when removed).
    pub hash: String,
    /// The services it configured, changed or removed.
    pub services: Vec<String>,
}

/// Which events the store's history query returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryFilter {
    /// Only this service (`name` or `package::name`); all when `None`.
    pub service: Option<String>,
    /// Only events with `wall_us >= since_us`.
    pub since_us: Option<i64>,
    /// Only events with `wall_us < until_us`.
    pub until_us: Option<i64>,
    /// Only these kinds (`died`, `started`, ...); all when empty.
    pub kinds: Vec<String>,
    /// Only rows with a larger id (a cursor: the last id already seen).
    pub after_id: Option<i64>,
    /// Only rows with a smaller id (a cursor when paging newest first).
    pub before_id: Option<i64>,
    /// At most this many rows.
    pub limit: Option<usize>,
    /// The newest rows first (with `limit`: the last N).
    pub newest_first: bool,
    /// In time order (`wall_us`, then id) instead of storage order, oldest first (not with
    /// `newest_first`); then `after_id` continues after the row with that id at `since_us`,
    /// which is how a client pages (docs/protocol.md). The store answers a time window this
    /// way from its time index, however many rows the window holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_time: bool,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Row id: a cursor across all services.
    pub id: i64,
    /// The service id.
    pub service: String,
    /// The record as the buddy made it.
    #[serde(flatten)]
    pub record: Record,
}

/// One audited command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRow {
    /// Row id.
    pub id: i64,
    /// The command.
    #[serde(flatten)]
    pub entry: CommandEntry,
}

/// One configuration change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChangeRow {
    /// Row id.
    pub id: i64,
    /// The change.
    #[serde(flatten)]
    pub change: ConfigChange,
}

/// Automatic restarts within one clock hour (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourBucket {
    /// Start of the hour, microseconds since the epoch (a multiple of 3,600,000,000).
    pub start_us: i64,
    /// Automatic restarts (`started` with cause `policy`) in it.
    pub restarts: u64,
}

/// A service's figures over a window (see docs/audit.md for the formulas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The service.
    pub service: String,
    /// Window start.
    pub since_us: i64,
    /// Window end ("now").
    pub until_us: i64,
    /// Automatic restarts in the window.
    pub restarts: u64,
    /// Hours of the window with at least one restart, oldest first.
    pub restarts_per_hour: Vec<HourBucket>,
    /// Failures (deaths on its own, failed starts) in the window.
    pub failures: u64,
    /// Fraction of the observed part of the window spent `running`; `None` if nothing is known.
    pub uptime: Option<f64>,
    /// Microseconds from the last failure ever (before `until_us`) to `until_us`.
    pub since_last_failure_us: Option<i64>,
    /// 0 (steady) to 1 (restarting all the time): `S / (S + 3)`, S = restarts in the window
    /// each weighted `2^-(age / 1 h)`.
    pub flapping: f64,
    /// The state after the last event before `until_us`.
    pub state: Option<String>,
}

/// How far back `why` looks for the streak a death belongs to (deaths, newest first).
pub const WHY_SCAN: usize = 2000;

/// `why` counts a service's failures in the hour before a death up to this many: a crash loop
/// of thousands an hour says "1000+" at the cost of reading a thousand rows, not all of them.
pub const FAILURES_COUNTED: u64 = 1000;

/// A run that lasted at least this long (microseconds) was a good run, however it ended.
pub const GOOD_RUN_US: i64 = 60_000_000;

/// Everything the store knows that explains one death of a service: the answer to `why`.
/// Rows are as stored; `upkctl why` turns them into sentences (docs/insight.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Why {
    /// The service.
    pub service: String,
    /// The death explained (`died` or `spawn_failed`): the last at or before the time asked.
    pub death: Option<EventRow>,
    /// The `started` record of that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<EventRow>,
    /// The run's last records before its death (health changes, the stop and its signals),
    /// oldest first, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub during: Vec<EventRow>,
    /// What followed the death (the restart policy's decision, the next start), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<EventRow>,
    /// Failed runs in a row up to and including this death (within [`WHY_SCAN`] deaths).
    pub streak: u64,
    /// When the first of them died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streak_since_us: Option<i64>,
    /// Failures of the service in the hour up to the death, counted up to
    /// [`FAILURES_COUNTED`] (that many means at least that many).
    pub failures_last_hour: u64,
    /// The last good run before the streak: its `started` record (with its configuration
    /// hash) and when it ended; `None` when none was found within [`WHY_SCAN`] deaths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<GoodRun>,
    /// Configuration changes naming the service since the last good run began (or in the
    /// day before the death when there was none), oldest first, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_changes: Vec<ConfigChangeRow>,
    /// Other services' deaths and failed starts from two minutes before the death to ten
    /// seconds after, oldest first, at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub around: Vec<EventRow>,
    /// The first failure of the cascade: following failures back, two minutes at a time, for
    /// at most ten minutes (this death itself when nothing failed before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<EventRow>,
    /// The services that provide its prerequisites, each with its last record out of
    /// `running`/`ready` in the ten minutes before the death.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Prerequisite>,
    /// Commands naming the service from its run's start to the death, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandRow>,
}

/// A run that went well, for comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoodRun {
    /// Its `started` record, when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<EventRow>,
    /// When it ended (its death, or the `stable` record that proved it good).
    pub until_us: i64,
}

/// A prerequisite's provider, as `why` saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prerequisite {
    /// The providing service.
    pub service: String,
    /// The prerequisite name it provides.
    pub provides: String,
    /// Its last record leaving `running`/`ready` in the ten minutes before the death.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub went_down: Option<EventRow>,
}
