//! Transition tests: every policy key, driven by a fake clock and no processes.

use super::*;

fn policy() -> Policy {
    Policy {
        rate_limit: None,
        jitter: false,
        max_restarts: None,
        window: DEFAULT_WINDOW,
        max_failures: None,
        kill_timeout: Some(Duration::from_secs(4)),
    }
}

struct Rig {
    m: Machine,
    t0: Instant,
    next_pid: i32,
}

impl Rig {
    fn new(p: Policy) -> Rig {
        Rig {
            m: Machine::new(p, Want::Down, 7),
            t0: Instant::now(),
            next_pid: 100,
        }
    }
    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }
    /// Steps, and answers `Spawn` the way the loop does.
    fn step(&mut self, secs: f64, input: Input) -> Vec<Output> {
        let now = self.at(secs);
        let mut out = self.m.step(now, input);
        if out.contains(&Output::Spawn) {
            self.next_pid += 1;
            out.extend(self.m.step(now, Input::Spawned { pid: self.next_pid }));
        }
        out
    }
    fn start(&mut self, secs: f64) -> i32 {
        self.step(secs, Input::Command(Command::Start, "command".into()));
        self.pid()
    }
    fn pid(&self) -> i32 {
        self.m.state().pid().expect("running")
    }
    fn die(&mut self, secs: f64) -> Vec<Output> {
        let pid = self.pid();
        self.step(
            secs,
            Input::Died {
                pid,
                exit: Exit::Exited { code: 1 },
                group_alive: false,
            },
        )
    }
    fn deadline_secs(&self) -> Option<f64> {
        self.m
            .deadline()
            .map(|d| d.duration_since(self.t0).as_secs_f64())
    }
}

fn kinds(out: &[Output]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            Output::Record(n) => format!(
                "{}:{}->{}",
                kind_name(&n.kind),
                n.from.as_str(),
                n.to.as_str()
            ),
            Output::Spawn => "spawn".into(),
            Output::RunStop { .. } => "run-stop".into(),
            Output::KillGroup { signal, .. } => format!("kill-{}", signal.as_str()),
            Output::Exit => "exit".into(),
        })
        .collect()
}

fn kind_name(k: &EventKind) -> String {
    let v = serde_json::to_value(k).expect("serialise");
    v["kind"].as_str().expect("kind").to_owned()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-6)
}

#[test]
fn start_runs_and_death_restarts_one_second_after_the_last_start() {
    let mut r = Rig::new(policy());
    r.start(0.0);
    assert_eq!(r.m.state().name(), StateName::Running);
    let out = r.die(0.2);
    assert_eq!(
        kinds(&out),
        [
            "died:running->running",
            "restart_scheduled:running->backoff"
        ]
    );
    assert!(close(r.deadline_secs(), 1.0), "{:?}", r.deadline_secs());
    assert!(
        kinds(&r.step(0.5, Input::Timer)).is_empty(),
        "an early timer does nothing"
    );
    let out = r.step(1.0, Input::Timer);
    assert_eq!(kinds(&out), ["spawn", "started:backoff->running"]);
    assert_eq!(r.m.restarts(), 1);
}

#[test]
fn a_long_run_restarts_at_once_without_rate_limit() {
    let mut r = Rig::new(policy());
    r.start(0.0);
    r.die(30.0);
    assert!(close(r.deadline_secs(), 30.0));
}

#[test]
fn rate_limit_counts_from_the_death() {
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::from_secs(2)),
        ..policy()
    });
    r.start(0.0);
    r.die(5.0);
    assert!(close(r.deadline_secs(), 7.0));
}

#[test]
fn jitter_stays_within_one_to_one_and_a_half_times_the_delay() {
    let mut seen = Vec::new();
    for seed in 0..50 {
        let p = Policy {
            rate_limit: Some(Duration::from_secs(2)),
            jitter: true,
            ..policy()
        };
        let mut r = Rig {
            m: Machine::new(p, Want::Down, seed),
            t0: Instant::now(),
            next_pid: 1,
        };
        r.start(0.0);
        r.die(5.0);
        let d = r.deadline_secs().expect("deadline") - 5.0;
        assert!((2.0..3.0).contains(&d), "delay {d}");
        seen.push(d);
    }
    seen.sort_by(f64::total_cmp);
    assert!(seen[49] - seen[0] > 0.2, "jitter varies: {seen:?}");
}

#[test]
fn max_consecutive_failures_gives_up_and_a_start_recovers() {
    let mut r = Rig::new(Policy {
        max_failures: Some(3),
        rate_limit: Some(Duration::ZERO),
        ..policy()
    });
    r.start(0.0);
    for i in 1..3 {
        r.die(i as f64);
        r.step(i as f64, Input::Timer);
        assert_eq!(r.m.state().name(), StateName::Running);
    }
    let out = r.die(3.0);
    assert_eq!(
        kinds(&out),
        ["died:running->running", "gave_up:running->failed"]
    );
    assert_eq!(r.m.deadline(), None, "failed waits for a command");
    r.start(10.0);
    assert_eq!(r.m.state().name(), StateName::Running);
    assert_eq!(r.m.failures(), 0);
}

#[test]
fn a_stable_run_resets_the_failure_count() {
    let p = Policy {
        max_failures: Some(2),
        rate_limit: Some(Duration::ZERO),
        ..policy()
    };
    let mut r = Rig::new(p);
    r.start(0.0);
    r.die(1.0);
    r.step(1.0, Input::Timer);
    assert_eq!(r.m.failures(), 1);
    r.die(20.0); // ran 19 s >= the 10 s window: counts as the first failure again
    assert_eq!(r.m.failures(), 1);
    assert_eq!(r.m.state().name(), StateName::Backoff);
}

#[test]
fn max_restarts_in_window_pauses_then_resumes() {
    let p = Policy {
        max_restarts: Some(2),
        window: Duration::from_secs(10),
        rate_limit: Some(Duration::ZERO),
        ..policy()
    };
    let mut r = Rig::new(p);
    r.start(0.0);
    r.die(1.0);
    r.step(1.0, Input::Timer); // restart 1 at t=1
    r.die(2.0);
    r.step(2.0, Input::Timer); // restart 2 at t=2
    let out = r.die(3.0);
    assert_eq!(
        kinds(&out),
        ["died:running->running", "restarts_paused:running->paused"]
    );
    assert!(
        close(r.deadline_secs(), 11.0),
        "resumes when restart 1 leaves the window"
    );
    let out = r.step(11.0, Input::Timer);
    assert_eq!(kinds(&out), ["spawn", "started:paused->running"]);
}

#[test]
fn stop_runs_the_script_then_terms_then_kills_the_group() {
    let mut r = Rig::new(policy());
    let pid = r.start(0.0);
    let out = r.step(1.0, Input::Command(Command::Stop, "command".into()));
    assert_eq!(kinds(&out), ["stopping:running->stopping", "run-stop"]);
    assert!(
        close(r.deadline_secs(), 3.0),
        "SIGTERM at half the kill timeout"
    );
    let out = r.step(3.0, Input::Timer);
    assert_eq!(kinds(&out), ["signaled:stopping->stopping", "kill-SIGTERM"]);
    assert!(close(r.deadline_secs(), 5.0));
    let out = r.step(5.0, Input::Timer);
    assert_eq!(kinds(&out), ["signaled:stopping->stopping", "kill-SIGKILL"]);
    assert_eq!(r.m.deadline(), None);
    let exit = Exit::Killed {
        signal: 9,
        core: false,
    };
    let out = r.step(
        5.1,
        Input::Died {
            pid,
            exit,
            group_alive: false,
        },
    );
    assert_eq!(
        kinds(&out),
        ["died:stopping->stopping", "stopped:stopping->stopped"]
    );
    assert_eq!(r.m.want(), Want::Down);
}

#[test]
fn leftovers_of_a_stopped_service_are_termed_and_awaited() {
    let mut r = Rig::new(policy());
    let pid = r.start(0.0);
    r.step(1.0, Input::Command(Command::Stop, "command".into()));
    let out = r.step(
        1.1,
        Input::Died {
            pid,
            exit: Exit::Exited { code: 0 },
            group_alive: true,
        },
    );
    assert_eq!(
        kinds(&out),
        [
            "died:stopping->stopping",
            "signaled:stopping->stopping",
            "kill-SIGTERM"
        ]
    );
    assert!(
        close(r.deadline_secs(), 5.0),
        "SIGKILL still due at the kill timeout"
    );
    let out = r.step(1.2, Input::GroupGone);
    assert_eq!(kinds(&out), ["stopped:stopping->stopped"]);
}

#[test]
fn negative_kill_timeout_never_escalates() {
    let mut r = Rig::new(Policy {
        kill_timeout: None,
        ..policy()
    });
    r.start(0.0);
    r.step(1.0, Input::Command(Command::Stop, "command".into()));
    assert_eq!(r.m.deadline(), None);
}

#[test]
fn restart_stops_then_starts() {
    let mut r = Rig::new(policy());
    let pid = r.start(0.0);
    r.step(1.0, Input::Command(Command::Restart, "command".into()));
    let out = r.step(
        1.1,
        Input::Died {
            pid,
            exit: Exit::Exited { code: 0 },
            group_alive: false,
        },
    );
    assert_eq!(
        kinds(&out),
        [
            "died:stopping->stopping",
            "stopped:stopping->stopped",
            "spawn",
            "started:stopped->running"
        ]
    );
    assert_ne!(r.pid(), pid);
}

#[test]
fn terminate_stops_first_and_then_exits() {
    let mut r = Rig::new(policy());
    assert_eq!(kinds(&r.step(0.0, Input::Terminate)), ["exit"]);
    let pid = r.start(0.0);
    r.step(1.0, Input::Terminate);
    let out = r.step(
        1.1,
        Input::Died {
            pid,
            exit: Exit::Exited { code: 0 },
            group_alive: false,
        },
    );
    assert_eq!(kinds(&out).last().map(String::as_str), Some("exit"));
    assert_eq!(r.m.want(), Want::Up, "the wish survives for the next buddy");
}

#[test]
fn once_does_not_restart() {
    let mut r = Rig::new(policy());
    r.step(0.0, Input::Command(Command::Once, "command".into()));
    let out = r.die(0.5);
    assert_eq!(
        kinds(&out),
        ["died:running->running", "stopped:running->stopped"]
    );
    assert_eq!(r.m.deadline(), None);
}

#[test]
fn stop_while_waiting_to_restart_cancels_the_restart() {
    let mut r = Rig::new(policy());
    r.start(0.0);
    r.die(0.1);
    let out = r.step(0.2, Input::Command(Command::Stop, "command".into()));
    assert_eq!(kinds(&out), ["stopped:backoff->stopped"]);
    assert_eq!(r.m.deadline(), None);
}

#[test]
fn a_spawn_failure_counts_as_a_failure() {
    let mut r = Rig::new(Policy {
        max_failures: Some(1),
        ..policy()
    });
    let out =
        r.m.step(r.at(0.0), Input::Command(Command::Start, "command".into()));
    assert_eq!(out, [Output::Spawn]);
    let out = r.m.step(
        r.at(0.0),
        Input::SpawnFailed {
            error: "no such file".into(),
        },
    );
    assert_eq!(
        kinds(&out),
        ["spawn_failed:stopped->stopped", "gave_up:stopped->failed"]
    );
}

#[test]
fn leftovers_of_a_crashed_service_are_termed() {
    let mut r = Rig::new(policy());
    let pid = r.start(0.0);
    let out = r.step(
        0.5,
        Input::Died {
            pid,
            exit: Exit::Killed {
                signal: 9,
                core: false,
            },
            group_alive: true,
        },
    );
    assert_eq!(
        kinds(&out)[1..3],
        ["signaled:running->running", "kill-SIGTERM"]
    );
}
