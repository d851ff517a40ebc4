//! Black-box tests of `upkctl`: the real binary against a real controller (`upkeeper run`)
//! with real buddies and `sh` services in a private sandbox, for every subcommand, in text and
//! in JSON, with its exit codes, and with the controller down.

mod control;
mod events;
mod limits;
mod logs;
mod offline;
mod remote;
mod status;
mod why;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use upk_core::event::StateName;
use upk_core::status::Status;
use upk_testkit::{bin, wait_until, Controller, Sandbox, MARKER};

/// upkctl's exit codes (docs/exit-codes.md).
pub mod code {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const NOT_FOUND: i32 = 2;
    pub const REFUSED: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
    pub const TIMED_OUT: i32 = 5;
    pub const INVALID_CONFIG: i32 = 6;
    pub const USAGE: i32 = 100;
}

/// A sandbox with service files in `conf/`, its controller file, and (while it runs) its
/// controller.
pub struct World {
    pub sb: Sandbox,
    pub ctl: PathBuf,
    pub controller: Option<Controller>,
}

impl World {
    /// Writes `files` (name, text) into `conf/` without starting anything.
    pub fn offline(files: &[(&str, &str)]) -> World {
        let sb = Sandbox::new();
        let ctl = sb.controller_file();
        for (name, text) in files {
            std::fs::write(sb.path().join("conf").join(name), text).expect("service file");
        }
        World {
            sb,
            ctl,
            controller: None,
        }
    }

    /// [`World::offline`], then [`World::start`].
    pub fn new(files: &[(&str, &str)], running: &[&str]) -> World {
        let mut w = World::offline(files);
        w.start(running);
        w
    }

    /// Writes one more service file into `conf/`.
    pub fn add(&self, name: &str, text: &str) {
        std::fs::write(self.sb.path().join("conf").join(name), text).expect("service file");
    }

    /// Starts the controller and waits until each of `running` runs and every configured
    /// service's buddy is linked (so that commands reach it at once).
    pub fn start(&mut self, running: &[&str]) {
        self.controller = Some(Controller::start(&self.sb, &self.ctl));
        for id in running {
            self.running(id);
        }
        wait_until(Duration::from_secs(10), "every buddy linked", || {
            let out = self.upkctl(&["list", "--json"]);
            let list = out.json();
            let all = list
                .as_array()
                .is_some_and(|l| !l.is_empty() && l.iter().all(|s| s["linked"] == true));
            if all {
                Ok(())
            } else {
                Err(out.stdout)
            }
        });
    }

    /// Kills the controller (SIGKILL): buddies and services keep running.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
    }

    /// `upkctl --config CTL ARGS...`, bounded to 30 s.
    pub fn upkctl(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(bin("upkctl"));
        cmd.arg("--config").arg(&self.ctl).args(args);
        self.run(cmd)
    }

    /// `upkctl` as user `nobody` (no group that gives access).
    pub fn upkctl_as_nobody(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(bin("upkctl"))
            .arg("--config")
            .arg(&self.ctl)
            .args(args);
        self.run(cmd)
    }

    /// Runs `cmd` (an upkctl command line built by the test) as `upkctl` is run, bounded.
    pub fn run_cmd(&self, cmd: Command) -> Out {
        self.run(cmd)
    }

    fn run(&self, mut cmd: Command) -> Out {
        let mut child = cmd
            .env(MARKER, self.sb.path())
            .env_remove("UPKEEPER_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upkctl");
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = read_all(Box::new(child.stdout.take().expect("stdout")));
        let stderr = read_all(Box::new(child.stderr.take().expect("stderr")));
        let code = wait_until(Duration::from_secs(30), "upkctl to exit", || {
            match child.try_wait() {
                Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
                Ok(None) => Err(format!("{cmd:?} still running")),
                Err(e) => Err(e.to_string()),
            }
        });
        Out {
            code,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Starts `upkctl ARGS...` in the background, its output read line by line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(bin("upkctl"))
            .arg("--config")
            .arg(&self.ctl)
            .args(args)
            .env(MARKER, self.sb.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upkctl");
        let lines = |r: Box<dyn Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// A status file of the sandbox.
    pub fn status(&self, id: &str) -> Option<Status> {
        Status::read(&self.sb.run_path().join(id).join("status"))
            .ok()
            .flatten()
    }

    /// Waits until `id` is in `state` and returns its status.
    pub fn wait_state(&self, id: &str, state: StateName) -> Status {
        wait_until(
            Duration::from_secs(10),
            &format!("{id} {}", state.as_str()),
            || match self.status(id) {
                Some(s) if s.state == state => Ok(s),
                other => Err(format!("{other:?}")),
            },
        )
    }

    /// Waits until `id` runs with a pid and returns its status.
    pub fn running(&self, id: &str) -> Status {
        let s = self.wait_state(id, StateName::Running);
        assert!(s.pid.is_some(), "{s:?}");
        s
    }

    /// A file for the test's own use.
    pub fn file(&self, name: &str) -> PathBuf {
        self.sb.file(name)
    }
}

/// What a finished upkctl printed and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    /// Stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
    /// Stdout's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
    /// Asserts the exit code, printing everything when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Out {
        assert_eq!(self.code, code, "exit code; {self:#?}");
        self
    }
    /// Asserts a failure: `code`, nothing on stdout, one sentence on stderr containing
    /// `needle`.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> &Out {
        self.expect(code);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("upkctl: "), "{self:#?}");
        assert!(lines[0].contains(needle), "{needle:?} in {self:#?}");
        self
    }
}

/// A text table's rows (after the header) as cells split on runs of two spaces or more.
pub fn table(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header");
    assert!(header.starts_with("SERVICE"), "{stdout}");
    lines
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The table row of `id`.
pub fn row(stdout: &str, id: &str) -> Vec<String> {
    table(stdout)
        .into_iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("no row for {id} in\n{stdout}"))
}

/// A background upkctl (watch, history --follow).
pub struct Running {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Running {
    /// The next stdout line containing `needle`, within 10 s; returns it.
    pub fn said(&self, needle: &str) -> String {
        next_line(&self.stdout, needle, "stdout")
    }
    /// The next stderr line containing `needle`, within 10 s.
    pub fn complained(&self, needle: &str) -> String {
        next_line(&self.stderr, needle, "stderr")
    }
    /// Waits (at most 10 s) for the exit; returns its code.
    pub fn wait_exit(&mut self) -> i32 {
        let child = &mut self.child;
        wait_until(Duration::from_secs(10), "upkctl to exit", || {
            match child.try_wait() {
                Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
                Ok(None) => Err("still running".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_line(rx: &Receiver<String>, needle: &str, what: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("upkctl never printed {needle:?} on {what}; it printed {seen:#?}");
}

/// Writes an executable `sh` script into the sandbox's files and returns its path.
pub fn script(w: &World, name: &str, body: &str) -> PathBuf {
    let path = w.file(name);
    upk_testkit::write_script(&path, &format!("#!/bin/sh\n{body}"));
    path
}

/// A path as a JSON5 string.
pub fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}
