//! The status file: `SvcRunPath/<id>/status`, one JSON object, replaced atomically by the buddy
//! on every transition.
//!
//! It answers "what is this service doing" with no daemon running (a reader never sees a torn
//! file), and it is how a new buddy recognises a service left running by a killed predecessor:
//! `pid` plus `pid_start` (the process start time from `/proc/PID/stat`, field 22) identify the
//! process even if the pid was recycled. `seq`/`acked` let the new buddy report records that
//! died unacknowledged with its predecessor, and `incarnation` names the sequence those seqs
//! belong to: a buddy that finds no status file (after a reboot, a wiped run directory, a
//! re-created service) starts a new incarnation at seq 1, so seqs never collide in the store,
//! whose key is (service, incarnation, seq).

use crate::event::{Exit, Health, StateName};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the buddy is trying to achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Want {
    /// Keep it running (restart by policy).
    Up,
    /// Keep it stopped.
    Down,
    /// Run it once; do not restart when it ends.
    Once,
}

/// The status record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The service id.
    pub service: String,
    /// Current state.
    pub state: StateName,
    /// Desired state.
    pub want: Want,
    /// The main process, when there is one (running, ready or stopping).
    #[serde(default)]
    pub pid: Option<i32>,
    /// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Wall microseconds when the current state was entered (for `ready`: when its run
    /// started, so that uptime counts from the start).
    pub since_us: i64,
    /// The buddy's pid.
    pub buddy_pid: i32,
    /// Automatic restarts of this run directory, carried from buddy to buddy (a new run
    /// directory, as after a reboot that empties SvcRunPath, starts from 0).
    pub restarts: u64,
    /// Consecutive failures counted by the restart policy.
    pub failures: u32,
    /// How the last run ended.
    #[serde(default)]
    pub last_exit: Option<Exit>,
    /// When the next start is due (backoff, paused), wall microseconds.
    #[serde(default)]
    pub next_start_us: Option<i64>,
    /// The record sequence the seqs belong to: a random id made by the buddy that started it
    /// (32 hex digits); empty for a sequence begun by a buddy older than incarnations.
    #[serde(default)]
    pub incarnation: String,
    /// Last sequence number assigned.
    pub seq: u64,
    /// Highest sequence number acknowledged by a controller.
    pub acked: u64,
    /// The running Pipe*Script loggers, so a buddy replacing a killed one can retire them.
    #[serde(default)]
    pub loggers: Vec<Proc>,
    /// The service has a readiness protocol: it is up for its dependants once `ready`.
    #[serde(default)]
    pub needs_ready: bool,
    /// This run did not become ready within ReadyTimeout (its dependants start anyway).
    #[serde(default)]
    pub ready_timed_out: bool,
    /// Its health, when it has a HealthCheck and runs.
    #[serde(default)]
    pub health: Option<Health>,
    /// Where its processes are kept (a cgroup, or the process group) and the limits that
    /// are not enforced.
    #[serde(default)]
    pub containment: Box<crate::cgroup::Containment>,
}

/// A process identified beyond its (recyclable) pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// The pid.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Proc {
    /// True while this very process (same pid, same start time) lives and is not a zombie.
    pub fn alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start) && process_state(self.pid) != Some('Z')
    }
}

impl Status {
    /// True when services that need this one may start: it is `ready`, or it runs and has no
    /// readiness protocol, or it did not become ready in time (which was recorded).
    pub fn serves(&self) -> bool {
        match self.state {
            StateName::Ready => true,
            StateName::Running => !self.needs_ready || self.ready_timed_out,
            _ => false,
        }
    }

    /// Reads a status file; `Ok(None)` if there is none.
    pub fn read(path: &Path) -> std::io::Result<Option<Status>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the status file atomically (mode 0644: anyone may read a service's state).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        text.push(b'\n');
        crate::fsutil::write_atomic(path, &text, 0o644, false)
    }
}

/// Highest sequence number a buddy continues from a status file: beyond it (a corrupt or
/// hostile file) it begins a new incarnation instead, so a seq never wraps and always fits
/// the store's signed 64-bit column.
pub const MAX_SEQ: u64 = 1 << 62;

/// A new incarnation id: 128 random bits as 32 lowercase hex digits (from getrandom; should
/// the kernel refuse, from the time, the pid and the address of a stack value, which still
/// never repeat on one host).
pub fn new_incarnation() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).ok() != Some(bytes.len()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mixed = now ^ (u128::from(std::process::id()) << 64) ^ (&got as *const _ as u128);
        bytes = mixed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The start time of a process (`/proc/PID/stat` field 22), or `None` if it is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    crate::procfs::Stat::of(pid).map(|s| s.start_time)
}

/// The one-letter state of a process (`/proc/PID/stat` field 3), or `None` if it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    crate::procfs::Stat::of(pid).map(|s| s.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me).expect("own start time");
        assert_eq!(Some(a), process_start_time(me));
        assert!(matches!(process_state(me), Some('R' | 'S')));
    }
}
