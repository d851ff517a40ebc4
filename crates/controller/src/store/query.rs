//! Queries: history, commands, configuration changes, statistics, the last stored seq.
//!
//! Read-only: everything here works on a connection from [`Store::open_read_only`] as well as
//! on the writer's. Rows come back oldest first (by row id, the order they were stored in)
//! unless a filter asks for the newest first. Time bounds are `since <= wall_us < until`.

use rusqlite::types::Value as Sql;
use rusqlite::{params, params_from_iter, OptionalExtension};
use serde_json::{Map, Value};
use upk_core::event::{EventKind, Record, StateName};

use super::{Origin, Result, Store, StoreError};
use upk_core::history::{
    CommandEntry, CommandRow, ConfigChange, ConfigChangeRow, EventRow, HistoryFilter, HourBucket,
    Stats,
};

/// One hour in microseconds.
const HOUR_US: i64 = 3_600_000_000;

/// The flapping score's half-point: this many recent restarts give a score of 0.5.
const FLAP_HALF: f64 = 3.0;

/// A failure: the service died on its own, could not start, or was stopped for being
/// unhealthy (the restart policy counts all three).
const FAILURE: &str = "((kind = 'died' AND cause = 'exit') OR kind = 'spawn_failed' \
                       OR (kind = 'stopping' AND cause = 'unhealthy'))";

fn state_name(s: String) -> Result<StateName> {
    Ok(serde_json::from_value(Value::String(s))?)
}

type RawEvent = (
    i64,
    String,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    Option<i32>,
    String,
    Option<String>,
);

/// The columns every event query selects, in [`RawEvent`]'s order.
const EVENT_SELECT: &str = "SELECT e.id, s.service, e.seq, e.wall_us, e.mono_us, e.kind, \
     e.from_state, e.to_state, e.pid, e.cause, e.detail FROM events e JOIN services s \
     ON s.id = e.service_id";

fn raw_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn event_row(raw: RawEvent) -> Result<EventRow> {
    let (id, service, seq, wall_us, mono_us, kind, from, to, pid, cause, detail) = raw;
    let mut obj: Map<String, Value> = match detail {
        Some(d) => serde_json::from_str(&d)?,
        None => Map::new(),
    };
    obj.insert("kind".into(), Value::String(kind));
    let kind: EventKind = serde_json::from_value(Value::Object(obj))?;
    Ok(EventRow {
        id,
        service,
        record: Record {
            seq: u64::try_from(seq).unwrap_or(0),
            wall_us,
            mono_us,
            from: state_name(from)?,
            to: state_name(to)?,
            pid,
            cause,
            kind,
        },
    })
}

fn limit(n: Option<usize>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl Store {
    pub(super) fn service_id(&self, service: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM services WHERE service = ?1")?
            .query_row([service], |r| r.get(0))
            .optional()?)
    }

    /// The highest seq stored (or pruned) for the empty incarnation of `service`
    /// ([`Store::last_seq_of`]).
    pub fn last_seq(&self, service: &str) -> Result<u64> {
        self.last_seq_of(&Origin::from(service))
    }

    /// The highest seq stored (or pruned) for `origin`; 0 when none or unknown.
    pub fn last_seq_of(&self, origin: &Origin) -> Result<u64> {
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(i.pruned_seq, COALESCE((SELECT MAX(seq) FROM events \
                 WHERE incarnation_id = i.id), 0)) FROM incarnations i JOIN services s \
                 ON s.id = i.service_id WHERE s.service = ?1 AND i.incarnation = ?2",
                params![origin.service, origin.incarnation],
                |r| r.get(0),
            )
            .optional()?;
        Ok(u64::try_from(max.unwrap_or(0)).unwrap_or(0))
    }

    /// The incarnations of `service`'s record sequence, oldest first, each with the highest
    /// seq stored (or pruned) for it.
    pub fn incarnations(&self, service: &str) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT i.incarnation, MAX(i.pruned_seq, COALESCE((SELECT MAX(seq) FROM events \
             WHERE incarnation_id = i.id), 0)) FROM incarnations i JOIN services s \
             ON s.id = i.service_id WHERE s.service = ?1 ORDER BY i.id",
        )?;
        let rows = stmt.query_map([service], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|r| {
            let (name, seq) = r?;
            Ok((name, u64::try_from(seq).unwrap_or(0)))
        })
        .collect()
    }

    /// Events of `SELECT ... FROM events e JOIN services s ... WHERE {tail}` (`tail` holds the
    /// conditions, the order and the limit), with `args` for its parameters.
    pub(super) fn events_where(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<EventRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{EVENT_SELECT} WHERE {tail}"))?;
        let raw = stmt
            .query_map(args, raw_event)?
            .collect::<rusqlite::Result<Vec<RawEvent>>>()?;
        raw.into_iter().map(event_row).collect()
    }

    /// Events matching `filter`.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<EventRow>> {
        let mut sql = format!("{EVENT_SELECT} WHERE 1");
        let mut args: Vec<Sql> = Vec::new();
        if let Some(service) = &filter.service {
            sql.push_str(" AND e.service_id = (SELECT id FROM services WHERE service = ?)");
            args.push(Sql::Text(service.clone()));
        }
        let by_time = filter.by_time && !filter.newest_first;
        // In time order, `after_id` breaks the tie at `since_us`: the rows after that one.
        let after_id = if by_time { None } else { filter.after_id };
        for (col, op, v) in [
            ("e.wall_us", ">=", filter.since_us),
            ("e.wall_us", "<", filter.until_us),
            ("e.id", ">", after_id),
            ("e.id", "<", filter.before_id),
        ] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} {op} ?"));
                args.push(Sql::Integer(v));
            }
        }
        if let (true, Some(since), Some(after)) = (by_time, filter.since_us, filter.after_id) {
            sql.push_str(" AND (e.wall_us > ? OR e.id > ?)");
            args.extend([Sql::Integer(since), Sql::Integer(after)]);
        }
        if !filter.kinds.is_empty() {
            let marks = vec!["?"; filter.kinds.len()].join(", ");
            sql.push_str(&format!(" AND e.kind IN ({marks})"));
            args.extend(filter.kinds.iter().map(|k| Sql::Text(k.clone())));
        }
        if by_time {
            sql.push_str(" ORDER BY e.wall_us ASC, e.id ASC LIMIT ?");
        } else {
            let order = if filter.newest_first { "DESC" } else { "ASC" };
            sql.push_str(&format!(" ORDER BY e.id {order} LIMIT ?"));
        }
        args.push(Sql::Integer(limit(filter.limit)));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let raw = stmt
            .query_map(params_from_iter(args), raw_event)?
            .collect::<rusqlite::Result<Vec<RawEvent>>>()?;
        raw.into_iter().map(event_row).collect()
    }

    /// Up to `max` events after row id `after` of `services` (all when empty), oldest first:
    /// one page of a subscription's replay.
    pub fn events_after(
        &self,
        after: i64,
        services: &[String],
        max: usize,
    ) -> Result<Vec<EventRow>> {
        if services.len() == 1 {
            let filter = HistoryFilter {
                service: services.first().cloned(),
                after_id: Some(after),
                limit: Some(max),
                ..HistoryFilter::default()
            };
            return self.history(&filter);
        }
        let mut rows = Vec::new();
        let mut after = after;
        // Several services: page through all of them and keep theirs, a bounded scan per page.
        while rows.len() < max {
            let filter = HistoryFilter {
                after_id: Some(after),
                limit: Some(max),
                ..HistoryFilter::default()
            };
            let page = self.history(&filter)?;
            let Some(last) = page.last().map(|e| e.id) else {
                break;
            };
            let full = page.len() == max;
            rows.extend(
                page.into_iter()
                    .filter(|e| services.is_empty() || services.contains(&e.service)),
            );
            if !full {
                break;
            }
            after = last;
        }
        rows.truncate(max);
        Ok(rows)
    }

    /// Audited commands with `since <= wall_us < until`, of `uid` if given, oldest first.
    pub fn commands(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        uid: Option<u32>,
        max: Option<usize>,
    ) -> Result<Vec<CommandRow>> {
        let filter = HistoryFilter {
            since_us,
            until_us,
            limit: max,
            ..HistoryFilter::default()
        };
        self.commands_page(&filter, uid)
    }

    /// Audited commands with `since <= wall_us < until`, of `uid` if given, with ids between
    /// `after_id` and `before_id` (exclusive), at most `limit`, oldest first unless
    /// `newest_first` (the filter's `service` and `kinds` do not apply to commands).
    pub fn commands_page(&self, q: &HistoryFilter, uid: Option<u32>) -> Result<Vec<CommandRow>> {
        let order = if q.newest_first { "DESC" } else { "ASC" };
        self.commands_where(
            &format!(
                "wall_us >= ?1 AND wall_us < ?2 AND (?3 IS NULL OR uid = ?3) \
                 AND id > ?5 AND id < ?6 ORDER BY id {order} LIMIT ?4"
            ),
            params![
                q.since_us.unwrap_or(i64::MIN),
                q.until_us.unwrap_or(i64::MAX),
                uid,
                limit(q.limit),
                q.after_id.unwrap_or(i64::MIN),
                q.before_id.unwrap_or(i64::MAX),
            ],
        )
    }

    /// Commands of `SELECT ... FROM commands WHERE {tail}`, with `args` for its parameters.
    pub(super) fn commands_where(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<CommandRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, wall_us, uid, gid, pid, cmdline, request, service, result, ok, origin \
             FROM commands WHERE {tail}"
        ))?;
        let raw = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(6)?,
                    CommandEntry {
                        wall_us: r.get(1)?,
                        uid: r.get(2)?,
                        gid: r.get(3)?,
                        pid: r.get(4)?,
                        cmdline: r.get(5)?,
                        request: Value::Null,
                        service: r.get(7)?,
                        result: r.get(8)?,
                        ok: r.get(9)?,
                        origin: r.get(10)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raw.into_iter()
            .map(|(id, request, mut entry)| {
                entry.request = serde_json::from_str(&request)?;
                Ok(CommandRow { id, entry })
            })
            .collect()
    }

    /// Configuration changes with `since <= wall_us < until`, oldest first.
    pub fn config_changes(
        &self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        max: Option<usize>,
    ) -> Result<Vec<ConfigChangeRow>> {
        self.config_changes_where(
            "wall_us >= ?1 AND wall_us < ?2 ORDER BY id LIMIT ?3",
            params![
                since_us.unwrap_or(i64::MIN),
                until_us.unwrap_or(i64::MAX),
                limit(max)
            ],
        )
    }

    /// Changes of `SELECT ... FROM config_changes WHERE {tail}`, with `args`.
    pub(super) fn config_changes_where(
        &self,
        tail: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<ConfigChangeRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, wall_us, file, hash, services FROM config_changes WHERE {tail}"
        ))?;
        let raw = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raw.into_iter()
            .map(|(id, wall_us, file, hash, services)| {
                Ok(ConfigChangeRow {
                    id,
                    change: ConfigChange {
                        wall_us,
                        file,
                        hash,
                        services: serde_json::from_str(&services)?,
                    },
                })
            })
            .collect()
    }

    /// Restarts per hour, failures, uptime, time since the last failure and the flapping score
    /// of `service` over `since_us <= wall_us < until_us` (pass the current time as `until_us`).
    /// A window that ends before it starts is taken as empty (the server refuses one).
    pub fn stats(&self, service: &str, since_us: i64, until_us: i64) -> Result<Stats> {
        let until_us = until_us.max(since_us);
        let sid = self
            .service_id(service)?
            .ok_or_else(|| StoreError::UnknownService(service.to_owned()))?;
        let mut state: Option<String> = self
            .conn
            .query_row(
                "SELECT to_state FROM events WHERE service_id = ?1 AND wall_us < ?2 \
                 ORDER BY wall_us DESC, id DESC LIMIT 1",
                params![sid, since_us],
                |r| r.get(0),
            )
            .optional()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT wall_us, kind, to_state, cause FROM events \
             WHERE service_id = ?1 AND wall_us >= ?2 AND wall_us < ?3 ORDER BY id",
        )?;
        let events = stmt
            .query_map(params![sid, since_us, until_us], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let (mut t, mut up, mut observed) = (since_us, 0i64, 0i64);
        let (mut restarts, mut failures, mut decayed) = (0u64, 0u64, 0f64);
        let mut buckets: Vec<HourBucket> = Vec::new();
        let mut advance = |to: i64, state: &Option<String>, t: &mut i64| {
            let to = to.min(until_us).max(*t);
            if let Some(s) = state {
                let span = to.saturating_sub(*t);
                observed = observed.saturating_add(span);
                if s == "running" || s == "ready" {
                    up = up.saturating_add(span);
                }
            }
            *t = to;
        };
        for (wall, kind, to_state, cause) in events {
            advance(wall, &state, &mut t);
            state = Some(to_state);
            // Automatic restarts: by the restart policy, or after a cool-down.
            if kind == "started" && (cause == "policy" || cause == "cool-down over") {
                restarts += 1;
                let age_h = until_us.saturating_sub(wall) as f64 / HOUR_US as f64;
                decayed += (-age_h).exp2();
                let hour = wall.saturating_sub(wall.rem_euclid(HOUR_US));
                match buckets.last_mut() {
                    Some(b) if b.start_us == hour => b.restarts += 1,
                    _ => buckets.push(HourBucket {
                        start_us: hour,
                        restarts: 1,
                    }),
                }
            }
            if (kind == "died" && cause == "exit")
                || kind == "spawn_failed"
                || (kind == "stopping" && cause == "unhealthy")
            {
                failures += 1;
            }
        }
        advance(until_us, &state, &mut t);
        // Wall clocks can step back: keep the buckets in time order whatever the seq order.
        buckets.sort_by_key(|b| b.start_us);
        buckets.dedup_by(|b, a| {
            let same = a.start_us == b.start_us;
            if same {
                a.restarts += b.restarts;
            }
            same
        });
        let last_failure: Option<i64> = self.conn.query_row(
            &format!(
                "SELECT MAX(wall_us) FROM events WHERE service_id = ?1 AND wall_us < ?2 AND {FAILURE}"
            ),
            params![sid, until_us],
            |r| r.get(0),
        )?;
        Ok(Stats {
            service: service.to_owned(),
            since_us,
            until_us,
            restarts,
            restarts_per_hour: buckets,
            failures,
            uptime: (observed > 0).then(|| up as f64 / observed as f64),
            since_last_failure_us: last_failure.map(|w| until_us.saturating_sub(w)),
            flapping: decayed / (decayed + FLAP_HALF),
            state,
        })
    }
}
