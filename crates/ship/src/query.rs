//! `upkeeper-ship query`: the fleet's questions, answered from the central database as JSON
//! lines, each with the `host` it concerns.
//!
//! The rows are the local store's types (`upk_core::history`: [`EventRow`], [`Stats`],
//! [`Why`], [`CommandRow`], [`ConfigChangeRow`]) with a `host` field beside them, so that
//! `upkctl --fleet` renders them with the code it renders one host's answers with. Hosts and
//! services are chosen with globs (`*`, `?`), turned into `LIKE` patterns with every other
//! character matched literally; times are µs since the epoch, or anything PostgreSQL reads as
//! a `timestamptz`.
//!
//! - `history`: events, oldest first, the last `--limit` of the window.
//! - `stats`: per host and service: restarts (and per hour), failures, the last failure,
//!   flapping, the state the window ended in (uptime is not computed centrally).
//! - `why SERVICE`: per host that had a death of it in the window (at or before `--at`), that
//!   death explained: its run, what followed, the streak, the failures in the hour before,
//!   the other deaths around it and the first failure of the cascade on that host, the
//!   commands and configuration changes naming it.
//! - `incident`: per host, its events, commands and configuration changes in the window.

use crate::local::{WALL_MAX_US, WALL_MIN_US};
use postgres::{Client, Row};
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Write;
use upk_core::event::{EventKind, Record, StateName};
use upk_core::history::{
    CommandEntry, CommandRow, ConfigChange, ConfigChangeRow, EventRow, GoodRun, HourBucket, Stats,
    Why, FAILURES_COUNTED, GOOD_RUN_US, WHY_SCAN,
};

/// The most rows one answer holds (`--limit` is bounded by it).
pub const MAX_ROWS: i64 = 100_000;
/// The most hosts `why` explains at once.
pub const MAX_HOSTS: i64 = 1_000;
/// The most events `incident` reads per host (as `upkctl incident` does for one).
pub const INCIDENT_EVENTS: i64 = 3_000;

/// What a query asks.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Hosts, a glob.
    pub hosts: String,
    /// Services, a glob (`why`: the service).
    pub service: String,
    /// Window start, µs.
    pub since_us: Option<i64>,
    /// Window end (exclusive), µs.
    pub until_us: Option<i64>,
    /// Only these kinds (history).
    pub kinds: Vec<String>,
    /// At most this many rows (history).
    pub limit: i64,
}

/// A glob (`*`, `?`) as a `LIKE` pattern (escape `\`).
pub fn like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A time as µs: digits are µs already; anything else is read by PostgreSQL.
pub fn resolve_time(client: &mut Client, t: &str) -> anyhow::Result<i64> {
    let t = t.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        if let Ok(us) = t.parse::<i64>() {
            return Ok(us.clamp(WALL_MIN_US, WALL_MAX_US));
        }
    }
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM $1::text::timestamptz) * 1000000)::int8",
            &[&t],
        )
        .map_err(|e| anyhow::anyhow!("{t:?} is not a time PostgreSQL reads: {e}"))?;
    Ok(row.get::<_, i64>(0).clamp(WALL_MIN_US, WALL_MAX_US))
}

#[derive(Serialize)]
struct Hosted<'a, T: Serialize> {
    host: &'a str,
    #[serde(flatten)]
    row: &'a T,
}

fn line(out: &mut dyn Write, host: &str, row: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &Hosted { host, row })?;
    writeln!(out)?;
    Ok(())
}

/// The event columns every query selects, in [`event_of`]'s order.
const EVENT_COLS: &str = "host, local_id, service, seq, wall_us, mono_us, kind, from_state, \
                          to_state, pid, cause, detail::text, service_uuid::text, incarnation";

/// A central event row as the store's [`EventRow`] (with its host); `None` for a kind this
/// binary does not know.
fn event_of(r: &Row) -> Option<(String, EventRow)> {
    let detail: Option<String> = r.get(11);
    let mut obj: Map<String, Value> = match detail {
        Some(d) => serde_json::from_str(&d).ok()?,
        None => Map::new(),
    };
    obj.insert("kind".into(), Value::String(r.get(6)));
    let kind: EventKind = serde_json::from_value(Value::Object(obj)).ok()?;
    let state = |s: String| serde_json::from_value::<StateName>(Value::String(s)).ok();
    let pid: Option<i64> = r.get(9);
    let row = EventRow {
        id: r.get(1),
        service: r.get(2),
        record: Record {
            seq: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            wall_us: r.get(4),
            mono_us: r.get(5),
            from: state(r.get(7))?,
            to: state(r.get(8))?,
            pid: pid.and_then(|p| i32::try_from(p).ok()),
            cause: r.get(10),
            kind,
        },
    };
    Some((r.get(0), row))
}

fn events_of(rows: &[Row]) -> Vec<(String, EventRow)> {
    rows.iter().filter_map(event_of).collect()
}

fn ts(us: i64) -> std::time::SystemTime {
    crate::central::system_time(us)
}

/// The window's bounds as timestamps (open ends: the partitions' range).
fn bounds(f: &Filter) -> (std::time::SystemTime, std::time::SystemTime) {
    (
        ts(f.since_us.unwrap_or(WALL_MIN_US)),
        ts(f.until_us.unwrap_or(WALL_MAX_US)),
    )
}

/// `history`.
pub fn history(client: &mut Client, f: &Filter, out: &mut dyn Write) -> anyhow::Result<()> {
    let (since, until) = bounds(f);
    let limit = f.limit.clamp(1, MAX_ROWS);
    let sql = format!(
        "SELECT {EVENT_COLS} FROM events WHERE host LIKE $1 AND service LIKE $2 \
         AND wall >= $3 AND wall < $4 AND (cardinality($5::text[]) = 0 OR kind = ANY($5)) \
         ORDER BY wall DESC, host DESC, local_id DESC LIMIT $6"
    );
    let rows = client.query(
        &sql,
        &[
            &like(&f.hosts),
            &like(&f.service),
            &since,
            &until,
            &f.kinds,
            &limit,
        ],
    )?;
    let mut events = events_of(&rows);
    events.reverse();
    for (host, row) in &events {
        line(out, host, row)?;
    }
    Ok(())
}

const RESTART: &str = "kind = 'started' AND cause IN ('policy', 'cool-down over')";
const FAILURE: &str = "((kind = 'died' AND cause = 'exit') OR kind = 'spawn_failed' \
                       OR (kind = 'stopping' AND cause = 'unhealthy'))";

/// A service's stats with its host and its first event in the window.
#[derive(Debug, Serialize)]
struct HostStats {
    #[serde(flatten)]
    stats: Stats,
    first_us: Option<i64>,
}

/// `stats`.
pub fn stats(client: &mut Client, f: &Filter, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = crate::now_us();
    let since_us = f.since_us.unwrap_or(now.saturating_sub(86_400_000_000));
    let until_us = f.until_us.unwrap_or(now).min(now);
    let (since, until) = (ts(since_us), ts(until_us));
    let (hosts, services) = (like(&f.hosts), like(&f.service));
    let sql = format!(
        "SELECT host, service, count(*) FILTER (WHERE {RESTART}),
             count(*) FILTER (WHERE {FAILURE}),
             COALESCE(sum(power(2::float8, -(($5 - wall_us)::float8 / 3.6e9)))
                 FILTER (WHERE {RESTART}), 0)::float8,
             min(wall_us)
         FROM events WHERE host LIKE $1 AND service LIKE $2 AND wall >= $3 AND wall < $4
         GROUP BY host, service ORDER BY host, service"
    );
    let mut all: Vec<(String, HostStats)> = Vec::new();
    for r in client.query(&sql, &[&hosts, &services, &since, &until, &until_us])? {
        let s: f64 = r.get(4);
        all.push((
            r.get(0),
            HostStats {
                stats: Stats {
                    service: r.get(1),
                    since_us,
                    until_us,
                    restarts: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    restarts_per_hour: Vec::new(),
                    failures: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                    uptime: None,
                    since_last_failure_us: None,
                    flapping: s / (s + 3.0),
                    state: None,
                },
                first_us: r.get(5),
            },
        ));
    }
    let find = |all: &mut Vec<(String, HostStats)>, h: &str, s: &str| {
        all.iter()
            .position(|(host, st)| host == h && st.stats.service == s)
    };
    let hours = format!(
        "SELECT host, service, (wall_us / 3600000000) * 3600000000 AS hour, count(*)
         FROM events WHERE host LIKE $1 AND service LIKE $2 AND wall >= $3 AND wall < $4
             AND {RESTART}
         GROUP BY host, service, hour ORDER BY host, service, hour"
    );
    for r in client.query(&hours, &[&hosts, &services, &since, &until])? {
        let (h, s): (String, String) = (r.get(0), r.get(1));
        if let Some(i) = find(&mut all, &h, &s) {
            all[i].1.stats.restarts_per_hour.push(HourBucket {
                start_us: r.get(2),
                restarts: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            });
        }
    }
    let last = format!(
        "SELECT host, service, max(wall_us) FROM events
         WHERE host LIKE $1 AND service LIKE $2 AND wall < $3 AND {FAILURE}
         GROUP BY host, service"
    );
    for r in client.query(&last, &[&hosts, &services, &until])? {
        let (h, s): (String, String) = (r.get(0), r.get(1));
        if let Some(i) = find(&mut all, &h, &s) {
            let at: i64 = r.get(2);
            all[i].1.stats.since_last_failure_us = Some(until_us.saturating_sub(at));
        }
    }
    let state = "SELECT DISTINCT ON (host, service) host, service, to_state FROM events
         WHERE host LIKE $1 AND service LIKE $2 AND wall < $3
         ORDER BY host, service, wall DESC, local_id DESC";
    for r in client.query(state, &[&hosts, &services, &until])? {
        let (h, s): (String, String) = (r.get(0), r.get(1));
        if let Some(i) = find(&mut all, &h, &s) {
            all[i].1.stats.state = Some(r.get(2));
        }
    }
    for (host, s) in &all {
        line(out, host, s)?;
    }
    Ok(())
}

/// `why SERVICE`: one explanation per host.
pub fn why(
    client: &mut Client,
    f: &Filter,
    at_us: Option<i64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let at_us = at_us.unwrap_or_else(crate::now_us);
    let since = ts(f.since_us.unwrap_or(WALL_MIN_US));
    let at = ts(at_us.saturating_add(1));
    let sql = format!(
        "SELECT DISTINCT ON (host) {EVENT_COLS} FROM events
         WHERE host LIKE $1 AND service = $2 AND kind IN ('died', 'spawn_failed')
             AND wall >= $3 AND wall < $4
         ORDER BY host, wall DESC, local_id DESC LIMIT $5"
    );
    let deaths = client.query(
        &sql,
        &[&like(&f.hosts), &f.service, &since, &at, &MAX_HOSTS],
    )?;
    for r in &deaths {
        let Some((host, death)) = event_of(r) else {
            continue;
        };
        let key: (String, String) = (r.get(12), r.get(13));
        let why = explain(client, &host, &f.service, death, &key)?;
        line(out, &host, &why)?;
    }
    Ok(())
}

/// The facts of one death on one host (what `Store::why` gathers locally; prerequisites
/// are not known centrally).
fn explain(
    client: &mut Client,
    host: &str,
    service: &str,
    death: EventRow,
    (uuid, inc): &(String, String),
) -> anyhow::Result<Why> {
    let d_us = death.record.wall_us;
    let d_seq = i64::try_from(death.record.seq).unwrap_or(i64::MAX);
    let d_wall = ts(d_us);
    // The run: the last `started` of the same incarnation before the death.
    let started = events_of(&client.query(
        &format!(
            "SELECT {EVENT_COLS} FROM events WHERE host = $1 AND service_uuid = $2::text::uuid
                 AND incarnation = $3 AND seq < $4 AND kind = 'started'
             ORDER BY seq DESC LIMIT 1"
        ),
        &[&host, uuid, inc, &d_seq],
    )?)
    .pop()
    .map(|(_, r)| r);
    let from_seq = started
        .as_ref()
        .map_or(d_seq.saturating_sub(21), |s| s.record.seq as i64);
    let mut during: Vec<EventRow> = events_of(&client.query(
        &format!(
            "SELECT {EVENT_COLS} FROM events WHERE host = $1 AND service_uuid = $2::text::uuid
                 AND incarnation = $3 AND seq > $4 AND seq < $5
             ORDER BY seq DESC LIMIT 20"
        ),
        &[&host, uuid, inc, &from_seq, &d_seq],
    )?)
    .into_iter()
    .map(|(_, r)| r)
    .collect();
    during.reverse();
    let after: Vec<EventRow> = events_of(&client.query(
        &format!(
            "SELECT {EVENT_COLS} FROM events WHERE host = $1 AND service_uuid = $2::text::uuid
                 AND incarnation = $3 AND seq > $4 ORDER BY seq LIMIT 5"
        ),
        &[&host, uuid, inc, &d_seq],
    )?)
    .into_iter()
    .map(|(_, r)| r)
    .collect();
    // The last good run: a `stable` mark, or a death after a run of a minute or more.
    let good: Option<i64> = client
        .query_one(
            "SELECT max(wall_us) FROM events WHERE host = $1 AND service = $2 AND wall < $3
                 AND (kind = 'stable' OR (kind = 'died'
                      AND (detail->>'uptime')::float8 * 1e6 >= $4::float8))",
            &[&host, &service, &d_wall, &(GOOD_RUN_US as f64)],
        )?
        .get(0);
    let streak = client.query_one(
        &format!(
            "SELECT count(*), min(wall_us) FROM (SELECT wall_us FROM events
                 WHERE host = $1 AND service = $2 AND wall > $3 AND wall <= $4 AND {FAILURE}
                 ORDER BY wall DESC LIMIT $5) s"
        ),
        &[
            &host,
            &service,
            &ts(good.unwrap_or(WALL_MIN_US)),
            &d_wall,
            &(WHY_SCAN as i64),
        ],
    )?;
    let failures_last_hour: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE host = $1 AND service = $2
                     AND wall > $3 AND wall <= $4 AND {FAILURE} LIMIT $5) s"
            ),
            &[
                &host,
                &service,
                &ts(d_us.saturating_sub(3_600_000_000)),
                &d_wall,
                &(FAILURES_COUNTED as i64),
            ],
        )?
        .get(0);
    let around: Vec<EventRow> = events_of(&client.query(
        &format!(
            "SELECT {EVENT_COLS} FROM events WHERE host = $1 AND service <> $2
                 AND kind IN ('died', 'spawn_failed') AND wall >= $3 AND wall <= $4
             ORDER BY wall, local_id LIMIT 50"
        ),
        &[
            &host,
            &service,
            &ts(d_us.saturating_sub(120_000_000)),
            &ts(d_us.saturating_add(10_000_000)),
        ],
    )?)
    .into_iter()
    .map(|(_, r)| r)
    .collect();
    // The cascade: the earliest failure in the two minutes before, followed back up to ten
    // minutes.
    let mut first = death.clone();
    for _ in 0..5 {
        let t = first.record.wall_us;
        let earlier = events_of(&client.query(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE host = $1
                     AND kind IN ('died', 'spawn_failed') AND wall >= $2 AND wall < $3
                     AND NOT (kind = 'died' AND cause = 'stop')
                 ORDER BY wall, local_id LIMIT 1"
            ),
            &[&host, &ts(t.saturating_sub(120_000_000)), &ts(t)],
        )?)
        .pop();
        match earlier {
            Some((_, e)) if d_us.saturating_sub(e.record.wall_us) <= 600_000_000 => first = e,
            _ => break,
        }
    }
    let run_us = started.as_ref().map_or(d_us, |s| s.record.wall_us);
    let commands = client
        .query(
            "SELECT local_id, wall_us, uid, gid, pid, cmdline, request::text, service, result,
                 ok, origin FROM commands WHERE host = $1 AND service = $2 AND wall >= $3
                 AND wall <= $4 ORDER BY wall, local_id LIMIT 10",
            &[&host, &service, &ts(run_us), &d_wall],
        )?
        .iter()
        .map(command_of)
        .collect();
    let changes_from = good.unwrap_or(d_us.saturating_sub(86_400_000_000));
    let config_changes = client
        .query(
            "SELECT local_id, wall_us, file, hash, services::text FROM config_changes
             WHERE host = $1 AND services::jsonb ? $2 AND wall >= $3 AND wall <= $4
             ORDER BY wall, local_id LIMIT 10",
            &[&host, &service, &ts(changes_from), &d_wall],
        )?
        .iter()
        .map(change_of)
        .collect();
    Ok(Why {
        service: service.to_owned(),
        started,
        during,
        after,
        streak: u64::try_from(streak.get::<_, i64>(0)).unwrap_or(0),
        streak_since_us: streak.get(1),
        failures_last_hour: u64::try_from(failures_last_hour).unwrap_or(0),
        last_good: good.map(|until_us| GoodRun {
            started: None,
            until_us,
        }),
        config_changes,
        around,
        first_failure: Some(first),
        prerequisites: Vec::new(),
        commands,
        death: Some(death),
    })
}

fn command_of(r: &Row) -> CommandRow {
    let request: Option<String> = r.get(6);
    CommandRow {
        id: r.get(0),
        entry: CommandEntry {
            wall_us: r.get(1),
            uid: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            gid: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
            pid: i32::try_from(r.get::<_, i64>(4)).unwrap_or(-1),
            cmdline: r.get(5),
            request: request
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null),
            service: r.get(7),
            result: r.get(8),
            ok: r.get(9),
            origin: r.get(10),
        },
    }
}

fn change_of(r: &Row) -> ConfigChangeRow {
    let services: Option<String> = r.get(4);
    ConfigChangeRow {
        id: r.get(0),
        change: ConfigChange {
            wall_us: r.get(1),
            file: r.get(2),
            hash: r.get(3),
            services: services
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        },
    }
}

/// One incident item with its host and what it is.
#[derive(Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
enum Item<'a> {
    Event(&'a EventRow),
    Command(&'a CommandRow),
    ConfigChange(&'a ConfigChangeRow),
}

/// `incident`: per host, everything in the window.
pub fn incident(client: &mut Client, f: &Filter, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = crate::now_us();
    let since = ts(f.since_us.unwrap_or(now.saturating_sub(3_600_000_000)));
    let until = ts(f.until_us.unwrap_or(now.saturating_add(1)));
    let hosts: Vec<String> = client
        .query(
            "SELECT DISTINCT host FROM events WHERE host LIKE $1 AND wall >= $2 AND wall < $3
             UNION SELECT DISTINCT host FROM commands WHERE host LIKE $1 AND wall >= $2
                 AND wall < $3
             ORDER BY host LIMIT $4",
            &[&like(&f.hosts), &since, &until, &MAX_HOSTS],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for host in &hosts {
        let events = events_of(&client.query(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE host = $1 AND wall >= $2 AND wall < $3
                 ORDER BY wall, local_id LIMIT $4"
            ),
            &[host, &since, &until, &INCIDENT_EVENTS],
        )?);
        for (_, e) in &events {
            line(out, host, &Item::Event(e))?;
        }
        for r in client.query(
            "SELECT local_id, wall_us, uid, gid, pid, cmdline, request::text, service, result,
                 ok, origin FROM commands WHERE host = $1 AND wall >= $2 AND wall < $3
                 ORDER BY wall, local_id LIMIT $4",
            &[host, &since, &until, &INCIDENT_EVENTS],
        )? {
            line(out, host, &Item::Command(&command_of(&r)))?;
        }
        for r in client.query(
            "SELECT local_id, wall_us, file, hash, services::text FROM config_changes
             WHERE host = $1 AND wall >= $2 AND wall < $3 ORDER BY wall, local_id LIMIT $4",
            &[host, &since, &until, &INCIDENT_EVENTS],
        )? {
            line(out, host, &Item::ConfigChange(&change_of(&r)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn globs_become_like_patterns_with_everything_else_literal() {
        assert_eq!(like("web-*"), "web-%");
        assert_eq!(like("db?"), "db_");
        assert_eq!(like("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
