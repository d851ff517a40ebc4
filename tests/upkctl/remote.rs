//! `upkctl -H` over a real ssh (docs/remote.md): an OpenSSH `sshd` started by the test on a
//! free loopback port, with its own configuration, host key and authorized keys in the
//! sandbox, and users made for it; the client is the real `ssh` with a key made by the test.
//! The remote side is this host, so the remote controller is the sandbox's.
//!
//! Needs root (sshd switches to the users) and openssh-server and openssh-client (.ci/run
//! installs them): without them the tests fail under CI=true as root, and say why they skip
//! otherwise.

use super::*;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;

/// The user the tests log in as: a member of the controller's ControlGroup.
const USER: &str = "upkssh";
/// A user who may log in but has no access to the controller.
const NOBODY: &str = "upksshno";
/// The group that gives control access.
const GROUP: &str = "upkremote";

const SSHD: &str = "/usr/sbin/sshd";

const SERVICES: &str = r#"{ "web": { ExecStart: "sleep 1000", InitialState: "running" } }"#;

/// Whether the tests can run here; `None` with the reason printed when they may skip. Under
/// CI as root, missing programs are a failure.
fn can_run() -> Option<()> {
    let root = nix::unistd::geteuid().is_root();
    let missing: Vec<&str> = [SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if missing.is_empty() && root {
        return Some(());
    }
    let why = if missing.is_empty() {
        "not root: sshd must run as root to log in as the test's users".to_owned()
    } else {
        format!(
            "{} missing: install openssh-server and openssh-client (.ci/run does)",
            missing.join(", ")
        )
    };
    assert!(!(ci && root), "remote tests cannot run: {why}");
    eprintln!("skipped: {why}");
    None
}

/// Creates (once) the group and the two users, with a shell (ssh runs the command through it)
/// and a password field sshd does not take for a locked account.
fn users() -> (u32, u32) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let run = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .expect("run");
            // "already exists" (9) is fine: the users outlive a test run.
            assert!(
                matches!(out.status.code(), Some(0 | 9)),
                "{args:?}: {out:?}"
            );
        };
        run(&["groupadd", "-f", GROUP]);
        run(&[
            "useradd", "-M", "-N", "-g", "nogroup", "-G", GROUP, "-s", "/bin/sh", USER,
        ]);
        run(&[
            "useradd", "-M", "-N", "-g", "nogroup", "-s", "/bin/sh", NOBODY,
        ]);
        for user in [USER, NOBODY] {
            run(&["usermod", "-s", "/bin/sh", "-p", "*", user]);
        }
    });
    (upk_testkit::uid_of(USER), upk_testkit::uid_of(NOBODY))
}

/// A loopback port nobody listens on (bound, then freed).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "upk-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// A running sshd of the sandbox, and the ssh wrappers that reach it.
struct Sshd {
    child: Child,
    port: u16,
    /// `ssh` with the authorized key and the sandbox's known_hosts.
    ssh: PathBuf,
    /// The same with a key sshd does not know.
    ssh_bad_key: PathBuf,
    log: PathBuf,
}

impl Sshd {
    fn start(w: &World) -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let dir = w.file("ssh");
        std::fs::create_dir(&dir).expect("mkdir ssh");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for key in ["host_key", "client_key", "other_key"] {
            keygen(&dir.join(key));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        std::fs::set_permissions(
            dir.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin no\nAllowUsers {USER} {NOBODY}\nLogLevel VERBOSE\n",
                dir.join("host_key").display(),
                dir.join("authorized_keys").display(),
            ),
        )
        .expect("sshd_config");
        let log = dir.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .env(MARKER, w.sb.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn sshd");
        let mut sshd = Sshd {
            child,
            port,
            ssh: dir.join("ssh.sh"),
            ssh_bad_key: dir.join("ssh-bad-key.sh"),
            log,
        };
        for (wrapper, key) in [(&sshd.ssh, "client_key"), (&sshd.ssh_bad_key, "other_key")] {
            upk_testkit::write_script(
                wrapper,
                &format!(
                    "#!/bin/sh\nexec ssh -F /dev/null -i {} -o IdentitiesOnly=yes \
                     -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
                     -o StrictHostKeyChecking=accept-new \"$@\"\n",
                    dir.join(key).display(),
                    dir.join("known_hosts").display()
                ),
            );
        }
        wait_until(Duration::from_secs(10), "sshd listening", || {
            if let Ok(Some(st)) = sshd.child.try_wait() {
                panic!("sshd exited with {st}: {}", sshd.log_text());
            }
            TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        sshd
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn dest(&self, user: &str) -> String {
        format!("{user}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world whose controller gives control to `GROUP`, with `web` running.
fn world() -> World {
    let mut w = World::offline(&[("app.conf", SERVICES)]);
    let text = std::fs::read_to_string(&w.ctl).expect("controller file");
    let text = text.replacen('{', &format!("{{ ControlGroup: {GROUP:?},"), 1);
    std::fs::write(&w.ctl, text).expect("controller file");
    w.start(&["web"]);
    w
}

/// `upkctl --config CTL -H DEST --ssh WRAPPER --remote-upkctl UPKCTL ARGS...`.
fn remote(w: &World, dest: &str, ssh: &Path, args: &[&str]) -> Out {
    let upkctl = bin("upkctl");
    let mut all = vec!["-H", dest, "--ssh"];
    all.push(ssh.to_str().expect("utf-8 path"));
    all.extend(["--remote-upkctl", upkctl.to_str().expect("utf-8 path")]);
    all.extend(args);
    w.upkctl(&all)
}

#[test]
fn status_and_a_restart_over_ssh_are_the_ssh_users_and_audited_with_their_origin() {
    if can_run().is_none() {
        return;
    }
    let (uid, _) = users();
    let w = world();
    let sshd = Sshd::start(&w);
    let dest = sshd.dest(USER);

    let out = remote(&w, &dest, &sshd.ssh, &["status"]);
    out.expect(code::OK);
    assert_eq!(
        row(&out.stdout, "web")[1],
        "running",
        "{out:#?}\n{}",
        sshd.log_text()
    );
    let json = remote(&w, &dest, &sshd.ssh, &["--json", "status"]).json();
    assert_eq!(json["controller"], true, "the controller answered: {json}");

    let before = w.running("web").pid;
    remote(&w, &dest, &sshd.ssh, &["restart", "web", "--wait"]).expect(code::OK);
    let after = w.running("web").pid;
    assert_ne!(before, after, "restarted");

    // The command is the ssh user's (the bridge's peer credentials), with where it came from.
    let audit = remote(&w, &dest, &sshd.ssh, &["--json", "audit"]);
    let rows = audit.expect(code::OK).json_lines();
    let restart = rows
        .iter()
        .find(|r| r["request"]["type"] == "restart")
        .unwrap_or_else(|| panic!("no restart in {rows:#?}"));
    assert_eq!(restart["uid"], uid, "{restart}");
    assert_eq!(restart["ok"], true, "{restart}");
    let origin = restart["origin"].as_str().unwrap_or_default();
    assert!(origin.starts_with("ssh 127.0.0.1:"), "{restart}");
    assert!(
        restart["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("upkctl") && c.ends_with("bridge")),
        "{restart}"
    );
    // Shown in the text too, by uid (the name would be looked up on this side).
    let text = remote(&w, &dest, &sshd.ssh, &["audit"]);
    let line = text
        .lines()
        .into_iter()
        .find(|l| l.contains("restart web"))
        .unwrap_or_else(|| panic!("{text:#?}"))
        .to_owned();
    assert!(line.contains(&format!("uid {uid}")), "{line}");
    assert!(line.contains(&format!("via {origin}")), "{line}");
    // A local command of the same controller has no origin.
    w.upkctl(&["restart", "web"]).expect(code::OK);
    let local = w.upkctl(&["--json", "audit"]).json_lines();
    let last = local.last().expect("rows");
    assert!(last.get("origin").is_none(), "{last}");
    no_bridge_left(&w);
}

/// A subscription streams through ssh, and ending the local upkctl ends the remote bridge.
#[test]
fn watch_streams_over_ssh_and_leaves_no_bridge_behind() {
    if can_run().is_none() {
        return;
    }
    users();
    let w = world();
    let sshd = Sshd::start(&w);
    let upkctl = bin("upkctl");
    let dest = sshd.dest(USER);
    let ssh = sshd.ssh.to_str().expect("utf-8");
    let remote_upkctl = upkctl.to_str().expect("utf-8");
    let common = ["-H", &dest, "--ssh", ssh, "--remote-upkctl", remote_upkctl];
    let once: Vec<&str> = common
        .iter()
        .copied()
        .chain(["watch", "--count", "1", "web"])
        .collect();
    let mut counted = w.spawn(&once);
    counted.complained("watching");
    w.upkctl(&["restart", "web"]).expect(code::OK);
    counted.said("web");
    assert_eq!(counted.wait_exit(), code::OK);

    // One that would run for ever, ended from here: the bridge there goes with it.
    let endless: Vec<&str> = common.iter().copied().chain(["watch", "web"]).collect();
    let mut endless = w.spawn(&endless);
    endless.complained("watching");
    assert!(!bridges(&w).is_empty(), "a bridge serves the watch");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(endless.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    endless.wait_exit();
    no_bridge_left(&w);
}

/// The pids of the processes carrying a `upkctl bridge` of this sandbox's controller file
/// (sshd does not pass the sandbox's marker on, so they are found by their command line).
fn bridges(w: &World) -> Vec<i32> {
    let ctl = w.ctl.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            // The bridge, the remote shell that runs it, and ssh: each names it last.
            let cmd = upk_testkit::cmdline(pid);
            cmd.contains(&ctl) && cmd.trim_end().ends_with(" bridge")
        })
        .filter(|&pid| !upk_testkit::is_dead(pid))
        .collect()
}

/// Waits (bounded) until no bridge of this sandbox runs.
fn no_bridge_left(w: &World) {
    wait_until(
        Duration::from_secs(10),
        "the remote bridges to end",
        || match bridges(w) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?}")),
        },
    );
}

#[test]
fn a_user_without_access_is_refused_over_ssh_as_locally() {
    if can_run().is_none() {
        return;
    }
    let (_, nobody) = users();
    let w = world();
    let sshd = Sshd::start(&w);
    let pid = w.running("web").pid;

    let there = remote(&w, &sshd.dest(NOBODY), &sshd.ssh, &["stop", "web"]);
    there.fails(code::REFUSED, &format!("web: uid {nobody} may not stop"));
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        "--regid=nogroup",
        "--init-groups",
        "--",
    ])
    .arg(bin("upkctl"))
    .arg("--config")
    .arg(&w.ctl)
    .args(["stop", "web"]);
    let here = w.run_cmd(cmd);
    assert_eq!(here.code, there.code, "{here:#?}\n{there:#?}");
    assert_eq!(here.stderr, there.stderr, "the same refusal");
    remote(&w, &sshd.dest(NOBODY), &sshd.ssh, &["status"]).fails(code::REFUSED, "may not status");
    assert_eq!(w.running("web").pid, pid, "nobody stopped it");
}

#[test]
fn ssh_failing_is_one_sentence_and_the_unreachable_code_in_bounded_time() {
    if can_run().is_none() {
        return;
    }
    users();
    let w = world();
    let sshd = Sshd::start(&w);
    let t = Instant::now();

    // Nothing listens there.
    let closed = format!("{USER}@127.0.0.1:{}", free_port());
    remote(&w, &closed, &sshd.ssh, &["status"])
        .fails(code::UNREACHABLE, "ssh.sh exited with status 255")
        .fails(code::UNREACHABLE, "Connection refused");
    // A key sshd does not know.
    remote(&w, &sshd.dest(USER), &sshd.ssh_bad_key, &["status"])
        .fails(code::UNREACHABLE, "exited with status 255")
        .fails(code::UNREACHABLE, "Permission denied");
    // No upkctl where it is looked for on the host.
    let mut cmd = Command::new(bin("upkctl"));
    cmd.arg("--config")
        .arg(&w.ctl)
        .args([
            "-H",
            &sshd.dest(USER),
            "--remote-upkctl",
            "/nonexistent/upkctl",
        ])
        .arg("status")
        .env("UPKCTL_SSH", &sshd.ssh);
    w.run_cmd(cmd)
        .fails(code::UNREACHABLE, "exited with status 127")
        .fails(code::UNREACHABLE, "/nonexistent/upkctl");
    // The host's controller is not running: what the bridge said there, and no local store
    // or status files read instead.
    let down = w.file("down.conf");
    std::fs::write(
        &down,
        format!(
            "{{ StateDir: {:?}, SvcRunPath: {:?} }}",
            w.file("nostate"),
            w.sb.run_path()
        ),
    )
    .expect("controller file");
    std::fs::set_permissions(&down, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let upkctl = bin("upkctl");
    let args = |cmd: &'static str| {
        let mut c = Command::new(&upkctl);
        c.arg("--config")
            .arg(&down)
            .args(["-H", &sshd.dest(USER), "--ssh"])
            .arg(&sshd.ssh)
            .arg("--remote-upkctl")
            .arg(&upkctl)
            .arg(cmd);
        c
    };
    w.run_cmd(args("status"))
        .fails(code::UNREACHABLE, "exited with status 4")
        .fails(code::UNREACHABLE, "cannot reach the controller at");
    w.run_cmd(args("history")).fails(
        code::UNREACHABLE,
        "with -H the history needs the controller on",
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    // Commands that read this host's files say so.
    remote(&w, &sshd.dest(USER), &sshd.ssh, &["logs", "web"])
        .fails(code::USAGE, "does not work with -H");
}

#[test]
fn a_host_that_would_be_an_ssh_option_is_refused_before_ssh_runs() {
    let w = World::offline(&[]);
    let marker = w.file("ran");
    let ssh = script(&w, "ssh.sh", &format!("touch {}\n", marker.display()));
    let out = w.upkctl(&[
        "-H=-oProxyCommand=sh",
        "--ssh",
        ssh.to_str().expect("utf-8"),
        "status",
    ]);
    out.fails(code::USAGE, "a host cannot begin with '-'");
    assert!(!marker.exists(), "ssh was not run");
}

/// The origin enters the controller bounded and printable; a hello without one is as before.
#[test]
fn an_origin_too_long_or_unprintable_is_refused_by_the_controller() {
    let w = World::new(&[("app.conf", SERVICES)], &["web"]);
    let socket = w.controller.as_ref().expect("running").socket.clone();
    for bad in [
        "x".repeat(129),
        "ssh 1.2.3.4:5\u{1}".to_owned(),
        "caf\u{e9}".to_owned(),
    ] {
        let mut c = upk_testkit::Client::raw(&socket);
        let reply =
            c.call(serde_json::json!({"type": "hello", "version": 1, "id": 1, "origin": bad}));
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_value")),
            "{reply}"
        );
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains("origin")),
            "{reply}"
        );
    }
    let mut c = upk_testkit::Client::raw(&socket);
    let ok = c.call(
        serde_json::json!({"type": "hello", "version": 1, "id": 1, "origin": "ssh 10.0.0.1:22"}),
    );
    assert_eq!(ok["type"], "hello", "{ok}");
    let ok = upk_testkit::Client::connect(&socket);
    drop(ok);
}
