//! The audit trail on a bad day: a reboot that empties SvcRunPath, the database deleted or
//! made immutable while the controller runs, and the controller killed between a commit and
//! its acknowledgement. Nothing is dropped silently, and every `lost` count is exact.

use super::restart::contiguous;
use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Command;
use upk_core::event::EventKind;
use upk_core::history::EventRow;
use upk_testkit::Controller;

const CRASH: &str = r##"{ "crash": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running",
    UserRateLimit: 0.05, MaxConsecutiveFailures: -1, RingbufferSize: 4096 } }"##;

fn kinds(rows: &[EventRow], kind: &str) -> usize {
    rows.iter()
        .filter(|r| {
            serde_json::to_value(&r.record.kind).expect("json")["kind"].as_str() == Some(kind)
        })
        .count()
}

/// Waits until at least `n` rows of `service` are stored.
fn rows_at_least(db: &Path, service: &str, n: usize) -> Vec<EventRow> {
    wait_until(
        Duration::from_secs(15),
        &format!("{n} rows of {service}"),
        || {
            let rows = stored(db, Some(service));
            if rows.len() >= n {
                Ok(rows)
            } else {
                Err(format!("{} rows", rows.len()))
            }
        },
    )
}

/// Waits until `service`'s rows (one incarnation) are contiguous up to at least `seq`;
/// returns (last seq, lost).
fn stored_through(db: &Path, service: &str, seq: u64) -> (u64, u64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{service} stored through seq {seq}"),
        || {
            let mut rows = stored(db, Some(service));
            rows.sort_by_key(|r| r.record.seq);
            let (last, lost) = contiguous(&rows)?;
            if last >= seq {
                Ok((last, lost))
            } else {
                Err(format!("stored up to {last}"))
            }
        },
    )
}

/// A sandbox with one running `web` service: the sandbox, its controller file and its store.
fn web_sandbox() -> (Sandbox, PathBuf, PathBuf) {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "web.conf",
        r#"{ "web": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    );
    let db = sb.path().join("state/upkeeper.db");
    (sb, ctl, db)
}

#[test]
fn reboot_keeps_every_record() {
    let (sb, ctl, db) = web_sandbox();
    let mut c = Controller::start(&sb, &ctl);
    running(&sb, "web");
    let before = rows_at_least(&db, "web", 2);

    // The reboot: controller, buddies and services gone, and /run empty.
    c.kill();
    for pid in sb.buddies().into_iter().chain(sb.processes("sleep 1000")) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_until(Duration::from_secs(10), "everything dead", || {
        let left: Vec<i32> = sb
            .buddies()
            .into_iter()
            .chain(sb.processes("sleep 1000"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    std::fs::remove_dir_all(sb.run_path()).expect("empty SvcRunPath");

    let c = Controller::start(&sb, &ctl);
    running(&sb, "web");
    let after = wait_until(
        Duration::from_secs(15),
        "the records made after the reboot",
        || {
            let rows = stored(&db, Some("web"));
            if kinds(&rows, "buddy_started") >= 2 && kinds(&rows, "started") >= 2 {
                Ok(rows)
            } else {
                Err(format!("{rows:#?}"))
            }
        },
    );
    assert!(after.len() >= before.len() + 2, "{after:#?}");
    let reader = upkeeper::store::Store::open_read_only(&db).expect("store");
    let incarnations = reader.incarnations("web").expect("incarnations");
    assert_eq!(incarnations.len(), 2, "one per sequence: {incarnations:?}");
    assert_eq!(
        status(&sb, "web").expect("status").incarnation,
        incarnations[1].0
    );
    drop(c);
}

#[test]
fn a_store_deleted_while_running_is_recreated_and_loses_nothing() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "crash.conf", CRASH);
    let db = sb.path().join("state/upkeeper.db");
    let mut c = Controller::start(&sb, &ctl);
    rows_at_least(&db, "crash", 5);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    c.said("was deleted while in use; recreated it");
    // Queries follow the new file, and go on growing.
    let seq = status(&sb, "crash").expect("status").seq;
    wait_until(Duration::from_secs(15), "queries see new events", || {
        let rows = c
            .client()
            .history(&upk_core::history::HistoryFilter::default())
            .map_err(|e| e.to_string())?;
        match rows.iter().map(|r| r.record.seq).max() {
            Some(s) if s > seq => Ok(()),
            other => Err(format!("newest {other:?}, status at {seq}")),
        }
    });
    // After a restart, every record is there: those before the deletion, those committed
    // into the deleted file, and those since.
    c.kill();
    let seq = status(&sb, "crash").expect("status").seq;
    let c = Controller::start(&sb, &ctl);
    let (_, lost) = stored_through(&db, "crash", seq);
    assert_eq!(lost, 0);
    drop(c);
}

/// Makes files immutable (chattr +i) for as long as it lives.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>, on: bool) {
        let out = Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .args(&paths)
            .output()
            .expect("chattr");
        assert!(out.status.success(), "chattr needs root: {out:?}");
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        Immutable::set(std::mem::take(&mut self.0), false);
    }
}

#[test]
fn a_store_made_immutable_then_writable_is_used_again_without_a_restart() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "crash.conf", CRASH);
    let db = sb.path().join("state/upkeeper.db");
    let c = Controller::start(&sb, &ctl);
    rows_at_least(&db, "crash", 5);
    // The database and its WAL; not the `-shm` wal-index, which SQLite maps into memory: a
    // write to an immutable mapping is SIGBUS, the one way left to stop the controller here
    // (docs/audit.md).
    let files: Vec<PathBuf> = ["", "-wal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect();
    Immutable::set(files.clone(), true);
    let guard = Immutable(files);
    c.said("cannot write the audit store");
    let then = status(&sb, "crash").expect("status").seq;
    wait_until(
        Duration::from_secs(10),
        "restarts during the outage",
        || match status(&sb, "crash") {
            Some(s) if s.seq >= then + 10 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    drop(guard);
    let seq = status(&sb, "crash").expect("status").seq;
    let (_, lost) = stored_through(&db, "crash", seq);
    assert_eq!(lost, 0, "the ring held the outage");
    drop(c);
}

#[test]
fn lost_counts_are_exact_when_the_controller_dies_between_commit_and_ack() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "tiny.conf",
        r##"{ "tiny": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running",
            UserRateLimit: 0.01, MaxConsecutiveFailures: -1, RingbufferSize: 8 } }"##,
    );
    let db = sb.path().join("state/upkeeper.db");
    let seq = |sb: &Sandbox| status(sb, "tiny").map_or(0, |s| s.seq);
    for round in 0..6 {
        let mut c = Controller::start(&sb, &ctl);
        let target = seq(&sb) + 10;
        wait_until(Duration::from_secs(15), "some records stored", || {
            let n = stored(&db, Some("tiny")).len() as u64;
            if seq(&sb) >= target && n > 0 {
                Ok(())
            } else {
                Err(format!("round {round}: seq {} rows {n}", seq(&sb)))
            }
        });
        c.kill();
        // Without a controller the 8-record ring overflows.
        let then = seq(&sb);
        wait_until(Duration::from_secs(10), "the ring overflowing", || {
            if seq(&sb) >= then + 20 {
                Ok(())
            } else {
                Err(format!("seq {}", seq(&sb)))
            }
        });
    }
    let c = Controller::start(&sb, &ctl);
    let last = seq(&sb);
    let (through, lost) = stored_through(&db, "tiny", last);
    assert!(lost > 0, "the ring overflowed and said so");
    let rows = stored(&db, Some("tiny"));
    let accounted: u64 = rows
        .iter()
        .map(|r| match r.record.kind {
            EventKind::Lost { count, .. } => count,
            _ => 1,
        })
        .sum();
    let highest = rows.iter().map(|r| r.record.seq).max().unwrap_or(0);
    assert!(highest >= through);
    assert_eq!(
        accounted, highest,
        "each seq is stored or counted lost, exactly once"
    );
    drop(c);
}

#[test]
fn a_storm_of_crash_loops_loses_nothing_while_the_controller_listens() {
    // Twenty services restarting without any delay, each with a ring of 8: the buddies could
    // make records far faster than they are stored; they wait for the controller instead.
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let entries: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                r##""{n}": {{ StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running",
                   UserRateLimit: 0, MaxConsecutiveFailures: -1, UserMaxRestarts: Null,
                   RingbufferSize: 8 }}"##
            )
        })
        .collect();
    service_file(&sb, "storm.conf", &format!("{{ {} }}", entries.join(",\n")));
    let db = sb.path().join("state/upkeeper.db");
    let c = Controller::start(&sb, &ctl);
    wait_until(Duration::from_secs(60), "every loop past seq 150", || {
        let behind: Vec<(String, u64)> = names
            .iter()
            .map(|n| (n.clone(), status(&sb, n).map_or(0, |s| s.seq)))
            .filter(|(_, seq)| *seq < 150)
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("{behind:?}"))
        }
    });
    let mut client = c.client();
    for n in &names {
        client.stop(n).expect("stop during the storm");
    }
    for n in &names {
        let seq = wait_until(
            Duration::from_secs(20),
            &format!("{n} stopped"),
            || match status(&sb, n) {
                Some(s) if s.state == upk_core::event::StateName::Stopped => Ok(s.seq),
                other => Err(format!("{other:?}")),
            },
        );
        let (_, lost) = stored_through(&db, n, seq);
        assert_eq!(lost, 0, "{n} lost records while the controller listened");
    }
    drop(c);
}

#[test]
fn history_with_a_limit_past_one_page_returns_that_many_rows() {
    // The controller answers at most MAX_ROWS rows a request; libupkeeper asks again from the
    // cursor until the caller's limit is met (it once counted against the page's limit).
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    let state = sb.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let per_page = upk_core::client::MAX_ROWS as u64;
    let records: Vec<upk_core::event::Record> = (1..=per_page * 2 + 500)
        .map(|seq| upk_core::event::Record {
            seq,
            wall_us: 1_000_000 + seq as i64,
            mono_us: seq as i64,
            from: upk_core::event::StateName::Stopped,
            to: upk_core::event::StateName::Running,
            pid: Some(42),
            cause: "test".into(),
            kind: EventKind::STARTED,
        })
        .collect();
    let mut store = upkeeper::store::Store::open(&state.join("upkeeper.db")).expect("store");
    store.insert_events("old", &records).expect("insert");
    drop(store);
    let c = Controller::start(&sb, &ctl);
    let want = per_page as usize * 2 + 100;
    let filter = upk_core::history::HistoryFilter {
        service: Some("old".into()),
        limit: Some(want),
        ..Default::default()
    };
    let rows = c.client().history(&filter).expect("history");
    assert_eq!(rows.len(), want);
    let seqs: Vec<u64> = rows.iter().map(|r| r.record.seq).collect();
    assert_eq!(
        seqs,
        (1..=want as u64).collect::<Vec<_>>(),
        "in order, each once"
    );
    drop(c);
}

/// A command's `done` means its audit row is committed: a controller killed the moment it has
/// answered keeps the command in its store, every time.
#[test]
fn an_answered_command_is_in_the_store_even_when_the_controller_dies_at_once() {
    let (sb, ctl, db) = web_sandbox();
    let audited = |db: &Path| -> usize {
        let conn = rusqlite::Connection::open(db).expect("store");
        conn.query_row(
            "SELECT count(*) FROM commands WHERE request LIKE '%\"restart\"%' AND ok = 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("count") as usize
    };
    for round in 1..=8 {
        let mut c = Controller::start(&sb, &ctl);
        wait_until(Duration::from_secs(10), "web running", || {
            match status(&sb, "web") {
                Some(s) if s.state == upk_core::event::StateName::Running => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        let mut client = upk_testkit::Client::raw(&c.socket);
        client.call(serde_json::json!({"type": "hello", "version": 1, "id": 1}));
        let reply = client.call(serde_json::json!({"type": "restart", "service": "web", "id": 2}));
        assert_eq!(reply["type"], "done", "{reply}");
        c.kill();
        assert_eq!(
            audited(&db),
            round,
            "round {round}: the answered restart is audited"
        );
    }
}
