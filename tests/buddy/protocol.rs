//! The socket protocol: garbage and oversized lines, signals, reload, custom actions,
//! SIGHUP re-reading settings, privilege drop.

use super::*;
use serde_json::json;
use upk_core::event::StateName;
use upk_testkit::{Client, Sandbox};

#[test]
fn garbage_and_oversized_lines_get_an_error_and_a_closed_connection() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let b = sb.buddy(&dir);
    let mut c = Client::raw(&dir.socket());
    c.send_raw(b"this is not json\n");
    let e = c.recv().expect("an error reply");
    assert_eq!(e["type"], "error");
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("malformed"),
        "{e}"
    );
    assert_eq!(c.recv(), None, "closed after the error");

    let mut c = Client::raw(&dir.socket());
    c.send_raw(br#"{"type":"launch_missiles"}"#);
    c.send_raw(b"\n");
    assert_eq!(c.recv().expect("error")["type"], "error");

    let mut c = Client::raw(&dir.socket());
    let big = vec![b'x'; upk_core::proto::MAX_LINE + 10];
    // The buddy may close while we still write; that is the expected outcome too.
    let _ = std::io::Write::write_all(
        &mut std::os::unix::net::UnixStream::connect(dir.socket()).expect("c"),
        &big,
    );
    c.send_raw(&big);
    let e = c.recv().expect("error");
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("longer than"),
        "{e}"
    );

    let r = b.call(json!({"type": "hello", "version": 99}));
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(
        b.call(json!({"type": "status"}))["status"]["state"],
        "running",
        "still serving"
    );
}

#[test]
fn signals_reload_and_custom_actions() {
    let sb = Sandbox::new();
    let (hup, act, ready) = (sb.file("hup"), sb.file("act"), sb.file("ready"));
    // The trap must be in place before the first HUP, or the shell dies of it.
    let script = format!(
        "trap 'echo hup >> {}' HUP\ntouch {}\nwhile :; do sleep 0.05; done",
        hup.display(),
        ready.display()
    );
    let action = format!(
        "#!/bin/sh\necho \"greet $1\" >> {}\nexit 4\n",
        act.display()
    );
    let dir = sb.service(
        "web",
        &format!(
            r#"{{ StartScript: {:?}, CustomActions: {{ greet: {action:?} }} }}"#,
            format!("#!/bin/sh\n{script}\n")
        ),
    );
    let b = sb.buddy(&dir);
    let r = b.call(json!({"type": "signal", "signal": "HUP"}));
    assert_eq!(
        r["type"], "error",
        "no signal without a running service: {r}"
    );
    assert!(r["message"].as_str().expect("msg").contains("not running"));
    assert_eq!(b.call(json!({"type": "reload"}))["type"], "error");

    let pid = b.call(json!({"type": "start"}))["status"]["pid"]
        .as_i64()
        .expect("pid");
    wait_until(Duration::from_secs(5), "the trap in place", || {
        ready
            .exists()
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    let r = b.call(json!({"type": "signal", "signal": "SIGHUP", "id": 5}));
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("ok"), Some(5)),
        "{r}"
    );
    wait_until(Duration::from_secs(5), "the trap to run", || {
        if lines(&sb, "hup").len() == 1 {
            Ok(())
        } else {
            Err("no".into())
        }
    });
    let r = b.call(json!({"type": "signal", "signal": 1}));
    assert_eq!(r["type"], "ok");
    // Wait for each HUP's trap before the next: pending signals of one kind coalesce.
    wait_until(Duration::from_secs(5), "two HUPs", || {
        if lines(&sb, "hup").len() == 2 {
            Ok(())
        } else {
            Err("no".into())
        }
    });

    let r = b.call(json!({"type": "reload"}));
    assert_eq!(r["type"], "action_done", "{r}");
    assert_eq!(r["exit"], json!({"how": "exited", "code": 0}));
    wait_until(Duration::from_secs(5), "three HUPs", || {
        if lines(&sb, "hup").len() == 3 {
            Ok(())
        } else {
            Err(format!("{:?}", lines(&sb, "hup")))
        }
    });

    let r = b.call(json!({"type": "action", "name": "greet"}));
    assert_eq!(
        (r["type"].as_str(), r["action"].as_str()),
        (Some("action_done"), Some("greet")),
        "{r}"
    );
    assert_eq!(r["exit"]["code"], 4);
    let r = b.call(json!({"type": "action", "name": "01"}));
    assert_eq!(r["exit"]["code"], 4, "by number too: {r}");
    assert_eq!(
        lines(&sb, "act"),
        [format!("greet {pid}"), format!("greet {pid}")]
    );
    let r = b.call(json!({"type": "action", "name": "fly"}));
    assert!(
        r["message"].as_str().expect("msg").contains("known: greet"),
        "{r}"
    );
    let recorded = of_kind(&b.records(), "action_run");
    assert_eq!(recorded.len(), 3, "reload and two custom runs are recorded");
}

#[test]
fn sighup_rereads_settings() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let b = sb.buddy(&dir);
    running(&b);
    assert_eq!(
        b.call(json!({"type": "action", "name": "hi"}))["type"],
        "error"
    );
    sb.service("web", r##"{ ExecStart: "sleep 1000", InitialState: "running", CustomActions: { hi: "#!/bin/sh\nexit 0\n" } }"##);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("hup");
    let r = wait_until(Duration::from_secs(5), "the new action", || {
        let r = b.call(json!({"type": "action", "name": "hi"}));
        if r["type"] == "action_done" {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    });
    assert_eq!(r["exit"]["code"], 0);
    assert_eq!(
        b.status().state,
        StateName::Running,
        "re-reading does not restart the service"
    );
}

#[test]
fn privileges_are_dropped_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("privileges_are_dropped_as_root: not root here; the privilege drop needs root");
        return;
    }
    let sb = Sandbox::new();
    let dir = sb.service(
        "nobody",
        &sh_service(
            r#"SetUID: "nobody", SetGID: "nogroup""#,
            "id\nexec sleep 1000",
        ),
    );
    let b = sb.buddy(&dir);
    let pid = running(&b);
    let out = wait_until(Duration::from_secs(5), "id's output", || {
        let t = std::fs::read_to_string(dir.log_file("stdout")).unwrap_or_default();
        if t.is_empty() {
            Err("empty".into())
        } else {
            Ok(t)
        }
    });
    assert_eq!(
        out.trim(),
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(field("Uid:").as_deref(), Some("65534 65534 65534 65534"));
    assert_eq!(field("Gid:").as_deref(), Some("65534 65534 65534 65534"));
    assert_eq!(field("Groups:").as_deref(), Some("65534"));

    // Validation refuses a user the system does not know; one removed after the render is
    // the buddy's to report.
    let bad = sb.service(
        "ghost",
        &sh_service(
            r#"SetUID: "nobody", MaxConsecutiveFailures: 1"#,
            "exec sleep 1000",
        ),
    );
    let settings = std::fs::read_to_string(bad.settings()).expect("settings");
    let gone = settings.replace(
        r#""set_uid": "nobody""#,
        r#""set_uid": "no-such-user-here""#,
    );
    assert_ne!(gone, settings, "{settings}");
    std::fs::write(bad.settings(), gone).expect("settings");
    let g = sb.buddy(&bad);
    let failed = g.wait_record("spawn_failed", |_| true);
    assert!(
        failed["error"]
            .as_str()
            .expect("error")
            .contains("no user named"),
        "{failed}"
    );
    g.wait_status("failed", |s| s.state == StateName::Failed);
}

#[test]
fn a_peer_that_closes_its_end_still_gets_its_action_reply_and_shutdown_is_idempotent() {
    use std::io::{Read, Write};
    let sb = Sandbox::new();
    let body = r##"{ ExecStart: "sleep 1000", InitialState: "running", CustomActions: { slow: "#!/bin/sh\nsleep 0.3\nexit 7\n" } }"##;
    let dir = sb.service("web", body);
    let mut b = sb.buddy(&dir);
    running(&b);
    // What `echo '{...}' | socat - UNIX-CONNECT:buddy.sock` does: write, shut down, read.
    let mut s = std::os::unix::net::UnixStream::connect(dir.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"{\"type\":\"action\",\"name\":\"slow\"}\n")
        .expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .expect("read until the buddy closes");
    let v: Value = serde_json::from_str(reply.trim()).expect("one reply");
    assert_eq!(
        (v["type"].as_str(), v["exit"]["code"].as_i64()),
        (Some("action_done"), Some(7)),
        "{v}"
    );

    let first = b.call(json!({"type": "shutdown"}));
    assert_eq!(first["type"], "ok", "{first}");
    let mut c = Client::raw(&dir.socket());
    c.send(&json!({"type": "shutdown"}));
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
}
