//! `upk_buddy`: supervises one service from its run directory.
//!
//! # Theory of operation
//!
//! A buddy is started on one run directory (`upk_buddy SvcRunPath/<id>`) and owns it: it takes
//! `lock`, binds `buddy.sock`, reads `settings.json`, and rewrites `status` on every transition.
//! The service is `actions/start` executed in a session of its own; the buddy reaps it (and,
//! as a child subreaper, whatever it leaves behind), restarts it by policy, stops it with
//! escalation to its whole process group, and records every transition as a sequence-numbered
//! record in a ring that only an acknowledgement empties.
//!
//! The design is s6's: a single thread, one `poll` over descriptors (signalfd, sockets, a pidfd
//! for an adopted process) and one deadline, and a pure transition function
//! ([`machine::Machine::step`]) that the loop ([`buddy::Buddy`]) feeds and obeys. Start-up may
//! fail (exit 100 or 111, see `docs/exit-codes.md`); in the loop, failures become records or
//! log lines, and only `poll` itself failing (EINVAL, ENOMEM: nothing a retry mends) ends it
//! with 111.
//!
//! Where things live, in the direction data flows:
//!
//! * [`startup`]: taking up the directory (before the loop, where failures are fatal; SIGHUP).
//! * [`buddy`]: the loop: poll, dispatch, and `Buddy::drive`, the only caller of
//!   `Machine::step`, which drains a queue of inputs.
//! * [`machine`] (+ its tests): the pure lifecycle.
//! * [`effects`]: the children the machine asks for, and what their ends mean;
//!   [`children`]: the registry of children by role; [`launch`]: the one launch path and its
//!   context (and the fast path past `/bin/sh`); [`spawn`]: the fork/exec itself;
//!   [`health`], [`hooks`], [`logs`]: what probes, hooks and loggers need beyond that.
//! * [`watch`]: processes watched but not reaped (an adopted service, a draining group).
//! * [`peers`]: the socket and who may talk, producing intents; [`requests`]: what they are
//!   answered; [`conn`]: one peer's framing; [`phone`]: dialling the controller.
//! * [`records`]: records and the status file; [`ring`]: the ring an ack empties.
//! * [`fds`]: what happens when descriptors run out.
//!
//! `docs/state-machine.md`, `docs/servicedir.md` and `docs/protocol.md` are the long form.

pub mod buddy;
pub mod children;
pub mod clone;
pub mod conn;
pub mod contain;
pub mod effects;
pub mod explain;
pub mod fds;
pub mod health;
pub mod hooks;
pub mod launch;
pub mod logs;
pub mod machine;
pub mod peers;
pub mod phone;
pub mod records;
pub mod requests;
pub mod ring;
pub mod rotate;
pub mod spawn;
pub mod startup;
pub mod watch;

use std::path::Path;

/// Supervises the run directory at `dir` until told to exit; returns the exit code.
pub fn run(dir: &Path) -> i32 {
    // A buddy never preempts its service at wake-up; the service runs SCHED_OTHER
    // (upk_core::sched, and spawn.rs).
    upk_core::sched::batch();
    match buddy::Buddy::open(upk_core::rundir::RunDir::new(dir)) {
        Ok(b) => b.run(),
        Err(fatal) => {
            eprintln!("upk_buddy: {}", fatal.message);
            fatal.code
        }
    }
}
