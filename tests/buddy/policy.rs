//! A crash loop against every restart-policy key, timed from the buddy's own records.

use super::*;
use upk_core::event::StateName;
use upk_testkit::Sandbox;

/// Records are stamped a little after the instant the policy computed from (the spawn
/// itself takes time, more on a loaded machine): the tolerance for timing assertions.
const SPAWN_SLACK: f64 = 0.05;

/// Monotonic start times of the `started` records.
fn starts(recs: &[Value]) -> Vec<f64> {
    of_kind(recs, "started").iter().map(mono).collect()
}

fn gaps(t: &[f64]) -> Vec<f64> {
    t.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn max_consecutive_failures_gives_up_until_told_otherwise() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "crash",
        &sh_service("MaxConsecutiveFailures: 3, UserRateLimit: 0.2", "exit 3"),
    );
    let mut first = sb.buddy(&dir);
    let st = first.wait_status("failed", |s| s.state == StateName::Failed);
    assert_eq!(st.failures, 3);
    let recs = first.records();
    let t = starts(&recs);
    assert_eq!(t.len(), 3, "three runs, no fourth: {recs:#?}");
    assert!(
        gaps(&t).iter().all(|&g| g >= 0.2 - SPAWN_SLACK),
        "UserRateLimit respected: {:?}",
        gaps(&t)
    );
    let gave_up = of_kind(&recs, "gave_up");
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0]["to"], "failed");
    assert_eq!(of_kind(&recs, "died")[0]["exit"]["code"], 3);
    // Failed survives the buddy: a successor does not start the service again by itself.
    first.child.kill().expect("SIGKILL the buddy");
    first.child.wait().expect("reap");
    let b = sb.buddy(&dir);
    let st = b.wait_status("failed again", |s| s.buddy_pid == b.pid());
    assert_eq!((st.state, st.failures), (StateName::Failed, 3));
    assert!(of_kind(&b.records(), "started").is_empty());
    // Failed stays failed (no deadline) until a command.
    let r = b.call(serde_json::json!({"type": "start"}));
    assert_eq!(r["type"], "ok", "{r}");
    wait_count(&b, "started", 1, Duration::from_secs(5));
}

#[test]
fn without_a_rate_limit_starts_are_a_second_apart() {
    let sb = Sandbox::new();
    let dir = sb.service("crash", &sh_service("MaxConsecutiveFailures: 3", "exit 1"));
    let b = sb.buddy(&dir);
    b.wait_status("failed", |s| s.state == StateName::Failed);
    let g = gaps(&starts(&b.records()));
    assert_eq!(g.len(), 2);
    assert!(
        g.iter().all(|&g| (1.0 - SPAWN_SLACK..3.0).contains(&g)),
        "{g:?}"
    );
}

#[test]
fn max_restarts_in_a_window_pauses_then_resumes() {
    let sb = Sandbox::new();
    let extra = "UserMaxRestarts: 2, UserRestartWindow: 2, UserRateLimit: 0";
    let dir = sb.service("crash", &sh_service(extra, "exit 1"));
    let b = sb.buddy(&dir);
    let recs = wait_count(&b, "started", 5, Duration::from_secs(15));
    let t = starts(&recs);
    let paused = of_kind(&recs, "restarts_paused");
    assert!(!paused.is_empty(), "a pause was recorded");
    assert_eq!(paused[0]["restarts"], 2);
    // Runs 2 and 3 are the window's two restarts; run 4 waits until run 2 leaves the window.
    assert!(
        t[1] - t[0] < 1.0 && t[2] - t[1] < 1.0,
        "immediate restarts: {:?}",
        gaps(&t)
    );
    assert!(
        t[3] - t[1] >= 2.0 - SPAWN_SLACK,
        "paused for the window: {:?}",
        gaps(&t)
    );
    assert!(t[3] - t[1] < 3.5, "and resumed: {:?}", gaps(&t));
}

#[test]
fn randomized_rate_limit_adds_bounded_jitter() {
    let sb = Sandbox::new();
    let extra = "UserRateLimit: 0.3, RandomizeRateLimit: true, UserRestartWindow: 60";
    let dir = sb.service("crash", &sh_service(extra, "exit 1"));
    let b = sb.buddy(&dir);
    let recs = wait_count(&b, "restart_scheduled", 6, Duration::from_secs(15));
    let delays: Vec<f64> = of_kind(&recs, "restart_scheduled")
        .iter()
        .map(|r| r["delay"].as_f64().expect("delay"))
        .collect();
    assert!(
        delays.iter().all(|d| (0.3 - 1e-3..0.45).contains(d)),
        "{delays:?}"
    );
    assert!(
        delays.iter().any(|&d| d > 0.301),
        "jitter is applied: {delays:?}"
    );
    let t = starts(&recs);
    assert!(
        gaps(&t).iter().all(|&g| g >= 0.3 - SPAWN_SLACK),
        "{:?}",
        gaps(&t)
    );
}

#[test]
fn a_run_that_stays_up_resets_the_failure_count() {
    let sb = Sandbox::new();
    let extra = "MaxConsecutiveFailures: 2, UserRestartWindow: 0.5, UserRateLimit: 0";
    let dir = sb.service("flaky", &sh_service(extra, "sleep 0.7; exit 1"));
    let b = sb.buddy(&dir);
    let recs = wait_count(&b, "died", 3, Duration::from_secs(10));
    assert!(
        of_kind(&recs, "gave_up").is_empty(),
        "each run outlived the window"
    );
    let failures: Vec<u64> = of_kind(&recs, "restart_scheduled")
        .iter()
        .map(|r| r["failures"].as_u64().expect("n"))
        .collect();
    assert!(failures.iter().all(|&f| f == 1), "{failures:?}");
}
