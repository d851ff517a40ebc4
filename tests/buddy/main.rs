//! Black-box tests of `upk_buddy`: the real binary, real `sh` services, a private sandbox each,
//! and bounded waits. One module per capability.

mod adopt;
mod bad_day;
mod contain;
mod direct;
mod explain;
mod health;
mod lifecycle;
mod output;
mod policy;
mod protocol;
mod render;
mod ring;
mod stop;

use serde_json::Value;
use std::time::Duration;
use upk_testkit::{wait_until, Buddy, Sandbox};

/// A service entry for `sh` one-liners: `ExecStart` is `sh -c '<cmd>'` via the start script.
pub fn sh_service(extra: &str, script: &str) -> String {
    let start = format!("#!/bin/sh\n{script}\n");
    format!("{{ StartScript: {start:?}, InitialState: \"running\", {extra} }}")
}

/// Records of `kind` among the buddy's held records.
pub fn of_kind(records: &[Value], kind: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect()
}

/// Waits until at least `n` records of `kind` are held, returns all held records.
pub fn wait_count(b: &Buddy, kind: &str, n: usize, timeout: Duration) -> Vec<Value> {
    wait_until(timeout, &format!("{n} {kind} records"), || {
        let recs = b.records();
        let have = of_kind(&recs, kind).len();
        if have >= n {
            Ok(recs)
        } else {
            Err(format!("{have} so far"))
        }
    })
}

/// Monotonic seconds of a record.
pub fn mono(r: &Value) -> f64 {
    r["mono_us"].as_i64().expect("mono_us") as f64 / 1e6
}

/// Lines of a file in the sandbox's files, empty if missing.
pub fn lines(sb: &Sandbox, name: &str) -> Vec<String> {
    std::fs::read_to_string(sb.file(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The plainest service: a `sleep` that is wanted up.
pub const SLEEPER: &str = r#"{ ExecStart: "sleep 1000", InitialState: "running" }"#;

/// Waits until the buddy reports its service running; returns the pid.
/// Turns the service's cgroup off in its settings (as `Cgroup: false` in the controller's).
pub fn without_cgroup(dir: &upk_core::rundir::RunDir) {
    let path = dir.settings();
    let mut s = upk_core::rundir::Settings::read(&path).expect("settings");
    s.cgroup = None;
    std::fs::write(path, serde_json::to_vec(&s).expect("json")).expect("write");
}

pub fn running(b: &Buddy) -> i32 {
    let st = b.wait_status("running", |s| {
        s.state == upk_core::event::StateName::Running
    });
    st.pid.expect("a running service has a pid")
}

/// Waits until the sandbox's live processes matching `needle` are exactly `pids` (a start
/// script may not have exec'd its program yet when the buddy reports the pid).
pub fn wait_processes(sb: &Sandbox, needle: &str, pids: &[i32]) {
    wait_until(
        Duration::from_secs(5),
        &format!("exactly {pids:?} running {needle}"),
        || {
            let p = sb.processes(needle);
            if p == pids {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );
}

/// Waits until the service runs under a pid other than `old`; returns the new pid.
pub fn restarted(b: &Buddy, old: i32) -> i32 {
    let st = b.wait_status("restarted", |s| {
        s.state == upk_core::event::StateName::Running && s.pid.is_some_and(|p| p != old)
    });
    st.pid.expect("a running service has a pid")
}
