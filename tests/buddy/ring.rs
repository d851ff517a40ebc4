//! The event ring: exact loss accounting, phone home when 75% full, delivery on exit.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use upk_core::event::StateName;
use upk_testkit::Sandbox;

#[test]
fn overflow_reports_the_exact_number_of_lost_records() {
    let sb = Sandbox::new();
    let extra =
        "RingbufferSize: 4, MaxConsecutiveFailures: 10, UserRateLimit: 0, ReconnectRetries: 0";
    let dir = sb.service("crash", &sh_service(extra, "exit 1"));
    let b = sb.buddy(&dir);
    let st = b.wait_status("failed", |s| s.state == StateName::Failed);
    let recs = b.records();
    assert_eq!(recs.len(), 4, "the ring holds its capacity");
    let lost = &recs[0];
    assert_eq!(lost["kind"], "lost", "{lost}");
    // 1 buddy_started + 10 runs x (started, died) + 9 restart_scheduled + 1 gave_up = 31.
    assert_eq!(st.seq, 31);
    assert_eq!(recs[3]["seq"], 31);
    assert_eq!(lost["seq"], 28, "the lost record stands for seqs 1..=28");
    assert_eq!(lost["count"], 28, "exactly 31 - 3 kept records were lost");
    let seqs: Vec<u64> = recs
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [28, 29, 30, 31]);
}

/// Accepts one connection on `listener` within 10 s.
fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let (s, _) = wait_until(Duration::from_secs(10), "the buddy to phone home", || {
        listener.accept().map_err(|e| e.to_string())
    });
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads lines, acknowledging every event, until `done` says so; returns the events.
fn drain(stream: &UnixStream, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream.try_clone().expect("clone");
    let mut line = String::new();
    reader.read_line(&mut line).expect("hello");
    let hello: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(
        (hello["type"].as_str(), hello["service"].as_str()),
        (Some("hello"), Some("crash")),
        "{hello}"
    );
    let mut events = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("event") == 0 {
            return events;
        }
        let msg: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(msg["type"], "event", "{msg}");
        let rec = msg["record"].clone();
        writeln!(
            writer,
            "{}",
            serde_json::json!({"type": "ack", "seq": rec["seq"]})
        )
        .expect("ack");
        let stop = done(&rec);
        events.push(rec);
        if stop {
            return events;
        }
    }
}

#[test]
fn at_three_quarters_full_the_buddy_phones_home_and_delivers_everything() {
    let sb = Sandbox::new();
    let listener = UnixListener::bind(sb.controller_socket()).expect("bind");
    let extra = "RingbufferSize: 8, MaxConsecutiveFailures: 4, UserRateLimit: 0";
    let dir = sb.service("crash", &sh_service(extra, "exit 1"));
    let b = sb.buddy(&dir);
    let stream = accept(&listener);
    let events = drain(&stream, |r| r["kind"] == "gave_up");
    let seqs: Vec<u64> = events
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every record, in order, once"
    );
    assert!(
        events.iter().all(|r| r["kind"] != "lost"),
        "nothing lost below capacity"
    );
    let last = *seqs.last().expect("events");
    b.wait_status("all acknowledged", |s| s.acked == last);
    assert!(
        b.records().is_empty(),
        "acknowledged records leave the ring"
    );
}

#[test]
fn a_terminating_buddy_delivers_pending_records_before_it_exits() {
    let sb = Sandbox::new();
    let listener = UnixListener::bind(sb.controller_socket()).expect("bind");
    let dir = sb.service("crash", SLEEPER);
    let mut b = sb.buddy(&dir);
    running(&b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("term");
    let stream = accept(&listener);
    let events = drain(&stream, |_| false);
    let kinds: Vec<&str> = events
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.first(), Some(&"buddy_started"));
    // The stop script's own `action_run` may be reaped before or after: it is not ordered.
    let at = |k: &str| kinds.iter().position(|x| *x == k);
    assert!(
        at("stopped") < at("buddy_exiting") && at("stopped").is_some(),
        "{kinds:?}"
    );
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
    let st = upk_testkit::read_status(&dir);
    assert_eq!(st.acked, st.seq, "everything was acknowledged before exit");
}

#[test]
fn a_status_file_with_seq_at_u64_max_begins_a_new_incarnation() {
    // A corrupt or forged status file must not make the seqs wrap (hiding records) or
    // overflow: the buddy begins a new incarnation at seq 1.
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("UserRateLimit: 0.2", "exec sleep 1000"));
    let forged = upk_core::status::Status {
        service: "web".into(),
        state: StateName::Stopped,
        want: upk_core::status::Want::Up,
        pid: None,
        pid_start: None,
        since_us: 0,
        buddy_pid: 1,
        restarts: 0,
        failures: 0,
        last_exit: None,
        next_start_us: None,
        incarnation: "forged".into(),
        seq: u64::MAX,
        acked: u64::MAX - 3,
        loggers: Vec::new(),
        needs_ready: false,
        ready_timed_out: false,
        health: None,
        containment: Default::default(),
    };
    forged.write(&dir.status()).expect("forged status");
    let b = sb.buddy(&dir);
    let st = b.wait_status("running", |s| s.state == StateName::Running);
    assert_ne!(st.incarnation, "forged");
    assert_eq!(st.incarnation.len(), 32, "{:?}", st.incarnation);
    let seqs: Vec<u64> = b
        .records()
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(
        seqs.len() >= 2 && st.seq == seqs.len() as u64,
        "{seqs:?} {st:?}"
    );
}
