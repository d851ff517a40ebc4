//! The buddy's poll loop: the only place that steps the machine.
//!
//! One `poll(2)` over the signalfd, the listening socket and the peers, the readiness
//! channel, the adopted process's pidfd and a draining group's pidfds, with one timeout: the
//! earliest of the machine's deadline, a child's timeout, a logger restart, a phone-home
//! retry, a status-write retry and the exit deadline. What arrives becomes an input for the
//! pure [`Machine`]; `Buddy::drive` feeds it, carries out its outputs, and queues the inputs
//! those produce (a spawn's result, a probe that could not start, a stop script that failed)
//! until none is left, then rewrites the status file and sends the records. Nothing else
//! calls [`Machine::step`], and nothing it calls drives again.
//!
//! The parts: [`crate::startup`] (everything before the loop), [`crate::effects`] (the
//! children the machine asks for, and what their ends mean), [`crate::requests`] (the
//! protocol), [`crate::records`] (records and status), [`crate::phone`], [`crate::peers`],
//! [`crate::watch`]. After start-up nothing is fatal: errors become records or log lines and
//! the loop goes on ("from now on, we must not die").

use crate::children::{self, Children};
use crate::contain::Contain;
use crate::effects::kill_group;
use crate::explain::Witness;
use crate::fds::Spare;
use crate::health::{Channel, Heard};
use crate::launch::Launcher;
use crate::logs::{BuddyLog, Stream};
use crate::machine::{Input, Machine, Output, State};
use crate::peers::Peers;
use crate::phone::PhoneHome;
use crate::records::Records;
use crate::watch::Drain;
use nix::errno::Errno;
use nix::fcntl::Flock;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};
use upk_core::event::{EventKind, Exit};
use upk_core::rundir::{RunDir, Settings};

/// How long a terminating buddy tries to deliver pending records before it exits anyway.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Longest a due restart waits for the controller to acknowledge a half-full ring. The audit
/// trail's back-pressure: a crash loop restarts no faster than its records are stored, so the
/// ring never overflows while a controller listens, and a storm of crash loops leaves the
/// controller the CPU it needs (docs/state-machine.md).
const HOLD_MAX: Duration = Duration::from_secs(1);
/// Most inputs one `Buddy::drive` feeds the machine before the loop polls again.
const MAX_FEEDS: u32 = 8;
/// The longest a death waits for its loggers to write what the service last sent them.
const LOGGER_CATCH_UP: Duration = Duration::from_millis(50);

/// What one `poll` found ready, fixed at poll time (handling one source may change the set).
struct Ready {
    signals: bool,
    listener: bool,
    adopted: bool,
    channel: bool,
    drain: bool,
    conns: Vec<(u64, PollFlags)>,
}

/// One supervised run directory.
pub struct Buddy {
    pub(crate) dir: RunDir,
    pub(crate) settings: Settings,
    pub(crate) machine: Machine,
    pub(crate) records: Records,
    /// Every child not yet reaped, by role.
    pub(crate) children: Children,
    /// The one way children start, and their shared context.
    pub(crate) launcher: Launcher,
    /// Where the service's processes are kept (its cgroup, or its process group).
    pub(crate) contain: Contain,
    pub(crate) peers: Peers,
    pub(crate) phone: PhoneHome,
    pub(crate) streams: [Stream; 2],
    /// Where this run's readiness comes from.
    pub(crate) channel: Option<Channel>,
    /// pidfd of an adopted main process (not our child: its end is seen here, not by waitpid).
    pub(crate) adopted: Option<OwnedFd>,
    /// While a stop waits for the rest of the group (`Stopping` without a main pid).
    pub(crate) drain: Option<Drain>,
    pub(crate) signals: SignalFd,
    pub(crate) spare: Spare,
    /// What the current run's death will be explained with (its output marks, how it ran).
    pub(crate) witness: Witness,
    pub(crate) log: BuddyLog,
    pub(crate) exit_by: Option<Instant>,
    pub(crate) _lock: Flock<File>,
}

impl Buddy {
    /// Runs until the machine says exit and pending records are delivered (or the grace ends).
    pub fn run(mut self) -> i32 {
        // From now on, we must not die: failures are recorded or logged and the loop goes on.
        loop {
            let now = Instant::now();
            if let Some(by) = self.exit_by {
                // Done when everything is delivered, the grace is over, or nobody can be
                // reached any more (no controller connected and phone-home tries used up).
                let unreachable = !self.peers.controller_listening() && self.phone.gave_up();
                if self.records.ring.is_empty() || now >= by || unreachable {
                    return self.finish();
                }
            }
            let timeout = self.deadline().map(|d| d.saturating_duration_since(now));
            let ready = match self.wait(timeout) {
                Ok(r) => r,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    self.log.line(&format!("poll failed: {e}"));
                    return upk_core::exit::TEMPORARY;
                }
            };
            self.dispatch(ready);
            self.on_timers(Instant::now());
            let sent = self.records.take_outbox();
            self.peers.publish(&sent);
        }
    }

    /// The machine's deadline, except that a restart due while a listening controller has
    /// half the ring unacknowledged waits for its ack, up to [`HOLD_MAX`] past its time (an
    /// ack runs the timers again, so the restart follows it at once).
    fn machine_deadline(&self) -> Option<Instant> {
        let due = self.machine.deadline()?;
        let ring = &self.records.ring;
        let held = matches!(self.machine.state(), State::Backoff { .. })
            && self.peers.controller_listening()
            && ring.len() * 2 >= ring.capacity();
        Some(if held { due + HOLD_MAX } else { due })
    }

    /// The earliest timer of any kind.
    fn deadline(&self) -> Option<Instant> {
        let phone = self.phone.next_try().filter(|_| self.must_phone_home());
        let drain = self.drain.as_ref().and_then(Drain::deadline);
        let timers = [
            self.machine_deadline(),
            phone,
            self.exit_by,
            drain,
            self.children.deadline(),
            self.records.retry_at(),
        ];
        let loggers = self.streams.iter().filter_map(|s| s.restart_at);
        timers.into_iter().flatten().chain(loggers).min()
    }

    /// Blocks until a descriptor is ready or the timeout passes.
    fn wait(&self, timeout: Option<Duration>) -> Result<Ready, Errno> {
        let (peer_fds, tokens) = self.peers.poll_fds();
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let fixed = [
            self.adopted.as_ref().map(|f| f.as_fd()),
            self.channel.as_ref().map(Channel::as_fd),
        ];
        fds.extend(
            fixed
                .iter()
                .flatten()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        let drains = self.drain.iter().flat_map(Drain::fds);
        fds.extend(drains.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        // A cgroup's `cgroup.events` signals a change with POLLPRI (it always reads as ready).
        let events = self.drain.as_ref().and(self.contain.events());
        fds.extend(events.map(|fd| PollFd::new(fd, PollFlags::POLLPRI)));
        let first_peer = fds.len();
        fds.extend(peer_fds);
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up so a timer never fires a hair early and spins.
            Some(d) => {
                PollTimeout::try_from(d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        nix::poll::poll(&mut fds, timeout)?;
        let flags: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        let mut at = 1;
        let mut next = |present: bool, n: usize| {
            let hit = present && flags[at..at + n].iter().any(|f| !f.is_empty());
            at += if present { n } else { 0 };
            hit
        };
        let adopted = next(self.adopted.is_some(), 1);
        let channel = next(self.channel.is_some(), 1);
        let drain = next(true, self.drain.as_ref().map_or(0, Drain::len));
        let events = next(events.is_some(), 1);
        Ok(Ready {
            signals: !flags[0].is_empty(),
            listener: !flags[first_peer].is_empty(),
            adopted,
            channel,
            drain: drain || events,
            conns: tokens
                .into_iter()
                .zip(flags[first_peer + 1..].iter().copied())
                .filter(|(_, f)| !f.is_empty())
                .collect(),
        })
    }

    fn dispatch(&mut self, ready: Ready) {
        if ready.signals {
            self.on_signals();
        }
        if ready.listener {
            self.peers.accept(&mut self.spare, &mut self.log);
        }
        if ready.adopted {
            self.adopted = None;
            if let Some(pid) = self.machine.state().pid() {
                let group_alive = self.contain.alive(pid);
                let exit = Exit::Unknown;
                self.drive(Input::Died {
                    pid,
                    exit,
                    group_alive,
                });
            }
        }
        if ready.channel {
            self.on_channel();
        }
        if ready.drain {
            self.look_at_drain(Instant::now());
        }
        for (token, flags) in ready.conns {
            for intent in self.peers.on_ready(token, flags) {
                self.apply(intent);
            }
        }
    }

    fn on_signals(&mut self) {
        let mut chld = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => chld = true,
                Ok(Signal::SIGTERM | Signal::SIGINT) => self.terminate("signal"),
                Ok(Signal::SIGHUP) => self.reload_settings(),
                _ => {}
            }
        }
        if chld {
            self.reap();
        }
    }

    /// Reaps every ended child and routes each by its role.
    fn reap(&mut self) {
        let mut noted = false;
        for (pid, exit) in children::reaped() {
            // Not registered: an orphan of the service re-parented to us; reaping it is enough.
            let Some(role) = self.children.ended(pid) else {
                continue;
            };
            match self.child_ended(pid, role, exit) {
                Some(input) => self.drive(input),
                None => noted = true,
            }
        }
        // One of our children in a draining group may have been the last.
        self.look_at_drain(Instant::now());
        if noted {
            self.write_status();
        }
    }

    /// The readiness channel has something (or its writers are gone).
    fn on_channel(&mut self) {
        let Some(ch) = &mut self.channel else { return };
        match ch.read() {
            Heard::Ready(via) => self.drive(Input::ReadySignal { via }),
            Heard::Nothing => {}
            Heard::Closed => self.channel = None,
        }
    }

    /// Looks at a draining group again (a member ended, the cgroup changed, or the fallback
    /// poll is due). With a cgroup, the cgroup decides.
    fn look_at_drain(&mut self, now: Instant) {
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        let gone = if self.contain.events().is_some() {
            !self.contain.alive(drain.pgid())
        } else {
            drain.look(now)
        };
        if gone {
            self.drain = None;
            self.drive(Input::GroupGone);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if self.records.retry_at().is_some_and(|t| t <= now) {
            self.write_status();
        }
        // Probes and hooks past their timeout: their groups are killed, the reaping records.
        for pid in self.children.expire(now) {
            kill_group(pid, Signal::SIGKILL);
        }
        if self
            .drain
            .as_ref()
            .and_then(Drain::deadline)
            .is_some_and(|t| t <= now)
        {
            self.look_at_drain(now);
        }
        if self.machine_deadline().is_some_and(|d| d <= now) {
            self.drive(Input::Timer);
        }
        for i in 0..self.streams.len() {
            if self.streams[i].restart_at.is_some_and(|t| t <= now) {
                self.streams[i].restart_at = None;
                self.start_logger(i);
            }
        }
        self.phone_home(now);
    }

    /// Feeds `input`, carries out what the machine asks, feeds the inputs that produces, in
    /// order, then rewrites the status (and sends the records after it).
    pub(crate) fn drive(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        // Bounded, so that the loop always gets back to poll (the socket, the signals) even
        // if the machine kept asking for work "now".
        let mut fed = 0;
        while let Some(input) = inputs.pop_front() {
            fed += 1;
            let now = Instant::now();
            for out in self.machine.step(now, input) {
                inputs.extend(self.perform(now, out));
            }
            if inputs.is_empty() {
                inputs.extend(self.follow_up(fed));
            }
        }
        self.write_status();
    }

    /// Carries out one output; the machine's next input, if it produces one.
    fn perform(&mut self, now: Instant, out: Output) -> Option<Input> {
        match out {
            Output::Spawn => return Some(self.spawn_service()),
            Output::RunStop { pid } => match self.run_action("stop", "stop", Some(pid), None) {
                Ok(next) => return next,
                Err(e) => {
                    self.log.line(&format!(
                        "cannot run the stop script: {e}; signalling the group instead"
                    ));
                    return Some(Input::StopFailed);
                }
            },
            Output::KillGroup { pgid, signal } => self.contain.signal(pgid, signal),
            Output::Record(mut note) => {
                self.contain.explain(&mut note.kind);
                if matches!(note.kind, EventKind::Died { .. }) {
                    self.let_loggers_catch_up();
                    let (files, before) = self.launcher.output_files(&self.settings.service);
                    let before = before.as_ref().map(|r| [&r.stdout, &r.stderr]);
                    self.witness.complete(files, before, &mut note.kind);
                }
                Witness::started(&mut note.kind, self.settings.config_hash.as_deref());
                let started = matches!(note.kind, EventKind::Started { .. });
                self.record(note);
                if started {
                    self.notify(upk_core::config::HookEvent::Started);
                }
            }
            Output::RunProbe => return self.run_probe(),
            Output::Notify(event) => self.notify(event),
            Output::Exit => {
                // A fresh set of tries: the controller may be back since the last ones.
                self.exit_by = Some(now + EXIT_GRACE);
                self.phone = PhoneHome::new(self.settings.service.reconnect_retries);
                self.note(None, "terminate", EventKind::BuddyExiting);
            }
        }
        None
    }

    /// Before a death's tail is read: what the service wrote into a logger's FIFO reaches the
    /// file once the logger has read and written it ([`crate::logs::Stream::caught_up`]).
    /// Waits until every logger has, 1 ms at a time, at most [`LOGGER_CATCH_UP`]; without
    /// loggers, or with loggers already waiting for input, not at all.
    fn let_loggers_catch_up(&self) {
        let deadline = Instant::now() + LOGGER_CATCH_UP;
        while !self.streams.iter().all(|s| s.caught_up()) {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What follows once the machine asks for nothing more: a draining group is watched (or
    /// found gone), and a timer already due (a restart with UserRateLimit 0) is fed now, so
    /// that nothing but the records stands between reaping the old process and forking the
    /// new one.
    fn follow_up(&mut self, fed: u32) -> Option<Input> {
        match *self.machine.state() {
            State::Stopping {
                pid: None, pgid, ..
            } if self.drain.is_none() => {
                let mut drain = Drain::new(pgid);
                let gone = if self.contain.events().is_some() {
                    !self.contain.alive(pgid)
                } else {
                    drain.look(Instant::now())
                };
                if gone {
                    return Some(Input::GroupGone);
                }
                self.drain = Some(drain);
            }
            State::Stopping { pid: None, .. } => {}
            _ => self.drain = None,
        }
        let due = self.machine_deadline().is_some_and(|d| d <= Instant::now());
        (fed < MAX_FEEDS && due).then_some(Input::Timer)
    }

    /// Exit: say so, remove the socket, leave the status for the next buddy.
    fn finish(mut self) -> i32 {
        let ring = &self.records.ring;
        if !ring.is_empty() {
            let line = format!(
                "exiting with {} records undelivered (seq {}..={}); the next buddy reports them as lost",
                ring.len(),
                ring.acked() + 1,
                ring.last_seq()
            );
            self.log.line(&line);
        }
        let _ = std::fs::remove_file(self.dir.socket());
        let _ = std::fs::remove_file(self.dir.pidfile());
        if self.machine.state().pid().is_none() {
            self.contain.remove();
        }
        self.write_status();
        self.log.line("exiting");
        upk_core::exit::OK
    }
}
