//! The child registry: every process the buddy started and still has to reap, by pid, with
//! the role it plays.
//!
//! A pid enters the moment it is started ([`crate::effects`]) and leaves when it is reaped
//! ([`Children::ended`]), so the loop routes an exit with one lookup instead of asking each
//! owner in turn. What a role needs to know about its process (a probe's or hook's timeout,
//! who waits for an action's result, which stream a logger reads) lives in the role. Anything reaped that is
//! not here is an orphan of the service re-parented to the buddy (a child subreaper): reaping
//! it is all there is to do. Only [`reaped`] makes a system call.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::time::Instant;
use upk_core::config::HookEvent;
use upk_core::event::Exit;

/// Who waits for an action's result: a peer's token and the request id to echo.
pub type ReplyTo = (u64, Option<u64>);

/// What a child is to the buddy.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// The service's main process.
    Service,
    /// The health probe (`actions/health`).
    Probe {
        /// When its group is killed.
        deadline: Instant,
        /// It was, at the deadline.
        timed_out: bool,
    },
    /// A notification hook (`scripts/hook@NAME`).
    Hook {
        /// The hook's name.
        hook: String,
        /// The event it was run for.
        event: HookEvent,
        /// When its group is killed.
        deadline: Instant,
        /// It was, at the deadline.
        timed_out: bool,
    },
    /// An action script (`actions/stop`, `reload`, `NN`).
    Action {
        /// Its name as recorded (`stop`, `reload`, a custom action's name).
        action: String,
        /// Who waits for its result.
        reply_to: Option<ReplyTo>,
    },
    /// The logger of one stream (index into the loop's streams).
    Logger {
        /// 0: stdout, 1: stderr.
        stream: usize,
    },
}

impl Role {
    /// When the role's process must be done, if it has a timeout still running.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Role::Probe {
                deadline,
                timed_out: false,
            }
            | Role::Hook {
                deadline,
                timed_out: false,
                ..
            } => Some(*deadline),
            _ => None,
        }
    }

    fn time_out(&mut self) {
        if let Role::Probe { timed_out, .. } | Role::Hook { timed_out, .. } = self {
            *timed_out = true;
        }
    }
}

/// The children still to be reaped.
#[derive(Debug, Default)]
pub struct Children {
    by_pid: HashMap<i32, Role>,
}

impl Children {
    /// Registers a child the moment it is started.
    pub fn add(&mut self, pid: i32, role: Role) {
        self.by_pid.insert(pid, role);
    }

    /// The role of `pid`, which was reaped: it leaves the registry. `None`: an orphan.
    pub fn ended(&mut self, pid: i32) -> Option<Role> {
        self.by_pid.remove(&pid)
    }

    /// Forgets the running probe (its result would say nothing about a new run); returns its
    /// pid so that its group can be killed. Its exit is then reaped as an orphan's.
    pub fn forget_probe(&mut self) -> Option<i32> {
        let pid = self.probe()?;
        self.by_pid.remove(&pid);
        Some(pid)
    }

    /// The probe in flight.
    pub fn probe(&self) -> Option<i32> {
        self.find(|r| matches!(r, Role::Probe { .. }))
    }

    /// The run of hook `name` still in flight.
    pub fn hook(&self, name: &str) -> Option<i32> {
        self.find(|r| matches!(r, Role::Hook { hook, .. } if hook == name))
    }

    /// Some action's result is owed to peer `token`.
    pub fn owes(&self, token: u64) -> bool {
        self.by_pid
            .values()
            .any(|r| matches!(r, Role::Action { reply_to: Some((t, _)), .. } if *t == token))
    }

    /// The earliest timeout still running.
    pub fn deadline(&self) -> Option<Instant> {
        self.by_pid.values().filter_map(Role::deadline).min()
    }

    /// Marks the children whose timeout passed by `now` as timed out; returns their pids (the
    /// loop kills their groups, and the reaping records them).
    pub fn expire(&mut self, now: Instant) -> Vec<i32> {
        let mut due = Vec::new();
        for (pid, role) in &mut self.by_pid {
            if role.deadline().is_some_and(|d| d <= now) {
                role.time_out();
                due.push(*pid);
            }
        }
        due
    }

    fn find(&self, pred: impl Fn(&Role) -> bool) -> Option<i32> {
        self.by_pid
            .iter()
            .find(|(_, r)| pred(r))
            .map(|(pid, _)| *pid)
    }
}

/// Every child that has ended since the last call (`waitpid(-1, WNOHANG)` until none is left).
pub fn reaped() -> Vec<(i32, Exit)> {
    let mut ended = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => ended.push((pid.as_raw(), Exit::Exited { code })),
            Ok(WaitStatus::Signaled(pid, sig, core)) => ended.push((
                pid.as_raw(),
                Exit::Killed {
                    signal: sig as i32,
                    core,
                },
            )),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn probe(deadline: Instant) -> Role {
        Role::Probe {
            deadline,
            timed_out: false,
        }
    }

    fn hook(name: &str, deadline: Instant) -> Role {
        Role::Hook {
            hook: name.into(),
            event: HookEvent::Failed,
            deadline,
            timed_out: false,
        }
    }

    #[test]
    fn a_reaped_pid_names_its_role_once_and_strangers_are_orphans() {
        let mut c = Children::default();
        c.add(10, Role::Service);
        c.add(11, Role::Logger { stream: 1 });
        assert_eq!(c.ended(11), Some(Role::Logger { stream: 1 }));
        assert_eq!(c.ended(11), None, "a role is handed out once");
        assert_eq!(c.ended(99), None, "an orphan");
        assert_eq!(c.ended(10), Some(Role::Service));
    }

    #[test]
    fn owners_find_their_children() {
        let t = Instant::now();
        let mut c = Children::default();
        c.add(20, probe(t));
        c.add(21, hook("page", t));
        c.add(
            22,
            Role::Action {
                action: "reload".into(),
                reply_to: Some((5, Some(1))),
            },
        );
        assert_eq!(c.probe(), Some(20));
        assert_eq!(c.hook("page"), Some(21));
        assert_eq!(c.hook("mail"), None);
        assert!(c.owes(5) && !c.owes(6));
        assert_eq!(c.forget_probe(), Some(20));
        assert_eq!(c.probe(), None);
        assert_eq!(
            c.ended(20),
            None,
            "a forgotten probe is reaped as an orphan"
        );
        assert_eq!(
            c.ended(22).map(|r| matches!(r, Role::Action { .. })),
            Some(true)
        );
        assert!(!c.owes(5), "the owed reply left with the action");
    }

    #[test]
    fn timeouts_fire_once_and_the_role_remembers() {
        let t = Instant::now();
        let mut c = Children::default();
        c.add(30, probe(t + Duration::from_secs(1)));
        c.add(31, hook("page", t + Duration::from_secs(3)));
        c.add(32, Role::Service);
        assert_eq!(c.deadline(), Some(t + Duration::from_secs(1)));
        assert_eq!(c.expire(t), Vec::<i32>::new());
        assert_eq!(c.expire(t + Duration::from_secs(2)), vec![30]);
        assert_eq!(c.expire(t + Duration::from_secs(2)), Vec::<i32>::new());
        assert_eq!(c.deadline(), Some(t + Duration::from_secs(3)));
        assert_eq!(
            c.ended(30),
            Some(Role::Probe {
                deadline: t + Duration::from_secs(1),
                timed_out: true
            })
        );
        let mut due = c.expire(t + Duration::from_secs(9));
        due.sort();
        assert_eq!(due, vec![31]);
        assert_eq!(c.deadline(), None);
    }
}
