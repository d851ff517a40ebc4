//! Taking up the run directory: everything before the loop, where any failure is fatal (exit
//! 100 or 111, see `docs/exit-codes.md`), and taking up its settings again on SIGHUP.
//!
//! In order: descriptors 0-2 made safe, a session of its own, `settings.json`, the `lock`
//! (one buddy per directory), `buddy.pid`, the clean child environment, `log/`, the signal
//! mask and signalfd, the child subreaper, `buddy.sock`, and the previous buddy's status file,
//! from which the record sequence goes on. Then the first decisions: retire a predecessor's
//! loggers, start ours, and adopt a service still running (by pid and start time, watched
//! with a pidfd) or start it if it is wanted up.

use crate::buddy::Buddy;
use crate::children::Children;
use crate::explain::Witness;
use crate::fds::Spare;
use crate::launch::Launcher;
use crate::logs::{BuddyLog, Stream};
use crate::machine::{Command, Input, Machine, Note, Policy};
use crate::peers::Peers;
use crate::phone::PhoneHome;
use crate::records::Records;
use crate::ring::Ring;
use crate::spawn;
use crate::watch;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::Instant;
use upk_core::config::Readiness;
use upk_core::event::{EventKind, StateName};
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::{self, Status, Want};

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
        let contain = crate::contain::Contain::open(settings.cgroup.as_deref(), &settings.service);
        let launcher =
            Launcher::new(&dir, &settings.service).map_err(|e| temporary("/dev/null", e))?;
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
        let ring = Ring::new(svc.ringbuffer_size as usize, last_seq, acked);
        let mut buddy = Buddy {
            records: Records::new(ring, incarnation),
            machine: Machine::new(Policy::of(svc), want, seed),
            streams: [
                Stream::new(&dir, "stdout", svc),
                Stream::new(&dir, "stderr", svc),
            ],
            phone: PhoneHome::new(svc.reconnect_retries),
            dir,
            launcher,
            contain,
            children: Children::default(),
            signals,
            peers: Peers::new(listener),
            adopted: None,
            drain: None,
            channel: None,
            log,
            exit_by: None,
            spare: Spare::new(),
            witness: Witness::default(),
            settings,
            _lock: lock,
        };
        if let Err(e) = buddy.launcher.creds() {
            let line = format!("the service cannot start: {e}");
            buddy.log.line(&line);
        }
        buddy.start_up(previous);
        Ok(buddy)
    }

    fn start_up(&mut self, previous: Option<Status>) {
        if let Some(p) = &previous {
            self.machine.carry(p.restarts, p.failures, p.last_exit);
        }
        let blank = Records::blank(self.machine.state().name(), EventKind::STARTED);
        self.records
            .ring
            .account_unacked(blank, "previous buddy ended with records unacknowledged");
        let buddy_pid = std::process::id() as i32;
        self.record(Note {
            from: self.machine.state().name(),
            to: self.machine.state().name(),
            pid: Some(buddy_pid),
            cause: "startup".into(),
            kind: EventKind::BuddyStarted { buddy_pid },
        });
        self.note_containment();
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
            if let Some(fd) = watch::still_running(pid, start) {
                self.adopted = Some(fd);
                self.witness =
                    Witness::adopted(self.launcher.output_files(&self.settings.service).0);
                self.log
                    .line(&format!("adopting running service pid {pid}"));
                if !self.contain.adopt(pid) && self.contain.has_cgroup() {
                    let note = format!(
                        "the adopted pid {pid} is not in the service's cgroup: this run is kept by its process group"
                    );
                    self.log.line(&note);
                    self.note(Some(pid), "containment", EventKind::Containment { note });
                }
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
                    start: Some(start),
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

    /// SIGHUP: the log reopened, the settings re-read (kept when unreadable), the redirects
    /// reopened at next use, loggers started or stopped as configured.
    pub(crate) fn reload_settings(&mut self) {
        self.log.reopen();
        match Settings::read(&self.dir.settings()) {
            Ok(s) => {
                self.machine.set_policy(Policy::of(&s.service));
                self.records.ring.resize(s.service.ringbuffer_size as usize);
                self.launcher.reconfigure(&s.service);
                self.contain.reconfigure(&s.service);
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
                self.note_containment();
            }
            Err(e) => {
                self.launcher.reopen_redirects();
                self.log.line(&format!("keeping the old settings: {e}"));
            }
        }
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
