//! Health probes, both readiness protocols, the cool-down after giving up and notification
//! hooks, with real processes and the buddy's own records (no controller).

use super::*;
use upk_core::event::{Health, StateName};
use upk_testkit::bin;

#[test]
fn a_service_that_stops_answering_its_probe_becomes_unhealthy_and_is_restarted() {
    let sb = Sandbox::new();
    let ok = sb.file("ok");
    std::fs::write(&ok, "").expect("ok file");
    let extra = format!(
        "HealthCheck: \"test -e {}\", HealthInterval: 0.1, HealthRetries: 3, \
         UserRateLimit: 0, RingbufferSize: 256",
        ok.display()
    );
    let dir = sb.service("api", &sh_service(&extra, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let st = b.wait_status("healthy", |s| s.health == Some(Health::Healthy));
    let first = st.pid.expect("pid");
    std::fs::remove_file(&ok).expect("the probe fails from now on");
    let st = b.wait_status("restarted", |s| {
        s.pid.is_some_and(|p| p != first) && s.state == StateName::Running
    });
    std::fs::write(&ok, "").expect("healthy again");
    b.wait_status("healthy again", |s| s.health == Some(Health::Healthy));
    let recs = b.records();
    let health: Vec<(String, u64)> = of_kind(&recs, "health")
        .iter()
        .map(|r| {
            let h = r["health"].as_str().expect("health").to_owned();
            (h, r["failures"].as_u64().expect("failures"))
        })
        .collect();
    assert_eq!(
        health[..3],
        [
            ("healthy".to_owned(), 0),
            ("unhealthy".to_owned(), 3),
            ("healthy".to_owned(), 0)
        ],
        "{health:?}"
    );
    let unhealthy = &of_kind(&recs, "health")[1];
    assert!(
        unhealthy["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("exited with code 1")),
        "{unhealthy}"
    );
    let stopping = of_kind(&recs, "stopping");
    assert_eq!(stopping[0]["cause"], "unhealthy", "{stopping:?}");
    assert_eq!(of_kind(&recs, "restart_scheduled")[0]["failures"], 1);
    assert_eq!(st.restarts, 1);
    assert!(upk_testkit::is_dead(first));
}

#[test]
fn a_probe_that_hangs_is_killed_at_its_timeout_and_counts_as_failed() {
    let sb = Sandbox::new();
    let extra = "HealthCheck: \"exec sleep 1000\", HealthInterval: 0.1, HealthTimeout: 0.3, \
                 HealthRetries: 1, HealthAction: \"record\"";
    let dir = sb.service("api", &sh_service(extra, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let rec = b.wait_record("health", |r| r["health"] == "unhealthy");
    assert_eq!(rec["detail"], "timed out after 0.3s", "{rec}");
    // Recorded only: the service runs on.
    let st = b.status();
    assert_eq!(st.state, StateName::Running);
    assert!(of_kind(&b.records(), "stopping").is_empty());
}

#[test]
fn readiness_by_notification_fd_and_a_missed_ready_timeout() {
    let sb = Sandbox::new();
    let extra = "Readiness: \"fd:3\", ReadyTimeout: 10";
    let dir = sb.service(
        "db",
        &sh_service(extra, "sleep 0.3; echo >&3; exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let running = b.wait_status("running", |s| s.state == StateName::Running);
    assert!(running.needs_ready);
    let st = b.wait_status("ready", |s| s.state == StateName::Ready);
    let recs = b.records();
    let (started, ready) = (&of_kind(&recs, "started")[0], &of_kind(&recs, "ready")[0]);
    assert_eq!(
        st.since_us, started["wall_us"],
        "uptime counts from the start, not from readiness"
    );
    assert_eq!(ready["via"], "notification fd");
    assert_eq!(
        (&ready["from"], &ready["to"]),
        (&"running".into(), &"ready".into())
    );
    assert!(mono(ready) - mono(started) >= 0.25, "{started} {ready}");

    let dir = sb.service(
        "mute",
        &sh_service("Readiness: \"fd:3\", ReadyTimeout: 0.3", "exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let rec = b.wait_record("ready_timeout", |_| true);
    assert!(rec["after"].as_f64().is_some_and(|a| a >= 0.29), "{rec}");
    let st = b.status();
    assert_eq!((st.state, st.ready_timed_out), (StateName::Running, true));
    assert!(st.serves(), "its dependants may start now");
}

#[test]
fn readiness_by_sd_notify() {
    let sb = Sandbox::new();
    let notify = bin("upk_sd_notify");
    let script = format!("sleep 0.2; {} READY=1; exec sleep 1000", notify.display());
    let dir = sb.service("db", &sh_service("Readiness: \"notify\"", &script));
    let b = sb.buddy(&dir);
    b.wait_status("ready", |s| s.state == StateName::Ready);
    let ready = b.wait_record("ready", |_| true);
    assert_eq!(ready["via"], "sd_notify READY=1");
    let sock = dir.root().join("notify.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_failed_service_is_tried_again_after_its_cool_down() {
    let sb = Sandbox::new();
    let extra = "MaxConsecutiveFailures: 2, UserRateLimit: 0, FailedRetryAfter: 0.5";
    let dir = sb.service("crash", &sh_service(extra, "exit 1"));
    let b = sb.buddy(&dir);
    let st = b.wait_status("failed", |s| s.state == StateName::Failed);
    assert!(st.next_start_us.is_some(), "status says when: {st:?}");
    let recs = wait_count(&b, "gave_up", 2, Duration::from_secs(10));
    let gave_up = of_kind(&recs, "gave_up");
    assert_eq!(gave_up[0]["retry_in"], 0.5);
    let retry = of_kind(&recs, "started")
        .into_iter()
        .find(|r| r["cause"] == "cool-down over")
        .expect("a start after the cool-down");
    let waited = mono(&retry) - mono(&gave_up[0]);
    assert!((0.5..1.5).contains(&waited), "{waited}");
}

#[test]
fn a_hook_gets_the_context_and_a_hanging_hook_delays_nothing() {
    let sb = Sandbox::new();
    let out = sb.file("hook");
    // The hook saves the multi-line UPK_EVENTS, then its whole environment (renamed into
    // place last, so the test finds both once it finds it).
    let script = sb.file("hook.sh");
    upk_testkit::write_script(
        &script,
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$UPK_EVENTS\" > {out}.events\nenv | grep ^UPK_ > {out}.$UPK_EVENT.tmp\nmv {out}.$UPK_EVENT.tmp {out}.$UPK_EVENT\n",
            out = out.display()
        ),
    );
    let hooks = format!(
        "Notify: {{ rec: {{ Run: {:?}, On: [\"gave_up\"] }}, \
                    hang: {{ Run: \"exec sleep 1000\", On: [\"failed\"], Timeout: 0.5 }} }}",
        script.display().to_string()
    );
    let extra = format!("MaxConsecutiveFailures: 4, UserRateLimit: 0.05, {hooks}");
    let dir = sb.service("crash", &sh_service(&extra, "echo boom >&2; exit 3"));
    let b = sb.buddy(&dir);
    b.wait_status("failed", |s| s.state == StateName::Failed);
    let env = wait_until(Duration::from_secs(10), "the gave_up hook's output", || {
        std::fs::read_to_string(format!("{}.gave_up", out.display()))
            .ok()
            .filter(|t| t.contains("UPK_EVENTS"))
            .ok_or_else(|| "not yet".to_owned())
    });
    for line in [
        "UPK_SERVICE=crash",
        "UPK_HOOK=rec",
        "UPK_EVENT=gave_up",
        "UPK_STATE=failed",
        "UPK_EXIT_CODE=3",
        "UPK_FAILURES=4",
        "UPK_STDERR_TAIL=boom",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
    }
    let events = std::fs::read_to_string(format!("{}.events", out.display())).expect("events");
    assert!(events.lines().count() >= 5, "{events}");
    // The decision is in the context: the gave_up record, followed only by what the `failed`
    // hooks of the same death did (here: `hang` skipped, still running).
    let lines: Vec<&str> = events.lines().collect();
    let at = lines
        .iter()
        .rposition(|l| l.ends_with("gave up after 4 consecutive failures (policy)"))
        .unwrap_or_else(|| panic!("gave_up in\n{events}"));
    assert!(
        lines[at + 1..]
            .iter()
            .all(|l| l.contains("hook hang (failed) skipped")),
        "{events}"
    );
    // The hanging hook did not hold up the restarts: four runs 50 ms apart, not 500.
    let recs = wait_count(&b, "hook_run", 2, Duration::from_secs(10));
    let starts: Vec<f64> = of_kind(&recs, "started").iter().map(mono).collect();
    assert_eq!(starts.len(), 4);
    assert!(starts[3] - starts[0] < 0.45, "{starts:?}");
    let skipped = of_kind(&recs, "hook_skipped");
    assert!(skipped.iter().all(|r| r["hook"] == "hang"), "{skipped:?}");
    assert_eq!(skipped.len(), 3, "one run at a time: {skipped:?}");
    let runs = of_kind(&recs, "hook_run");
    let hang = runs.iter().find(|r| r["hook"] == "hang").expect("hang ran");
    assert_eq!(hang["timed_out"], true, "{hang}");
    assert_eq!(hang["exit"]["signal"], 9, "{hang}");
    let rec = runs.iter().find(|r| r["hook"] == "rec").expect("rec ran");
    assert_eq!(rec["exit"]["code"], 0, "{rec}");
}

#[test]
fn a_started_hook_runs_at_every_start_and_only_where_on_names_it() {
    let sb = Sandbox::new();
    let starts = sb.file("starts");
    let events = sb.file("events");
    let hooks = format!(
        "Notify: {{ up: {{ Run: \"echo $UPK_RESTARTS >> {}\", On: [\"started\"] }}, \
                    all: {{ Run: \"echo $UPK_EVENT >> {}\" }} }}",
        starts.display(),
        events.display()
    );
    let extra = format!("UserRateLimit: 0, {hooks}");
    let dir = sb.service("up", &sh_service(&extra, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();
    let first = b.wait_status("running", |s| s.state == StateName::Running);
    wait_until(Duration::from_secs(10), "the started hook", || {
        (read(&starts) == "0\n").then_some(()).ok_or(read(&starts))
    });
    let pid = first.pid.expect("a pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
        .expect("kill");
    wait_until(
        Duration::from_secs(10),
        "the started hook of the restart",
        || {
            (read(&starts) == "0\n1\n")
                .then_some(())
                .ok_or(read(&starts))
        },
    );
    // The death ran the default hook (`failed`); no default hook runs on a start.
    wait_until(Duration::from_secs(10), "the failed hook", || {
        read(&events)
            .contains("failed")
            .then_some(())
            .ok_or(read(&events))
    });
    assert!(!read(&events).contains("started"), "{}", read(&events));
}
