//! Who may do what on the controller socket (SO_PEERCRED), and garbage on the socket.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use upk_testkit::Controller;

/// Creates (once) a group `upkread`, a user `upkreader` in it (supplementary) and a user
/// `upkother` in no such group; returns the uids.
pub(super) fn users() -> (u32, u32) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let run = |cmd: &str| {
            let args: Vec<&str> = cmd.split(' ').collect();
            let out = Command::new(args[0]).args(&args[1..]).output().expect(cmd);
            // "already exists" (9) is fine: the users outlive a test run.
            assert!(matches!(out.status.code(), Some(0 | 9)), "{cmd}: {out:?}");
        };
        run("groupadd -f upkread");
        run("useradd -M -N -g nogroup -G upkread -s /bin/false upkreader");
        run("useradd -M -N -g nogroup -s /bin/false upkother");
    });
    (
        upk_testkit::uid_of("upkreader"),
        upk_testkit::uid_of("upkother"),
    )
}

/// Runs `upk_probe` as `user` (with the groups of the user database) and returns the
/// replies, one JSON value per request line.
pub(super) fn probe_as(user: &str, socket: &Path, lines: &[&str]) -> Vec<Value> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            "--regid=nogroup",
            "--init-groups",
            "--",
        ])
        .arg(upk_testkit::bin("upk_probe"))
        .arg(socket)
        .args(lines)
        .output()
        .expect("setpriv upk_probe");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "closed", "write failed": the controller hung up, which is an answer too.
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[test]
fn a_reader_reads_and_subscribes_others_are_refused_and_refusals_are_audited() {
    let (reader_uid, other_uid) = users();
    let sb = Sandbox::new();
    let state = sb.path().join("state");
    let ctl = sb.path().join("upkeeper.conf");
    let text = format!(
        "{{ StateDir: {:?}, SvcConfigPath: {:?}, SvcRunPath: {:?}, UpkBuddyPath: {:?}, ReadGroup: \"upkread\" }}",
        state,
        sb.path().join("conf"),
        sb.run_path(),
        upk_testkit::bin("upk_buddy")
    );
    std::fs::write(&ctl, text).expect("controller file");
    service_file(
        &sb,
        "svc.conf",
        r#"{ "svc": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    );
    let c = Controller::start(&sb, &ctl);
    let pid = running(&sb, "svc").pid;

    let hello = r#"{"type":"hello","version":1}"#;
    let list = r#"{"type":"list","id":1}"#;
    let restart = r#"{"type":"restart","id":2,"service":"svc"}"#;
    let subscribe = r#"{"type":"subscribe","id":3}"#;
    let queued = r#"{"type":"queue","id":4,"request":{"type":"restart","service":"svc"}}"#;

    let r = probe_as(
        "upkreader",
        &c.socket,
        &[hello, list, restart, queued, subscribe],
    );
    assert_eq!(r[0]["access"], "read", "{r:?}");
    assert_eq!(r[1]["type"], "services", "{r:?}");
    assert_eq!(r[1]["services"][0]["service"], "svc");
    assert_eq!(
        (r[2]["type"].as_str(), r[2]["code"].as_str()),
        (Some("error"), Some("refused")),
        "{r:?}"
    );
    assert_eq!(
        r[3]["code"], "refused",
        "a queued command needs control too: {r:?}"
    );
    assert_eq!(r[4]["type"], "subscribed", "{r:?}");

    let r = probe_as("upkother", &c.socket, &[hello, list, restart]);
    assert_eq!(r[0]["access"], "none", "{r:?}");
    assert_eq!(r[1]["code"], "refused", "{r:?}");
    assert_eq!(r[2]["code"], "refused", "{r:?}");

    assert_eq!(running(&sb, "svc").pid, pid, "nobody restarted it");
    // Every refusal is audited with the caller's uid (past ten a minute, they are counted into
    // one summary row); reads that were allowed are not.
    let audit = wait_until(Duration::from_secs(10), "the refusals audited", || {
        let rows = c
            .client()
            .audit(&libupkeeper::AuditQuery::default())
            .map_err(|e| e.to_string())?;
        if rows.len() >= 4 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    let seen: Vec<(u32, String, bool)> = audit
        .iter()
        .map(|c| {
            let kind = c.entry.request["type"].as_str().unwrap_or("").to_owned();
            (c.entry.uid, kind, c.entry.ok)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (reader_uid, "restart".to_owned(), false),
            (reader_uid, "queue".to_owned(), false),
            (other_uid, "list".to_owned(), false),
            (other_uid, "restart".to_owned(), false),
        ]
    );
    assert!(audit
        .iter()
        .all(|c| c.entry.result.starts_with("refused") && c.entry.cmdline.contains("upk_probe")));
}

/// Reads one line from a raw connection (bounded by its read timeout).
fn line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    let _ = r.read_line(&mut l);
    l
}

#[test]
fn garbage_on_the_socket_closes_that_connection_and_the_controller_serves_others() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "svc.conf",
        r#"{ "svc": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    );
    let c = Controller::start(&sb, &ctl);
    running(&sb, "svc");
    let raw = || {
        let s = UnixStream::connect(&c.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        (s.try_clone().expect("clone"), BufReader::new(s))
    };
    // A client that sends half a line and stalls holds nobody up.
    let (mut stalled, _keep) = raw();
    stalled.write_all(br#"{"type":"li"#).expect("half a line");
    let mut patient = c.client();

    let (mut w, mut r) = raw();
    w.write_all(b"this is not json\n").expect("garbage");
    let reply: Value = serde_json::from_str(&line(&mut r)).expect("an error reply");
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("invalid"))
    );
    assert_eq!(line(&mut r), "", "then the connection is closed");

    let (mut w, mut r) = raw();
    w.write_all(br#"{"type":"explode","id":1}"#)
        .expect("unknown type");
    w.write_all(b"\n").expect("newline");
    let reply: Value = serde_json::from_str(&line(&mut r)).expect("an error reply");
    assert_eq!(reply["code"], "invalid", "{reply}");

    let (mut w, mut r) = raw();
    let big = vec![b'x'; upk_core::proto::MAX_LINE + 10];
    // The controller may close before reading it all; what it said is what counts.
    let _ = w.write_all(&big);
    let reply: Value = serde_json::from_str(&line(&mut r)).expect("an error reply");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .contains("longer than"),
        "{reply}"
    );

    // Binary noise, then a hang-up mid-line.
    let (mut w, _r) = raw();
    let _ = w.write_all(&[0xff, 0x00, 0x13, b'\n', 0x80]);
    drop(w);

    // Everyone else is still served, old connections and new ones.
    assert_eq!(patient.list().expect("list on an old connection").len(), 1);
    assert_eq!(
        c.client().status(&["svc"]).expect("a new connection").len(),
        1
    );
}

#[test]
fn a_buddy_phoning_home_is_stored_and_acknowledged_but_only_from_the_controllers_uid() {
    users();
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    let c = Controller::start(&sb, &ctl);
    let db = sb.path().join("state/upkeeper.db");
    let hello = r#"!{"type":"hello","version":1,"service":"phoned","buddy_pid":4242}"#;
    let event = |seq: u64| {
        format!(
            r#"{{"type":"event","record":{{"seq":{seq},"wall_us":1,"mono_us":1,"from":"stopped","to":"stopped","pid":4242,"cause":"startup","kind":"buddy_started","buddy_pid":4242}}}}"#
        )
    };
    // The controller acknowledges once the store has committed.
    let out = std::process::Command::new(upk_testkit::bin("upk_probe"))
        .arg(&c.socket)
        .args([hello, &event(1)])
        .output()
        .expect("upk_probe");
    let ack: Value = serde_json::from_slice(&out.stdout).expect("an ack");
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(1)),
        "{ack}"
    );
    assert_eq!(stored(&db, Some("phoned")).len(), 1);

    // Someone else pretending to be a buddy is dropped, and nothing is stored.
    let r = probe_as("upkother", &c.socket, &[hello, &event(2)]);
    assert!(r.is_empty(), "no answer: {r:?}");
    assert_eq!(stored(&db, Some("phoned")).len(), 1);
}

#[test]
fn a_client_that_stops_sending_still_gets_the_answers_it_is_owed() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "svc.conf",
        r##"{ "svc": { ExecStart: "sleep 1000", InitialState: "running",
                      CustomActions: { "slow": "#!/bin/sh\nsleep 0.3\n" } } }"##,
    );
    let c = Controller::start(&sb, &ctl);
    running(&sb, "svc");
    // As `echo ... | socat - UNIX-CONNECT:...` does: send, then end the input at once.
    let mut s = UnixStream::connect(&c.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"{\"type\":\"hello\",\"version\":1}\n{\"type\":\"action\",\"id\":1,\"service\":\"svc\",\"name\":\"slow\"}\n")
        .expect("requests");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let replies: Vec<Value> = BufReader::new(s)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("a line before the close")).expect("JSON"))
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[1]["type"], "action_done", "{replies:?}");
    // And the controller goes on serving.
    assert_eq!(c.client().list().expect("list").len(), 1);
}
