//! The loop's parts never wait for the store's writer thread: with the writer held busy (a job
//! that does not return until the test lets it, standing for a transaction of 100,000 items),
//! the fleet applies a configuration and records a desired state, and the server answers
//! `list`; what was queued is committed once the writer is free, and its commit is reported
//! with the ticket the loop was given.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use upk_core::status::Want;
use upkeeper::desired::Desired;
use upkeeper::fleet::Fleet;
use upkeeper::render::Renderer;
use upkeeper::server::{Policy, Server};
use upkeeper::store::{Store, StoreWriter};

/// How long the writer is held at most: a loop that waited for it would take this long.
const HOLD: Duration = Duration::from_secs(30);

#[test]
fn the_fleet_and_the_server_go_on_while_the_writer_is_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in ["state", "conf", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let conf = root.join("upkeeper.conf");
    std::fs::write(
        &conf,
        format!(
            "{{ StateDir: {:?}, SvcConfigPath: {:?}, SvcRunPath: {:?}, UpkBuddyPath: {:?} }}",
            root.join("state"),
            root.join("conf"),
            root.join("run"),
            root.join("no-buddy-here"),
        ),
    )
    .expect("controller file");
    std::fs::write(
        root.join("conf/svc.conf"),
        r#"{ "web": { ExecStart: "sleep 1000" }, "db": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("service file");
    let ctl = upk_core::config::load_controller(&conf).expect("controller");
    let renderer = Renderer::builtin();
    let db = root.join("state/upkeeper.db");

    let (writer, outcomes) = StoreWriter::spawn_with_channel(&db).expect("writer");
    let reader = Store::open_read_only(&db).expect("reader");
    let desired = Desired::new(reader.desired_all().expect("desired states"));

    // Hold the writer: nothing queued after this runs until `release`, or HOLD has passed (so
    // that a part that waits for the writer fails the test instead of hanging it).
    let (release, held) = mpsc::channel::<()>();
    writer
        .post(move |_| {
            let _ = held.recv_timeout(HOLD);
        })
        .expect("post");
    let started = Instant::now();

    let mut fleet = Fleet::new(&ctl, &renderer, writer, desired);
    fleet.apply(upkeeper::load::scan(&ctl)).expect("apply");
    assert_eq!(
        fleet.members.keys().collect::<Vec<_>>(),
        ["db", "web"],
        "configured without the store"
    );
    let ticket = fleet.set_desired("web", Want::Up).expect("queued");
    assert_eq!(fleet.desired.of("web"), Some(Want::Up), "in memory at once");
    assert_eq!(fleet.desired.of("db"), Some(Want::Up), "its InitialState");

    let policy = Policy {
        own_uid: nix::unistd::geteuid().as_raw(),
        control_group: None,
        read_group: None,
    };
    let mut server = Server::new(policy, reader);
    let (near, far) = UnixStream::pair().expect("pair");
    server.accept(near);
    let token = server.fds().map(|(t, _, _)| t).next().expect("a client");
    (&far)
        .write_all(b"{\"type\":\"list\",\"id\":1}\n")
        .expect("send list");
    let intents = server.ready(token, &fleet);
    assert!(intents.is_empty(), "a read needs nothing of the loop");
    far.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(&far)
        .read_line(&mut line)
        .expect("list answered");
    let reply: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(reply["type"], "services", "{reply}");
    assert_eq!(
        reply["services"].as_array().map(Vec::len),
        Some(2),
        "{reply}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < HOLD / 2,
        "the fleet and the server waited {elapsed:?} for the writer"
    );

    // Free the writer: the queued work commits, and the desired state's ticket is reported.
    release.send(()).expect("release");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = outcomes
            .recv_timeout(left)
            .expect("the desired state's outcome");
        if outcome.tickets.contains(&ticket) {
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            break;
        }
    }
    let check = Store::open_read_only(&db).expect("check");
    assert_eq!(check.desired("web").expect("web"), Some(Want::Up));
    assert_eq!(check.desired("db").expect("db"), Some(Want::Up));
}
