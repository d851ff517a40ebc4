//! Starting the service straight into its cgroup: `clone3` with `CLONE_INTO_CGROUP`.
//!
//! A process that joins a cgroup by writing to `cgroup.procs` is migrated, and migration takes
//! the kernel's cgroup-wide thread-group lock for writing: an RCU grace period, measured here
//! at about 8 ms a restart (docs/benchmarks.md). A process cloned into its cgroup is never
//! migrated; it begins there. Neither glibc's nor musl's spawn functions can ask for that,
//! so this module makes the `clone3` call itself. On x86_64 it is a vfork, as those spawn
//! functions make theirs: the child shares our memory on a stack of its own and we wait
//! until it has exec'd (a fork-style clone, copying and then tearing down the page tables,
//! cost 0.2 ms a restart); elsewhere it is fork-style. The child does what `spawn.rs`'s
//! `Command` path does between fork and exec: default dispositions and an empty signal mask,
//! its own session, the limits, its standard descriptors and the extra one, the working
//! directory, the credentials (checked), `no_new_privs`, and `execve`. Everything it needs
//! (argv, envp, paths, descriptors) is made before the clone, so the child only makes system
//! calls and allocates nothing; an exec failure comes back as its errno through a
//! close-on-exec pipe, as std's does.
//!
//! Kernels before 5.7 do not know `CLONE_INTO_CGROUP` (and before 5.3 not `clone3`):
//! [`unsupported`] says so, and `spawn.rs` falls back to a fork that joins by `cgroup.procs`.

use crate::spawn::{apply, environment, ok, Creds, Exec, Extra, Setup, Stdio};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// `clone3`'s argument (`struct clone_args`, up to `cgroup`: the kernel 5.7 layout).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` from `linux/sched.h` (not in every libc crate target).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Set once the kernel has said it cannot clone into a cgroup: later spawns go straight to
/// the fallback.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// True when `e` means "this kernel cannot clone into a cgroup", not "this start failed".
pub fn unsupported(e: &io::Error) -> bool {
    UNSUPPORTED.load(Ordering::Relaxed)
        && matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
        )
}

/// Starts `program args...` in the cgroup whose directory is `cgroup`, as `spawn::spawn`
/// would; returns its pid.
#[allow(clippy::too_many_arguments)]
pub fn spawn_into(
    cgroup: BorrowedFd<'_>,
    program: &Path,
    args: &[String],
    cwd: &Path,
    creds: &Creds,
    stdio: Stdio<'_>,
    extra: &Extra<'_>,
    setup: &Setup<'_>,
) -> io::Result<i32> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let Exec { prog, dir, owned } = Exec::new(program, args, cwd, extra)?;
    let mut argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let over: Vec<(String, String)> = creds.env.iter().chain(&extra.env).cloned().collect();
    let env_owned = environment(&over)?;
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    let extra_fd = extra.fd.map(|(fd, n)| (fd.as_raw_fd(), n));
    let joins: Vec<i32> = setup.joins.iter().map(AsRawFd::as_raw_fd).collect();
    let oom = setup.oom_score_adj.map(|n| n.to_string().into_bytes());
    let attrs = (setup.nice, setup.ioprio, setup.umask);
    let ids = creds.uid.zip(creds.gid);
    let groups: Vec<libc::gid_t> = creds.groups.iter().map(|g| g.as_raw()).collect();

    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    ok(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let [from_child, to_parent] = pipe;
    let ctx = Ctx {
        fds,
        extra_fd,
        joins: &joins,
        rlimits: &setup.rlimits,
        attrs,
        oom: oom.as_deref(),
        dir: &dir,
        ids,
        groups: &groups,
        no_new_privs: setup.no_new_privs,
        prog: &prog,
        argv: &argv,
        envp: &envp,
        to_parent,
    };
    let mut cl = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let pid = clone(&mut cl, &ctx);
    // SAFETY: the write end is ours, and only the child needs it.
    unsafe { libc::close(to_parent) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the read end is ours.
        unsafe { libc::close(from_child) };
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
        ) {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return Err(e);
    }
    let pid = pid as i32;
    let mut code = [0u8; 4];
    let got = loop {
        // SAFETY: read into the buffer we own from the descriptor we own.
        let n = unsafe { libc::read(from_child, code.as_mut_ptr().cast(), 4) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    // SAFETY: the read end is ours.
    unsafe { libc::close(from_child) };
    if got == 4 {
        // It never exec'd: reap it here, and say why.
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(code)));
    }
    Ok(pid)
}

/// Everything the child needs, made before the clone.
struct Ctx<'a> {
    fds: [i32; 3],
    extra_fd: Option<(i32, i32)>,
    joins: &'a [i32],
    rlimits: &'a [(i32, libc::rlimit)],
    attrs: (Option<i32>, Option<i32>, Option<u32>),
    oom: Option<&'a [u8]>,
    dir: &'a CString,
    ids: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    groups: &'a [libc::gid_t],
    no_new_privs: bool,
    prog: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The pipe's write end: the child's errno goes there if it cannot exec.
    to_parent: i32,
}

/// The child's stack where it shares our memory (x86_64): what it does before exec is a few
/// frames of system calls.
#[cfg(target_arch = "x86_64")]
const CHILD_STACK: usize = 64 << 10;

/// Clones the child into `cl.cgroup` and runs [`child_main`] in it; the pid in the parent
/// (the child never returns here), or -1 with errno set.
///
/// On x86_64 it is a vfork: `CLONE_VM | CLONE_VFORK` with a stack of its own, the way musl's
/// and glibc's `posix_spawn` start a child, so no page tables are copied and none torn down
/// at exec; we are suspended until the child has exec'd or exited. The clone is a few
/// instructions of assembly, because the child must begin on its own stack, which no Rust
/// function can arrange. Elsewhere the clone is fork-style: the child has its own copy of our
/// memory.
fn clone(cl: &mut CloneArgs, ctx: &Ctx<'_>) -> i64 {
    #[cfg(target_arch = "x86_64")]
    {
        // u128 elements: the top of the stack is 16-byte aligned, as the ABI wants at a call.
        let mut stack = vec![0u128; CHILD_STACK / 16];
        cl.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        cl.stack = stack.as_mut_ptr() as u64;
        cl.stack_size = (stack.len() * 16) as u64;
        let ret: i64;
        // SAFETY: clone3 reads `cl`, which we own, of the size we pass. In the parent the
        // asm is one system call (rcx and r11 clobbered by `syscall`, as declared). The child
        // starts on `stack` (the kernel sets its stack pointer to the top), calls
        // `trampoline(ctx)` and exits with what it returns, never coming back to Rust code
        // here; `stack` and `ctx` outlive it, since we are suspended until it execs or
        // exits (CLONE_VFORK).
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, 231", // exit_group
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") cl as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") ctx as *const Ctx<'_>,
                in("r13") trampoline as extern "C" fn(*const Ctx<'_>) -> i32,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        drop(stack);
        if ret < 0 {
            // The raw system call returns -errno; the callers read errno.
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = (-ret) as i32 };
            return -1;
        }
        ret
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: clone3 reads the struct we own, of the size we pass. Without CLONE_VM the
        // child has its own copy of our memory, like after fork; the buddy has one thread.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                cl as *mut CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            let code = trampoline(ctx);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(code) };
        }
        pid
    }
}

/// The child's entry: [`child_main`], then the errno to the parent and exit 127.
extern "C" fn trampoline(ctx: *const Ctx<'_>) -> i32 {
    // SAFETY: the parent passes its live `Ctx`, which outlives the child's use of it.
    let ctx = unsafe { &*ctx };
    let err = child_main(ctx);
    let code = err.raw_os_error().unwrap_or(libc::EIO);
    // SAFETY: write(2) from a value we own.
    unsafe { libc::write(ctx.to_parent, (&code as *const i32).cast(), 4) };
    127
}

/// What the cloned child does before exec; returns only on failure.
fn child_main(ctx: &Ctx<'_>) -> io::Error {
    let Ctx {
        fds,
        extra_fd,
        joins,
        rlimits,
        attrs,
        oom,
        dir,
        ids,
        groups,
        no_new_privs,
        prog,
        argv,
        envp,
        ..
    } = *ctx;
    let run = || -> io::Result<()> {
        // SAFETY: every call below is an async-signal-safe system call on values prepared
        // before the clone; nothing allocates.
        unsafe {
            // Dispositions first (SIGPIPE is ignored by the Rust runtime, and the child must
            // not inherit that), then the mask: nothing pending runs a handler of ours.
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            ok(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
            ok(libc::setsid())?;
            apply(joins, rlimits, attrs, oom)?;
            for (target, &fd) in fds.iter().enumerate() {
                ok(libc::dup2(fd, target as i32))?;
            }
            if let Some((fd, n)) = extra_fd {
                if fd == n {
                    // dup2 onto itself would keep FD_CLOEXEC.
                    ok(libc::fcntl(fd, libc::F_SETFD, 0))?;
                } else {
                    ok(libc::dup2(fd, n))?;
                }
            }
            ok(libc::chdir(dir.as_ptr()))?;
            if let Some((uid, gid)) = ids {
                ok(libc::setgroups(groups.len() as _, groups.as_ptr()))?;
                ok(libc::setgid(gid.as_raw()))?;
                ok(libc::setuid(uid.as_raw()))?;
                let same = libc::getuid() == uid.as_raw()
                    && libc::geteuid() == uid.as_raw()
                    && libc::getgid() == gid.as_raw()
                    && libc::getegid() == gid.as_raw()
                    && (uid.is_root() || libc::setuid(0) != 0);
                if !same {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            if no_new_privs {
                ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        Err(io::Error::last_os_error())
    };
    match run() {
        Ok(()) => io::Error::from_raw_os_error(libc::EIO),
        Err(e) => e,
    }
}
