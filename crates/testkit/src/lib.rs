//! Fixtures for upkeeper's black-box tests: a private world per test, the real binaries, and
//! waits that are always bounded.
//!
//! A [`Sandbox`] is a fresh directory under `/tmp` (short, so socket paths stay under 108
//! bytes) holding run directories, configuration and sockets. Every process a test starts gets
//! `UPK_SANDBOX=<dir>` in its environment, which the buddy passes on to services, loggers and
//! scripts; dropping the sandbox SIGKILLs every process carrying its marker and reaps it, so a
//! failing test leaves nothing running even though buddies and services call `setsid`. The test
//! process makes itself a child subreaper so orphans come back to it to be reaped.
//!
//! [`wait_until`] is the only way tests wait: it polls a condition with a deadline and fails
//! with the last thing it saw.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};
use upk_core::config;
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::Status;

/// The environment variable that marks a sandbox's processes.
pub const MARKER: &str = "UPK_SANDBOX";

/// The uid of the local user `name`, which the test made (panics when there is none).
pub fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name)
        .expect("lookup")
        .unwrap_or_else(|| panic!("no user {name}"))
        .uid
        .as_raw()
}

/// Polls `probe` every few milliseconds until it returns `Some`, for at most `timeout`.
/// On timeout it panics with `what` and the last observation `probe` described.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let end = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= end => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Path of a workspace binary built next to the test executable. `UPK_TEST_BUDDY` names another
/// `upk_buddy` to test (the musl build that ships: `bench/README.md`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("UPK_TEST_BUDDY").filter(|_| name == "upk_buddy") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// A private world for one test.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A new empty sandbox.
    pub fn new() -> Sandbox {
        become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("upk-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        for sub in ["run", "conf", "files"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Sandbox { dir }
    }

    /// The sandbox's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `SvcRunPath` of the sandbox.
    pub fn run_path(&self) -> PathBuf {
        self.path().join("run")
    }
    /// Where a test's own files go (pid files, stamps).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join("files").join(name)
    }
    /// Writes `upkeeper.conf` for a controller living in this sandbox (state in `state/`,
    /// service files in `conf/`, run directories in `run/`, the workspace's buddy) and
    /// returns its path.
    pub fn controller_file(&self) -> PathBuf {
        let path = self.path().join("upkeeper.conf");
        let text = format!(
            "{{ StateDir: {:?}, SvcConfigPath: {:?}, SvcRunPath: {:?}, UpkBuddyPath: {:?} }}",
            self.path().join("state"),
            self.path().join("conf"),
            self.run_path(),
            bin("upk_buddy")
        );
        std::fs::write(&path, text).expect("controller file");
        path
    }

    /// The controller key `Cgroup` of this sandbox's instances (the default for its
    /// `SvcRunPath`): services' cgroups are under it, and dropping the sandbox removes it.
    pub fn cgroup_name(&self) -> String {
        config::default_cgroup(&self.run_path())
    }

    /// The unified-hierarchy directory of service `id`'s cgroup, where this host has one.
    pub fn cgroup_dir(&self, id: &str) -> Option<PathBuf> {
        let base = upk_core::cgroup::Hierarchies::of_self().unified?;
        Some(base.join(self.cgroup_name()).join(id))
    }

    /// The socket a buddy phones home to.
    pub fn controller_socket(&self) -> PathBuf {
        self.path().join("ctl.sock")
    }

    /// Parses one service entry (`body` is the JSON5 object of its keys), renders it, and
    /// returns its run directory. `KillTimeout` defaults to 2 s here to keep tests short.
    pub fn service(&self, id: &str, body: &str) -> RunDir {
        let text = format!("{{ {id:?}: {body} }}");
        let file = self.path().join("conf").join(format!("{id}.conf"));
        std::fs::write(&file, &text).expect("write service file");
        let defaults = config::parse_controller("{ ServiceDefaults: { KillTimeout: 2 } }", &file)
            .expect("test defaults")
            .service_defaults;
        let mut services = config::parse_services(&text, &file, &defaults)
            .unwrap_or_else(|e| panic!("service {id} does not validate:\n{e}"));
        let svc = services.remove(0);
        let settings = Settings {
            service: svc.clone(),
            controller_socket: self.controller_socket(),
            polling_interval: 0.5,
            cgroup: Some(format!("{}/{id}", self.cgroup_name())),
            config_hash: None,
        };
        upk_config::render::Renderer::builtin()
            .render(&svc, &self.run_path(), &settings)
            .expect("render")
    }

    /// Starts `upk_buddy` on `dir` and waits until it answers on its socket.
    pub fn buddy(&self, dir: &RunDir) -> Buddy {
        self.buddy_with_env(dir, &[])
    }

    /// [`Sandbox::buddy`] with more variables in the buddy's environment (as an init system
    /// or the controller would leave them).
    pub fn buddy_with_env(&self, dir: &RunDir, env: &[(&str, &str)]) -> Buddy {
        let child = Command::new(bin("upk_buddy"))
            .arg(dir.root())
            .current_dir(self.path())
            .envs(env.iter().copied())
            .env(MARKER, self.path())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upk_buddy");
        let b = Buddy {
            child,
            dir: dir.clone(),
        };
        // A `hello` answer means start-up is over (the socket is bound a little earlier).
        wait_until(Duration::from_secs(10), "the buddy to answer hello", || {
            let mut s = UnixStream::connect(dir.socket()).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"{\"type\":\"hello\",\"version\":1}\n")
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(s)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if line.contains("\"hello\"") {
                Ok(())
            } else {
                Err(line)
            }
        });
        b
    }

    /// Every live (non-zombie) process of this sandbox whose command line contains `needle`.
    pub fn processes(&self, needle: &str) -> Vec<i32> {
        marked(self.path())
            .into_iter()
            .filter(|&pid| upk_core::status::process_state(pid).is_some_and(|s| s != 'Z'))
            .filter(|&pid| cmdline(pid).contains(needle))
            .collect()
    }

    /// The buddies running in this sandbox: `upk_buddy` processes whose parent is not a
    /// buddy (a service a buddy is starting carries the buddy's command line until its exec).
    pub fn buddies(&self) -> Vec<i32> {
        self.processes("upk_buddy")
            .into_iter()
            .filter(|&pid| {
                let ppid = upk_core::procfs::Stat::of(pid).map(|s| s.ppid);
                !ppid.is_some_and(|p| cmdline(p).contains("upk_buddy"))
            })
            .collect()
    }
}

/// A controller (`upkeeper run`) of a sandbox, with its stderr lines on a channel; killed
/// (SIGKILL) when dropped.
pub struct Controller {
    /// The process.
    pub child: Child,
    /// Its client socket.
    pub socket: PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Controller {
    /// Starts `upkeeper --config CTL run` and waits until it serves its socket (the socket
    /// is `StateDir/upkeeper.sock`, `StateDir` as in [`Sandbox::controller_file`] unless
    /// `state_dir` says otherwise).
    pub fn start(sb: &Sandbox, ctl: &Path) -> Controller {
        Controller::start_with_state(sb, ctl, &sb.path().join("state"))
    }

    /// [`Controller::start`] for a controller file whose `StateDir` is `state_dir`.
    pub fn start_with_state(sb: &Sandbox, ctl: &Path, state_dir: &Path) -> Controller {
        let socket = state_dir.join("upkeeper.sock");
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(bin("upkeeper"))
            .args(["--config", ctl.to_str().expect("utf8"), "run"])
            .env(MARKER, sb.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("upkeeper run");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let c = Controller {
            child,
            socket,
            lines,
        };
        wait_until(Duration::from_secs(10), "the controller's socket", || {
            libupkeeper::Client::connect(&c.socket)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        c
    }

    /// A client connection (libupkeeper), with replies bounded to 20 s.
    pub fn client(&self) -> libupkeeper::Client {
        let mut c = libupkeeper::Client::connect(&self.socket).expect("connect to the controller");
        c.set_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        c
    }

    /// The next stderr line containing `needle`, within 10 s.
    pub fn said(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("upkeeper never said {needle:?}; it said {seen:#?}");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let victims = marked(self.path());
        for &pid in &victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let end = Instant::now() + Duration::from_secs(5);
        for &pid in &victims {
            while Instant::now() < end {
                // Ours (or re-parented to us): reap. Not ours: wait for whoever reaps it.
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
                if upk_core::status::process_state(pid).is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        remove_cgroups(&self.cgroup_name());
    }
}

/// Removes the cgroup subtree `name` (leaves first) from every hierarchy; its processes are
/// gone by now, so each directory is empty of them.
fn remove_cgroups(name: &str) {
    let h = upk_core::cgroup::Hierarchies::of_self();
    let bases = h.unified.iter().chain(h.v1.iter().map(|(_, d)| d));
    for base in bases {
        let root = base.join(name);
        if !root.is_dir() {
            continue;
        }
        let mut dirs: Vec<PathBuf> = walk_dirs(&root);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            // A member may take a moment to leave after SIGKILL.
            let end = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(&d).is_err() && Instant::now() < end && d.exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// Pids whose initial environment carries this sandbox's marker.
fn marked(root: &Path) -> Vec<i32> {
    let needle = format!("{MARKER}={}", root.display());
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// `/proc/PID/cmdline` with spaces for NULs.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// True when `pid` is gone or a zombie.
pub fn is_dead(pid: i32) -> bool {
    upk_core::status::process_state(pid).is_none_or(|s| s == 'Z')
}

/// A running buddy.
pub struct Buddy {
    /// The process.
    pub child: Child,
    /// Its run directory.
    pub dir: RunDir,
}

impl Buddy {
    /// The buddy's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// A new client connection (after `hello`).
    pub fn client(&self) -> Client {
        Client::connect(&self.dir.socket())
    }
    /// Sends one request on a fresh connection and returns the reply.
    pub fn call(&self, request: Value) -> Value {
        self.client().call(request)
    }
    /// The status file.
    pub fn status(&self) -> Status {
        read_status(&self.dir)
    }
    /// Waits until the status file satisfies `pred`.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        wait_until(Duration::from_secs(10), what, || {
            let s = read_status(&self.dir);
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
    }
    /// Waits for the buddy process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = &mut self.child;
        wait_until(timeout, "the buddy to exit", || match child.try_wait() {
            Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
            Ok(None) => Err("still running".into()),
            Err(e) => Err(e.to_string()),
        })
    }
    /// All records the buddy holds (unacknowledged), via `events`.
    pub fn records(&self) -> Vec<Value> {
        let r = self.call(serde_json::json!({"type": "events", "after": 0}));
        r["records"].as_array().cloned().unwrap_or_default()
    }
    /// Waits until the held records contain one of `kind` satisfying `pred`; returns it.
    pub fn wait_record(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(10), &format!("a {kind} record"), || {
            let recs = self.records();
            recs.iter()
                .find(|r| r["kind"] == kind && pred(r))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        recs.iter().map(|r| r["kind"].clone()).collect::<Vec<_>>()
                    )
                })
        })
    }
}

/// Reads a run directory's status file (it must exist).
pub fn read_status(dir: &RunDir) -> Status {
    Status::read(&dir.status())
        .expect("status readable")
        .expect("status file exists")
}

/// A line-protocol client on a unix socket.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects and exchanges `hello`.
    pub fn connect(path: &Path) -> Client {
        let mut c = Client::raw(path);
        let hello = c.call(serde_json::json!({"type": "hello", "version": 1}));
        assert_eq!(hello["type"], "hello", "{hello}");
        c
    }
    /// Connects without `hello`.
    pub fn raw(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }
    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }
    /// Sends one message.
    pub fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).expect("json");
        line.push(b'\n');
        self.send_raw(&line);
    }
    /// Reads one message (bounded by the socket's 10 s read timeout); `None` at EOF.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")),
            ),
            Err(e) => panic!("read: {e}"),
        }
    }
    /// Sends a request and returns the first reply that is not a pushed event.
    pub fn call(&mut self, msg: Value) -> Value {
        self.send(&msg);
        loop {
            let m = self.recv().expect("a reply before EOF");
            if m["type"] != "event" {
                return m;
            }
        }
    }
}

/// Writes an executable script into the sandbox's files.
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
