//! `history` and `watch`: stored events, and events as they are stored.
//!
//! One line per event: its UTC time, the service, and [`libupkeeper::Record::summary`]
//! (`[running->backoff] exited with code 1 after 0.512s pid 4242 (exit)`). With `--json`,
//! one event row per line, as the protocol carries it.
//!
//! `history --follow` subscribes *before* it reads the history: the stored rows are those up
//! to the subscription's cursor, and the subscription delivers everything after it, so no
//! event falls between the two and none is printed twice.

use crate::cli::Window;
use crate::exit::{self, Failure, Result};
use crate::{print_json_line, table, warn, Ctx};
use libupkeeper::{EventRow, HistoryFilter, Subscription};
use std::io::Write;

/// Every kind of event record (`docs/state-machine.md#records`).
pub const KINDS: &[&str] = &[
    "buddy_started",
    "buddy_exiting",
    "started",
    "spawn_failed",
    "adopted",
    "died",
    "stopping",
    "signaled",
    "stopped",
    "restart_scheduled",
    "restarts_paused",
    "gave_up",
    "action_run",
    "logger_started",
    "logger_died",
    "lost",
    "ready",
    "ready_timeout",
    "health",
    "stable",
    "hook_run",
    "hook_skipped",
    "containment",
];

/// What `upkctl history` asks for.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Only these services (ids or globs such as `pkg::*`); all when empty.
    pub services: Vec<String>,
    /// `--since`, `--until`.
    pub window: Window,
    /// `--kind`.
    pub kinds: Vec<String>,
    /// `-n`: the last N (0: all).
    pub lines: usize,
    /// `--follow`.
    pub follow: bool,
}

/// Checks `--kind` values against the known kinds.
pub fn check_kinds(kinds: &[String]) -> Result<()> {
    match kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(bad) => Err(Failure::new(
            exit::USAGE,
            format!(
                "{bad:?} is not a kind of event (known: {})",
                KINDS.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// A window's bounds in wall microseconds.
pub fn window(ctx: &Ctx, w: &Window) -> Result<(Option<i64>, Option<i64>)> {
    let now = upk_core::time::wall_us();
    let parse = |t: &Option<String>| {
        t.as_deref()
            .map(|t| ctx.zone.parse(t, now))
            .transpose()
            .map_err(|e| Failure::new(exit::USAGE, e))
    };
    Ok((parse(&w.since)?, parse(&w.until)?))
}

/// `upkctl history`.
pub fn history(ctx: &Ctx, q: &HistoryQuery, out: &mut dyn Write) -> Result<i32> {
    check_kinds(&q.kinds)?;
    let (since_us, until_us) = window(ctx, &q.window)?;
    let mut client = ctx.reader()?;
    if q.follow && client.offline() {
        return Err(Failure::new(
            exit::UNREACHABLE,
            "--follow needs the controller, which is not running (history without it reads the store)".to_owned(),
        ));
    }
    let services = expand(&mut client, &q.services)?;
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let sub = if q.follow {
        Some(ctx.connect()?.subscribe(&names, None)?)
    } else {
        None
    };
    let filter = HistoryFilter {
        since_us,
        until_us,
        kinds: q.kinds.clone(),
        before_id: sub.as_ref().map(|s| s.cursor() + 1),
        limit: (q.lines > 0).then_some(q.lines),
        newest_first: q.lines > 0,
        ..HistoryFilter::default()
    };
    // One query per service named (each its last N), merged in storage order, the last N kept.
    let mut rows = Vec::new();
    if services.is_empty() {
        rows = client.history(&filter)?;
    }
    for service in &services {
        let mut theirs = client.history(&HistoryFilter {
            service: Some(service.clone()),
            ..filter.clone()
        })?;
        if theirs.is_empty() {
            known(&mut client, service)?;
        }
        rows.append(&mut theirs);
    }
    rows.sort_by_key(|r| r.id);
    if q.lines > 0 && rows.len() > q.lines {
        rows.drain(..rows.len() - q.lines);
    }
    for row in &rows {
        print_event(ctx, out, row)?;
    }
    match sub {
        Some(sub) => follow(ctx, sub, &q.kinds, None, out),
        None => Ok(exit::OK),
    }
}

/// Service ids and globs (`*` any run of characters, `?` one: `pkg::*`, `web-?`) as the
/// configured services they name, in order and each once; a glob that names none is
/// [`exit::NOT_FOUND`]. Ids without a wildcard pass as they are (a removed service still has
/// a history).
pub fn expand(client: &mut libupkeeper::Client, names: &[String]) -> Result<Vec<String>> {
    if !names.iter().any(|n| n.contains(['*', '?'])) {
        return Ok(names.to_vec());
    }
    let configured: Vec<String> = client.list()?.into_iter().map(|s| s.service).collect();
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !name.contains(['*', '?']) {
            if !out.contains(name) {
                out.push(name.clone());
            }
            continue;
        }
        let matched: Vec<&String> = configured.iter().filter(|c| glob(name, c)).collect();
        if matched.is_empty() {
            return Err(Failure::new(
                exit::NOT_FOUND,
                format!("no configured service matches {name:?} (see `upkctl list`)"),
            ));
        }
        for m in matched {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    Ok(out)
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A service is known if the controller has it or the store has an event of it.
fn known(client: &mut libupkeeper::Client, service: &str) -> Result<()> {
    let any = HistoryFilter {
        service: Some(service.to_owned()),
        limit: Some(1),
        ..HistoryFilter::default()
    };
    if !client.history(&any)?.is_empty() {
        return Ok(());
    }
    client.status(&[service])?;
    Ok(())
}

/// `upkctl watch`.
pub fn watch(
    ctx: &Ctx,
    services: &[String],
    kinds: &[String],
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<i32> {
    check_kinds(kinds)?;
    let mut client = ctx.connect()?;
    let services = &expand(&mut client, services)?;
    // Unknown services would be watched in silence forever: say so at once.
    if !services.is_empty() {
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        client.status(&names)?;
    }
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    let sub = client.subscribe(&names, None)?;
    // On stderr, so stdout stays events only: from here on nothing is missed.
    let which = if services.is_empty() {
        "every service".to_owned()
    } else {
        services.join(", ")
    };
    warn(&format!(
        "watching {which} from event #{}; Ctrl-C to stop",
        sub.cursor()
    ));
    follow(ctx, sub, kinds, count, out)
}

/// Prints events from `sub` until `count` have been printed or the connection ends.
fn follow(
    ctx: &Ctx,
    mut sub: Subscription,
    kinds: &[String],
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<i32> {
    sub.set_timeout(None)?;
    let mut printed = 0u64;
    while count.is_none_or(|c| printed < c) {
        let Some(event) = sub.next() else {
            return Err(Failure::new(
                exit::UNREACHABLE,
                "the controller closed the connection",
            ));
        };
        let event = event?;
        if !kinds.is_empty() && !kinds.iter().any(|k| *k == kind_of(&event)) {
            continue;
        }
        print_event(ctx, out, &event)?;
        // Followed output is read as it comes: hand each line over at once.
        out.flush()?;
        printed += 1;
    }
    Ok(exit::OK)
}

/// The `kind` tag of an event, as stored.
fn kind_of(event: &EventRow) -> String {
    serde_json::to_value(&event.record.kind)
        .ok()
        .and_then(|v| v.get("kind")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One event: a line for people, or a JSON line.
fn print_event(ctx: &Ctx, out: &mut dyn Write, row: &EventRow) -> Result<()> {
    if ctx.json {
        return print_json_line(out, row);
    }
    let line = format!(
        "{}  {}  {}",
        ctx.zone.show(row.record.wall_us),
        row.service,
        row.record.summary()
    );
    writeln!(out, "{}", table::fit(&line))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libupkeeper::{EventKind, Exit, Record, StateName};

    #[test]
    fn globs_match_as_the_shell_does() {
        assert!(glob("pkg::*", "pkg::web"));
        assert!(!glob("pkg::*", "other::web"));
        assert!(glob("web-?", "web-1") && !glob("web-?", "web-10"));
        assert!(glob("*", "") && glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxbyy"));
        let long = "a".repeat(10_000);
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &long));
    }

    #[test]
    fn every_kind_is_known_by_its_stored_name() {
        let row = |kind| EventRow {
            id: 1,
            service: "web".into(),
            record: Record {
                seq: 1,
                wall_us: 0,
                mono_us: 0,
                from: StateName::Running,
                to: StateName::Backoff,
                pid: None,
                cause: "exit".into(),
                kind,
            },
        };
        let died = row(EventKind::died(Exit::Exited { code: 1 }, 0.5));
        assert_eq!(kind_of(&died), "died");
        assert_eq!(kind_of(&row(EventKind::BuddyExiting)), "buddy_exiting");
        assert!(check_kinds(&["died".into(), "gave_up".into()]).is_ok());
        let e = check_kinds(&["dead".into()]).expect_err("unknown kind");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("known: buddy_started"), "{}", e.message);
    }
}
