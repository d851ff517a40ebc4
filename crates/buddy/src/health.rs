//! Health probes and readiness signals: the processes and descriptors behind the machine's
//! `RunProbe` output and its `Probe` and `ReadySignal` inputs.
//!
//! A probe is `actions/health`, run with the service's credentials in its own session; its
//! output replaces `log/health`, whose first line becomes the record's detail. A probe that
//! outlives `HealthTimeout` has its process group killed and counts as failed.
//!
//! Readiness arrives on one of two channels, set up before each start: a pipe whose write end
//! the service gets as descriptor N (s6's notification fd: any line written is "ready"), or a
//! datagram socket `notify.sock` in the run directory named by `NOTIFY_SOCKET` (systemd's
//! protocol: a datagram with a `READY=1` line). The socket belongs to the service's user, mode
//! 0600, so only the service (and root) can declare it ready.

use nix::unistd::{Gid, Uid};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use upk_core::event::Exit;

/// The detail of a probe's record: how it ended and the first line it wrote.
pub fn probe_detail(exit: Exit, timed_out: bool, output: &Path, timeout: f64) -> String {
    let first = File::open(output)
        .ok()
        .and_then(|f| BufReader::new(f).lines().next())
        .and_then(Result::ok)
        .map(|l| l.chars().take(200).collect::<String>())
        .filter(|l| !l.trim().is_empty());
    let how = if timed_out {
        format!("timed out after {timeout}s")
    } else {
        exit.to_string()
    };
    match first {
        Some(line) => format!("{how}: {line}"),
        None => how,
    }
}

/// Where readiness comes from for the current run.
pub enum Channel {
    /// The read end of the notification pipe (`Readiness: "fd:N"`).
    Pipe(File),
    /// `notify.sock` (`Readiness: "notify"`).
    Notify(UnixDatagram),
}

impl Channel {
    /// The descriptor to poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Channel::Pipe(f) => f.as_fd(),
            Channel::Notify(s) => s.as_fd(),
        }
    }

    /// Reads what arrived.
    pub fn read(&mut self) -> Heard {
        let mut buf = [0u8; 4096];
        match self {
            Channel::Pipe(f) => match std::io::Read::read(f, &mut buf) {
                Ok(0) => Heard::Closed,
                Ok(n) if buf[..n].contains(&b'\n') => Heard::Ready("notification fd".to_owned()),
                Ok(_) => Heard::Nothing,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Heard::Nothing,
                Err(_) => Heard::Closed,
            },
            Channel::Notify(s) => {
                let mut ready = false;
                while let Ok(n) = s.recv(&mut buf) {
                    ready |= buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1");
                }
                match ready {
                    true => Heard::Ready("sd_notify READY=1".to_owned()),
                    false => Heard::Nothing,
                }
            }
        }
    }
}

/// What a readiness channel said.
pub enum Heard {
    /// "Ready", and how it was said.
    Ready(String),
    /// Nothing that matters.
    Nothing,
    /// The channel is finished (the pipe's writers are all gone): stop polling it.
    Closed,
}

/// A fresh notification pipe: (read end for the buddy, write end for the child).
pub fn pipe() -> std::io::Result<(File, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Only our end: the child's end is a description of its own and stays blocking.
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&r),
        FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )?;
    Ok((File::from(r), w))
}

/// Binds `path` (replacing a stale socket) for `uid`/`gid`, mode 0600.
pub fn notify_socket(path: &Path, owner: Option<(Uid, Gid)>) -> std::io::Result<UnixDatagram> {
    if path.as_os_str().len() >= 108 {
        return Err(std::io::Error::other(format!(
            "{} is longer than 107 bytes",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let sock = UnixDatagram::bind(path)?;
    let ready = (|| {
        sock.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    })();
    match ready {
        Ok(()) => Ok(sock),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// `notify.sock` in a run directory.
pub fn notify_path(root: &Path) -> PathBuf {
    root.join("notify.sock")
}
