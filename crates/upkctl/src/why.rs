//! `why`: one death of a service explained in a few lines (docs/insight.md).
//!
//! The controller gathers the facts in one request ([`libupkeeper::Why`]); this module only
//! words them, in a fixed order an operator reads top-down: what died and when, how (the
//! reason, with the stop and its step when upkeeper stopped it), what it last wrote, the run
//! (how it started, with which configuration), what happened during it and after it, whether
//! it is crash-looping, the last good run and the configuration changes since, the commands
//! that named it, and what else failed around it (the first failure of the cascade, the
//! prerequisites that went down). Every line is optional: a fact the store does not have is
//! not printed, and nothing is guessed.

use crate::exit::{self, Failure, Result};
use crate::when::{self, Zone};
use crate::{print_json, Ctx};
use libupkeeper::{EventKind, EventRow, Record, Why};
use std::collections::BTreeMap;
use std::io::Write;

/// `upkctl why SERVICE [--at TIME]`.
pub fn why(ctx: &Ctx, service: &str, at: Option<&str>, out: &mut dyn Write) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let at_us = at
        .map(|t| ctx.zone.parse(t, now))
        .transpose()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let why = ctx.reader()?.why(service, at_us)?;
    if ctx.json {
        print_json(out, &why)?;
        return Ok(exit::OK);
    }
    for line in explain(&why, &ctx.zone, now) {
        writeln!(out, "{line}")?;
    }
    Ok(exit::OK)
}

/// How the record's death reads: the reason's sentence, else the record's own summary.
fn death_sentence(r: &Record) -> String {
    match &r.kind {
        EventKind::Died {
            exit,
            reason: Some(reason),
            stop,
            exec_error,
            oom: _,
            ..
        } => upk_core::death::sentence(*exit, *reason, stop.as_ref(), exec_error.as_deref()),
        EventKind::SpawnFailed { error } => format!("could not start: {error}"),
        _ => r.summary(),
    }
}

/// What a record says, short: its summary without the state arrow and the pid.
fn what(r: &Record) -> String {
    match &r.kind {
        EventKind::Died { .. } | EventKind::SpawnFailed { .. } => death_sentence(r),
        _ => {
            let s = r.summary();
            let s = s.split_once("] ").map_or(s.as_str(), |(_, rest)| rest);
            s.to_owned()
        }
    }
}

/// A config hash as people compare them: its first 12 hex digits.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn config_of(row: &EventRow) -> Option<&str> {
    match &row.record.kind {
        EventKind::Started { config } => config.as_deref(),
        _ => None,
    }
}

/// The lines of the explanation.
pub fn explain(why: &Why, zone: &Zone, now_us: i64) -> Vec<String> {
    let Some(death) = &why.death else {
        return vec![format!(
            "{} has no death or failed start on record",
            why.service
        )];
    };
    let d = &death.record;
    let at = |us: i64| format!("{} ({})", zone.show(us), when::ago(us, now_us));
    let mut lines = Vec::new();
    let verb = match d.kind {
        EventKind::SpawnFailed { .. } => "could not start",
        _ => "died",
    };
    let uptime = match d.kind {
        EventKind::Died { uptime, .. } => {
            format!(" after {}", when::duration((uptime * 1e6) as i64))
        }
        _ => String::new(),
    };
    let pid = d.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    lines.push(format!(
        "{} {verb} {}{uptime}{pid}",
        why.service,
        at(d.wall_us)
    ));
    lines.push(format!("  how:      {}", death_sentence(d)));
    if let EventKind::Died {
        tail: Some(tail),
        cost,
        ..
    } = &d.kind
    {
        for (name, stream) in [("stderr", &tail.stderr), ("stdout", &tail.stdout)] {
            if stream.is_empty() {
                continue;
            }
            lines.push(format!("  last {name}:"));
            lines.extend(stream.iter().map(|l| format!("    | {l}")));
        }
        if let Some(c) = cost {
            let peak = c
                .memory_peak
                .map(|m| format!(", memory peak {}", upk_core::cgroup::bytes_text(m)))
                .unwrap_or_default();
            lines.push(format!(
                "  cost:     {} of CPU{peak}",
                when::duration(i64::try_from(c.cpu_us).unwrap_or(i64::MAX))
            ));
        }
    }
    if let Some(s) = &why.started {
        let config = config_of(s)
            .map(|h| format!(", config {}", short(h)))
            .unwrap_or_default();
        lines.push(format!(
            "  the run:  started {} ({}){config}",
            zone.show(s.record.wall_us),
            s.record.cause
        ));
    }
    for e in why.during.iter().filter(|e| notable(&e.record)) {
        lines.push(format!(
            "  during:   {}  {}",
            zone.show(e.record.wall_us),
            what(&e.record)
        ));
    }
    if let Some(next) = why
        .after
        .iter()
        .find(|e| !matches!(e.record.kind, EventKind::Stopped))
    {
        lines.push(format!("  then:     {}", what(&next.record)));
    }
    if why.streak > 1 {
        let since = why
            .streak_since_us
            .map(|s| format!(" since {}", at(s)))
            .unwrap_or_default();
        lines.push(format!(
            "  looping:  {} failed runs in a row{since}; {} failures in the hour before",
            why.streak,
            failures(why.failures_last_hour)
        ));
    } else if why.failures_last_hour > 1 {
        lines.push(format!(
            "  failures: {} in the hour before this death",
            failures(why.failures_last_hour)
        ));
    }
    let this_config = why.started.as_ref().and_then(config_of);
    match &why.last_good {
        Some(good) => {
            let started = good.started.as_ref();
            let config = started
                .and_then(config_of)
                .map(|h| format!(", config {}", short(h)))
                .unwrap_or_default();
            let from = started
                .map(|s| format!("from {} ", zone.show(s.record.wall_us)))
                .unwrap_or_default();
            lines.push(format!(
                "  last good run: {from}to {}{config}",
                zone.show(good.until_us)
            ));
            let good_config = started.and_then(config_of);
            if let (Some(now), Some(then)) = (this_config, good_config) {
                if now != then {
                    lines.push(format!(
                        "  config:   this run's configuration ({}) is not the last good run's ({})",
                        short(now),
                        short(then)
                    ));
                }
            }
        }
        None if why.streak > 0 => lines.push("  last good run: none on record".into()),
        None => {}
    }
    for c in &why.config_changes {
        let change = &c.change;
        let hash = if change.hash.is_empty() {
            "removed".to_owned()
        } else {
            format!("file hash {}", short(&change.hash))
        };
        lines.push(format!(
            "  changed:  {} {} ({hash})",
            at(change.wall_us),
            change.file
        ));
    }
    for c in &why.commands {
        let e = &c.entry;
        lines.push(format!(
            "  command:  {} uid {} ({}): {}",
            zone.show(e.wall_us),
            e.uid,
            e.cmdline,
            e.result
        ));
    }
    lines.extend(around(why, zone, d.wall_us));
    for p in &why.prerequisites {
        let line = match &p.went_down {
            Some(e) => format!(
                "  prerequisite {:?}: {} went {} at {} ({} before): {}",
                p.provides,
                p.service,
                e.record.to.as_str(),
                zone.show(e.record.wall_us),
                when::duration(d.wall_us.saturating_sub(e.record.wall_us)),
                what(&e.record)
            ),
            None => format!("  prerequisite {:?}: {} stayed up", p.provides, p.service),
        };
        lines.push(line);
    }
    lines
}

/// Records worth a line in the run's story.
fn notable(r: &Record) -> bool {
    matches!(
        r.kind,
        EventKind::Health { .. }
            | EventKind::Stopping
            | EventKind::Signaled { .. }
            | EventKind::ReadyTimeout { .. }
            | EventKind::Ready { .. }
            | EventKind::Containment { .. }
    )
}

/// Other services' failures around the death, one line per service, and the first failure
/// of the cascade when it is not this death.
fn around(why: &Why, zone: &Zone, at_us: i64) -> Vec<String> {
    let mut by: BTreeMap<&str, (usize, &EventRow)> = BTreeMap::new();
    for e in &why.around {
        by.entry(e.service.as_str())
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, e));
    }
    let mut lines = Vec::new();
    for (service, (n, first)) in by {
        let when_ = first.record.wall_us;
        let rel = if when_ <= at_us {
            format!("{} before", when::duration(at_us - when_))
        } else {
            format!("{} after", when::duration(when_ - at_us))
        };
        let more = if n > 1 {
            format!(" (and {} more)", n - 1)
        } else {
            String::new()
        };
        lines.push(format!(
            "  around:   {service} {} ({rel}): {}{more}",
            zone.show(when_),
            what(&first.record)
        ));
    }
    if let (Some(first), Some(death)) = (&why.first_failure, &why.death) {
        if first.id != death.id {
            lines.push(format!(
                "  first failure: {} at {}: {}",
                first.service,
                zone.show(first.record.wall_us),
                what(&first.record)
            ));
        } else if !why.around.is_empty() {
            lines.push(
                "  first failure: this one (nothing failed in the two minutes before)".into(),
            );
        }
    }
    lines
}

/// A count of failures, `1000+` when the store stopped counting.
fn failures(n: u64) -> String {
    if n >= upk_core::history::FAILURES_COUNTED {
        format!("{n}+")
    } else {
        n.to_string()
    }
}
