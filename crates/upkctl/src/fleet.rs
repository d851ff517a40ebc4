//! `upkctl --fleet URL`: `history`, `why`, `incident` and `stats` across hosts, from the
//! fleet's PostgreSQL (docs/fleet.md).
//!
//! upkctl links no PostgreSQL client: it runs `upkeeper-ship query` (the `UPKEEPER_SHIP`
//! variable, else the one beside upkctl's own executable, else the one on PATH), reads the
//! JSON lines it prints (each a row of the store's own types with a `host`), and renders them
//! with the code that renders one host's answers: the event summary, [`crate::why::explain`],
//! [`crate::incident::render`], [`crate::report::derive`]. Times are read as for one host
//! (the local zone, `--utc`) and passed on as µs. With `--json`, the lines are printed as
//! they came.

use crate::cli::{Cmd, PastCmd, Window};
use crate::exit::{self, Failure, Result};
use crate::{table, when, Ctx};
use libupkeeper::{CommandRow, ConfigChangeRow, EventRow, Stats, Why};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `upkeeper-ship` to run.
fn ship_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UPKEEPER_SHIP").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("upkeeper-ship"))
        .filter(|b| b.exists())
        .unwrap_or_else(|| PathBuf::from("upkeeper-ship"))
}

/// Runs `upkeeper-ship query --database URL --hosts GLOB [window] ARGS...`; its lines, each
/// split into its host and the rest.
fn query(
    ctx: &Ctx,
    url: &str,
    hosts: &str,
    window: (Option<i64>, Option<i64>),
    args: &[String],
) -> Result<Vec<(String, Value)>> {
    let bin = ship_binary();
    let mut cmd = Command::new(&bin);
    // `--timeout` bounds its connection and each of its statements.
    let secs = ctx.timeout.as_secs().clamp(1, 86_400).to_string();
    cmd.args([
        "query",
        "--database",
        url,
        "--hosts",
        hosts,
        "--timeout",
        &secs,
    ]);
    if let Some(s) = window.0 {
        cmd.arg("--since").arg(s.to_string());
    }
    if let Some(u) = window.1 {
        cmd.arg("--until").arg(u.to_string());
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            Failure::new(
                exit::TEMPORARY,
                format!(
                    "cannot run {} for --fleet (install upkeeper-ship, or set UPKEEPER_SHIP): {e}",
                    bin.display()
                ),
            )
        })?;
    if !out.status.success() {
        let code = out.status.code().unwrap_or(exit::TEMPORARY);
        return Err(Failure::new(
            if code == exit::USAGE {
                exit::USAGE
            } else {
                exit::TEMPORARY
            },
            String::new(),
        ));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut v: Value = serde_json::from_str(line).map_err(|e| {
            Failure::new(
                exit::TEMPORARY,
                format!("{} printed a line that is not JSON: {e}", bin.display()),
            )
        })?;
        let host = v
            .as_object_mut()
            .and_then(|o| o.remove("host"))
            .and_then(|h| h.as_str().map(str::to_owned))
            .unwrap_or_default();
        rows.push((host, v));
    }
    Ok(rows)
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

fn print_raw(out: &mut dyn Write, host: &str, v: &Value) -> Result<()> {
    let mut obj = serde_json::Map::new();
    obj.insert("host".into(), Value::String(host.to_owned()));
    if let Some(rest) = v.as_object() {
        obj.extend(rest.clone());
    }
    crate::print_json_line(out, &Value::Object(obj))
}

fn times(ctx: &Ctx, w: &Window) -> Result<(Option<i64>, Option<i64>)> {
    crate::events::window(ctx, w)
}

/// Runs one of the fleet's commands.
pub fn run(ctx: &Ctx, url: &str, hosts: &str, cmd: Cmd, out: &mut dyn Write) -> Result<i32> {
    match cmd {
        Cmd::Past(PastCmd::History {
            services,
            window,
            kind,
            lines,
            follow,
        }) => {
            if follow {
                return Err(Failure::new(
                    exit::USAGE,
                    "--fleet history does not --follow: the fleet is read as shipped".to_owned(),
                ));
            }
            crate::events::check_kinds(&kind)?;
            history(ctx, url, hosts, &services, &window, &kind, lines, out)
        }
        Cmd::Past(PastCmd::Why { service, at }) => {
            why(ctx, url, hosts, &service, at.as_deref(), out)
        }
        Cmd::Past(PastCmd::Incident { window }) => incident(ctx, url, hosts, &window, out),
        Cmd::Past(PastCmd::Stats { services, since }) => {
            stats(ctx, url, hosts, &services, since, out)
        }
        _ => Err(Failure::new(
            exit::USAGE,
            "--fleet answers history, why, incident and stats".to_owned(),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn history(
    ctx: &Ctx,
    url: &str,
    hosts: &str,
    services: &[String],
    w: &Window,
    kinds: &[String],
    lines: usize,
    out: &mut dyn Write,
) -> Result<i32> {
    let window = times(ctx, w)?;
    let limit = if lines == 0 {
        100_000
    } else {
        lines.min(100_000)
    };
    let all = ["*".to_owned()];
    let services = if services.is_empty() {
        &all[..]
    } else {
        services
    };
    let mut rows: Vec<(String, Value, i64)> = Vec::new();
    for s in services {
        let mut args = vec![
            "history".to_owned(),
            "--service".into(),
            s.clone(),
            "--limit".into(),
            limit.to_string(),
        ];
        if !kinds.is_empty() {
            args.push("--kind".into());
            args.push(kinds.join(","));
        }
        for (host, v) in query(ctx, url, hosts, window, &args)? {
            let wall = v.get("wall_us").and_then(Value::as_i64).unwrap_or(0);
            rows.push((host, v, wall));
        }
    }
    rows.sort_by_key(|(_, _, wall)| *wall);
    if rows.len() > limit {
        rows.drain(..rows.len() - limit);
    }
    for (host, v, _) in &rows {
        if ctx.json {
            print_raw(out, host, v)?;
            continue;
        }
        let Some(row) = parse::<EventRow>(v) else {
            continue;
        };
        let line = format!(
            "{}  {host}  {}  {}",
            ctx.zone.show(row.record.wall_us),
            row.service,
            row.record.summary()
        );
        writeln!(out, "{}", table::fit(&line))?;
    }
    Ok(exit::OK)
}

fn why(
    ctx: &Ctx,
    url: &str,
    hosts: &str,
    service: &str,
    at: Option<&str>,
    out: &mut dyn Write,
) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let mut args = vec!["why".to_owned(), service.to_owned()];
    if let Some(t) = at {
        let us = ctx
            .zone
            .parse(t, now)
            .map_err(|e| Failure::new(exit::USAGE, e))?;
        args.push("--at".into());
        args.push(us.to_string());
    }
    let rows = query(ctx, url, hosts, (None, None), &args)?;
    if rows.is_empty() {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("no host matching {hosts:?} has a death of {service:?} in the fleet database"),
        ));
    }
    for (i, (host, v)) in rows.iter().enumerate() {
        if ctx.json {
            print_raw(out, host, v)?;
            continue;
        }
        let Some(why) = parse::<Why>(v) else {
            continue;
        };
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "host {host}:")?;
        for line in crate::why::explain(&why, &ctx.zone, now) {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(exit::OK)
}

fn incident(ctx: &Ctx, url: &str, hosts: &str, w: &Window, out: &mut dyn Write) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let (since, until) = times(ctx, w)?;
    let since_us = since.unwrap_or(now.saturating_sub(3_600_000_000));
    let until_us = until.unwrap_or(now.saturating_add(1));
    if since_us >= until_us {
        return Err(Failure::new(
            exit::USAGE,
            "the window is empty: --since is not before --until".to_owned(),
        ));
    }
    let rows = query(
        ctx,
        url,
        hosts,
        (Some(since_us), Some(until_us)),
        &["incident".to_owned()],
    )?;
    type Parts = (Vec<EventRow>, Vec<CommandRow>, Vec<ConfigChangeRow>);
    let mut per_host: BTreeMap<String, Parts> = BTreeMap::new();
    for (host, v) in &rows {
        if ctx.json {
            print_raw(out, host, v)?;
            continue;
        }
        let parts = per_host.entry(host.clone()).or_default();
        match v.get("what").and_then(Value::as_str) {
            Some("event") => parts.0.extend(parse::<EventRow>(v)),
            Some("command") => parts.1.extend(parse::<CommandRow>(v)),
            Some("config_change") => parts.2.extend(parse::<ConfigChangeRow>(v)),
            _ => {}
        }
    }
    for (i, (host, (events, commands, changes))) in per_host.into_iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "host {host}:")?;
        let items = crate::incident::merge(events, commands, changes);
        for line in crate::incident::render(&items, &ctx.zone, since_us, until_us, None) {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(exit::OK)
}

fn stats(
    ctx: &Ctx,
    url: &str,
    hosts: &str,
    services: &[String],
    since: Option<String>,
    out: &mut dyn Write,
) -> Result<i32> {
    let window = times(ctx, &Window { since, until: None })?;
    let all = ["*".to_owned()];
    let services = if services.is_empty() {
        &all[..]
    } else {
        services
    };
    let mut cells = Vec::new();
    for s in services {
        let args = ["stats".to_owned(), "--service".into(), s.clone()];
        for (host, v) in query(ctx, url, hosts, window, &args)? {
            if ctx.json {
                print_raw(out, &host, &v)?;
                continue;
            }
            let Some(st) = parse::<Stats>(&v) else {
                continue;
            };
            let first = v.get("first_us").and_then(Value::as_i64);
            let d = crate::report::derive(&st, first);
            let dash = || "-".to_owned();
            cells.push(vec![
                host,
                st.service.clone(),
                st.state.clone().unwrap_or_else(dash),
                st.restarts.to_string(),
                format!("{:.2}", d.restarts_per_hour),
                d.peak_hour.to_string(),
                st.failures.to_string(),
                st.since_last_failure_us
                    .map_or_else(dash, |us| format!("{} ago", when::duration(us))),
                format!(
                    "{:.2}{}",
                    st.flapping,
                    if d.flapping { " flapping" } else { "" }
                ),
            ]);
        }
    }
    if !ctx.json {
        table::print(
            out,
            &[
                "HOST",
                "SERVICE",
                "STATE",
                "RESTARTS",
                "PER HOUR",
                "PEAK HOUR",
                "FAILURES",
                "LAST FAILURE",
                "FLAPPING",
            ],
            &cells,
        )?;
    }
    Ok(exit::OK)
}
