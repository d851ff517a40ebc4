//! `status SERVICE` for one service: a page that reads like `systemctl status` (docs/upkctl.md).
//!
//! From the row `status` already has (the controller's, or the status file's), plus what one
//! service is worth reading more for: its description and output files (its `settings.json`),
//! its processes (the cgroup's members, or the main pid), its last death explained (the
//! store's `why`, when the controller answers) and the last lines of its output. Each part is
//! left out when its source cannot be read; nothing here fails the command.

use crate::status::{want_str, Row};
use crate::when::{self, Zone};
use crate::{logs, why};
use libupkeeper::Why;
use std::path::Path;

/// Output lines shown per file.
const LOG_LINES: usize = 10;

/// The page of one service; `run_path` is `None` when it is another host's (`-H`), and then
/// nothing of this host (run directory, output files, `/proc`) is read.
pub fn page(
    row: &Row,
    run_path: Option<&Path>,
    last_death: Option<&Why>,
    zone: &Zone,
    now_us: i64,
) -> Vec<String> {
    let settings = run_path.and_then(|run_path| {
        upk_core::rundir::Settings::read(
            &run_path.join(&row.service).join(upk_core::rundir::SETTINGS),
        )
        .ok()
    });
    let description = settings
        .as_ref()
        .and_then(|s| s.service.short_description.clone())
        .map(|d| format!(" - {d}"))
        .unwrap_or_default();
    let dot = match row.state {
        Some(s) if s.is_up() => "●",
        Some(_) => "○",
        None => "?",
    };
    let mut lines = vec![format!("{dot} {}{description}", row.service)];
    if let Some(file) = &row.file {
        lines.push(format!("     Loaded: {file}"));
    }
    let state = row.state.map_or("unknown", |s| s.as_str());
    let since = row
        .since_us
        .map(|s| format!(" since {} ({})", zone.show(s), when::ago(s, now_us)))
        .unwrap_or_default();
    let want = row
        .want
        .map(|w| format!("; wanted {}", want_str(w)))
        .unwrap_or_default();
    let next = row
        .next_start_us
        .map(|n| format!("; next start {}", when::ago(n, now_us)))
        .unwrap_or_default();
    lines.push(format!("     State:  {state}{since}{want}{next}"));
    if let Some(h) = &row.health {
        lines.push(format!("     Health: {h}"));
    }
    if let (Some(r), Some(f)) = (row.restarts, row.failures) {
        lines.push(format!(
            "   Restarts: {r} automatic, {f} consecutive failures"
        ));
    }
    if let Some(u) = row.usage {
        lines.push(format!(
            "      Usage: CPU {}, memory {}, {} tasks",
            u.cpu_text(),
            u.memory_text(),
            u.tasks
        ));
    }
    // Its processes are in this host's /proc only when the service is this host's.
    let members = match run_path {
        Some(_) => processes(row),
        None => Vec::new(),
    };
    if let Some(pid) = row.pid {
        let group = row
            .containment
            .as_ref()
            .and_then(|c| c.cgroup.as_ref())
            .map(|c| format!(" (cgroup {})", c.display()))
            .unwrap_or_default();
        lines.push(format!("   Main PID: {pid}{group}"));
        let n = members.len();
        for (i, (p, cmd)) in members.iter().enumerate() {
            let branch = if i + 1 == n { "└─" } else { "├─" };
            lines.push(format!("             {branch}{p} {cmd}"));
        }
    }
    if let Some(why) = last_death.filter(|w| w.death.is_some()) {
        let explained = why::explain(why, zone, now_us);
        lines.push(format!("  Last death: {}", explained[0]));
        lines.extend(
            explained[1..]
                .iter()
                .filter(|l| l.starts_with("  how:") || l.starts_with("  looping:"))
                .map(|l| format!("           {}", l.trim_start())),
        );
    } else if let Some(e) = row.last_exit {
        lines.push(format!("  Last exit: {e}"));
    }
    if let Some(Ok(files)) = run_path.map(|run_path| logs::files(run_path, &row.service)) {
        for (name, path) in files {
            let Ok(text) = logs::last_lines(&path, LOG_LINES) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            lines.push(String::new());
            lines.push(format!("{name} ({}):", path.display()));
            lines.extend(text.lines().map(|l| format!("  {l}")));
        }
    }
    lines
}

/// The service's processes with their command lines: its cgroup's members when it has one,
/// else the main pid.
fn processes(row: &Row) -> Vec<(i32, String)> {
    let mut pids = row
        .containment
        .as_ref()
        .and_then(|c| c.cgroup.as_ref())
        .map(|dir| upk_core::cgroup::procs(dir))
        .unwrap_or_default();
    if pids.is_empty() {
        pids.extend(row.pid);
    }
    pids.sort_unstable();
    pids.into_iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .split('\0')
                        .filter(|a| !a.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            (p, cmd)
        })
        .collect()
}
