//! The audit store: every buddy event, every operator command and every configuration change,
//! in SQLite (`StateDir/upkeeper.db`, WAL), described in `docs/audit.md`.
//!
//! Invariants: an (incarnation, seq) pair is stored at most once, whatever is re-sent
//! ([`Store::insert_events`] skips what is there, and what retention deleted); every write
//! happens in one transaction per call or batch, so a crash or a full disk leaves either all of
//! a batch or none of it; a service keeps its UUID forever once it has one. In the controller
//! one [`StoreWriter`] thread owns the only read-write connection; queries use connections
//! opened with [`Store::open_read_only`]. Errors that mean "cannot write now" (full, read-only,
//! I/O, busy) are told apart ([`StoreError::is_unwritable`]) so that the caller keeps its events
//! unacknowledged and retries.

mod counters;
mod insight;
mod query;
mod schema;
mod write;
mod writer;

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{ffi, Connection, OpenFlags, OptionalExtension};
use upk_core::status::Want;

pub use counters::{Counters, ServiceCounters};
pub use schema::{current_version, MIGRATIONS};
pub use upk_core::history::{
    CommandEntry, CommandRow, ConfigChange, ConfigChangeRow, EventRow, HistoryFilter, HourBucket,
    Stats,
};
pub use write::{Batch, Committed, Origin, Pruned, Retention, RETENTION_CHUNK};
pub use writer::{Outcome, StoreWriter};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLITE_FULL.
    #[error("the store is full: no room left on the disk or under the store's size limit ({0})")]
    Full(rusqlite::Error),
    /// SQLITE_READONLY.
    #[error("the store is read-only: the database cannot be written ({0})")]
    ReadOnly(rusqlite::Error),
    /// SQLITE_IOERR, SQLITE_CANTOPEN.
    #[error("the store could not read or write its files ({0})")]
    Io(rusqlite::Error),
    /// SQLITE_BUSY, SQLITE_LOCKED after the busy timeout.
    #[error("the store is locked by another connection ({0})")]
    Busy(rusqlite::Error),
    /// Any other SQLite error.
    #[error("the store failed: {0}")]
    Sqlite(rusqlite::Error),
    /// Creating the database file failed.
    #[error("cannot create the store at {path}: {source}")]
    Create {
        /// The database path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer upkeeper.
    #[error("the store has schema version {found}, newer than the {known} this upkeeper knows")]
    SchemaTooNew {
        /// `user_version` found.
        found: i64,
        /// The newest version this binary has.
        known: i64,
    },
    /// A detail or request could not be encoded or decoded as JSON.
    #[error("the store could not encode or decode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A value does not fit (a sequence number above `i64::MAX`).
    #[error("the store cannot hold this value: {0}")]
    Invalid(String),
    /// The named service has no row.
    #[error("the store knows no service {0:?}")]
    UnknownService(String),
    /// The writer thread has stopped (it panicked, or was shut down).
    #[error("the store writer has stopped")]
    WriterGone,
    /// The database file was deleted (or replaced) while open, and could not be recreated.
    #[error("the store's file {path} was deleted while in use and cannot be recreated: {why}")]
    Deleted {
        /// The database path.
        path: String,
        /// Why it cannot be recreated.
        why: String,
    },
}

impl StoreError {
    /// True when the store cannot be written now but may be later: keep the data and retry.
    pub fn is_unwritable(&self) -> bool {
        matches!(
            self,
            StoreError::Full(_)
                | StoreError::ReadOnly(_)
                | StoreError::Io(_)
                | StoreError::Busy(_)
                | StoreError::Deleted { .. }
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use ffi::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DiskFull) => StoreError::Full(e),
            Some(C::ReadOnly) => StoreError::ReadOnly(e),
            Some(C::SystemIoFailure | C::CannotOpen) => StoreError::Io(e),
            Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy(e),
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long a connection waits for another one's lock before reporting [`StoreError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A service as a configuration scan hands it to [`Store::configure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The id.
    pub service: String,
    /// Its configured UUID, if any.
    pub uuid: Option<String>,
    /// The SHA-256 of its definition.
    pub hash: String,
    /// Its desired state if the store has none: from `InitialState` (up or down).
    pub initial: Want,
}

/// One connection to the store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    migrated: usize,
    /// The database's path, and the file it named when opened (device, inode): a store whose
    /// path no longer names that file was deleted or replaced under it.
    path: PathBuf,
    file: Option<(u64, u64)>,
    read_only: bool,
}

/// The device and inode `path` names now.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Store {
    /// Opens the store at `path` read-write, creating it (mode 0640) and migrating its schema.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o640)
                .open(path)
                // The umask could make it narrower: 0640 exactly, for the read group.
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o640)))
                .map_err(|source| StoreError::Create {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Invalid(format!(
                "journal mode {mode} instead of WAL"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let migrated = schema::migrate(&mut conn)?;
        Ok(Store {
            conn,
            migrated,
            path: path.to_owned(),
            file: file_id(path),
            read_only: false,
        })
    }

    /// Opens an existing store for queries only (any number of these may run beside the writer).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > current_version() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known: current_version(),
            });
        }
        Ok(Store {
            conn,
            migrated: 0,
            path: path.to_owned(),
            file: file_id(path),
            read_only: true,
        })
    }

    /// True when the store's path no longer names the file this connection has open: it was
    /// deleted (`rm upkeeper.db*`) or replaced.
    pub fn replaced(&self) -> bool {
        file_id(&self.path) != self.file
    }

    /// Opens the store's path again (the same way), replacing this connection.
    pub fn reopen(&mut self) -> Result<()> {
        *self = if self.read_only {
            Store::open_read_only(&self.path)?
        } else {
            Store::open(&self.path)?
        };
        Ok(())
    }

    /// When the file under this read-write connection was deleted, writes a copy of it, with
    /// everything this connection can still read (all it committed), back to the store's path
    /// and goes on there; when it was replaced by another file, goes on with that one. Returns
    /// what happened, for the controller to say; `Ok(None)` when the file is in place.
    pub fn recover_if_replaced(&mut self) -> Result<Option<String>> {
        if !self.replaced() {
            return Ok(None);
        }
        let shown = self.path.display().to_string();
        let deleted = |why: String| StoreError::Deleted {
            path: shown.clone(),
            why,
        };
        if self.path.exists() {
            self.reopen()?;
            return Ok(Some(format!(
                "the audit store {shown} was replaced by another file while in use; going on with the new file"
            )));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| deleted(e.to_string()))?;
        }
        let events: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap_or(0);
        // VACUUM INTO writes a whole, consistent database from what this connection reads:
        // the deleted file and its WAL, both still open.
        let target = self
            .path
            .to_str()
            .ok_or_else(|| deleted("a path that is not UTF-8".into()))?;
        self.conn
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| deleted(e.to_string()))?;
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o640));
        self.reopen()?;
        Ok(Some(format!(
            "the audit store {shown} was deleted while in use; recreated it from the open copy ({events} events kept)"
        )))
    }

    /// How many migrations this open applied (0 when the schema was already current).
    pub fn migrated(&self) -> usize {
        self.migrated
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Caps the database at about `bytes` (rounded to whole pages, never below its current
    /// size); `None` lifts the cap. A store at its cap fails writes with [`StoreError::Full`],
    /// exactly like a full disk. Applies to this connection only.
    pub fn set_size_limit(&mut self, bytes: Option<u64>) -> Result<u64> {
        let page: u64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages = bytes.map_or(u64::from(u32::MAX - 1), |b| (b / page.max(1)).max(1));
        let now: u64 = self
            .conn
            .pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
        Ok(now.saturating_mul(page))
    }

    /// The row id and UUID of `service` (`name` or `package::name`), creating the row if needed.
    ///
    /// A configured `uuid` is stored (lowercase) and wins over a stored one; without one, the
    /// stored UUID is kept, or a v4 UUID is generated once. A removed service that comes back
    /// gets its old row, history and UUID back.
    pub fn ensure_service(&mut self, service: &str, uuid: Option<&str>) -> Result<(i64, String)> {
        let tx = self.conn.transaction()?;
        let r = write::ensure_service(&tx, service, uuid)?;
        tx.commit()?;
        Ok(r)
    }

    /// Takes a scan's new and changed services into the store in one transaction: each is
    /// registered ([`Store::ensure_service`]) and its definition's hash recorded; a service
    /// without a desired state gets its `initial` one ([`Desired::configured`] does the same
    /// in the controller's memory).
    ///
    /// [`Desired::configured`]: crate::desired::Desired::configured
    pub fn configure(&mut self, services: &[Configured]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for c in services {
            write::ensure_service(&tx, &c.service, c.uuid.as_deref())?;
            tx.prepare_cached(
                "UPDATE services SET config_hash = ?2, desired = COALESCE(desired, ?3) \
                 WHERE service = ?1",
            )?
            .execute(rusqlite::params![c.service, c.hash, want_str(c.initial)])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The desired state of every service the store knows (a removed one has none: one that
    /// comes back is configured afresh, with its `InitialState`): what the controller loads
    /// once before its loop and then keeps in memory, as the store's only writer.
    pub fn desired_all(&self) -> Result<std::collections::BTreeMap<String, Want>> {
        let mut stmt = self
            .conn
            .prepare("SELECT service, desired FROM services WHERE desired IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (service, desired) = row?;
            if let Some(want) = want_of(desired) {
                out.insert(service, want);
            }
        }
        Ok(out)
    }

    /// Records the desired state of a known service.
    pub fn set_desired(&mut self, service: &str, desired: Want) -> Result<()> {
        let tx = self.conn.transaction()?;
        if !write::set_desired(&tx, service, desired)? {
            return Err(StoreError::UnknownService(service.to_owned()));
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the hash of a known service's rendered definition.
    pub fn set_config_hash(&mut self, service: &str, hash: &str) -> Result<()> {
        self.update_service(service, "config_hash = ?2", hash)
    }

    /// Marks a service unconfigured (its rows stay, for history).
    pub fn mark_removed(&mut self, service: &str) -> Result<()> {
        self.update_service(service, "removed_us = ?2, desired = NULL", now_us())
    }

    fn update_service(
        &mut self,
        service: &str,
        set: &str,
        value: impl rusqlite::ToSql,
    ) -> Result<()> {
        let sql = format!("UPDATE services SET {set} WHERE service = ?1");
        match self.conn.execute(&sql, rusqlite::params![service, value])? {
            0 => Err(StoreError::UnknownService(service.to_owned())),
            _ => Ok(()),
        }
    }

    /// The UUID stored for `service`, if it has a row.
    pub fn service_uuid(&self, service: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT uuid FROM services WHERE service = ?1",
                [service],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The desired state stored for `service` (`up`, `down`, `once`), if any: what an
    /// operator last asked for, or the service's `InitialState` when it was configured.
    pub fn desired(&self, service: &str) -> Result<Option<Want>> {
        Ok(want_of(
            self.conn
                .query_row(
                    "SELECT desired FROM services WHERE service = ?1",
                    [service],
                    |r| r.get(0),
                )
                .optional()?
                .flatten(),
        ))
    }

    /// Every service the store has not seen removed, in id order, with its UUID and desired
    /// state: what `list` answers when the controller is down (`crate::offline`).
    pub fn services(&self) -> Result<Vec<(String, String, Option<Want>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT service, uuid, desired FROM services WHERE removed_us IS NULL ORDER BY service",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<String>>(2)?))
        })?;
        rows.map(|r| r.map(|(service, uuid, desired)| (service, uuid, want_of(desired))))
            .collect::<rusqlite::Result<_>>()
            .map_err(Into::into)
    }

    /// The UUID and desired state of `service` in one query (for `list`, which asks for
    /// every service); `None` when it has no row.
    pub fn service_row(&self, service: &str) -> Result<Option<(String, Option<Want>)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT uuid, desired FROM services WHERE service = ?1")?
            .query_row([service], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .map(|(uuid, desired)| (uuid, want_of(desired))))
    }

    /// The newest event's row id (0 when there is none): where a subscription starts.
    pub fn last_event_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }
}

/// How a desired state is stored: the same lowercase word as on the wire (serde's).
pub(crate) fn want_str(want: Want) -> &'static str {
    match want {
        Want::Up => "up",
        Want::Down => "down",
        Want::Once => "once",
    }
}

/// A stored desired state; a word this upkeeper does not know (written by hand, or by a newer
/// one) counts as none.
fn want_of(stored: Option<String>) -> Option<Want> {
    match stored.as_deref()? {
        "up" => Some(Want::Up),
        "down" => Some(Want::Down),
        "once" => Some(Want::Once),
        _ => None,
    }
}
