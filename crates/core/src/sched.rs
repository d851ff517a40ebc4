//! The scheduling policy of upkeeper's own daemons.
//!
//! The controller and every buddy run `SCHED_BATCH`; what they start runs `SCHED_OTHER`, as
//! the rest of the system does. A batch task does not preempt the task running when it wakes.
//! This matters most when a service has just been started: the buddy, released from `vfork`
//! by the service's `execve`, would otherwise take the CPU from the new service for its own
//! bookkeeping (the status file, the records, the event to the controller), and the
//! controller, woken by that event, would do the same. The restart gap is what the service
//! pays for that (docs/benchmarks.md). The daemons' share of the CPU and their nice value stay
//! what they were; an operator's real-time or idle policy is left as it is.
//!
//! The calls are made as raw system calls: musl's `sched_setscheduler` is a stub that fails
//! with `ENOSYS`, since POSIX means a process and Linux a thread (the daemons that call
//! [`batch`] are single-threaded when they do, or want every thread batch).

use std::io;

/// Makes the calling process `SCHED_BATCH` when it runs `SCHED_OTHER`; returns whether it
/// runs `SCHED_BATCH` afterwards (also when it was so already, inherited from the controller).
pub fn batch() -> bool {
    match policy() {
        libc::SCHED_OTHER => set(libc::SCHED_BATCH).is_ok(),
        p => p == libc::SCHED_BATCH,
    }
}

/// In a child between fork and exec: back to `SCHED_OTHER` if the daemon's `SCHED_BATCH` was
/// inherited. Two system calls on the stack: async-signal-safe, allocates nothing.
pub fn normal_in_child() -> io::Result<()> {
    if policy() == libc::SCHED_BATCH {
        set(libc::SCHED_OTHER)?;
    }
    Ok(())
}

/// Runs `f` (a spawn that cannot set its child's policy, such as musl's `posix_spawn`) with
/// the calling process `SCHED_OTHER` for its duration, when it runs `SCHED_BATCH`.
pub fn as_normal<R>(f: impl FnOnce() -> R) -> R {
    let batch = policy() == libc::SCHED_BATCH && set(libc::SCHED_OTHER).is_ok();
    let out = f();
    if batch {
        let _ = set(libc::SCHED_BATCH);
    }
    out
}

/// The calling thread's policy (-1 if it cannot be read).
fn policy() -> i32 {
    // SAFETY: sched_getscheduler(0) reads the caller's policy; no memory is passed.
    unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) as i32 }
}

fn set(policy: i32) -> io::Result<()> {
    // The kernel's `struct sched_param` is one int, the priority: 0 for both policies (libc
    // types differ: musl's has more fields).
    let priority: libc::c_int = 0;
    // SAFETY: the kernel reads `priority`, which lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &priority as *const libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_process_starts_its_children_normal() {
        // In a child of the test, so that the test runner's own policy stays as it is.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = batch()
                && policy() == libc::SCHED_BATCH
                && as_normal(policy) == libc::SCHED_OTHER
                && policy() == libc::SCHED_BATCH
                && normal_in_child().is_ok()
                && policy() == libc::SCHED_OTHER;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
    }
}
