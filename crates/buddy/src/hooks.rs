//! Notification hooks: which hooks an event calls for and the context they get (the runs in
//! flight are in the child registry).
//!
//! A hook is `scripts/hook@<name>`, run by the buddy with the buddy's own credentials (it is
//! the operator's code, not the service's: it may page someone or mark an OpenRC service
//! failed) in its own session, stdin `/dev/null`, output appended to `log/hooks`. It never
//! blocks supervision: the loop only spawns it and reaps it later. A hook still running when
//! its next event comes is skipped (and that is recorded); one that outlives its Timeout has
//! its process group killed. Every run ends in a `hook_run` record, so hooks are audited
//! like everything else.
//!
//! The context is in the environment: `UPK_SERVICE`, `UPK_HOOK`, `UPK_EVENT`, `UPK_STATE`,
//! `UPK_PID`, `UPK_EXIT_CODE` or `UPK_SIGNAL` (how the last run ended), `UPK_RESTARTS`,
//! `UPK_FAILURES`, `UPK_HEALTH`, `UPK_STDERR_TAIL` (the last lines of the service's stderr
//! file) and `UPK_EVENTS` (the service's latest records, one summary per line, oldest first).

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use upk_core::config::HookEvent;
use upk_core::event::{Exit, Record};

/// How many recent records `UPK_EVENTS` carries.
pub const RECENT: usize = 10;
/// How many lines `UPK_STDERR_TAIL` carries, at most.
const TAIL_LINES: usize = 20;
/// How much of the stderr file is read to find them.
const TAIL_BYTES: u64 = 8192;

/// What the service looks like when the event happens.
pub struct Context<'a> {
    /// The event.
    pub event: HookEvent,
    /// The state's name.
    pub state: &'a str,
    /// The main pid, if it runs.
    pub pid: Option<i32>,
    /// How the last run ended.
    pub last_exit: Option<Exit>,
    /// Automatic restarts so far.
    pub restarts: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// Health, when checked.
    pub health: Option<&'a str>,
    /// The service's stderr file (`RedirectStderr`, or `log/stderr`).
    pub stderr: &'a Path,
    /// The latest records.
    pub recent: &'a VecDeque<String>,
}

/// The environment a hook named `hook` gets for `ctx`.
pub fn env(hook: &str, ctx: &Context<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        ("UPK_HOOK".to_owned(), hook.to_owned()),
        ("UPK_EVENT".to_owned(), ctx.event.as_str().to_owned()),
        ("UPK_STATE".to_owned(), ctx.state.to_owned()),
        ("UPK_RESTARTS".to_owned(), ctx.restarts.to_string()),
        ("UPK_FAILURES".to_owned(), ctx.failures.to_string()),
    ];
    let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
    if let Some(pid) = ctx.pid {
        set("UPK_PID", pid.to_string());
    }
    match ctx.last_exit {
        Some(Exit::Exited { code }) => set("UPK_EXIT_CODE", code.to_string()),
        Some(Exit::Killed { signal, .. }) => set("UPK_SIGNAL", signal.to_string()),
        _ => {}
    }
    if let Some(h) = ctx.health {
        set("UPK_HEALTH", h.to_owned());
    }
    if let Some(tail) = tail(ctx.stderr) {
        set("UPK_STDERR_TAIL", tail);
    }
    let recent: Vec<&str> = ctx.recent.iter().map(String::as_str).collect();
    set("UPK_EVENTS", recent.join("\n"));
    env
}

/// One line for `UPK_EVENTS`: the record's time (UTC) and summary.
pub fn recent_line(r: &Record) -> String {
    format!("{} {}", upk_core::time::format_utc(r.wall_us), r.summary())
}

/// The last lines of a file (at most [`TAIL_LINES`], from its last [`TAIL_BYTES`]).
fn tail(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    let out = lines[start..].join("\n");
    (!out.is_empty()).then_some(out)
}
