//! The seed's sample controller file with three services and a cycle: start-up order, and the
//! client protocol end to end through libupkeeper.

use super::*;
use libupkeeper::{Error, ErrorCode, HistoryFilter, Outcome};
use upk_core::event::StateName;
use upk_testkit::Controller;

const SERVICES: &str = r##"{
    // The database: everyone who needs "database" waits for it.
    "db": { ExecStart: "sleep 1000", Provides: ["database"], StartPriority: 5, InitialState: "running" },
    "web": { ExecStart: "sleep 1000", Prerequisites: ["database"], InitialState: "running",
             CustomActions: { "ping": "#!/bin/sh\necho pong\n" } },
    "cron": { ExecStart: "sleep 1000", StartPriority: -1, InitialState: "running" },
}"##;

const CYCLE: &str = r#"{
    "a": { ExecStart: "sleep 1000", Prerequisites: ["b"], InitialState: "running" },
    "b": { ExecStart: "sleep 1000", Prerequisites: ["a"], InitialState: "running" },
}"#;

fn started_at(db: &Path, id: &str) -> i64 {
    wait_until(
        Duration::from_secs(10),
        &format!("{id}'s start stored"),
        || {
            stored(db, Some(id))
                .iter()
                .find(|e| matches!(e.record.kind, upk_core::event::EventKind::Started { .. }))
                .map(|e| e.record.wall_us)
                .ok_or_else(|| "not yet".to_owned())
        },
    )
}

#[test]
fn the_seed_sample_starts_services_in_order_and_answers_clients() {
    let sb = Sandbox::new();
    let ctl = seed_controller_file(&sb);
    service_file(&sb, "app.conf", SERVICES);
    service_file(&sb, "cycle.conf", CYCLE);
    let c = Controller::start(&sb, &ctl);
    c.said("not starting a: prerequisites form a cycle");
    let db = sb.path().join("state/upkeeper.db");

    // web waited for the database to run; the cycle did not start.
    for id in ["cron", "db", "web"] {
        running(&sb, id);
    }
    let (db_started, web_started) = (started_at(&db, "db"), started_at(&db, "web"));
    assert!(
        db_started < web_started,
        "db {db_started} before web {web_started}"
    );
    let web_buddy = stored(&db, Some("web"))[0].record.wall_us;
    assert!(
        db_started < web_buddy,
        "web's buddy started only once db ran"
    );
    assert!(!sb.run_path().join("a").exists() && !sb.run_path().join("b").exists());

    let mut client = c.client();
    assert_eq!(client.access(), libupkeeper::Access::Control);
    let list: Vec<String> = client
        .list()
        .expect("list")
        .into_iter()
        .map(|s| s.service)
        .collect();
    assert_eq!(list, ["cron", "db", "web"]);

    // A control request is answered with the buddy's answer.
    let before = running(&sb, "web").pid;
    match client.restart("web").expect("restart") {
        Outcome::Done {
            service, status, ..
        } => {
            assert_eq!(service, "web");
            let st = status.expect("status");
            assert!(
                matches!(st.state, StateName::Stopping | StateName::Running),
                "{st:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    wait_until(Duration::from_secs(10), "web restarted", || {
        match status(&sb, "web") {
            Some(s) if s.state == StateName::Running && s.pid != before => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    match client.action("web", "ping").expect("action") {
        Outcome::ActionDone { action, exit, .. } => {
            assert_eq!(action, "ping");
            assert_eq!(exit, libupkeeper::Exit::Exited { code: 0 });
        }
        other => panic!("{other:?}"),
    }

    // Unknown service, unknown action: an error at once, with the right code.
    let t = std::time::Instant::now();
    let e = client.stop("nope").expect_err("no such service");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = client.action("web", "explode").expect_err("no such action");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(
        e.to_string().contains("ping"),
        "names the actions it has: {e}"
    );
    let e = client
        .history(&HistoryFilter {
            service: Some("nope".into()),
            ..HistoryFilter::default()
        })
        .expect_err("no history for an unknown service");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let e = client.stats(&["nope"], None, None).expect_err("no stats");
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let e = client.signal("web", libupkeeper::SignalSpec::Name("NOSUCH".into()), false);
    assert!(
        matches!(
            e,
            Err(Error::Controller {
                code: ErrorCode::Failed,
                ..
            })
        ),
        "{e:?}"
    );

    // The restart is in the history with its cause, and in the audit with its caller.
    let stopped = wait_until(Duration::from_secs(10), "the restart's stop stored", || {
        client
            .history(&HistoryFilter {
                service: Some("web".into()),
                kinds: vec!["stopping".into()],
                ..HistoryFilter::default()
            })
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| "none yet".to_owned())
    });
    assert!(
        stopped.record.cause.contains("uid 0"),
        "{:?}",
        stopped.record.cause
    );
    let me = std::process::id() as i32;
    // Commands are audited in the store's next transaction: wait for the last of them.
    let (audit, requests) = wait_until(Duration::from_secs(10), "five commands audited", || {
        let audit = client
            .audit(&libupkeeper::AuditQuery::default())
            .map_err(|e| e.to_string())?;
        let requests: Vec<(String, bool)> = audit
            .iter()
            .filter(|c| c.entry.pid == me)
            .map(|c| {
                (
                    c.entry.request["type"].as_str().unwrap_or("").to_owned(),
                    c.entry.ok,
                )
            })
            .collect();
        if requests.len() >= 5 {
            Ok((audit, requests))
        } else {
            Err(format!("{requests:?}"))
        }
    });
    assert_eq!(
        requests,
        [
            ("restart".to_owned(), true),
            ("action".to_owned(), true),
            ("stop".to_owned(), false),
            ("action".to_owned(), false),
            ("signal".to_owned(), false),
        ]
    );
    assert!(audit
        .iter()
        .all(|c| c.entry.uid == 0 && !c.entry.cmdline.is_empty()));

    let stats = client.stats(&["web"], None, None).expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].state.as_deref(), Some("running"));

    // A subscriber that reconnects with its cursor misses nothing.
    let mut sub = c.client().subscribe(&["cron"], None).expect("subscribe");
    sub.set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    client.stop("cron").expect("stop cron");
    let seen = loop {
        let e = sub.next_event().expect("an event");
        assert_eq!(e.service, "cron");
        if e.record.to == StateName::Stopped {
            break e.id;
        }
    };
    assert_eq!(sub.cursor(), seen);
    drop(sub);
    client.start("cron").expect("start cron");
    running(&sb, "cron");
    let missed: Vec<i64> = wait_until(Duration::from_secs(10), "cron's start stored", || {
        let rows = client
            .history(&HistoryFilter {
                service: Some("cron".into()),
                after_id: Some(seen),
                ..HistoryFilter::default()
            })
            .map_err(|e| e.to_string())?;
        if rows.iter().any(|r| r.record.to == StateName::Running) {
            Ok(rows.iter().map(|r| r.id).collect())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    let mut sub = c
        .client()
        .subscribe(&["cron"], Some(seen))
        .expect("resubscribe");
    sub.set_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let replayed: Vec<i64> = (0..missed.len())
        .map(|_| sub.next_event().expect("replayed").id)
        .collect();
    assert_eq!(
        replayed, missed,
        "the events missed, once each and in order"
    );
}
