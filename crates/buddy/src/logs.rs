//! Where output goes: the buddy's own log, the service's redirect files, and the FIFOs that
//! feed the Pipe*Script loggers.
//!
//! For each stream (stdout, stderr) with a logger script, the buddy holds *both* ends of
//! `log/<stream>_pipe` for its whole life: its write end means the logger never reads EOF
//! while the service restarts, and its read end means the service never gets SIGPIPE while the
//! logger restarts (output waits in the pipe for the next logger). The loggers themselves
//! write to the same redirect files the service would have used.

use crate::spawn::Creds;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    /// The logger, if any: `scripts/pipe_<name>`, or the buddy itself as its own rotating
    /// logger (`LogMaxSize` without a script, [`crate::rotate`]).
    pub script: Option<PathBuf>,
    /// The logger's arguments (the built-in one's `--logger FILE ...`).
    pub args: Vec<String>,
    /// Its argv\[0\] when not its path (the built-in one's: `upk_buddy`).
    pub argv0: Option<String>,
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
            args: Vec::new(),
            argv0: None,
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

    /// Applies (re-read) settings: whether a logger script is configured, or the built-in
    /// rotating logger.
    pub fn configure(&mut self, dir: &RunDir, svc: &Service) {
        let [stdout, stderr] = redirect_paths(dir, svc);
        let (script, file) = match self.name {
            "stdout" => (svc.pipe_stdout_script.as_ref(), stdout),
            _ => (svc.pipe_stderr_script.as_ref(), stderr),
        };
        self.script = script.map(|_| dir.script(&format!("pipe_{}", self.name)));
        self.args = Vec::new();
        self.argv0 = None;
        if let (None, Some(max_size)) = (&self.script, svc.log_max_size) {
            let rotation = crate::rotate::Rotation {
                file,
                max_size,
                keep: svc.log_keep,
                timestamps: svc.log_timestamps,
            };
            // This very binary, even when an upgrade has replaced or removed its file.
            self.script = Some(PathBuf::from("/proc/self/exe"));
            self.args = rotation.args();
            self.argv0 = Some("upk_buddy".to_owned());
        }
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

    /// Bytes in the FIFO that the logger has not read yet (0 without one).
    pub fn pending(&self) -> usize {
        let Some((r, _)) = &self.held else { return 0 };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `n`, on a descriptor we hold.
        let rc = unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }

    /// True when the logger has written all the service wrote: the FIFO is empty and the
    /// logger waits in a `read` of its stdin (its `/proc/PID/syscall`), so it holds nothing
    /// it read and did not write yet. Without a logger, or where the kernel does not say
    /// what the logger is doing, the FIFO alone decides.
    pub fn caught_up(&self) -> bool {
        let Some(pid) = self.logger else {
            return true;
        };
        self.pending() == 0 && reading_stdin(pid).unwrap_or(true)
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
/// For a service that runs as another user, see [`open_append_for`].
pub fn open_redirects(dir: &RunDir, svc: &Service, creds: &Creds) -> io::Result<Redirects> {
    let open = |path: &Path| {
        open_append_for(path, 0o640, creds)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let [stdout, stderr] = redirect_paths(dir, svc);
    Ok(Redirects {
        stdout: open(&stdout)?,
        stderr: open(&stderr)?,
    })
}

/// The paths of RedirectStdout and RedirectStderr (`log/stdout`, `log/stderr` by default).
pub fn redirect_paths(dir: &RunDir, svc: &Service) -> [PathBuf; 2] {
    let path = |p: &Option<PathBuf>, default: &str| {
        p.as_ref()
            .map_or_else(|| dir.log_file(default), |p| dir.root().join(p))
    };
    [
        path(&svc.redirect_stdout, "stdout"),
        path(&svc.redirect_stderr, "stderr"),
    ]
}

/// Most symbolic links followed while opening one redirect file (the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// Opens `path` for appending (creating it with `mode`) on behalf of a service running as
/// `creds`, so that the service's user cannot have made the root buddy write anywhere it could
/// not write itself (issue 11: a symlink swapped in for the log file).
///
/// With no other user, it is a plain open. Otherwise the path is walked one component at a
/// time, each looked up relative to the directory descriptor already held (so nothing swapped
/// behind the walk matters), and every directory's owner and mode are checked: in a directory
/// the user can write (it owns it, or it is writable by one of its groups or by all), a symbolic
/// link is never followed, and the file opened must be a regular file with one link (a hard
/// link to a root file has two) and not a FIFO (whose open would block the buddy). Links in
/// directories the user cannot write are followed, through the same checks. ACLs are not
/// looked at.
pub fn open_append_for(path: &Path, mode: u32, creds: &Creds) -> io::Result<File> {
    let Some(uid) = creds.uid.filter(|u| !u.is_root()) else {
        return upk_core::fsutil::open_append(path, mode);
    };
    let writable = |st: &FileStat| {
        let gid = nix::unistd::Gid::from_raw(st.st_gid);
        st.st_uid == uid.as_raw()
            || ((creds.gid == Some(gid) || creds.groups.contains(&gid)) && st.st_mode & 0o020 != 0)
            || st.st_mode & 0o002 != 0
    };
    let refuse = |what: &OsStr, why: &str| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing {}: {why} in a directory uid {uid} can write",
                Path::new(what).display()
            ),
        )
    };
    let mut parts: VecDeque<OsString> = VecDeque::new();
    let start = |p: &Path, parts: &mut VecDeque<OsString>| -> io::Result<OwnedFd> {
        for c in p.components() {
            parts.push_back(c.as_os_str().to_owned());
        }
        let from: &Path = if p.is_absolute() {
            Path::new("/")
        } else {
            Path::new(".")
        };
        if p.is_absolute() {
            parts.pop_front();
        }
        open_at(
            None,
            from.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            0,
        )
    };
    let mut cur = start(path, &mut parts)?;
    let mut cur_writable = writable(&fstat(&cur)?);
    let mut links = 0;
    while let Some(name) = parts.pop_front() {
        if name.is_empty() || name == "." {
            continue;
        }
        let target = if parts.is_empty() && name != ".." {
            let flags = OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_NOCTTY
                | OFlag::O_NONBLOCK;
            match open_at(Some(&cur), &name, flags, mode) {
                Ok(fd) => {
                    let st = fstat(&fd)?;
                    let regular =
                        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
                    if cur_writable && !regular {
                        return Err(refuse(&name, "not a regular file"));
                    }
                    if cur_writable && st.st_nlink != 1 {
                        return Err(refuse(&name, "a file with more than one link"));
                    }
                    // Blocking again: the flag was only there so that a FIFO fails, not hangs.
                    nix::fcntl::fcntl(
                        fd.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND),
                    )?;
                    return Ok(File::from(fd));
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    if cur_writable {
                        return Err(refuse(&name, "a symbolic link"));
                    }
                    nix::fcntl::readlinkat(Some(cur.as_raw_fd()), name.as_os_str())?
                }
                Err(e) => return Err(e),
            }
        } else {
            let fd = open_at(Some(&cur), &name, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)?;
            let st = fstat(&fd)?;
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFDIR {
                cur = fd;
                cur_writable = writable(&st);
                continue;
            }
            if kind != SFlag::S_IFLNK {
                return Err(Errno::ENOTDIR.into());
            }
            if cur_writable {
                return Err(refuse(&name, "a symbolic link"));
            }
            nix::fcntl::readlinkat(Some(fd.as_raw_fd()), OsStr::new(""))?
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(Errno::ELOOP.into());
        }
        let target = PathBuf::from(target);
        let mut rest = VecDeque::new();
        if target.is_absolute() {
            cur = start(&target, &mut rest)?;
            cur_writable = writable(&fstat(&cur)?);
        } else {
            rest.extend(target.components().map(|c| c.as_os_str().to_owned()));
        }
        rest.extend(parts.drain(..));
        parts = rest;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "a directory, not a file",
    ))
}

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd)),
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<FileStat> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())?)
}

/// Whether process `pid` is blocked in `read` or `readv` on descriptor 0 (`None`: not known).
/// The kernel says `running` for a process on a CPU, `-1 ...` for one blocked outside a
/// system call, and the call's number and arguments for one blocked in it.
fn reading_stdin(pid: i32) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = text.split_whitespace();
    let Ok(nr) = fields.next()?.parse::<i64>() else {
        return Some(false);
    };
    Some((nr == libc::SYS_read || nr == libc::SYS_readv) && fields.next() == Some("0x0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn nobody() -> Creds {
        let gid = nix::unistd::Gid::from_raw(65534);
        Creds {
            uid: Some(nix::unistd::Uid::from_raw(65534)),
            gid: Some(gid),
            groups: vec![gid],
            env: Vec::new(),
        }
    }

    /// A fresh root-owned 0755 directory under /tmp.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("upk-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn links_in_directories_the_user_cannot_write_are_followed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("links_in_directories_...: not root here; the ownership checks need root");
            return;
        }
        let dir = scratch("trusted");
        std::fs::create_dir(dir.join("real")).expect("mkdir");
        symlink("real", dir.join("logs")).expect("dir link");
        symlink("out.log", dir.join("real/link.log")).expect("file link");
        let mut f = open_append_for(&dir.join("logs/link.log"), 0o640, &nobody()).expect("open");
        f.write_all(b"hi\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.join("real/out.log")).expect("read"),
            "hi\n"
        );
        // In a directory the user owns, the same link is refused.
        nix::unistd::chown(&dir.join("real"), nobody().uid, nobody().gid).expect("chown");
        let e = open_append_for(&dir.join("logs/link.log"), 0o640, &nobody()).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // A FIFO put there fails at once instead of blocking the buddy.
        nix::unistd::mkfifo(&dir.join("real/fifo"), Mode::from_bits_truncate(0o600)).expect("fifo");
        assert!(open_append_for(&dir.join("real/fifo"), 0o640, &nobody()).is_err());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
