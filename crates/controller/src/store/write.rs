//! Writes: services, events (exactly once), commands, configuration changes, retention.
//!
//! Every function here runs inside a transaction its caller owns, so the public methods (one
//! transaction per call) and the writer thread (one transaction per merged batch) share them.
//! Exactly-once: an event's key is (incarnation, seq) (`UNIQUE(incarnation_id, seq)`, inserts
//! are `INSERT OR IGNORE`), so seqs a buddy begins again after a reboot never collide with
//! stored ones; retention remembers the highest seq it deleted per incarnation
//! (`incarnations.pruned_seq`) and inserts skip seqs at or below it, so a backlog re-sent after
//! a crash is stored once even when its oldest part was already pruned. A `lost` record is
//! stored only for the seqs of its range that no stored row accounts for (a controller killed
//! between commit and ack stored some of them), one row per uncovered stretch: the `lost`
//! counts of a store add up to exactly the seqs it never received.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use upk_core::event::{EventKind, Exit, Record};
use upk_core::history::{CommandEntry, ConfigChange, EventRow};
use upk_core::status::Want;

use super::{now_us, Result, Store, StoreError};

/// Where records come from: the buddy of a service, within one incarnation of its record
/// sequence (`docs/audit.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The service id.
    pub service: String,
    /// The incarnation (empty: a buddy older than incarnations, or rows from before them).
    pub incarnation: String,
}

impl From<&str> for Origin {
    /// The empty incarnation of `service`.
    fn from(service: &str) -> Origin {
        Origin {
            service: service.to_owned(),
            incarnation: String::new(),
        }
    }
}

/// What the writer thread commits in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Records per origin, each list in seq order.
    pub events: Vec<(Origin, Vec<Record>)>,
    /// Commands to audit.
    pub commands: Vec<CommandEntry>,
    /// Configuration changes.
    pub config_changes: Vec<ConfigChange>,
    /// Desired states, in the order they were decided (the last one of a service wins).
    pub wants: Vec<(String, Want)>,
}

impl Batch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.iter().all(|(_, r)| r.is_empty())
            && self.commands.is_empty()
            && self.config_changes.is_empty()
            && self.wants.is_empty()
    }

    /// Adds one record of `origin`.
    pub fn push(&mut self, origin: Origin, record: Record) {
        match self.events.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, records)) => records.push(record),
            None => self.events.push((origin, vec![record])),
        }
    }

    /// Appends `other`.
    pub fn merge(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.commands.extend(other.commands);
        self.config_changes.extend(other.config_changes);
        self.wants.extend(other.wants);
    }

    /// How many records, commands, changes and desired states it holds.
    pub fn len(&self) -> usize {
        self.events.iter().map(|(_, r)| r.len()).sum::<usize>()
            + self.commands.len()
            + self.config_changes.len()
            + self.wants.len()
    }
}

/// What one committed batch stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// The records newly stored, with their row ids, in the order they were stored: what
    /// the controller pushes to its subscribers.
    pub rows: Vec<EventRow>,
    /// Per origin in the batch: the highest seq now stored (everything the buddy may drop).
    pub seqs: BTreeMap<Origin, u64>,
    /// Records newly stored.
    pub inserted: u64,
    /// Records skipped because they were already stored (or pruned).
    pub duplicates: u64,
    /// Commands stored.
    pub commands: usize,
    /// Configuration changes stored.
    pub config_changes: usize,
    /// The counters, after this commit, of every service it stored rows for (metrics).
    pub counters: BTreeMap<String, super::ServiceCounters>,
}

/// Retention bounds; rows beyond either go, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Rows older than this (by wall time) are deleted.
    pub max_age: Option<Duration>,
    /// At most this many rows are kept per table (the newest by id).
    pub max_rows: Option<u64>,
}

/// What retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Commands deleted.
    pub commands: u64,
    /// Configuration changes deleted.
    pub config_changes: u64,
    /// A table had more rows to delete than one call deletes ([`RETENTION_CHUNK`]): call again.
    pub more: bool,
}

/// Most rows of one table that one retention call deletes, so that the writer thread, and the
/// batches queued behind it, never wait long for retention.
pub const RETENTION_CHUNK: i64 = 20_000;

pub(crate) fn split_id(service: &str) -> (Option<&str>, &str) {
    match service.split_once("::") {
        Some((package, name)) => (Some(package), name),
        None => (None, service),
    }
}

fn create_service(tx: &Transaction, service: &str, uuid: &str) -> Result<i64> {
    let (package, name) = split_id(service);
    tx.execute(
        "INSERT INTO services (uuid, service, package, name, created_us) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![uuid, service, package, name, now_us()],
    )?;
    Ok(tx.last_insert_rowid())
}

pub(crate) fn ensure_service(
    tx: &Transaction,
    service: &str,
    uuid: Option<&str>,
) -> Result<(i64, String)> {
    let uuid = uuid.map(str::to_ascii_lowercase);
    let found: Option<(i64, String)> = tx
        .query_row(
            "SELECT id, uuid FROM services WHERE service = ?1",
            [service],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((id, stored)) = found {
        let uuid = uuid.unwrap_or(stored);
        tx.execute(
            "UPDATE services SET uuid = ?2, removed_us = NULL WHERE id = ?1",
            params![id, uuid],
        )?;
        return Ok((id, uuid));
    }
    let uuid = uuid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    Ok((create_service(tx, service, &uuid)?, uuid))
}

/// The service's row id, and the row id and pruned seq of its incarnation, creating either row
/// (a service with a new UUID) when needed.
fn incarnation_row(tx: &Transaction, origin: &Origin) -> Result<(i64, i64, i64)> {
    let found: Option<(i64, Option<i64>, Option<i64>)> = tx
        .prepare_cached(
            "SELECT s.id, i.id, i.pruned_seq FROM services s LEFT JOIN incarnations i \
             ON i.service_id = s.id AND i.incarnation = ?2 WHERE s.service = ?1",
        )?
        .query_row(params![origin.service, origin.incarnation], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let sid = match found {
        Some((sid, Some(iid), Some(pruned))) => return Ok((sid, iid, pruned)),
        Some((sid, _, _)) => sid,
        None => create_service(tx, &origin.service, &uuid::Uuid::new_v4().to_string())?,
    };
    tx.prepare_cached(
        "INSERT INTO incarnations (service_id, incarnation, created_us) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![sid, origin.incarnation, now_us()])?;
    Ok((sid, tx.last_insert_rowid(), 0))
}

/// The stretches of `first..=last` that no stored row of incarnation `iid` accounts for (a
/// row accounts for `first_seq..=seq`), in order.
fn uncovered(tx: &Transaction, iid: i64, first: i64, last: i64) -> Result<Vec<(i64, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT first_seq, seq FROM events WHERE incarnation_id = ?1 AND seq >= ?2 \
         AND first_seq <= ?3 ORDER BY first_seq",
    )?;
    let covered = stmt.query_map(params![iid, first, last], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut gaps = Vec::new();
    let mut next = first;
    for row in covered {
        let (a, b) = row?;
        if a > next {
            gaps.push((next, (a - 1).min(last)));
        }
        next = next.max(b.saturating_add(1));
        if next > last {
            return Ok(gaps);
        }
    }
    gaps.push((next, last));
    Ok(gaps)
}

/// The columns derived from an event's kind: name, detail JSON, exit code, signal, core, lost.
type KindColumns = (
    String,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<bool>,
    Option<i64>,
);

fn kind_columns(kind: &EventKind) -> Result<KindColumns> {
    let mut value = serde_json::to_value(kind)?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid("an event kind that is not a JSON object".into()))?;
    let name = match obj.remove("kind") {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(StoreError::Invalid("an event kind without a name".into())),
    };
    let detail = if obj.is_empty() {
        None
    } else {
        Some(serde_json::to_string(obj)?)
    };
    let (mut code, mut signal, mut core, mut lost) = (None, None, None, None);
    match kind {
        EventKind::Died { exit, .. }
        | EventKind::ActionRun { exit, .. }
        | EventKind::LoggerDied { exit, .. } => match *exit {
            Exit::Exited { code: c } => code = Some(c),
            Exit::Killed { signal: s, core: c } => (signal, core) = (Some(s), Some(c)),
            Exit::Unknown => {}
        },
        EventKind::Signaled { signal: s, .. } => signal = Some(*s),
        EventKind::Lost { count, .. } => {
            lost = Some(
                i64::try_from(*count).map_err(|_| StoreError::Invalid(format!("lost {count}")))?,
            )
        }
        _ => {}
    }
    Ok((name, detail, code, signal, core, lost))
}

fn to_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Invalid(format!("sequence number {seq}")))
}

/// Inserts `records` of `origin`; returns (highest seq stored for it, the rows newly stored).
pub(crate) fn insert_events(
    tx: &Transaction,
    origin: &Origin,
    records: &[Record],
) -> Result<(u64, Vec<EventRow>)> {
    let (sid, iid, pruned) = incarnation_row(tx, origin)?;
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (service_id, incarnation_id, seq, first_seq, wall_us, \
         mono_us, kind, from_state, to_state, pid, exit_code, signal, core, cause, detail, \
         lost_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    let mut rows = Vec::new();
    let before: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE incarnation_id = ?1")?
        .query_row([iid], |r| r.get(0))?;
    let mut stored = before.max(pruned);
    for r in records {
        let seq = to_i64(r.seq)?;
        if seq <= pruned {
            continue;
        }
        // A `lost` record stands for the seqs up to its own: store it for those no row
        // accounts for, one row per stretch.
        let stretches = match &r.kind {
            EventKind::Lost { count, .. } => {
                let count = i64::try_from(*count).unwrap_or(i64::MAX).max(1);
                let first = seq.saturating_sub(count - 1).max(pruned + 1).max(1);
                uncovered(tx, iid, first, seq)?
            }
            // Beyond the highest stored seq nothing can account for it; at or below, a
            // replay: stored once, and never inside a stretch a `lost` row stands for.
            _ if seq > stored => vec![(seq, seq)],
            _ => uncovered(tx, iid, seq, seq)?,
        };
        stored = stored.max(seq);
        for (first, last) in stretches {
            let mut r = r.clone();
            if let EventKind::Lost { count, .. } = &mut r.kind {
                *count = u64::try_from(last - first + 1).unwrap_or(0);
                r.seq = u64::try_from(last).unwrap_or(0);
            }
            let (kind, detail, code, signal, core, lost) = kind_columns(&r.kind)?;
            let added = stmt.execute(params![
                sid,
                iid,
                last,
                first,
                r.wall_us,
                r.mono_us,
                kind,
                r.from.as_str(),
                r.to.as_str(),
                r.pid,
                code,
                signal,
                core,
                r.cause,
                detail,
                lost,
            ])?;
            if added == 1 {
                rows.push(EventRow {
                    id: tx.last_insert_rowid(),
                    service: origin.service.clone(),
                    record: r,
                });
            }
        }
    }
    // The highest seq stored before, or inserted (or skipped as stored) now.
    Ok((u64::try_from(stored).unwrap_or(0), rows))
}

pub(crate) fn insert_command(tx: &Transaction, c: &CommandEntry) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO commands \
         (wall_us, uid, gid, pid, cmdline, request, service, result, ok, origin) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        c.wall_us,
        c.uid,
        c.gid,
        c.pid,
        c.cmdline,
        serde_json::to_string(&c.request)?,
        c.service,
        c.result,
        c.ok,
        c.origin,
    ])?;
    Ok(tx.last_insert_rowid())
}

pub(crate) fn insert_config_change(tx: &Transaction, c: &ConfigChange) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO config_changes (wall_us, file, hash, services) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        c.wall_us,
        c.file,
        c.hash,
        serde_json::to_string(&c.services)?
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Records the desired state of `service`; false when the store knows no such service.
pub(crate) fn set_desired(tx: &Transaction, service: &str, want: Want) -> Result<bool> {
    let n = tx
        .prepare_cached("UPDATE services SET desired = ?2 WHERE service = ?1")?
        .execute(params![service, super::want_str(want)])?;
    Ok(n > 0)
}

pub(crate) fn apply(tx: &Transaction, batch: &Batch) -> Result<Committed> {
    let mut done = Committed::default();
    for (origin, records) in &batch.events {
        let (high, rows) = insert_events(tx, origin, records)?;
        let inserted = rows.len() as u64;
        done.inserted += inserted;
        done.duplicates += (records.len() as u64).saturating_sub(inserted);
        done.rows.extend(rows);
        let seq = done.seqs.entry(origin.clone()).or_insert(0);
        *seq = (*seq).max(high);
    }
    let touched: std::collections::BTreeSet<&str> =
        done.rows.iter().map(|r| r.service.as_str()).collect();
    for service in touched {
        let counters = super::counters::of_service(tx, service)?;
        done.counters.insert(service.to_owned(), counters);
    }
    for c in &batch.commands {
        insert_command(tx, c)?;
    }
    for c in &batch.config_changes {
        insert_config_change(tx, c)?;
    }
    for (service, want) in &batch.wants {
        if !set_desired(tx, service, *want)? {
            eprintln!("upkeeper: {service}: cannot store its desired state: the store knows no such service");
        }
    }
    done.commands = batch.commands.len();
    done.config_changes = batch.config_changes.len();
    Ok(done)
}

fn retention(tx: &Transaction, r: &Retention, now: i64) -> Result<Pruned> {
    let age_us = r
        .max_age
        .map(|a| i64::try_from(a.as_micros()).unwrap_or(i64::MAX));
    let mut pruned = Pruned::default();
    if age_us.is_none() && r.max_rows.is_none() {
        return Ok(pruned);
    }
    let cutoff = age_us.map_or(i64::MIN, |a| now.saturating_sub(a));
    tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)")?;
    for table in ["events", "commands", "config_changes"] {
        // Everything with id <= last_id goes for the count bound (-1: nothing).
        let last_id: i64 = match r.max_rows {
            None => -1,
            Some(keep) => tx
                .query_row(
                    &format!("SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?1"),
                    [i64::try_from(keep).unwrap_or(i64::MAX)],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(-1),
        };
        // Two statements, each on its own index (the row id, the wall time), at most a chunk.
        tx.execute("DELETE FROM doomed", [])?;
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO doomed SELECT id FROM {table} WHERE id <= ?1 \
                 ORDER BY id LIMIT ?2"
            ),
            params![last_id, RETENTION_CHUNK],
        )?;
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO doomed SELECT id FROM {table} WHERE wall_us < ?1 \
                 ORDER BY wall_us LIMIT ?2"
            ),
            params![cutoff, RETENTION_CHUNK],
        )?;
        if table == "events" {
            tx.execute(
                "UPDATE incarnations SET pruned_seq = MAX(pruned_seq, d.seq) FROM \
                 (SELECT incarnation_id, MAX(seq) AS seq FROM events \
                  WHERE id IN (SELECT id FROM doomed) GROUP BY incarnation_id) AS d \
                 WHERE incarnations.id = d.incarnation_id",
                [],
            )?;
        }
        let n = tx.execute(
            &format!("DELETE FROM {table} WHERE id IN (SELECT id FROM doomed)"),
            [],
        )? as u64;
        pruned.more |= n >= RETENTION_CHUNK as u64;
        match table {
            "events" => pruned.events = n,
            "commands" => pruned.commands = n,
            _ => pruned.config_changes = n,
        }
    }
    tx.execute("DELETE FROM doomed", [])?;
    Ok(pruned)
}

impl Store {
    /// Stores `records` of `service` (its empty incarnation) in one transaction, skipping any
    /// seq already stored; returns the highest seq now stored for it (0: none). Creates the
    /// service's row if it has none.
    pub fn insert_events(&mut self, service: &str, records: &[Record]) -> Result<u64> {
        self.insert_origin_events(&Origin::from(service), records)
    }

    /// [`Store::insert_events`] for one incarnation of a service.
    pub fn insert_origin_events(&mut self, origin: &Origin, records: &[Record]) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let (high, _) = insert_events(&tx, origin, records)?;
        tx.commit()?;
        Ok(high)
    }

    /// Audits one command; returns its row id.
    pub fn insert_command(&mut self, command: &CommandEntry) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_command(&tx, command)?;
        tx.commit()?;
        Ok(id)
    }

    /// Records one configuration change; returns its row id.
    pub fn insert_config_change(&mut self, change: &ConfigChange) -> Result<i64> {
        let tx = self.conn.transaction()?;
        let id = insert_config_change(&tx, change)?;
        tx.commit()?;
        Ok(id)
    }

    /// Stores a whole batch in one transaction: all of it or, on error, none of it.
    pub fn apply(&mut self, batch: &Batch) -> Result<Committed> {
        let tx = self.conn.transaction()?;
        let done = apply(&tx, batch)?;
        tx.commit()?;
        Ok(done)
    }

    /// Deletes the oldest events, commands and configuration changes beyond either bound, as
    /// of `now_us`, in one transaction.
    pub fn retention(&mut self, bounds: &Retention, now_us: i64) -> Result<Pruned> {
        let tx = self.conn.transaction()?;
        let pruned = retention(&tx, bounds, now_us)?;
        tx.commit()?;
        Ok(pruned)
    }
}
