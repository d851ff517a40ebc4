//! Shipping: two hosts into one database through a PostgreSQL crash, a shipper killed -9 in
//! the middle of a catch-up, rows pruned before they were shipped, and `upkctl --fleet`.

use super::*;

/// Waits until at least `n` events of `host` are central.
fn wait_central(pg: &Pg, host: &str, n: i64) -> i64 {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} central events of {host}"),
        || {
            let sql = format!("SELECT count(*) FROM events WHERE host = '{host}'");
            let rows = pg.try_sql(&sql)?;
            let c: i64 = rows.first().and_then(|l| l.parse().ok()).unwrap_or(0);
            if c >= n {
                Ok(c)
            } else {
                Err(format!("{c}"))
            }
        },
    )
}

/// Waits until the local store of `host` holds at least `n` events.
fn wait_local(host: &Host, n: usize) -> usize {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} local events of {}", host.name),
        || {
            let c = host.local_keys().len();
            if c >= n {
                Ok(c)
            } else {
                Err(format!("{c}"))
            }
        },
    )
}

fn upkctl_fleet(pg: &Pg, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("upkctl"));
    cmd.args(["--utc", "--fleet", &pg.url()])
        .args(args)
        .env("UPKEEPER_SHIP", bin("upkeeper-ship"));
    run_bounded(cmd, Duration::from_secs(30))
}

#[test]
fn two_hosts_ship_through_a_postgres_crash_every_event_exactly_once() {
    let Some(pg) = Pg::start() else { return };
    let (nf, nt) = crash_loop("nginx", 0.05);
    let (df, dt) = crash_loop("db", 0.2);
    let mut a = Host::new("web-a", &[(&nf, &nt), (&df, &dt)]);
    let mut b = Host::new("web-b", &[(&nf, &nt)]);
    let mut ship_a = a.shipper(&pg, &[]);
    let mut ship_b = b.shipper(&pg, &["--batch", "7"]);
    wait_central(&pg, "web-a", 20);
    wait_central(&pg, "web-b", 20);

    // PostgreSQL crashes in the middle of the crash loops; the stores go on growing.
    pg.crash();
    let before = (a.local_keys().len(), b.local_keys().len());
    ship_a.wait_said("cannot use PostgreSQL", Duration::from_secs(20));
    ship_b.wait_said("cannot use PostgreSQL", Duration::from_secs(20));
    wait_local(&a, before.0 + 40);
    wait_local(&b, before.1 + 40);
    pg.up();
    ship_a.wait_said("PostgreSQL is back", Duration::from_secs(30));
    ship_b.wait_said("PostgreSQL is back", Duration::from_secs(30));

    // The crash loops end (the controllers stop storing); every event is central once.
    for h in [&mut a, &mut b] {
        if let Some(mut c) = h.controller.take() {
            c.kill();
        }
    }
    let na = wait_shipped(&pg, &a, Duration::from_secs(60));
    let nb = wait_shipped(&pg, &b, Duration::from_secs(60));
    assert!(na > 60 && nb > 60, "{na} and {nb} events");
    for h in [&a, &b] {
        let dup = central_keys(&pg, &h.name)
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .count();
        assert_eq!(dup, 0, "no event of {} is central twice", h.name);
    }
    // Said once per outage: one "cannot use", one "is back".
    let said = ship_a.drain().to_vec();
    let downs = said.iter().filter(|l| l.contains("cannot use")).count();
    assert_eq!(downs, 1, "{said:#?}");
    assert_eq!(
        pg.count("SELECT count(*) FROM gaps"),
        0,
        "nothing was pruned"
    );

    // Cursors say what was shipped.
    let cur = pg.count("SELECT last_id FROM cursors WHERE host = 'web-a' AND tbl = 'events'");
    assert_eq!(
        cur as usize, na,
        "the events cursor of web-a is its last local id"
    );

    // The fleet from the command line: which hosts restarted nginx, and what died first.
    let (code, out, err) = upkctl_fleet(
        &pg,
        &[
            "--hosts", "web-*", "history", "nginx", "--kind", "started", "-n", "0",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web-a") && out.contains("web-b"), "{out}");
    assert!(!out.contains("  db  "), "only nginx: {out}");
    let (code, out, err) = upkctl_fleet(&pg, &["--hosts", "web-b", "--json", "history"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() > 10, "{out}");
    assert!(
        out.lines().all(|l| l.contains(r#""host":"web-b""#)),
        "only web-b: {out}"
    );
    let (code, out, err) = upkctl_fleet(&pg, &["--hosts", "web-?", "why", "nginx"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web-a") && out.contains("web-b"), "{out}");
    assert!(
        out.contains("exited with code 1") || out.contains("code 1"),
        "{out}"
    );
    let (code, out, err) = upkctl_fleet(&pg, &["--hosts", "*-a", "why", "db"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web-a") && !out.contains("web-b"), "{out}");
    let (code, out, err) = upkctl_fleet(&pg, &["--hosts", "web-*", "stats"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("nginx")).count(),
        2,
        "one line per host: {out}"
    );
    let (code, out, err) = upkctl_fleet(&pg, &["--hosts", "web-a", "incident", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web-a") && out.contains("nginx"), "{out}");
    let (code, out, _) = upkctl_fleet(&pg, &["--hosts", "nohost-*", "why", "nginx"]);
    assert_eq!(code, 2, "no host matched is not found: {out}");
    // The fleet database down: one sentence, a temporary failure, no wait past --timeout.
    pg.crash();
    let (code, _, err) = upkctl_fleet(&pg, &["--timeout", "5", "history"]);
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("cannot reach the fleet database"), "{err}");
    drop((ship_a, ship_b));
}

#[test]
fn a_shipper_killed_mid_stream_resumes_without_duplicates_or_holes() {
    let Some(pg) = Pg::start() else { return };
    let (f1, t1) = crash_loop("fast1", 0.01);
    let (f2, t2) = crash_loop("fast2", 0.01);
    let mut h = Host::new("kill-9", &[(&f1, &t1), (&f2, &t2)]);
    // A backlog first, then a shipper in small batches, killed three times mid-stream.
    wait_local(&h, 1500);
    let mut shipped = 0;
    for round in 0..3 {
        let mut s = h.shipper(&pg, &["--batch", "10"]);
        shipped = wait_central(&pg, "kill-9", shipped + 100);
        s.kill();
        let dup = central_keys(&pg, "kill-9")
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .count();
        assert_eq!(dup, 0, "after kill {round}");
    }
    // A command given through `upkctl -H` (the bridge puts its origin in the hello) reaches
    // the fleet with that origin.
    let socket = h.controller.as_ref().expect("running").socket.clone();
    let mut client = upk_testkit::Client::raw(&socket);
    let hello =
        serde_json::json!({"type": "hello", "version": 1, "id": 1, "origin": "ssh 10.0.0.1:22"});
    assert_eq!(client.call(hello)["type"], "hello");
    let reply = client.call(serde_json::json!({"type": "stop", "service": "fast2", "id": 2}));
    assert_eq!(reply["type"], "done", "{reply}");
    if let Some(mut c) = h.controller.take() {
        c.kill();
    }
    let _s = h.shipper(&pg, &[]);
    let n = wait_shipped(&pg, &h, Duration::from_secs(60));
    assert!(n >= 1500, "{n}");
    let origins = "SELECT origin || ' ' || service FROM commands WHERE host = 'kill-9' \
                   AND origin IS NOT NULL";
    let origin = wait_until(
        Duration::from_secs(20),
        "the command's origin, central",
        || {
            let rows = pg.sql(origins);
            (!rows.is_empty())
                .then_some(rows.clone())
                .ok_or(format!("{rows:?}"))
        },
    );
    assert_eq!(origin, ["ssh 10.0.0.1:22 fast2"]);
    let cursor = pg.count("SELECT last_id FROM cursors WHERE host = 'kill-9' AND tbl = 'events'");
    assert_eq!(cursor as usize, n);
    assert_eq!(pg.count("SELECT count(*) FROM gaps"), 0);
}

#[test]
fn rows_pruned_before_they_were_shipped_are_a_gap_row_not_a_silence() {
    let Some(pg) = Pg::start() else { return };
    let (f, t) = crash_loop("flaky", 0.02);
    let mut h = Host::new("pruned", &[(&f, &t)]);
    wait_local(&h, 200);
    if let Some(mut c) = h.controller.take() {
        c.kill();
    }
    // Retention as the controller does it, by hand, on a copy: ids 50..=99 are gone.
    let copy = h.sb.path().join("copy.db");
    {
        let conn = rusqlite::Connection::open(h.store()).expect("open");
        conn.execute("VACUUM INTO ?1", [copy.to_str().expect("utf8")])
            .expect("vacuum into");
        let conn = rusqlite::Connection::open(&copy).expect("open copy");
        conn.execute("DELETE FROM events WHERE id BETWEEN 50 AND 99", [])
            .expect("prune");
    }
    let ship_pruned = || {
        let mut cmd = Command::new(bin("upkeeper-ship"));
        cmd.arg("run").arg("--store").arg(&copy).args([
            "--database",
            &pg.url(),
            "--host",
            "pruned",
            "--once",
        ]);
        run_bounded(cmd, Duration::from_secs(60))
    };
    let (code, _, err) = ship_pruned();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rows 50..=99 were gone"), "{err}");
    let gaps = pg.sql("SELECT tbl, from_id, to_id FROM gaps WHERE host = 'pruned'");
    assert_eq!(gaps, vec!["events|50|99".to_owned()]);
    assert_eq!(central_keys(&pg, "pruned"), local_keys(&copy));
    // Shipped again (the same cursor): nothing more, nothing twice.
    let (code, _, err) = ship_pruned();
    assert_eq!(code, 0, "{err}");
    assert_eq!(central_keys(&pg, "pruned"), local_keys(&copy));

    // Bad input is one sentence and exit 100.
    for args in [
        vec!["--host", "bad host"],
        vec!["--batch", "0"],
        vec!["--interval", "99999999999"],
    ] {
        let mut cmd = Command::new(bin("upkeeper-ship"));
        cmd.arg("run")
            .arg("--store")
            .arg(&copy)
            .args(["--database", &pg.url()])
            .args(&args);
        let (code, _, err) = run_bounded(cmd, Duration::from_secs(10));
        assert_eq!(code, 100, "{args:?}: {err}");
    }
}

#[test]
fn the_example_service_file_for_the_shipper_checks() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/upkeeper.d/upkeeper-ship.conf");
    let mut cmd = Command::new(bin("upkctl"));
    cmd.arg("check").arg(&file);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 service (upkeeper::ship)"), "{out}");
}

#[test]
fn a_store_deleted_and_recreated_by_the_controller_is_followed() {
    let Some(pg) = Pg::start() else { return };
    let (f, t) = crash_loop("loop", 0.05);
    let mut h = Host::new("recreated", &[(&f, &t)]);
    let mut s = h.shipper(&pg, &[]);
    wait_central(&pg, "recreated", 20);
    // `rm upkeeper.db*` while everything runs: the controller writes its open copy back
    // (docs/audit.md); the shipper must read the new file, not the deleted one.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", h.store().display()));
    }
    let c = h.controller.as_ref().expect("controller");
    c.said("was deleted while in use");
    s.wait_said("is a new file", Duration::from_secs(20));
    let before = pg.count("SELECT count(*) FROM events WHERE host = 'recreated'");
    wait_central(&pg, "recreated", before + 20);
    if let Some(mut c) = h.controller.take() {
        c.kill();
    }
    wait_shipped(&pg, &h, Duration::from_secs(60));
}
