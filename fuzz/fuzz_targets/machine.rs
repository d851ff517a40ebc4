//! The buddy's state machine driven by arbitrary input sequences, in a fake world that plays
//! the loop's part (spawns succeed or fail, the child dies, time passes, timers fire when due),
//! checking the invariants the loop relies on:
//!
//! - never two live children: `Spawn` is asked for only when no main process lives (also
//!   when starts fail, for good or for now, and stop scripts cannot run);
//! - `step` always returns, and a due timer never loops: fed `Timer` while its deadline has
//!   passed (as the loop does, with no time passing), the machine settles within a bound;
//! - a stop always ends: after any history, `Stop` with a child that dies when signalled, plus
//!   the timers and `GroupGone` the loop would deliver, reaches `stopped` within a bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use upk_buddy::machine::{Command, Input, Machine, Output, Policy, State};
use upk_core::event::{Exit, StateName};
use upk_core::status::Want;

/// Steps a due timer may take before the machine must stop asking for "now".
const DUE_BOUND: usize = 64;

/// Reads small numbers from the fuzzer's bytes (0 when they run out).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    /// 0 to 2.55 s in steps of 10 ms.
    fn secs(&mut self) -> Duration {
        Duration::from_millis(u64::from(self.byte()) * 10)
    }
    fn opt_secs(&mut self) -> Option<Duration> {
        if self.flag() {
            Some(self.secs())
        } else {
            None
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// The loop's side: the one live child, the clock, and how spawns go.
struct World {
    machine: Machine,
    now: Instant,
    child: Option<i32>,
    next_pid: i32,
    /// The next spawns fail (the fuzzer flips it), and whether retrying could help.
    spawn_fails: bool,
    spawn_permanent: bool,
    /// The child dies as soon as its group is signalled.
    dies_when_signalled: bool,
}

impl World {
    /// Feeds one input and carries out the outputs, as the loop's `drive` does, then any
    /// timer already due.
    fn feed(&mut self, input: Input) {
        self.run(input);
        self.settle_due();
    }

    /// Steps `input` and answers the outputs that ask for an answer.
    fn run(&mut self, input: Input) {
        let mut queue: std::collections::VecDeque<Output> =
            self.machine.step(self.now, input).into();
        let mut steps = 0usize;
        while let Some(out) = queue.pop_front() {
            steps += 1;
            assert!(
                steps < 10_000,
                "one input made the machine ask for endless work"
            );
            let answer = match out {
                Output::Spawn => {
                    assert!(
                        self.child.is_none(),
                        "a second child asked for while {:?} lives",
                        self.child
                    );
                    if self.spawn_fails {
                        Input::SpawnFailed {
                            error: "fuzz".into(),
                            permanent: self.spawn_permanent,
                        }
                    } else {
                        self.next_pid += 1;
                        self.child = Some(self.next_pid);
                        Input::Spawned {
                            pid: self.next_pid,
                            start: Some(self.next_pid as u64),
                        }
                    }
                }
                // The default stop script is `kill <pid>`.
                Output::KillGroup { .. } | Output::RunStop { .. } if self.dies_when_signalled => {
                    match self.child.take() {
                        Some(pid) => Input::Died {
                            pid,
                            exit: Exit::Killed {
                                signal: 15,
                                core: false,
                            },
                            group_alive: false,
                        },
                        None => continue,
                    }
                }
                _ => continue,
            };
            for o in self.machine.step(self.now, answer).into_iter().rev() {
                queue.push_front(o);
            }
        }
    }

    /// A deadline already passed is carried out at once, with no time passing (the loop's
    /// rule); it must come to rest.
    fn settle_due(&mut self) {
        for _ in 0..DUE_BOUND {
            match self.machine.deadline() {
                Some(d) if d <= self.now => self.run(Input::Timer),
                _ => return,
            }
        }
        panic!(
            "a due timer did not settle in {DUE_BOUND} steps: {:?}",
            self.machine.state()
        );
    }

    /// Lets time pass up to the machine's deadline (or `by`) and fires the timer.
    fn pass(&mut self, by: Duration) {
        let to = match self.machine.deadline() {
            Some(d) if d <= self.now + by => d,
            _ => self.now + by,
        };
        self.now = to.max(self.now);
        if self.machine.deadline().is_some_and(|d| d <= self.now) {
            self.feed(Input::Timer);
        }
    }

    fn died(&mut self, code: i32, group_alive: bool) {
        if let Some(pid) = self.child.take() {
            self.feed(Input::Died {
                pid,
                exit: Exit::Exited { code },
                group_alive,
            });
        }
    }
}

fn policy(b: &mut Bytes) -> Policy {
    Policy {
        rate_limit: b.opt_secs(),
        jitter: b.flag(),
        max_restarts: b.flag().then(|| u32::from(b.byte() % 8)),
        window: b.secs(),
        max_failures: b.flag().then(|| u32::from(b.byte() % 8)),
        kill_timeout: b.opt_secs(),
        backoff: 1.0 + f64::from(b.byte() % 4),
        delay_max: b.secs(),
        retry_after: b.opt_secs(),
        needs_ready: b.flag(),
        ready_timeout: b.opt_secs(),
        health: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let policy = policy(&mut b);
    let want = match b.byte() % 3 {
        0 => Want::Up,
        1 => Want::Down,
        _ => Want::Once,
    };
    let mut w = World {
        machine: Machine::new(policy, want, u64::from(b.byte())),
        now: Instant::now(),
        child: None,
        next_pid: 100,
        spawn_fails: false,
        spawn_permanent: false,
        dies_when_signalled: false,
    };
    w.settle_due();
    let mut inputs = 0;
    while !b.done() && inputs < 256 {
        inputs += 1;
        match b.byte() % 14 {
            0 => w.feed(Input::Command(Command::Start, "fuzz".into())),
            1 => w.feed(Input::Command(Command::Stop, "fuzz".into())),
            2 => w.feed(Input::Command(Command::Restart, "fuzz".into())),
            3 => w.feed(Input::Command(Command::Once, "fuzz".into())),
            4 => {
                let code = i32::from(b.byte() % 3);
                let group = b.flag();
                w.died(code, group);
            }
            5 => w.feed(Input::GroupGone),
            6 => {
                let by = b.secs();
                w.pass(by);
            }
            7 => w.spawn_fails = b.flag(),
            8 => w.dies_when_signalled = b.flag(),
            9 => w.feed(Input::ReadySignal { via: "fuzz".into() }),
            10 => w.feed(Input::Timer),
            11 => w.spawn_permanent = b.flag(),
            // The stop script could not run (the loop's report).
            12 => w.feed(Input::StopFailed),
            _ => {
                if w.child.is_none() && matches!(w.machine.state(), State::Stopped) {
                    w.next_pid += 1;
                    w.child = Some(w.next_pid);
                    w.feed(Input::Adopted {
                        pid: w.next_pid,
                        start: b.flag().then_some(7),
                        ready: b.flag(),
                        ready_timed_out: false,
                    });
                }
            }
        }
    }

    // A stop always ends, whatever came before: the child dies when signalled, time passes.
    w.dies_when_signalled = true;
    w.spawn_fails = false;
    w.spawn_permanent = false;
    w.feed(Input::Command(Command::Stop, "fuzz".into()));
    for _ in 0..64 {
        if w.machine.state().name() == StateName::Stopped && w.child.is_none() {
            return;
        }
        if matches!(w.machine.state(), State::Stopping { .. }) && w.child.is_none() {
            w.feed(Input::GroupGone);
            continue;
        }
        // With no timer left (KillTimeout < 0 never signals by itself), only the stop script
        // can end the main process: it did, late.
        if w.machine.deadline().is_none() && w.child.is_some() {
            w.died(0, false);
            continue;
        }
        // Otherwise only the timers move it on: SIGTERM, then SIGKILL.
        w.pass(Duration::from_secs(3600));
    }
    panic!(
        "a stop did not end: {:?}, child {:?}",
        w.machine.state(),
        w.child
    );
});
