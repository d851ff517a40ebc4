//! The controller's basics, each against the real `upkeeper` binary: the `check` and `render`
//! commands, `upkeeper run` starting what it can and saying what it cannot, events stored once
//! and acknowledged after commit across a controller kill, service files applied live, and a
//! killed buddy respawned and adopting its service.

use upk_testkit::{wait_until, Sandbox};

#[test]
fn upkeeper_check_and_render_commands() {
    let sb = Sandbox::new();
    let conf = sb.path().join("conf");
    let ctl = sb.controller_file();
    std::fs::write(
        conf.join("good.conf"),
        r#"{ "a": { ExecStart: "sleep 1" }, "b": { ExecStart: "sleep 2" } }"#,
    )
    .expect("good");
    std::fs::write(conf.join("bad.json5"), "{ \"c\": {\n  KillTimout: 3,\n} }").expect("bad");
    let upkeeper = |args: &[&str]| {
        std::process::Command::new(upk_testkit::bin("upkeeper"))
            .arg("--config")
            .arg(&ctl)
            .args(args)
            .output()
            .expect("upkeeper")
    };
    let out = upkeeper(&["check", conf.join("good.conf").to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 2 services"));
    let out = upkeeper(&["check", conf.join("bad.json5").to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(100));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json5:2:3:") && err.contains("did you mean `KillTimeout`"),
        "{err}"
    );

    // The bad file is reported and skipped; the good services render.
    let out = upkeeper(&["render"]);
    assert_eq!(out.status.code(), Some(100));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), 2, "{printed}");
    assert!(
        sb.run_path().join("a/actions/start").exists()
            && sb.run_path().join("b/settings.json").exists()
    );
    let out = upkeeper(&["render", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service \"nope\""));
}

#[test]
fn upkeeper_run_starts_what_it_can_and_says_what_it_cannot() {
    use std::io::BufRead;
    let sb = Sandbox::new();
    let conf = sb.path().join("conf");
    let ctl = sb.controller_file();
    let services = r#"{
        "db": { ExecStart: "sleep 1000", InitialState: "running" },
        "web": { ExecStart: "sleep 1001", InitialState: "running", Prerequisites: ["db"] },
        "a": { ExecStart: "sleep 1002", InitialState: "running", Prerequisites: ["b"] },
        "b": { ExecStart: "sleep 1003", InitialState: "running", Prerequisites: ["a"] },
        "lonely": { ExecStart: "sleep 1004", InitialState: "running", Prerequisites: ["nobody"] },
    }"#;
    std::fs::write(conf.join("all.conf"), services).expect("services");
    let mut child = std::process::Command::new(upk_testkit::bin("upkeeper"))
        .args(["--config", ctl.to_str().expect("utf8"), "run"])
        .env(upk_testkit::MARKER, sb.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("upkeeper run");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut said = Vec::new();
    while said.len() < 4 {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("stderr") == 0 {
            break;
        }
        said.push(line.trim().to_owned());
    }
    assert_eq!(
        said[..3],
        [
            "upkeeper: not starting a: prerequisites form a cycle: a -> b",
            "upkeeper: not starting b: prerequisites form a cycle: a -> b",
            "upkeeper: not starting lonely: prerequisite \"nobody\" is provided by no configured service",
        ],
        "{said:#?}"
    );
    for (id, cmd) in [("db", "sleep 1000"), ("web", "sleep 1001")] {
        let dir = upk_core::rundir::RunDir::new(sb.run_path().join(id));
        wait_until(
            std::time::Duration::from_secs(10),
            &format!("{id} running"),
            || {
                let pids = sb.processes(cmd);
                let st = upk_core::status::Status::read(&dir.status()).ok().flatten();
                match st {
                    Some(s) if s.pid.is_some() && pids.len() == 1 => Ok(()),
                    other => Err(format!("{other:?} {pids:?}")),
                }
            },
        );
    }
    assert!(!sb.run_path().join("a").exists() && !sb.run_path().join("lonely").exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `upkeeper run` on a controller file; its stdout and stderr are discarded.
fn upkeeper_run(sb: &Sandbox, ctl: &std::path::Path) -> std::process::Child {
    std::process::Command::new(upk_testkit::bin("upkeeper"))
        .args(["--config", ctl.to_str().expect("utf8"), "run"])
        .env(upk_testkit::MARKER, sb.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("upkeeper run")
}

/// The stored seqs of `service`, in row order.
fn stored_seqs(db: &std::path::Path, service: &str) -> Vec<u64> {
    let Ok(store) = upkeeper::store::Store::open_read_only(db) else {
        return Vec::new();
    };
    let filter = upkeeper::store::HistoryFilter {
        service: Some(service.into()),
        ..Default::default()
    };
    store
        .history(&filter)
        .map(|rows| rows.iter().map(|r| r.record.seq).collect())
        .unwrap_or_default()
}

#[test]
fn events_are_stored_once_acknowledged_after_commit_and_a_backlog_survives_a_controller_kill() {
    let sb = Sandbox::new();
    let conf = sb.path().join("conf");
    let state = sb.path().join("state");
    let ctl = sb.controller_file();
    let crash = r##"{ "crash": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running", UserRateLimit: 0.05, MaxConsecutiveFailures: 6 } }"##;
    std::fs::write(conf.join("crash.conf"), crash).expect("service file");
    let dir = upk_core::rundir::RunDir::new(sb.run_path().join("crash"));
    let db = state.join("upkeeper.db");
    // Everything stored, each seq once and in order, and acknowledged only once committed.
    let all_stored = |want_state: upk_core::event::StateName| {
        wait_until(
            std::time::Duration::from_secs(15),
            "every record stored and acknowledged",
            || {
                let st = upk_core::status::Status::read(&dir.status())
                    .ok()
                    .flatten()
                    .ok_or("no status")?;
                let seqs = stored_seqs(&db, "crash");
                let expected: Vec<u64> = (1..=st.seq).collect();
                if st.state == want_state && st.acked == st.seq && seqs == expected {
                    Ok(st)
                } else {
                    Err(format!(
                        "{:?} seq {} acked {} stored {seqs:?}",
                        st.state, st.seq, st.acked
                    ))
                }
            },
        )
    };

    let mut controller = upkeeper_run(&sb, &ctl);
    let first = all_stored(upk_core::event::StateName::Failed);
    // 1 buddy_started + 6 x (started, died) + 5 restart_scheduled + 1 gave_up.
    assert_eq!(first.seq, 19);

    // Kill the controller; the buddy goes on recording, unacknowledged, into its ring.
    controller.kill().expect("SIGKILL the controller");
    controller.wait().expect("reap");
    let mut c = upk_testkit::Client::connect(&dir.socket());
    assert_eq!(c.call(serde_json::json!({"type": "start"}))["type"], "ok");
    let st = wait_until(
        std::time::Duration::from_secs(15),
        "the second crash loop",
        || {
            let st = upk_core::status::Status::read(&dir.status())
                .ok()
                .flatten()
                .ok_or("no status")?;
            if st.state == upk_core::event::StateName::Failed && st.seq > first.seq {
                Ok(st)
            } else {
                Err(format!("{st:?}"))
            }
        },
    );
    assert_eq!(
        st.acked, first.seq,
        "nothing acknowledged while no controller listens"
    );

    // A new controller takes the backlog: stored exactly once, then acknowledged.
    let mut controller = upkeeper_run(&sb, &ctl);
    let second = all_stored(upk_core::event::StateName::Failed);
    assert_eq!(second.seq, st.seq);
    let _ = controller.kill();
    let _ = controller.wait();
}

#[test]
fn service_files_added_changed_and_removed_are_applied_live() {
    let sb = Sandbox::new();
    let conf = sb.path().join("conf");
    let ctl = sb.controller_file();
    let ctlr = upk_testkit::Controller::start(&sb, &ctl);
    ctlr.said("configuration applied: 0 added");
    let status = |id: &str| {
        upk_core::status::Status::read(&sb.run_path().join(id).join("status"))
            .ok()
            .flatten()
    };
    let running_cmd = |id: &str, cmd: &str| {
        wait_until(
            std::time::Duration::from_secs(10),
            &format!("{id} running {cmd}"),
            || match status(id) {
                Some(s)
                    if s.pid
                        .is_some_and(|p| upk_testkit::cmdline(p).starts_with(cmd)) =>
                {
                    Ok(s.pid.unwrap_or(0))
                }
                other => Err(format!("{other:?}")),
            },
        )
    };

    // A new file configures its services.
    let web =
        |cmd: &str| format!(r#"{{ "web": {{ ExecStart: "{cmd}", InitialState: "running" }} }}"#);
    std::fs::write(conf.join("web.conf"), web("sleep 1000")).expect("write");
    ctlr.said("configuration applied: 1 added, 0 changed, 0 removed, 0 unchanged");
    let first = running_cmd("web", "sleep 1000");

    // A changed definition re-renders and restarts only that service.
    std::fs::write(
        conf.join("other.conf"),
        r#"{ "other": { ExecStart: "sleep 1002", InitialState: "running" } }"#,
    )
    .expect("write");
    ctlr.said("1 added, 0 changed, 0 removed, 1 unchanged");
    let other = running_cmd("other", "sleep 1002");
    std::fs::write(conf.join("web.conf"), web("sleep 1001")).expect("write");
    ctlr.said("0 added, 1 changed, 0 removed, 1 unchanged");
    let second = running_cmd("web", "sleep 1001");
    assert_ne!(first, second);
    assert_eq!(
        status("other").and_then(|s| s.pid),
        Some(other),
        "the unchanged service was left alone"
    );

    // An edit that does not validate changes nothing.
    std::fs::write(
        conf.join("web.conf"),
        "{ \"web\": { ExecStart: \"sleep 1\", KillTimout: 1 } }",
    )
    .expect("write");
    ctlr.said("did you mean `KillTimeout`");
    ctlr.said("0 added, 0 changed, 0 removed, 2 unchanged");
    assert_eq!(status("web").and_then(|s| s.pid), Some(second));

    // Removing a file unconfigures only with UnconfigureOnFileRemoval.
    std::fs::remove_file(conf.join("web.conf")).expect("remove");
    ctlr.said("keeping web: its definition is gone");
    assert_eq!(status("web").and_then(|s| s.pid), Some(second));
    std::fs::write(
        conf.join("other.conf"),
        r#"{ "other": { ExecStart: "sleep 1002", InitialState: "running", UnconfigureOnFileRemoval: true } }"#,
    )
    .expect("write");
    ctlr.said("0 added, 1 changed");
    std::fs::remove_file(conf.join("other.conf")).expect("remove");
    ctlr.said("0 added, 0 changed, 1 removed");
    wait_until(
        std::time::Duration::from_secs(10),
        "other's service and buddy gone",
        || {
            let left = sb.processes("sleep 1002").len() + sb.processes("run/other").len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        },
    );
    assert!(
        sb.run_path().join("other/log").exists(),
        "its logs are kept"
    );
}

#[test]
fn a_killed_buddy_is_respawned_by_the_controller_and_adopts_its_service() {
    let sb = Sandbox::new();
    let conf = sb.path().join("conf");
    let ctl = sb.controller_file();
    std::fs::write(
        conf.join("web.conf"),
        r#"{ "web": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("write");
    let _ctlr = upk_testkit::Controller::start(&sb, &ctl);
    let status = || {
        upk_core::status::Status::read(&sb.run_path().join("web/status"))
            .ok()
            .flatten()
    };
    let first = wait_until(
        std::time::Duration::from_secs(10),
        "web running",
        || match status() {
            Some(s) if s.pid.is_some() => Ok(s),
            other => Err(format!("{other:?}")),
        },
    );
    let pid = first.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.buddy_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let second = wait_until(
        std::time::Duration::from_secs(10),
        "a new buddy",
        || match status() {
            Some(s) if s.buddy_pid != first.buddy_pid && s.pid.is_some() => Ok(s),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(
        second.pid,
        Some(pid),
        "the service was adopted, not started again"
    );
    wait_until(
        std::time::Duration::from_secs(5),
        "one service process",
        || {
            let p = sb.processes("sleep 1000");
            if p == [pid] {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );
}
