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
