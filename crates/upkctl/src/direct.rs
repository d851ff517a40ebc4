//! Acting on a service without the controller: through its buddy's own socket, or, when no
//! buddy is left, on the process its status file names.
//!
//! The OpenRC glue stops a service this way when the controller is down or wedged (init kills
//! it before the shutdown runlevel), and `unconfigure --direct` shuts buddies down this way
//! when the controller is unreachable (a package removed while it is down: its program is
//! about to be deleted). Nothing done here reaches the audit store; the buddy's records name the caller.

use crate::exit::{self, Failure, Result};
use crate::{warn, Ctx};
use libupkeeper::buddy::{BuddyClient, BuddyError, BuddyRequest};
use libupkeeper::StateName;
use std::io::Write;
use std::time::{Duration, Instant};
use upk_core::rundir::RunDir;
use upk_core::status::{Proc, Status};

/// How often a status file is read again while waiting for it.
const RECHECK: Duration = Duration::from_millis(100);

/// Stops the service without the controller: through its buddy, or, when no buddy is left,
/// by signalling the service process the status file names.
pub fn stop(id: &str, run_dir: &RunDir, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    let read = || {
        Status::read(&run_dir.status()).map_err(|e| {
            Failure::new(
                exit::TEMPORARY,
                format!("cannot read {}: {e}", run_dir.status().display()),
            )
        })
    };
    let Some(st) = read()? else {
        return Ok(exit::OK); // never started here: nothing to stop
    };
    if matches!(st.state, StateName::Stopped | StateName::Failed) {
        return Ok(exit::OK);
    }
    match BuddyClient::connect(&run_dir.socket(), timeout) {
        Ok(mut buddy) => {
            buddy.stop().map_err(|e| buddy_failure(id, e))?;
        }
        Err(BuddyError::Unreachable { .. }) => return kill_orphan(id, &st, deadline),
        Err(e) => return Err(buddy_failure(id, e)),
    }
    loop {
        let st = read()?;
        match st.as_ref().map(|s| s.state) {
            None | Some(StateName::Stopped | StateName::Failed) => return Ok(exit::OK),
            Some(state) if Instant::now() >= deadline => {
                return Err(Failure::new(
                    exit::TIMED_OUT,
                    format!(
                        "{id}: still {} after {:.1}s",
                        state.as_str(),
                        timeout.as_secs_f64()
                    ),
                ))
            }
            Some(_) => std::thread::sleep(RECHECK),
        }
    }
}

/// Stops the service through its buddy ([`stop`]), then shuts the buddy down and waits
/// until it has exited (its lock is free). A service with no buddy and no process is done.
pub fn unconfigure(id: &str, run_dir: &RunDir, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    stop(id, run_dir, timeout)?;
    let mut buddy = match BuddyClient::connect(&run_dir.socket(), timeout) {
        Ok(b) => b,
        Err(BuddyError::Unreachable { .. }) => return Ok(exit::OK),
        Err(e) => return Err(buddy_failure(id, e)),
    };
    let pid = buddy.buddy_pid();
    // The buddy may close the connection as it exits, before or after its answer.
    match buddy.call(BuddyRequest::Shutdown) {
        Ok(_) | Err(BuddyError::Io(_)) => {}
        Err(e) => return Err(buddy_failure(id, e)),
    }
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::TIMED_OUT,
                format!(
                    "{id}: its buddy (pid {pid}) did not exit within {:.1}s",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(RECHECK);
    }
    Ok(exit::OK)
}

fn buddy_failure(id: &str, e: BuddyError) -> Failure {
    let code = match e {
        BuddyError::TimedOut(_) => exit::TIMED_OUT,
        BuddyError::Refused(_) => exit::FAILED,
        _ => exit::TEMPORARY,
    };
    Failure::new(code, format!("{id}: {e}"))
}

/// No controller and no buddy: the service process the status file names may still run (its
/// buddy was killed). SIGTERM to its group, then SIGKILL at the deadline.
fn kill_orphan(id: &str, st: &Status, deadline: Instant) -> Result<i32> {
    use upk_core::escalate::{escalate_group, Ended};
    let (Some(pid), Some(start)) = (st.pid, st.pid_start) else {
        return Ok(exit::OK);
    };
    let proc = Proc { pid, start };
    // The service leads its own session (the buddy's setsid), so its pid is its group.
    match escalate_group(pid, nix::sys::signal::Signal::SIGTERM, deadline, RECHECK, || {
        !proc.alive()
    }) {
        Ended::Gone => {}
        Ended::Killed => crate::warn(&format!(
            "{id}: no buddy runs; its process {pid} did not end on SIGTERM and was killed"
        )),
        Ended::Refused => crate::warn(&format!(
            "{id}: no buddy runs; its process {pid} is not a process group upkctl may signal, left alone"
        )),
    }
    Ok(exit::OK)
}

/// `upkctl unconfigure --direct SERVICE...` when the controller is unreachable: each service is stopped
/// and its buddy shut down directly, and this says so. The controller forgets nothing: a
/// service whose file is still there comes back when it starts.
pub fn unconfigure_all(
    ctx: &Ctx,
    why: &Failure,
    services: &[String],
    out: &mut dyn Write,
) -> Result<i32> {
    let ctl = ctx.controller()?;
    warn(&format!(
        "{}; asking the buddies directly (not audited; a service whose file stays comes back when the controller starts)",
        why.message
    ));
    let mut code = exit::OK;
    for id in services {
        // The id names a directory: refuse anything that is not an id.
        crate::status::read_status(&ctl.svc_run_path, id)?;
        let run_dir = RunDir::new(ctl.svc_run_path.join(id));
        match unconfigure(id, &run_dir, ctx.timeout) {
            Ok(_) => writeln!(out, "{id}: stopped, and its buddy has exited")?,
            Err(f) => {
                warn(&f.message);
                code = code.max(f.code);
            }
        }
    }
    Ok(code)
}
