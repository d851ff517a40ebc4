//! Stopping: the stop script, then SIGTERM and SIGKILL to the whole process group.

use super::*;
use serde_json::json;
use upk_core::event::StateName;
use upk_testkit::{is_dead, Sandbox};

/// Every process of a group is gone (absent or zombie).
fn group_gone(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    !entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| {
            !is_dead(pid)
                && nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).map(|g| g.as_raw())
                    == Ok(pgid)
        })
}

#[test]
fn a_grandchild_that_ignores_sigterm_is_killed_with_its_group() {
    let sb = Sandbox::new();
    let gc = sb.file("grandchild.pid");
    let script = format!(
        "( trap '' TERM; exec sleep 1001 ) &\necho $! > {}\nexec sleep 1000",
        gc.display()
    );
    let dir = sb.service("web", &sh_service("KillTimeout: 1", &script));
    let b = sb.buddy(&dir);
    let pid = running(&b);
    let grandchild: i32 = wait_until(Duration::from_secs(5), "the grandchild's pid", || {
        std::fs::read_to_string(&gc)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))
    });
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(grandchild)))
            .expect("pgid")
            .as_raw(),
        pid
    );

    let r = b.call(json!({"type": "stop"}));
    assert_eq!(r["status"]["state"], "stopping", "{r}");
    // While the group is being stopped the buddy keeps answering.
    let st = b.call(json!({"type": "status"}));
    assert_eq!(st["type"], "ok");
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert!(is_dead(pid) && is_dead(grandchild));
    assert!(group_gone(pid), "no process of the service's group is left");
    let recs = b.records();
    let signals: Vec<i64> = of_kind(&recs, "signaled")
        .iter()
        .map(|r| r["signal"].as_i64().expect("signal"))
        .collect();
    assert_eq!(
        signals,
        [15, 9],
        "SIGTERM to the leftovers, then SIGKILL at the kill timeout"
    );
    let stop_script = of_kind(&recs, "action_run");
    assert_eq!(stop_script[0]["action"], "stop");
}

#[test]
fn stop_script_gets_the_pid_and_a_clean_exit_needs_no_signal() {
    let sb = Sandbox::new();
    let seen = sb.file("stop-arg");
    let stop = format!(
        "#!/bin/sh\necho \"$1\" > {}\nexec kill \"$1\"\n",
        seen.display()
    );
    let dir = sb.service(
        "web",
        &format!(r#"{{ ExecStart: "sleep 1000", InitialState: "running", StopScript: {stop:?} }}"#),
    );
    let b = sb.buddy(&dir);
    let pid = running(&b);
    b.call(json!({"type": "stop"}));
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert_eq!(
        std::fs::read_to_string(&seen)
            .expect("stop script ran")
            .trim(),
        pid.to_string()
    );
    let recs = b.records();
    assert!(
        of_kind(&recs, "signaled").is_empty(),
        "no escalation was needed: {recs:#?}"
    );
}

#[test]
fn a_negative_kill_timeout_never_sends_sigkill() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "stubborn",
        &sh_service("KillTimeout: -1", "trap '' TERM\nexec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let pid = running(&b);
    // Stop only once the service ignores SIGTERM (the trap runs after the status says
    // running): otherwise the stop script's `kill` ends it, and the test races.
    wait_until(Duration::from_secs(10), "SIGTERM ignored", || {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ign = st
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            .unwrap_or(0);
        if ign & (1 << (15 - 1)) != 0 {
            Ok(())
        } else {
            Err(format!("SigIgn {ign:x}"))
        }
    });
    b.call(json!({"type": "stop"}));
    b.wait_record("action_run", |r| r["action"] == "stop");
    // Nothing is expected to happen: give escalation a generous window to (wrongly) occur.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!is_dead(pid), "still alive: never SIGKILLed");
    assert_eq!(b.status().state, StateName::Stopping);
    assert!(of_kind(&b.records(), "signaled").is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
}

#[test]
fn a_hand_edited_kill_timeout_of_1e20_in_settings_does_not_abort_the_buddy() {
    // Validation bounds KillTimeout, but settings.json is a file a root operator can edit:
    // the buddy clamps what it reads (at most 365 days) instead of panicking in from_secs_f64.
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("KillTimeout: 60", "exec sleep 1000"));
    let text = std::fs::read_to_string(dir.settings()).expect("settings");
    let huge = text.replace("\"kill_timeout\": 60.0", "\"kill_timeout\": 1e20");
    assert_ne!(huge, text, "{text}");
    std::fs::write(dir.settings(), huge).expect("settings");
    let mut b = sb.buddy(&dir);
    b.wait_status("running", |s| s.state == StateName::Running);
    let reply = b.call(serde_json::json!({"type": "stop", "id": 1}));
    assert_eq!(reply["type"], "ok", "{reply}");
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert!(
        b.child.try_wait().expect("wait").is_none(),
        "the buddy lives"
    );
}
