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

/// Version 2: incarnations. A buddy numbers its records within an incarnation (a random id
/// it makes when it begins a sequence: after a reboot, a wiped run directory, a re-created
/// service), so the key of an event becomes (incarnation, seq), and `incarnations` keeps
/// what `services.pruned_seq` kept, per incarnation. Every row gets `first_seq`, the first
/// seq it accounts for (its own seq, or the first of the seqs a `lost` row stands for), so
/// the seqs a store accounts for can be counted exactly. Rows stored before this version
/// belong to the empty incarnation of their service. `services.pruned_seq` is no longer used.
const V2: &str = r#"
CREATE TABLE incarnations (
    id          INTEGER PRIMARY KEY,
    service_id  INTEGER NOT NULL REFERENCES services(id),
    incarnation TEXT    NOT NULL,
    created_us  INTEGER NOT NULL,
    pruned_seq  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (service_id, incarnation)
);
INSERT INTO incarnations (service_id, incarnation, created_us, pruned_seq)
    SELECT id, '', created_us, pruned_seq FROM services;
CREATE TABLE events_v2 (
    id             INTEGER PRIMARY KEY,
    service_id     INTEGER NOT NULL REFERENCES services(id),
    incarnation_id INTEGER NOT NULL REFERENCES incarnations(id),
    seq            INTEGER NOT NULL,
    first_seq      INTEGER NOT NULL,
    wall_us        INTEGER NOT NULL,
    mono_us        INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    from_state     TEXT    NOT NULL,
    to_state       TEXT    NOT NULL,
    pid            INTEGER,
    exit_code      INTEGER,
    signal         INTEGER,
    core           INTEGER,
    cause          TEXT    NOT NULL,
    detail         TEXT,
    lost_count     INTEGER,
    UNIQUE (incarnation_id, seq)
);
INSERT INTO events_v2 (id, service_id, incarnation_id, seq, first_seq, wall_us, mono_us, kind,
        from_state, to_state, pid, exit_code, signal, core, cause, detail, lost_count)
    SELECT e.id, e.service_id, i.id, e.seq, MAX(1, e.seq - COALESCE(e.lost_count, 1) + 1),
        e.wall_us, e.mono_us, e.kind, e.from_state, e.to_state, e.pid, e.exit_code, e.signal,
        e.core, e.cause, e.detail, e.lost_count
    FROM events e JOIN incarnations i ON i.service_id = e.service_id AND i.incarnation = '';
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
CREATE INDEX events_service_time ON events (service_id, wall_us);
CREATE INDEX events_time ON events (wall_us);
"#;

/// Version 3: the indexes `why` answers from (docs/insight.md). Partial ones, so that only
/// the rows they hold cost a write: the deaths and failed starts of all services by time;
/// the deaths, failed starts, starts and stable marks of a service; and the commands naming
/// a service. A query uses a partial index only when its WHERE repeats the index's term
/// exactly: `insight::DEATHS` and `insight::MILESTONES` are those terms.
const V3: &str = r#"
CREATE INDEX events_deaths_time ON events (wall_us)
    WHERE kind IN ('died', 'spawn_failed');
CREATE INDEX events_milestones ON events (service_id, wall_us)
    WHERE kind IN ('died', 'spawn_failed', 'started', 'stable');
CREATE INDEX commands_service_time ON commands (service, wall_us);
"#;

/// Commands' origin: where the caller said it came from (its `hello`'s `origin`, e.g.
/// `ssh ADDRESS:PORT` from `upkctl bridge`, docs/remote.md), beside the authenticated uid.
/// NULL for commands given locally and for those stored before.
const COMMAND_ORIGIN: &str = r#"
ALTER TABLE commands ADD COLUMN origin TEXT;
"#;

/// Counters for metrics (docs/metrics.md): per service, the events stored, the records lost,
/// the automatic restarts (a start, or a failed start, whose cause is the restart policy or the
/// end of the failed cool-down: what a buddy counts as `restarts`) and the deaths by reason.
/// A trigger counts each row as it is inserted (`INSERT OR IGNORE` skips a duplicate without
/// firing it), in the same transaction, and retention never touches the counters, so they only
/// ever grow, whatever buddies or controllers restart or the store prunes; the rows already
/// stored are counted once, here.
const COUNTERS: &str = r#"
CREATE TABLE counters (
    service_id INTEGER NOT NULL REFERENCES services(id),
    name       TEXT    NOT NULL,
    label      TEXT    NOT NULL DEFAULT '',
    value      INTEGER NOT NULL,
    PRIMARY KEY (service_id, name, label)
) WITHOUT ROWID;
CREATE TRIGGER counters_count AFTER INSERT ON events BEGIN
    INSERT INTO counters (service_id, name, label, value)
        SELECT NEW.service_id, 'events', '', 1 WHERE 1
        ON CONFLICT DO UPDATE SET value = value + 1;
    INSERT INTO counters (service_id, name, label, value)
        SELECT NEW.service_id, 'lost', '', NEW.lost_count
        WHERE NEW.kind = 'lost' AND NEW.lost_count > 0
        ON CONFLICT DO UPDATE SET value = value + excluded.value;
    INSERT INTO counters (service_id, name, label, value)
        SELECT NEW.service_id, 'restarts', '', 1
        WHERE NEW.kind IN ('started', 'spawn_failed') AND NEW.cause IN ('policy', 'cool-down over')
        ON CONFLICT DO UPDATE SET value = value + 1;
    INSERT INTO counters (service_id, name, label, value)
        SELECT NEW.service_id, 'deaths', COALESCE(json_extract(NEW.detail, '$.reason'), 'unknown'), 1
        WHERE NEW.kind = 'died'
        ON CONFLICT DO UPDATE SET value = value + 1;
END;
INSERT INTO counters (service_id, name, label, value)
    SELECT service_id, 'events', '', COUNT(*) FROM events GROUP BY service_id;
INSERT INTO counters (service_id, name, label, value)
    SELECT service_id, 'lost', '', SUM(lost_count) FROM events
    WHERE kind = 'lost' AND lost_count > 0 GROUP BY service_id;
INSERT INTO counters (service_id, name, label, value)
    SELECT service_id, 'restarts', '', COUNT(*) FROM events
    WHERE kind IN ('started', 'spawn_failed') AND cause IN ('policy', 'cool-down over')
    GROUP BY service_id;
INSERT INTO counters (service_id, name, label, value)
    SELECT service_id, 'deaths', COALESCE(json_extract(detail, '$.reason'), 'unknown'), COUNT(*)
    FROM events WHERE kind = 'died' GROUP BY 1, 3;
"#;

/// Every migration, oldest first; `MIGRATIONS.len()` is the current schema version.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, COMMAND_ORIGIN, COUNTERS];

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
