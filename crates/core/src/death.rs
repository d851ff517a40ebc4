//! Why a run ended: the classification every `died` record carries, and the sentence that
//! explains it (docs/insight.md).
//!
//! The buddy decides a death's [`Reason`] from what it alone saw: how the process ended
//! ([`Exit`]), whether the memory controller counted an OOM kill in the run, whether a stop of
//! its own was under way (by whom, [`StopBy`], and how far its escalation had gone,
//! [`StopStep`]), and whether the shell had to report an exec failure. [`Reason::decide`] is
//! that decision, pure and in one place, so that the buddy, the store, metrics and `upkctl why`
//! cannot disagree. [`Tail`] is what the service last wrote, bounded by [`TAIL_LINES`] and
//! [`TAIL_BYTES`] (both streams together), so a crash storm cannot make records large.

use crate::event::Exit;
use serde::{Deserialize, Serialize};

/// The most lines of output a death keeps.
pub const TAIL_LINES: usize = 20;
/// The most bytes of output a death keeps, stdout and stderr together.
pub const TAIL_BYTES: usize = 2048;
/// The longest line kept; longer ones are cut (with `…`).
pub const LINE_MAX: usize = 512;

/// Why a run ended, as upkeeper decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// `exit(0)` on its own.
    Exited,
    /// A non-zero exit code other than the shell's 126 and 127.
    Failed,
    /// Exit 126 from the shell: the program was found but could not be executed.
    NotExecutable,
    /// Exit 127 from the shell: the program was not found.
    NotFound,
    /// Killed by a signal outside a stop of upkeeper's (`kill -9` by anyone, `upkctl signal`).
    Signal,
    /// Killed by a signal that dumped core.
    CoreDumped,
    /// Killed by the kernel's OOM killer (the memory controller counted it).
    Oom,
    /// Ended by a stop of upkeeper's: a command, a restart, the buddy's own exit.
    Stopped,
    /// Ended by the stop that followed failed health checks.
    Unhealthy,
    /// The process ended but its status is unknown (it was adopted, not our child).
    Unknown,
}

impl Reason {
    /// Decides the reason from what the buddy saw. `shell` is true when the start script ran
    /// through the shell (whose 126 and 127 mean "cannot execute" and "not found"); a program
    /// started directly owns its exit codes.
    ///
    /// `oom` (the memory controller counted an OOM kill during the run) wins, except over a
    /// stop of upkeeper's: a run that a stop under way ended is stopped, unless it was killed
    /// by a SIGKILL the stop had not sent yet (the kernel's, then).
    pub fn decide(exit: Exit, oom: bool, stop: Option<&StopBy>, shell: bool) -> Reason {
        let sigkill = matches!(exit, Exit::Killed { signal, .. } if signal == libc::SIGKILL);
        match stop {
            Some(s) if oom && sigkill && s.step != StopStep::Kill => return Reason::Oom,
            Some(s) if s.cause == UNHEALTHY => return Reason::Unhealthy,
            Some(_) => return Reason::Stopped,
            None if oom => return Reason::Oom,
            None => {}
        }
        match exit {
            Exit::Exited { code: 0 } => Reason::Exited,
            Exit::Exited { code: 126 } if shell => Reason::NotExecutable,
            Exit::Exited { code: 127 } if shell => Reason::NotFound,
            Exit::Exited { .. } => Reason::Failed,
            Exit::Killed { core: true, .. } => Reason::CoreDumped,
            Exit::Killed { .. } => Reason::Signal,
            Exit::Unknown => Reason::Unknown,
        }
    }

    /// The kebab-case name used in records, metrics labels and `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exited => "exited",
            Reason::Failed => "failed",
            Reason::NotExecutable => "not-executable",
            Reason::NotFound => "not-found",
            Reason::Signal => "signal",
            Reason::CoreDumped => "core-dumped",
            Reason::Oom => "oom",
            Reason::Stopped => "stopped",
            Reason::Unhealthy => "unhealthy",
            Reason::Unknown => "unknown",
        }
    }

    /// True when the service itself failed (not a clean exit, not a stop of ours).
    pub fn is_failure(self) -> bool {
        !matches!(self, Reason::Exited | Reason::Stopped | Reason::Unknown)
    }
}

/// True when `record` is a failure of the service: a failed start, or a death whose reason
/// is a failure (for records made before reasons: an exit of its own with a code other than
/// 0, as the statistics always counted them).
pub fn failed(record: &crate::event::Record) -> bool {
    use crate::event::EventKind;
    match &record.kind {
        EventKind::SpawnFailed { .. } => true,
        EventKind::Died { reason, exit, .. } => match reason {
            Some(r) => r.is_failure(),
            None => record.cause == "exit" && !exit.success() && *exit != Exit::Unknown,
        },
        _ => false,
    }
}

/// The cause the machine records when failed health checks begin a stop.
pub const UNHEALTHY: &str = "unhealthy";

/// A stop of upkeeper's that was under way when the service died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopBy {
    /// The stop's cause, as its `stopping` record has it: `command from uid 0 (upkctl ...)`,
    /// `unhealthy`, `buddy terminating`, ...
    pub cause: String,
    /// How far the escalation had gone.
    pub step: StopStep,
}

/// The steps of a stop's escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopStep {
    /// The stop action (the stop script, by default SIGTERM to the main process).
    StopAction,
    /// SIGTERM to the whole group, at half the KillTimeout.
    Term,
    /// SIGKILL to the whole group, at the KillTimeout.
    Kill,
}

impl StopStep {
    /// What the step sent, for sentences.
    pub fn describe(self) -> &'static str {
        match self {
            StopStep::StopAction => "its stop action",
            StopStep::Term => "SIGTERM to its process group (the stop action had not ended it)",
            StopStep::Kill => "SIGKILL to its process group at the KillTimeout",
        }
    }
}

/// The last lines the service wrote before it died, per stream (from its redirect files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    /// The last lines of stderr, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr: Vec<String>,
    /// The last lines of stdout (empty when stdout and stderr are one file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stdout: Vec<String>,
}

impl Tail {
    /// True when nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.stderr.is_empty() && self.stdout.is_empty()
    }
}

/// The last whole lines of `bytes` (a file's end), at most `lines` of them and `budget` bytes
/// (which is lowered by what they take): invalid UTF-8 is replaced, a cut-off first line is
/// dropped unless `whole_start` says the bytes begin at a line's start (or it is all there
/// is: a last line longer than the window is kept as its end, after `…`), lines past
/// [`LINE_MAX`] are cut, and a last line without its newline is kept.
pub fn last_lines(
    bytes: &[u8],
    whole_start: bool,
    lines: usize,
    budget: &mut usize,
) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut all: Vec<&str> = text.split('\n').collect();
    if all.last() == Some(&"") {
        all.pop();
    }
    let fragment = !whole_start && all.len() == 1;
    if !whole_start && all.len() > 1 {
        all.remove(0);
    }
    let mut kept = Vec::new();
    for line in all.into_iter().rev() {
        if kept.len() >= lines {
            break;
        }
        let line = line.trim_end_matches('\r');
        let line = if fragment {
            format!("…{}", end_of(line, LINE_MAX))
        } else {
            cut(line, LINE_MAX)
        };
        let cost = line.len() + 1;
        if cost > *budget {
            break;
        }
        *budget -= cost;
        kept.push(line);
    }
    kept.reverse();
    kept
}

/// The last `max` bytes of `line` at most, from a character's start.
fn end_of(line: &str, max: usize) -> &str {
    let mut start = line.len().saturating_sub(max);
    while !line.is_char_boundary(start) {
        start += 1;
    }
    &line[start..]
}

fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// One sentence on how a run ended: the reason with its detail (`exited with code 127: the
/// program was not found (ENOENT)`, `killed by SIGSEGV (core dumped)`, `stopped by command
/// from uid 0: ended at its stop action`).
pub fn sentence(
    exit: Exit,
    reason: Reason,
    stop: Option<&StopBy>,
    exec_error: Option<&str>,
) -> String {
    let errno = exec_error.map(|e| format!(" ({e})")).unwrap_or_default();
    match reason {
        Reason::Exited => "exited with code 0 on its own".into(),
        Reason::Failed => format!("{exit}"),
        Reason::NotExecutable => {
            format!("{exit}: the program could not be executed{errno}")
        }
        Reason::NotFound => format!("{exit}: the program was not found{errno}"),
        Reason::Signal => format!("{exit}, outside a stop of upkeeper's"),
        Reason::CoreDumped => format!("{exit}"),
        Reason::Oom => format!("{exit}: the kernel's OOM killer (its memory limit was reached)"),
        Reason::Stopped | Reason::Unhealthy => {
            let by = match stop {
                Some(s) if reason == Reason::Unhealthy => {
                    format!(
                        "stopped because its health checks failed; {exit} after {}",
                        s.step.describe()
                    )
                }
                Some(s) => format!("stopped ({}); {exit} after {}", s.cause, s.step.describe()),
                None => format!("stopped; {exit}"),
            };
            by
        }
        Reason::Unknown => format!("{exit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(code: i32) -> Exit {
        Exit::Exited { code }
    }

    #[test]
    fn each_death_gets_its_reason() {
        let stop = |cause: &str| StopBy {
            cause: cause.into(),
            step: StopStep::Kill,
        };
        let segv = Exit::Killed {
            signal: 11,
            core: true,
        };
        let kill = Exit::Killed {
            signal: 9,
            core: false,
        };
        assert_eq!(Reason::decide(code(0), false, None, true), Reason::Exited);
        assert_eq!(Reason::decide(code(3), false, None, true), Reason::Failed);
        assert_eq!(
            Reason::decide(code(127), false, None, true),
            Reason::NotFound
        );
        assert_eq!(
            Reason::decide(code(126), false, None, true),
            Reason::NotExecutable
        );
        // A program started without the shell owns its exit codes.
        assert_eq!(
            Reason::decide(code(127), false, None, false),
            Reason::Failed
        );
        assert_eq!(Reason::decide(segv, false, None, false), Reason::CoreDumped);
        assert_eq!(Reason::decide(kill, false, None, false), Reason::Signal);
        assert_eq!(Reason::decide(kill, true, None, false), Reason::Oom);
        let by = stop("command from uid 0");
        assert_eq!(
            Reason::decide(kill, false, Some(&by), false),
            Reason::Stopped
        );
        let by = stop(UNHEALTHY);
        assert_eq!(
            Reason::decide(kill, false, Some(&by), false),
            Reason::Unhealthy
        );
        // An OOM kill counted during the run: a stop that sent the SIGKILL itself still is a
        // stop; one that had only sent SIGTERM did not kill it, the kernel did.
        let by = stop("command from uid 0");
        assert_eq!(
            Reason::decide(kill, true, Some(&by), false),
            Reason::Stopped
        );
        let term = StopBy {
            cause: "command from uid 0".into(),
            step: StopStep::Term,
        };
        assert_eq!(Reason::decide(kill, true, Some(&term), false), Reason::Oom);
        assert_eq!(
            Reason::decide(code(0), true, Some(&term), false),
            Reason::Stopped
        );
        assert_eq!(
            Reason::decide(Exit::Unknown, false, None, false),
            Reason::Unknown
        );
        assert!(Reason::Oom.is_failure() && !Reason::Stopped.is_failure());
    }

    #[test]
    fn the_tail_is_bounded_and_whole_lines() {
        let mut budget = 30;
        let got = last_lines(b"cut-off\none\ntwo\nthree", false, 10, &mut budget);
        assert_eq!(got, ["one", "two", "three"]);
        assert_eq!(budget, 30 - 14);
        let mut budget = 9;
        assert_eq!(
            last_lines(b"one\ntwo\nthree\n", true, 10, &mut budget),
            ["three"]
        );
        let mut budget = 1000;
        assert_eq!(last_lines(b"a\nb\nc\n", true, 2, &mut budget), ["b", "c"]);
        let long = "é".repeat(LINE_MAX);
        let mut budget = 4096;
        let got = last_lines(long.as_bytes(), true, 1, &mut budget);
        assert!(got[0].len() <= LINE_MAX + "…".len() && got[0].ends_with('…'));
        let mut budget = 100;
        assert_eq!(
            last_lines(b"\xff\xfeok\n", true, 5, &mut budget),
            ["\u{fffd}\u{fffd}ok"]
        );
        // A last line longer than the window read: its end, not nothing.
        let window = format!("{}\n", "é".repeat(LINE_MAX));
        let mut budget = 4096;
        let got = last_lines(window.as_bytes(), false, 5, &mut budget);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with('…') && got[0].ends_with('é'), "{got:?}");
        assert!(got[0].len() <= LINE_MAX + "…".len());
    }

    #[test]
    fn sentences_name_the_cause() {
        let s = sentence(
            code(127),
            Reason::NotFound,
            None,
            Some("ENOENT: No such file or directory"),
        );
        assert!(s.contains("not found") && s.contains("ENOENT"), "{s}");
        let by = StopBy {
            cause: "command from uid 0".into(),
            step: StopStep::Kill,
        };
        let kill = Exit::Killed {
            signal: 9,
            core: false,
        };
        let s = sentence(kill, Reason::Stopped, Some(&by), None);
        assert!(s.contains("uid 0") && s.contains("SIGKILL"), "{s}");
    }
}
