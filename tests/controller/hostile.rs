//! Hostile and oversized input on the controller socket (issue 11): numbers that would
//! overflow, a caller holding every connection it can, a flood of refused requests, and
//! replies larger than a protocol line, a client with a huge command line.

use super::access::{probe_as, users};
use super::*;
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Instant;
use upk_testkit::{Client, Controller};

/// A sandbox with one stopped service `web` and its controller.
fn controller_with_web() -> (Sandbox, Controller) {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "web.conf", r#"{ "web": { ExecStart: "sleep 1000" } }"#);
    let c = Controller::start(&sb, &ctl);
    wait_until(Duration::from_secs(10), "web linked", || {
        match c.client().status(&["web"]) {
            Ok(s) if s.first().is_some_and(|s| s.linked) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    (sb, c)
}

/// The audit, read once root's marker command (a restart of a service that does not exist)
/// is in it: every command audited before the marker is then in the rows.
fn audit_after_a_marker(c: &Controller) -> Vec<libupkeeper::CommandRow> {
    let mut root = c.client();
    let marker = root.restart("no-such-service").expect_err("not found");
    assert_eq!(marker.code(), Some(libupkeeper::ErrorCode::NotFound));
    wait_until(Duration::from_secs(10), "the marker audited", || {
        let rows = c
            .client()
            .audit(&libupkeeper::AuditQuery::default())
            .map_err(|e| e.to_string())?;
        match rows
            .iter()
            .any(|r| r.entry.service.as_deref() == Some("no-such-service"))
        {
            true => Ok(rows),
            false => Err(format!("{} rows", rows.len())),
        }
    })
}

/// The controller still answers a fresh connection.
fn still_serving(c: &mut Controller) {
    assert!(
        c.child.try_wait().expect("try_wait").is_none(),
        "the controller died"
    );
    let mut fresh = Client::connect(&c.socket);
    assert_eq!(
        fresh.call(json!({"type": "list", "id": 1}))["type"],
        "services"
    );
}

#[test]
fn stats_with_empty_range_is_an_error() {
    let (_sb, mut c) = controller_with_web();
    let mut raw = Client::connect(&c.socket);
    for (since, until) in [
        (Some(1i64), Some(0i64)),
        (Some(5), Some(5)),
        (None, Some(i64::MIN + 7)),
    ] {
        let mut req = json!({"type": "stats", "id": 2, "services": ["web"]});
        if let Some(s) = since {
            req["since_us"] = json!(s);
        }
        if let Some(u) = until {
            req["until_us"] = json!(u);
        }
        let r = raw.call(req.clone());
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("bad_value")),
            "{req} -> {r}"
        );
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }
    // The connection stays open after a bad value, and the controller is alive.
    assert_eq!(
        raw.call(json!({"type": "list", "id": 3}))["type"],
        "services"
    );
    still_serving(&mut c);
}

#[test]
fn extreme_numbers_in_read_requests_are_answered_not_fatal() {
    let (_sb, mut c) = controller_with_web();
    let mut raw = Client::connect(&c.socket);
    let (min, max) = (i64::MIN, i64::MAX);
    let requests = [
        json!({"type": "stats", "since_us": min, "until_us": max}),
        json!({"type": "stats", "services": ["web"], "since_us": min}),
        json!({"type": "stats", "since_us": max - 1, "until_us": max}),
        json!({"type": "history", "since_us": max, "until_us": min, "limit": u64::MAX}),
        json!({"type": "history", "after_id": min, "before_id": max, "newest_first": true, "limit": u64::MAX}),
        json!({"type": "audit", "since_us": min, "until_us": max, "limit": u64::MAX, "after_id": max}),
        json!({"type": "audit", "uid": u32::MAX, "before_id": min, "newest_first": true}),
    ];
    for (i, req) in requests.iter().enumerate() {
        let mut req = req.clone();
        req["id"] = json!(10 + i);
        let r = raw.call(req.clone());
        assert!(
            ["stats", "history", "audit"].contains(&r["type"].as_str().unwrap_or("")),
            "{req} -> {r}"
        );
    }
    still_serving(&mut c);
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted after the comm (field 2) and the state (field 3).
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn a_user_holding_many_connections_locks_no_one_out() {
    let (_reader_uid, _other_uid) = users();
    let (_sb, mut c) = controller_with_web();
    let pid = c.child.id();
    // A descriptor limit of 1024 (a common default): the hog asks for more connections.
    let limited = Command::new("prlimit")
        .args([&format!("--pid={pid}"), "--nofile=1024:1024"])
        .status()
        .expect("prlimit");
    assert!(limited.success());
    let hog_script = format!(
        "use IO::Socket::UNIX; my @s; for (1..1500) {{ my $s = IO::Socket::UNIX->new(Peer => {:?}) or last; push @s, $s; }} print scalar(@s), \"\\n\"; $| = 1; <STDIN>;",
        c.socket.display().to_string()
    );
    let mut hog = Command::new("prlimit")
        .args([
            "--nofile=4096:4096",
            "setpriv",
            "--reuid=upkother",
            "--regid=nogroup",
            "--init-groups",
            "--",
            "perl",
            "-e",
            &hog_script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("perl");
    let mut out = std::io::BufReader::new(hog.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
    });
    let held = rx.recv_timeout(Duration::from_secs(60));
    let held_ok = held.is_ok();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            held_ok,
            "the hog's connects never all went through: the controller stopped accepting"
        );
        // Root gets its hello at once, over and over, while the hog holds what it could get.
        let socket = c.socket.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = libupkeeper::Client::connect_timeout(&socket, Duration::from_secs(5))
                .map(|c| c.access());
            let _ = tx.send((r.map_err(|e| e.to_string()), t.elapsed()));
        });
        let (access, took) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("root's connect returned");
        assert_eq!(access, Ok(libupkeeper::Access::Control), "root's hello");
        assert!(took < Duration::from_secs(3), "root's hello took {took:?}");
        // The controller idles meanwhile: no spinning on accept.
        let used = cpu_share(pid);
        assert!(
            used < 0.3,
            "the controller used {:.0}% of a core",
            used * 100.0
        );
        // The hog got its share, not everything.
        let n: usize = held
            .as_ref()
            .map(|l| l.trim().parse().unwrap_or(0))
            .unwrap_or(0);
        assert!(n > 0, "{held:?}");
        still_serving(&mut c);
    }));
    let _ = hog.kill();
    let _ = hog.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_flood_of_refused_requests_writes_ten_rows_not_thousands() {
    let (_reader_uid, other_uid) = users();
    let (_sb, c) = controller_with_web();
    let restart = r#"{"type":"restart","service":"web"}"#;
    let mut lines = vec![r#"{"type":"hello","version":1}"#];
    lines.extend(std::iter::repeat_n(restart, 3000));
    let replies = probe_as("upkother", &c.socket, &lines);
    assert_eq!(replies.len(), 3001);
    assert!(replies[1..].iter().all(|r| r["code"] == "refused"));
    let rows = audit_after_a_marker(&c);
    let theirs: Vec<&libupkeeper::CommandRow> =
        rows.iter().filter(|r| r.entry.uid == other_uid).collect();
    assert_eq!(
        theirs.len(),
        10,
        "ten rows for the flood, then counted: {theirs:?}"
    );
    assert!(theirs[0].entry.result.starts_with("refused"));
}

#[test]
fn an_audit_reply_larger_than_a_line_arrives_whole() {
    let (_sb, c) = controller_with_web();
    let mut root = c.client();
    // 24 audited commands of about 100 KB each: 2.4 MB of rows, more than a protocol line.
    let long = "x".repeat(100_000);
    for _ in 0..24 {
        let e = root.restart(&long).expect_err("not found");
        assert_eq!(e.code(), Some(libupkeeper::ErrorCode::NotFound));
    }
    let rows = wait_until(Duration::from_secs(20), "24 rows audited", || {
        let rows = c
            .client()
            .audit(&libupkeeper::AuditQuery::default())
            .map_err(|e| e.to_string())?;
        if rows.len() >= 24 {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    });
    assert_eq!(rows.len(), 24);
    assert!(
        rows.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first, in order"
    );
    // The last N come from the controller, newest first, without the client reading all.
    let last = root
        .audit(&libupkeeper::AuditQuery {
            limit: Some(3),
            newest_first: true,
            ..Default::default()
        })
        .expect("the last three");
    let ids: Vec<i64> = last.iter().map(|r| r.id).collect();
    let want: Vec<i64> = rows.iter().rev().take(3).map(|r| r.id).collect();
    assert_eq!(ids, want);
    // The raw protocol: every line below the limit, all but the last marked `more`.
    let mut raw = Client::connect(&c.socket);
    raw.send(&json!({"type": "audit", "id": 9}));
    let mut lines: Vec<Value> = Vec::new();
    loop {
        let m = raw.recv().expect("a line");
        let more = m["more"] == true;
        lines.push(m);
        if !more {
            break;
        }
    }
    assert!(lines.len() > 1, "split into lines");
    let sent: Vec<i64> = lines
        .iter()
        .flat_map(|l| l["commands"].as_array().cloned().unwrap_or_default())
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    // 7 MB of rows is more than one reply holds (4 MiB): the last line says where to go on.
    let last = lines.last().expect("a line");
    assert!(sent.len() < 24, "{} rows in one reply", sent.len());
    assert_eq!(
        last["cursor"].as_i64(),
        sent.last().copied(),
        "{}",
        last["cursor"]
    );
    let want: Vec<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(sent, want[..sent.len()]);
}

/// How many services [`every_command_answers_at_thousands_of_services`] configures:
/// `UPK_TEST_SERVICES` or 3000 (10,000 works too and takes about a minute longer).
fn many() -> usize {
    std::env::var("UPK_TEST_SERVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn every_command_answers_at_thousands_of_services() {
    let n = many();
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    let mut text = String::from("{\n");
    for i in 0..n {
        text.push_str(&format!(
            "  \"svc{i:05}\": {{ ExecStart: \"sleep 1000\" }},\n"
        ));
    }
    text.push('}');
    // Added to a running controller: its first scan of thousands of services takes longer
    // than the testkit's wait for a controller to answer.
    let c = Controller::start(&sb, &ctl);
    service_file(&sb, "many.conf", &text);
    let mut root = c.client();
    root.set_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let t = Instant::now();
    wait_until(
        Duration::from_secs(60 + n as u64 / 50),
        "every buddy linked",
        || {
            let s = root.status(&[]).map_err(|e| e.to_string())?;
            let linked = s.iter().filter(|s| s.linked && s.status.is_some()).count();
            if linked == n {
                Ok(())
            } else {
                Err(format!("{linked} of {} linked", s.len()))
            }
        },
    );
    eprintln!("{n} services linked in {:?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(root.list().expect("list").len(), n);
    let status = root.status(&[]).expect("status");
    assert_eq!(status.len(), n);
    assert!(
        status.windows(2).all(|w| w[0].service < w[1].service),
        "id order"
    );
    let stats = root.stats(&[], None, None).expect("stats");
    assert_eq!(stats.len(), n);
    eprintln!("list, status and stats of {n} in {:?}", t.elapsed());
    // Those replies are larger than one protocol line, which is why they come in several.
    let mut raw = Client::connect(&c.socket);
    raw.send(&json!({"type": "status", "id": 5}));
    let mut size = 0;
    loop {
        let m = raw.recv().expect("a line");
        size += m.to_string().len();
        if m["more"] != true {
            break;
        }
    }
    assert!(size > upk_core::proto::MAX_LINE || n < 3000, "{size} bytes");
    still_serving_ref(&c);
}

fn still_serving_ref(c: &Controller) {
    let mut fresh = Client::connect(&c.socket);
    assert_eq!(
        fresh.call(json!({"type": "hello", "version": 1}))["type"],
        "hello"
    );
}

#[test]
fn a_request_naming_one_service_many_times_is_answered_once() {
    let (_sb, mut c) = controller_with_web();
    let mut raw = Client::connect(&c.socket);
    let names = vec!["web"; 150_000];
    let r = raw.call(json!({"type": "stats", "id": 1, "services": names}));
    assert_eq!(r["type"], "stats", "{r}");
    assert_eq!(r["stats"].as_array().map(Vec::len), Some(1));
    let r = raw.call(json!({"type": "status", "id": 2, "services": names}));
    assert_eq!(r["services"].as_array().map(Vec::len), Some(1));
    still_serving(&mut c);
}

/// The share of a core `pid` uses over about two seconds.
pub fn cpu_share(pid: u32) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    let wait = Duration::from_secs(2);
    wait_until(wait + Duration::from_secs(1), "two seconds", || {
        if t0.elapsed() >= wait {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    (cpu_ticks(pid) - c0) as f64 / tick / t0.elapsed().as_secs_f64()
}

/// Lowers `c`'s descriptor limit to 64 (prlimit) and runs it out of descriptors with 100
/// client connections (root is never capped); they are held until the result is dropped.
pub fn exhaust_descriptors(c: &Controller) -> Vec<std::os::unix::net::UnixStream> {
    let limited = Command::new("prlimit")
        .args([&format!("--pid={}", c.child.id()), "--nofile=64:64"])
        .status()
        .expect("prlimit");
    assert!(limited.success());
    (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&c.socket).expect("connect"))
        .collect()
}

#[test]
fn accept_at_the_descriptor_limit_does_not_spin() {
    let (_sb, mut c) = controller_with_web();
    let pid = c.child.id();
    let held = exhaust_descriptors(&c);
    let used = cpu_share(pid);
    assert!(
        used < 0.3,
        "the controller used {:.0}% of a core at its descriptor limit",
        used * 100.0
    );
    drop(held);
    // With descriptors free again, it serves at once.
    wait_until(Duration::from_secs(10), "a hello after the limit", || {
        libupkeeper::Client::connect_timeout(&c.socket, Duration::from_secs(2))
            .map(drop)
            .map_err(|e| e.to_string())
    });
    still_serving(&mut c);
}

/// The peak resident memory of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_client_that_does_not_read_pins_bounded_memory_and_is_served_when_it_reads() {
    let (_sb, c) = controller_with_web();
    // One audited command of about 300 KB makes every `audit` answer that large.
    let long = "x".repeat(100_000);
    let e = c.client().restart(&long).expect_err("not found");
    assert_eq!(e.code(), Some(libupkeeper::ErrorCode::NotFound));
    wait_until(Duration::from_secs(10), "the command audited", || {
        match c.client().audit(&libupkeeper::AuditQuery::default()) {
            Ok(rows) if !rows.is_empty() => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.len()))),
        }
    });
    // 300 `audit` requests at once, and no read for a while: about 90 MB of answers owed,
    // more than the memory bound below, far past the 8 MiB after which the client is not
    // served until it reads.
    let mut stream = std::os::unix::net::UnixStream::connect(&c.socket).expect("connect");
    std::io::Write::write_all(&mut stream, &b"{\"type\":\"audit\"}\n".repeat(300)).expect("write");
    let pid = c.child.id();
    let settled = Instant::now();
    wait_until(Duration::from_secs(5), "a second", || {
        if settled.elapsed() >= Duration::from_secs(1) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    let peak = peak_rss_kib(pid);
    assert!(
        peak < 64 * 1024,
        "the controller holds {peak} KiB for an unread client"
    );
    // Read at last: every answer comes, the controller serving as the client drains (a
    // bound for a loaded machine, where other tests run thousands of buddies beside it).
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(stream);
    let mut line = Vec::new();
    for i in 0..300 {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).expect("read");
        assert!(n > 100_000, "answer {i} is {n} bytes");
    }
    assert!(peak_rss_kib(pid) < 64 * 1024);
}

/// A local user whose command line is huge (1.6 MB, sixteen 100 kB arguments): its command
/// is carried out and audited with the first 64 KiB of that command line, and the controller
/// goes on serving.
#[test]
fn a_client_with_a_huge_command_line_is_audited_with_a_bounded_one() {
    let (_sb, mut c) = controller_with_web();
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(b'{"type":"hello","version":1,"id":1}\n{"type":"start","service":"web","id":2}\n')
f = s.makefile("rb")
while True:
    m = json.loads(f.readline())
    if m.get("id") == 2:
        print(m["type"])
        break
"#;
    let huge = "x".repeat(100_000);
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&c.socket)
        .args(std::iter::repeat_n(&huge, 16))
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "done",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = c
        .client()
        .audit(&libupkeeper::AuditQuery::default())
        .expect("audit");
    let row = rows
        .iter()
        .find(|r| r.entry.service.as_deref() == Some("web") && r.entry.ok)
        .expect("the start audited");
    assert!(
        row.entry.cmdline.contains(" -c ") && row.entry.cmdline.ends_with("xxxx"),
        "the huge client's row: {}",
        &row.entry.cmdline[..80.min(row.entry.cmdline.len())]
    );
    assert!(
        row.entry.cmdline.len() <= 64 * 1024,
        "{} bytes of command line kept",
        row.entry.cmdline.len()
    );
    still_serving(&mut c);
}

/// libupkeeper sends its first request in the same write as `hello`: when the controller
/// refuses that `hello`, nothing after it may be served.
#[test]
fn a_refused_hello_ends_the_connection_and_what_followed_it_is_not_served() {
    let (sb, mut c) = controller_with_web();
    for hello in [
        json!({"type": "hello", "version": 999, "id": 1}),
        json!({"type": "hello", "version": 1, "origin": "x\u{7}".repeat(300), "id": 1}),
    ] {
        let mut raw = Client::raw(&c.socket);
        let mut lines = serde_json::to_vec(&hello).expect("json");
        lines.extend(b"\n{\"type\":\"start\",\"service\":\"web\",\"id\":2}\n");
        raw.send_raw(&lines);
        let refused = raw.recv().expect("an answer to the hello");
        assert_eq!(
            (refused["type"].as_str(), refused["id"].as_u64()),
            (Some("error"), Some(1)),
            "{refused}"
        );
        assert_eq!(raw.recv(), None, "the connection ends after the refusal");
    }
    // Nothing started web, and nothing audited a start.
    let rows = audit_after_a_marker(&c);
    assert!(
        rows.iter()
            .all(|r| r.entry.service.as_deref() != Some("web")),
        "{rows:?}"
    );
    assert_eq!(
        status(&sb, "web").and_then(|s| s.pid),
        None,
        "web never started"
    );
    still_serving(&mut c);
}

/// `queue` wraps one control request: a read request, a queue in a queue or no request at all
/// is a bad value (the connection stays open), and a queued start is answered `queued`.
#[test]
fn a_queue_holds_one_control_request_and_nothing_else() {
    let (sb, mut c) = controller_with_web();
    let mut raw = Client::connect(&c.socket);
    let start = json!({"type": "start", "service": "web"});
    for (i, request) in [
        json!({"type": "list"}),
        json!({"type": "queue", "request": start}),
        json!({"type": "hello", "version": 1}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = raw.call(json!({"type": "queue", "id": i, "request": request}));
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("bad_value")),
            "{request}: {r}"
        );
    }
    let r = raw.call(json!({"type": "queue", "id": 7, "request": start}));
    assert_eq!(
        (r["type"].as_str(), r["service"].as_str()),
        (Some("queued"), Some("web")),
        "{r}"
    );
    wait_until(Duration::from_secs(10), "web running", || {
        match status(&sb, "web") {
            Some(s) if s.state == upk_core::event::StateName::Running => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let r = raw.call(json!({"type": "queue", "id": 8}));
    assert_eq!(r["code"], "invalid", "a queue without a request: {r}");
    still_serving(&mut c);
}

/// Sends SIGCONT to a stopped process when dropped, so that a failing test leaves none.
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A buddy that does not answer (here, stopped) holds at most 64 commands in flight: more are
/// answered `unavailable` at once, and `--no-block` callers cannot pile them up either. Once it
/// answers again, every command taken is carried out and audited.
#[test]
fn commands_in_flight_to_a_buddy_that_does_not_answer_are_bounded() {
    let (sb, mut c) = controller_with_web();
    let buddy = status(&sb, "web").expect("a status").buddy_pid;
    let stopped = Stopped(nix::unistd::Pid::from_raw(buddy));
    nix::sys::signal::kill(stopped.0, nix::sys::signal::Signal::SIGSTOP).expect("stop the buddy");

    let mut raw = Client::connect(&c.socket);
    let mut lines = Vec::new();
    for id in 1..=70 {
        let queued =
            json!({"type": "queue", "id": id, "request": {"type": "start", "service": "web"}});
        lines.extend(serde_json::to_vec(&queued).expect("json"));
        lines.push(b'\n');
    }
    raw.send_raw(&lines);
    let replies: Vec<Value> = (0..70).map(|_| raw.recv().expect("a reply")).collect();
    let kinds = |kind: &str| replies.iter().filter(|r| r["type"] == kind).count();
    assert_eq!((kinds("queued"), kinds("error")), (64, 6), "{replies:?}");
    let refused = replies
        .iter()
        .find(|r| r["type"] == "error")
        .expect("an error");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("64 commands are in flight")),
        "{refused}"
    );
    // Other services are not held up by it.
    let r = raw.call(json!({"type": "start", "id": 71, "service": "no-such"}));
    assert_eq!(r["code"], "not_found", "{r}");

    drop(stopped);
    let rows = wait_until(Duration::from_secs(20), "70 commands audited", || {
        let rows = c
            .client()
            .audit(&libupkeeper::AuditQuery::default())
            .map_err(|e| e.to_string())?;
        let web: Vec<_> = rows
            .into_iter()
            .filter(|r| r.entry.service.as_deref() == Some("web"))
            .collect();
        match web.len() {
            70 => Ok(web),
            n => Err(format!("{n} rows")),
        }
    });
    assert_eq!(rows.iter().filter(|r| r.entry.ok).count(), 64, "{rows:?}");
    wait_until(Duration::from_secs(10), "web running", || {
        match status(&sb, "web") {
            Some(s) if s.state == upk_core::event::StateName::Running => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    still_serving(&mut c);
}
