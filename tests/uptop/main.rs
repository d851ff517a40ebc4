//! uptop as a person uses it: the real binary in a real terminal (a private tmux server per
//! test, 160x40), driven with `tmux send-keys` and read with `tmux capture-pane`, against a
//! real controller with `sleep` and `sh` services in a sandbox. Every wait polls the screen
//! with a bound.
//!
//! uptop runs under a small `sh` wrapper that, once uptop has ended, prints its exit code and
//! the terminal's `icanon`/`echo` flags, then waits: so the pane shows whether the terminal was
//! given back in cooked mode on the normal screen.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use upk_core::event::StateName;
use upk_core::status::Status;
use upk_testkit::{bin, wait_until, write_script, Controller, Sandbox, MARKER};

/// A screen update after an event: the buddy polls at 0.5 s, plus a margin for a busy machine.
const PROMPT: Duration = Duration::from_secs(3);
/// Services starting, a controller starting: slower, still bounded.
const SLOW: Duration = Duration::from_secs(10);

/// A private tmux server running uptop; killed when dropped.
struct Tmux {
    socket: PathBuf,
    sandbox: PathBuf,
}

impl Tmux {
    /// Starts uptop with `args` in a new 160x40 session.
    fn uptop(sb: &Sandbox, args: &str) -> Tmux {
        let script = sb.file("term.sh");
        // uptop's path lives in the script, not on a command line, so that only uptop's own
        // command line names it (see `uptop_pid`).
        write_script(
            &script,
            &format!(
                "#!/bin/sh\n{} {args}\necho \"uptop exited with $?\"\n\
                 stty -a | tr -s ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '\n\
                 echo\nexec cat\n",
                bin("uptop").display()
            ),
        );
        let t = Tmux {
            socket: sb.path().join("tmux.sock"),
            sandbox: sb.path().to_owned(),
        };
        let command = format!("sh {}", script.display());
        t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "40",
            "-s",
            "uptop",
            &command,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            // The server and everything in it carry the sandbox's marker, so the sandbox
            // kills them even if this guard never runs.
            .env(MARKER, &self.sandbox)
            .output()
            .expect("tmux (apt-get install tmux)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        out
    }

    /// Types keys (tmux key names: `Enter`, `Escape`, `Down`, or characters).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "uptop"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The screen as text.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "uptop"]).stdout).into()
    }

    /// The screen with its colour and attribute escape sequences.
    fn escaped(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-e", "-t", "uptop"]);
        String::from_utf8_lossy(&out.stdout).into()
    }

    /// Waits until the screen satisfies `pred`; returns it.
    fn wait(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_until(timeout, what, || {
            let screen = self.screen();
            if pred(&screen) {
                Ok(screen)
            } else {
                Err(format!("\n{screen}"))
            }
        })
    }

    /// A tmux format of the pane (`#{alternate_on}`).
    fn display(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "uptop", format]);
        String::from_utf8_lossy(&out.stdout).trim().into()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// The table row of service `id`, split into words (the selection marker dropped).
fn row(screen: &str, id: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let words: Vec<String> = line
            .trim_start_matches('>')
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (words.first().map(String::as_str) == Some(id)).then_some(words)
    })
}

/// The services of `ids` in the order their rows appear.
fn order<'a>(screen: &str, ids: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<(usize, &str)> = ids
        .iter()
        .filter_map(|&id| {
            let at = screen
                .lines()
                .position(|l| l.trim_start_matches('>').split_whitespace().next() == Some(id))?;
            Some((at, id))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, id)| id).collect()
}

/// Row `id` shows `state`.
fn shows(screen: &str, id: &str, state: &str) -> bool {
    row(screen, id).is_some_and(|w| w.get(1).map(String::as_str) == Some(state))
}

/// The escape sequences written right before the first `word` on the row of `id`.
fn style_before(escaped: &str, id: &str, word: &str) -> String {
    let line = escaped
        .lines()
        .find(|l| l.contains(&format!(" {id} ")))
        .unwrap_or_else(|| panic!("no row {id} in\n{escaped}"));
    let at = line
        .find(word)
        .unwrap_or_else(|| panic!("no {word} in {line:?}"));
    // Walk back over the SGR sequences (ESC [ digits and semicolons m) that end right there.
    let mut start = at;
    while let Some(esc) = line[..start].rfind('\x1b') {
        let params = line[esc..start]
            .strip_prefix("\x1b[")
            .and_then(|p| p.strip_suffix('m'));
        match params {
            Some(p) if p.chars().all(|c| c.is_ascii_digit() || c == ';') => start = esc,
            _ => break,
        }
    }
    line[start..at].to_owned()
}

fn is_red(sgr: &str) -> bool {
    sgr.contains("38;5;1m") || sgr.contains("[31m") || sgr.contains(";31m")
}

fn service_files(sb: &Sandbox, text: &str) {
    std::fs::write(sb.path().join("conf").join("test.conf"), text).expect("service file");
}

fn status(sb: &Sandbox, id: &str) -> Option<Status> {
    Status::read(&sb.run_path().join(id).join("status"))
        .ok()
        .flatten()
}

/// Waits until `id` runs with a pid other than `not`; returns the pid.
fn running_pid(sb: &Sandbox, id: &str, not: Option<i32>) -> i32 {
    wait_until(SLOW, &format!("{id} running"), || match status(sb, id) {
        Some(s) if s.state == StateName::Running && s.pid.is_some() && s.pid != not => {
            Ok(s.pid.unwrap_or_default())
        }
        other => Err(format!("{other:?}")),
    })
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

/// After `q` or a signal: the wrapper printed uptop's exit code and a cooked terminal, on the
/// normal screen with a visible cursor.
fn assert_terminal_restored(t: &Tmux, code: i32) {
    let screen = t.wait(
        PROMPT,
        "uptop to exit and the wrapper to print the terminal's mode",
        |s| s.contains("uptop exited with") && s.contains("echo"),
    );
    assert!(
        screen.contains(&format!("uptop exited with {code}")),
        "{screen}"
    );
    assert!(screen.contains("icanon echo"), "cooked mode: {screen}");
    assert!(!screen.contains("SERVICE"), "the normal screen: {screen}");
    assert_eq!(t.display("#{alternate_on} #{cursor_flag}"), "0 1");
}

const FLEET: &str = r#"{
    "alpha": { ExecStart: "sleep 1000", InitialState: "running" },
    "beta": { ExecStart: "sleep 1000", InitialState: "running" },
    "delta": { ExecStart: "sleep 1000" },
    "gamma": { ExecStart: "sh -c 'exit 3'", InitialState: "running", MaxConsecutiveFailures: 1 },
}"#;

const ALL: [&str; 4] = ["alpha", "beta", "delta", "gamma"];

/// A controller with [`FLEET`] running as configured, and uptop showing it.
fn fleet(sb: &Sandbox) -> (Controller, Tmux) {
    service_files(sb, FLEET);
    let c = Controller::start(sb, &sb.controller_file());
    let t = Tmux::uptop(sb, &format!("--socket {}", c.socket.display()));
    t.wait(SLOW, "every service as configured", |s| {
        shows(s, "alpha", "running")
            && shows(s, "beta", "running")
            && shows(s, "delta", "stopped")
            && shows(s, "gamma", "failed")
    });
    (c, t)
}

#[test]
fn sort_filter_select_and_restart_a_service_then_q_restores_the_terminal() {
    let sb = Sandbox::new();
    let (c, t) = fleet(&sb);
    let screen = t.screen();
    assert!(screen.contains("controller connected, pid"), "{screen}");
    assert!(
        screen.contains("4 services: 1 failed, 1 stopped, 2 running · 1 not as desired"),
        "{screen}"
    );
    assert_eq!(order(&screen, &ALL), ALL, "by id at first");

    // s: by state, trouble first; I: the other way round.
    t.keys(&["s"]);
    let screen = t.wait(PROMPT, "sorted by state", |s| s.contains("sort: state"));
    assert_eq!(order(&screen, &ALL), ["gamma", "delta", "alpha", "beta"]);
    t.keys(&["I"]);
    let screen = t.wait(PROMPT, "the order reversed", |s| s.contains("(reversed)"));
    // Ties (alpha and beta both run) stay in id order.
    assert_eq!(order(&screen, &ALL), ["alpha", "beta", "delta", "gamma"]);

    // /bet Enter: only beta is left, and it is the selected row.
    t.keys(&["/", "b", "e", "t", "Enter"]);
    let screen = t.wait(PROMPT, "the filter applied", |s| {
        s.contains("filter: bet") && order(s, &ALL) == ["beta"]
    });
    assert!(screen.contains("> beta"), "{screen}");

    // R asks; y restarts it.
    let before = running_pid(&sb, "beta", None);
    t.keys(&["R"]);
    t.wait(PROMPT, "the confirmation", |s| {
        s.contains("restart beta? (y/n)")
    });
    t.keys(&["y"]);
    let after = running_pid(&sb, "beta", Some(before));
    t.wait(PROMPT, "beta's new pid on screen", |s| {
        row(s, "beta").is_some_and(|w| w[3] == after.to_string())
            && s.contains("restart beta: done")
    });
    let stops = c
        .client()
        .history(&libupkeeper::HistoryFilter {
            service: Some("beta".into()),
            kinds: vec!["stopping".into()],
            ..Default::default()
        })
        .expect("history");
    assert!(
        stops.iter().any(|e| e.record.cause.contains("uptop")),
        "the restart is audited as uptop's: {stops:?}"
    );

    // d: beta's history, with the restart in it.
    t.keys(&["d"]);
    t.wait(PROMPT, "beta's detail pane", |s| {
        s.contains("beta: recent history") && s.contains(&format!("started pid {after}"))
    });
    t.keys(&["d"]);
    t.wait(PROMPT, "the pane closed", |s| !s.contains("recent history"));

    t.keys(&["q"]);
    assert_terminal_restored(&t, 0);
}

#[test]
fn a_state_not_as_desired_is_red_and_a_kill_shows_within_a_polling_interval() {
    let sb = Sandbox::new();
    let (_c, t) = fleet(&sb);

    // gamma wants up but failed: red. alpha runs as wanted, delta is stopped as wanted.
    let escaped = t.escaped();
    let gamma = style_before(&escaped, "gamma", "failed");
    assert!(is_red(&gamma), "gamma's state is red: {gamma:?}");
    for (id, state) in [("alpha", "running"), ("delta", "stopped")] {
        let style = style_before(&escaped, id, state);
        assert!(!is_red(&style), "{id}'s state is not red: {style:?}");
    }

    // kill -9 behind everyone's back: on screen at once, without a key pressed.
    let pid = running_pid(&sb, "alpha", None);
    kill9(pid);
    let screen = t.wait(PROMPT, "alpha's death and restart on screen", |s| {
        row(s, "alpha").is_some_and(|w| {
            w.contains(&"SIGKILL".to_owned()) && w[3] != pid.to_string() && w[3] != "-"
        })
    });
    let alpha = row(&screen, "alpha").unwrap_or_default();
    assert_eq!(
        alpha[5], "1",
        "one automatic restart in the last hour: {alpha:?}"
    );
    assert!(
        alpha[6].ends_with('▂'),
        "in the last five minutes: {alpha:?}"
    );
    let new_pid = running_pid(&sb, "alpha", Some(pid));
    assert_eq!(alpha[3], new_pid.to_string());

    t.keys(&["q"]);
    assert_terminal_restored(&t, 0);
}

#[test]
fn uptop_survives_the_controller_going_away_and_coming_back() {
    let sb = Sandbox::new();
    let (mut c, t) = fleet(&sb);
    let first = c.child.id();

    c.kill();
    t.wait(PROMPT, "the header to say the controller is gone", |s| {
        s.contains("controller unreachable")
    });

    // Meanwhile alpha is killed and restarted by its buddy; its events wait in the ring.
    let pid = running_pid(&sb, "alpha", None);
    kill9(pid);
    let new_pid = running_pid(&sb, "alpha", Some(pid));

    let c = Controller::start(&sb, &sb.controller_file());
    let second = c.child.id();
    assert_ne!(first, second);
    let screen = t.wait(SLOW, "reconnected, with what happened meanwhile", |s| {
        s.contains(&format!("controller connected, pid {second}"))
            && row(s, "alpha").is_some_and(|w| w[3] == new_pid.to_string() && w[5] == "1")
    });
    assert!(!screen.contains("unreachable"), "{screen}");

    // The events of the outage reached uptop: alpha's pane has the death.
    t.keys(&["d"]);
    t.wait(PROMPT, "the death in alpha's history", |s| {
        s.contains("alpha: recent history") && s.contains("killed by SIGKILL")
    });
    t.keys(&["q"]);
    assert_terminal_restored(&t, 0);
}

#[test]
fn sigterm_ends_uptop_and_restores_the_terminal() {
    let sb = Sandbox::new();
    // --config: the socket comes from the controller file, and no controller runs there.
    let ctl = sb.controller_file();
    let t = Tmux::uptop(&sb, &format!("--config {}", ctl.display()));
    let socket = sb.path().join("state/upkeeper.sock");
    t.wait(PROMPT, "the header to say there is no controller", |s| {
        s.contains("controller unreachable") && s.contains(&socket.display().to_string())
    });
    let uptop = wait_until(PROMPT, "uptop's pid", || {
        match sb.processes(&bin("uptop").display().to_string())[..] {
            [pid] => Ok(pid),
            ref other => Err(format!("{other:?}")),
        }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(uptop),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_terminal_restored(&t, 128 + 15);
}
