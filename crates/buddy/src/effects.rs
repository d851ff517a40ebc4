//! The processes the loop starts on the machine's behalf, and what their ends mean.
//!
//! Each function here starts one kind of child through the one launch path
//! ([`crate::launch::Launcher`]), registers it in [`crate::children::Children`] under its role,
//! and returns the machine's next input when there is one (a spawn's result, a probe that
//! could not start, a stop script that failed) instead of feeding the machine itself: only
//! `Buddy::drive` steps the machine. `Buddy::child_ended` is the other half: a reaped
//! child's role says what its end means.

use crate::buddy::Buddy;
use crate::children::{ReplyTo, Role};
use crate::explain::{How, Marks, Witness};
use crate::health::{self, Channel};
use crate::hooks;
use crate::launch::{self, As, Child, Failed, Part};
use crate::machine::{Input, State};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;
use upk_core::config::{HookEvent, Readiness};
use upk_core::event::{EventKind, Exit};
use upk_core::proto::BuddyReply;

impl Buddy {
    /// Starts the service; the answer for the machine.
    pub(crate) fn spawn_service(&mut self) -> Input {
        // A probe of the last run says nothing about this one: end it, unheard.
        if let Some(pid) = self.children.forget_probe() {
            kill_group(pid, Signal::SIGKILL);
        }
        let svc = &self.settings.service;
        self.launcher.retry_creds(svc);
        if let Err(e) = self.launcher.creds() {
            let error = e.to_owned();
            return Input::SpawnFailed {
                error,
                permanent: true,
            };
        }
        let left = self.contain.clear_for_run(&self.settings.service);
        self.note_containment();
        if left > 0 {
            let kind = EventKind::Signaled {
                signal: libc::SIGKILL,
                group: true,
            };
            self.log.line(&format!(
                "killed {left} processes left in the cgroup by the last run"
            ));
            self.note(None, "leftovers", kind);
        }
        // Before the start: the service may write before it returns.
        let marks = Marks::of(self.launcher.output_files(&self.settings.service).0);
        match self.launch_service() {
            Ok((pid, how)) => {
                self.adopted = None;
                self.contain.run_began();
                self.witness = Witness::begin(marks, how);
                self.children.add(pid, Role::Service);
                // With the pid, the start time is what lets a successor adopt the process:
                // out of descriptors (reading /proc takes one), the spare one is given up.
                let stat = || upk_core::procfs::Stat::of(pid).map(|s| s.start_time);
                let start = stat().or_else(|| self.spare.give_up_for(stat).flatten());
                Input::Spawned { pid, start }
            }
            Err(Failed { message, errno }) => {
                // EPERM between fork and exec: the privilege drop was refused, and will be again.
                let drops = self.launcher.creds().is_ok_and(|c| c.uid.is_some());
                let permanent = errno == Some(libc::EPERM) && drops;
                Input::SpawnFailed {
                    error: message,
                    permanent,
                }
            }
        }
    }

    fn launch_service(&mut self) -> Result<(i32, How), Failed> {
        let svc = &self.settings.service;
        let mut child = Child::new(self.dir.action("start"));
        // The child's end of a notification pipe; ours replaces the last run's channel.
        let mut child_end = None;
        match svc.readiness {
            Readiness::Fd(n) => {
                let (ours, theirs) =
                    health::pipe().map_err(|e| format!("cannot make the readiness pipe: {e}"))?;
                self.channel = Some(Channel::Pipe(ours));
                child_end = Some((theirs, n as i32));
            }
            Readiness::Notify => {
                if !matches!(self.channel, Some(Channel::Notify(_))) {
                    self.open_notify_socket();
                }
                let path = health::notify_path(self.dir.root());
                let env = ("NOTIFY_SOCKET".into(), path.display().to_string());
                child.extra.env.push(env);
            }
            Readiness::None | Readiness::Health => self.channel = None,
        }
        child.extra.fd = child_end.as_ref().map(|(fd, n)| (fd.as_fd(), *n));
        child.stdout = self.streams[0].write_end();
        child.stderr = self.streams[1].write_end();
        child.part = Part::Service;
        child.cgroup = self.contain.start_in();
        child.joins = self.contain.joins();
        self.launcher.start_service(&self.settings.service, &child)
    }

    /// Binds `notify.sock` for the service's user; a failure is logged and readiness then
    /// comes only from ReadyTimeout.
    pub(crate) fn open_notify_socket(&mut self) {
        let owner = self.launcher.creds().ok().and_then(|c| c.uid.zip(c.gid));
        let path = health::notify_path(self.dir.root());
        match health::notify_socket(&path, owner) {
            Ok(sock) => self.channel = Some(Channel::Notify(sock)),
            Err(e) => {
                self.channel = None;
                self.log
                    .line(&format!("cannot bind {}: {e}", path.display()));
            }
        }
    }

    /// Starts `actions/health` unless a probe still runs; a probe that cannot start is a
    /// failed one at once.
    pub(crate) fn run_probe(&mut self) -> Option<Input> {
        if self.children.probe().is_some() {
            return None;
        }
        let out = self.dir.log_file("health");
        let started = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&out)
            .map_err(|e| format!("{}: {e}", out.display()))
            .and_then(|file| {
                let mut child = Child::new(self.dir.action("health"));
                child.stdout = Some(file.as_fd());
                child.stderr = Some(file.as_fd());
                let svc = &self.settings.service;
                self.launcher.launch(svc, &child).map_err(|f| f.message)
            });
        match started {
            Ok(pid) => {
                let timeout = upk_core::time::bounded_secs(self.settings.service.health_timeout);
                let deadline = Instant::now() + timeout;
                let role = Role::Probe {
                    deadline,
                    timed_out: false,
                };
                self.children.add(pid, role);
                None
            }
            Err(detail) => Some(Input::Probe { ok: false, detail }),
        }
    }

    /// Starts the hooks subscribed to `event`, with the context in their environment.
    pub(crate) fn notify(&mut self, event: HookEvent) {
        let svc = &self.settings.service;
        let due: Vec<(String, f64)> = svc
            .notify
            .iter()
            .filter(|h| h.on.contains(&event))
            .map(|h| (h.name.clone(), h.timeout))
            .collect();
        for (name, timeout) in due {
            let started = match self.children.hook(&name) {
                Some(busy) => Err(format!("still running (pid {busy}) from an earlier event")),
                None => self.spawn_hook(&name, event),
            };
            match started {
                Ok(pid) => {
                    let deadline = Instant::now() + upk_core::time::bounded_secs(timeout);
                    let role = Role::Hook {
                        hook: name,
                        event,
                        deadline,
                        timed_out: false,
                    };
                    self.children.add(pid, role);
                }
                Err(reason) => {
                    let kind = EventKind::HookSkipped {
                        hook: name,
                        event: event.as_str().to_owned(),
                        reason,
                    };
                    self.note(None, "hook", kind);
                }
            }
        }
    }

    fn spawn_hook(&mut self, name: &str, event: HookEvent) -> Result<i32, String> {
        let out = self.dir.log_file("hooks");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&out)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        let stderr = match &self.settings.service.redirect_stderr {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => self.dir.root().join(p),
            None => self.dir.log_file("stderr"),
        };
        let state = self.machine.state();
        let health = self.machine.health();
        let ctx = hooks::Context {
            event,
            state: state.name().as_str(),
            pid: state.pid(),
            last_exit: self.machine.last_exit(),
            restarts: self.machine.restarts(),
            failures: self.machine.failures(),
            health: health.map(|h| h.as_str()),
            stderr: &stderr,
            recent: self.records.recent(),
        };
        let mut child = Child::new(self.dir.script(&format!("hook@{name}")));
        child.extra.env = hooks::env(name, &ctx);
        // The buddy's own credentials: a hook is the operator's code, not the service's.
        child.creds = As::Buddy;
        child.part = Part::Plumbing;
        child.stdout = Some(log.as_fd());
        child.stderr = Some(log.as_fd());
        let svc = &self.settings.service;
        self.launcher.launch(svc, &child).map_err(|f| f.message)
    }

    /// Runs `actions/<file>` with the service's pid as `$1` (when it runs). A script that
    /// only sends a signal to `$1` is not run: the signal is sent, and its end (exit 0, or 1
    /// when kill fails, as `kill` would) is taken at once. The result is the machine's next
    /// input, if any.
    pub(crate) fn run_action(
        &mut self,
        file: &str,
        action: &str,
        pid: Option<i32>,
        reply_to: Option<ReplyTo>,
    ) -> Result<Option<Input>, String> {
        let path = self.dir.action(file);
        if let Some(pid) = pid.filter(|&p| p > 1) {
            if let Some(sig) = launch::signal_plan(&path) {
                let sent = Signal::try_from(sig)
                    .is_ok_and(|sig| signal::kill(Pid::from_raw(pid), sig).is_ok());
                let exit = Exit::Exited {
                    code: if sent { 0 } else { 1 },
                };
                let signal = sent.then_some(sig);
                let ended = self.action_ended(None, action.to_owned(), reply_to, exit, signal);
                return Ok(ended);
            }
        }
        let mut child = Child::new(path);
        child.args = pid.map(|p| p.to_string()).into_iter().collect();
        let svc = &self.settings.service;
        let pid = self.launcher.launch(svc, &child).map_err(|f| f.message)?;
        let role = Role::Action {
            action: action.to_owned(),
            reply_to,
        };
        self.children.add(pid, role);
        Ok(None)
    }

    /// An action ended: record it, answer who waits, and tell the machine when a stop script
    /// failed while the service still runs (the signals take over).
    pub(crate) fn action_ended(
        &mut self,
        pid: Option<i32>,
        action: String,
        reply_to: Option<ReplyTo>,
        exit: Exit,
        signal: Option<i32>,
    ) -> Option<Input> {
        let stop_failed = action == "stop"
            && !exit.success()
            && matches!(self.machine.state(), State::Stopping { pid: Some(_), .. });
        let kind = EventKind::ActionRun {
            action: action.clone(),
            exit,
        };
        self.note(pid, "action", kind);
        if let Some((token, id)) = reply_to {
            self.peers.reply(
                token,
                id,
                BuddyReply::ActionDone {
                    action,
                    exit,
                    signal,
                },
            );
            let owed = self.children.owes(token);
            self.peers.close_if_done(token, owed);
        }
        stop_failed.then_some(Input::StopFailed)
    }

    /// Starts the logger of stream `i` if it has a script; a failure schedules a retry.
    pub(crate) fn start_logger(&mut self, i: usize) {
        let result = (|| -> Result<Option<i32>, String> {
            let Some(script) = self.streams[i].script.clone() else {
                return Ok(None);
            };
            let stream = &mut self.streams[i];
            stream
                .hold()
                .map_err(|e| format!("{}: {e}", stream.fifo.display()))?;
            let stdin = stream.logger_end().map_err(|e| e.to_string())?;
            let mut child = Child::new(script);
            child.args = self.streams[i].args.clone();
            child.extra.argv0.clone_from(&self.streams[i].argv0);
            child.stdin = Some(stdin.as_fd());
            child.part = Part::Plumbing;
            let svc = &self.settings.service;
            self.launcher
                .launch(svc, &child)
                .map(Some)
                .map_err(|f| f.message)
        })();
        let name = self.streams[i].name;
        match result {
            Ok(None) => {}
            Ok(Some(pid)) => {
                self.children.add(pid, Role::Logger { stream: i });
                let stream = &mut self.streams[i];
                stream.logger = Some(pid);
                stream.logger_start = upk_core::status::process_start_time(pid);
                stream.started = Some(Instant::now());
                let kind = EventKind::LoggerStarted {
                    stream: name.into(),
                };
                self.note(Some(pid), "logger", kind);
            }
            Err(e) => {
                let stream = &mut self.streams[i];
                stream.schedule_restart(Instant::now());
                let delay = stream
                    .restart_at
                    .map_or(0, |t| t.saturating_duration_since(Instant::now()).as_secs());
                self.log
                    .line(&format!("{name} logger: {e}; retrying in {delay}s"));
            }
        }
    }

    /// Child `pid` in `role` was reaped: what its end means; the machine's next input, if any.
    pub(crate) fn child_ended(&mut self, pid: i32, role: Role, exit: Exit) -> Option<Input> {
        match role {
            Role::Service => Some(Input::Died {
                pid,
                exit,
                group_alive: self.contain.alive(pid),
            }),
            Role::Probe { timed_out, .. } => {
                let svc = &self.settings.service;
                let output = self.dir.log_file("health");
                let detail = health::probe_detail(exit, timed_out, &output, svc.health_timeout);
                let ok = exit.success() && !timed_out;
                Some(Input::Probe { ok, detail })
            }
            Role::Hook {
                hook,
                event,
                timed_out,
                ..
            } => {
                let kind = EventKind::HookRun {
                    hook,
                    event: event.as_str().to_owned(),
                    exit,
                    timed_out,
                };
                self.note(Some(pid), "hook", kind);
                None
            }
            Role::Action { action, reply_to } => {
                self.action_ended(Some(pid), action, reply_to, exit, None)
            }
            Role::Logger { stream } => {
                let stream = &mut self.streams[stream];
                let name = stream.name.to_owned();
                stream.schedule_restart(Instant::now());
                let kind = EventKind::LoggerDied { stream: name, exit };
                self.note(Some(pid), "exit", kind);
                None
            }
        }
    }
}

/// Signals a whole process group: never 0 or 1, never the buddy's own.
pub(crate) fn kill_group(pgid: i32, sig: Signal) {
    if pgid > 1 && pgid != nix::unistd::getpgrp().as_raw() {
        let _ = signal::killpg(Pid::from_raw(pgid), sig);
    }
}
