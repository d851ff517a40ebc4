//! Readiness gates start-up order, backoff follows its curve, and health changes reach the
//! audit history: measured from what the controller stored.

use super::*;
use libupkeeper::HistoryFilter;
use upk_core::event::EventKind;
use upk_testkit::Controller;

/// Stored events of `id` of one kind, waiting until there are at least `n`.
fn wait_stored(db: &Path, id: &str, kind: &str, n: usize) -> Vec<upk_core::history::EventRow> {
    wait_until(
        Duration::from_secs(20),
        &format!("{n} {kind} events of {id} stored"),
        || {
            let rows: Vec<_> = stored(db, Some(id))
                .into_iter()
                .filter(|e| kind_name(&e.record.kind) == kind)
                .collect();
            if rows.len() >= n {
                Ok(rows)
            } else {
                Err(format!("{} so far", rows.len()))
            }
        },
    )
}

fn kind_name(k: &EventKind) -> String {
    serde_json::to_value(k).expect("kind")["kind"]
        .as_str()
        .expect("kind")
        .to_owned()
}

#[test]
fn dependants_start_only_once_their_prerequisite_is_ready_by_either_protocol() {
    let sb = Sandbox::new();
    let ctl = seed_controller_file(&sb);
    let notify = upk_testkit::bin("upk_sd_notify");
    service_file(
        &sb,
        "app.conf",
        &format!(
            r##"{{
            "db": {{ StartScript: "#!/bin/sh\nsleep 0.7; echo >&3; exec sleep 1000\n",
                     Readiness: "fd:3", InitialState: "running" }},
            "web": {{ ExecStart: "sleep 1000", Prerequisites: ["db"], InitialState: "running" }},
            "cache": {{ StartScript: "#!/bin/sh\nsleep 0.7; {notify} READY=1; exec sleep 1000\n",
                        Readiness: "notify", InitialState: "running" }},
            "api": {{ ExecStart: "sleep 1000", Prerequisites: ["cache"], InitialState: "running" }},
            "mute": {{ ExecStart: "sleep 1000", Readiness: "fd:3", ReadyTimeout: 0.5,
                       InitialState: "running" }},
            "late": {{ ExecStart: "sleep 1000", Prerequisites: ["mute"], InitialState: "running" }},
        }}"##,
            notify = notify.display()
        ),
    );
    let _c = Controller::start(&sb, &ctl);
    let db = sb.path().join("state/upkeeper.db");
    for (prereq, dependant) in [("db", "web"), ("cache", "api")] {
        let ready = wait_stored(&db, prereq, "ready", 1)[0].record.wall_us;
        let started = wait_stored(&db, dependant, "started", 1)[0].record.wall_us;
        let prereq_started = wait_stored(&db, prereq, "started", 1)[0].record.wall_us;
        assert!(ready - prereq_started >= 600_000, "{prereq} took its time");
        assert!(
            started > ready,
            "{dependant} started at {started}, before {prereq} was ready at {ready}"
        );
        // Its buddy was not even spawned before: the first record of the dependant is later.
        let first = stored(&db, Some(dependant))[0].record.wall_us;
        assert!(
            first > ready,
            "{dependant}'s buddy came after {prereq} was ready"
        );
    }
    // A prerequisite that never says it is ready holds its dependants for ReadyTimeout only.
    let timeout = wait_stored(&db, "mute", "ready_timeout", 1)[0]
        .record
        .wall_us;
    let late = wait_stored(&db, "late", "started", 1)[0].record.wall_us;
    assert!(
        late > timeout,
        "late started after mute's timeout was recorded"
    );
}

#[test]
fn restart_delays_follow_the_backoff_curve_and_reset_after_a_stable_run() {
    let sb = Sandbox::new();
    let ctl = seed_controller_file(&sb);
    let count = sb.file("runs");
    // Runs 1-4 and 6-7 crash at once; run 5 stays up past the 1 s stable uptime.
    let script = format!(
        "#!/bin/sh\nn=$(($(cat {c} 2>/dev/null || echo 0) + 1)); echo $n > {c}\n\
         [ $n -eq 5 ] && sleep 1.3\n[ $n -ge 8 ] && exec sleep 1000\nexit 1\n",
        c = count.display()
    );
    service_file(
        &sb,
        "crash.conf",
        &format!(
            r#"{{ "crash": {{ StartScript: {script:?}, InitialState: "running", UserRateLimit: 0.1,
                   RestartBackoff: 2, RestartDelayMax: 0.4, UserRestartWindow: 1 }} }}"#
        ),
    );
    let mut c = Controller::start(&sb, &ctl);
    let db = sb.path().join("state/upkeeper.db");
    let starts = wait_stored(&db, "crash", "started", 8);
    let died = wait_stored(&db, "crash", "died", 7);
    // From each death to the next start, in the stored monotonic times.
    let gaps: Vec<f64> = died
        .iter()
        .zip(&starts[1..])
        .map(|(d, s)| (s.record.mono_us - d.record.mono_us) as f64 / 1e6)
        .collect();
    let expected = [0.1, 0.2, 0.4, 0.4, 0.1, 0.2, 0.4];
    for (i, (gap, want)) in gaps.iter().zip(expected).enumerate() {
        assert!(
            (want - 0.005..want + 0.15).contains(gap),
            "restart {}: waited {gap:.3}s, expected {want}s; all: {gaps:.3?}",
            i + 1
        );
    }
    let stable = wait_stored(&db, "crash", "stable", 1);
    assert!(
        matches!(stable[0].record.kind, EventKind::Stable { failures: 4 }),
        "{:?}",
        stable[0].record
    );
    // The same through the client: the delays the buddy announced.
    let mut client = c.client();
    let scheduled = client
        .history(&HistoryFilter {
            service: Some("crash".into()),
            kinds: vec!["restart_scheduled".into()],
            ..Default::default()
        })
        .expect("history");
    let delays: Vec<f64> = scheduled
        .iter()
        .map(|e| match e.record.kind {
            EventKind::RestartScheduled { delay, .. } => (delay * 100.0).round() / 100.0,
            _ => unreachable!("filtered by kind"),
        })
        .collect();
    assert_eq!(delays[..7], expected, "{delays:?}");
    c.kill();
}

#[test]
fn every_health_change_is_in_the_history() {
    let sb = Sandbox::new();
    let ctl = seed_controller_file(&sb);
    let ok = sb.file("ok");
    std::fs::write(&ok, "").expect("ok");
    service_file(
        &sb,
        "api.conf",
        &format!(
            r#"{{ "api": {{ ExecStart: "sleep 1000", InitialState: "running", UserRateLimit: 0,
                   HealthCheck: "test -e {}", HealthInterval: 0.1, HealthRetries: 2 }} }}"#,
            ok.display()
        ),
    );
    let c = Controller::start(&sb, &ctl);
    let db = sb.path().join("state/upkeeper.db");
    wait_stored(&db, "api", "health", 1);
    std::fs::remove_file(&ok).expect("break it");
    wait_stored(&db, "api", "health", 2);
    std::fs::write(&ok, "").expect("mend it");
    wait_stored(&db, "api", "health", 3);
    let rows = c
        .client()
        .history(&HistoryFilter {
            service: Some("api".into()),
            ..Default::default()
        })
        .expect("history");
    let story: Vec<String> = rows
        .iter()
        .filter_map(|e| match &e.record.kind {
            EventKind::Health { health, .. } => Some(health.as_str().to_owned()),
            EventKind::Started { .. } => Some("started".into()),
            EventKind::Stopping => Some(format!("stopping ({})", e.record.cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        story[..6],
        [
            "started",
            "healthy",
            "unhealthy",
            "stopping (unhealthy)",
            "started",
            "healthy"
        ],
        "{story:?}"
    );
    let listed = c.client().status(&["api"]).expect("status");
    let st = listed[0].status.as_ref().expect("status file");
    assert_eq!(st.health, Some(upk_core::event::Health::Healthy));
}
