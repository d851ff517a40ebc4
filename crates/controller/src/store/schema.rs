//! The schema and its migrations.
//!
//! `PRAGMA user_version` is the number of migrations applied. Migration `i` (0-based) takes the
//! database from version `i` to `i + 1` in one immediate transaction, so a crash leaves either
//! the old or the new version, never half of one. Migrations are append-only: a released entry
//! of [`MIGRATIONS`] is never edited, a change is a new entry. A database whose version is
//! newer than this binary knows is refused rather than guessed at.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Version 1: services, events, commands, config changes and their indexes.
const V1: &str = r#"
CREATE TABLE services (
    id          INTEGER PRIMARY KEY,
    uuid        TEXT    NOT NULL UNIQUE,
    service     TEXT    NOT NULL UNIQUE,
    package     TEXT,
    name        TEXT    NOT NULL,
    config_hash TEXT,
    desired     TEXT,
    created_us  INTEGER NOT NULL,
    removed_us  INTEGER,
    pruned_seq  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    service_id  INTEGER NOT NULL REFERENCES services(id),
    seq         INTEGER NOT NULL,
    wall_us     INTEGER NOT NULL,
    mono_us     INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    from_state  TEXT    NOT NULL,
    to_state    TEXT    NOT NULL,
    pid         INTEGER,
    exit_code   INTEGER,
    signal      INTEGER,
    core        INTEGER,
    cause       TEXT    NOT NULL,
    detail      TEXT,
    lost_count  INTEGER,
    UNIQUE (service_id, seq)
);
CREATE INDEX events_service_time ON events (service_id, wall_us);
CREATE INDEX events_time ON events (wall_us);
CREATE TABLE commands (
    id       INTEGER PRIMARY KEY,
    wall_us  INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    pid      INTEGER NOT NULL,
    cmdline  TEXT    NOT NULL,
    request  TEXT    NOT NULL,
    service  TEXT,
    result   TEXT    NOT NULL,
    ok       INTEGER NOT NULL
);
CREATE INDEX commands_time ON commands (wall_us);
CREATE INDEX commands_uid_time ON commands (uid, wall_us);
CREATE TABLE config_changes (
    id       INTEGER PRIMARY KEY,
    wall_us  INTEGER NOT NULL,
    file     TEXT    NOT NULL,
    hash     TEXT    NOT NULL,
    services TEXT    NOT NULL
);
CREATE INDEX config_changes_time ON config_changes (wall_us);
"#;

/// Every migration, oldest first; `MIGRATIONS.len()` is the current schema version.
pub const MIGRATIONS: &[&str] = &[V1];

/// The schema version this binary writes.
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to [`current_version`]; returns how many migrations were applied.
pub(crate) fn migrate(conn: &mut Connection) -> Result<usize, StoreError> {
    let mut applied = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write lock: a second process migrating at once waits, then sees
        // the version the first one left.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > current_version() {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known: current_version(),
            });
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(applied);
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        applied += 1;
    }
}
