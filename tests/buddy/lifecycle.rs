//! Start, kill -9 and restart, commands, run-once, SIGTERM, the lock.

use super::*;
use serde_json::json;
use upk_core::event::StateName;
use upk_testkit::{is_dead, Sandbox};

#[test]
fn starts_the_service_in_its_own_session() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let b = sb.buddy(&dir);
    let st = b.wait_status("running", |s| s.state == StateName::Running);
    let pid = st.pid.expect("pid");
    wait_for_sleep(pid);
    // A clean signal state: no standard signal (1-31) blocked or ignored is inherited from
    // the buddy, which blocks CHLD, TERM, INT and HUP for its signalfd. (Bits 32 and up are
    // glibc's internal real-time signals, outside the buddy's control.)
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    for field in ["SigBlk:", "SigIgn:"] {
        let line = proc_status
            .lines()
            .find(|l| l.starts_with(field))
            .expect(field);
        let mask = u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex mask");
        assert_eq!(mask & 0x7fff_ffff, 0, "{line}");
    }
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)))
        .expect("sid")
        .as_raw();
    let buddy_sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(b.pid())))
        .expect("sid")
        .as_raw();
    assert_eq!(sid, pid, "the service leads its own session");
    assert_ne!(sid, buddy_sid);
    assert_eq!(st.buddy_pid, b.pid());
    let pidfile = std::fs::read_to_string(dir.pidfile()).expect("buddy.pid");
    assert_eq!(pidfile, format!("{}\n", b.pid()));
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("fd 0");
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
}

/// Waits until `pid` (the start script) has exec'd `sleep 1000`.
fn wait_for_sleep(pid: i32) {
    wait_until(
        Duration::from_secs(5),
        "the start script to exec sleep",
        || {
            let cmd = upk_testkit::cmdline(pid);
            if cmd.starts_with("sleep 1000") {
                Ok(())
            } else {
                Err(cmd)
            }
        },
    );
}

/// Field 41 of /proc/PID/stat: the scheduling policy (0 SCHED_OTHER, 3 SCHED_BATCH).
fn policy(pid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    after_comm
        .split(' ')
        .nth(41 - 3)
        .and_then(|f| f.parse().ok())
        .expect("policy field")
}

/// The buddy runs SCHED_BATCH, so that it never preempts its service at wake-up (a new
/// service runs before the buddy's bookkeeping); what it starts runs SCHED_OTHER, on every
/// spawn path: with a cgroup (clone3), and without one, with and without credentials or
/// limits to apply (posix_spawn, fork).
#[test]
fn the_buddy_runs_batch_and_its_service_as_others_do() {
    let sb = Sandbox::new();
    for (name, cgroup, extra) in [
        ("plain", true, ""),
        ("nocg", false, ""),
        ("limited", false, ", LimitNOFILE: 512"),
    ] {
        let dir = sb.service(
            name,
            &format!(r#"{{ ExecStart: "sleep 1000", InitialState: "running"{extra} }}"#),
        );
        if !cgroup {
            without_cgroup(&dir);
        }
        let b = sb.buddy(&dir);
        let pid = running(&b);
        assert_eq!(policy(b.pid()), 3, "{name}: the buddy is SCHED_BATCH");
        wait_for_sleep(pid);
        assert_eq!(policy(pid), 0, "{name}: the service is SCHED_OTHER");
    }
}

#[test]
fn kill_9_is_recorded_with_the_signal_and_the_service_restarts() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "web",
        r#"{ ExecStart: "sleep 1000", InitialState: "running", UserRateLimit: 0 }"#,
    );
    let b = sb.buddy(&dir);
    let first = running(&b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let died = b.wait_record("died", |r| r["pid"] == first);
    assert_eq!(died["exit"]["how"], "killed", "{died}");
    assert_eq!(died["exit"]["signal"], 9, "{died}");
    let st = b.wait_status("a new pid", |s| {
        s.state == StateName::Running && s.pid != Some(first)
    });
    assert_eq!(st.restarts, 1);
    let recs = b.records();
    let kinds: Vec<&str> = recs
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or(""))
        .collect();
    let at = kinds.iter().position(|k| *k == "died").expect("died");
    assert_eq!(
        kinds[at..at + 3],
        ["died", "restart_scheduled", "started"],
        "{kinds:?}"
    );
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {seqs:?}"
    );
}

#[test]
fn commands_start_stop_restart_and_once() {
    let sb = Sandbox::new();
    let dir = sb.service("web", r#"{ ExecStart: "sleep 1000" }"#);
    let b = sb.buddy(&dir);
    assert_eq!(b.status().state, StateName::Stopped, "InitialState stopped");
    let r = b.call(json!({"type": "start", "id": 1}));
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("ok"), Some(1)),
        "{r}"
    );
    assert_eq!(r["status"]["state"], "running");
    let pid = r["status"]["pid"].as_i64().expect("pid") as i32;
    let again = b.call(json!({"type": "start"}));
    assert_eq!(again["message"], "already running");

    let r = b.call(json!({"type": "restart"}));
    assert_eq!(r["status"]["state"], "stopping", "{r}");
    let st = b.wait_status("restarted", |s| {
        s.state == StateName::Running && s.pid != Some(pid)
    });
    wait_until(Duration::from_secs(5), "the old process gone", || {
        if is_dead(pid) {
            Ok(())
        } else {
            Err("alive".into())
        }
    });

    b.call(json!({"type": "stop"}));
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    let old = st.pid.expect("pid");
    wait_until(Duration::from_secs(5), "the process gone", || {
        if is_dead(old) {
            Ok(())
        } else {
            Err("alive".into())
        }
    });

    // Once: runs, ends, and is not restarted.
    let script = format!("#!/bin/sh\necho ran >> {}\n", sb.file("job").display());
    let oneshot = sb.service("job", &format!("{{ StartScript: {script:?} }}"));
    let j = sb.buddy(&oneshot);
    let r = j.call(json!({"type": "once"}));
    assert_eq!(r["type"], "ok", "{r}");
    let st = j.wait_status("stopped after one run", |s| {
        s.state == StateName::Stopped && s.last_exit.is_some()
    });
    assert_eq!(
        st.last_exit,
        Some(upk_core::event::Exit::Exited { code: 0 })
    );
    assert_eq!((st.want, st.restarts), (upk_core::status::Want::Down, 0));
    assert_eq!(super::lines(&sb, "job"), ["ran"]);
}

#[test]
fn sigterm_stops_the_service_and_exits_zero() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let mut b = sb.buddy(&dir);
    let pid = running(&b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
    assert!(is_dead(pid), "the service is stopped with its buddy");
    let st = upk_testkit::read_status(&dir);
    assert_eq!(st.state, StateName::Stopped);
    assert!(!dir.socket().exists(), "the socket is removed on exit");
}

#[test]
fn a_second_buddy_on_the_same_directory_exits_at_once() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let b = sb.buddy(&dir);
    running(&b);
    let out = std::process::Command::new(upk_testkit::bin("upk_buddy"))
        .arg(dir.root())
        .env(upk_testkit::MARKER, sb.path())
        .output()
        .expect("second buddy");
    assert_eq!(out.status.code(), Some(100));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("already supervised by buddy pid {}", b.pid())),
        "{err}"
    );
    let pid = b.status().pid.expect("pid");
    wait_processes(&sb, "sleep 1000", &[pid]);
}

#[test]
fn a_directory_without_settings_is_refused_with_one_sentence() {
    let sb = Sandbox::new();
    let dir = sb.path().join("run/empty");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = std::process::Command::new(upk_testkit::bin("upk_buddy"))
        .arg(&dir)
        .env(upk_testkit::MARKER, sb.path())
        .output()
        .expect("buddy");
    assert_eq!(out.status.code(), Some(100));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("upk_buddy: cannot read ") && err.contains("settings.json"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_start_script_that_cannot_be_executed_is_a_spawn_failure() {
    let sb = Sandbox::new();
    let body = r#"{ ExecStart: "sleep 1000", MaxConsecutiveFailures: 2, UserRateLimit: 0 }"#;
    let dir = sb.service("broken", body);
    std::fs::remove_file(dir.script("start")).expect("remove the script behind actions/start");
    let b = sb.buddy(&dir);
    let r = b.call(json!({"type": "start"}));
    assert_eq!(r["type"], "ok", "{r}");
    let failed = b.wait_record("spawn_failed", |_| true);
    let error = failed["error"].as_str().expect("error");
    assert!(
        error.contains("cannot execute") && error.contains("actions/start"),
        "{error}"
    );
    b.wait_status("failed", |s| s.state == StateName::Failed);
}
