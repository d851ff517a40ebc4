//! Reaching one service's buddy: when to try its socket again, when a buddy may be spawned,
//! and the mechanics (subscribe, the run directory's lock, the spawn).
//!
//! [`Reach`] keeps the timing of one service: a failed attempt schedules the next one after
//! [`FIRST_RETRY`], doubling up to [`RETRY`]; a buddy is spawned at most once per [`RETRY`],
//! never while the one this controller spawned is still unreaped, never while the service
//! waits for prerequisites, and never while some process holds the directory's lock (a buddy
//! that is busy or not listening yet is reached again later, never doubled). The decisions are
//! pure; the fleet does the I/O.

use crate::link::Link;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upk_core::proto::{BuddyRequest, Role, PROTOCOL_VERSION};
use upk_core::rundir::RunDir;

/// Least time between two spawns of one service's buddy, and the longest between two
/// attempts to reach it.
pub const RETRY: Duration = Duration::from_secs(1);

/// The first delay before trying again to reach a buddy that did not answer: a fresh buddy
/// is up within milliseconds, but linking a thousand of them while they start would only
/// compete with their start-up for the CPU. A client's command links at once
/// ([`Fleet::link_now`]).
///
/// [`Fleet::link_now`]: crate::fleet::Fleet::link_now
pub const FIRST_RETRY: Duration = Duration::from_millis(250);

/// When to reach one service's buddy, and the buddy this controller spawned for it.
#[derive(Debug)]
pub struct Reach {
    /// The buddy this controller spawned, until it is reaped.
    child: Option<Child>,
    /// When to try to reach the buddy next.
    pub retry_at: Instant,
    /// Failed attempts since it was last linked (the retry delay doubles).
    misses: u32,
    /// When its buddy was last spawned (at most one spawn per [`RETRY`]).
    spawned_at: Option<Instant>,
}

impl Reach {
    /// A service to reach at once.
    pub fn new(now: Instant) -> Reach {
        Reach {
            child: None,
            retry_at: now,
            misses: 0,
            spawned_at: None,
        }
    }

    /// Linked: the next miss waits [`FIRST_RETRY`] again.
    pub fn linked(&mut self) {
        self.misses = 0;
    }

    /// An attempt failed at `now`: schedules the next one and says whether a buddy may be
    /// spawned now (the caller still checks the directory's lock). `waiting`: the service
    /// waits for a prerequisite.
    pub fn missed(&mut self, now: Instant, waiting: bool) -> bool {
        self.retry_at = now + (FIRST_RETRY * 2u32.pow(self.misses.min(7))).min(RETRY);
        self.misses += 1;
        let due = self.spawned_at.is_none_or(|t| now >= t + RETRY);
        !waiting && due && self.child.is_none()
    }

    /// A buddy was spawned at `now` (`child`: unless the spawn failed).
    pub fn spawned(&mut self, now: Instant, child: Option<Child>) {
        self.spawned_at = Some(now);
        self.child = child;
    }

    /// Its link ended at `now`: reach it again soon, the delay starting over.
    pub fn lost(&mut self, now: Instant) {
        (self.retry_at, self.misses) = (now + FIRST_RETRY, 0);
    }

    /// Forgets the spawned buddy once it has exited.
    pub fn reap(&mut self) {
        if self
            .child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
        {
            self.child = None;
        }
    }
}

/// Opens a controller subscription to the buddy of `dir` (non-blocking: see
/// [`crate::link::connect`]).
pub fn subscribe(dir: &RunDir, id: &str) -> std::io::Result<Link> {
    let mut link = Link::new(crate::link::connect(&dir.socket())?, id);
    let hello = BuddyRequest::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Controller,
    };
    link.request(None, hello)?;
    link.request(None, BuddyRequest::Subscribe)?;
    Ok(link)
}

/// True while some process holds the run directory's lock: a buddy lives there.
pub fn holds_lock(dir: &RunDir) -> bool {
    let Ok(file) = std::fs::File::open(dir.lock()) else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_unlocked_on_drop) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Starts `buddy RUN-DIR` with stdin and stdout on /dev/null and stderr appended to
/// `log/buddy`; a failure is said and gives `None`. No pre_exec, so std spawns with
/// posix_spawn (no copy of the controller's memory): the buddy itself leaves our session and
/// clears the signal mask it inherits.
pub fn spawn_buddy(buddy: &Path, id: &str, dir: &RunDir) -> Option<Child> {
    let log = match upk_core::fsutil::open_append(&dir.log_file("buddy"), 0o640) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("upkeeper: {id}: cannot open its log/buddy: {e}");
            return None;
        }
    };
    let spawned = Command::new(buddy)
        .arg(dir.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    match spawned {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("upkeeper: {id}: cannot start {}: {e}", buddy.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retries_double_from_a_quarter_second_to_a_second_and_start_over_once_linked() {
        let t0 = Instant::now();
        let mut r = Reach::new(t0);
        assert_eq!(r.retry_at, t0, "the first attempt is at once");
        let delays: Vec<Duration> = (0..5)
            .map(|_| {
                r.missed(t0, true);
                r.retry_at - t0
            })
            .collect();
        assert_eq!(delays, [250 * MS, 500 * MS, RETRY, RETRY, RETRY]);
        r.linked();
        r.missed(t0, true);
        assert_eq!(r.retry_at - t0, FIRST_RETRY);
        r.missed(t0, true);
        r.lost(t0);
        assert_eq!(
            r.retry_at - t0,
            FIRST_RETRY,
            "a lost link is reached again soon"
        );
        r.missed(t0, true);
        assert_eq!(r.retry_at - t0, FIRST_RETRY, "and its delay starts over");
    }

    #[test]
    fn a_buddy_is_spawned_at_most_once_a_second_and_never_for_a_waiting_service() {
        let t0 = Instant::now();
        let mut r = Reach::new(t0);
        assert!(!r.missed(t0, true), "waiting for a prerequisite");
        assert!(r.missed(t0, false));
        r.spawned(t0, None); // the spawn failed: no child to wait for
        assert!(
            !r.missed(t0 + 500 * MS, false),
            "within a second of the last"
        );
        assert!(r.missed(t0 + RETRY, false), "a second later");
    }

    #[test]
    fn no_second_buddy_while_the_spawned_one_is_unreaped() {
        let t0 = Instant::now();
        let mut r = Reach::new(t0);
        let child = Command::new("true").spawn().expect("spawn true");
        r.spawned(t0, Some(child));
        assert!(
            !r.missed(t0 + 10 * RETRY, false),
            "ours may still be starting"
        );
        r.child.as_mut().expect("child").wait().expect("wait");
        r.reap();
        assert!(r.child.is_none(), "reaped");
        assert!(r.missed(t0 + 10 * RETRY, false));
    }
}
