//! Event records: what a buddy remembers about its service, and what the controller stores.
//!
//! Every transition and every command effect becomes one [`Record`]: a per-buddy sequence
//! number (contiguous, never reused for one run directory), wall and monotonic microseconds,
//! the states before and after, the pid concerned, the cause, and the kind-specific detail.
//! When records had to be dropped, a [`EventKind::Lost`] record stands in their place and
//! counts them, so a gap is never silent.

use crate::death::{Reason, StopBy, Tail};
use serde::{Deserialize, Serialize};

/// The lifecycle states a buddy reports (see `docs/state-machine.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateName {
    /// Not running and not wanted.
    Stopped,
    /// Running (the main process exists). For a service with a readiness protocol: not yet
    /// ready.
    Running,
    /// Running and ready: the service said so (`Readiness`). Services without a readiness
    /// protocol never enter it; for them `running` is up.
    Ready,
    /// A stop is in progress: stop script, then SIGTERM, then SIGKILL of the group.
    Stopping,
    /// Dead and waiting to be restarted (rate limit, jitter).
    Backoff,
    /// Dead, restarts paused because UserMaxRestarts were used up in UserRestartWindow.
    Paused,
    /// Gave up after MaxConsecutiveFailures; stays so until a command.
    Failed,
}

impl StateName {
    /// True while the main process runs: `running` or `ready`.
    pub fn is_up(self) -> bool {
        matches!(self, StateName::Running | StateName::Ready)
    }

    /// The lowercase name used in status files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Stopped => "stopped",
            StateName::Running => "running",
            StateName::Ready => "ready",
            StateName::Stopping => "stopping",
            StateName::Backoff => "backoff",
            StateName::Paused => "paused",
            StateName::Failed => "failed",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "how")]
pub enum Exit {
    /// `exit(code)`.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// Killed by a signal.
    Killed {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core: bool,
    },
    /// The process ended but its status could not be known (it was adopted, not our child).
    Unknown,
}

impl Exit {
    /// True for `exit(0)`.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Exited { code: 0 })
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Exited { code } => write!(f, "exited with code {code}"),
            Exit::Killed { signal, core } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(
                    f,
                    "killed by {name}{}",
                    if *core { " (core dumped)" } else { "" }
                )
            }
            Exit::Unknown => f.write_str("ended (status unknown: adopted process)"),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What happened. Serialised with a `kind` tag; the remaining fields are the detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EventKind {
    /// The buddy started (or restarted) on its run directory.
    BuddyStarted {
        /// The buddy's pid.
        buddy_pid: i32,
    },
    /// The buddy is exiting (SIGTERM/SIGINT or a shutdown command).
    BuddyExiting,
    /// The service was started: `actions/start` was executed.
    Started {
        /// The hash of the configuration the run has (`settings.json`'s `config_hash`, as
        /// `services.config_hash` and `upkctl check` have it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
    },
    /// Starting failed before the service could run (fork/exec, privilege drop).
    SpawnFailed {
        /// One sentence.
        error: String,
    },
    /// A running service found on start-up was adopted instead of started again.
    Adopted,
    /// The main process ended.
    Died {
        /// How.
        exit: Exit,
        /// Seconds it ran.
        uptime: f64,
        /// The service's memory controller counted an OOM kill during this run.
        #[serde(default, skip_serializing_if = "is_false")]
        oom: bool,
        /// What the run cost, read from its cgroup as it ended (CPU over the run, memory peak
        /// where the kernel keeps one); absent without a cgroup.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<crate::cgroup::Cost>,
        /// Why it ended, decided by [`Reason::decide`] (absent in records of older buddies).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        /// The stop of upkeeper's that was under way, if one was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop: Option<StopBy>,
        /// Why the program could not be executed, when the buddy knows (`ENOENT: ...`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_error: Option<String>,
        /// The last lines it wrote (bounded: [`crate::death::TAIL_LINES`] and
        /// [`crate::death::TAIL_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<Box<Tail>>,
    },
    /// A stop began.
    Stopping,
    /// A signal was sent to the service (by escalation or by command).
    Signaled {
        /// Signal number.
        signal: i32,
        /// Sent to the whole process group.
        group: bool,
    },
    /// The service is stopped and its process group is empty.
    Stopped,
    /// A restart was scheduled.
    RestartScheduled {
        /// Seconds from now.
        delay: f64,
        /// Consecutive failures so far.
        failures: u32,
    },
    /// UserMaxRestarts were used up within UserRestartWindow; restarts resume after `delay`.
    RestartsPaused {
        /// Seconds until restarts resume.
        delay: f64,
        /// Restarts counted in the window.
        restarts: u32,
    },
    /// MaxConsecutiveFailures reached: the service is `failed` until a command, or until
    /// the cool-down (`FailedRetryAfter`) ends.
    GaveUp {
        /// Consecutive failures.
        failures: u32,
        /// Seconds until the buddy tries again, when a cool-down is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in: Option<f64>,
    },
    /// The service said it is ready (`running` -> `ready`).
    Ready {
        /// How: `notification fd`, `sd_notify READY=1` or `health check`.
        via: String,
    },
    /// The service did not become ready within ReadyTimeout; it keeps running, and services
    /// waiting for it are started anyway.
    ReadyTimeout {
        /// Seconds since the start.
        after: f64,
    },
    /// A health check changed the service's health.
    Health {
        /// `healthy` or `unhealthy`.
        health: Health,
        /// Failed probes in a row.
        failures: u32,
        /// How the last probe ended, and the first line of its output.
        detail: String,
    },
    /// The service ran for the stable uptime after failures: the failure count is cleared.
    Stable {
        /// The failures forgotten.
        failures: u32,
    },
    /// A notification hook finished (or was killed at its timeout).
    HookRun {
        /// The hook's name.
        hook: String,
        /// The event it ran for.
        event: String,
        /// How it ended.
        exit: Exit,
        /// It ran past its Timeout and its process group was killed.
        timed_out: bool,
    },
    /// A notification hook could not run (still running from an earlier event, or spawn error).
    HookSkipped {
        /// The hook's name.
        hook: String,
        /// The event it was due for.
        event: String,
        /// Why.
        reason: String,
    },
    /// An action script (stop, reload, custom) finished.
    ActionRun {
        /// `stop`, `reload` or the custom action's name.
        action: String,
        /// How it ended.
        exit: Exit,
    },
    /// A logger (Pipe*Script) started.
    LoggerStarted {
        /// `stdout` or `stderr`.
        stream: String,
    },
    /// A logger ended; it is restarted.
    LoggerDied {
        /// `stdout` or `stderr`.
        stream: String,
        /// How.
        exit: Exit,
    },
    /// Something about how the service is kept or limited: no cgroup and why, a limit not
    /// enforced (one sentence).
    Containment {
        /// The sentence.
        note: String,
    },
    /// Records were dropped; this one stands in for them.
    Lost {
        /// How many records were lost.
        count: u64,
        /// Why (ring overflow, previous buddy killed with records pending).
        reason: String,
    },
}

impl EventKind {
    /// A `died` record with nothing but how and after how long (the rest is filled in as the
    /// buddy learns it).
    pub fn died(exit: Exit, uptime: f64) -> EventKind {
        EventKind::Died {
            exit,
            uptime,
            oom: false,
            cost: None,
            reason: None,
            stop: None,
            exec_error: None,
            tail: None,
        }
    }

    /// A `started` record without a configuration hash.
    pub const STARTED: EventKind = EventKind::Started { config: None };
}

/// A service's health, as its health checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No verdict yet since the start (start period, or fewer probes than needed).
    Unknown,
    /// The last probe succeeded.
    Healthy,
    /// HealthRetries probes in a row failed.
    Unhealthy,
}

impl Health {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One event as recorded, delivered and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Per run directory, contiguous; for a `Lost` record, the last lost sequence number.
    pub seq: u64,
    /// Microseconds since the epoch.
    pub wall_us: i64,
    /// Microseconds on CLOCK_MONOTONIC.
    pub mono_us: i64,
    /// State before.
    pub from: StateName,
    /// State after.
    pub to: StateName,
    /// The process concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Why: `policy`, `command`, `signal`, `adoption`, ...
    pub cause: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Record {
    /// One human line: `state change, what happened, pid, cause`, without the time.
    pub fn summary(&self) -> String {
        let what = match &self.kind {
            EventKind::BuddyStarted { .. } => "buddy started".into(),
            EventKind::BuddyExiting => "buddy exiting".into(),
            EventKind::Started { .. } => "started".into(),
            EventKind::SpawnFailed { error } => format!("could not start: {error}"),
            EventKind::Adopted => "adopted a running service".into(),
            EventKind::Died {
                exit,
                uptime,
                oom,
                reason,
                stop,
                exec_error,
                ..
            } => match reason {
                Some(r) => format!(
                    "{} after {uptime:.3}s",
                    crate::death::sentence(*exit, *r, stop.as_ref(), exec_error.as_deref())
                ),
                None => format!(
                    "{exit}{} after {uptime:.3}s",
                    if *oom {
                        " (out of memory: the OOM killer)"
                    } else {
                        ""
                    }
                ),
            },
            EventKind::Stopping => "stopping".into(),
            EventKind::Signaled { signal, group } => {
                let name = nix::sys::signal::Signal::try_from(*signal).map_or("?", |s| s.as_str());
                format!(
                    "sent {name}{}",
                    if *group { " to the process group" } else { "" }
                )
            }
            EventKind::Stopped => "stopped".into(),
            EventKind::RestartScheduled { delay, failures } => {
                format!("restart in {delay:.3}s ({failures} consecutive failures)")
            }
            EventKind::RestartsPaused { delay, restarts } => {
                format!("{restarts} restarts in the window: paused for {delay:.3}s")
            }
            EventKind::GaveUp { failures, retry_in } => match retry_in {
                Some(t) => {
                    format!("gave up after {failures} consecutive failures; retry in {t:.3}s")
                }
                None => format!("gave up after {failures} consecutive failures"),
            },
            EventKind::Ready { via } => format!("ready ({via})"),
            EventKind::ReadyTimeout { after } => format!("not ready after {after:.3}s"),
            EventKind::Health {
                health,
                failures,
                detail,
            } => format!(
                "{} ({failures} failed probes in a row): {detail}",
                health.as_str()
            ),
            EventKind::Stable { failures } => {
                format!("running stably: {failures} failures forgotten")
            }
            EventKind::HookRun {
                hook,
                event,
                exit,
                timed_out,
            } => format!(
                "hook {hook} ({event}): {exit}{}",
                if *timed_out { " at its timeout" } else { "" }
            ),
            EventKind::HookSkipped {
                hook,
                event,
                reason,
            } => format!("hook {hook} ({event}) skipped: {reason}"),
            EventKind::ActionRun { action, exit } => format!("action {action}: {exit}"),
            EventKind::LoggerStarted { stream } => format!("{stream} logger started"),
            EventKind::LoggerDied { stream, exit } => format!("{stream} logger {exit}"),
            EventKind::Lost { count, reason } => format!("{count} events lost ({reason})"),
            EventKind::Containment { note } => format!("containment: {note}"),
        };
        let pid = self.pid.map(|p| format!(" pid {p}")).unwrap_or_default();
        let arrow = if self.from == self.to {
            self.to.as_str().to_owned()
        } else {
            format!("{}->{}", self.from.as_str(), self.to.as_str())
        };
        format!("[{arrow}] {what}{pid} ({})", self.cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_flat_kind() {
        let r = Record {
            seq: 7,
            wall_us: 1,
            mono_us: 2,
            from: StateName::Running,
            to: StateName::Backoff,
            pid: Some(42),
            cause: "policy".into(),
            kind: EventKind::died(
                Exit::Killed {
                    signal: 9,
                    core: false,
                },
                0.5,
            ),
        };
        let text = serde_json::to_string(&r).expect("serialise");
        assert!(text.contains(r#""kind":"died""#), "{text}");
        let back: Record = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }
}
