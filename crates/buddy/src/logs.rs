//! Where output goes: the buddy's own log, the service's redirect files, and the FIFOs that
//! feed the Pipe*Script loggers.
//!
//! For each stream (stdout, stderr) with a logger script, the buddy holds *both* ends of
//! `log/<stream>_pipe` for its whole life: its write end means the logger never reads EOF
//! while the service restarts, and its read end means the service never gets SIGPIPE while the
//! logger restarts (output waits in the pipe for the next logger). The loggers themselves
//! write to the same redirect files the service would have used.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use upk_core::config::Service;
use upk_core::rundir::RunDir;

/// The buddy's own log, `log/buddy`: one line per notable thing, with a UTC timestamp.
pub struct BuddyLog {
    path: PathBuf,
    file: Option<File>,
}

impl BuddyLog {
    /// Opens (creating) the log; failures fall back to stderr.
    pub fn open(path: PathBuf) -> BuddyLog {
        let file = upk_core::fsutil::open_append(&path, 0o640).ok();
        BuddyLog { path, file }
    }
    /// Reopens after rotation (SIGHUP).
    pub fn reopen(&mut self) {
        self.file = upk_core::fsutil::open_append(&self.path, 0o640).ok();
    }
    /// Writes one line.
    pub fn line(&mut self, msg: &str) {
        let stamp = upk_core::time::format_utc(upk_core::time::wall_us());
        let text = format!("{stamp} upk_buddy[{}]: {msg}\n", std::process::id());
        let written = self.file.as_mut().map(|f| f.write_all(text.as_bytes()));
        if !matches!(written, Some(Ok(()))) {
            let _ = io::stderr().write_all(text.as_bytes());
        }
    }
}

/// One output stream of the service.
pub struct Stream {
    /// `stdout` or `stderr`.
    pub name: &'static str,
    /// `log/<name>_pipe`.
    pub fifo: PathBuf,
    /// The logger script, if any (`scripts/pipe_<name>`).
    pub script: Option<PathBuf>,
    /// The running logger.
    pub logger: Option<i32>,
    /// Its start time in clock ticks (with the pid, it identifies the process in `status`).
    pub logger_start: Option<u64>,
    /// When it started, to tell a logger that ran a while from one that dies at once.
    pub started: Option<Instant>,
    /// Consecutive quick deaths or failed starts; the restart delay doubles with each.
    pub failures: u32,
    /// When to start the logger again after it died.
    pub restart_at: Option<Instant>,
    /// Held ends of the FIFO (read, write) while a logger is configured.
    held: Option<(File, File)>,
}

impl Stream {
    /// The stream `name` of the service in `dir`.
    pub fn new(dir: &RunDir, name: &'static str, svc: &Service) -> Stream {
        let mut s = Stream {
            name,
            fifo: dir.log_file(&format!("{name}_pipe")),
            script: None,
            logger: None,
            logger_start: None,
            started: None,
            failures: 0,
            restart_at: None,
            held: None,
        };
        s.configure(dir, svc);
        s
    }

    /// Applies (re-read) settings: whether a logger script is configured.
    pub fn configure(&mut self, dir: &RunDir, svc: &Service) {
        let script = match self.name {
            "stdout" => svc.pipe_stdout_script.as_ref(),
            _ => svc.pipe_stderr_script.as_ref(),
        };
        self.script = script.map(|_| dir.script(&format!("pipe_{}", self.name)));
        if self.script.is_none() {
            self.held = None;
        }
    }

    /// Opens the held FIFO ends if a logger is configured and they are not open yet.
    pub fn hold(&mut self) -> io::Result<()> {
        if self.script.is_none() || self.held.is_some() {
            return Ok(());
        }
        ensure_fifo(&self.fifo)?;
        // Read end first and non-blocking, so the write end's open finds a reader at once.
        let r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.fifo)?;
        let w = OpenOptions::new().write(true).open(&self.fifo)?;
        self.held = Some((r, w));
        Ok(())
    }

    /// The held write end, for the service, if this stream is piped.
    pub fn write_end(&self) -> Option<BorrowedFd<'_>> {
        self.held.as_ref().map(|(_, w)| w.as_fd())
    }

    /// A fresh blocking descriptor for the logger to read from.
    pub fn logger_end(&self) -> io::Result<File> {
        OpenOptions::new().read(true).open(&self.fifo)
    }
}

impl Stream {
    /// Schedules the next start after a death or a failed start: 1 s, doubling for each quick
    /// failure in a row, at most 60 s; a logger that ran 10 s or more starts the count afresh.
    pub fn schedule_restart(&mut self, now: Instant) {
        let ran_long = self
            .started
            .is_some_and(|t| now.duration_since(t) >= Duration::from_secs(10));
        self.failures = if ran_long {
            0
        } else {
            self.failures.saturating_add(1)
        };
        let delay = Duration::from_secs(1u64 << self.failures.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        self.logger = None;
        self.logger_start = None;
        self.started = None;
        self.restart_at = self.script.is_some().then_some(now + delay);
    }
}

/// Creates the FIFO if it is missing (the renderer normally made it).
fn ensure_fifo(path: &Path) -> io::Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The redirect files, held open by the buddy for every child it starts.
pub struct Redirects {
    /// Standard output.
    pub stdout: File,
    /// Standard error.
    pub stderr: File,
}

/// Opens RedirectStdout/RedirectStderr, relative to the run directory, or `log/stdout` and
/// `log/stderr` by default. The buddy keeps them open and reopens them on SIGHUP (rotation:
/// move the file, then send SIGHUP; a running service keeps writing where it started).
pub fn open_redirects(dir: &RunDir, svc: &Service) -> io::Result<Redirects> {
    let open = |p: &Option<PathBuf>, default: &str| {
        let path = p
            .as_ref()
            .map_or_else(|| dir.log_file(default), |p| dir.root().join(p));
        upk_core::fsutil::open_append(&path, 0o640)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    Ok(Redirects {
        stdout: open(&svc.redirect_stdout, "stdout")?,
        stderr: open(&svc.redirect_stderr, "stderr")?,
    })
}
