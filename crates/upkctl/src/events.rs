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
    /// Only this service.
    pub service: Option<String>,
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
    let mut client = ctx.connect()?;
    let services: Vec<&str> = q.service.as_deref().into_iter().collect();
    let sub = if q.follow {
        Some(ctx.connect()?.subscribe(&services, None)?)
    } else {
        None
    };
    let filter = HistoryFilter {
        service: q.service.clone(),
        since_us,
        until_us,
        kinds: q.kinds.clone(),
        before_id: sub.as_ref().map(|s| s.cursor() + 1),
        limit: (q.lines > 0).then_some(q.lines),
        newest_first: q.lines > 0,
        ..HistoryFilter::default()
    };
    let mut rows = client.history(&filter)?;
    if filter.newest_first {
        rows.reverse();
    }
    if rows.is_empty() {
        if let Some(service) = &q.service {
            known(&mut client, service)?;
        }
    }
    for row in &rows {
        print_event(ctx, out, row)?;
    }
    match sub {
        Some(sub) => follow(ctx, sub, &q.kinds, None, out),
        None => Ok(exit::OK),
    }
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
