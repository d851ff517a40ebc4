//! A buddy started where a killed buddy's service still runs adopts it.

use super::*;
use upk_core::event::StateName;
use upk_testkit::{is_dead, Sandbox};

#[test]
fn after_sigkill_of_the_buddy_a_new_buddy_adopts_the_service() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "web",
        r#"{ ExecStart: "sleep 1000", InitialState: "running", UserRateLimit: 0 }"#,
    );
    let mut old = sb.buddy(&dir);
    let pid = running(&old);
    old.child.kill().expect("SIGKILL the buddy");
    old.child.wait().expect("reap");
    // The status file answers with no buddy running.
    let left = upk_testkit::read_status(&dir);
    assert_eq!((left.state, left.pid), (StateName::Running, Some(pid)));
    let stale = std::fs::read_to_string(dir.pidfile()).expect("buddy.pid");
    assert_eq!(
        stale.trim(),
        left.buddy_pid.to_string(),
        "a dead buddy's pid stays"
    );
    assert!(!is_dead(pid), "the service outlives its buddy");

    let b = sb.buddy(&dir);
    let st = b.wait_status("adopted", |s| {
        s.buddy_pid == b.pid() && s.state == StateName::Running
    });
    assert_eq!(st.pid, Some(pid), "the same process, not a second copy");
    wait_processes(&sb, "sleep 1000", &[pid]);
    let recs = b.records();
    let lost = of_kind(&recs, "lost");
    assert_eq!(
        lost.len(),
        1,
        "the predecessor's unacknowledged records are accounted for"
    );
    assert_eq!(lost[0]["count"].as_u64(), Some(left.seq - left.acked));
    assert_eq!(lost[0]["seq"].as_u64(), Some(left.seq));
    assert_eq!(of_kind(&recs, "adopted")[0]["pid"], pid);

    // The adopted process is watched by pidfd: its death is seen and it is replaced once.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let died = b.wait_record("died", |r| r["pid"] == pid);
    assert_eq!(
        died["exit"]["how"], "unknown",
        "not our child: no wait status"
    );
    let new = restarted(&b, pid);
    wait_processes(&sb, "sleep 1000", &[new]);
}

/// Starts a buddy on `dir`, waits for its service, SIGKILLs the buddy, starts a second one
/// and waits until it has adopted the same process; returns the new buddy and the pid.
fn replace_buddy(sb: &Sandbox, dir: &upk_core::rundir::RunDir) -> (upk_testkit::Buddy, i32) {
    let mut old = sb.buddy(dir);
    let pid = running(&old);
    old.child.kill().expect("SIGKILL the buddy");
    old.child.wait().expect("reap");
    let b = sb.buddy(dir);
    let st = b.wait_status("adopted", |s| {
        s.buddy_pid == b.pid() && s.state == StateName::Running
    });
    assert_eq!(st.pid, Some(pid));
    (b, pid)
}

#[test]
fn stopping_an_adopted_service_completes_and_leaves_nothing() {
    let sb = Sandbox::new();
    let gc = sb.file("grandchild.pid");
    let script = format!("sleep 1001 &\necho $! > {}\nexec sleep 1000", gc.display());
    let dir = sb.service("web", &sh_service("KillTimeout: 1", &script));
    let (b, pid) = replace_buddy(&sb, &dir);
    // `echo $! > file` truncates before it writes: wait for a whole pid.
    let grandchild: i32 = wait_until(Duration::from_secs(5), "the grandchild's pid", || {
        let text = std::fs::read_to_string(&gc).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|e| format!("{text:?}: {e}"))
    });
    let r = b.call(serde_json::json!({"type": "stop"}));
    assert_eq!(r["type"], "ok", "{r}");
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert!(
        is_dead(pid) && is_dead(grandchild),
        "the adopted group is gone"
    );
}

#[test]
fn a_killed_buddys_logger_is_retired_by_its_successor() {
    let sb = Sandbox::new();
    let logged = sb.file("logged");
    let extra = format!(
        "PipeStdoutScript: {:?}, RedirectStdout: {:?}",
        "#!/bin/sh\nexec sed -u 's/^/LOG: /'\n",
        logged.display().to_string()
    );
    let dir = sb.service("talker", &sh_service(&extra, "exec sleep 1000"));
    let (b, _) = replace_buddy(&sb, &dir);
    let mine = b.wait_record("logger_started", |_| true)["pid"]
        .as_i64()
        .expect("pid") as i32;
    wait_processes(&sb, "sed -u", &[mine]);
    assert_eq!(
        b.status().loggers.len(),
        1,
        "the status names the logger for the next buddy"
    );
}
