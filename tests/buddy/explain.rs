//! Every death explained by the buddy that saw it: the reason, the stop that caused it, the
//! last lines the run wrote, the configuration the run had, and counters that outlive the
//! buddy (docs/insight.md).

use super::*;
use serde_json::json;
use upk_core::event::StateName;

fn lines(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_missing_program_is_not_found_with_the_shells_words() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "web",
        r#"{ ExecStart: "/nonexistent/web --port 80", InitialState: "running", UserRateLimit: 1 }"#,
    );
    let b = sb.buddy(&dir);
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["exit"]["code"], 127, "{died}");
    assert_eq!(died["reason"], "not-found", "{died}");
    let tail = lines(&died["tail"]["stderr"]);
    assert!(
        tail.iter()
            .any(|l| l.contains("/nonexistent/web") && l.contains("not found")),
        "{died}"
    );
}

#[test]
fn a_segfault_is_a_signal_with_what_it_printed_first() {
    let sb = Sandbox::new();
    let script = "echo 'loading plugins'\necho 'plugin x: bad pointer' >&2\nkill -SEGV $$";
    let dir = sb.service("api", &sh_service("UserRateLimit: 1", script));
    let b = sb.buddy(&dir);
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["exit"]["signal"], 11, "{died}");
    let core = died["exit"]["core"] == true;
    let want = if core { "core-dumped" } else { "signal" };
    assert_eq!(died["reason"], want, "{died}");
    assert_eq!(lines(&died["tail"]["stderr"]), ["plugin x: bad pointer"]);
    assert_eq!(lines(&died["tail"]["stdout"]), ["loading plugins"]);
    // The next run's death keeps only its own lines.
    let second = b.wait_record("died", |r| r["seq"].as_u64() > died["seq"].as_u64());
    assert_eq!(lines(&second["tail"]["stderr"]), ["plugin x: bad pointer"]);
}

#[test]
fn a_stop_that_needed_sigkill_says_who_stopped_it_and_at_which_step() {
    let sb = Sandbox::new();
    let script = "trap 'echo ignoring TERM' TERM\necho trapped\nwhile :; do sleep 0.05; done";
    let dir = sb.service("stubborn", &sh_service("KillTimeout: 1", script));
    let b = sb.buddy(&dir);
    b.wait_status("running", |s| s.state == StateName::Running);
    // The stop must come after the trap is set.
    wait_until(Duration::from_secs(10), "the trap set", || {
        let out = std::fs::read_to_string(dir.log_file("stdout")).unwrap_or_default();
        if out.contains("trapped") {
            Ok(())
        } else {
            Err(out)
        }
    });
    b.call(json!({"type": "stop"}));
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["reason"], "stopped", "{died}");
    assert_eq!(died["stop"]["step"], "kill", "{died}");
    assert_eq!(died["exit"]["signal"], 9, "{died}");
    let stopping = b.wait_record("stopping", |_| true);
    assert_eq!(died["stop"]["cause"], stopping["cause"], "{died}");
    assert!(
        lines(&died["tail"]["stdout"]).contains(&"ignoring TERM".to_owned()),
        "{died}"
    );
}

#[test]
fn a_health_kill_is_unhealthy() {
    let sb = Sandbox::new();
    let extra = "HealthCheck: \"exit 1\", HealthInterval: 0.1, HealthRetries: 2, UserRateLimit: 1";
    let dir = sb.service("api", &sh_service(extra, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["reason"], "unhealthy", "{died}");
    assert_eq!(died["stop"]["cause"], "unhealthy", "{died}");
}

#[test]
fn starts_name_their_configuration_and_counters_outlive_the_buddy() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "web",
        r#"{ ExecStart: "sleep 1000", InitialState: "running", UserRateLimit: 0 }"#,
    );
    let mut old = sb.buddy(&dir);
    let started = old.wait_record("started", |_| true);
    let hash = started["config"].as_str().unwrap_or_default().to_owned();
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{started}"
    );
    let settings = std::fs::read_to_string(dir.settings()).expect("settings.json");
    assert!(settings.contains(&hash), "settings.json carries the hash");
    for n in 1..=2 {
        let pid = old
            .wait_status("running", |s| {
                s.state == StateName::Running && s.restarts == n - 1
            })
            .pid
            .expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        old.wait_status("restarted", |s| {
            s.restarts == n && s.state == StateName::Running
        });
    }
    old.child.kill().expect("SIGKILL the buddy");
    old.child.wait().expect("reap");
    let b = sb.buddy(&dir);
    let st = b.wait_status("adopted", |s| s.buddy_pid == b.pid());
    assert_eq!((st.restarts, st.failures), (2, 2), "{st:?}");
}
