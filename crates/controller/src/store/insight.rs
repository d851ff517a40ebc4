//! `why`: the facts around one death of a service, gathered by indexed queries only, so that
//! the answer comes as fast from a store of ten million events as from an empty one
//! (docs/insight.md, docs/benchmarks.md).
//!
//! Each question is one query on an index made for it (schema version 3): the death itself
//! and the walk back through the service's deaths, starts and stable marks use
//! `events_milestones`; the other services' deaths around it use `events_deaths_time`; the
//! commands naming the service use `commands_service_time`. Every query is bounded (a limit,
//! a time window, or both); the walk that finds the streak of failed runs and the last good
//! run reads at most [`WHY_SCAN`] deaths. What a failure is: [`failed`].

use rusqlite::params;
use upk_core::death::Reason;
use upk_core::event::EventKind;
use upk_core::history::{
    EventRow, GoodRun, Prerequisite, Why, FAILURES_COUNTED, GOOD_RUN_US, WHY_SCAN,
};

use super::{Result, Store, StoreError};

/// The partial index `events_deaths_time`'s term, repeated verbatim by the queries using it.
pub(super) const DEATHS: &str = "kind IN ('died', 'spawn_failed')";
/// A death that was a failure ([`failed`], in SQL), for rows that are deaths.
const FAILED: &str = "(kind = 'spawn_failed' OR \
    CASE WHEN json_extract(detail, '$.reason') IS NULL \
    THEN cause = 'exit' AND COALESCE(exit_code, 1) != 0 \
    ELSE json_extract(detail, '$.reason') NOT IN ('exited', 'stopped', 'unknown') END)";
/// The partial index `events_milestones`'s term.
pub(super) const MILESTONES: &str = "kind IN ('died', 'spawn_failed', 'started', 'stable')";

const SEC: i64 = 1_000_000;
/// How far before a death other services' deaths are shown, and each hop of the cascade.
const AROUND_BEFORE: i64 = 120 * SEC;
/// How far after.
const AROUND_AFTER: i64 = 10 * SEC;
/// The cascade is followed back at most this many hops of [`AROUND_BEFORE`].
const CASCADE_HOPS: usize = 5;
/// How far back a prerequisite's going down counts.
const PREREQ_WINDOW: i64 = 600 * SEC;

/// True when a stored death was a failure of the service (not a clean exit, not a stop of
/// upkeeper's): by its recorded reason, or, for records made before reasons, as the
/// statistics always counted them (an exit of the service's own with a code other than 0).
pub fn failed(kind: &str, cause: &str, code: Option<i32>, reason: Option<&str>) -> bool {
    if kind == "spawn_failed" {
        return true;
    }
    match reason.and_then(|r| serde_json::from_value::<Reason>(r.into()).ok()) {
        Some(r) => r.is_failure(),
        None => cause == "exit" && code != Some(0),
    }
}

fn row_failed(row: &EventRow) -> bool {
    upk_core::death::failed(&row.record)
}

/// One row of the walk: id, wall time, kind, cause, exit code, recorded reason.
type Milestone = (i64, i64, String, String, Option<i32>, Option<String>);

/// One run met on the walk back.
#[derive(Debug, Default)]
struct WalkedRun {
    /// Its `started` record: id and time.
    start: Option<(i64, i64)>,
    /// How it ended: when, and whether that was a failure.
    end: Option<(i64, bool)>,
    /// A `stable` record proved it good.
    stable: bool,
    /// Its start was met (or it has none): earlier rows belong to earlier runs.
    closed: bool,
}

impl Store {
    /// The facts that explain the last death of `service` at or before `at_us` (now when
    /// `None`). `providers` are the services providing its prerequisites, each with the name
    /// it provides.
    pub fn why(
        &self,
        service: &str,
        at_us: Option<i64>,
        providers: &[(String, String)],
    ) -> Result<Why> {
        let sid = self
            .service_id(service)?
            .ok_or_else(|| StoreError::UnknownService(service.to_owned()))?;
        let mut why = Why {
            service: service.to_owned(),
            ..Why::default()
        };
        let Some(death) = self
            .events_where(
                &format!(
                    "e.service_id = ?1 AND {MILESTONES} AND {DEATHS} AND wall_us <= ?2 \
                     ORDER BY wall_us DESC, e.id DESC LIMIT 1"
                ),
                params![sid, at_us.unwrap_or(i64::MAX)],
            )?
            .pop()
        else {
            return Ok(why);
        };
        let (at, id) = (death.record.wall_us, death.id);
        if matches!(death.record.kind, EventKind::Died { .. }) {
            why.started = self
                .events_where(
                    &format!(
                        "e.service_id = ?1 AND {MILESTONES} AND kind = 'started' \
                         AND wall_us <= ?2 AND e.id < ?3 ORDER BY wall_us DESC, e.id DESC LIMIT 1"
                    ),
                    params![sid, at, id],
                )?
                .pop();
        }
        let (run_at, run_id) = why
            .started
            .as_ref()
            .map_or((at.saturating_sub(PREREQ_WINDOW), 0), |s| {
                (s.record.wall_us, s.id)
            });
        let mut during = self.events_where(
            "e.service_id = ?1 AND wall_us >= ?2 AND wall_us <= ?3 AND e.id > ?4 AND e.id < ?5 \
             ORDER BY wall_us DESC, e.id DESC LIMIT 20",
            params![sid, run_at, at, run_id, id],
        )?;
        during.reverse();
        why.during = during;
        why.after = self.events_where(
            "e.service_id = ?1 AND wall_us >= ?2 AND e.id > ?3 ORDER BY wall_us, e.id LIMIT 3",
            params![sid, at, id],
        )?;
        self.streak(sid, &death, &mut why)?;
        why.failures_last_hour = self.conn.query_row(
            &format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE service_id = ?1 \
                 AND {MILESTONES} AND {DEATHS} AND wall_us > ?2 AND wall_us <= ?3 AND {FAILED} \
                 LIMIT ?4)"
            ),
            params![
                sid,
                at.saturating_sub(3600 * SEC),
                at,
                FAILURES_COUNTED as i64
            ],
            |r| r.get::<_, i64>(0),
        )? as u64;
        let changes_from = match &why.last_good {
            Some(g) => g.started.as_ref().map_or(g.until_us, |s| s.record.wall_us),
            None => at.saturating_sub(24 * 3600 * SEC),
        };
        let pattern = format!("%{}%", like_escape(&serde_json::to_string(service)?));
        let mut changes = self.config_changes_where(
            "services LIKE ?1 ESCAPE '\\' AND wall_us >= ?2 AND wall_us <= ?3 \
             ORDER BY id DESC LIMIT 10",
            params![pattern, changes_from, at],
        )?;
        changes.reverse();
        why.config_changes = changes;
        // The other deaths nearest to it: the last 40 before (in a storm, those of the same
        // seconds, not the first of the window) and the first 10 after.
        let mut around = self.events_where(
            &format!(
                "{DEATHS} AND wall_us >= ?1 AND wall_us <= ?2 AND e.service_id != ?3 \
                 ORDER BY wall_us DESC, e.id DESC LIMIT 40"
            ),
            params![at.saturating_sub(AROUND_BEFORE), at, sid],
        )?;
        around.reverse();
        around.extend(self.events_where(
            &format!(
                "{DEATHS} AND wall_us > ?1 AND wall_us <= ?2 AND e.service_id != ?3 \
                 ORDER BY wall_us, e.id LIMIT 10"
            ),
            params![at, at.saturating_add(AROUND_AFTER), sid],
        )?);
        why.around = around;
        // Their reasons say enough here; their tails are for their own `why`.
        for row in &mut why.around {
            if let EventKind::Died { tail, .. } = &mut row.record.kind {
                *tail = None;
            }
        }
        why.first_failure = self.first_failure(&death)?;
        for (provider, provides) in providers {
            let Some(pid) = self.service_id(provider)? else {
                continue;
            };
            let went_down = self
                .events_where(
                    "e.service_id = ?1 AND wall_us >= ?2 AND wall_us <= ?3 \
                     AND from_state IN ('running', 'ready') \
                     AND to_state NOT IN ('running', 'ready') \
                     ORDER BY wall_us DESC, e.id DESC LIMIT 1",
                    params![pid, at.saturating_sub(PREREQ_WINDOW), at],
                )?
                .pop();
            why.prerequisites.push(Prerequisite {
                service: provider.clone(),
                provides: provides.clone(),
                went_down,
            });
        }
        let mut commands = self.commands_where(
            "service = ?1 AND wall_us >= ?2 AND wall_us <= ?3 ORDER BY wall_us DESC LIMIT 10",
            params![service, run_at, at.saturating_add(SEC)],
        )?;
        commands.reverse();
        why.commands = commands;
        why.death = Some(death);
        Ok(why)
    }

    /// Walks back from `death` through the service's deaths and starts: the failed runs in a
    /// row (a run of at least [`GOOD_RUN_US`], a death that was no failure, or a `stable`
    /// record ends the streak) and the last good run.
    fn streak(&self, sid: i64, death: &EventRow, why: &mut Why) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, wall_us, kind, cause, exit_code, json_extract(detail, '$.reason') \
             FROM events WHERE service_id = ?1 AND {MILESTONES} AND wall_us <= ?2 AND id <= ?3 \
             ORDER BY wall_us DESC, id DESC LIMIT ?4"
        ))?;
        let rows = stmt
            .query_map(
                params![sid, death.record.wall_us, death.id, (WHY_SCAN * 2) as i64],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<Milestone>>>()?;
        // Runs, newest first: how each ended, whether it proved stable, its start.
        let mut runs: Vec<WalkedRun> = Vec::new();
        for (id, wall, kind, cause, code, reason) in rows {
            match kind.as_str() {
                "started" => match runs.last_mut() {
                    Some(r) if r.start.is_none() && !r.closed => {
                        r.start = Some((id, wall));
                        r.closed = true;
                    }
                    // A start whose end is not stored (the buddy was killed, records lost).
                    _ => runs.push(WalkedRun {
                        start: Some((id, wall)),
                        closed: true,
                        ..WalkedRun::default()
                    }),
                },
                "stable" => match runs.last_mut() {
                    Some(r) if !r.closed => r.stable = true,
                    _ => runs.push(WalkedRun {
                        stable: true,
                        end: Some((wall, false)),
                        ..WalkedRun::default()
                    }),
                },
                _ => {
                    if let Some(r) = runs.last_mut() {
                        r.closed = true;
                    }
                    runs.push(WalkedRun {
                        end: Some((wall, failed(&kind, &cause, code, reason.as_deref()))),
                        // A failed start has no start record of its own.
                        closed: kind == "spawn_failed",
                        ..WalkedRun::default()
                    });
                }
            }
        }
        let mut good_start = None;
        for (i, run) in runs.iter().enumerate() {
            // A run whose end is not stored (its buddy was killed, records were lost) ran
            // until the next run began at the latest; how it ended is not known, so it only
            // counts when it lasted.
            let next_start = i
                .checked_sub(1)
                .and_then(|j| runs[j].start.map(|(_, at)| at));
            let (end, failure, known) = match run.end {
                Some((end, failure)) => (end, failure, true),
                None => (next_start.unwrap_or(death.record.wall_us), false, false),
            };
            let long = run.stable
                || run
                    .start
                    .is_some_and(|(_, at)| end.saturating_sub(at) >= GOOD_RUN_US);
            if !known && !long {
                continue;
            }
            // The explained death counts whatever came before it.
            if failure && (i == 0 || !long) {
                why.streak += 1;
                why.streak_since_us = Some(end);
            }
            // A run that lasted, or did not fail, is the last good one (the explained run
            // included: it was good until it died).
            if long || !failure {
                why.last_good = Some(GoodRun {
                    started: None,
                    until_us: end,
                });
                good_start = run.start.map(|(id, _)| id);
                break;
            }
        }
        if let (Some(g), Some(start)) = (why.last_good.as_mut(), good_start) {
            g.started = self
                .events_where("e.id = ?1", params![start])?
                .pop()
                .filter(|r| matches!(r.record.kind, EventKind::Started { .. }));
        }
        Ok(())
    }

    /// Follows failures back from `death`, [`AROUND_BEFORE`] at a time, at most
    /// [`CASCADE_HOPS`] times: the earliest failure reached.
    fn first_failure(&self, death: &EventRow) -> Result<Option<EventRow>> {
        let mut first = row_failed(death).then(|| death.clone());
        let mut cursor = death.record.wall_us;
        for _ in 0..CASCADE_HOPS {
            // The earliest failure in the window (SQL decides, so that a mass stop of many
            // services in the same seconds cannot hide it behind a row limit).
            let earlier = self.events_where(
                &format!(
                    "{DEATHS} AND wall_us >= ?1 AND wall_us < ?2 AND {FAILED} \
                     ORDER BY wall_us, e.id LIMIT 1"
                ),
                params![cursor.saturating_sub(AROUND_BEFORE), cursor],
            )?;
            let Some(e) = earlier.into_iter().next() else {
                break;
            };
            cursor = e.record.wall_us;
            first = Some(e);
        }
        Ok(first)
    }

    /// The query plan SQLite picks for `sql` (for tests that the indexes are used).
    pub fn query_plan(&self, sql: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

/// `s` with LIKE's wildcards escaped by `\`.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}
