//! Black-box tests of the fleet history (docs/fleet.md): real controllers with crash-looping
//! `sh` services, the real `upkeeper-ship` shipping their stores into a real PostgreSQL
//! started by the test (a private cluster made with initdb, listening only on a unix socket in
//! its temp dir, run as `nobody`), and `upkctl --fleet` asking across hosts.
//!
//! Central rows are compared with the local stores by key: (service UUID, incarnation, seq)
//! per host, every event exactly once. The database is read with `psql`, the local stores
//! with SQLite read-only, as an operator would.

mod shipping;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use upk_testkit::{bin, wait_until, Controller, Sandbox, MARKER};

/// Where Debian puts PostgreSQL's server programs (`postgresql-NN`), newest first.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A private PostgreSQL cluster: its data and socket in a temp dir owned by the user it runs
/// as (`nobody` when the test is root: PostgreSQL refuses to run as root). Stopped (immediate)
/// and removed when dropped.
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Pg {
    /// A new cluster, started; `None` (with the reason printed) where PostgreSQL is missing
    /// and this is not CI as root, which fails instead.
    pub fn start() -> Option<Pg> {
        let Some(bin) = pg_bin_dir() else {
            let why = "PostgreSQL's server programs are missing (no /usr/lib/postgresql/*/bin/\
                       initdb): apt-get install postgresql (.ci/run does)";
            if std::env::var("CI").as_deref() == Ok("true") && is_root() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("upk-pg-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        if is_root() {
            let st = Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown nobody {}", dir.path().display());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pg = Pg { dir, bin };
        let out = pg.as_owner(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "upk",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        );
        assert!(out.status.success(), "initdb failed: {out:?}");
        pg.up();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The connection string the shipper and psql use.
    pub fn url(&self) -> String {
        format!(
            "host={} user=upk dbname=postgres",
            self.dir.path().display()
        )
    }

    /// Runs one of PostgreSQL's programs as the cluster's owner, bounded by pg_ctl's own -t.
    fn as_owner(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--clear-groups",
                "--",
            ])
            .arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Starts the server (listening on the unix socket only) and waits until it accepts.
    pub fn up(&self) {
        let opts = format!(
            "-k {} -c listen_addresses='' -c fsync=off -c max_connections=20",
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {out:?}\n{text}");
    }

    /// Stops the server at once (`-m immediate`: as if it crashed).
    pub fn crash(&self) {
        let out = self.stop_immediately(60);
        assert!(out.status.success(), "pg_ctl stop failed: {out:?}");
    }

    /// `pg_ctl stop -m immediate`, waiting at most `secs`.
    fn stop_immediately(&self, secs: u32) -> Output {
        let secs = secs.to_string();
        self.as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "-w",
                "-t",
                &secs,
                "stop",
            ],
        )
    }

    /// One SQL statement through psql; its rows, fields separated by `|`.
    pub fn sql(&self, sql: &str) -> Vec<String> {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Pg::sql`], its failure as a sentence (before the shipper made the schema).
    pub fn try_sql(&self, sql: &str) -> Result<Vec<String>, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// One number.
    pub fn count(&self, sql: &str) -> i64 {
        self.sql(sql)
            .first()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{sql:?} gave no number"))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.stop_immediately(30);
    }
}

/// One host: a sandbox with its own state dir, store and controller.
pub struct Host {
    pub name: String,
    pub sb: Sandbox,
    pub ctl: PathBuf,
    pub controller: Option<Controller>,
}

impl Host {
    /// A host whose services are `files` (name, text), its controller started.
    pub fn new(name: &str, files: &[(&str, &str)]) -> Host {
        let sb = Sandbox::new();
        let ctl = sb.controller_file();
        for (file, text) in files {
            std::fs::write(sb.path().join("conf").join(file), text).expect("service file");
        }
        let controller = Some(Controller::start(&sb, &ctl));
        Host {
            name: name.to_owned(),
            sb,
            ctl,
            controller,
        }
    }

    /// The local audit store.
    pub fn store(&self) -> PathBuf {
        self.sb.path().join("state").join("upkeeper.db")
    }

    /// The local events' keys: (uuid, incarnation, seq) -> how many rows.
    pub fn local_keys(&self) -> BTreeMap<String, u32> {
        local_keys(&self.store())
    }

    /// Starts `upkeeper-ship run` for this host.
    pub fn shipper(&self, pg: &Pg, extra: &[&str]) -> Shipper {
        Shipper::start(&self.sb, &self.store(), &self.name, &pg.url(), extra)
    }
}

/// The events' keys of a store, read-only.
pub fn local_keys(store: &Path) -> BTreeMap<String, u32> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeMap::new();
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut keys = BTreeMap::new();
    let Ok(mut st) = conn.prepare(
        "SELECT s.uuid, i.incarnation, e.seq FROM events e JOIN services s ON s.id = \
         e.service_id JOIN incarnations i ON i.id = e.incarnation_id",
    ) else {
        return keys;
    };
    let rows = st
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?
            ))
        })
        .expect("query the store");
    for k in rows.flatten() {
        *keys.entry(k).or_insert(0) += 1;
    }
    keys
}

/// The central events' keys of one host: (uuid, incarnation, seq) -> how many rows.
pub fn central_keys(pg: &Pg, host: &str) -> BTreeMap<String, u32> {
    let mut keys = BTreeMap::new();
    let sql = format!("SELECT service_uuid, incarnation, seq FROM events WHERE host = '{host}'");
    for k in pg.try_sql(&sql).unwrap_or_default() {
        *keys.entry(k).or_insert(0) += 1;
    }
    keys
}

/// A running `upkeeper-ship run`, its stderr on a channel; SIGKILLed when dropped.
pub struct Shipper {
    pub child: Child,
    lines: Receiver<String>,
    pub said: Vec<String>,
}

impl Shipper {
    fn start(sb: &Sandbox, store: &Path, host: &str, url: &str, extra: &[&str]) -> Shipper {
        let mut child = Command::new(bin("upkeeper-ship"))
            .arg("run")
            .arg("--store")
            .arg(store)
            .args(["--database", url, "--host", host, "--interval", "50"])
            .args(["--backoff-max", "500"])
            .args(extra)
            .env(MARKER, sb.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upkeeper-ship");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Shipper {
            child,
            lines,
            said: Vec::new(),
        }
    }

    /// Waits (up to `timeout`) for a stderr line containing `needle`; returns it.
    pub fn wait_said(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.said.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.said.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "upkeeper-ship never said {needle:?}; it said {:#?}",
            self.said
        );
    }

    /// Every line said so far.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.said.push(line);
        }
        &self.said
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the central events of `host` are exactly the local ones, by key.
pub fn wait_shipped(pg: &Pg, host: &Host, timeout: Duration) -> usize {
    wait_until(
        timeout,
        &format!("{}'s events all shipped", host.name),
        || {
            let local = host.local_keys();
            let central = central_keys(pg, &host.name);
            if !local.is_empty() && local == central {
                Ok(local.len())
            } else {
                Err(format!("{} local, {} central", local.len(), central.len()))
            }
        },
    )
}

/// Runs a command line with a bound, returns (exit code, stdout, stderr).
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let what = format!("{cmd:?} to end");
    let code = wait_until(timeout, &what, || match child.try_wait() {
        Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
        Ok(None) => Err("still running".into()),
        Err(e) => Err(e.to_string()),
    });
    (
        code,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// A crash-looping service: `sh` exiting 1 about every `rate` seconds, forever.
pub fn crash_loop(id: &str, rate: f64) -> (String, String) {
    (
        format!("{id}.conf"),
        format!(
            r##"{{ "{id}": {{ StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running",
                 UserRateLimit: {rate}, MaxConsecutiveFailures: -1, RingbufferSize: 4096 }} }}"##
        ),
    )
}
