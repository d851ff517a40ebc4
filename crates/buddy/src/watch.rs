//! Processes the buddy watches but cannot reap: an adopted service, and the members of a
//! draining group that are not its children.
//!
//! waitpid sees only the buddy's children (and, as a child subreaper, the orphans of its
//! subtree). A service adopted from a killed predecessor is not one, nor is a grandchild whose
//! parent still lives; their ends come from pidfds, which become readable when the process
//! ends, whoever reaps it. While a stop waits for the rest of the service's group
//! ([`Drain`]), every live member that is not the buddy's child gets a pidfd; when one fires
//! (or SIGCHLD reaps one of ours), the group is looked at again and the pidfds renewed, so a
//! member forked meanwhile is found at the next look. Only where the kernel gives no event (no
//! pidfd: an old kernel, or out of descriptors, or more members than [`MAX_PIDFDS`]) does the
//! drain fall back to looking every [`FALLBACK_POLL`].

use nix::sys::signal;
use nix::unistd::Pid;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};
use upk_core::procfs::{self, Stat};

/// Most pidfds one drain holds; a larger group is looked at by [`FALLBACK_POLL`].
pub const MAX_PIDFDS: usize = 64;
/// How often a drain without events looks at the group.
pub const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// True while any process of group `pgid` exists.
///
/// `killpg(pgid, 0)` answers most cases at no cost; when it says "yes", members may be
/// zombies that somebody else reaps late (an adopted service's belong to init), so a scan of
/// `/proc` decides.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 || signal::killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    !procfs::group_members(pgid).is_empty()
}

/// A pidfd for `pid` if it is still the process that started at `start` and is not a zombie.
pub fn still_running(pid: i32, start: u64) -> Option<OwnedFd> {
    let same = || Stat::of(pid).is_some_and(|s| s.start_time == start && s.live());
    if pid <= 1 || !same() {
        return None;
    }
    let fd = procfs::pidfd_open(pid).ok()?;
    // Re-check after opening: the pid could have been recycled in between.
    same().then_some(fd)
}

/// A stop waiting for the rest of the service's process group.
pub struct Drain {
    pgid: i32,
    /// pidfds of the live members that are not our children.
    fds: Vec<OwnedFd>,
    /// Set when some member could not be given a pidfd: look again at this time.
    fallback_at: Option<Instant>,
}

impl Drain {
    /// Starts watching group `pgid`.
    pub fn new(pgid: i32) -> Drain {
        Drain {
            pgid,
            fds: Vec::new(),
            fallback_at: None,
        }
    }

    /// Looks at the group: `true` when it is gone. Otherwise renews the pidfds of the
    /// members that are not our children (ours are heard through SIGCHLD).
    pub fn look(&mut self, now: Instant) -> bool {
        self.fds.clear();
        self.fallback_at = None;
        if self.pgid <= 1 || signal::killpg(Pid::from_raw(self.pgid), None).is_err() {
            return true;
        }
        let members = procfs::group_members(self.pgid);
        if members.is_empty() {
            return true;
        }
        let me = std::process::id() as i32;
        for pid in members {
            if Stat::of(pid).is_some_and(|s| s.ppid == me) {
                continue;
            }
            match procfs::pidfd_open(pid) {
                Ok(fd) if self.fds.len() < MAX_PIDFDS => self.fds.push(fd),
                // Gone between the scan and the open: the next look will not find it.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                _ => self.fallback_at = Some(now + FALLBACK_POLL),
            }
        }
        false
    }

    /// The group it watches.
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// The descriptors to poll.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.fds.iter().map(|f| f.as_fd())
    }

    /// How many descriptors [`Drain::fds`] yields.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// No descriptor is polled.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// When to look without an event, if some member has no pidfd.
    pub fn deadline(&self) -> Option<Instant> {
        self.fallback_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn a_drain_holds_pidfds_only_for_members_that_are_not_our_children() {
        // Our child `sh` (its own group) with a grandchild `sleep`, which is not ours.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("sh");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        let pgid = child.id() as i32;
        let mut drain = Drain::new(pgid);
        assert!(!drain.look(Instant::now()), "the group lives");
        assert_eq!(
            drain.len(),
            1,
            "one pidfd: the grandchild; sh is heard through SIGCHLD"
        );
        assert_eq!(drain.deadline(), None, "no fallback poll needed");
        assert!(group_alive(pgid));
        let _ = signal::killpg(Pid::from_raw(pgid), signal::Signal::SIGKILL);
        let _ = child.wait();
        // The grandchild is reparented and reaped elsewhere; a look finds the group empty
        // once it is gone (its pidfd is what would wake the loop).
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            drain.look(Instant::now())
        });
        assert!(gone, "the group is gone");
        assert!(drain.is_empty());
    }
}
