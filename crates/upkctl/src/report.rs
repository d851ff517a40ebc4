//! `audit` and `stats`: who did what, and how each service has been doing.
//!
//! `audit` prints one line per audited command: when, who (user and uid), what (the request
//! in upkctl's words), and what came of it, with the caller's command line. `stats` prints the
//! controller's figures (`docs/audit.md#statistics`) and derived ones: the mean restarts per
//! hour, the busiest clock hour, and the mean time between failures (the time spent running
//! divided by the failures). The means are over the *observed* part of the window, which starts
//! at the service's first stored event when that is later than `--since`: a service configured
//! ten minutes ago has not been up for 24 hours.

use crate::cli::Window;
use crate::events::window;
use crate::exit::{self, Failure, Result};
use crate::{print_json, print_json_line, table, when, Ctx};
use libupkeeper::{AuditQuery, CommandRow, Exit, HistoryFilter, Stats};
use std::io::Write;

/// A flapping score from this on is shown as `flapping` (three restarts just now).
pub const FLAPPING: f64 = 0.5;

/// `upkctl audit`.
pub fn audit(
    ctx: &Ctx,
    w: &Window,
    user: Option<&str>,
    lines: usize,
    out: &mut dyn Write,
) -> Result<i32> {
    let (since_us, until_us) = window(ctx, w)?;
    // With -H, uids are the remote host's: its names are not looked up here.
    let local = !ctx.is_remote();
    let uid = user.map(|u| uid_of(u, local)).transpose()?;
    let mut client = ctx.reader()?;
    // The last N: the controller picks them (newest first), printed oldest first.
    let mut rows = client.audit(&AuditQuery {
        since_us,
        until_us,
        uid,
        limit: (lines > 0).then_some(lines),
        newest_first: lines > 0,
        ..AuditQuery::default()
    })?;
    if lines > 0 {
        rows.reverse();
    }
    for row in &rows {
        if ctx.json {
            print_json_line(out, row)?;
        } else {
            writeln!(out, "{}", table::fit(&audit_line(&ctx.zone, row, local)))?;
        }
    }
    Ok(exit::OK)
}

/// A user name or uid as a uid (names only of this host: `local`).
fn uid_of(user: &str, local: bool) -> Result<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    if !local {
        return Err(Failure::new(
            exit::USAGE,
            format!("with -H, --user takes a uid: {user:?} would be looked up on this host"),
        ));
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(Failure::new(
            exit::NOT_FOUND,
            format!("there is no user {user:?}"),
        )),
    }
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// What an audited request asked, in upkctl's words: `restart`, `signal TERM --group`,
/// `action rotate`, `stop --no-block` (a queued command). `depth` bounds the nesting a row
/// from the store may hold.
fn verb_of(req: &serde_json::Value, depth: usize) -> String {
    let field = |k: &str| req.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let mut what = field("type").unwrap_or_else(|| "?".into());
    match what.as_str() {
        "queue" if depth < 2 => {
            if let Some(inner) = req.get("request") {
                what = format!("{} --no-block", verb_of(inner, depth + 1));
            }
        }
        "signal" => {
            let sig = req.get("signal").map(|s| match s.as_str() {
                Some(name) => name.to_owned(),
                None => s.to_string(),
            });
            what.push_str(&format!(" {}", sig.unwrap_or_default()));
            if req.get("group").and_then(|g| g.as_bool()) == Some(true) {
                what.push_str(" --group");
            }
        }
        "action" => what.push_str(&format!(" {}", field("name").unwrap_or_default())),
        _ => {}
    }
    what
}

/// `2026-11-21T12:24:05.123Z  root  restart web: done: running (want up)  [upkctl restart web]`.
/// The user is shown by name when `local` (the row is this host's), else as `uid N`; a
/// command's origin (`-H`: the ssh client's address) follows its command line.
pub fn audit_line(zone: &crate::when::Zone, row: &CommandRow, local: bool) -> String {
    let e = &row.entry;
    let mut what = verb_of(&e.request, 0);
    if let Some(s) = &e.service {
        what.push_str(&format!(" {s}"));
    }
    // An action's result is `name: {exit as JSON}`: say the exit in words.
    let result = match e.result.split_once(": {") {
        Some((action, json)) => match serde_json::from_str::<Exit>(&format!("{{{json}")) {
            Ok(exit) => format!("{action}: {exit}"),
            Err(_) => e.result.clone(),
        },
        None => e.result.clone(),
    };
    let result = if e.ok || result.starts_with("refused") || result.starts_with("failed") {
        result
    } else {
        format!("failed: {result}")
    };
    let user = match local {
        true => user_name(e.uid),
        false => format!("uid {}", e.uid),
    };
    let via = e
        .origin
        .as_ref()
        .map(|o| format!(", via {o}"))
        .unwrap_or_default();
    format!(
        "{}  {user}  {what}: {result}  [pid {}: {}{via}]",
        zone.show(e.wall_us),
        e.pid,
        e.cmdline
    )
}

/// `upkctl stats`.
pub fn stats(
    ctx: &Ctx,
    services: &[String],
    since: Option<&str>,
    out: &mut dyn Write,
) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let since_us = since
        .map(|s| ctx.zone.parse(s, now))
        .transpose()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    if since_us.is_some_and(|s| s >= now) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--since {} is not in the past: there is nothing to count yet",
                since.unwrap_or_default()
            ),
        ));
    }
    let mut client = ctx.connect()?;
    let services = crate::events::expand(&mut client, services)?;
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    // The store answers an unknown service with a store error: ask the controller first so
    // that it is "not found".
    if !names.is_empty() {
        client.status(&names)?;
    }
    let stats = client.stats(&names, since_us, Some(now))?;
    let mut figures = Vec::new();
    for s in stats {
        let first = HistoryFilter {
            service: Some(s.service.clone()),
            limit: Some(1),
            ..HistoryFilter::default()
        };
        let first_us = client.history(&first)?.first().map(|e| e.record.wall_us);
        let d = derive(&s, first_us);
        figures.push((s, d));
    }
    if ctx.json {
        let rows: Vec<serde_json::Value> = figures.iter().map(|(s, d)| stats_json(s, d)).collect();
        return print_json(out, &rows).map(|()| exit::OK);
    }
    if let Some((s, _)) = figures.first() {
        writeln!(
            out,
            "from {} to {} ({})",
            ctx.zone.show(s.since_us),
            ctx.zone.show(s.until_us),
            when::duration(s.until_us.saturating_sub(s.since_us))
        )?;
    }
    let rows: Vec<Vec<String>> = figures.iter().map(|(s, d)| stats_cells(s, d)).collect();
    table::print(
        out,
        &[
            "SERVICE",
            "STATE",
            "UPTIME",
            "RESTARTS",
            "PER HOUR",
            "PEAK HOUR",
            "FAILURES",
            "MTBF",
            "LAST FAILURE",
            "FLAPPING",
        ],
        &rows,
    )?;
    Ok(exit::OK)
}

/// The figures `stats` derives from the controller's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Derived {
    /// Seconds of the window observed: from the later of its start and the first stored
    /// event.
    pub observed_s: f64,
    /// Restarts per hour observed, counting at least one hour (ten restarts in the last ten
    /// minutes are ten per hour, not sixty).
    pub restarts_per_hour: f64,
    /// The most restarts in one clock hour.
    pub peak_hour: u64,
    /// Mean time between failures, seconds: time running / failures (`None` without
    /// failures or without observation).
    pub mtbf_s: Option<f64>,
    /// The flapping score is at least [`FLAPPING`].
    pub flapping: bool,
}

/// Derives the per-hour mean, the peak, the MTBF and the flapping flag; `first_us` is the
/// service's first stored event.
pub fn derive(s: &Stats, first_us: Option<i64>) -> Derived {
    let from = first_us.map_or(s.since_us, |f| f.max(s.since_us));
    let observed_s = s.until_us.saturating_sub(from).max(0) as f64 / 1e6;
    Derived {
        observed_s,
        restarts_per_hour: s.restarts as f64 * 3600.0 / observed_s.max(3600.0),
        peak_hour: s
            .restarts_per_hour
            .iter()
            .map(|b| b.restarts)
            .max()
            .unwrap_or(0),
        mtbf_s: match (s.uptime, s.failures) {
            (Some(up), f) if f > 0 => Some(up * observed_s / f as f64),
            _ => None,
        },
        flapping: s.flapping >= FLAPPING,
    }
}

fn stats_json(s: &Stats, d: &Derived) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("observed_s".into(), d.observed_s.into());
        obj.insert("restarts_per_hour_mean".into(), d.restarts_per_hour.into());
        obj.insert("restarts_peak_hour".into(), d.peak_hour.into());
        obj.insert("mtbf_s".into(), d.mtbf_s.into());
        obj.insert("is_flapping".into(), d.flapping.into());
    }
    v
}

fn stats_cells(s: &Stats, d: &Derived) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        s.service.clone(),
        s.state.clone().unwrap_or_else(dash),
        s.uptime.map_or_else(dash, |u| format!("{:.1}%", u * 100.0)),
        s.restarts.to_string(),
        format!("{:.2}", d.restarts_per_hour),
        d.peak_hour.to_string(),
        s.failures.to_string(),
        d.mtbf_s
            .map_or_else(dash, |m| when::duration((m * 1e6) as i64)),
        s.since_last_failure_us
            .map_or_else(dash, |us| format!("{} ago", when::duration(us))),
        format!(
            "{:.2}{}",
            s.flapping,
            if d.flapping { " flapping" } else { "" }
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use libupkeeper::HourBucket;

    #[test]
    fn audit_lines_say_who_what_and_how_it_went() {
        let row = |request: serde_json::Value, result: &str, ok: bool| CommandRow {
            id: 1,
            entry: upk_core::history::CommandEntry {
                wall_us: 1_795_263_845_123_456,
                uid: 4242,
                gid: 0,
                pid: 99,
                cmdline: "upkctl action rotate web".into(),
                request,
                service: Some("web".into()),
                result: result.into(),
                ok,
                origin: None,
            },
        };
        let action = serde_json::json!({"type": "action", "service": "web", "name": "rotate"});
        let line = audit_line(
            &crate::when::Zone::utc(),
            &row(action, r#"rotate: {"how":"exited","code":3}"#, false),
            true,
        );
        assert_eq!(
            line,
            "2026-11-21T12:24:05.123Z  uid 4242  action rotate web: failed: rotate: exited \
             with code 3  [pid 99: upkctl action rotate web]"
        );
        let signal =
            serde_json::json!({"type": "signal", "service": "web", "signal": 10, "group": true});
        let line = audit_line(
            &crate::when::Zone::utc(),
            &row(signal.clone(), "done: running (want up)", true),
            true,
        );
        assert!(
            line.contains("  signal 10 --group web: done: running (want up)  "),
            "{line}"
        );
        let mut remote = row(signal, "done: running (want up)", true);
        remote.entry.cmdline = "upkctl bridge".into();
        remote.entry.origin = Some("ssh 10.0.0.7:40404".into());
        let line = audit_line(&crate::when::Zone::utc(), &remote, false);
        assert!(
            line.contains("  uid 4242  signal 10")
                && line.ends_with("[pid 99: upkctl bridge, via ssh 10.0.0.7:40404]"),
            "{line}"
        );
        let queued =
            serde_json::json!({"type": "queue", "request": {"type": "stop", "service": "web"}});
        let line = audit_line(
            &crate::when::Zone::utc(),
            &row(queued, "done: stopping (want down)", true),
            true,
        );
        assert!(
            line.contains("  stop --no-block web: done: stopping (want down)  "),
            "{line}"
        );
    }

    #[test]
    fn mtbf_is_running_time_per_failure() {
        let hour = 3_600_000_000;
        let s = Stats {
            service: "web".into(),
            since_us: 0,
            until_us: 4 * hour,
            restarts: 6,
            restarts_per_hour: vec![
                HourBucket {
                    start_us: 0,
                    restarts: 2,
                },
                HourBucket {
                    start_us: hour,
                    restarts: 4,
                },
            ],
            failures: 2,
            uptime: Some(0.5),
            since_last_failure_us: Some(hour),
            flapping: 0.6,
            state: Some("running".into()),
        };
        // Known since before the window: observed all four hours.
        let d = derive(&s, Some(-hour));
        assert_eq!(d.observed_s, 4.0 * 3600.0);
        assert_eq!(d.restarts_per_hour, 1.5);
        assert_eq!(d.peak_hour, 4);
        assert_eq!(d.mtbf_s, Some(3600.0)); // 2 h running, 2 failures
        assert!(d.flapping);
        let cells = stats_cells(&s, &d);
        assert_eq!(cells[2], "50.0%");
        assert_eq!(cells[7], "1h00m");
        assert_eq!(cells[9], "0.60 flapping");

        // First seen ten minutes before the end: the means are over those ten minutes, and
        // the restarts per hour over at least one hour.
        let d = derive(&s, Some(4 * hour - 600_000_000));
        assert_eq!(d.observed_s, 600.0);
        assert_eq!(d.restarts_per_hour, 6.0);
        assert_eq!(d.mtbf_s, Some(150.0));
    }
}
