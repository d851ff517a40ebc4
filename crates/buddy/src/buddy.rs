//! The buddy's poll loop: the only place that performs effects.
//!
//! One `poll(2)` over the signalfd, the listening socket, the adopted process's pidfd, the
//! readiness channel and the peers, with one timeout: the earliest of the machine's deadline,
//! a logger restart, a phone-home retry, a probe's or hook's timeout and the exit deadline. Everything that arrives is turned into an input for
//! the pure [`Machine`], whose outputs are carried out here; the status file is rewritten after
//! every step. Nothing sleeps, and after start-up nothing is fatal: errors become records or
//! log lines and the loop goes on ("from now on, we must not die").

use crate::conn::{self, Conn};
use crate::health::{self, Channel, Heard, ProbeRun};
use crate::hooks::{self, HookRun};
use crate::logs::{open_redirects, BuddyLog, Redirects, Stream};
use crate::machine::{After, Command, Input, Machine, Note, Output, Policy, State};
use crate::ring::Ring;
use crate::spawn::{self, Creds, Extra, Stdio};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use upk_core::config::{HookEvent, Readiness};
use upk_core::event::{EventKind, Exit, Record, StateName};
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, Role, PROTOCOL_VERSION};
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::{self, Status, Want};

/// How long a terminating buddy tries to deliver pending records before it exits anyway.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// Pause between phone-home attempts (shorter while exiting).
const RETRY: Duration = Duration::from_secs(1);
const RETRY_EXITING: Duration = Duration::from_millis(100);
/// While a stop waits for the rest of the group, how often to look whether it is gone
/// (needed when the members are not our children, as with an adopted service).
const DRAIN_CHECK: Duration = Duration::from_millis(100);
/// Longest a due restart waits for the controller to acknowledge a half-full ring. The audit
/// trail's back-pressure: a crash loop restarts no faster than its records are stored, so the
/// ring never overflows while a controller listens, and a storm of crash loops leaves the
/// controller the CPU it needs (docs/state-machine.md).
const HOLD_MAX: Duration = Duration::from_secs(1);
/// Most inputs one [`Buddy::drive`] feeds the machine before the loop polls again.
const MAX_FEEDS: u32 = 8;
/// Most client connections at once; more are answered with an error and closed.
const MAX_CONNS: usize = 64;
/// Descriptors kept free for the status file, spawns, probes and hooks: a connection that
/// would leave fewer free is refused.
const FD_HEADROOM: i32 = 16;
/// How soon a status write that failed is tried again.
const STATUS_RETRY: Duration = Duration::from_millis(100);

/// A start-up failure: the buddy exits with `code` after printing `message`.
#[derive(Debug)]
pub struct Fatal {
    /// Exit code (see `upk_core::exit`).
    pub code: i32,
    /// One sentence.
    pub message: String,
}

fn permanent(message: String) -> Fatal {
    Fatal {
        code: upk_core::exit::PERMANENT,
        message,
    }
}
fn temporary(what: &str, e: impl std::fmt::Display) -> Fatal {
    Fatal {
        code: upk_core::exit::TEMPORARY,
        message: format!("{what}: {e}"),
    }
}

/// An action script in flight, and who waits for its result.
struct ActionRun {
    pid: i32,
    action: String,
    reply_to: Option<(u64, Option<u64>)>,
}

/// Phone-home bookkeeping.
struct PhoneHome {
    tries_left: i64,
    next_try: Option<Instant>,
}

/// What one `poll` found ready, fixed at poll time (handling one source may change the set).
struct Ready {
    signals: bool,
    listener: bool,
    adopted: bool,
    channel: bool,
    conns: Vec<(u64, PollFlags)>,
}

/// One supervised run directory.
pub struct Buddy {
    dir: RunDir,
    settings: Settings,
    creds: Result<Creds, String>,
    machine: Machine,
    ring: Ring,
    /// The record sequence the ring's seqs belong to ([`Status::incarnation`]).
    incarnation: String,
    signals: SignalFd,
    listener: UnixListener,
    conns: Vec<Conn>,
    next_token: u64,
    /// pidfd of an adopted main process (not our child: its end is seen here, not by waitpid).
    adopted: Option<OwnedFd>,
    pid_start: Option<u64>,
    actions: Vec<ActionRun>,
    streams: [Stream; 2],
    phone: PhoneHome,
    log: BuddyLog,
    exit_by: Option<Instant>,
    /// stdin of every child.
    devnull: File,
    /// A descriptor held in reserve: closed to let the status write or an accept through when
    /// the process is out of descriptors, then taken again.
    spare: Option<File>,
    /// The status file could not be written: retried until it is (see [`STATUS_RETRY`]).
    status_retry_at: Option<Instant>,
    /// The redirect files, kept open between spawns (see [`Buddy::open_redirects`]).
    redirects: Option<Redirects>,
    /// Last look at a draining group (see [`DRAIN_CHECK`]).
    drain_checked: Instant,
    since_us: i64,
    /// Records made while the machine is driven, sent once the status file agrees with them
    /// (a client that reads the status on an event must not find the state before it).
    held: Option<Vec<u8>>,
    /// The health probe in flight.
    probe: Option<ProbeRun>,
    /// Notification hooks in flight.
    hooks: Vec<HookRun>,
    /// Where this run's readiness comes from.
    channel: Option<Channel>,
    /// The latest records' summaries, for hooks (`UPK_EVENTS`); empty without hooks.
    recent: VecDeque<String>,
    _lock: Flock<File>,
}

impl Buddy {
    /// Start-up: take the lock, read settings and the previous status, bind the socket, start
    /// the loggers, adopt a still-running service or start it if it is wanted up.
    pub fn open(dir: RunDir) -> Result<Buddy, Fatal> {
        // Descriptors 0-2 must be taken: a file opened later would otherwise land there and be
        // handed to children under the wrong number (or dup'ed onto itself, keeping CLOEXEC).
        for fd in 0..3 {
            if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(Errno::EBADF) {
                let null = OpenOptions::new().read(true).write(true).open("/dev/null");
                // The lowest free descriptor is `fd` itself; keep it open for good.
                null.map(std::os::fd::IntoRawFd::into_raw_fd)
                    .map_err(|e| temporary("/dev/null", e))?;
            }
        }
        // A session of its own (unless it leads one already), so that an init system killing
        // its spawner's process group or session does not take the buddy with it.
        let _ = nix::unistd::setsid();
        let settings = Settings::read(&dir.settings()).map_err(permanent)?;
        let lock = take_lock(&dir)?;
        // Init systems track daemons by pidfile (OpenRC's daemon records): a buddy killed
        // with -9 leaves it naming a dead pid, which is how they see "crashed".
        let pid = format!("{}\n", std::process::id());
        upk_core::fsutil::write_atomic(&dir.pidfile(), pid.as_bytes(), 0o644, false)
            .map_err(|e| temporary("cannot write buddy.pid", e))?;
        // Every child (service, scripts, loggers, hooks) inherits the buddy's environment:
        // made clean and documented here, once, while there is one thread (whatever started
        // the controller, an init system's RC_* and EINFO_* must not reach the services).
        spawn::clean_environment(&settings.service.id.to_string());
        std::fs::create_dir_all(dir.log()).map_err(|e| temporary("cannot create log/", e))?;
        let mut log = BuddyLog::open(dir.log_file("buddy"));

        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        // The whole mask, not an addition: whatever the spawner blocked is not ours to keep.
        mask.thread_set_mask()
            .map_err(|e| temporary("sigprocmask", e))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| temporary("signalfd", e))?;
        // Orphans of the service (double forks, leftovers) are re-parented to us and reaped
        // here, so "the group is empty" can be known and no zombie outlives a stop.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| temporary("PR_SET_CHILD_SUBREAPER", e))?;

        let listener = bind(&dir)?;
        let devnull = File::open("/dev/null").map_err(|e| temporary("/dev/null", e))?;
        let previous = Status::read(&dir.status()).unwrap_or_else(|e| {
            log.line(&format!("ignoring unreadable status file: {e}"));
            None
        });
        let svc = &settings.service;
        let want = match &previous {
            Some(p) => p.want,
            None if svc.initial_state == upk_core::config::InitialState::Running => Want::Up,
            None => Want::Down,
        };
        let (incarnation, last_seq, acked) = continued_sequence(previous.as_ref(), &mut log);
        let seed = u64::from(std::process::id()) ^ upk_core::time::mono_us() as u64;
        let machine = Machine::new(Policy::of(svc), want, seed);
        let creds = Creds::resolve(svc, nix::unistd::geteuid(), nix::unistd::getegid());
        let streams = [
            Stream::new(&dir, "stdout", svc),
            Stream::new(&dir, "stderr", svc),
        ];
        let tries_left = svc.reconnect_retries;
        let mut buddy = Buddy {
            ring: Ring::new(svc.ringbuffer_size as usize, last_seq, acked),
            incarnation,
            dir,
            creds,
            machine,
            signals,
            listener,
            conns: Vec::new(),
            next_token: 0,
            adopted: None,
            pid_start: None,
            actions: Vec::new(),
            streams,
            phone: PhoneHome {
                tries_left,
                next_try: None,
            },
            log,
            exit_by: None,
            devnull,
            spare: File::open("/dev/null").ok(),
            status_retry_at: None,
            redirects: None,
            drain_checked: Instant::now(),
            since_us: upk_core::time::wall_us(),
            settings,
            held: None,
            probe: None,
            hooks: Vec::new(),
            channel: None,
            recent: VecDeque::new(),
            _lock: lock,
        };
        if let Err(e) = &buddy.creds {
            buddy.log.line(&format!("the service cannot start: {e}"));
        }
        buddy.start_up(previous);
        Ok(buddy)
    }

    fn start_up(&mut self, previous: Option<Status>) {
        let blank = self.blank_record(EventKind::Started);
        self.ring
            .account_unacked(blank, "previous buddy ended with records unacknowledged");
        let buddy_pid = std::process::id() as i32;
        self.record(Note {
            from: self.machine.state().name(),
            to: self.machine.state().name(),
            pid: Some(buddy_pid),
            cause: "startup".into(),
            kind: EventKind::BuddyStarted { buddy_pid },
        });
        // Loggers of a killed predecessor still read our FIFOs: retire them before starting
        // ours (what they had not read yet stays in the pipe for the new ones).
        for old in previous
            .iter()
            .flat_map(|p| &p.loggers)
            .filter(|l| l.alive())
        {
            self.log.line(&format!(
                "stopping pid {}, a logger left by the previous buddy",
                old.pid
            ));
            let _ = signal::kill(Pid::from_raw(old.pid), Signal::SIGTERM);
        }
        for i in 0..self.streams.len() {
            self.start_logger(i);
        }
        let orphan = previous.as_ref().and_then(|p| Some((p.pid?, p.pid_start?)));
        if let Some((pid, start)) = orphan {
            if let Some(fd) = still_running(pid, start) {
                self.adopted = Some(fd);
                self.pid_start = Some(start);
                self.log
                    .line(&format!("adopting running service pid {pid}"));
                let ready = previous
                    .as_ref()
                    .is_some_and(|p| p.state == StateName::Ready);
                let ready_timed_out = previous.as_ref().is_some_and(|p| p.ready_timed_out);
                if !ready && self.settings.service.readiness == Readiness::Notify {
                    // It still knows the socket's path: a new socket there still hears it.
                    self.open_notify_socket();
                }
                self.drive(Input::Adopted {
                    pid,
                    ready,
                    ready_timed_out,
                });
                if self.machine.want() == Want::Down {
                    self.drive(Input::Command(Command::Stop, "startup: wanted down".into()));
                }
                return;
            }
        }
        if let Some(p) = previous.as_ref().filter(|p| p.state == StateName::Failed) {
            self.machine.resume_failed(Instant::now(), p.failures);
            self.write_status();
        } else if self.machine.want() == Want::Up {
            self.drive(Input::Command(Command::Start, "startup: wanted up".into()));
        } else {
            self.write_status();
        }
    }

    /// Runs until the machine says exit and pending records are delivered (or the grace ends).
    pub fn run(mut self) -> i32 {
        loop {
            let now = Instant::now();
            if let Some(by) = self.exit_by {
                // Done when everything is delivered, the grace is over, or nobody can be
                // reached any more (no controller connected and phone-home tries used up).
                let unreachable = !self.controller_listening() && self.phone.tries_left == 0;
                if self.ring.is_empty() || now >= by || unreachable {
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
        }
    }

    /// The machine's deadline, except that a restart due while a listening controller has
    /// half the ring unacknowledged waits for its ack, up to [`HOLD_MAX`] past its time (an
    /// ack runs the timers again, so the restart follows it at once).
    fn machine_deadline(&self) -> Option<Instant> {
        let due = self.machine.deadline()?;
        let held = matches!(self.machine.state(), State::Backoff { .. })
            && self.controller_listening()
            && self.ring.len() * 2 >= self.ring.capacity();
        Some(if held { due + HOLD_MAX } else { due })
    }

    /// The earliest timer of any kind.
    fn deadline(&self) -> Option<Instant> {
        let loggers = self.streams.iter().filter_map(|s| s.restart_at);
        let phone = self.phone.next_try.filter(|_| self.must_phone_home());
        let drain = self.draining().then(|| self.drain_checked + DRAIN_CHECK);
        let probe = self
            .probe
            .as_ref()
            .filter(|p| !p.timed_out)
            .map(|p| p.deadline);
        let hooks = self
            .hooks
            .iter()
            .filter(|h| !h.timed_out)
            .map(|h| h.deadline);
        [
            self.machine_deadline(),
            phone,
            self.exit_by,
            drain,
            probe,
            self.status_retry_at,
        ]
        .into_iter()
        .flatten()
        .chain(loggers)
        .chain(hooks)
        .min()
    }

    /// Blocks until a descriptor is ready or the timeout passes.
    fn wait(&self, timeout: Option<Duration>) -> Result<Ready, Errno> {
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(fd) = &self.adopted {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(ch) = &self.channel {
            fds.push(PollFd::new(ch.as_fd(), PollFlags::POLLIN));
        }
        // A peer that closed its end is only polled while output waits: its POLLHUP would
        // otherwise wake the loop for nothing until its last reply is ready.
        let mut tokens = Vec::new();
        for c in &self.conns {
            let mut flags = if c.closing {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            if c.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            if !flags.is_empty() {
                fds.push(PollFd::new(c.stream.as_fd(), flags));
                tokens.push(c.token);
            }
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up so a timer never fires a hair early and spins.
            Some(d) => {
                PollTimeout::try_from(d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        nix::poll::poll(&mut fds, timeout)?;
        let mut flags = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()));
        let mut next = || flags.next().is_some_and(|f| !f.is_empty());
        let (signals, listener) = (next(), next());
        let adopted = self.adopted.is_some() && next();
        let channel = self.channel.is_some() && next();
        let conns = tokens
            .into_iter()
            .zip(flags)
            .filter(|(_, f)| !f.is_empty())
            .collect();
        Ok(Ready {
            signals,
            listener,
            adopted,
            channel,
            conns,
        })
    }

    fn dispatch(&mut self, ready: Ready) {
        if ready.signals {
            self.on_signals();
        }
        if ready.listener {
            self.accept();
        }
        if ready.adopted {
            self.adopted_died();
        }
        if ready.channel {
            self.on_channel();
        }
        for (token, flags) in ready.conns {
            self.on_conn(token, flags);
        }
    }

    // ---- signals and children -------------------------------------------------------------

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

    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Exited { code }),
                Ok(WaitStatus::Signaled(pid, sig, core)) => (
                    pid.as_raw(),
                    Exit::Killed {
                        signal: sig as i32,
                        core,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            self.child_ended(pid, exit);
        }
        if let State::Stopping {
            pid: None, pgid, ..
        } = *self.machine.state()
        {
            if !group_alive(pgid) {
                self.drive(Input::GroupGone);
            }
        }
    }

    fn child_ended(&mut self, pid: i32, exit: Exit) {
        if let Some(run) = self.probe.take_if(|p| p.pid == pid) {
            let svc = &self.settings.service;
            let output = self.dir.log_file("health");
            let detail = health::probe_detail(exit, run.timed_out, &output, svc.health_timeout);
            let ok = exit.success() && !run.timed_out;
            self.drive(Input::Probe { ok, detail });
        } else if let Some(i) = self.hooks.iter().position(|h| h.pid == pid) {
            let run = self.hooks.swap_remove(i);
            let kind = EventKind::HookRun {
                hook: run.hook,
                event: run.event.as_str().to_owned(),
                exit,
                timed_out: run.timed_out,
            };
            self.note(Some(pid), "hook", kind);
            self.write_status();
        } else if self.machine.state().pid() == Some(pid) && self.adopted.is_none() {
            let pgid = pid;
            self.drive(Input::Died {
                pid,
                exit,
                group_alive: group_alive(pgid),
            });
        } else if let Some(i) = self.actions.iter().position(|a| a.pid == pid) {
            let run = self.actions.swap_remove(i);
            // A stop script that failed did not stop the service: the signals take over.
            let stop_failed = run.action == "stop"
                && !exit.success()
                && matches!(self.machine.state(), State::Stopping { pid: Some(_), .. });
            self.note(
                Some(pid),
                "action",
                EventKind::ActionRun {
                    action: run.action.clone(),
                    exit,
                },
            );
            if let Some((token, id)) = run.reply_to {
                self.reply(
                    token,
                    id,
                    BuddyReply::ActionDone {
                        action: run.action,
                        exit,
                    },
                );
                self.close_if_done(token);
            }
            if stop_failed {
                self.drive(Input::StopFailed);
            } else {
                self.write_status();
            }
        } else if let Some(i) = self.streams.iter().position(|s| s.logger == Some(pid)) {
            let stream = &mut self.streams[i];
            let name = stream.name.to_owned();
            stream.schedule_restart(Instant::now());
            self.note(
                Some(pid),
                "exit",
                EventKind::LoggerDied { stream: name, exit },
            );
            self.write_status();
        }
        // Anything else was an orphan of the service re-parented to us: reaping it is enough.
    }

    fn adopted_died(&mut self) {
        self.adopted = None;
        if let Some(pid) = self.machine.state().pid() {
            self.drive(Input::Died {
                pid,
                exit: Exit::Unknown,
                group_alive: group_alive(pid),
            });
        }
    }

    /// The main process is gone but a stop waits for the rest of its group.
    fn draining(&self) -> bool {
        matches!(self.machine.state(), State::Stopping { pid: None, .. })
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

    fn on_timers(&mut self, now: Instant) {
        if self.status_retry_at.is_some_and(|t| t <= now) {
            self.write_status();
        }
        // Probes and hooks past their timeout: their groups are killed, the reaping records.
        if let Some(p) = self
            .probe
            .as_mut()
            .filter(|p| !p.timed_out && p.deadline <= now)
        {
            p.timed_out = true;
            kill_group(p.pid, Signal::SIGKILL);
        }
        for h in self
            .hooks
            .iter_mut()
            .filter(|h| !h.timed_out && h.deadline <= now)
        {
            h.timed_out = true;
            kill_group(h.pid, Signal::SIGKILL);
        }
        if self.draining() && now >= self.drain_checked + DRAIN_CHECK {
            self.drain_checked = now;
            if let State::Stopping { pgid, .. } = *self.machine.state() {
                if !group_alive(pgid) {
                    self.drive(Input::GroupGone);
                }
            }
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

    fn reload_settings(&mut self) {
        self.log.reopen();
        self.redirects = None;
        match Settings::read(&self.dir.settings()) {
            Ok(s) => {
                self.machine.set_policy(Policy::of(&s.service));
                self.ring.resize(s.service.ringbuffer_size as usize);
                self.creds =
                    Creds::resolve(&s.service, nix::unistd::geteuid(), nix::unistd::getegid());
                for i in 0..self.streams.len() {
                    self.streams[i].configure(&self.dir, &s.service);
                    let stream = &self.streams[i];
                    match (stream.script.is_some(), stream.logger) {
                        (false, Some(pid)) => {
                            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
                        }
                        (true, None) if stream.restart_at.is_none() => self.start_logger(i),
                        _ => {}
                    }
                }
                self.settings = s;
                self.log.line("settings re-read");
            }
            Err(e) => self.log.line(&format!("keeping the old settings: {e}")),
        }
    }

    // ---- the machine ---------------------------------------------------------------------

    /// Feeds one input and carries out what the machine asks, then rewrites the status.
    fn drive(&mut self, input: Input) {
        let outer = self.held.is_none();
        if outer {
            self.held = Some(Vec::new());
        }
        let mut next = Some(input);
        // Inputs fed in this call: bounded, so that the loop always gets back to poll (the
        // socket, the signals) even if the machine kept asking for work "now".
        let mut fed = 0;
        while let Some(input) = next.take() {
            fed += 1;
            let now = Instant::now();
            let mut stop_failed = false;
            let mut queue: VecDeque<Output> = self.machine.step(now, input).into();
            while let Some(out) = queue.pop_front() {
                match out {
                    Output::Spawn => {
                        let answer = match self.spawn_service() {
                            Ok(pid) => Input::Spawned { pid },
                            Err((error, permanent)) => Input::SpawnFailed { error, permanent },
                        };
                        for o in self.machine.step(now, answer).into_iter().rev() {
                            queue.push_front(o);
                        }
                    }
                    Output::RunStop { pid } => {
                        if let Err(e) = self.run_action("stop", "stop", Some(pid), None) {
                            self.log.line(&format!(
                                "cannot run the stop script: {e}; signalling the group instead"
                            ));
                            stop_failed = true;
                        }
                    }
                    Output::KillGroup { pgid, signal } => kill_group(pgid, signal),
                    Output::Record(note) => self.record(note),
                    Output::RunProbe => self.run_probe(),
                    Output::Notify(event) => self.notify(event),
                    Output::Exit => {
                        // A fresh set of tries: the controller may be back since the last ones.
                        self.exit_by = Some(now + EXIT_GRACE);
                        self.phone = self.fresh_phone();
                        self.note(None, "terminate", EventKind::BuddyExiting);
                    }
                }
            }
            // A timer already due (a restart with UserRateLimit 0) is carried out now, so that
            // nothing but the records stands between reaping the old process and forking the
            // new one; the status file is written once, after. Only the outermost call does
            // it: a nested one (a probe that could not start reports at once) must not feed
            // timers too, or a due probe that cannot start would recurse without end.
            if stop_failed {
                next = Some(Input::StopFailed);
            } else if outer
                && fed < MAX_FEEDS
                && self.machine_deadline().is_some_and(|d| d <= Instant::now())
            {
                next = Some(Input::Timer);
            }
        }
        self.write_status();
        if outer {
            if let Some(lines) = self.held.take().filter(|l| !l.is_empty()) {
                self.publish(&lines);
            }
        }
    }

    /// The redirect files, opened at first use and kept until SIGHUP.
    fn open_redirects(&mut self) -> Result<&Redirects, String> {
        if self.redirects.is_none() {
            // Opened for the service's user: what it could not write, it cannot redirect to.
            let creds = self.creds.as_ref().map_err(Clone::clone)?;
            let r = open_redirects(&self.dir, &self.settings.service, creds)
                .map_err(|e| e.to_string())?;
            self.redirects = Some(r);
        }
        self.redirects
            .as_ref()
            .ok_or_else(|| "no redirect files".to_owned())
    }

    /// What every child is started with: the service's credentials and the redirect files
    /// (call [`Buddy::open_redirects`] first); the error says why nothing can start.
    fn child_context(&self) -> Result<(&Creds, &Redirects), String> {
        let creds = self.creds.as_ref().map_err(Clone::clone)?;
        let redirects = self
            .redirects
            .as_ref()
            .ok_or_else(|| "no redirect files".to_owned())?;
        Ok((creds, redirects))
    }

    /// Starts the service; the error says why not, and whether retrying cannot help.
    fn spawn_service(&mut self) -> Result<i32, (String, bool)> {
        // A probe of the last run says nothing about this one: end it, unheard.
        if let Some(p) = self.probe.take() {
            kill_group(p.pid, Signal::SIGKILL);
        }
        if self.creds.is_err() {
            // Looked up again: the user may have been created since.
            let svc = &self.settings.service;
            self.creds = Creds::resolve(svc, nix::unistd::geteuid(), nix::unistd::getegid());
        }
        if let Err(e) = &self.creds {
            return Err((e.clone(), true));
        }
        self.spawn_resolved().map_err(|(e, errno)| {
            // EPERM between fork and exec: the privilege drop was refused, and will be again.
            let permanent =
                errno == Some(libc::EPERM) && self.creds.as_ref().is_ok_and(|c| c.uid.is_some());
            (e, permanent)
        })
    }

    fn spawn_resolved(&mut self) -> Result<i32, (String, Option<i32>)> {
        let plain = |e: String| (e, None);
        self.open_redirects().map_err(plain)?;
        let readiness = self.settings.service.readiness;
        let mut extra = Extra::default();
        // The child's end of a notification pipe; ours replaces the last run's channel.
        let mut child_end = None;
        match readiness {
            Readiness::Fd(n) => {
                let (ours, theirs) = health::pipe()
                    .map_err(|e| plain(format!("cannot make the readiness pipe: {e}")))?;
                self.channel = Some(Channel::Pipe(ours));
                child_end = Some((theirs, n as i32));
            }
            Readiness::Notify => {
                if !matches!(self.channel, Some(Channel::Notify(_))) {
                    self.open_notify_socket();
                }
                let path = health::notify_path(self.dir.root());
                extra
                    .env
                    .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
            }
            Readiness::None | Readiness::Health => self.channel = None,
        }
        extra.fd = child_end.as_ref().map(|(fd, n)| (fd.as_fd(), *n));
        let (creds, r) = self.child_context().map_err(plain)?;
        let stdio = Stdio {
            stdin: self.devnull.as_fd(),
            stdout: self.streams[0].write_end().unwrap_or(r.stdout.as_fd()),
            stderr: self.streams[1].write_end().unwrap_or(r.stderr.as_fd()),
        };
        let start = self.dir.action("start");
        let pid =
            spawn::spawn(&start, &[], self.dir.root(), creds, stdio, &extra).map_err(|e| {
                let errno = e.raw_os_error();
                (format!("cannot execute {}: {e}", start.display()), errno)
            })?;
        self.adopted = None;
        // With the pid, the start time is what lets a successor adopt the process: out of
        // descriptors (reading /proc takes one), the spare one is given up for it.
        self.pid_start = status::process_start_time(pid).or_else(|| {
            self.spare.take()?;
            let start = status::process_start_time(pid);
            self.spare = File::open("/dev/null").ok();
            start
        });
        Ok(pid)
    }

    /// Binds `notify.sock` for the service's user; a failure is logged and readiness then
    /// comes only from ReadyTimeout.
    fn open_notify_socket(&mut self) {
        let owner = self.creds.as_ref().ok().and_then(|c| c.uid.zip(c.gid));
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

    /// Starts `actions/health` unless a probe still runs; its end is a [`Input::Probe`].
    fn run_probe(&mut self) {
        if self.probe.is_some() {
            return;
        }
        let result = (|| -> Result<i32, String> {
            let out = self.dir.log_file("health");
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .open(&out)
                .map_err(|e| format!("{}: {e}", out.display()))?;
            self.open_redirects()?;
            let (creds, _) = self.child_context()?;
            let stdio = Stdio {
                stdin: self.devnull.as_fd(),
                stdout: file.as_fd(),
                stderr: file.as_fd(),
            };
            let path = self.dir.action("health");
            spawn::spawn(&path, &[], self.dir.root(), creds, stdio, &Extra::default())
                .map_err(|e| format!("cannot execute {}: {e}", path.display()))
        })();
        match result {
            Ok(pid) => {
                let timeout = upk_core::time::bounded_secs(self.settings.service.health_timeout);
                self.probe = Some(ProbeRun {
                    pid,
                    deadline: Instant::now() + timeout,
                    timed_out: false,
                });
            }
            Err(detail) => self.drive(Input::Probe { ok: false, detail }),
        }
    }

    /// Starts the hooks subscribed to `event`, with the context in their environment.
    fn notify(&mut self, event: HookEvent) {
        let svc = &self.settings.service;
        let due: Vec<(String, f64)> = svc
            .notify
            .iter()
            .filter(|h| h.on.contains(&event))
            .map(|h| (h.name.clone(), h.timeout))
            .collect();
        for (name, timeout) in due {
            if let Some(busy) = self.hooks.iter().find(|h| h.hook == name) {
                let reason = format!("still running (pid {}) from an earlier event", busy.pid);
                let kind = EventKind::HookSkipped {
                    hook: name,
                    event: event.as_str().to_owned(),
                    reason,
                };
                self.note(None, "hook", kind);
                continue;
            }
            match self.spawn_hook(&name, event) {
                Ok(pid) => self.hooks.push(HookRun {
                    pid,
                    hook: name,
                    event,
                    deadline: Instant::now() + upk_core::time::bounded_secs(timeout),
                    timed_out: false,
                }),
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
            recent: &self.recent,
        };
        let extra = Extra {
            env: hooks::env(name, &ctx),
            fd: None,
        };
        let stdio = Stdio {
            stdin: self.devnull.as_fd(),
            stdout: log.as_fd(),
            stderr: log.as_fd(),
        };
        let path = self.dir.script(&format!("hook@{name}"));
        // The buddy's own credentials: a hook is the operator's code, not the service's.
        spawn::spawn(
            &path,
            &[],
            self.dir.root(),
            &Creds::default(),
            stdio,
            &extra,
        )
        .map_err(|e| format!("cannot execute {}: {e}", path.display()))
    }

    /// Runs `actions/<file>` with the service's pid as `$1` (when it runs).
    fn run_action(
        &mut self,
        file: &str,
        action: &str,
        pid: Option<i32>,
        reply_to: Option<(u64, Option<u64>)>,
    ) -> Result<(), String> {
        self.open_redirects()?;
        let (creds, r) = self.child_context()?;
        let stdio = Stdio {
            stdin: self.devnull.as_fd(),
            stdout: r.stdout.as_fd(),
            stderr: r.stderr.as_fd(),
        };
        let args: Vec<String> = pid.map(|p| p.to_string()).into_iter().collect();
        let path = self.dir.action(file);
        let child = spawn::spawn(
            &path,
            &args,
            self.dir.root(),
            creds,
            stdio,
            &Extra::default(),
        )
        .map_err(|e| format!("cannot execute {}: {e}", path.display()))?;
        self.actions.push(ActionRun {
            pid: child,
            action: action.to_owned(),
            reply_to,
        });
        Ok(())
    }

    fn start_logger(&mut self, i: usize) {
        let result = (|| -> Result<i32, String> {
            let Some(script) = self.streams[i].script.clone() else {
                return Ok(0);
            };
            let stream = &mut self.streams[i];
            stream
                .hold()
                .map_err(|e| format!("{}: {e}", stream.fifo.display()))?;
            let stdin = stream.logger_end().map_err(|e| e.to_string())?;
            self.open_redirects()?;
            let (creds, r) = self.child_context()?;
            let stdio = Stdio {
                stdin: stdin.as_fd(),
                stdout: r.stdout.as_fd(),
                stderr: r.stderr.as_fd(),
            };
            spawn::spawn(
                &script,
                &[],
                self.dir.root(),
                creds,
                stdio,
                &Extra::default(),
            )
            .map_err(|e| format!("cannot execute {}: {e}", script.display()))
        })();
        let name = self.streams[i].name;
        match result {
            Ok(0) => {}
            Ok(pid) => {
                let stream = &mut self.streams[i];
                stream.logger = Some(pid);
                stream.logger_start = status::process_start_time(pid);
                stream.started = Some(Instant::now());
                self.note(
                    Some(pid),
                    "logger",
                    EventKind::LoggerStarted {
                        stream: name.into(),
                    },
                );
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

    // ---- records ---------------------------------------------------------------------------

    fn blank_record(&self, kind: EventKind) -> Record {
        let s = self.machine.state().name();
        Record {
            seq: 0,
            wall_us: upk_core::time::wall_us(),
            mono_us: upk_core::time::mono_us(),
            from: s,
            to: s,
            pid: None,
            cause: String::new(),
            kind,
        }
    }

    /// A record that changes no state.
    fn note(&mut self, pid: Option<i32>, cause: &str, kind: EventKind) {
        let s = self.machine.state().name();
        self.record(Note {
            from: s,
            to: s,
            pid,
            cause: cause.into(),
            kind,
        });
    }

    fn record(&mut self, note: Note) {
        let mut r = self.blank_record(note.kind);
        (r.from, r.to, r.pid, r.cause) = (note.from, note.to, note.pid, note.cause);
        // `since_us` dates the state, except that `ready` keeps the start of its run: uptime
        // counts from the start, not from the readiness signal.
        if r.from != r.to && !(r.from == StateName::Running && r.to == StateName::Ready) {
            self.since_us = r.wall_us;
        }
        // Kept (and formatted) only for hooks, which are the only readers.
        if !self.settings.service.notify.is_empty() {
            if self.recent.len() == hooks::RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(hooks::recent_line(&r));
        }
        let stored = self.ring.push(r);
        // Encoded only when someone listens: records sit on the restart path.
        if self.conns.iter().any(|c| c.subscribed) {
            let line = proto::encode(&Envelope {
                id: None,
                body: BuddyReply::Event {
                    record: stored.clone(),
                },
            });
            match &mut self.held {
                Some(held) => held.extend(line),
                None => self.publish(&line),
            }
        }
        self.phone_home(Instant::now());
    }

    /// Sends encoded records to every subscriber.
    fn publish(&mut self, lines: &[u8]) {
        let mut dead = Vec::new();
        for c in self.conns.iter_mut().filter(|c| c.subscribed) {
            if c.send(lines).is_err() {
                dead.push(c.token);
            }
        }
        self.conns.retain(|c| !dead.contains(&c.token));
    }

    fn status(&self) -> Status {
        let state = self.machine.state();
        let next_start_us = match state {
            State::Backoff { until }
            | State::Paused { until }
            | State::Failed {
                retry_at: Some(until),
            } => {
                let left = until.saturating_duration_since(Instant::now());
                Some(upk_core::time::wall_us() + left.as_micros() as i64)
            }
            _ => None,
        };
        Status {
            service: self.settings.service.id.to_string(),
            state: state.name(),
            want: self.machine.want(),
            pid: state.pid(),
            pid_start: state.pid().and(self.pid_start),
            since_us: self.since_us,
            buddy_pid: std::process::id() as i32,
            restarts: self.machine.restarts(),
            failures: self.machine.failures(),
            last_exit: self.machine.last_exit(),
            next_start_us,
            incarnation: self.incarnation.clone(),
            seq: self.ring.last_seq(),
            acked: self.ring.acked(),
            loggers: self
                .streams
                .iter()
                .filter_map(|s| {
                    Some(status::Proc {
                        pid: s.logger?,
                        start: s.logger_start?,
                    })
                })
                .collect(),
            needs_ready: self.machine.needs_ready(),
            ready_timed_out: self.machine.ready_timed_out(),
            health: self.machine.health(),
        }
    }

    /// Rewrites the status file. It names the main process, so that a successor adopts it
    /// instead of starting a second copy: out of descriptors, the spare one is given up for
    /// it; a write that fails anyway is retried every [`STATUS_RETRY`] until it succeeds.
    fn write_status(&mut self) {
        let status = self.status();
        let path = self.dir.status();
        let mut result = status.write(&path);
        if result.as_ref().is_err_and(out_of_fds) && self.spare.take().is_some() {
            result = status.write(&path);
            self.spare = File::open("/dev/null").ok();
        }
        match result {
            Ok(()) => {
                if self.status_retry_at.take().is_some() {
                    self.log.line("the status file is written again");
                }
            }
            Err(e) => {
                if self.status_retry_at.is_none() {
                    self.log.line(&format!(
                        "cannot write the status file: {e}; retrying every {} ms",
                        STATUS_RETRY.as_millis()
                    ));
                }
                self.status_retry_at = Some(Instant::now() + STATUS_RETRY);
            }
        }
    }

    // ---- phone home ------------------------------------------------------------------------

    fn fresh_phone(&self) -> PhoneHome {
        PhoneHome {
            tries_left: self.settings.service.reconnect_retries,
            next_try: None,
        }
    }

    fn controller_listening(&self) -> bool {
        self.conns
            .iter()
            .any(|c| c.subscribed && c.role == Role::Controller)
    }

    fn must_phone_home(&self) -> bool {
        !self.ring.is_empty()
            && !self.controller_listening()
            && (self.ring.nearly_full() || self.exit_by.is_some())
            && self.phone.tries_left != 0
    }

    /// Dials the controller when the ring is 75% full (or the buddy exits) and none listens.
    fn phone_home(&mut self, now: Instant) {
        if !self.must_phone_home() || self.phone.next_try.is_some_and(|t| t > now) {
            return;
        }
        let path = self.settings.controller_socket.clone();
        match UnixStream::connect(&path) {
            Ok(stream) => {
                let token = self.token();
                match Conn::new(token, stream, (0, 0), true) {
                    Ok(mut c) => {
                        c.role = Role::Controller;
                        c.subscribed = true;
                        self.phone = self.fresh_phone();
                        let hello = BuddyReply::Hello {
                            version: PROTOCOL_VERSION,
                            service: self.settings.service.id.to_string(),
                            buddy_pid: std::process::id() as i32,
                            incarnation: self.incarnation.clone(),
                        };
                        let mut bytes = proto::encode(&Envelope {
                            id: None,
                            body: hello,
                        });
                        for r in self.ring.after(0) {
                            bytes.extend(proto::encode(&Envelope {
                                id: None,
                                body: BuddyReply::Event { record: r.clone() },
                            }));
                        }
                        self.log.line(&format!(
                            "phoned home to {}: {} records",
                            path.display(),
                            self.ring.len()
                        ));
                        if c.send(&bytes).is_ok() {
                            self.conns.push(c);
                        }
                    }
                    Err(e) => self.log.line(&format!("phone home: {e}")),
                }
            }
            Err(e) => {
                if self.phone.tries_left > 0 {
                    self.phone.tries_left -= 1;
                }
                let pause = if self.exit_by.is_some() {
                    RETRY_EXITING
                } else {
                    RETRY
                };
                self.phone.next_try = Some(now + pause);
                if self.phone.tries_left == 0 {
                    self.log.line(&format!(
                        "cannot reach the controller at {} ({e}); giving up with {} records pending",
                        path.display(),
                        self.ring.len()
                    ));
                }
            }
        }
    }

    // ---- peers -----------------------------------------------------------------------------

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn accept(&mut self) {
        let mut refused = 0u64;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if out_of_fds(&e) => {
                    // The pending connection keeps the listener readable: take it with the
                    // spare descriptor and refuse it, or poll would return at once forever.
                    let Some(spare) = self.spare.take() else {
                        break;
                    };
                    drop(spare);
                    if let Ok((stream, _)) = self.listener.accept() {
                        refuse_conn(stream, "the buddy is out of file descriptors");
                    }
                    self.spare = File::open("/dev/null").ok();
                    break;
                }
                Err(_) => break,
            };
            if self.conns.len() >= MAX_CONNS || fds_short(&stream) {
                refuse_conn(stream, "too many connections to this buddy");
                refused += 1;
                continue;
            }
            let peer =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| (c.uid(), c.pid()))
                    .unwrap_or((u32::MAX, 0));
            let token = self.token();
            let Ok(mut c) = Conn::new(token, stream, peer, false) else {
                continue;
            };
            let me = nix::unistd::geteuid().as_raw();
            if peer.0 != 0 && peer.0 != me {
                let refusal = BuddyReply::Error {
                    message: format!(
                        "permission denied: uid {} may not talk to this buddy",
                        peer.0
                    ),
                };
                let _ = c.send(&proto::encode(&Envelope {
                    id: None,
                    body: refusal,
                }));
                self.log.line(&format!(
                    "refused a connection from uid {} pid {}",
                    peer.0, peer.1
                ));
                continue;
            }
            self.conns.push(c);
        }
        if refused > 0 {
            // One line per poll round, not one per connection: a flood must not fill the log.
            self.log.line(&format!(
                "refused {refused} connections: {} open (at most {MAX_CONNS}), or descriptors short",
                self.conns.len()
            ));
        }
    }

    fn on_conn(&mut self, token: u64, flags: PollFlags) {
        let Some(i) = self.conns.iter().position(|c| c.token == token) else {
            return;
        };
        if flags.contains(PollFlags::POLLOUT) {
            if self.conns[i].flush().is_err() {
                self.drop_conn(token);
                return;
            }
            self.close_if_done(token);
        }
        if !flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let (lines, closed) = match self.conns[i].read() {
            Ok(conn::Input::Lines(l)) => (l, false),
            Ok(conn::Input::Closed(l)) => (l, true),
            Ok(conn::Input::TooLong) => {
                self.refuse(
                    token,
                    None,
                    format!("line longer than {} bytes", proto::MAX_LINE),
                );
                return;
            }
            Err(_) => (Vec::new(), true),
        };
        for line in lines {
            if !self.conns.iter().any(|c| c.token == token) {
                break;
            }
            self.on_line(token, &line);
        }
        if closed {
            // `echo request | socat - UNIX-CONNECT:...` closes its end at once and still reads:
            // keep the connection until its pending action replies are out.
            if let Some(c) = self.conns.iter_mut().find(|c| c.token == token) {
                c.closing = true;
            }
            self.close_if_done(token);
        }
    }

    /// Drops a peer that closed its end once nothing is owed to it.
    fn close_if_done(&mut self, token: u64) {
        let owed = self
            .actions
            .iter()
            .any(|a| a.reply_to.is_some_and(|(t, _)| t == token));
        let done = self
            .conns
            .iter()
            .any(|c| c.token == token && c.closing && !c.wants_write());
        if done && !owed {
            self.drop_conn(token);
        }
    }

    fn drop_conn(&mut self, token: u64) {
        self.conns.retain(|c| c.token != token);
    }

    /// Sends an error and closes: the peer spoke nonsense.
    fn refuse(&mut self, token: u64, id: Option<u64>, message: String) {
        self.reply(token, id, BuddyReply::Error { message });
        self.drop_conn(token);
    }

    fn reply(&mut self, token: u64, id: Option<u64>, body: BuddyReply) {
        let Some(c) = self.conns.iter_mut().find(|c| c.token == token) else {
            return;
        };
        let line = proto::encode(&Envelope { id, body });
        let failed = c.send(&line).is_err();
        // Best effort to get an error out before closing; a full socket simply loses it.
        if failed {
            self.drop_conn(token);
        }
    }

    fn ok(&mut self, token: u64, id: Option<u64>, message: Option<String>) {
        let status = self.status();
        self.reply(token, id, BuddyReply::Ok { status, message });
    }

    fn on_line(&mut self, token: u64, line: &[u8]) {
        let req = match proto::decode::<BuddyRequest>(line) {
            Ok(r) => r,
            Err(message) => return self.refuse(token, None, message),
        };
        let Some(c) = self.conns.iter().find(|c| c.token == token) else {
            return;
        };
        let cause = format!("command from uid {} pid {}", c.peer.0, c.peer.1);
        self.on_request(token, req.id, req.body, cause);
    }

    fn on_request(&mut self, token: u64, id: Option<u64>, body: BuddyRequest, cause: String) {
        match body {
            BuddyRequest::Hello { version, role } => {
                if version > PROTOCOL_VERSION {
                    let msg = format!(
                        "protocol version {version} is newer than this buddy's {PROTOCOL_VERSION}"
                    );
                    return self.refuse(token, id, msg);
                }
                if let Some(c) = self.conns.iter_mut().find(|c| c.token == token) {
                    c.role = role;
                }
                let hello = BuddyReply::Hello {
                    version: PROTOCOL_VERSION,
                    service: self.settings.service.id.to_string(),
                    buddy_pid: std::process::id() as i32,
                    incarnation: self.incarnation.clone(),
                };
                self.reply(token, id, hello);
            }
            BuddyRequest::Status => self.ok(token, id, None),
            BuddyRequest::Start => self.command(token, id, Command::Start, cause),
            BuddyRequest::Stop => self.command(token, id, Command::Stop, cause),
            BuddyRequest::Restart => self.command(token, id, Command::Restart, cause),
            BuddyRequest::Once => self.command(token, id, Command::Once, cause),
            BuddyRequest::Reload => match self.machine.state().pid() {
                Some(pid) => {
                    match self.run_action("reload", "reload", Some(pid), Some((token, id))) {
                        Ok(()) => {}
                        Err(e) => self.reply(token, id, BuddyReply::Error { message: e }),
                    }
                }
                None => self.reply(token, id, not_running("reload")),
            },
            BuddyRequest::Signal { signal, group } => self.signal(token, id, signal, group, cause),
            BuddyRequest::Action { name } => self.custom_action(token, id, &name),
            BuddyRequest::Events { after } => {
                let records = self.ring.after(after).cloned().collect();
                self.reply(token, id, BuddyReply::Records { records });
            }
            BuddyRequest::Subscribe => {
                self.ok(token, id, None);
                let backlog: Vec<u8> = self
                    .ring
                    .after(0)
                    .flat_map(|r| {
                        proto::encode(&Envelope {
                            id: None,
                            body: BuddyReply::Event { record: r.clone() },
                        })
                    })
                    .collect();
                let fresh = self.fresh_phone();
                if let Some(c) = self.conns.iter_mut().find(|c| c.token == token) {
                    c.subscribed = true;
                    if c.role == Role::Controller {
                        self.phone = fresh;
                    }
                    if c.send(&backlog).is_err() {
                        self.drop_conn(token);
                    }
                }
            }
            BuddyRequest::Ack { seq } => {
                self.ring.ack(seq);
                self.write_status();
            }
            BuddyRequest::Shutdown => {
                self.terminate(&cause);
                self.ok(token, id, None);
            }
            BuddyRequest::Relay { cause, request } => {
                let from_controller = self
                    .conns
                    .iter()
                    .any(|c| c.token == token && c.role == Role::Controller);
                if !from_controller {
                    let msg =
                        "relay is accepted only from the controller (hello with role controller)";
                    return self.refuse(token, id, msg.into());
                }
                if matches!(*request, BuddyRequest::Relay { .. }) {
                    return self.refuse(token, id, "a relay cannot hold a relay".into());
                }
                self.on_request(token, id, *request, cause);
            }
        }
    }

    /// Stops the service and exits once; a second request changes nothing.
    fn terminate(&mut self, cause: &str) {
        if self.exit_by.is_none() && !self.exit_pending() {
            self.log.line(&format!(
                "terminating ({cause}): stopping the service first"
            ));
            self.drive(Input::Terminate);
        }
    }

    /// A stop is under way that ends with the buddy's exit.
    fn exit_pending(&self) -> bool {
        matches!(
            self.machine.state(),
            State::Stopping {
                then: After::Exit,
                ..
            }
        )
    }

    fn command(&mut self, token: u64, id: Option<u64>, cmd: Command, cause: String) {
        if self.exit_by.is_some() || self.exit_pending() {
            return self.reply(
                token,
                id,
                BuddyReply::Error {
                    message: "the buddy is exiting".into(),
                },
            );
        }
        let before = (self.machine.state().name(), self.machine.want());
        self.drive(Input::Command(cmd, cause));
        let after = (self.machine.state().name(), self.machine.want());
        let message = (before == after).then(|| format!("already {}", after.0.as_str()));
        self.ok(token, id, message);
    }

    fn signal(
        &mut self,
        token: u64,
        id: Option<u64>,
        spec: proto::SignalSpec,
        group: bool,
        cause: String,
    ) {
        let sig = match spec.resolve() {
            Ok(s) => s,
            Err(message) => return self.reply(token, id, BuddyReply::Error { message }),
        };
        // Never signal without a live service: kill(0) or kill(-1) would hit the buddy's own
        // group or everything the buddy may signal.
        let Some(pid) = self.machine.state().pid().filter(|&p| p > 1) else {
            return self.reply(token, id, not_running("signal"));
        };
        let target = if group { -pid } else { pid };
        match signal::kill(Pid::from_raw(target), sig) {
            Ok(()) => {
                self.note(
                    Some(pid),
                    &cause,
                    EventKind::Signaled {
                        signal: sig as i32,
                        group,
                    },
                );
                self.write_status();
                self.ok(token, id, None);
            }
            Err(e) => self.reply(
                token,
                id,
                BuddyReply::Error {
                    message: format!("kill {}: {e}", sig.as_str()),
                },
            ),
        }
    }

    fn custom_action(&mut self, token: u64, id: Option<u64>, name: &str) {
        let actions = &self.settings.service.custom_actions;
        let index = match name.parse::<usize>() {
            Ok(n) if (1..=actions.len()).contains(&n) => Some(n - 1),
            Ok(_) => None,
            Err(_) => actions.iter().position(|a| a.name == name),
        };
        let Some(index) = index else {
            let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
            let message = format!("no custom action {name:?} (known: {})", known.join(", "));
            return self.reply(token, id, BuddyReply::Error { message });
        };
        let action = actions[index].name.clone();
        let file = upk_core::rundir::action_number(index + 1);
        let pid = self.machine.state().pid();
        if let Err(message) = self.run_action(&file, &action, pid, Some((token, id))) {
            self.reply(token, id, BuddyReply::Error { message });
        }
    }

    /// Exit: say so, remove the socket, leave the status for the next buddy.
    fn finish(mut self) -> i32 {
        if !self.ring.is_empty() {
            self.log.line(&format!(
                "exiting with {} records undelivered (seq {}..={}); the next buddy reports them as lost",
                self.ring.len(),
                self.ring.acked() + 1,
                self.ring.last_seq()
            ));
        }
        let _ = std::fs::remove_file(self.dir.socket());
        let _ = std::fs::remove_file(self.dir.pidfile());
        self.write_status();
        self.log.line("exiting");
        upk_core::exit::OK
    }
}

/// The process (or the system) has no descriptor left.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptor just accepted leaves fewer than [`FD_HEADROOM`] free under the soft limit
/// (new descriptors take the lowest free number, so its number is a fair measure).
fn fds_short(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let limit = i32::try_from(lim.rlim_cur).unwrap_or(i32::MAX);
    stream.as_raw_fd() >= limit.saturating_sub(FD_HEADROOM)
}

/// Answers a connection that is not taken with one error line (best effort) and closes it.
fn refuse_conn(stream: UnixStream, why: &str) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let refusal = BuddyReply::Error {
        message: why.to_owned(),
    };
    let _ = (&stream).write_all(&proto::encode(&Envelope {
        id: None,
        body: refusal,
    }));
}

fn not_running(what: &str) -> BuddyReply {
    BuddyReply::Error {
        message: format!("cannot {what}: the service is not running"),
    }
}

/// The incarnation, last seq and acked seq to go on from: the predecessor's, when its status
/// file names a sequence that can go on (a status file from before incarnations goes on as
/// the empty one); otherwise a new incarnation from seq 1 (no status file: the first start,
/// a reboot that emptied SvcRunPath, a wiped run directory; or a seq past [`status::MAX_SEQ`]).
fn continued_sequence(previous: Option<&Status>, log: &mut BuddyLog) -> (String, u64, u64) {
    match previous {
        Some(p) if p.seq <= status::MAX_SEQ => (p.incarnation.clone(), p.seq, p.acked),
        Some(p) => {
            log.line(&format!(
                "the status file's seq {} is past {}: records begin a new incarnation",
                p.seq,
                status::MAX_SEQ
            ));
            (status::new_incarnation(), 0, 0)
        }
        None => (status::new_incarnation(), 0, 0),
    }
}

fn take_lock(dir: &RunDir) -> Result<Flock<File>, Fatal> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.lock())
        .map_err(|e| permanent(format!("cannot open {}: {e}", dir.lock().display())))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        let holder = Status::read(&dir.status())
            .ok()
            .flatten()
            .map(|s| s.buddy_pid);
        match (e, holder) {
            (Errno::EWOULDBLOCK, Some(pid)) => permanent(format!(
                "{} is already supervised by buddy pid {pid}",
                dir.root().display()
            )),
            (Errno::EWOULDBLOCK, None) => permanent(format!(
                "{} is already supervised by another buddy",
                dir.root().display()
            )),
            (e, _) => temporary("flock", e),
        }
    })
}

fn bind(dir: &RunDir) -> Result<UnixListener, Fatal> {
    let path = dir.socket();
    if path.as_os_str().len() >= 108 {
        return Err(permanent(format!(
            "socket path {} is longer than 107 bytes",
            path.display()
        )));
    }
    // We hold the lock, so any socket file left here belongs to a dead buddy.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).map_err(|e| temporary(&format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| temporary("chmod buddy.sock", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| temporary("socket", e))?;
    Ok(listener)
}

/// A pidfd for `pid` if it is still the process that started at `start` and is not a zombie.
fn still_running(pid: i32, start: u64) -> Option<OwnedFd> {
    if pid <= 1
        || status::process_start_time(pid) != Some(start)
        || status::process_state(pid) == Some('Z')
    {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Re-check after opening: the pid could have been recycled in between.
    (status::process_start_time(pid) == Some(start)).then_some(fd)
}

/// True while any process of group `pgid` exists.
///
/// `killpg(pgid, 0)` answers most cases at no cost; when it says "yes", members may be
/// zombies that somebody else reaps late (an adopted service's belong to init), so a scan of
/// `/proc` decides.
fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 || signal::killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command: state (3), ppid (4), pgrp (5).
            let mut fields = stat[stat.rfind(')').map_or(0, |i| i + 2)..].split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
            pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
        })
}

fn kill_group(pgid: i32, sig: Signal) {
    // The group is the service's own session; never 0 or 1, never ours.
    if pgid > 1 && pgid != nix::unistd::getpgrp().as_raw() {
        let _ = signal::killpg(Pid::from_raw(pgid), sig);
    }
}
