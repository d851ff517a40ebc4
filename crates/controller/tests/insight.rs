//! `Store::why` against a real SQLite file: the streak of failed runs and the last good run,
//! the cascade's first failure, configuration changes naming the service, and every query
//! on the index made for it (schema version 3).

use upk_core::death::{Reason, StopBy, StopStep};
use upk_core::event::{EventKind, Exit, Record, StateName};
use upkeeper::store::{ConfigChange, Store};

const SEC: i64 = 1_000_000;
const BASE: i64 = 1_790_000_000 * SEC;

fn rec(seq: u64, wall_us: i64, cause: &str, kind: EventKind) -> Record {
    Record {
        seq,
        wall_us,
        mono_us: wall_us,
        from: StateName::Running,
        to: StateName::Backoff,
        pid: Some(42),
        cause: cause.into(),
        kind,
    }
}

fn started(seq: u64, at: i64, config: &str) -> Record {
    rec(
        seq,
        at,
        "policy",
        EventKind::Started {
            config: Some(config.into()),
        },
    )
}

fn died(seq: u64, at: i64, uptime: f64, reason: Reason) -> Record {
    let mut kind = EventKind::died(Exit::Exited { code: 1 }, uptime);
    if let EventKind::Died {
        reason: r, stop, ..
    } = &mut kind
    {
        *r = Some(reason);
        if reason == Reason::Stopped {
            *stop = Some(StopBy {
                cause: "command from uid 0".into(),
                step: StopStep::StopAction,
            });
        }
    }
    rec(
        seq,
        at,
        if reason == Reason::Stopped {
            "stop"
        } else {
            "exit"
        },
        kind,
    )
}

#[test]
fn the_streak_ends_at_the_last_good_run_and_the_change_between_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("upkeeper.db")).expect("open");
    // A good hour-long run on config "old", stopped by a command; then a config change and
    // five quick failures on config "new".
    let mut web = vec![
        started(1, BASE, "old"),
        died(2, BASE + 3600 * SEC, 3600.0, Reason::Stopped),
    ];
    let mut t = BASE + 3601 * SEC;
    for i in 0..5u64 {
        web.push(started(3 + 2 * i, t, "new"));
        web.push(died(4 + 2 * i, t + SEC / 10, 0.1, Reason::Failed));
        t += SEC;
    }
    store.insert_events("web", &web).expect("web");
    store
        .insert_config_change(&ConfigChange {
            wall_us: BASE + 3600 * SEC,
            file: "/etc/upkeeper.d/web.conf".into(),
            hash: "abc".into(),
            services: vec!["web".into()],
        })
        .expect("change");
    store
        .insert_config_change(&ConfigChange {
            wall_us: BASE + 3600 * SEC,
            file: "/etc/upkeeper.d/other.conf".into(),
            hash: "def".into(),
            services: vec!["webby".into()],
        })
        .expect("another service's change");
    // db failed first, a second before web's first failure; cache after.
    store
        .insert_events(
            "db",
            &[died(1, BASE + 3600 * SEC + SEC / 2, 2.0, Reason::Signal)],
        )
        .expect("db");
    let why = store
        .why("web", None, &[("db".into(), "database".into())])
        .expect("why");
    let death = why.death.as_ref().expect("a death");
    assert_eq!(death.record.seq, 12);
    assert_eq!(why.streak, 5);
    assert_eq!(why.streak_since_us, Some(BASE + 3601 * SEC + SEC / 10));
    assert_eq!(why.failures_last_hour, 5);
    let good = why.last_good.as_ref().expect("a good run");
    assert_eq!(good.until_us, BASE + 3600 * SEC);
    let good_start = good.started.as_ref().expect("its start");
    assert!(
        matches!(&good_start.record.kind, EventKind::Started { config: Some(c) } if c == "old")
    );
    assert!(matches!(
        &why.started.as_ref().expect("this run").record.kind,
        EventKind::Started { config: Some(c) } if c == "new"
    ));
    let files: Vec<&str> = why
        .config_changes
        .iter()
        .map(|c| c.change.file.as_str())
        .collect();
    assert_eq!(
        files,
        ["/etc/upkeeper.d/web.conf"],
        "only changes naming web"
    );
    // The cascade: web's own earlier failures, then db's before them.
    assert_eq!(
        why.first_failure.as_ref().map(|e| e.service.as_str()),
        Some("db")
    );
    assert_eq!(why.prerequisites.len(), 1);

    // --at: the death before a time, and nothing before the first.
    let earlier = store
        .why("web", Some(BASE + 3602 * SEC), &[])
        .expect("why at");
    assert_eq!(earlier.death.expect("a death").record.seq, 4);
    assert_eq!(earlier.streak, 1);
    let none = store.why("web", Some(BASE), &[]).expect("why before");
    assert!(none.death.is_none());
    assert!(store.why("nope", None, &[]).is_err());
}

#[test]
fn a_long_run_that_crashed_is_good_until_it_died() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("upkeeper.db")).expect("open");
    let web = [
        started(1, BASE, "a"),
        died(2, BASE + 7200 * SEC, 7200.0, Reason::CoreDumped),
    ];
    store.insert_events("web", &web).expect("web");
    let why = store.why("web", None, &[]).expect("why");
    assert_eq!(why.streak, 1);
    assert_eq!(why.last_good.expect("good").until_us, BASE + 7200 * SEC);
}

#[test]
fn every_why_query_uses_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("upkeeper.db")).expect("open");
    for (sql, index) in [
        (
            "SELECT id FROM events WHERE service_id = 1 \
             AND kind IN ('died', 'spawn_failed', 'started', 'stable') \
             AND kind IN ('died', 'spawn_failed') AND wall_us <= 5 ORDER BY wall_us DESC LIMIT 1",
            "events_milestones",
        ),
        (
            "SELECT id FROM events WHERE kind IN ('died', 'spawn_failed') \
             AND wall_us >= 1 AND wall_us <= 5 ORDER BY wall_us LIMIT 50",
            "events_deaths_time",
        ),
        (
            "SELECT id FROM commands WHERE service = 'web' AND wall_us >= 1 AND wall_us <= 5",
            "commands_service_time",
        ),
    ] {
        let plan = store.query_plan(sql).expect("plan").join("; ");
        assert!(plan.contains(index), "{sql}: {plan}");
    }
}

#[test]
fn a_run_whose_end_was_lost_counts_only_when_it_lasted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("upkeeper.db")).expect("open");
    // A good hour; then a start whose end was never stored (its buddy was killed), a second
    // before the next start; then three quick failures.
    let mut web = vec![
        started(1, BASE, "old"),
        died(2, BASE + 3600 * SEC, 3600.0, Reason::Stopped),
        started(3, BASE + 3601 * SEC, "new"),
    ];
    let mut t = BASE + 3602 * SEC;
    for i in 0..3u64 {
        web.push(started(4 + 2 * i, t, "new"));
        web.push(died(5 + 2 * i, t + SEC / 10, 0.1, Reason::Failed));
        t += SEC;
    }
    store.insert_events("web", &web).expect("web");
    let why = store.why("web", None, &[]).expect("why");
    assert_eq!(why.streak, 3);
    let good = why.last_good.as_ref().expect("a good run");
    assert_eq!(
        good.until_us,
        BASE + 3600 * SEC,
        "the hour, not the lost run"
    );

    // The same lost run, lasting an hour before the next start: that is the last good run.
    let mut db = vec![started(1, BASE, "x")];
    let mut t = BASE + 3600 * SEC;
    for i in 0..2u64 {
        db.push(started(2 + 2 * i, t, "x"));
        db.push(died(3 + 2 * i, t + SEC / 10, 0.1, Reason::Failed));
        t += SEC;
    }
    store.insert_events("db", &db).expect("db");
    let why = store.why("db", None, &[]).expect("why");
    assert_eq!(why.streak, 2);
    assert_eq!(
        why.last_good.as_ref().map(|g| g.until_us),
        Some(BASE + 3600 * SEC),
        "until the next start"
    );
}
