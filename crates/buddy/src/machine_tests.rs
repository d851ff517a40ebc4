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
        backoff: 1.0,
        delay_max: Duration::from_secs(300),
        retry_after: None,
        needs_ready: false,
        ready_timeout: None,
        health: None,
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
            out.extend(self.m.step(
                now,
                Input::Spawned {
                    pid: self.next_pid,
                    start: None,
                },
            ));
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
    /// `pid` ends on SIGTERM, as a stop makes it.
    fn terminated(&mut self, secs: f64, pid: i32) -> Vec<Output> {
        let exit = Exit::Killed {
            signal: 15,
            core: false,
        };
        let group_alive = false;
        self.step(
            secs,
            Input::Died {
                pid,
                exit,
                group_alive,
            },
        )
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

/// The outputs in order, but for probes and notifications (see [`extras`]).
fn kinds(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter(|o| !matches!(o, Output::RunProbe | Output::Notify(_)))
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
            Output::RunProbe | Output::Notify(_) => unreachable!("filtered"),
        })
        .collect()
}

/// The probes and notifications asked for, in order.
fn extras(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::RunProbe => Some("probe".to_owned()),
            Output::Notify(e) => Some(format!("notify-{}", e.as_str())),
            _ => None,
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
    assert_eq!(extras(&out), ["notify-failed", "notify-flapping"]);
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
            permanent: false,
        },
    );
    assert_eq!(
        kinds(&out),
        ["spawn_failed:stopped->stopped", "gave_up:stopped->failed"]
    );
}

fn spawn_fails(r: &mut Rig, secs: f64, permanent: bool) -> Vec<Output> {
    let error = "cannot execute actions/start: No such file or directory".into();
    r.m.step(r.at(secs), Input::SpawnFailed { error, permanent })
}

#[test]
fn failed_starts_back_off_from_one_second_and_grow_even_with_rate_limit_zero() {
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::ZERO),
        ..policy()
    });
    let out =
        r.m.step(r.at(0.0), Input::Command(Command::Start, "command".into()));
    assert_eq!(out, [Output::Spawn]);
    let mut t = 0.0;
    let mut delays = Vec::new();
    for _ in 0..9 {
        spawn_fails(&mut r, t, false);
        let at = r.deadline_secs().expect("a restart is scheduled");
        assert!(at > t, "never scheduled for now: {at} at {t}");
        delays.push(at - t);
        t = at;
        assert_eq!(r.m.step(r.at(t), Input::Timer), [Output::Spawn]);
    }
    assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
    // A start that works ends the back-off: the next crash restarts at once again.
    r.m.step(
        r.at(t),
        Input::Spawned {
            pid: 7,
            start: None,
        },
    );
    r.die(t + 0.5);
    assert_eq!(r.deadline_secs(), Some(t + 0.5));
}

#[test]
fn a_start_that_cannot_succeed_by_retrying_gives_up_at_once() {
    let mut r = Rig::new(policy());
    r.m.step(r.at(0.0), Input::Command(Command::Start, "command".into()));
    let out = spawn_fails(&mut r, 0.0, true);
    assert_eq!(
        kinds(&out),
        ["spawn_failed:stopped->stopped", "gave_up:stopped->failed"]
    );
    let Output::Record(gave_up) = &out[1] else {
        panic!("{out:?}")
    };
    assert!(
        gave_up.cause.contains("cannot succeed by retrying"),
        "{gave_up:?}"
    );
    assert_eq!(r.m.deadline(), None, "failed until a command");
    assert_eq!(extras(&out), ["notify-failed", "notify-gave_up"]);
}

#[test]
fn failed_stop_script_goes_on_to_term_and_kill() {
    let mut r = Rig::new(Policy {
        kill_timeout: Some(Duration::from_secs(60)),
        ..policy()
    });
    let pid = r.start(0.0);
    let out = r.step(1.0, Input::Command(Command::Stop, "command".into()));
    assert_eq!(kinds(&out), ["stopping:running->stopping", "run-stop"]);
    let out = r.step(1.0, Input::StopFailed);
    assert_eq!(kinds(&out), ["signaled:stopping->stopping", "kill-SIGTERM"]);
    // SIGKILL stays due at KillTimeout from the start of the stop.
    assert_eq!(r.deadline_secs(), Some(61.0));
    let out = r.step(61.0, Input::Timer);
    assert_eq!(kinds(&out), ["signaled:stopping->stopping", "kill-SIGKILL"]);
    // A second report changes nothing, and the death ends the stop.
    assert!(r.step(61.0, Input::StopFailed).is_empty());
    let out = r.terminated(61.1, pid);
    assert_eq!(kinds(&out)[1], "stopped:stopping->stopped");
}

#[test]
fn a_zero_cool_down_after_failed_starts_is_no_shorter_than_their_back_off() {
    // Found by the machine fuzz target: MaxConsecutiveFailures 1 and FailedRetryAfter 0 with a
    // start that fails at once went failed -> cool-down over -> failed at the same instant.
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::ZERO),
        max_failures: Some(1),
        retry_after: Some(Duration::ZERO),
        ..policy()
    });
    r.m.step(r.at(0.0), Input::Command(Command::Start, "command".into()));
    let mut t = 0.0;
    for _ in 0..3 {
        spawn_fails(&mut r, t, false);
        assert!(matches!(r.m.state(), State::Failed { .. }));
        let at = r.deadline_secs().expect("a cool-down is scheduled");
        assert!(
            at >= t + 1.0,
            "a cool-down at {at} after a failed start at {t}"
        );
        t = at;
        assert_eq!(r.m.step(r.at(t), Input::Timer), [Output::Spawn]);
    }
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

#[test]
fn backoff_grows_by_the_factor_to_the_cap_and_resets_after_a_stable_run() {
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::from_secs(1)),
        backoff: 2.0,
        delay_max: Duration::from_secs(5),
        ..policy()
    });
    r.start(0.0);
    let mut t = 0.0;
    let mut delays = Vec::new();
    for _ in 0..5 {
        t += 0.1;
        let out = r.die(t);
        assert_eq!(extras(&out), ["notify-failed"]);
        let at = r.deadline_secs().expect("restart scheduled");
        delays.push(((at - t) * 1000.0).round() / 1000.0);
        t = at;
        r.step(t, Input::Timer);
    }
    assert_eq!(delays, [1.0, 2.0, 4.0, 5.0, 5.0]);
    // A run as long as the window is stable: the failures are forgotten, and said so.
    let out = r.step(t + 10.0, Input::Timer);
    assert_eq!(kinds(&out), ["stable:running->running"]);
    assert_eq!(extras(&out), ["notify-recovered"]);
    assert_eq!(r.m.failures(), 0);
    r.die(t + 10.5);
    assert!(close(r.deadline_secs(), t + 11.5), "back to the base delay");
}

#[test]
fn a_cool_down_retries_a_failed_service() {
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::ZERO),
        max_failures: Some(2),
        retry_after: Some(Duration::from_secs(60)),
        ..policy()
    });
    r.start(0.0);
    r.die(0.1);
    r.step(0.1, Input::Timer);
    let out = r.die(0.2);
    assert_eq!(kinds(&out)[1], "gave_up:running->failed");
    assert_eq!(extras(&out), ["notify-failed", "notify-gave_up"]);
    assert!(close(r.deadline_secs(), 60.2));
    assert!(kinds(&r.step(30.0, Input::Timer)).is_empty());
    let out = r.step(60.2, Input::Timer);
    assert_eq!(kinds(&out), ["spawn", "started:failed->running"]);
    assert_eq!(r.m.failures(), 0, "a fresh set of tries");
    // Without a cool-down, failed stays failed.
    let mut r = Rig::new(Policy {
        max_failures: Some(1),
        ..policy()
    });
    r.start(0.0);
    r.die(0.1);
    assert_eq!(r.m.state().name(), StateName::Failed);
    assert_eq!(r.deadline_secs(), None);
}

#[test]
fn readiness_moves_running_to_ready_and_a_missed_timeout_is_recorded_once() {
    let mut r = Rig::new(Policy {
        needs_ready: true,
        ready_timeout: Some(Duration::from_secs(5)),
        ..policy()
    });
    r.start(0.0);
    assert_eq!(r.m.state().name(), StateName::Running);
    let out = r.step(1.0, Input::ReadySignal { via: "fd 3".into() });
    assert_eq!(kinds(&out), ["ready:running->ready"]);
    assert_eq!(r.deadline_secs(), None, "no timeout once ready");
    assert!(kinds(&r.step(
        1.5,
        Input::ReadySignal {
            via: "again".into()
        }
    ))
    .is_empty());
    // A stop from ready is a stop like any other.
    let out = r.step(2.0, Input::Command(Command::Stop, "command".into()));
    assert_eq!(kinds(&out), ["stopping:ready->stopping", "run-stop"]);

    let mut r = Rig::new(Policy {
        needs_ready: true,
        ready_timeout: Some(Duration::from_secs(5)),
        ..policy()
    });
    r.start(0.0);
    assert!(close(r.deadline_secs(), 5.0));
    let out = r.step(5.0, Input::Timer);
    assert_eq!(kinds(&out), ["ready_timeout:running->running"]);
    assert!(r.m.ready_timed_out());
    assert_eq!(r.deadline_secs(), None, "recorded once");
    // Services without a readiness protocol ignore signals.
    let mut r = Rig::new(policy());
    r.start(0.0);
    assert!(kinds(&r.step(1.0, Input::ReadySignal { via: "x".into() })).is_empty());
}

fn health(retries: u32, restart: bool, readiness: bool) -> Policy {
    Policy {
        rate_limit: Some(Duration::ZERO),
        needs_ready: readiness,
        health: Some(HealthPolicy {
            interval: Duration::from_secs(1),
            start_period: Duration::from_secs(2),
            retries,
            restart,
            readiness,
        }),
        ..policy()
    }
}

fn probe(r: &mut Rig, secs: f64, ok: bool) -> Vec<Output> {
    let out = r.step(secs, Input::Timer);
    assert_eq!(extras(&out), ["probe"], "a probe is due at {secs}");
    r.step(
        secs,
        Input::Probe {
            ok,
            detail: if ok {
                "exited with code 0"
            } else {
                "exited with code 1"
            }
            .into(),
        },
    )
}

#[test]
fn failed_probes_after_the_start_period_make_it_unhealthy_and_restart_it() {
    let mut r = Rig::new(health(2, true, false));
    r.start(0.0);
    assert!(close(r.deadline_secs(), 1.0), "first probe one interval in");
    assert!(kinds(&probe(&mut r, 1.0, false)).is_empty(), "start period");
    assert_eq!(r.m.health(), Some(Health::Unknown));
    let out = probe(&mut r, 2.0, true);
    assert_eq!(kinds(&out), ["health:running->running"]);
    assert_eq!(r.m.health(), Some(Health::Healthy));
    assert!(kinds(&probe(&mut r, 3.0, false)).is_empty(), "1 of 2");
    let pid = r.pid();
    let out = probe(&mut r, 4.0, false);
    assert_eq!(
        kinds(&out),
        [
            "health:running->running",
            "stopping:running->stopping",
            "run-stop"
        ]
    );
    assert_eq!(extras(&out), ["notify-unhealthy"]);
    // Once stopped, the policy decides as after a death: a failure, a restart.
    let out = r.terminated(4.5, pid);
    assert_eq!(
        kinds(&out),
        [
            "died:stopping->stopping",
            "stopped:stopping->stopped",
            "restart_scheduled:stopped->backoff"
        ]
    );
    assert_eq!(extras(&out), ["notify-failed"]);
    assert_eq!(r.m.failures(), 1);
    r.step(4.5, Input::Timer);
    assert_eq!(
        r.m.health(),
        Some(Health::Unknown),
        "a new run starts unknown"
    );
}

#[test]
fn record_only_health_notifies_and_recovers_and_health_can_mean_ready() {
    let mut r = Rig::new(health(1, false, true));
    r.start(0.0);
    probe(&mut r, 1.0, false);
    let out = probe(&mut r, 2.0, true);
    assert_eq!(
        kinds(&out),
        ["health:running->running", "ready:running->ready"]
    );
    let out = probe(&mut r, 3.0, false);
    assert_eq!(
        kinds(&out),
        ["health:ready->ready"],
        "recorded, not restarted"
    );
    assert_eq!(extras(&out), ["notify-unhealthy"]);
    let out = probe(&mut r, 4.0, true);
    assert_eq!(extras(&out), ["notify-recovered"]);
    assert_eq!(r.m.state().name(), StateName::Ready);
}

#[test]
fn jitter_never_takes_the_delay_past_the_cap() {
    let mut r = Rig::new(Policy {
        rate_limit: Some(Duration::from_secs(1)),
        jitter: true,
        backoff: 3.0,
        delay_max: Duration::from_secs(2),
        ..policy()
    });
    r.start(0.0);
    let mut t = 0.0;
    for _ in 0..20 {
        t += 0.1;
        r.die(t);
        let at = r.deadline_secs().expect("restart scheduled");
        assert!(at - t <= 2.0 + 1e-9, "{}", at - t);
        t = at;
        r.step(t, Input::Timer);
    }
}

#[test]
fn a_readiness_protocol_added_by_sighup_applies_from_the_next_start() {
    let mut r = Rig::new(policy());
    r.start(0.0);
    r.m.set_policy(Policy {
        needs_ready: true,
        ready_timeout: Some(Duration::from_secs(5)),
        ..policy()
    });
    assert_eq!(
        r.deadline_secs(),
        None,
        "no ReadyTimeout for a run without a channel"
    );
    assert!(!r.m.needs_ready());
    r.step(1.0, Input::Command(Command::Restart, "command".into()));
    let pid = r.pid();
    r.terminated(1.1, pid);
    assert!(r.m.needs_ready(), "the new run has the protocol");
    assert!(close(r.deadline_secs(), 6.1));
}

#[test]
fn a_death_in_a_stop_names_the_stop_and_its_step() {
    let died_stop = |out: &[Output]| {
        out.iter().find_map(|o| match o {
            Output::Record(Note {
                kind: EventKind::Died { stop, .. },
                ..
            }) => Some(stop.clone()),
            _ => None,
        })
    };
    let mut r = Rig::new(Policy {
        kill_timeout: Some(Duration::from_secs(10)),
        ..policy()
    });
    let pid = r.start(0.0);
    r.step(
        1.0,
        Input::Command(Command::Stop, "command from uid 7".into()),
    );
    r.step(6.0, Input::Timer);
    r.step(11.0, Input::Timer);
    let stop = died_stop(&r.terminated(11.1, pid)).expect("a died record");
    assert_eq!(
        stop,
        Some(StopBy {
            cause: "command from uid 7".into(),
            step: StopStep::Kill
        })
    );
    // A death on its own carries no stop.
    let mut r = Rig::new(policy());
    r.start(0.0);
    assert_eq!(died_stop(&r.die(1.0)), Some(None));
}
