//! Descriptor pressure: what the buddy does when the process runs out of file descriptors.
//!
//! One descriptor is held in reserve ([`Spare`]) and given up for the few things that must
//! not fail for want of one: the status file (it names the process a successor adopts), the
//! main process's start time (reading `/proc` takes a descriptor), and taking a pending
//! connection off the listener to refuse it (or poll would report it ready for ever).

use std::fs::File;
use std::os::unix::net::UnixStream;

/// Descriptors kept free for the status file, spawns, probes and hooks: a connection that
/// would leave fewer free is refused.
pub const FD_HEADROOM: i32 = 16;

/// A descriptor held in reserve.
pub struct Spare(Option<File>);

impl Spare {
    /// Takes the reserve descriptor.
    pub fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Runs `f` with the reserve descriptor closed, then takes it again; `None` when there is
    /// no reserve to give up.
    pub fn give_up_for<T>(&mut self, f: impl FnOnce() -> T) -> Option<T> {
        self.0.take()?;
        let out = f();
        self.0 = File::open("/dev/null").ok();
        Some(out)
    }
}

impl Default for Spare {
    fn default() -> Spare {
        Spare::new()
    }
}

/// The process (or the system) has no descriptor left.
pub fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptor just accepted leaves fewer than [`FD_HEADROOM`] free under the soft limit
/// (new descriptors take the lowest free number, so its number is a fair measure).
pub fn fds_short(stream: &UnixStream) -> bool {
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
