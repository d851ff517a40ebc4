//! The controller killed and restarted: services untouched, no duplicates, the backlog stored
//! exactly once and in sequence, desired state reconciled, a second controller refused.

use super::*;
use upk_core::event::{EventKind, StateName};
use upk_core::history::EventRow;
use upk_testkit::Controller;

const CRASHERS: &str = r##"{
    "storm": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running", UserRateLimit: 0.02,
               MaxConsecutiveFailures: -1, RingbufferSize: 4096 },
    "tiny": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running", UserRateLimit: 0.02,
              MaxConsecutiveFailures: -1, RingbufferSize: 8, ReconnectRetries: 0 },
    "steady": { ExecStart: "sleep 1000", InitialState: "running" },
}"##;

/// Checks that `rows` (one service, in row order) are in sequence, each seq once, and that
/// every gap is a `lost` record counting it; returns the last seq and the records lost.
pub fn contiguous(rows: &[EventRow]) -> Result<(u64, u64), String> {
    let (mut next, mut lost) = (1, 0);
    for r in rows {
        let covers = match &r.record.kind {
            EventKind::Lost { count, .. } => *count,
            _ => 1,
        };
        if r.record.seq + 1 != next + covers {
            return Err(format!(
                "seq {} where {next}+{covers}-1 was due",
                r.record.seq
            ));
        }
        if covers > 1 || matches!(r.record.kind, EventKind::Lost { .. }) {
            lost += covers;
        }
        next = r.record.seq + 1;
    }
    Ok((next - 1, lost))
}

#[test]
fn kill_9_of_the_controller_during_a_crash_loop_loses_nothing_within_ring_capacity() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "crash.conf", CRASHERS);
    let db = sb.path().join("state/upkeeper.db");
    let mut c = Controller::start(&sb, &ctl);
    let steady = running(&sb, "steady").pid;
    wait_until(Duration::from_secs(10), "the storm stored", || {
        let n = stored(&db, Some("storm")).len();
        if n >= 30 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    });
    c.kill();

    // The storm goes on without a controller: the buddies keep their records.
    let seq = |id: &str| status(&sb, id).map_or(0, |s| s.seq);
    let (storm_then, tiny_then) = (seq("storm"), seq("tiny"));
    wait_until(
        Duration::from_secs(10),
        "records piling up unacknowledged",
        || {
            let (s, t) = (seq("storm"), seq("tiny"));
            if s >= storm_then + 60 && t >= tiny_then + 30 {
                Ok(())
            } else {
                Err(format!("storm {s} tiny {t}"))
            }
        },
    );
    let c = Controller::start(&sb, &ctl);
    let (storm_now, tiny_now) = (seq("storm"), seq("tiny"));
    for (id, at_least) in [("storm", storm_now), ("tiny", tiny_now)] {
        wait_until(
            Duration::from_secs(15),
            &format!("{id}'s backlog stored"),
            || {
                let rows = stored(&db, Some(id));
                let (last, _) = contiguous(&rows)?;
                if last >= at_least {
                    Ok(())
                } else {
                    Err(format!("stored up to {last}"))
                }
            },
        );
    }
    drop(c);
    let storm = stored(&db, Some("storm"));
    let tiny = stored(&db, Some("tiny"));
    let (_, storm_lost) = contiguous(&storm).expect("storm in sequence");
    let (_, tiny_lost) = contiguous(&tiny).expect("tiny in sequence");
    assert_eq!(storm_lost, 0, "a 4096-record ring held the whole outage");
    assert!(
        tiny_lost > 0,
        "an 8-record ring overflowed, and said how much it lost"
    );
    assert!(tiny.iter().any(
        |r| matches!(&r.record.kind, EventKind::Lost { reason, .. } if reason.contains("overflow"))
    ));

    // Services were never stopped, and nothing runs twice.
    assert_eq!(running(&sb, "steady").pid, steady);
    assert_eq!(sb.processes("sleep 1000"), [steady.expect("pid")]);
    assert_eq!(sb.buddies().len(), 3, "one buddy per service");
    let adopted = stored(&db, Some("steady"));
    assert_eq!(
        adopted
            .iter()
            .filter(|r| matches!(r.record.kind, EventKind::Started { .. }))
            .count(),
        1
    );
}

#[test]
fn desired_state_is_reconciled_after_a_controller_restart() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "svc.conf",
        r#"{
        "follow":  { ExecStart: "sleep 1000", InitialState: "running" },
        "lazy":    { ExecStart: "sleep 1000", InitialState: "running", PreferBuddyStateForStopped: true },
        "keep":    { ExecStart: "sleep 1000", InitialState: "stopped" },
        "strict":  { ExecStart: "sleep 1000", InitialState: "stopped", PreferBuddyStateForRunning: false },
        "boot":    { ExecStart: "sleep 1000", InitialState: "running" },
        "boot2":   { ExecStart: "sleep 1000", InitialState: "stopped" },
    }"#,
    );
    let mut c = Controller::start(&sb, &ctl);
    for id in ["follow", "lazy", "boot"] {
        running(&sb, id);
    }
    let mut client = c.client();
    client.stop("boot").expect("stop boot");
    client.start("boot2").expect("start boot2");
    running(&sb, "boot2");
    let dir = |id: &str| upk_core::rundir::RunDir::new(sb.run_path().join(id));
    wait_until(Duration::from_secs(10), "every buddy linked", || {
        let l = client.list().map_err(|e| e.to_string())?;
        if l.iter().all(|s| s.linked) {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });
    c.kill();

    // Behind the controller's back: operators talk to the buddies directly.
    let buddy = |id: &str, what: &str| {
        let reply =
            upk_testkit::Client::connect(&dir(id).socket()).call(serde_json::json!({"type": what}));
        assert_eq!(reply["type"], "ok", "{id} {what}: {reply}");
    };
    buddy("follow", "stop");
    buddy("lazy", "stop");
    buddy("keep", "start");
    buddy("strict", "start");
    // A "reboot" for boot and boot2: buddies and run directories gone, the store remains.
    for id in ["boot", "boot2"] {
        let st = status(&sb, id).expect("status");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(st.buddy_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some(pid) = st.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_until(Duration::from_secs(5), "the buddy gone", || {
            if upk_testkit::is_dead(st.buddy_pid) {
                Ok(())
            } else {
                Err("alive".into())
            }
        });
        std::fs::remove_dir_all(sb.run_path().join(id)).expect("wipe the run directory");
    }

    let c = Controller::start(&sb, &ctl);
    let want = |id: &str, state: StateName| {
        wait_until(
            Duration::from_secs(10),
            &format!("{id} {state:?}"),
            || match status(&sb, id) {
                Some(s) if s.state == state => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    };
    want("follow", StateName::Running); // the store wanted it up, and it is preferred
    want("keep", StateName::Running); // a running buddy is preferred by default
    want("strict", StateName::Stopped); // PreferBuddyStateForRunning: false
    want("boot2", StateName::Running); // the store's "up" beats InitialState "stopped"
    want("boot", StateName::Stopped); // and its "down" beats InitialState "running"
    want("lazy", StateName::Stopped); // PreferBuddyStateForStopped: true
    c.said("lazy: the store wants it up, its buddy has it down; following the buddy");

    // A second controller on the same state exits at once and says why.
    let out = std::process::Command::new(upk_testkit::bin("upkeeper"))
        .args(["--config", ctl.to_str().expect("utf8"), "run"])
        .env(upk_testkit::MARKER, sb.path())
        .output()
        .expect("a second controller");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "a permanent failure");
    assert!(
        said.contains(&format!(
            "another controller (pid {}) is running",
            c.child.id()
        )),
        "{said}"
    );
    assert_eq!(c.client().list().expect("the first still serves").len(), 6);
}
