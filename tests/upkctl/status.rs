//! `status` and `list`, from the controller and from the status files when it is down, and
//! every other command with the controller down or refusing.

use super::*;

const SERVICES: &str = r#"{
    "web": { ExecStart: "sleep 1000", InitialState: "running" },
    "worker": { ExecStart: "sleep 1000", InitialState: "running" },
    "idle": { ExecStart: "sleep 1000" },
}"#;

#[test]
fn status_and_list_show_every_service_in_text_and_json() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "worker"]);
    let web = w.running("web");

    let out = w.upkctl(&["status"]);
    out.expect(code::OK);
    assert!(out.stderr.is_empty(), "{out:?}");
    let header = out.lines()[0]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        header,
        "SERVICE STATE WANT PID UPTIME RESTARTS LAST EXIT HEALTH CPU MEMORY"
    );
    let rows = table(&out.stdout);
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["idle", "web", "worker"]);
    let r = row(&out.stdout, "web");
    assert_eq!(
        (r[1].as_str(), r[2].as_str(), r[3].clone()),
        ("running", "up", web.pid.expect("pid").to_string())
    );
    assert!(r[4].ends_with('s'), "an uptime: {r:?}");
    assert_eq!(&r[5..8], ["0", "-", "-"]);
    // What it costs: CPU time and memory, read from its cgroup as the controller answers.
    assert!(r[8].ends_with('s'), "a CPU time: {r:?}");
    assert!(r[9].ends_with(['B', 'K', 'M']), "memory: {r:?}");
    let r = row(&out.stdout, "idle");
    assert_eq!(
        &r[1..],
        ["stopped", "down", "-", "-", "0", "-", "-", "-", "-"]
    );

    let out = w.upkctl(&["status", "web", "--json"]);
    out.expect(code::OK);
    let v = out.json();
    assert_eq!(v["controller"], true);
    let s = &v["services"];
    assert_eq!(s.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(s[0]["service"], "web");
    assert_eq!(s[0]["state"], "running");
    assert_eq!(s[0]["want"], "up");
    assert_eq!(s[0]["pid"], web.pid.expect("pid"));
    assert_eq!(s[0]["since_us"], web.since_us);
    assert!(s[0]["uptime_s"].as_f64().is_some_and(|u| u >= 0.0), "{v}");
    assert_eq!(s[0]["restarts"], 0);
    assert_eq!(s[0]["linked"], true);
    assert!(s[0]["health"].is_null());
    assert!(s[0]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("conf/app.conf")));

    w.upkctl(&["status", "web", "nope"])
        .fails(code::NOT_FOUND, "no service \"nope\"");

    let out = w.upkctl(&["list"]);
    out.expect(code::OK);
    let r = row(&out.stdout, "worker");
    assert_eq!(r[1..4], ["running", "up", "yes"]);
    assert!(r[4].ends_with("conf/app.conf"), "{r:?}");
    let list = w.upkctl(&["list", "--json"]).json();
    let ids: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(ids, ["idle", "web", "worker"]);
    assert_eq!(list[0]["state"], "stopped");
    assert_eq!(list[0]["want"], "down");
}

#[test]
fn status_reads_the_status_files_when_the_controller_is_down_and_control_is_unreachable() {
    let mut w = World::new(&[("app.conf", SERVICES)], &["web", "worker"]);
    let web = w.running("web");
    let worker = w.running("worker");
    w.stop_controller();

    let out = w.upkctl(&["status"]);
    out.expect(code::OK);
    assert!(
        out.stderr.contains("cannot reach the controller")
            && out.stderr.contains("showing the status files in"),
        "says so on stderr: {out:?}"
    );
    let r = row(&out.stdout, "web");
    assert_eq!(
        r[1..4],
        ["running", "up", &web.pid.expect("pid").to_string()]
    );
    assert_eq!(row(&out.stdout, "idle")[1], "stopped");

    let v = w.upkctl(&["status", "--json", "web"]).json();
    assert_eq!(v["controller"], false);
    assert_eq!(v["services"][0]["pid"], web.pid.expect("pid"));
    assert_eq!(v["services"][0]["buddy_alive"], true);
    assert!(v["services"][0]["linked"].is_null());

    let out = w.upkctl(&["list", "--json"]);
    out.expect(code::OK);
    assert!(
        out.stderr.contains("cannot reach the controller"),
        "{out:?}"
    );
    assert_eq!(out.json().as_array().map(Vec::len), Some(3));

    w.upkctl(&["status", "nope"]).expect(code::NOT_FOUND);

    // A buddy killed while the controller is away: its status may be stale, and upkctl says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.buddy_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the buddy");
    wait_until(Duration::from_secs(10), "the buddy gone", || {
        if upk_testkit::is_dead(worker.buddy_pid) {
            Ok(())
        } else {
            Err("alive".to_owned())
        }
    });
    let out = w.upkctl(&["status", "--json", "worker"]);
    out.expect(code::OK);
    assert!(
        out.stderr.contains(&format!(
            "the buddy of worker (pid {}) is not running",
            worker.buddy_pid
        )),
        "{out:?}"
    );
    assert_eq!(out.json()["services"][0]["buddy_alive"], false);

    // Everything else needs the controller: one sentence, exit 4, nothing done.
    for args in [
        &["start", "idle"][..],
        &["stop", "web"],
        &["restart", "web", "--wait"],
        &["reload", "web"],
        &["signal", "HUP", "web"],
        &["action", "ping", "web"],
        &["once", "idle"],
        &["unconfigure", "web"],
        &["stop", "--all"],
        &["stats"],
        &["ping"],
        &["watch"],
    ] {
        let out = w.upkctl(args);
        out.fails(code::UNREACHABLE, "cannot reach the controller");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    // The history is read from the store instead (tests/upkctl/events.rs has the rest).
    for args in [&["history"][..], &["audit"]] {
        let out = w.upkctl(args);
        out.expect(code::OK);
        assert!(
            out.stderr.contains("read from its store"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(w.running("web").pid, web.pid, "nothing was stopped");
}

#[test]
fn a_caller_without_access_is_refused() {
    let w = World::new(&[("app.conf", SERVICES)], &["web"]);
    let pid = w.running("web").pid;
    w.upkctl_as_nobody(&["status"])
        .fails(code::REFUSED, "may not status");
    let stop = w.upkctl_as_nobody(&["stop", "web"]);
    stop.fails(code::REFUSED, "web: uid 65534 may not stop");
    // It says who has the access and which key would grant it.
    assert!(
        stop.stderr
            .contains("it needs control access: root has it (ControlGroup is not set)"),
        "{stop:?}"
    );
    w.upkctl_as_nobody(&["history", "web"])
        .fails(code::REFUSED, "may not history");
    assert_eq!(w.running("web").pid, pid, "still the same run");
    // The refusals are in the audit, with the caller's uid.
    let kinds = wait_until(Duration::from_secs(10), "the refusals audited", || {
        let out = w.upkctl(&["audit", "--user", "nobody", "--json"]);
        out.expect(code::OK);
        let kinds: Vec<String> = out
            .json_lines()
            .iter()
            .map(|c| c["request"]["type"].as_str().unwrap_or("").to_owned())
            .collect();
        if kinds.len() >= 3 {
            Ok(kinds)
        } else {
            Err(format!("{kinds:?}"))
        }
    });
    assert_eq!(kinds, ["status", "stop", "history"]);
}

#[test]
fn a_controller_that_does_not_answer_times_out() {
    let w = World::new(&[("app.conf", SERVICES)], &["web"]);
    let pid = w.running("web").pid;
    let controller = w.controller.as_ref().expect("a controller").child.id() as i32;
    let cont = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(controller), sig).expect("signal");
    };
    // Stopped, it still accepts connections, but answers nothing.
    cont(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    let out = w.upkctl(&["--timeout", "0.5", "status", "web"]);
    out.expect(code::OK);
    assert!(
        out.stderr.contains("did not answer within 0.5s")
            && out.stderr.contains("showing the status files"),
        "{out:?}"
    );
    assert!(out.stdout.contains("State:  running"), "{out:?}");
    w.upkctl(&["--timeout", "0.5", "stop", "web"])
        .fails(code::TIMED_OUT, "did not answer within 0.5s");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    cont(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(w.running("web").pid, pid, "nothing was stopped");
    w.upkctl(&["status", "web"]).expect(code::OK);
}

#[test]
fn is_active_and_is_failed_answer_in_the_exit_code() {
    let mut w = World::new(
        &[(
            "app.conf",
            r#"{
    "web": { ExecStart: "sleep 1000", InitialState: "running" },
    "idle": { ExecStart: "sleep 1000" },
    "crashy": { ExecStart: "false", MaxConsecutiveFailures: 1, InitialState: "running" },
}"#,
        )],
        &["web"],
    );
    w.wait_state("crashy", StateName::Failed);
    let out = w.upkctl(&["is-active", "web"]);
    out.expect(code::OK);
    assert_eq!(out.stdout, "running\n");
    let out = w.upkctl(&["is-active", "web", "idle"]);
    out.expect(code::FAILED);
    assert_eq!(out.stdout, "running\nstopped\n");
    w.upkctl(&["is-failed", "crashy"]).expect(code::OK);
    w.upkctl(&["is-failed", "web", "idle"]).expect(code::FAILED);
    w.upkctl(&["is-active", "nosuch"])
        .fails(code::NOT_FOUND, "there is no service \"nosuch\"");
    // With the controller down, the status files answer.
    w.stop_controller();
    let out = w.upkctl(&["is-active", "web"]);
    out.expect(code::OK);
    assert_eq!(out.stdout, "running\n");
    w.upkctl(&["is-failed", "web"]).expect(code::FAILED);
}

#[test]
fn ping_waits_once_for_the_whole_deadline_even_for_a_hung_controller() {
    let w = World::new(&[("app.conf", SERVICES)], &["web"]);
    let out = w.upkctl(&["ping"]);
    out.expect(code::OK);
    assert!(out.stdout.trim().parse::<i32>().is_ok(), "the pid: {out:?}");
    // A socket that accepts and never answers: each try is cut to what is left of --wait, so
    // 1.5 s of waiting with --timeout 1 ends after about 1.5 s, not tries x 1 s.
    let hung = w.sb.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).expect("bind");
    let t = Instant::now();
    let mut cmd = Command::new(bin("upkctl"));
    cmd.arg("--socket")
        .arg(&hung)
        .args(["--timeout", "1", "ping", "--wait", "1.5"]);
    let out = w.run_cmd(cmd);
    assert_eq!(out.code, code::TIMED_OUT, "{out:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2800),
        "{took:?}"
    );
    // Nobody there at all: unreachable, after the wait.
    let t = Instant::now();
    let mut cmd = Command::new(bin("upkctl"));
    cmd.arg("--socket")
        .arg(w.sb.path().join("none.sock"))
        .args(["ping", "--wait", "0.5"]);
    let out = w.run_cmd(cmd);
    assert_eq!(out.code, code::UNREACHABLE, "{out:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
}
