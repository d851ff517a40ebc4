//! Control commands: start, stop, restart, reload, signal, action, once, unconfigure, one
//! service after another, `--wait` for the new state, and `--no-block` for no wait at all.
//!
//! The controller answers a control request once the service's buddy has carried it out, so
//! "done" already means the buddy acted; `--wait` goes further and blocks until the status
//! says the service got where the command sends it ([`Goal`]), or it clearly will not (it
//! `failed`, its restarts are paused), or `--timeout` runs out.
//!
//! `--no-block` is answered once the controller has sent the command to the buddy (the
//! peers' `svc -d` writes a byte to a FIFO and returns); the outcome is audited as always.
//!
//! The wait subscribes to the services' events before the commands are sent: an event is the
//! cue to read the status again, and the status decides (the buddy may push an event a moment
//! before it rewrites its status file, so the status is also re-read every 250 ms). While
//! waiting, a buddy that is not connected yet (the controller has just started it) is asked
//! again every 250 ms instead of failing at once.

use crate::exit::{self, code_of, Failure, Result};
use crate::status::{read_status, want_str};
use crate::{print_json, warn, Ctx};
use libupkeeper::{
    Client, ClientRequest, Error, ErrorCode, Exit, Outcome, SignalSpec, StateName, Status, Want,
};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often the status is read again while waiting, whatever the events say.
const RECHECK: Duration = Duration::from_millis(250);

/// A control command.
#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    /// Want up, start.
    Start,
    /// Want down, stop.
    Stop,
    /// Stop, then start.
    Restart,
    /// Run the reload action.
    Reload,
    /// Start once.
    Once,
    /// Send a signal.
    Signal {
        /// Which.
        signal: SignalSpec,
        /// To the process group.
        group: bool,
    },
    /// Run a custom action.
    Action {
        /// Its name or number.
        name: String,
    },
    /// Stop and forget.
    Unconfigure,
}

impl Verb {
    /// Sends the command for `service`; with `no_block`, answered once it is sent to the
    /// buddy.
    fn send(
        &self,
        client: &mut Client,
        service: &str,
        no_block: bool,
    ) -> libupkeeper::Result<Outcome> {
        let request = self.request(service.to_owned());
        match no_block {
            true => client.queue(request),
            false => client.command(request),
        }
    }

    fn request(&self, service: String) -> ClientRequest {
        match self {
            Verb::Start => ClientRequest::Start { service },
            Verb::Stop => ClientRequest::Stop { service },
            Verb::Restart => ClientRequest::Restart { service },
            Verb::Reload => ClientRequest::Reload { service },
            Verb::Once => ClientRequest::Once { service },
            Verb::Signal { signal, group } => ClientRequest::Signal {
                service,
                signal: signal.clone(),
                group: *group,
            },
            Verb::Action { name } => ClientRequest::Action {
                service,
                name: name.clone(),
            },
            Verb::Unconfigure => ClientRequest::Unconfigure { service },
        }
    }

    /// Where the command sends the service; `None` when there is nothing to wait for (reload
    /// and actions are answered when their script has ended, a signal when it is sent).
    pub fn goal(&self, sent_us: i64) -> Option<Goal> {
        match self {
            Verb::Start => Some(Goal::Running { after_us: None }),
            Verb::Restart => Some(Goal::Running {
                after_us: Some(sent_us),
            }),
            Verb::Once => Some(Goal::Ran { after_us: sent_us }),
            Verb::Stop => Some(Goal::Stopped),
            Verb::Unconfigure => Some(Goal::Gone),
            Verb::Reload | Verb::Signal { .. } | Verb::Action { .. } => None,
        }
    }
}

/// Parses `SIG` of `upkctl signal SIG`: a number, or a name with or without `SIG`.
pub fn signal_spec(text: &str) -> Result<SignalSpec> {
    let spec = match text.parse::<i32>() {
        Ok(n) => SignalSpec::Number(n),
        Err(_) => SignalSpec::Name(text.to_owned()),
    };
    spec.resolve().map_err(|e| Failure::new(exit::USAGE, e))?;
    Ok(spec)
}

/// The state a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// `running`, entered at or after `after_us` when set (a restart).
    Running {
        /// Wall microseconds the command was sent.
        after_us: Option<i64>,
    },
    /// Running, or already ended after `after_us` (`once`).
    Ran {
        /// Wall microseconds the command was sent.
        after_us: i64,
    },
    /// `stopped` (or `failed`: not running either).
    Stopped,
    /// Unconfigured: the status file says `stopped` and the buddy has exited.
    Gone,
}

/// What a status says about a goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Got there: the line to print.
    Reached(String),
    /// Not yet: where it is now.
    Waiting(String),
    /// Will not get there without help: one sentence.
    Missed(String),
}

/// Judges `status` against `goal` (pure: the caller reads the status and the buddy's
/// liveness).
pub fn judge(goal: Goal, status: Option<&Status>, buddy_alive: bool) -> Verdict {
    let Some(st) = status else {
        return Verdict::Waiting("no status yet".into());
    };
    let now = describe(st);
    match goal {
        Goal::Running { after_us } => match st.state {
            // A service with a readiness protocol is up once it said so.
            s if s.is_up()
                && (s == StateName::Ready || !st.needs_ready)
                && after_us.is_none_or(|t| st.since_us >= t) =>
            {
                Verdict::Reached(now)
            }
            StateName::Running if st.needs_ready && st.ready_timed_out => Verdict::Missed(
                "it runs but did not say it is ready within its ReadyTimeout".into(),
            ),
            StateName::Failed if st.next_start_us.is_some() => Verdict::Missed(format!(
                "it failed ({}); the buddy tries again after its cool-down",
                last_exit(st)
            )),
            StateName::Failed => Verdict::Missed(format!(
                "it failed ({}) and stays so until a command",
                last_exit(st)
            )),
            StateName::Paused => {
                Verdict::Missed(format!("its restarts are paused ({})", last_exit(st)))
            }
            StateName::Stopped if st.want == Want::Down => {
                Verdict::Missed("it was stopped again".into())
            }
            _ => Verdict::Waiting(now),
        },
        Goal::Ran { after_us } => match st.state {
            StateName::Running | StateName::Ready => Verdict::Reached(now),
            StateName::Stopped if st.since_us >= after_us => match st.last_exit {
                Some(e) if !e.success() => Verdict::Missed(format!("it ran and {e}")),
                _ => Verdict::Reached(format!("{now} (ran and ended)")),
            },
            StateName::Failed => Verdict::Missed(format!("it failed ({})", last_exit(st))),
            _ => Verdict::Waiting(now),
        },
        Goal::Stopped => match st.state {
            StateName::Stopped | StateName::Failed => Verdict::Reached(now),
            _ => Verdict::Waiting(now),
        },
        Goal::Gone => match st.state {
            StateName::Stopped | StateName::Failed if !buddy_alive => {
                Verdict::Reached(format!("{now}, buddy exited"))
            }
            _ => Verdict::Waiting(format!("{now}, buddy pid {}", st.buddy_pid)),
        },
    }
}

fn last_exit(st: &Status) -> String {
    st.last_exit
        .map_or_else(|| "no exit known".into(), |e| format!("last run {e}"))
}

/// `running (want up, pid 123)`.
pub fn describe(st: &Status) -> String {
    let pid = st.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    format!("{} (want {}{pid})", st.state.as_str(), want_str(st.want))
}

/// One service's result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Result1 {
    service: String,
    ok: bool,
    /// The exit code this service contributes.
    code: i32,
    /// What happened, one sentence.
    message: String,
    /// The status after the command (or after the wait).
    status: Option<Status>,
    /// How the reload or action script ended.
    exit: Option<Exit>,
    /// When a wait failed: the last lines the service wrote before its last death.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    last_lines: Vec<String>,
}

/// `upkctl VERB SERVICE... [--all] [--wait]`.
pub fn run(
    ctx: &Ctx,
    verb: Verb,
    targets: &crate::cli::Targets,
    out: &mut dyn Write,
) -> Result<i32> {
    let deadline = Instant::now() + ctx.timeout;
    let mut client = ctx.connect()?;
    let services: Vec<String> = if targets.all {
        client.list()?.into_iter().map(|s| s.service).collect()
    } else {
        targets.services.clone()
    };
    if services.is_empty() {
        warn("no services are configured: nothing to do");
    }
    let mut sub = if targets.wait {
        let names: Vec<&str> = if targets.all {
            Vec::new()
        } else {
            services.iter().map(String::as_str).collect()
        };
        Some(ctx.connect()?.subscribe(&names, None)?)
    } else {
        None
    };
    let sent_us = upk_core::time::wall_us();
    let mut results = Vec::new();
    for service in &services {
        let answer = loop {
            match verb.send(&mut client, service, targets.no_block) {
                Err(e) if targets.wait && unavailable(&e) && Instant::now() < deadline => {
                    wait_a_little(sub.as_mut(), deadline)?;
                }
                other => break other,
            }
        };
        results.push(outcome(service, answer));
    }
    if let (Some(sub), Some(goal)) = (sub.as_mut(), verb.goal(sent_us)) {
        let ctl = match goal {
            Goal::Gone => Some(ctx.controller()?),
            _ => None,
        };
        let run_path = ctl.as_ref().map(|c| c.svc_run_path.as_path());
        let bounds = Bounds {
            sent_us,
            deadline,
            timeout: ctx.timeout,
        };
        wait(&mut client, sub, goal, run_path, bounds, &mut results)?;
    }

    if ctx.json {
        print_json(out, &results)?;
    } else {
        for r in &results {
            if r.ok {
                writeln!(out, "{}: {}", r.service, r.message)?;
            } else {
                warn(&format!("{}: {}", r.service, r.message));
                for line in &r.last_lines {
                    eprintln!("    | {line}");
                }
            }
        }
    }
    Ok(results
        .iter()
        .map(|r| r.code)
        .find(|&c| c != exit::OK)
        .unwrap_or(exit::OK))
}

fn unavailable(e: &Error) -> bool {
    e.code() == Some(ErrorCode::Unavailable)
}

/// Turns the controller's answer for one service into its result line.
fn outcome(service: &str, answer: libupkeeper::Result<Outcome>) -> Result1 {
    let mut r = Result1 {
        service: service.to_owned(),
        ok: true,
        code: exit::OK,
        message: String::new(),
        status: None,
        exit: None,
        last_lines: Vec::new(),
    };
    match answer {
        Ok(Outcome::Done {
            status, message, ..
        }) => {
            r.message = match (&status, &message) {
                (Some(st), Some(m)) => format!("{} ({m})", describe(st)),
                (Some(st), None) => describe(st),
                (None, Some(m)) => m.clone(),
                (None, None) => "done".into(),
            };
            r.status = status;
        }
        Ok(Outcome::Queued { .. }) => {
            r.message = "sent to its buddy (--no-block: the outcome is in `upkctl status` and \
                         the audit)"
                .into();
        }
        Ok(Outcome::ActionDone {
            action,
            exit,
            signal,
            ..
        }) => {
            r.message = match signal {
                // The default reload: say what it did, since a program that does not handle
                // the signal dies of it (docs/upkctl.md, reload).
                Some(sig) if exit.success() => format!(
                    "{action}: sent {} to the service (its {action} script only signals it)",
                    SignalSpec::Number(sig)
                        .resolve()
                        .map_or(format!("signal {sig}"), |s| s.as_str().to_owned())
                ),
                _ => format!("{action}: {exit}"),
            };
            r.exit = Some(exit);
            if !exit.success() {
                (r.ok, r.code) = (false, exit::FAILED);
            }
        }
        Err(e) => {
            (r.ok, r.code) = (false, code_of(&e));
            let message = Failure::from(e).message;
            // The controller names the service in a buddy's refusal; the line names it already.
            r.message = match message.strip_prefix(&format!("{service}: ")) {
                Some(rest) => rest.to_owned(),
                None => message,
            };
        }
    }
    r
}

/// When a wait began and how long it may last.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// When the command was sent (wall microseconds).
    sent_us: i64,
    /// `--timeout` from the start of the command.
    deadline: Instant,
    /// `--timeout`.
    timeout: Duration,
}

/// Blocks until every service that took the command reaches `goal`, misses it, or the
/// deadline passes; updates each result.
fn wait(
    client: &mut Client,
    sub: &mut libupkeeper::Subscription,
    goal: Goal,
    run_path: Option<&std::path::Path>,
    bounds: Bounds,
    results: &mut [Result1],
) -> Result<()> {
    let Bounds {
        sent_us,
        deadline,
        timeout,
    } = bounds;
    let mut pending: Vec<usize> = (0..results.len()).filter(|&i| results[i].ok).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            let r = &mut results[i];
            let (status, alive) = match run_path {
                // An unconfigured service is no longer the controller's: read its file.
                Some(run_path) => {
                    let st = read_status(run_path, &r.service)?;
                    let alive = st
                        .as_ref()
                        .is_some_and(|s| crate::status::buddy_alive(s.buddy_pid));
                    (st, alive)
                }
                None => {
                    let mut list = client.status(&[r.service.as_str()])?;
                    (list.pop().and_then(|s| s.status), true)
                }
            };
            match judge(goal, status.as_ref(), alive) {
                Verdict::Reached(line) => r.message = line,
                Verdict::Missed(why) => {
                    (r.ok, r.code, r.message) = (false, exit::FAILED, why);
                    explain_miss(client, sub, r, sent_us, deadline)?;
                }
                Verdict::Waiting(now) => {
                    if Instant::now() >= deadline {
                        let why = format!(
                            "still {now} after {:.1}s (see --timeout)",
                            timeout.as_secs_f64()
                        );
                        (r.ok, r.code, r.message) = (false, exit::TIMED_OUT, why);
                    } else {
                        still.push(i);
                    }
                }
            }
            r.status = status.or(r.status.take());
        }
        pending = still;
        if !pending.is_empty() {
            wait_a_little(Some(sub), deadline)?;
        }
    }
    Ok(())
}

/// How long a missed wait waits for the death to be stored (the status file can say
/// `failed` a moment before the store has the record).
const DEATH_STORED: Duration = Duration::from_secs(2);

/// A missed wait says how the service died (a death stored since `sent_us`, the command's
/// time) and what it wrote then (`upkctl why`'s first facts), when the store has them: it
/// asks again at each event stored, for at most [`DEATH_STORED`] and never past `deadline`.
fn explain_miss(
    client: &mut Client,
    sub: &mut libupkeeper::Subscription,
    r: &mut Result1,
    sent_us: i64,
    deadline: Instant,
) -> Result<()> {
    let until = deadline.min(Instant::now() + DEATH_STORED);
    let death = loop {
        let Ok(why) = client.why(&r.service, None) else {
            return Ok(());
        };
        match why.death {
            Some(d) if d.record.wall_us >= sent_us => break d,
            _ if Instant::now() >= until => return Ok(()),
            _ => wait_a_little(Some(&mut *sub), until)?,
        }
    };
    if let libupkeeper::EventKind::Died {
        exit,
        reason: Some(reason),
        stop,
        exec_error,
        tail,
        ..
    } = &death.record.kind
    {
        let how = upk_core::death::sentence(*exit, *reason, stop.as_ref(), exec_error.as_deref());
        r.message = format!("{}; its last death: {how}", r.message);
        if let Some(t) = tail {
            r.last_lines = t.stderr.iter().chain(&t.stdout).cloned().collect();
        }
    }
    Ok(())
}

/// Waits for the next event (a cue that something changed), at most [`RECHECK`] and never
/// past `deadline`.
fn wait_a_little(sub: Option<&mut libupkeeper::Subscription>, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let pause = left.min(RECHECK).max(Duration::from_millis(1));
    let Some(sub) = sub else {
        std::thread::sleep(pause);
        return Ok(());
    };
    sub.set_timeout(Some(pause))?;
    match sub.next_event() {
        // Any event, or none: read the status again. A line cut by the timeout is not an
        // error here, as only the cue matters.
        Ok(_) | Err(Error::TimedOut(_)) | Err(Error::Protocol(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: StateName, want: Want, since_us: i64) -> Status {
        Status {
            service: "web".into(),
            state,
            want,
            pid: (state == StateName::Running).then_some(42),
            pid_start: None,
            since_us,
            buddy_pid: 7,
            restarts: 0,
            failures: 0,
            last_exit: Some(Exit::Exited { code: 3 }),
            next_start_us: None,
            incarnation: String::new(),
            seq: 1,
            acked: 1,
            loggers: Vec::new(),
            needs_ready: false,
            ready_timed_out: false,
            health: None,
            containment: Default::default(),
        }
    }

    #[test]
    fn a_restart_waits_for_a_new_run() {
        let goal = Verb::Restart.goal(100).expect("a goal");
        let old = st(StateName::Running, Want::Up, 50);
        assert!(matches!(judge(goal, Some(&old), true), Verdict::Waiting(_)));
        let new = st(StateName::Running, Want::Up, 150);
        assert_eq!(
            judge(goal, Some(&new), true),
            Verdict::Reached("running (want up, pid 42)".into())
        );
    }

    #[test]
    fn a_start_of_a_service_with_readiness_waits_for_ready() {
        let goal = Verb::Start.goal(0).expect("a goal");
        let mut running = st(StateName::Running, Want::Up, 10);
        running.needs_ready = true;
        assert!(matches!(
            judge(goal, Some(&running), true),
            Verdict::Waiting(_)
        ));
        let mut ready = running.clone();
        ready.state = StateName::Ready;
        assert!(matches!(
            judge(goal, Some(&ready), true),
            Verdict::Reached(_)
        ));
        running.ready_timed_out = true;
        assert!(matches!(
            judge(goal, Some(&running), true),
            Verdict::Missed(m) if m.contains("ReadyTimeout")
        ));
    }

    #[test]
    fn a_start_misses_when_the_service_fails_or_is_paused() {
        let goal = Verb::Start.goal(0).expect("a goal");
        for state in [StateName::Failed, StateName::Paused] {
            let v = judge(goal, Some(&st(state, Want::Up, 0)), true);
            assert!(
                matches!(&v, Verdict::Missed(m) if m.contains("exited with code 3")),
                "{v:?}"
            );
        }
        let backoff = st(StateName::Backoff, Want::Up, 0);
        assert!(matches!(
            judge(goal, Some(&backoff), true),
            Verdict::Waiting(_)
        ));
    }

    #[test]
    fn once_counts_a_run_that_already_ended() {
        let goal = Verb::Once.goal(100).expect("a goal");
        let mut ended = st(StateName::Stopped, Want::Once, 150);
        ended.last_exit = Some(Exit::Exited { code: 0 });
        assert!(matches!(
            judge(goal, Some(&ended), true),
            Verdict::Reached(_)
        ));
        ended.last_exit = Some(Exit::Exited { code: 1 });
        assert!(matches!(
            judge(goal, Some(&ended), true),
            Verdict::Missed(_)
        ));
        let before = st(StateName::Stopped, Want::Down, 50);
        assert!(matches!(
            judge(goal, Some(&before), true),
            Verdict::Waiting(_)
        ));
    }

    #[test]
    fn unconfigure_waits_for_the_buddy_to_exit() {
        let goal = Verb::Unconfigure.goal(0).expect("a goal");
        let stopped = st(StateName::Stopped, Want::Down, 0);
        assert!(matches!(
            judge(goal, Some(&stopped), true),
            Verdict::Waiting(_)
        ));
        assert!(matches!(
            judge(goal, Some(&stopped), false),
            Verdict::Reached(_)
        ));
    }

    #[test]
    fn nothing_to_wait_for_after_scripts_and_signals() {
        assert_eq!(Verb::Reload.goal(0), None);
        assert_eq!(Verb::Action { name: "x".into() }.goal(0), None);
        assert!(signal_spec("hup").is_ok() && signal_spec("9").is_ok());
        assert_eq!(signal_spec("BOGUS").map_err(|f| f.code), Err(exit::USAGE));
    }
}
