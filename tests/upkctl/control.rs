//! Control commands: what they print, what they do to the service, `--all`, `--wait` and
//! their exit codes.

use super::*;

const SERVICES: &str = r#"{
    "web": { ExecStart: "sleep 1000", InitialState: "running",
             CustomActions: { "ping": "echo pong", "bad": "exit 3" } },
    "db": { ExecStart: "sleep 1000", InitialState: "running" },
    "job": { ExecStart: "true" },
}"#;

#[test]
fn stop_start_restart_wait_for_the_new_state_one_or_all() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    let before = w.running("web");

    let out = w.upkctl(&["stop", "web", "--wait"]);
    out.expect(code::OK);
    assert_eq!(out.stdout, "web: stopped (want down)\n");
    assert_eq!(w.status("web").map(|s| s.state), Some(StateName::Stopped));

    let out = w.upkctl(&["start", "web", "--wait"]);
    out.expect(code::OK);
    let now = w.status("web").expect("status");
    assert_eq!(now.state, StateName::Running);
    let pid = now.pid.expect("pid");
    assert_eq!(out.stdout, format!("web: running (want up, pid {pid})\n"));
    assert_ne!(Some(pid), before.pid);

    // Starting what runs says so and changes nothing.
    let out = w.upkctl(&["start", "web"]);
    out.expect(code::OK);
    assert!(out.stdout.contains("already running"), "{out:?}");
    assert_eq!(w.running("web").pid, Some(pid));

    // A restart waits for the new run, and --json says how each service ended up.
    let out = w.upkctl(&["restart", "web", "--wait", "--json"]);
    out.expect(code::OK);
    let v = out.json();
    assert_eq!(v[0]["service"], "web");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["code"], 0);
    assert_eq!(v[0]["status"]["state"], "running");
    let new_pid = v[0]["status"]["pid"].as_i64().expect("a pid") as i32;
    assert_ne!(new_pid, pid);
    assert_eq!(
        w.running("web").pid,
        Some(new_pid),
        "the status file agrees"
    );

    // --all: every configured service, in id order.
    let out = w.upkctl(&["stop", "--all", "--wait"]);
    out.expect(code::OK);
    assert_eq!(
        out.lines(),
        [
            "db: stopped (want down)",
            "job: stopped (want down)",
            "web: stopped (want down)"
        ]
    );
    for id in ["db", "job", "web"] {
        assert_eq!(
            w.status(id).map(|s| s.state),
            Some(StateName::Stopped),
            "{id}"
        );
    }
    let out = w.upkctl(&["start", "db", "web", "--wait", "--json"]);
    out.expect(code::OK);
    let v = out.json();
    let states: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["status"]["state"].as_str())
        .collect();
    assert_eq!(states, ["running", "running"]);

    // Not found and usage errors: one sentence, their own codes, nothing done.
    w.upkctl(&["stop", "nope"])
        .fails(code::NOT_FOUND, "nope: there is no service \"nope\"");
    w.upkctl(&["stop"]).expect(code::USAGE);
    w.upkctl(&["stop", "web", "--all"]).expect(code::USAGE);
    w.running("web");

    // Several services, one missing: the others are done, the exit code says one failed.
    let out = w.upkctl(&["restart", "nope", "db", "--wait"]);
    out.fails(code::NOT_FOUND, "nope: there is no service");
    assert!(out.stdout.starts_with("db: running"), "{out:?}");
}

#[test]
fn reload_signal_action_and_once_say_how_it_went() {
    let mut w = World::offline(&[]);
    let usr1 = w.file("usr1");
    let trap = script(
        &w,
        "trap.sh",
        &format!(
            "trap 'echo usr1 >> {}' USR1\nwhile :; do sleep 0.05; done\n",
            usr1.display()
        ),
    );
    w.add(
        "app.conf",
        &SERVICES.replace(
            "\"job\"",
            &format!(
                "\"trap\": {{ ExecStart: {}, InitialState: \"running\" }},\n    \"job\"",
                quoted(&trap)
            ),
        ),
    );
    w.start(&["web", "trap"]);

    let out = w.upkctl(&["action", "ping", "web"]);
    out.expect(code::OK);
    assert_eq!(out.stdout, "web: ping: exited with code 0\n");
    w.upkctl(&["action", "bad", "web"])
        .fails(code::FAILED, "web: bad: exited with code 3");
    w.upkctl(&["action", "nope", "web"]).fails(
        code::NOT_FOUND,
        "web has no action \"nope\" (it has: ping, bad)",
    );
    let v = w.upkctl(&["action", "1", "web", "--json"]).json();
    assert_eq!(v[0]["exit"]["code"], 0, "actions by number too: {v}");

    let out = w.upkctl(&["signal", "USR1", "trap"]);
    out.expect(code::OK);
    assert!(out.stdout.starts_with("trap: running"), "{out:?}");
    wait_until(Duration::from_secs(10), "the trap to run", || {
        std::fs::read_to_string(&usr1).map_err(|e| e.to_string())
    });
    w.upkctl(&["signal", "BOGUS", "trap"])
        .fails(code::USAGE, "\"BOGUS\" is not a signal name");
    w.upkctl(&["signal", "HUP", "job"])
        .fails(code::FAILED, "job: cannot signal");

    // The default reload sends SIGHUP, which ends `sleep`: the buddy restarts it. The reply
    // says what was sent, since a program that does not handle it dies of it.
    let pid = w.running("web").pid;
    let out = w.upkctl(&["reload", "web"]);
    out.expect(code::OK);
    assert_eq!(
        out.stdout,
        "web: reload: sent SIGHUP to the service (its reload script only signals it)\n"
    );
    wait_until(Duration::from_secs(10), "web running again", || {
        match w.status("web") {
            Some(s) if s.state == StateName::Running && s.pid != pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // `once` of a job that ends at once: --wait sees it run (or already ended), and it is not
    // restarted.
    let out = w.upkctl(&["once", "job", "--wait"]);
    out.expect(code::OK);
    assert!(
        out.stdout == "job: stopped (want down) (ran and ended)\n"
            || out.stdout.starts_with("job: running (want once"),
        "{out:?}"
    );
    let job = w.wait_state("job", StateName::Stopped);
    assert_eq!(
        job.last_exit,
        Some(upk_core::event::Exit::Exited { code: 0 })
    );
    assert_eq!(job.restarts, 0, "not restarted");
}

#[test]
fn wait_says_when_the_state_is_not_reached() {
    let mut w = World::offline(&[]);
    let stubborn = script(
        &w,
        "stubborn.sh",
        "trap '' TERM\nwhile :; do sleep 0.05; done\n",
    );
    w.add(
        "app.conf",
        &format!(
            r##"{{
    "stubborn": {{ ExecStart: {}, InitialState: "running", KillTimeout: 6 }},
    "doomed": {{ ExecStart: "sleep 1000", SetUID: 4000000, MaxConsecutiveFailures: 1 }},
    "crashy": {{ StartScript: "#!/bin/sh\necho 'port 80 in use' >&2\nexit 3\n", Readiness: "fd:3", MaxConsecutiveFailures: 1 }},
}}"##,
            quoted(&stubborn)
        ),
    );
    w.start(&["stubborn"]);

    // It ignores SIGTERM, so it is still stopping when --timeout runs out.
    let t = Instant::now();
    let out = w.upkctl(&["stop", "stubborn", "--wait", "--timeout", "0.5"]);
    out.fails(code::TIMED_OUT, "stubborn: still stopping");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The SIGKILL comes at KillTimeout; a wait long enough sees it stopped.
    let out = w.upkctl(&["stop", "stubborn", "--wait", "--timeout", "20"]);
    out.expect(code::OK);
    assert_eq!(out.stdout, "stubborn: stopped (want down)\n");

    // A service that cannot start: --wait reports the failure instead of waiting it out.
    let out = w.upkctl(&["start", "doomed", "--wait"]);
    out.fails(code::FAILED, "doomed: it failed");
    assert_eq!(w.status("doomed").map(|s| s.state), Some(StateName::Failed));
    // A service that dies (before it says it is ready, so that --wait cannot take its
    // moment of running for a start): the failure says how, and what it wrote last.
    let out = w.upkctl(&["start", "crashy", "--wait"]);
    out.expect(code::FAILED);
    assert!(
        out.stderr.contains("its last death: exited with code 3")
            && out.stderr.contains("    | port 80 in use"),
        "{out:?}"
    );
    // Without --wait, the start itself was carried out: exit 0, the state as it is.
    let out = w.upkctl(&["start", "doomed"]);
    out.expect(code::OK);
    assert!(out.stdout.starts_with("doomed: "), "{out:?}");
}

#[test]
fn unconfigure_stops_the_service_and_forgets_it() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    let db = w.running("db");
    let out = w.upkctl(&["unconfigure", "db", "--wait"]);
    out.expect(code::OK);
    // The buddy shut down with the service stopped (its want is kept for a later adoption).
    assert!(
        out.stdout.starts_with("db: stopped (want ") && out.stdout.ends_with("), buddy exited\n"),
        "{out:?}"
    );
    assert!(upk_testkit::is_dead(db.buddy_pid));
    assert!(upk_testkit::is_dead(db.pid.expect("pid")));
    let ids: Vec<String> = w
        .upkctl(&["list", "--json"])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["service"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["job", "web"]);
    w.upkctl(&["status", "db"])
        .fails(code::NOT_FOUND, "no service \"db\"");
    w.upkctl(&["unconfigure", "db"])
        .fails(code::NOT_FOUND, "db: there is no service");
}

/// `--no-block` returns once the command is sent to the buddy: an action still running when
/// upkctl has returned, whose outcome reaches the audit all the same.
#[test]
fn no_block_returns_before_the_outcome_which_is_audited() {
    let mut w = World::offline(&[]);
    let gate = w.file("gate");
    let ended = w.file("ended");
    // The action ends only when the test opens the gate, so it cannot have ended before
    // upkctl returned, however slow the machine.
    let slow = format!(
        "while [ ! -e {gate} ]; do sleep 0.02; done; touch {ended}; exit 3",
        gate = gate.display(),
        ended = ended.display()
    );
    w.add(
        "app.conf",
        &format!(
            r#"{{ "web": {{ ExecStart: "sleep 1000", InitialState: "running",
                          CustomActions: {{ "slow": {slow:?} }} }} }}"#
        ),
    );
    w.start(&["web"]);

    let out = w.upkctl(&["action", "slow", "web", "--no-block"]);
    out.expect(code::OK);
    assert_eq!(
        out.stdout,
        "web: sent to its buddy (--no-block: the outcome is in `upkctl status` and the audit)\n"
    );
    assert!(!ended.exists(), "the action was not waited for");
    std::fs::write(&gate, "").expect("open the gate");
    let line = wait_until(Duration::from_secs(10), "the outcome audited", || {
        let out = w.upkctl(&["audit"]);
        let found = out
            .lines()
            .into_iter()
            .find(|l| l.contains("slow --no-block web"));
        match found {
            Some(l) if l.contains("exited") => Ok(l.to_owned()),
            _ => Err(out.stdout.clone()),
        }
    });
    assert!(
        line.contains("action slow --no-block web: failed: slow: exited with code 3"),
        "{line}"
    );
    assert!(ended.exists());

    // A stop without blocking takes effect all the same.
    w.upkctl(&["stop", "web", "--no-block"]).expect(code::OK);
    w.wait_state("web", StateName::Stopped);
    // What it cannot send is still an error: an unknown service, an unknown action.
    w.upkctl(&["start", "nope", "--no-block"])
        .fails(code::NOT_FOUND, "nope");
    w.upkctl(&["action", "nope", "web", "--no-block"])
        .fails(code::NOT_FOUND, "web has no action \"nope\"");
    let both = w.upkctl(&["start", "web", "--no-block", "--wait"]);
    both.expect(code::USAGE);
    assert!(
        both.stderr
            .contains("'--no-block' cannot be used with '--wait'"),
        "{both:?}"
    );
}
