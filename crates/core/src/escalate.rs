//! Stopping a process group by escalation, for a caller that may block: a first signal to the
//! group, a bounded wait for it to be gone, then SIGKILL.
//!
//! The buddy escalates inside its poll loop (its machine's stop phases, with the deadline as an
//! event); this is the same policy for the programs that have no loop to return to: `upkctl
//! openrc stop` finishing off a service whose buddy is gone, a test tearing down what it
//! started. [`escalate`] holds the policy and takes the signal and the "is it gone?" question
//! as functions, so it is tested without processes; [`group`] is the one way to signal a real
//! group, and refuses the groups that must never be signalled (0, init's, and the caller's own).
//! What "gone" means is the caller's: a pid with its start time (`status::Proc::alive`) for a
//! process that is not the caller's child, `try_wait` for one that is.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, Pid};
use std::time::{Duration, Instant};

/// How an escalation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Gone before the deadline (perhaps before the first signal).
    Gone,
    /// Still there at the deadline: SIGKILL was sent. It is not waited for after that; a
    /// SIGKILLed process ends unless it is stuck in the kernel.
    Killed,
    /// Nothing was sent: not a group that may be signalled ([`group`]).
    Refused,
}

/// A sender of signals to process group `pgid`, or `None` for a group that must never be
/// signalled: 0 or less (the caller's group or every process), 1 (init), or the caller's own.
pub fn group(pgid: i32) -> Option<impl FnMut(Signal)> {
    if pgid <= 1 || pgid == getpgrp().as_raw() {
        return None;
    }
    // An error means the group is gone (ESRCH) or not ours to signal (EPERM); either way the
    // caller's `gone` decides what happens next.
    Some(move |sig| {
        let _ = killpg(Pid::from_raw(pgid), sig);
    })
}

/// Sends `first` to group `pgid`, waits until `gone()` or `deadline` (asking every `pause`), and
/// sends SIGKILL at the deadline. Returns at once, sending nothing, when it is gone already;
/// [`Ended::Refused`] only for a forbidden group that is still there.
pub fn escalate_group(
    pgid: i32,
    first: Signal,
    deadline: Instant,
    pause: Duration,
    mut gone: impl FnMut() -> bool,
) -> Ended {
    match group(pgid) {
        Some(send) => escalate(send, gone, first, deadline, pause),
        None if gone() => Ended::Gone,
        None => Ended::Refused,
    }
}

/// The policy of [`escalate_group`], with the signalling and the question as functions.
pub fn escalate(
    mut send: impl FnMut(Signal),
    mut gone: impl FnMut() -> bool,
    first: Signal,
    deadline: Instant,
    pause: Duration,
) -> Ended {
    if gone() {
        return Ended::Gone;
    }
    send(first);
    while !gone() {
        let now = Instant::now();
        if now >= deadline {
            send(Signal::SIGKILL);
            return Ended::Killed;
        }
        std::thread::sleep(pause.min(deadline - now));
    }
    Ended::Gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    const PAUSE: Duration = Duration::from_millis(1);

    #[test]
    fn gone_already_sends_nothing() {
        let sent = RefCell::new(Vec::new());
        let end = escalate(
            |s| sent.borrow_mut().push(s),
            || true,
            Signal::SIGTERM,
            Instant::now() + Duration::from_secs(5),
            PAUSE,
        );
        assert_eq!((end, sent.into_inner()), (Ended::Gone, vec![]));
    }

    #[test]
    fn gone_after_the_first_signal_is_not_killed() {
        let sent = RefCell::new(Vec::new());
        let asked = Cell::new(0);
        let end = escalate(
            |s| sent.borrow_mut().push(s),
            || {
                asked.set(asked.get() + 1);
                asked.get() > 3
            },
            Signal::SIGINT,
            Instant::now() + Duration::from_secs(5),
            PAUSE,
        );
        assert_eq!(
            (end, sent.into_inner()),
            (Ended::Gone, vec![Signal::SIGINT])
        );
    }

    #[test]
    fn still_there_at_the_deadline_is_killed() {
        let sent = RefCell::new(Vec::new());
        let start = Instant::now();
        let end = escalate(
            |s| sent.borrow_mut().push(s),
            || false,
            Signal::SIGTERM,
            start + Duration::from_millis(30),
            PAUSE,
        );
        assert_eq!(
            (end, sent.into_inner()),
            (Ended::Killed, vec![Signal::SIGTERM, Signal::SIGKILL])
        );
        assert!(start.elapsed() >= Duration::from_millis(30), "waited");
    }

    #[test]
    fn forbidden_groups_are_refused() {
        for pgid in [-1, 0, 1, getpgrp().as_raw()] {
            assert!(group(pgid).is_none(), "group {pgid}");
            let end = escalate_group(pgid, Signal::SIGTERM, Instant::now(), PAUSE, || false);
            assert_eq!(end, Ended::Refused, "group {pgid}");
        }
    }

    #[test]
    fn a_real_group_ends_on_the_first_signal_or_on_sigkill() {
        // `sh` in a group of its own, with a child of its own in that group.
        let mut polite = Command::new("sh")
            .args(["-c", "sleep 100 & wait"])
            .process_group(0)
            .spawn()
            .expect("sh");
        let pgid = polite.id() as i32;
        let end = escalate_group(
            pgid,
            Signal::SIGTERM,
            Instant::now() + Duration::from_secs(10),
            PAUSE,
            || polite.try_wait().ok().flatten().is_some(),
        );
        assert_eq!(end, Ended::Gone);
        // Its `sleep` got the group's SIGTERM too; SIGKILL in case it did not.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);

        // Ignores SIGTERM; says so once the trap is set, so the signal cannot come first.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("ready");
        let pgid = stubborn.id() as i32;
        let end = escalate_group(
            pgid,
            Signal::SIGTERM,
            Instant::now() + Duration::from_millis(200),
            PAUSE,
            || stubborn.try_wait().ok().flatten().is_some(),
        );
        assert_eq!(end, Ended::Killed);
        let status = stubborn.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}
