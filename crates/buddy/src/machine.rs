//! The buddy's lifecycle as a pure state machine.
//!
//! [`Machine::step`] takes the current time and one [`Input`] and returns the [`Output`]s the
//! poll loop must carry out; it makes no system calls, so every policy below is unit-tested
//! without processes. The loop owns the clock: it passes `now` in, asks [`Machine::deadline`]
//! for the next timer, and feeds [`Input::Timer`] when it passes.
//!
//! States (`docs/state-machine.md` draws the table):
//!
//! | state    | leaves on                                                          |
//! |----------|--------------------------------------------------------------------|
//! | stopped  | start/restart/once -> running                                       |
//! | running  | ready signal -> ready; death -> backoff, paused, failed or stopped; stop/restart/unhealthy -> stopping |
//! | ready    | as running                                                          |
//! | stopping | group empty -> stopped (then start again for restart); timers escalate |
//! | backoff  | timer -> running; start -> running; stop -> stopped                  |
//! | paused   | timer -> running; start -> running; stop -> stopped                  |
//! | failed   | cool-down timer, start/restart/once -> running; stop -> stopped      |
//!
//! Restart policy, decided here once: a death while wanted up is a *failure* whatever the exit
//! code (a daemon is expected to stay up), and so is a restart for unhealthiness. A run that
//! lasts the stable uptime (`UserRestartWindow`, 10 s when unset) clears the failure count and
//! the restart window (a `stable` record). After `MaxConsecutiveFailures` failures in a row
//! (>= 0) the service is `failed`, for good or until the cool-down `FailedRetryAfter` ends.
//! Otherwise the restart waits `UserRateLimit` seconds from the death (with no `UserRateLimit`,
//! 1 s from the last start), times `RestartBackoff` for each earlier failure in a row, times 1
//! to 1.5 with `RandomizeRateLimit`, never above `RestartDelayMax` (or the base, when larger).
//! When `UserMaxRestarts` automatic restarts already happened within the window, restarts
//! pause until the oldest of them leaves the window, then resume. Operator commands reset the
//! counters.
//!
//! Readiness and health ride on `running`: the machine asks the loop to run a probe when one
//! is due ([`Output::RunProbe`]) and takes the results ([`Input::Probe`]) and readiness signals
//! ([`Input::ReadySignal`]); it asks for notification hooks with [`Output::Notify`].

use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use upk_core::config::{HealthAction, HookEvent, Readiness, Service};
use upk_core::death::{StopBy, StopStep, UNHEALTHY};
use upk_core::event::{EventKind, Exit, Health, StateName};
use upk_core::status::Want;

/// The stable uptime and restart window when `UserRestartWindow` is unset.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Minimum spacing of starts when `UserRateLimit` is unset (s6's and runit's rule).
pub const DEFAULT_SPACING: Duration = Duration::from_secs(1);
/// The least delay after a start that failed (s6's trystart): doubled for each failed start
/// in a row, up to [`SPAWN_RETRY_MAX`], whatever `UserRateLimit` says, so that a start that
/// fails at once can never make the machine ask for work "now" without end.
pub const SPAWN_RETRY_MIN: Duration = Duration::from_secs(1);
/// The cap of the growing delay after failed starts.
pub const SPAWN_RETRY_MAX: Duration = Duration::from_secs(60);

/// The restart and stop policy of one service, from its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Delay after a death; `None` means "at least [`DEFAULT_SPACING`] between starts".
    pub rate_limit: Option<Duration>,
    /// Multiply the delay by a random factor in [1, 1.5).
    pub jitter: bool,
    /// Automatic restarts allowed within `window`.
    pub max_restarts: Option<u32>,
    /// The restart window and stable uptime.
    pub window: Duration,
    /// Consecutive failures before `failed`; `None` restarts forever.
    pub max_failures: Option<u32>,
    /// From the stop request to SIGKILL; `None` never SIGKILLs.
    pub kill_timeout: Option<Duration>,
    /// The delay's factor per earlier failure in a row (1: constant).
    pub backoff: f64,
    /// The growing delay's cap.
    pub delay_max: Duration,
    /// The cool-down after giving up; `None`: failed until a command.
    pub retry_after: Option<Duration>,
    /// The service has a readiness protocol (it is not up for dependants until `ready`).
    pub needs_ready: bool,
    /// From the start to `ready_timeout`.
    pub ready_timeout: Option<Duration>,
    /// Health checks, when the service has one.
    pub health: Option<HealthPolicy>,
}

/// When health probes run and what they lead to.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    /// From a start (or the end of the last probe) to the next probe.
    pub interval: Duration,
    /// After a start, failed probes do not count for this long.
    pub start_period: Duration,
    /// Failed probes in a row that make the service unhealthy.
    pub retries: u32,
    /// Restart when unhealthy (else only record and notify).
    pub restart: bool,
    /// The first successful probe makes the service ready.
    pub readiness: bool,
}

impl Policy {
    /// The policy a service's settings describe.
    pub fn of(svc: &Service) -> Policy {
        // settings.json was validated when written, but it is a file: a hand-edited 1e20 or
        // NaN must not panic here or overflow an Instant later.
        let secs = upk_core::time::bounded_secs;
        Policy {
            rate_limit: svc.user_rate_limit.map(secs),
            jitter: svc.randomize_rate_limit,
            max_restarts: svc.user_max_restarts,
            window: svc.user_restart_window.map(secs).unwrap_or(DEFAULT_WINDOW),
            max_failures: u32::try_from(svc.max_consecutive_failures).ok(),
            kill_timeout: (svc.kill_timeout >= 0.0).then(|| secs(svc.kill_timeout)),
            backoff: svc.restart_backoff,
            delay_max: secs(svc.restart_delay_max),
            retry_after: svc.failed_retry_after.map(secs),
            needs_ready: svc.readiness != Readiness::None,
            ready_timeout: svc.ready_timeout.map(secs),
            health: svc.health_check.as_ref().map(|_| HealthPolicy {
                interval: secs(svc.health_interval),
                start_period: secs(svc.health_start_period),
                retries: svc.health_retries.max(1),
                restart: svc.health_action == HealthAction::Restart,
                readiness: svc.readiness == Readiness::Health,
            }),
        }
    }
}

/// What happens once a stop completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Stay stopped.
    Rest,
    /// Start again (restart).
    Start,
    /// Decide by the restart policy, as after a death (a restart for unhealthiness).
    Policy,
    /// The buddy exits.
    Exit,
}

/// How far a stop has gone: each phase is entered once, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The stop script was asked to do it; SIGTERM is due at half the KillTimeout.
    Asked,
    /// SIGTERM went to the group; SIGKILL is due at the KillTimeout.
    Termed,
    /// SIGKILL went to the group; only the group's end is awaited.
    Killed,
}

impl Phase {
    /// The escalation step a death during this phase is recorded with.
    pub fn step(self) -> StopStep {
        match self {
            Phase::Asked => StopStep::StopAction,
            Phase::Termed => StopStep::Term,
            Phase::Killed => StopStep::Kill,
        }
    }
}

/// What one run of the service carries from its start (or adoption) to its end: kept in the
/// state, so that nothing of a run outlives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run has a readiness protocol: fixed at its start, so that settings re-read
    /// meanwhile (SIGHUP) apply from the next start, when the channel exists.
    pub needs_ready: bool,
    /// The run missed ReadyTimeout.
    pub ready_timed_out: bool,
    /// Its health (`Unknown` until the probes decide).
    pub health: Health,
    /// Failed probes in a row.
    pub probe_failures: u32,
    /// When the next probe is due; `None` while one runs.
    pub probe_at: Option<Instant>,
}

/// The lifecycle state, carrying what each state needs.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Nothing runs.
    Stopped,
    /// The main process runs (`running`, or `ready` once it said so).
    Running {
        /// Main pid (also the process group and session id).
        pid: i32,
        /// Its start time (`/proc/PID/stat` field 22), which lets a successor adopt it.
        start: Option<u64>,
        /// When it started.
        since: Instant,
        /// It signalled readiness.
        ready: bool,
        /// Readiness and health of this run.
        run: Run,
    },
    /// A stop is in progress.
    Stopping {
        /// Main pid while it lives.
        pid: Option<i32>,
        /// Its start time, as in `Running`.
        start: Option<u64>,
        /// The service's process group.
        pgid: i32,
        /// When the stop began.
        since: Instant,
        /// How far it has gone.
        phase: Phase,
        /// Who or what began it (the `stopping` record's cause), for the death's record.
        by: String,
        /// The run being stopped (its health is reported while its main process lives).
        run: Run,
        /// What to do when stopped.
        then: After,
    },
    /// Waiting to restart.
    Backoff {
        /// When to start.
        until: Instant,
    },
    /// Restarts paused by UserMaxRestarts.
    Paused {
        /// When to start.
        until: Instant,
    },
    /// Gave up.
    Failed {
        /// When the cool-down ends and it is tried again.
        retry_at: Option<Instant>,
    },
}

impl State {
    /// The name used in status files and records.
    pub fn name(&self) -> StateName {
        match self {
            State::Stopped => StateName::Stopped,
            State::Running { ready: true, .. } => StateName::Ready,
            State::Running { .. } => StateName::Running,
            State::Stopping { .. } => StateName::Stopping,
            State::Backoff { .. } => StateName::Backoff,
            State::Paused { .. } => StateName::Paused,
            State::Failed { .. } => StateName::Failed,
        }
    }
    /// The live main process, if any.
    pub fn pid(&self) -> Option<i32> {
        match self {
            State::Running { pid, .. } => Some(*pid),
            State::Stopping { pid, .. } => *pid,
            _ => None,
        }
    }
    /// The current run, from start to the end of its stop.
    pub fn run(&self) -> Option<&Run> {
        match self {
            State::Running { run, .. } | State::Stopping { run, .. } => Some(run),
            _ => None,
        }
    }
    /// The live main process's start time, when it is known.
    pub fn pid_start(&self) -> Option<u64> {
        match self {
            State::Running { start, .. } => *start,
            State::Stopping {
                pid: Some(_),
                start,
                ..
            } => *start,
            _ => None,
        }
    }
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Want up.
    Start,
    /// Want down.
    Stop,
    /// Stop if running, then start.
    Restart,
    /// Run once, no restart.
    Once,
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An operator command; `cause` is recorded ("command from uid 0").
    Command(Command, String),
    /// The buddy was told to exit: stop the service first.
    Terminate,
    /// The loop started the main process.
    Spawned {
        /// Its pid.
        pid: i32,
        /// Its start time, when /proc could tell.
        start: Option<u64>,
    },
    /// The loop could not start it.
    SpawnFailed {
        /// One sentence.
        error: String,
        /// Retrying cannot help (the credentials cannot be resolved or applied): give up now.
        permanent: bool,
    },
    /// The stop script could not be run, or it failed while the main process still lives:
    /// go on to the group's SIGTERM at once (SIGKILL stays due at KillTimeout).
    StopFailed,
    /// A running service found at start-up was adopted.
    Adopted {
        /// Its pid.
        pid: i32,
        /// Its start time, from the status file.
        start: Option<u64>,
        /// The previous buddy had seen it ready.
        ready: bool,
        /// The previous buddy had recorded its ReadyTimeout.
        ready_timed_out: bool,
    },
    /// The service signalled readiness.
    ReadySignal {
        /// How: `notification fd`, `sd_notify READY=1`.
        via: String,
    },
    /// A health probe ended.
    Probe {
        /// Exit 0 within the timeout.
        ok: bool,
        /// How it ended, and the first line of its output.
        detail: String,
    },
    /// The main process ended.
    Died {
        /// Which pid.
        pid: i32,
        /// How.
        exit: Exit,
        /// Some process of its group still lives.
        group_alive: bool,
    },
    /// No process of the service's group is left (reported while stopping).
    GroupGone,
    /// The deadline passed.
    Timer,
}

/// What the loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Start the main process (`actions/start`) and report `Spawned` or `SpawnFailed`.
    Spawn,
    /// Run `actions/stop <pid>`.
    RunStop {
        /// The main pid.
        pid: i32,
    },
    /// Signal the service's whole process group.
    KillGroup {
        /// The group.
        pgid: i32,
        /// The signal.
        signal: Signal,
    },
    /// Record an event.
    Record(Note),
    /// Run the health probe (`scripts/health`) and report [`Input::Probe`].
    RunProbe,
    /// Run the notification hooks subscribed to this event (after the records before it).
    Notify(HookEvent),
    /// The buddy may exit now.
    Exit,
}

/// An event before the loop stamps it with a sequence number and times.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// State before.
    pub from: StateName,
    /// State after.
    pub to: StateName,
    /// Process concerned.
    pub pid: Option<i32>,
    /// Why.
    pub cause: String,
    /// What.
    pub kind: EventKind,
}

/// The lifecycle of one service.
#[derive(Debug)]
pub struct Machine {
    state: State,
    want: Want,
    policy: Policy,
    /// Consecutive failures.
    failures: u32,
    /// Automatic restarts of this run directory (carried from buddy to buddy).
    restarts: u64,
    /// Times of automatic restarts still inside the window.
    window: VecDeque<Instant>,
    last_start: Option<Instant>,
    last_exit: Option<Exit>,
    /// Set between `Output::Spawn` and the loop's answer: the cause to record.
    spawning: Option<String>,
    /// Failed starts in a row (reset by a start that succeeds): the least delay grows with it.
    spawn_failures: u32,
    rng: fastrand::Rng,
}

impl Machine {
    /// A stopped machine; `seed` makes jitter reproducible in tests.
    pub fn new(policy: Policy, want: Want, seed: u64) -> Machine {
        Machine {
            state: State::Stopped,
            want,
            policy,
            failures: 0,
            restarts: 0,
            window: VecDeque::new(),
            last_start: None,
            last_exit: None,
            spawning: None,
            spawn_failures: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Current state.
    pub fn state(&self) -> &State {
        &self.state
    }
    /// Desired state.
    pub fn want(&self) -> Want {
        self.want
    }
    /// Consecutive failures.
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// Automatic restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
    /// How the last run ended.
    pub fn last_exit(&self) -> Option<Exit> {
        self.last_exit
    }
    /// The health of the current run, when the service has a health check and runs.
    pub fn health(&self) -> Option<Health> {
        let run = self.state.run().filter(|_| self.state.pid().is_some())?;
        self.policy.health.as_ref().map(|_| run.health)
    }
    /// The service (while it runs: this run) has a readiness protocol.
    pub fn needs_ready(&self) -> bool {
        match self.state.run().filter(|_| self.state.pid().is_some()) {
            Some(run) => run.needs_ready,
            None => self.policy.needs_ready,
        }
    }
    /// This run missed ReadyTimeout (false when nothing runs).
    pub fn ready_timed_out(&self) -> bool {
        self.state.run().is_some_and(|r| r.ready_timed_out)
    }
    /// Takes up the counters a previous buddy left in its status file (a buddy restarted by
    /// the controller or by hand goes on counting; only a new run directory starts from 0).
    pub fn carry(&mut self, restarts: u64, failures: u32, last_exit: Option<Exit>) {
        self.restarts = restarts;
        self.failures = failures;
        self.last_exit = last_exit;
    }

    /// Takes up the `failed` state a previous buddy left: the restart policy gave up, and that
    /// holds until a command (or the cool-down, counted again from now), whoever supervises
    /// the directory.
    pub fn resume_failed(&mut self, now: Instant, failures: u32) {
        let retry_at = self.policy.retry_after.map(|d| now + d);
        self.state = State::Failed { retry_at };
        self.failures = failures;
    }

    /// Replaces the policy (settings re-read on SIGHUP). Deadlines derive from the policy, so
    /// a stop in progress escalates on the new KillTimeout; a scheduled restart keeps its time.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// When the loop must feed [`Input::Timer`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.state_deadline(),
            self.probe_deadline(),
            self.ready_deadline(),
            self.stable_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Probes are about a running service; a stop ends them, the next run schedules its own.
    fn probe_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Running { run, .. } => run.probe_at,
            _ => None,
        }
    }

    fn ready_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Running {
                since,
                ready: false,
                run,
                ..
            } if run.needs_ready && !run.ready_timed_out => {
                Some(*since + self.policy.ready_timeout?)
            }
            _ => None,
        }
    }

    /// While a run after failures lasts: when it counts as stable.
    fn stable_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Running { since, .. } if self.failures > 0 || !self.window.is_empty() => {
                Some(since + self.policy.window)
            }
            _ => None,
        }
    }

    fn state_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Backoff { until } | State::Paused { until } => Some(*until),
            State::Failed { retry_at } => *retry_at,
            State::Stopping { since, phase, .. } => {
                let t = self.policy.kill_timeout?;
                match phase {
                    Phase::Asked => Some(*since + t / 2),
                    Phase::Termed => Some(*since + t),
                    Phase::Killed => None,
                }
            }
            _ => None,
        }
    }

    /// Applies one input at time `now`.
    pub fn step(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Command(cmd, cause) => self.command(now, cmd, cause, &mut out),
            Input::Terminate => self.terminate(now, &mut out),
            Input::Spawned { pid, start } => self.spawned(now, pid, start, &mut out),
            Input::SpawnFailed { error, permanent } => {
                self.spawn_failed(now, error, permanent, &mut out)
            }
            Input::StopFailed => {
                if let State::Stopping {
                    phase: Phase::Asked,
                    ..
                } = self.state
                {
                    self.escalate(Phase::Termed, "stop script failed", &mut out);
                }
            }
            Input::Adopted {
                pid,
                start,
                ready,
                ready_timed_out,
            } => {
                self.last_start = Some(now);
                let mut run = self.new_run(now);
                run.ready_timed_out = ready_timed_out;
                let ready = ready && run.needs_ready;
                let to = State::Running {
                    pid,
                    start,
                    since: now,
                    ready,
                    run,
                };
                self.go(to, Some(pid), "adoption", EventKind::Adopted, &mut out);
            }
            Input::ReadySignal { via } => self.ready(via, &mut out),
            Input::Probe { ok, detail } => self.probe(now, ok, detail, &mut out),
            Input::Died {
                pid,
                exit,
                group_alive,
            } => self.died(now, pid, exit, group_alive, &mut out),
            Input::GroupGone => {
                if let State::Stopping {
                    pid: None, then, ..
                } = self.state
                {
                    self.stopped(now, then, &mut out);
                }
            }
            Input::Timer => self.timer(now, &mut out),
        }
        out
    }

    fn go(
        &mut self,
        to: State,
        pid: Option<i32>,
        cause: &str,
        kind: EventKind,
        out: &mut Vec<Output>,
    ) {
        let from = self.state.name();
        out.push(Output::Record(Note {
            from,
            to: to.name(),
            pid,
            cause: cause.to_owned(),
            kind,
        }));
        self.state = to;
    }

    fn note(&self, pid: Option<i32>, cause: &str, kind: EventKind, out: &mut Vec<Output>) {
        let s = self.state.name();
        out.push(Output::Record(Note {
            from: s,
            to: s,
            pid,
            cause: cause.to_owned(),
            kind,
        }));
    }

    fn command(&mut self, now: Instant, cmd: Command, cause: String, out: &mut Vec<Output>) {
        match cmd {
            Command::Start | Command::Once | Command::Restart => {
                self.want = if cmd == Command::Once {
                    Want::Once
                } else {
                    Want::Up
                };
                match &mut self.state {
                    State::Running { .. } if cmd == Command::Restart => {
                        self.begin_stop(now, After::Start, &cause, out);
                    }
                    State::Running { .. } => {}
                    State::Stopping { then, .. } => *then = After::Start,
                    State::Stopped
                    | State::Backoff { .. }
                    | State::Paused { .. }
                    | State::Failed { .. } => {
                        self.failures = 0;
                        self.window.clear();
                        self.spawn(cause, out);
                    }
                }
            }
            Command::Stop => {
                self.want = Want::Down;
                match &mut self.state {
                    State::Running { .. } => {
                        self.begin_stop(now, After::Rest, &cause, out);
                    }
                    State::Stopping { then, .. } => *then = After::Rest,
                    State::Backoff { .. } | State::Paused { .. } | State::Failed { .. } => {
                        self.go(State::Stopped, None, &cause, EventKind::Stopped, out);
                    }
                    State::Stopped => {}
                }
            }
        }
    }

    fn terminate(&mut self, now: Instant, out: &mut Vec<Output>) {
        match &mut self.state {
            State::Running { .. } => {
                self.begin_stop(now, After::Exit, "buddy terminating", out);
            }
            State::Stopping { then, .. } => *then = After::Exit,
            _ => out.push(Output::Exit),
        }
    }

    fn begin_stop(&mut self, now: Instant, then: After, cause: &str, out: &mut Vec<Output>) {
        let State::Running {
            pid, start, run, ..
        } = self.state.clone()
        else {
            return;
        };
        let to = State::Stopping {
            pid: Some(pid),
            start,
            pgid: pid,
            since: now,
            phase: Phase::Asked,
            by: cause.to_owned(),
            then,
            run,
        };
        self.go(to, Some(pid), cause, EventKind::Stopping, out);
        out.push(Output::RunStop { pid });
    }

    fn spawn(&mut self, cause: String, out: &mut Vec<Output>) {
        self.spawning = Some(cause);
        out.push(Output::Spawn);
    }

    fn spawned(&mut self, now: Instant, pid: i32, start: Option<u64>, out: &mut Vec<Output>) {
        let cause = self.spawning.take().unwrap_or_default();
        self.spawn_failures = 0;
        self.last_start = Some(now);
        let run = self.new_run(now);
        let to = State::Running {
            pid,
            start,
            since: now,
            ready: false,
            run,
        };
        self.go(to, Some(pid), &cause, EventKind::STARTED, out);
    }

    /// A run begins: health unknown, not ready, first probe one interval from now.
    fn new_run(&self, now: Instant) -> Run {
        Run {
            needs_ready: self.policy.needs_ready,
            ready_timed_out: false,
            health: Health::Unknown,
            probe_failures: 0,
            probe_at: self.policy.health.as_ref().map(|h| now + h.interval),
        }
    }

    fn ready(&mut self, via: String, out: &mut Vec<Output>) {
        if let State::Running {
            pid,
            start,
            since,
            ready: false,
            run,
        } = self.state.clone()
        {
            if run.needs_ready {
                let to = State::Running {
                    pid,
                    start,
                    since,
                    ready: true,
                    run,
                };
                self.go(to, Some(pid), "readiness", EventKind::Ready { via }, out);
            }
        }
    }

    fn probe(&mut self, now: Instant, ok: bool, detail: String, out: &mut Vec<Output>) {
        let (
            Some(h),
            State::Running {
                pid, since, run, ..
            },
        ) = (self.policy.health.clone(), &mut self.state)
        else {
            return;
        };
        let (pid, since) = (*pid, *since);
        run.probe_at = Some(now + h.interval);
        let before = run.health;
        if ok {
            run.probe_failures = 0;
            run.health = Health::Healthy;
        } else if now.saturating_duration_since(since) >= h.start_period {
            run.probe_failures = run.probe_failures.saturating_add(1);
            if run.probe_failures >= h.retries {
                run.health = Health::Unhealthy;
            }
        }
        let (health, failures) = (run.health, run.probe_failures);
        if health != before {
            let kind = EventKind::Health {
                health,
                failures,
                detail,
            };
            self.note(Some(pid), "health check", kind, out);
            match (before, health) {
                (Health::Unhealthy, Health::Healthy) => {
                    out.push(Output::Notify(HookEvent::Recovered))
                }
                (_, Health::Unhealthy) => out.push(Output::Notify(HookEvent::Unhealthy)),
                _ => {}
            }
        }
        if ok && h.readiness {
            self.ready("health check".to_owned(), out);
        }
        if health == Health::Unhealthy && before != Health::Unhealthy && h.restart {
            self.begin_stop(now, After::Policy, UNHEALTHY, out);
        }
    }

    fn spawn_failed(
        &mut self,
        now: Instant,
        error: String,
        permanent: bool,
        out: &mut Vec<Output>,
    ) {
        let cause = self.spawning.take().unwrap_or_default();
        self.note(None, &cause, EventKind::SpawnFailed { error }, out);
        self.last_start = Some(now);
        self.spawn_failures = self.spawn_failures.saturating_add(1);
        if permanent && self.want == Want::Up {
            // Retrying every second forever would only fill the audit trail: give up now,
            // and let a command (or the FailedRetryAfter cool-down) try again.
            self.failures = self.failures.saturating_add(1);
            self.give_up(now, "policy: the start cannot succeed by retrying", out);
            return;
        }
        self.after_death(now, Duration::ZERO, out);
    }

    /// The least delay before the next start after `spawn_failures` failed starts in a row.
    fn spawn_retry(&self) -> Duration {
        let doublings = self.spawn_failures.saturating_sub(1).min(16);
        SPAWN_RETRY_MIN
            .saturating_mul(1u32 << doublings)
            .min(SPAWN_RETRY_MAX)
    }

    fn give_up(&mut self, now: Instant, cause: &str, out: &mut Vec<Output>) {
        // After failed starts the cool-down is no shorter than their retry delay, so that
        // `FailedRetryAfter: 0` cannot loop on a start that fails at once either.
        let floor = match self.spawn_failures {
            0 => Duration::ZERO,
            _ => self.spawn_retry(),
        };
        let retry_at = self.policy.retry_after.map(|d| now + d.max(floor));
        let kind = EventKind::GaveUp {
            failures: self.failures,
            retry_in: retry_at.map(|t| secs(t, now)),
        };
        self.go(State::Failed { retry_at }, None, cause, kind, out);
        out.push(Output::Notify(HookEvent::Failed));
        out.push(Output::Notify(HookEvent::GaveUp));
    }

    fn died(
        &mut self,
        now: Instant,
        dead: i32,
        exit: Exit,
        group_alive: bool,
        out: &mut Vec<Output>,
    ) {
        match self.state.clone() {
            State::Running { pid, since, .. } if pid == dead => {
                self.last_exit = Some(exit);
                let uptime = now.saturating_duration_since(since);
                let kind = EventKind::died(exit, uptime.as_secs_f64());
                // The record's `to` is fixed below by the policy; note it as a death first.
                self.note(Some(pid), "exit", kind, out);
                if group_alive {
                    // Leftovers of a dead service would hold its resources against the next run.
                    self.kill_group(pid, Signal::SIGTERM, "leftovers", out);
                }
                self.after_death(now, uptime, out);
            }
            State::Stopping {
                pid: Some(pid),
                phase,
                then,
                by,
                ..
            } if pid == dead => {
                self.last_exit = Some(exit);
                let uptime = self.last_start.map_or(0.0, |s| secs(now, s));
                let mut kind = EventKind::died(exit, uptime);
                if let EventKind::Died { stop, .. } = &mut kind {
                    *stop = Some(StopBy {
                        cause: by,
                        step: phase.step(),
                    });
                }
                self.note(Some(pid), "stop", kind, out);
                if let State::Stopping { pid, .. } = &mut self.state {
                    *pid = None;
                }
                if !group_alive {
                    self.stopped(now, then, out);
                } else if phase == Phase::Asked {
                    self.escalate(Phase::Termed, "leftovers", out);
                }
            }
            _ => {}
        }
    }

    /// The service died while wanted up or once: decide what comes next.
    fn after_death(&mut self, now: Instant, uptime: Duration, out: &mut Vec<Output>) {
        if self.want != Want::Up {
            self.want = Want::Down;
            self.go(State::Stopped, None, "exit", EventKind::Stopped, out);
            return;
        }
        if uptime >= self.policy.window {
            self.failures = 0;
            self.window.clear();
        }
        self.failures = self.failures.saturating_add(1);
        // Hooks run after the record of the decision, so that their context includes it.
        if let Some(max) = self.policy.max_failures {
            if self.failures >= max {
                self.give_up(now, "policy", out);
                return;
            }
        }
        let base = self.policy.rate_limit.unwrap_or(DEFAULT_SPACING);
        let delay = self.backed_off(base);
        // Jitter spreads the delay but never past the cap (a base above the cap is kept).
        let delay = self.jittered(delay).min(self.policy.delay_max.max(base));
        let mut at = match self.policy.rate_limit {
            Some(_) => now + delay,
            None => self.last_start.map_or(now, |s| (s + delay).max(now)),
        };
        if self.spawn_failures > 0 {
            at = at.max(now + self.spawn_retry());
        }
        while self
            .window
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.policy.window)
        {
            self.window.pop_front();
        }
        if let (Some(max), Some(&oldest)) = (self.policy.max_restarts, self.window.front()) {
            let used = self.window.len() as u32;
            let resume = oldest + self.policy.window;
            if used >= max && resume > at {
                at = resume;
                let kind = EventKind::RestartsPaused {
                    delay: secs(at, now),
                    restarts: used,
                };
                self.go(State::Paused { until: at }, None, "policy", kind, out);
                out.push(Output::Notify(HookEvent::Failed));
                out.push(Output::Notify(HookEvent::Flapping));
                return;
            }
        }
        let kind = EventKind::RestartScheduled {
            delay: secs(at, now),
            failures: self.failures,
        };
        self.go(State::Backoff { until: at }, None, "policy", kind, out);
        out.push(Output::Notify(HookEvent::Failed));
    }

    /// `base` times `backoff` for each failure in a row before this one, capped at
    /// `delay_max` (a base above the cap is kept: the cap only bounds the growth).
    fn backed_off(&self, base: Duration) -> Duration {
        let steps = self.failures.saturating_sub(1).min(1000) as i32;
        let grown = base.as_secs_f64() * self.policy.backoff.powi(steps);
        let cap = self.policy.delay_max.max(base).as_secs_f64();
        Duration::from_secs_f64(grown.min(cap))
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        if self.policy.jitter {
            d.mul_f64(1.0 + self.rng.f64() / 2.0)
        } else {
            d
        }
    }

    fn timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.probe_deadline()) {
            if let State::Running { run, .. } = &mut self.state {
                run.probe_at = None;
            }
            out.push(Output::RunProbe);
        }
        if due(self.ready_deadline()) {
            if let State::Running {
                pid, since, run, ..
            } = &mut self.state
            {
                run.ready_timed_out = true;
                let (pid, since) = (*pid, *since);
                let after = now.saturating_duration_since(since).as_secs_f64();
                self.note(
                    Some(pid),
                    "readiness",
                    EventKind::ReadyTimeout { after },
                    out,
                );
            }
        }
        if due(self.stable_deadline()) {
            let failures = self.failures;
            self.failures = 0;
            self.window.clear();
            let pid = self.state.pid();
            self.note(pid, "policy", EventKind::Stable { failures }, out);
            if failures > 0 {
                out.push(Output::Notify(HookEvent::Recovered));
            }
        }
        if !due(self.state_deadline()) {
            return;
        }
        match self.state {
            State::Backoff { .. } | State::Paused { .. } => {
                self.restarts = self.restarts.saturating_add(1);
                self.window.push_back(now);
                self.spawn("policy".to_owned(), out);
            }
            State::Failed { .. } => {
                self.failures = 0;
                self.window.clear();
                self.restarts = self.restarts.saturating_add(1);
                self.spawn("cool-down over".to_owned(), out);
            }
            State::Stopping {
                phase: Phase::Asked,
                ..
            } => self.escalate(Phase::Termed, "stop timeout", out),
            State::Stopping {
                phase: Phase::Termed,
                ..
            } => self.escalate(Phase::Killed, "stop timeout", out),
            _ => {}
        }
    }

    /// Moves a stop on to `to` (`Termed`: SIGTERM, `Killed`: SIGKILL to the group).
    fn escalate(&mut self, to: Phase, cause: &str, out: &mut Vec<Output>) {
        if let State::Stopping { pgid, phase, .. } = &mut self.state {
            let pgid = *pgid;
            *phase = to;
            let signal = match to {
                Phase::Killed => Signal::SIGKILL,
                _ => Signal::SIGTERM,
            };
            self.kill_group(pgid, signal, cause, out);
        }
    }

    fn kill_group(&self, pgid: i32, signal: Signal, cause: &str, out: &mut Vec<Output>) {
        self.note(
            Some(pgid),
            cause,
            EventKind::Signaled {
                signal: signal as i32,
                group: true,
            },
            out,
        );
        out.push(Output::KillGroup { pgid, signal });
    }

    fn stopped(&mut self, now: Instant, then: After, out: &mut Vec<Output>) {
        self.go(State::Stopped, None, "stop", EventKind::Stopped, out);
        match then {
            After::Rest => {}
            After::Policy if self.want == Want::Up => self.after_death(now, Duration::ZERO, out),
            // A run-once service that was unhealthy is done, as after any end of its run.
            After::Policy => self.want = Want::Down,
            After::Start => {
                self.failures = 0;
                self.window.clear();
                self.spawn("restart".to_owned(), out);
            }
            After::Exit => out.push(Output::Exit),
        }
    }
}

fn secs(at: Instant, now: Instant) -> f64 {
    at.saturating_duration_since(now).as_secs_f64()
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
