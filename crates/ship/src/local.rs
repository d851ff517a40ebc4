//! The host's audit store, read-only: the rows the shipper copies, in storage order.
//!
//! The controller's store (`StateDir/upkeeper.db`, docs/audit.md) is opened with
//! `SQLITE_OPEN_READ_ONLY` and `query_only`: under WAL a reader sees a consistent snapshot and
//! never blocks the controller's writer. This module speaks plain SQL to the schema of
//! `crates/controller/src/store/schema.rs` (version 2 or newer: `incarnations` exist) rather
//! than linking the controller, so the shipper carries nothing of the daemon.
//!
//! Row ids are the cursor. The controller has one writer and `INTEGER PRIMARY KEY` ids (the
//! largest plus one), so a committed row never appears below one already seen, and a hole in
//! the ids above the cursor can only be rows deleted before they were shipped (retention):
//! [`Batch::holes`] names them. Every value is checked here, where it enters: text that is not
//! UTF-8 or holds NUL bytes (which PostgreSQL refuses) is made valid, JSON that does not parse
//! is kept as a string, numbers out of their column's range are refused by name.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The oldest store schema the shipper reads (version 2 brought incarnations).
pub const MIN_SCHEMA: i64 = 2;
/// Wall times outside 2000-01-01 .. 2100-01-01 (µs) are shipped with `wall` clamped to these
/// bounds (the partitions' range); `wall_us` keeps the value as stored.
pub const WALL_MIN_US: i64 = 946_684_800_000_000;
/// See [`WALL_MIN_US`].
pub const WALL_MAX_US: i64 = 4_102_444_800_000_000 - 1;
/// The largest seq a buddy makes (docs/audit.md: beyond 2^62 it begins a new incarnation).
pub const MAX_SEQ: i64 = 1 << 62;

/// The tables shipped, each with its own cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `events`.
    Events,
    /// `commands`.
    Commands,
    /// `config_changes`.
    ConfigChanges,
}

impl Table {
    /// Every table, in the order a round ships them.
    pub const ALL: [Table; 3] = [Table::Events, Table::Commands, Table::ConfigChanges];

    /// The table's name, locally and centrally (and in `cursors.tbl`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Commands => "commands",
            Table::ConfigChanges => "config_changes",
        }
    }
}

/// What went wrong reading the local store.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The file is not there (yet): the controller has not started, or it was removed.
    #[error("the audit store {0} does not exist (is the controller running?)")]
    Missing(PathBuf),
    /// SQLite refused.
    #[error("cannot read the audit store {path}: {source}")]
    Sqlite {
        /// The store.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The store's schema predates incarnations.
    #[error(
        "the audit store {path} has schema version {found}; the shipper reads version \
         {MIN_SCHEMA} or newer (start the controller once to migrate it)"
    )]
    TooOld {
        /// The store.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// A stored value is out of its range.
    #[error("the audit store {path}: {table} row {id}: {what}")]
    Bad {
        /// The store.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The row id.
        id: i64,
        /// What is wrong.
        what: String,
    },
}

/// One event row as shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Local row id.
    pub id: i64,
    /// The service's UUID (lowercase).
    pub uuid: String,
    /// The service id.
    pub service: String,
    /// The buddy's incarnation (32 hex digits, or empty).
    pub incarnation: String,
    /// The record's seq, and the first seq it accounts for.
    pub seq: i64,
    /// See `seq`.
    pub first_seq: i64,
    /// The buddy's clocks, µs.
    pub wall_us: i64,
    /// See `wall_us`.
    pub mono_us: i64,
    /// The record's kind and states.
    pub kind: String,
    /// See `kind`.
    pub from_state: String,
    /// See `kind`.
    pub to_state: String,
    /// Copies of detail fields, as the store keeps them.
    pub pid: Option<i64>,
    /// See `pid`.
    pub exit_code: Option<i64>,
    /// See `pid`.
    pub signal: Option<i64>,
    /// See `pid`.
    pub core: Option<i64>,
    /// Why.
    pub cause: String,
    /// The kind's own fields, a JSON object (or NULL).
    pub detail: Option<String>,
    /// For `lost`: how many records it stands for.
    pub lost_count: Option<i64>,
}

/// One audited command as shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Local row id.
    pub id: i64,
    /// When, µs.
    pub wall_us: i64,
    /// The caller.
    pub uid: i64,
    /// See `uid`.
    pub gid: i64,
    /// See `uid`.
    pub pid: i64,
    /// The caller's command line.
    pub cmdline: String,
    /// The request, JSON.
    pub request: String,
    /// The service it names.
    pub service: Option<String>,
    /// What came of it.
    pub result: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Where it came from (`upkctl -H`); `None` for a local command or an older store.
    pub origin: Option<String>,
}

/// One configuration change as shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    /// Local row id.
    pub id: i64,
    /// When, µs.
    pub wall_us: i64,
    /// The file.
    pub file: String,
    /// Its content hash.
    pub hash: String,
    /// The services it named, a JSON list.
    pub services: String,
}

/// The rows of one table after a cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// Events.
    Events(Vec<Event>),
    /// Commands.
    Commands(Vec<Command>),
    /// Configuration changes.
    ConfigChanges(Vec<ConfigChange>),
}

impl Rows {
    /// The local row ids, ascending.
    pub fn ids(&self) -> Vec<i64> {
        match self {
            Rows::Events(v) => v.iter().map(|r| r.id).collect(),
            Rows::Commands(v) => v.iter().map(|r| r.id).collect(),
            Rows::ConfigChanges(v) => v.iter().map(|r| r.id).collect(),
        }
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            Rows::Events(v) => v.len(),
            Rows::Commands(v) => v.len(),
            Rows::ConfigChanges(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch read after a cursor: the rows, and the ranges of ids between them that are missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The table.
    pub table: Table,
    /// The rows, by id.
    pub rows: Rows,
    /// Inclusive id ranges above the cursor and below the last row that no row holds.
    pub holes: Vec<(i64, i64)>,
}

impl Batch {
    /// The id the cursor moves to once this batch is shipped (the cursor itself when empty).
    pub fn last_id(&self, cursor: i64) -> i64 {
        self.rows.ids().last().copied().unwrap_or(cursor)
    }
}

/// The inclusive ranges of ids in `(cursor, last]` missing from `ids` (ascending).
pub fn holes(cursor: i64, ids: &[i64]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut expect = cursor.saturating_add(1);
    for &id in ids {
        if id > expect {
            out.push((expect, id - 1));
        }
        expect = id.saturating_add(1).max(expect);
    }
    out
}

/// A read-only connection to one store.
pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// The (device, inode) of the file opened: the controller recreates a deleted store
    /// (`VACUUM INTO`), and an operator may restore one; either is a new file to open.
    file: (u64, u64),
    /// The store has `commands.origin` (a controller with remote control).
    has_origin: bool,
}

/// The (device, inode) of `path`.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Store {
    /// Opens `path` read-only and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, LocalError> {
        let Some(file) = identity(path) else {
            return Err(LocalError::Missing(path.to_owned()));
        };
        let sqlite = |source| LocalError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(sqlite)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite)?;
        if found < MIN_SCHEMA {
            return Err(LocalError::TooOld {
                path: path.to_owned(),
                found,
            });
        }
        let has_origin = conn
            .prepare("SELECT 1 FROM pragma_table_info('commands') WHERE name = 'origin'")
            .and_then(|mut st| st.exists([]))
            .map_err(sqlite)?;
        Ok(Store {
            path: path.to_owned(),
            conn,
            file,
            has_origin,
        })
    }

    /// True while the path still names the file this connection reads.
    pub fn is_current(&self) -> bool {
        identity(&self.path) == Some(self.file)
    }

    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, source: rusqlite::Error) -> LocalError {
        LocalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The largest row id of `table` (0 when empty).
    pub fn max_id(&self, table: Table) -> Result<i64, LocalError> {
        let sql = format!("SELECT COALESCE(MAX(id), 0) FROM {}", table.name());
        self.conn
            .query_row(&sql, [], |r| r.get(0))
            .map_err(|e| self.sqlite(e))
    }

    /// Whether a row with this id exists in `table`.
    pub fn has_id(&self, table: Table, id: i64) -> Result<bool, LocalError> {
        let sql = format!("SELECT 1 FROM {} WHERE id = ?1", table.name());
        self.conn
            .query_row(&sql, [id], |_| Ok(()))
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.sqlite(e))
    }

    /// At most `limit` rows of `table` after `cursor`, by id, read in one snapshot.
    pub fn after(&mut self, table: Table, cursor: i64, limit: usize) -> Result<Batch, LocalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| LocalError::Sqlite {
            path: path.clone(),
            source: e,
        })?;
        let sqlite = |source| LocalError::Sqlite {
            path: path.clone(),
            source,
        };
        let rows = match table {
            Table::Events => {
                let mut st = tx
                    .prepare_cached(
                        "SELECT e.id, s.uuid, s.service, i.incarnation, e.seq, e.first_seq, \
                         e.wall_us, e.mono_us, e.kind, e.from_state, e.to_state, e.pid, \
                         e.exit_code, e.signal, e.core, e.cause, e.detail, e.lost_count \
                         FROM events e JOIN services s ON s.id = e.service_id \
                         JOIN incarnations i ON i.id = e.incarnation_id \
                         WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
                    )
                    .map_err(sqlite)?;
                let raw = st
                    .query_map([cursor, limit], |r| Ok(raw_event(r)))
                    .map_err(sqlite)?;
                let mut v = Vec::new();
                for r in raw {
                    v.push(check_event(&path, r.map_err(sqlite)?)?);
                }
                Rows::Events(v)
            }
            Table::Commands => {
                let mut st = tx
                    .prepare_cached(if self.has_origin {
                        "SELECT id, wall_us, uid, gid, pid, cmdline, request, service, \
                             result, ok, origin FROM commands WHERE id > ?1 ORDER BY id LIMIT ?2"
                    } else {
                        "SELECT id, wall_us, uid, gid, pid, cmdline, request, service, \
                             result, ok, NULL FROM commands WHERE id > ?1 ORDER BY id LIMIT ?2"
                    })
                    .map_err(sqlite)?;
                let raw = st
                    .query_map([cursor, limit], |r| {
                        Ok(Command {
                            id: r.get(0)?,
                            wall_us: r.get(1)?,
                            uid: int(r, 2).unwrap_or(-1),
                            gid: int(r, 3).unwrap_or(-1),
                            pid: int(r, 4).unwrap_or(-1),
                            cmdline: text(r, 5),
                            request: json(r, 6).unwrap_or_else(|| "null".into()),
                            service: opt_text(r, 7),
                            result: text(r, 8),
                            ok: int(r, 9).unwrap_or(0) != 0,
                            origin: opt_text(r, 10),
                        })
                    })
                    .map_err(sqlite)?;
                let mut v = Vec::new();
                for r in raw {
                    v.push(r.map_err(sqlite)?);
                }
                Rows::Commands(v)
            }
            Table::ConfigChanges => {
                let mut st = tx
                    .prepare_cached(
                        "SELECT id, wall_us, file, hash, services FROM config_changes \
                         WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .map_err(sqlite)?;
                let raw = st
                    .query_map([cursor, limit], |r| {
                        Ok(ConfigChange {
                            id: r.get(0)?,
                            wall_us: r.get(1)?,
                            file: text(r, 2),
                            hash: text(r, 3),
                            services: json(r, 4).unwrap_or_else(|| "[]".into()),
                        })
                    })
                    .map_err(sqlite)?;
                let mut v = Vec::new();
                for r in raw {
                    v.push(r.map_err(sqlite)?);
                }
                Rows::ConfigChanges(v)
            }
        };
        tx.finish().map_err(sqlite)?;
        let holes = holes(cursor, &rows.ids());
        Ok(Batch { table, rows, holes })
    }
}

/// An event as read, before its values are checked ([`check_event`]).
fn raw_event(r: &Row<'_>) -> Event {
    Event {
        id: int(r, 0).unwrap_or(0),
        uuid: text(r, 1),
        service: text(r, 2),
        incarnation: text(r, 3),
        seq: int(r, 4).unwrap_or(0),
        first_seq: int(r, 5).unwrap_or(0),
        wall_us: int(r, 6).unwrap_or(i64::MIN),
        mono_us: int(r, 7).unwrap_or(0),
        kind: text(r, 8),
        from_state: text(r, 9),
        to_state: text(r, 10),
        pid: int(r, 11),
        exit_code: int(r, 12),
        signal: int(r, 13),
        core: int(r, 14),
        cause: text(r, 15),
        detail: json(r, 16),
        lost_count: int(r, 17),
    }
}

fn check_event(path: &Path, mut e: Event) -> Result<Event, LocalError> {
    let bad = |what: String| LocalError::Bad {
        path: path.to_owned(),
        table: "events",
        id: e.id,
        what,
    };
    if !is_uuid(&e.uuid) {
        return Err(bad(format!("{:?} is not a service UUID", e.uuid)));
    }
    e.uuid.make_ascii_lowercase();
    if !(1..=MAX_SEQ).contains(&e.seq) {
        return Err(bad(format!("seq {} is outside 1..=2^62", e.seq)));
    }
    // A first_seq the store should never hold is narrowed to the row's own seq, not refused:
    // the key is (incarnation, seq), and first_seq only counts.
    if !(1..=e.seq).contains(&e.first_seq) {
        e.first_seq = e.seq;
    }
    if e.wall_us == i64::MIN {
        return Err(bad("it has no wall time".into()));
    }
    Ok(e)
}

/// A service UUID as the store keeps them: 36 characters, hex digits and four dashes.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `wall_us` clamped into the partitions' range.
pub fn clamp_wall(wall_us: i64) -> i64 {
    wall_us.clamp(WALL_MIN_US, WALL_MAX_US)
}

fn int(r: &Row<'_>, i: usize) -> Option<i64> {
    match r.get_ref(i).ok()? {
        ValueRef::Integer(n) => Some(n),
        // A REAL where an INTEGER belongs (nothing the controller writes): its whole part,
        // saturated.
        ValueRef::Real(f) if f.is_finite() => Some(f as i64),
        _ => None,
    }
}

/// Text as PostgreSQL takes it: valid UTF-8 without NUL.
pub fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}")
}

fn opt_text(r: &Row<'_>, i: usize) -> Option<String> {
    match r.get_ref(i).ok()? {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(clean(b)),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Null => None,
    }
}

fn text(r: &Row<'_>, i: usize) -> String {
    opt_text(r, i).unwrap_or_default()
}

/// A JSON column as PostgreSQL takes it: valid JSON (a value that does not parse is kept as a
/// JSON string), with `\u0000` (which a cast to jsonb refuses) replaced.
fn json(r: &Row<'_>, i: usize) -> Option<String> {
    let raw = opt_text(r, i)?;
    let value =
        serde_json::from_str::<serde_json::Value>(&raw).unwrap_or(serde_json::Value::String(raw));
    Some(
        serde_json::to_string(&value)
            .ok()?
            .replace("\\u0000", "\\ufffd"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_the_ids_missing_above_the_cursor() {
        assert_eq!(holes(0, &[1, 2, 3]), vec![]);
        assert_eq!(holes(0, &[4, 5, 9]), vec![(1, 3), (6, 8)]);
        assert_eq!(holes(10, &[11, 13]), vec![(12, 12)]);
        assert_eq!(holes(10, &[]), vec![]);
        assert_eq!(holes(i64::MAX - 1, &[i64::MAX]), vec![]);
    }

    #[test]
    fn uuids_and_walls_are_checked() {
        assert!(is_uuid("0b3b1c1e-6f0e-4c39-9a1e-2a4c0e6e7f10"));
        assert!(!is_uuid("0b3b1c1e-6f0e-4c39-9a1e-2a4c0e6e7f1"));
        assert!(!is_uuid("0b3b1c1e66f0e-4c39-9a1e-2a4c0e6e7f10"));
        assert_eq!(clamp_wall(0), WALL_MIN_US);
        assert_eq!(clamp_wall(i64::MAX), WALL_MAX_US);
        assert_eq!(clean(b"a\0b\xff"), "a\u{fffd}b\u{fffd}");
    }
}
