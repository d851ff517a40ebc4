//! The central PostgreSQL: its schema and migrations, the hosts and their cursors, and one
//! batch shipped in one transaction.
//!
//! `schema_version` holds one row per migration applied. Migrations run in one transaction
//! under a transaction-level advisory lock, so shippers starting together apply each once; a
//! database newer than this binary knows is refused, not modified. Released migrations are
//! never edited (docs/fleet.md lists the schema).
//!
//! **Exactly once.** A batch is shipped in one transaction that (1) locks the host's cursor row
//! of its table and checks it still says what this shipper read from (another shipper for the
//! same host id moved it otherwise: the batch is dropped and the cursor read again), (2) inserts
//! the rows with `ON CONFLICT DO NOTHING` against their keys, (3) records the holes it found as
//! gap rows, and (4) moves the cursor to the batch's last local id. A kill or an outage at any
//! point leaves the transaction committed whole or not at all; a batch shipped again after a
//! lost commit acknowledgement is skipped row by row by the keys. Rows go in as arrays
//! (`unnest`), one statement per batch, with no temporary table and no session state, so the
//! shipper works through a transaction-pooling pgbouncer.

use crate::local::{clamp_wall, Batch, Rows, Table};
use postgres::{Client, Transaction};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Version 1: hosts, cursors, events (partitioned by month of `wall`), commands, config
/// changes, gaps. JSON columns are `json` (validated, kept as text): building `jsonb` cost
/// 40% of an event's insert, and the fleet's queries read `detail` of a few rows only.
const V1: &str = r#"
CREATE TABLE hosts (
    host        text        PRIMARY KEY,
    machine_id  text,
    hostname    text,
    store       text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE cursors (
    host        text        NOT NULL REFERENCES hosts (host),
    tbl         text        NOT NULL CHECK (tbl IN ('events', 'commands', 'config_changes')),
    last_id     bigint      NOT NULL DEFAULT 0,
    shipped     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, tbl)
);
CREATE TABLE events (
    host         text        NOT NULL,
    service_uuid uuid        NOT NULL,
    incarnation  text        NOT NULL,
    seq          bigint      NOT NULL,
    wall         timestamptz NOT NULL,
    first_seq    bigint      NOT NULL,
    local_id     bigint      NOT NULL,
    service      text        NOT NULL,
    wall_us      bigint      NOT NULL,
    mono_us      bigint      NOT NULL,
    kind         text        NOT NULL,
    from_state   text        NOT NULL,
    to_state     text        NOT NULL,
    pid          bigint,
    exit_code    bigint,
    signal       bigint,
    core         bigint,
    cause        text        NOT NULL,
    detail       json,
    lost_count   bigint,
    shipped_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (host, service_uuid, incarnation, seq, wall)
) PARTITION BY RANGE (wall);
CREATE INDEX events_host_service_wall ON events (host, service, wall);
CREATE INDEX events_wall ON events USING brin (wall);
CREATE INDEX events_deaths ON events (host, wall) WHERE kind IN ('died', 'spawn_failed');
CREATE TABLE commands (
    host        text        NOT NULL,
    local_id    bigint      NOT NULL,
    wall_us     bigint      NOT NULL,
    wall        timestamptz NOT NULL,
    uid         bigint      NOT NULL,
    gid         bigint      NOT NULL,
    pid         bigint      NOT NULL,
    cmdline     text        NOT NULL,
    request     json        NOT NULL,
    service     text,
    result      text        NOT NULL,
    ok          boolean     NOT NULL,
    shipped_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (host, local_id, wall_us)
);
CREATE INDEX commands_wall ON commands (wall);
CREATE INDEX commands_host_service_wall ON commands (host, service, wall);
CREATE TABLE config_changes (
    host        text        NOT NULL,
    local_id    bigint      NOT NULL,
    wall_us     bigint      NOT NULL,
    wall        timestamptz NOT NULL,
    file        text        NOT NULL,
    hash        text        NOT NULL,
    services    json        NOT NULL,
    shipped_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (host, local_id, wall_us)
);
CREATE INDEX config_changes_wall ON config_changes (wall);
CREATE TABLE gaps (
    host        text        NOT NULL,
    tbl         text        NOT NULL,
    from_id     bigint      NOT NULL,
    to_id       bigint      NOT NULL,
    reason      text        NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, tbl, from_id, to_id)
);
"#;

/// Version 2: where a command came from when it was given through `upkctl -H` (the origin the
/// ssh bridge reported, docs/remote.md); NULL for a local command and for stores older than
/// the controller's `commands.origin`.
const COMMAND_ORIGIN: &str = "ALTER TABLE commands ADD COLUMN origin text;";

/// Every migration, oldest first; `MIGRATIONS.len()` is the current schema version.
pub const MIGRATIONS: &[&str] = &[V1, COMMAND_ORIGIN];

/// The advisory lock key (any constant) that serialises migrations and partition creation.
const SCHEMA_LOCK: i64 = 0x0075_706b_7368_6970; // "upkship"

/// What the shipper says about itself in `hosts`.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    /// The host id rows are keyed by.
    pub host: String,
    /// `/etc/machine-id`, when readable.
    pub machine_id: Option<String>,
    /// The kernel's host name.
    pub hostname: Option<String>,
    /// The local store's path.
    pub store: String,
}

/// What shipping a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Rows inserted.
    pub inserted: u64,
    /// Rows already there (a replay).
    pub skipped: u64,
    /// Gap rows recorded.
    pub gaps: u64,
}

/// Errors of the central side.
#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    /// PostgreSQL (or the connection to it) failed.
    #[error("{0}")]
    Pg(#[from] postgres::Error),
    /// The database's schema is newer than this binary.
    #[error(
        "the fleet database has schema version {found}; this upkeeper-ship knows up to \
         {known} (upgrade it)"
    )]
    TooNew {
        /// Found.
        found: i32,
        /// Known.
        known: usize,
    },
    /// Another shipper moved this host's cursor.
    #[error(
        "the cursor of host {host:?} ({table}) moved from {expected} to {found} under this \
         shipper: another shipper runs with the same host id"
    )]
    Moved {
        /// The host.
        host: String,
        /// The table.
        table: &'static str,
        /// What this shipper had.
        expected: i64,
        /// What the database had.
        found: i64,
    },
}

/// Brings the database's schema up to date; returns how many migrations ran.
pub fn migrate(client: &mut Client) -> Result<usize, CentralError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let found: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .get(0);
    let known = MIGRATIONS.len();
    if usize::try_from(found).map_or(true, |f| f > known) {
        return Err(CentralError::TooNew { found, known });
    }
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        applied += 1;
    }
    tx.commit()?;
    Ok(applied)
}

/// A connection to the fleet database, shipping for one host.
pub struct Central {
    client: Client,
    host: String,
    cursors: HashMap<Table, i64>,
    /// The months (`year * 12 + month0`) that have an `events` partition.
    partitions: BTreeSet<i64>,
}

impl Central {
    /// Connects, migrates, registers the host and reads its cursors.
    pub fn connect(config: &postgres::Config, info: &HostInfo) -> Result<Central, CentralError> {
        let mut client = config.connect(postgres::NoTls)?;
        migrate(&mut client)?;
        let mut tx = client.transaction()?;
        tx.execute(
            "INSERT INTO hosts (host, machine_id, hostname, store) VALUES ($1, $2, $3, $4)
             ON CONFLICT (host) DO UPDATE SET machine_id = EXCLUDED.machine_id,
                 hostname = EXCLUDED.hostname, store = EXCLUDED.store, last_seen = now()",
            &[&info.host, &info.machine_id, &info.hostname, &info.store],
        )?;
        for t in Table::ALL {
            tx.execute(
                "INSERT INTO cursors (host, tbl) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&info.host, &t.name()],
            )?;
        }
        let mut cursors = HashMap::new();
        for row in tx.query(
            "SELECT tbl, last_id FROM cursors WHERE host = $1",
            &[&info.host],
        )? {
            let name: String = row.get(0);
            if let Some(t) = Table::ALL.into_iter().find(|t| t.name() == name) {
                cursors.insert(t, row.get::<_, i64>(1));
            }
        }
        let partitions = tx
            .query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'events'::regclass",
                &[],
            )?
            .iter()
            .filter_map(|r| month_of_partition(r.get(0)))
            .collect();
        tx.commit()?;
        let mut central = Central {
            client,
            host: info.host.clone(),
            cursors,
            partitions,
        };
        // This month's and the next one's partitions exist before any batch needs them, so a
        // month's turn never creates one while events are shipped.
        let now = month_of_us(crate::now_us());
        central.ensure_partitions(&[now, now + 1])?;
        Ok(central)
    }

    /// The cursor of `table`: the last local row id shipped.
    pub fn cursor(&self, table: Table) -> i64 {
        self.cursors.get(&table).copied().unwrap_or(0)
    }

    /// Creates the monthly `events` partitions among `months` that do not exist yet.
    fn ensure_partitions(&mut self, months: &[i64]) -> Result<(), CentralError> {
        let missing: Vec<i64> = months
            .iter()
            .copied()
            .filter(|m| !self.partitions.contains(m))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        for &m in &missing {
            tx.batch_execute(&partition_sql(m))?;
        }
        tx.commit()?;
        self.partitions.extend(missing);
        Ok(())
    }

    /// Ships one batch read after this table's cursor, in one transaction with the cursor's
    /// move. `reason` words the gap rows for the batch's holes.
    pub fn ship(&mut self, batch: &Batch, cursor: i64) -> Result<Shipped, CentralError> {
        if let Rows::Events(rows) = &batch.rows {
            let months: BTreeSet<i64> = rows
                .iter()
                .map(|e| month_of_us(clamp_wall(e.wall_us)))
                .collect();
            let months: Vec<i64> = months.into_iter().collect();
            self.ensure_partitions(&months)?;
        }
        let host = self.host.clone();
        let table = batch.table;
        let mut tx = self.client.transaction()?;
        // The rows and the cursor's move commit together, so a commit the server loses in a
        // crash loses both, and the rows are shipped again from the older cursor: waiting for
        // the WAL flush buys nothing here.
        tx.batch_execute("SET LOCAL synchronous_commit TO off")?;
        lock_cursor(&mut tx, &host, table, cursor)?;
        let inserted = insert(&mut tx, &host, &batch.rows)?;
        let mut gaps = 0;
        for &(from, to) in &batch.holes {
            let reason = format!(
                "local {} rows {from}..={to} were not in the store when shipped: deleted by \
                 retention before they were shipped, or the store was replaced",
                table.name()
            );
            gaps += tx.execute(
                "INSERT INTO gaps (host, tbl, from_id, to_id, reason) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&host, &table.name(), &from, &to, &reason],
            )?;
        }
        let last = batch.last_id(cursor);
        let n = i64::try_from(batch.rows.len()).unwrap_or(i64::MAX);
        tx.execute(
            "UPDATE cursors SET last_id = $3, shipped = shipped + $4, updated_at = now()
             WHERE host = $1 AND tbl = $2",
            &[&host, &table.name(), &last, &n],
        )?;
        tx.commit()?;
        self.cursors.insert(table, last);
        let total = batch.rows.len() as u64;
        Ok(Shipped {
            inserted,
            skipped: total.saturating_sub(inserted),
            gaps,
        })
    }

    /// The local table's ids went below the cursor (the store was replaced or emptied): says
    /// so in a gap row and starts the table again from 0, in one transaction. The keys keep
    /// what is shipped again from being stored twice.
    pub fn rewind(
        &mut self,
        table: Table,
        cursor: i64,
        local_max: i64,
    ) -> Result<(), CentralError> {
        let host = self.host.clone();
        let mut tx = self.client.transaction()?;
        lock_cursor(&mut tx, &host, table, cursor)?;
        let reason = format!(
            "the local {} ids went back from {cursor} to {local_max}: the store was replaced \
             or emptied; shipping it again from the start",
            table.name()
        );
        let from = local_max.saturating_add(1);
        tx.execute(
            "INSERT INTO gaps (host, tbl, from_id, to_id, reason) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&host, &table.name(), &from, &cursor, &reason],
        )?;
        tx.execute(
            "UPDATE cursors SET last_id = 0, updated_at = now() WHERE host = $1 AND tbl = $2",
            &[&host, &table.name()],
        )?;
        tx.commit()?;
        self.cursors.insert(table, 0);
        Ok(())
    }

    /// Reads this host's cursors again (after another shipper moved one).
    pub fn reload(&mut self) -> Result<(), CentralError> {
        for row in self.client.query(
            "SELECT tbl, last_id FROM cursors WHERE host = $1",
            &[&self.host],
        )? {
            let name: String = row.get(0);
            if let Some(t) = Table::ALL.into_iter().find(|t| t.name() == name) {
                self.cursors.insert(t, row.get::<_, i64>(1));
            }
        }
        Ok(())
    }
}

fn lock_cursor(
    tx: &mut Transaction<'_>,
    host: &str,
    table: Table,
    expected: i64,
) -> Result<(), CentralError> {
    let found: i64 = tx
        .query_one(
            "SELECT last_id FROM cursors WHERE host = $1 AND tbl = $2 FOR UPDATE",
            &[&host, &table.name()],
        )?
        .get(0);
    if found != expected {
        return Err(CentralError::Moved {
            host: host.to_owned(),
            table: table.name(),
            expected,
            found,
        });
    }
    Ok(())
}

/// Inserts the rows (one statement, columns as arrays); returns how many were new.
fn insert(tx: &mut Transaction<'_>, host: &str, rows: &Rows) -> Result<u64, CentralError> {
    let n = match rows {
        Rows::Events(v) if !v.is_empty() => {
            let uuid: Vec<&str> = v.iter().map(|e| e.uuid.as_str()).collect();
            let inc: Vec<&str> = v.iter().map(|e| e.incarnation.as_str()).collect();
            let seq: Vec<i64> = v.iter().map(|e| e.seq).collect();
            let wall: Vec<SystemTime> = v.iter().map(|e| system_time(e.wall_us)).collect();
            let first: Vec<i64> = v.iter().map(|e| e.first_seq).collect();
            let id: Vec<i64> = v.iter().map(|e| e.id).collect();
            let service: Vec<&str> = v.iter().map(|e| e.service.as_str()).collect();
            let wall_us: Vec<i64> = v.iter().map(|e| e.wall_us).collect();
            let mono: Vec<i64> = v.iter().map(|e| e.mono_us).collect();
            let kind: Vec<&str> = v.iter().map(|e| e.kind.as_str()).collect();
            let from: Vec<&str> = v.iter().map(|e| e.from_state.as_str()).collect();
            let to: Vec<&str> = v.iter().map(|e| e.to_state.as_str()).collect();
            let pid: Vec<Option<i64>> = v.iter().map(|e| e.pid).collect();
            let code: Vec<Option<i64>> = v.iter().map(|e| e.exit_code).collect();
            let signal: Vec<Option<i64>> = v.iter().map(|e| e.signal).collect();
            let core: Vec<Option<i64>> = v.iter().map(|e| e.core).collect();
            let cause: Vec<&str> = v.iter().map(|e| e.cause.as_str()).collect();
            let detail: Vec<Option<&str>> = v.iter().map(|e| e.detail.as_deref()).collect();
            let lost: Vec<Option<i64>> = v.iter().map(|e| e.lost_count).collect();
            tx.execute(
                "INSERT INTO events (host, service_uuid, incarnation, seq, wall, first_seq,
                     local_id, service, wall_us, mono_us, kind, from_state, to_state, pid,
                     exit_code, signal, core, cause, detail, lost_count)
                 SELECT $1, t.u::uuid, t.inc, t.seq, t.wall, t.first_seq, t.id, t.service,
                     t.wall_us, t.mono, t.kind, t.f, t.t, t.pid, t.code, t.signal, t.core,
                     t.cause, t.detail::json, t.lost
                 FROM unnest($2::text[], $3::text[], $4::int8[], $5::timestamptz[],
                     $6::int8[], $7::int8[], $8::text[], $9::int8[], $10::int8[], $11::text[],
                     $12::text[], $13::text[], $14::int8[], $15::int8[], $16::int8[],
                     $17::int8[], $18::text[], $19::text[], $20::int8[])
                     AS t(u, inc, seq, wall, first_seq, id, service, wall_us, mono, kind, f, t,
                          pid, code, signal, core, cause, detail, lost)
                 ON CONFLICT DO NOTHING",
                &[
                    &host, &uuid, &inc, &seq, &wall, &first, &id, &service, &wall_us, &mono, &kind,
                    &from, &to, &pid, &code, &signal, &core, &cause, &detail, &lost,
                ],
            )?
        }
        Rows::Commands(v) if !v.is_empty() => {
            let id: Vec<i64> = v.iter().map(|c| c.id).collect();
            let wall_us: Vec<i64> = v.iter().map(|c| c.wall_us).collect();
            let wall: Vec<SystemTime> = v.iter().map(|c| system_time(c.wall_us)).collect();
            let uid: Vec<i64> = v.iter().map(|c| c.uid).collect();
            let gid: Vec<i64> = v.iter().map(|c| c.gid).collect();
            let pid: Vec<i64> = v.iter().map(|c| c.pid).collect();
            let cmdline: Vec<&str> = v.iter().map(|c| c.cmdline.as_str()).collect();
            let request: Vec<&str> = v.iter().map(|c| c.request.as_str()).collect();
            let service: Vec<Option<&str>> = v.iter().map(|c| c.service.as_deref()).collect();
            let result: Vec<&str> = v.iter().map(|c| c.result.as_str()).collect();
            let ok: Vec<bool> = v.iter().map(|c| c.ok).collect();
            let origin: Vec<Option<&str>> = v.iter().map(|c| c.origin.as_deref()).collect();
            tx.execute(
                "INSERT INTO commands (host, local_id, wall_us, wall, uid, gid, pid, cmdline,
                     request, service, result, ok, origin)
                 SELECT $1, t.id, t.wall_us, t.wall, t.uid, t.gid, t.pid, t.cmdline,
                     t.request::json, t.service, t.result, t.ok, t.origin
                 FROM unnest($2::int8[], $3::int8[], $4::timestamptz[], $5::int8[], $6::int8[],
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bool[],
                     $13::text[])
                     AS t(id, wall_us, wall, uid, gid, pid, cmdline, request, service, result, ok,
                         origin)
                 ON CONFLICT DO NOTHING",
                &[
                    &host, &id, &wall_us, &wall, &uid, &gid, &pid, &cmdline, &request, &service,
                    &result, &ok, &origin,
                ],
            )?
        }
        Rows::ConfigChanges(v) if !v.is_empty() => {
            let id: Vec<i64> = v.iter().map(|c| c.id).collect();
            let wall_us: Vec<i64> = v.iter().map(|c| c.wall_us).collect();
            let wall: Vec<SystemTime> = v.iter().map(|c| system_time(c.wall_us)).collect();
            let file: Vec<&str> = v.iter().map(|c| c.file.as_str()).collect();
            let hash: Vec<&str> = v.iter().map(|c| c.hash.as_str()).collect();
            let services: Vec<&str> = v.iter().map(|c| c.services.as_str()).collect();
            tx.execute(
                "INSERT INTO config_changes (host, local_id, wall_us, wall, file, hash, services)
                 SELECT $1, t.id, t.wall_us, t.wall, t.file, t.hash, t.services::json
                 FROM unnest($2::int8[], $3::int8[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::text[]) AS t(id, wall_us, wall, file, hash, services)
                 ON CONFLICT DO NOTHING",
                &[&host, &id, &wall_us, &wall, &file, &hash, &services],
            )?
        }
        _ => 0,
    };
    Ok(n)
}

/// A wall time (µs since the epoch), clamped into the partitions' range, as a `SystemTime`.
pub fn system_time(wall_us: i64) -> SystemTime {
    // Clamped to 2000..2100: positive, so the conversion is exact.
    UNIX_EPOCH + Duration::from_micros(clamp_wall(wall_us).unsigned_abs())
}

/// The month (`year * 12 + month - 1`, UTC) of a wall time in µs.
pub fn month_of_us(wall_us: i64) -> i64 {
    let days = clamp_wall(wall_us).div_euclid(86_400_000_000);
    let (y, m, _) = civil_from_days(days);
    y * 12 + (m - 1)
}

/// `events_pYYYYMM` as a month number.
fn month_of_partition(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_p")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: i64 = digits[4..].parse().ok()?;
    (1..=12).contains(&m).then_some(y * 12 + m - 1)
}

/// The `CREATE TABLE ... PARTITION OF events` of a month.
pub fn partition_sql(month: i64) -> String {
    let (y, m) = (month.div_euclid(12), month.rem_euclid(12) + 1);
    let (ny, nm) = ((month + 1).div_euclid(12), (month + 1).rem_euclid(12) + 1);
    format!(
        "CREATE TABLE IF NOT EXISTS events_p{y:04}{m:02} PARTITION OF events \
         FOR VALUES FROM ('{y:04}-{m:02}-01 00:00:00+00') TO ('{ny:04}-{nm:02}-01 00:00:00+00')"
    )
}

/// Days since 1970-01-01 as (year, month 1-12, day 1-31), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_their_partitions() {
        // 2026-12-03T13:00:00Z
        let m = month_of_us(1_796_302_800_000_000);
        assert_eq!(m, 2026 * 12 + 11);
        assert_eq!(
            partition_sql(m),
            "CREATE TABLE IF NOT EXISTS events_p202612 PARTITION OF events FOR VALUES FROM \
             ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
        assert_eq!(month_of_partition("events_p202612"), Some(m));
        assert_eq!(month_of_partition("events_p202613"), None);
        assert_eq!(month_of_partition("events_default"), None);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(month_of_us(i64::MIN), 2000 * 12);
        assert_eq!(month_of_us(i64::MAX), 2099 * 12 + 11);
    }
}
