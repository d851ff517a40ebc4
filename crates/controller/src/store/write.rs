//! Writes: services, events (exactly once), commands, configuration changes, retention.
//!
//! Every function here runs inside a transaction its caller owns, so the public methods (one
//! transaction per call) and the writer thread (one transaction per merged batch) share them.
//! Exactly-once: `events` has UNIQUE(service_id, seq) and inserts are `INSERT OR IGNORE`;
//! retention remembers the highest seq it deleted per service (`services.pruned_seq`) and
//! inserts skip seqs at or below it, so a backlog re-sent after a crash is stored once even
//! when its oldest part was already pruned.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use upk_core::event::{EventKind, Exit, Record};
use upk_core::history::{CommandEntry, ConfigChange, EventRow};

use super::{now_us, Result, Store, StoreError};

/// What the writer thread commits in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Records per service id, each list in seq order.
    pub events: Vec<(String, Vec<Record>)>,
    /// Commands to audit.
    pub commands: Vec<CommandEntry>,
    /// Configuration changes.
    pub config_changes: Vec<ConfigChange>,
}

impl Batch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.iter().all(|(_, r)| r.is_empty())
            && self.commands.is_empty()
            && self.config_changes.is_empty()
    }

    /// Appends `other`.
    pub fn merge(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.commands.extend(other.commands);
        self.config_changes.extend(other.config_changes);
    }

    /// How many records, commands and changes it holds.
    pub fn len(&self) -> usize {
        self.events.iter().map(|(_, r)| r.len()).sum::<usize>()
            + self.commands.len()
            + self.config_changes.len()
    }
}

/// What one committed batch stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Committed {
    /// The records newly stored, with their row ids, in the order they were stored: what
    /// the controller pushes to its subscribers.
    pub rows: Vec<EventRow>,
    /// Per service in the batch: the highest seq now stored (everything the buddy may drop).
    pub seqs: BTreeMap<String, u64>,
    /// Records newly stored.
    pub inserted: u64,
    /// Records skipped because they were already stored (or pruned).
    pub duplicates: u64,
    /// Commands stored.
    pub commands: usize,
    /// Configuration changes stored.
    pub config_changes: usize,
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
}

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

/// The row id and pruned seq of `service`, creating the row (with a new UUID) if needed.
fn service_row(tx: &Transaction, service: &str) -> Result<(i64, i64)> {
    let found = tx
        .prepare_cached("SELECT id, pruned_seq FROM services WHERE service = ?1")?
        .query_row([service], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        Some(row) => Ok(row),
        None => Ok((
            create_service(tx, service, &uuid::Uuid::new_v4().to_string())?,
            0,
        )),
    }
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

/// Inserts `records`; returns (highest seq stored for the service, the rows newly stored).
pub(crate) fn insert_events(
    tx: &Transaction,
    service: &str,
    records: &[Record],
) -> Result<(u64, Vec<EventRow>)> {
    let (sid, pruned) = service_row(tx, service)?;
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (service_id, seq, wall_us, mono_us, kind, from_state, \
         to_state, pid, exit_code, signal, core, cause, detail, lost_count) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let mut inserted = 0;
    let mut rows = Vec::new();
    let before: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE service_id = ?1")?
        .query_row([sid], |r| r.get(0))?;
    let mut stored = before.max(pruned);
    for r in records {
        let seq = to_i64(r.seq)?;
        if seq <= pruned {
            continue;
        }
        // A `lost` record stands for the seqs up to its own. When the controller stored some
        // of them before a crash kept it from acknowledging them, the buddy folded them in
        // anyway (ring overflow): only the ones never stored were lost.
        let mut r = r.clone();
        if let EventKind::Lost { count, .. } = &mut r.kind {
            let first = seq - i64::try_from(*count).unwrap_or(i64::MAX) + 1;
            if first <= stored {
                if seq <= stored {
                    continue;
                }
                *count = u64::try_from(seq - stored).unwrap_or(0);
            }
        }
        stored = stored.max(seq);
        let (kind, detail, code, signal, core, lost) = kind_columns(&r.kind)?;
        let added = stmt.execute(params![
            sid,
            seq,
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
            inserted += 1;
            rows.push(EventRow {
                id: tx.last_insert_rowid(),
                service: service.to_owned(),
                record: r,
            });
        }
    }
    debug_assert_eq!(inserted, rows.len());
    // The highest seq stored before, or inserted (or skipped as stored) now.
    Ok((u64::try_from(stored).unwrap_or(0), rows))
}

pub(crate) fn insert_command(tx: &Transaction, c: &CommandEntry) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO commands (wall_us, uid, gid, pid, cmdline, request, service, result, ok) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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

pub(crate) fn apply(tx: &Transaction, batch: &Batch) -> Result<Committed> {
    let mut done = Committed::default();
    for (service, records) in &batch.events {
        let (high, rows) = insert_events(tx, service, records)?;
        let inserted = rows.len() as u64;
        done.inserted += inserted;
        done.duplicates += records.len() as u64 - inserted;
        done.rows.extend(rows);
        done.seqs.insert(service.clone(), high);
    }
    for c in &batch.commands {
        insert_command(tx, c)?;
    }
    for c in &batch.config_changes {
        insert_config_change(tx, c)?;
    }
    done.commands = batch.commands.len();
    done.config_changes = batch.config_changes.len();
    Ok(done)
}

fn retention(tx: &Transaction, r: &Retention, now: i64) -> Result<Pruned> {
    let age_us = r
        .max_age
        .map(|a| i64::try_from(a.as_micros()).unwrap_or(i64::MAX));
    let cutoff = age_us.map_or(i64::MIN, |a| now.saturating_sub(a));
    let mut counts = [0u64; 3];
    for (i, table) in ["events", "commands", "config_changes"].iter().enumerate() {
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
        let cond = "(wall_us < ?1 OR id <= ?2)";
        if *table == "events" {
            tx.execute(
                &format!(
                    "UPDATE services SET pruned_seq = MAX(pruned_seq, COALESCE((SELECT MAX(seq) \
                     FROM events WHERE service_id = services.id AND {cond}), 0))"
                ),
                params![cutoff, last_id],
            )?;
        }
        counts[i] = tx.execute(
            &format!("DELETE FROM {table} WHERE {cond}"),
            params![cutoff, last_id],
        )? as u64;
    }
    Ok(Pruned {
        events: counts[0],
        commands: counts[1],
        config_changes: counts[2],
    })
}

impl Store {
    /// Stores `records` of `service` in one transaction, skipping any (service, seq) already
    /// stored; returns the highest seq now stored for the service (0: none). Creates the
    /// service's row if it has none.
    pub fn insert_events(&mut self, service: &str, records: &[Record]) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let (high, _) = insert_events(&tx, service, records)?;
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
