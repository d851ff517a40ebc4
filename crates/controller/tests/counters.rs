//! The store's counters (the `counters` migration, docs/metrics.md): counted by a trigger as rows are
//! inserted, once per row whatever is re-sent, never lowered by retention, counted for rows
//! stored before the migration, and handed back with each commit.

use std::path::PathBuf;
use std::time::Duration;

use upk_core::death::Reason;
use upk_core::event::{EventKind, Exit, Record, StateName};
use upkeeper::store::{Batch, Origin, Retention, ServiceCounters, Store, MIGRATIONS};

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("upkeeper.db");
    (dir, path)
}

fn rec(seq: u64, to: StateName, cause: &str, kind: EventKind) -> Record {
    Record {
        seq,
        wall_us: 1_700_000_000_000_000 + seq as i64,
        mono_us: seq as i64,
        from: StateName::Backoff,
        to,
        pid: Some(100),
        cause: cause.into(),
        kind,
    }
}

fn died(seq: u64, reason: Option<Reason>) -> Record {
    let mut kind = EventKind::died(
        Exit::Killed {
            signal: 9,
            core: false,
        },
        1.0,
    );
    if let EventKind::Died { reason: r, .. } = &mut kind {
        *r = reason;
    }
    rec(seq, StateName::Backoff, "exit", kind)
}

/// A crash loop's records: a start by command, two deaths by SIGKILL each followed by a
/// restart by policy, a failed start by policy, a death without a reason, 3 records lost.
fn crash_loop() -> Vec<Record> {
    let started = |seq, cause: &str| rec(seq, StateName::Running, cause, EventKind::STARTED);
    vec![
        started(1, "command from uid 0"),
        died(2, Some(Reason::Signal)),
        started(3, "policy"),
        died(4, Some(Reason::Signal)),
        started(5, "policy"),
        rec(
            6,
            StateName::Backoff,
            "policy",
            EventKind::SpawnFailed {
                error: "ENOENT".into(),
            },
        ),
        started(7, "cool-down over"),
        died(8, None),
        rec(
            11,
            StateName::Backoff,
            "ring overflow",
            EventKind::Lost {
                count: 3,
                reason: "ring overflow".into(),
            },
        ),
    ]
}

fn expected() -> ServiceCounters {
    ServiceCounters {
        events: 9,
        lost: 3,
        restarts: 4,
        deaths: [("signal".to_owned(), 2), ("unknown".to_owned(), 1)]
            .into_iter()
            .collect(),
    }
}

#[test]
fn counters_count_each_row_once_and_retention_never_lowers_them() {
    let (_dir, path) = db();
    let mut store = Store::open(&path).expect("open");
    store.insert_events("web", &crash_loop()).expect("insert");
    // The backlog sent again after a crash: nothing is counted twice.
    store.insert_events("web", &crash_loop()).expect("again");
    assert_eq!(store.service_counters("web").expect("counters"), expected());
    let pruned = store
        .retention(
            &Retention {
                max_age: None,
                max_rows: Some(1),
            },
            0,
        )
        .expect("retention");
    assert!(pruned.events >= 8, "{pruned:?}");
    assert_eq!(store.service_counters("web").expect("counters"), expected());
    let all = store.counters().expect("all");
    assert_eq!((all.events, all.lost), (9, 3));
    assert_eq!(all.services.get("web"), Some(&expected()));
    assert_eq!(
        store.service_counters("nobody").expect("none"),
        ServiceCounters::default()
    );
}

/// The index of the migration that makes the counters (not a fixed version: migrations of
/// other features may come before or after it).
fn counters_migration() -> usize {
    MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE counters"))
        .expect("a migration makes the counters")
}

#[test]
fn rows_stored_before_the_migration_are_counted_by_it() {
    let (_dir, old) = db();
    let (_dir2, new) = db();
    {
        let mut conn = rusqlite::Connection::open(&old).expect("open");
        for (i, sql) in MIGRATIONS[..counters_migration()].iter().enumerate() {
            conn.execute_batch(sql).expect("migration");
            conn.pragma_update(None, "user_version", i as i64 + 1)
                .expect("version");
        }
        // The rows as the previous schema's writer left them (no counters table yet).
        let tx = conn.transaction().expect("tx");
        tx.execute_batch(
            "INSERT INTO services (uuid, service, name, created_us) VALUES ('u', 'web', 'web', 0);
             INSERT INTO incarnations (service_id, incarnation, created_us) VALUES (1, '', 0);",
        )
        .expect("service");
        for r in crash_loop() {
            let kind = serde_json::to_value(&r.kind).expect("json");
            let mut detail = kind.as_object().cloned().unwrap_or_default();
            let name = detail
                .remove("kind")
                .and_then(|k| k.as_str().map(str::to_owned));
            let lost = match &r.kind {
                EventKind::Lost { count, .. } => Some(*count as i64),
                _ => None,
            };
            tx.execute(
                "INSERT INTO events (service_id, incarnation_id, seq, first_seq, wall_us, mono_us, \
                 kind, from_state, to_state, cause, detail, lost_count) \
                 VALUES (1, 1, ?1, ?1, 0, 0, ?2, 'backoff', ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    r.seq as i64,
                    name,
                    r.to.as_str(),
                    r.cause,
                    serde_json::to_string(&detail).expect("detail"),
                    lost
                ],
            )
            .expect("row");
        }
        tx.commit().expect("commit");
    }
    let migrated = Store::open(&old).expect("migrate");
    assert_eq!(migrated.migrated(), MIGRATIONS.len() - counters_migration());
    let mut fresh = Store::open(&new).expect("open");
    fresh.insert_events("web", &crash_loop()).expect("insert");
    assert_eq!(migrated.service_counters("web").expect("old"), expected());
    assert_eq!(fresh.service_counters("web").expect("new"), expected());
}

#[test]
fn a_commit_hands_back_the_counters_of_the_services_it_stored_rows_for() {
    let (_dir, path) = db();
    let (writer, outcomes) = upkeeper::store::StoreWriter::spawn_with_channel(&path).expect("w");
    let mut batch = Batch::default();
    for r in crash_loop() {
        batch.push(Origin::from("web"), r);
    }
    assert!(writer.queued() <= batch.len() as u64);
    writer.submit(batch.clone()).expect("submit");
    let first = outcomes
        .recv_timeout(Duration::from_secs(10))
        .expect("outcome")
        .result
        .expect("committed");
    assert_eq!(first.counters.get("web"), Some(&expected()));
    // Sent again: nothing new stored, so nothing to hand back.
    writer.submit(batch).expect("submit");
    let again = outcomes
        .recv_timeout(Duration::from_secs(10))
        .expect("outcome")
        .result
        .expect("committed");
    assert!(again.counters.is_empty(), "{:?}", again.counters);
    assert_eq!(writer.queued(), 0);
}
