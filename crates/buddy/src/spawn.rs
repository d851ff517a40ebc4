//! Starting processes: the service, its action scripts and its loggers.
//!
//! Every child gets an empty signal mask, its own session (so the service's process group is its own, and a signal
//! to that group can never reach the buddy), stdin from `/dev/null`, and the service's
//! credentials: supplementary groups, then gid, then uid, each checked after the fact in the
//! child, which refuses to exec if any id is not what was asked or root can be regained.
//! Credentials are resolved once (at start-up and on SIGHUP), never between fork and exec.
//!
//! Two paths, one contract: when no credentials change and the child has nothing to do to
//! itself ([`Setup`]: cgroups to join, limits), `posix_spawn` (a vfork-style clone in glibc
//! and musl: no page tables to copy, the restart path's largest cost) with the session, the
//! empty mask and default dispositions as spawn attributes; otherwise std's `Command` with
//! the setup and a checked privilege drop between fork and exec.

use nix::unistd::{Gid, Group, Uid, User};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{self, Command};
use upk_core::config::{IdSpec, Service};

/// `PATH` in every child's environment (the buddy's own `PATH` is not passed on).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The variable the test kit marks its processes with, kept (and only it) so that a test's
/// sandbox can find and kill everything it started: a test hook, not a service interface.
pub const TEST_MARKER: &str = "UPK_SANDBOX";

/// Replaces the process environment with the one every child starts from: `PATH`
/// ([`DEFAULT_PATH`]), `UPK_SERVICE=<id>`, and [`TEST_MARKER`] when it was set. Call it only
/// while the process has one thread (the buddy's start-up).
pub fn clean_environment(service: &str) {
    let marker = std::env::var_os(TEST_MARKER);
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    std::env::set_var("PATH", DEFAULT_PATH);
    std::env::set_var("UPK_SERVICE", service);
    if let Some(m) = marker {
        std::env::set_var(TEST_MARKER, m);
    }
}

/// Who the service runs as; `None` fields mean "as the buddy".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Creds {
    /// The uid to switch to.
    pub uid: Option<Uid>,
    /// The gid to switch to.
    pub gid: Option<Gid>,
    /// Supplementary groups (when switching).
    pub groups: Vec<Gid>,
    /// HOME/USER/LOGNAME for the new user.
    pub env: Vec<(String, String)>,
}

impl Creds {
    /// Resolves `SetUID`/`SetGID` for a buddy running as `euid`.
    ///
    /// Not as root, the default 0 (and the buddy's own ids) mean "unchanged" and anything else
    /// is an error. As root, a user name brings its primary group (when SetGID is left at 0)
    /// and its supplementary groups.
    pub fn resolve(svc: &Service, euid: Uid, egid: Gid) -> Result<Creds, String> {
        let user = match &svc.set_uid {
            IdSpec::Id(n) => User::from_uid(Uid::from_raw(*n)).ok().flatten(),
            IdSpec::Name(name) => Some(
                User::from_name(name)
                    .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
                    .ok_or_else(|| format!("SetUID: no user named {name:?}"))?,
            ),
        };
        let uid = match &svc.set_uid {
            IdSpec::Id(n) => Uid::from_raw(*n),
            IdSpec::Name(_) => user.as_ref().map(|u| u.uid).unwrap_or(euid),
        };
        let gid = match &svc.set_gid {
            IdSpec::Id(0) if !uid.is_root() => match &user {
                Some(u) => u.gid,
                None => {
                    return Err(format!(
                        "SetGID must be given: uid {uid} has no passwd entry"
                    ))
                }
            },
            IdSpec::Id(n) => Gid::from_raw(*n),
            IdSpec::Name(name) => {
                Group::from_name(name)
                    .map_err(|e| format!("cannot look up group {name:?}: {e}"))?
                    .ok_or_else(|| format!("SetGID: no group named {name:?}"))?
                    .gid
            }
        };
        if !euid.is_root() {
            let same_uid = uid.is_root() || uid == euid;
            let same_gid = gid.as_raw() == 0 || gid == egid;
            if same_uid && same_gid {
                return Ok(Creds::default());
            }
            return Err(format!(
                "SetUID {uid}/SetGID {gid} need the buddy to run as root (it runs as uid {euid})"
            ));
        }
        if uid.is_root() && gid.as_raw() == 0 {
            return Ok(Creds::default());
        }
        let groups = match &user {
            Some(u) if u.uid == uid => {
                let name = std::ffi::CString::new(u.name.clone()).map_err(|e| e.to_string())?;
                nix::unistd::getgrouplist(&name, gid).map_err(|e| format!("getgrouplist: {e}"))?
            }
            _ => vec![gid],
        };
        let env = match &user {
            Some(u) if u.uid == uid => vec![
                ("HOME".into(), u.dir.to_string_lossy().into_owned()),
                ("USER".into(), u.name.clone()),
                ("LOGNAME".into(), u.name.clone()),
            ],
            _ => Vec::new(),
        };
        Ok(Creds {
            uid: Some(uid),
            gid: Some(gid),
            groups,
            env,
        })
    }
}

/// A child's standard descriptors, borrowed: the buddy keeps them open across spawns, so a
/// restart opens nothing.
#[derive(Clone, Copy)]
pub struct Stdio<'a> {
    /// Standard input (`/dev/null` for the service and its scripts).
    pub stdin: BorrowedFd<'a>,
    /// Standard output.
    pub stdout: BorrowedFd<'a>,
    /// Standard error.
    pub stderr: BorrowedFd<'a>,
}

/// What some children get beyond the usual: environment variables (hooks' context,
/// `NOTIFY_SOCKET`), one more descriptor (s6's notification fd), and an argv\[0\] other
/// than the program's path (a program exec'd without the shell, named as the script wrote it).
#[derive(Default, Clone)]
pub struct Extra<'a> {
    /// argv\[0\]; the program's path when `None`.
    pub argv0: Option<String>,
    /// Set in the child's environment, over the inherited one.
    pub env: Vec<(String, String)>,
    /// `(fd, n)`: the child gets `fd` as descriptor `n`.
    pub fd: Option<(BorrowedFd<'a>, i32)>,
}

/// What a child does to itself between fork and exec, beyond its credentials: join its
/// cgroups, set its limits and priorities. Everything is prepared here, before the fork, so
/// the child only makes system calls.
#[derive(Default, Clone)]
pub struct Setup<'a> {
    /// The unified cgroup to start the child in: its directory (for `clone3`'s
    /// `CLONE_INTO_CGROUP`) and its `cgroup.procs` (to join after a fork where the kernel
    /// has no `clone3`).
    pub cgroup: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
    /// `cgroup.procs` files the child writes `0` to (joining before it can fork).
    pub joins: Vec<BorrowedFd<'a>>,
    /// `setrlimit` calls.
    pub rlimits: Vec<(i32, libc::rlimit)>,
    /// `setpriority`.
    pub nice: Option<i32>,
    /// `ioprio_set` with this value (class << 13 | level).
    pub ioprio: Option<i32>,
    /// Written to `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// `umask`.
    pub umask: Option<u32>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
}

impl Setup<'_> {
    /// Nothing to do: the posix_spawn path can start the child.
    pub fn is_empty(&self) -> bool {
        self.cgroup.is_none()
            && self.joins.is_empty()
            && self.rlimits.is_empty()
            && self.nice.is_none()
            && self.ioprio.is_none()
            && self.oom_score_adj.is_none()
            && self.umask.is_none()
            && !self.no_new_privs
    }
}

/// `-1` from a libc call as an error.
pub(crate) fn ok(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Applies `setup` in the child (between fork and exec: system calls only, no allocation).
/// `oom` is `oom_score_adj`'s value as text, made before the fork.
pub(crate) fn apply(
    joins: &[i32],
    rlimits: &[(i32, libc::rlimit)],
    setup: (Option<i32>, Option<i32>, Option<u32>),
    oom: Option<&[u8]>,
) -> io::Result<()> {
    // The buddy's SCHED_BATCH is not the service's (upk_core::sched).
    upk_core::sched::normal_in_child()?;
    for &fd in joins {
        // SAFETY: write(2) from a buffer we own to a descriptor the parent keeps open.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    for (resource, lim) in rlimits {
        // SAFETY: setrlimit reads the struct we pass. The resource's type differs by libc.
        #[allow(clippy::useless_conversion)]
        ok(unsafe { libc::setrlimit((*resource).try_into().unwrap_or_default(), lim) })?;
    }
    let (nice, ioprio, umask) = setup;
    if let Some(n) = nice {
        // SAFETY: setpriority takes plain integers. The `which` type differs by libc.
        #[allow(clippy::useless_conversion)]
        ok(unsafe { libc::setpriority(libc::PRIO_PROCESS.try_into().unwrap_or_default(), 0, n) })?;
    }
    if let Some(prio) = ioprio {
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        // SAFETY: ioprio_set takes plain integers.
        let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(text) = oom {
        let path = b"/proc/self/oom_score_adj\0";
        // SAFETY: a NUL-terminated path we own; the descriptor is closed on every path.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            ok(fd)?;
            let n = libc::write(fd, text.as_ptr().cast(), text.len());
            libc::close(fd);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    if let Some(m) = umask {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(m as libc::mode_t) };
    }
    Ok(())
}

/// Starts `program args...` in `cwd` in a new session with `creds`; returns its pid. The child
/// inherits the buddy's environment (which carries `UPK_SERVICE`), plus the new user's HOME,
/// USER and LOGNAME when credentials change, plus `extra`.
///
/// Exec failures are reported here (by posix_spawn, or std's exec-error pipe), not as a
/// mysterious exit 127 later.
pub fn spawn(
    program: &Path,
    args: &[String],
    cwd: &Path,
    creds: &Creds,
    stdio: Stdio<'_>,
    extra: &Extra<'_>,
    setup: &Setup<'_>,
) -> io::Result<i32> {
    if let Some((dir, procs)) = setup.cgroup {
        match crate::clone::spawn_into(dir, program, args, cwd, creds, stdio, extra, setup) {
            Err(e) if crate::clone::unsupported(&e) => {
                // No clone3 into a cgroup here: fork, and the child joins by `cgroup.procs`.
                let mut joined = setup.clone();
                joined.cgroup = None;
                joined.joins.insert(0, procs);
                return spawn(program, args, cwd, creds, stdio, extra, &joined);
            }
            started => return started,
        }
    }
    if creds.uid.is_none() && creds.gid.is_none() && setup.is_empty() {
        // posix_spawn cannot set the child's policy under musl: the buddy lends it its own.
        return upk_core::sched::as_normal(|| posix_spawn(program, args, cwd, stdio, extra));
    }
    let owned = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map(process::Stdio::from);
    let mut cmd = Command::new(program);
    if let Some(argv0) = &extra.argv0 {
        cmd.arg0(argv0);
    }
    cmd.args(args)
        .current_dir(cwd)
        .stdin(owned(stdio.stdin)?)
        .stdout(owned(stdio.stdout)?)
        .stderr(owned(stdio.stderr)?);
    for (k, v) in creds.env.iter().chain(&extra.env) {
        cmd.env(k, v);
    }
    let (uid, gid, groups) = (creds.uid, creds.gid, creds.groups.clone());
    let extra_fd = extra
        .fd
        .map(|(fd, n)| (std::os::fd::AsRawFd::as_raw_fd(&fd), n));
    let joins: Vec<i32> = setup
        .joins
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let rlimits = setup.rlimits.clone();
    let attrs = (setup.nice, setup.ioprio, setup.umask);
    let oom = setup.oom_score_adj.map(|n| n.to_string().into_bytes());
    let no_new_privs = setup.no_new_privs;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sigprocmask, setsid, write, setrlimit, setpriority, ioprio_set, open, umask,
    // dup2, fcntl, setgroups, setgid, setuid, prctl and the get*id family); it allocates
    // nothing: what it needs was made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // The buddy blocks the signals it reads from its signalfd; the mask survives
            // fork and exec, and a service with SIGTERM blocked could never be stopped.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            nix::unistd::setsid()?;
            // Cgroups first (before anything can fork), limits while still privileged.
            apply(&joins, &rlimits, attrs, oom.as_deref())?;
            if let Some((fd, n)) = extra_fd {
                // dup2 leaves the copy without FD_CLOEXEC; the same number would keep it.
                if fd == n {
                    nix::fcntl::fcntl(
                        fd,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                } else if libc::dup2(fd, n) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let (Some(uid), Some(gid)) = (uid, gid) {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                let same = nix::unistd::getuid() == uid
                    && nix::unistd::geteuid() == uid
                    && nix::unistd::getgid() == gid
                    && nix::unistd::getegid() == gid
                    && (uid.is_root() || nix::unistd::setuid(Uid::from_raw(0)).is_err());
                if !same {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            if no_new_privs {
                ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The poll loop reaps every child with waitpid; the handle is not needed.
    Ok(child.id() as i32)
}

extern "C" {
    /// The process environment, handed to the child as is.
    static environ: *const *mut libc::c_char;
}

/// What `execve` and `chdir` take, as C strings: the program, the working directory, argv.
pub(crate) struct Exec {
    /// The program's path.
    pub prog: std::ffi::CString,
    /// The working directory.
    pub dir: std::ffi::CString,
    /// argv, argv\[0\] first (the program's path unless `Extra::argv0` says otherwise).
    pub owned: Vec<std::ffi::CString>,
}

impl Exec {
    pub(crate) fn new(
        program: &Path,
        args: &[String],
        cwd: &Path,
        extra: &Extra<'_>,
    ) -> io::Result<Exec> {
        use std::os::unix::ffi::OsStrExt;
        let cstr = |b: &[u8]| {
            std::ffi::CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        };
        let prog = cstr(program.as_os_str().as_bytes())?;
        let dir = cstr(cwd.as_os_str().as_bytes())?;
        let mut owned = vec![match &extra.argv0 {
            Some(a) => cstr(a.as_bytes())?,
            None => prog.clone(),
        }];
        for a in args {
            owned.push(cstr(a.as_bytes())?);
        }
        Ok(Exec { prog, dir, owned })
    }
}

/// The process environment with `over` set over it, as `KEY=VALUE` strings for `execve`.
pub(crate) fn environment(over: &[(String, String)]) -> io::Result<Vec<std::ffi::CString>> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let cstr = |b: Vec<u8>| {
        std::ffi::CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        if !over.iter().any(|(e, _)| std::ffi::OsStr::new(e) == k) {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.as_bytes());
            out.push(cstr(kv)?);
        }
    }
    // A later pair wins over an earlier one of the same name, as with `Command::env`.
    for (i, (k, v)) in over.iter().enumerate() {
        if !over[i + 1..].iter().any(|(later, _)| later == k) {
            out.push(cstr(format!("{k}={v}").into_bytes())?);
        }
    }
    Ok(out)
}

/// Turns a posix_spawn* return value (an error number, not -1/errno) into a `Result`.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `posix_spawn` in a new session, with an empty signal mask and every catchable signal at
/// its default disposition, stdio dup'ed in and `cwd` as the working directory.
fn posix_spawn(
    program: &Path,
    args: &[String],
    cwd: &Path,
    stdio: Stdio<'_>,
    extra: &Extra<'_>,
) -> io::Result<i32> {
    use std::mem::MaybeUninit;
    use std::os::fd::AsRawFd;
    let Exec { prog, dir, owned } = Exec::new(program, args, cwd, extra)?;
    let mut argv: Vec<*mut libc::c_char> = owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    // The inherited environment as is, unless there is something to add.
    let env_owned = if extra.env.is_empty() {
        Vec::new()
    } else {
        environment(&extra.env)?
    };
    let mut envp: Vec<*mut libc::c_char> =
        env_owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];

    // SAFETY: the attribute and file-action objects are initialised before use and destroyed
    // on every path; every pointer handed over (program, argv, dir, environ) outlives the call.
    unsafe {
        let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        if let Err(e) = check(libc::posix_spawnattr_init(attr.as_mut_ptr())) {
            libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
            return Err(e);
        }
        let result = (|| {
            for (target, fd) in fds.iter().enumerate() {
                check(libc::posix_spawn_file_actions_adddup2(
                    actions.as_mut_ptr(),
                    *fd,
                    target as i32,
                ))?;
            }
            if let Some((fd, n)) = extra.fd {
                check(libc::posix_spawn_file_actions_adddup2(
                    actions.as_mut_ptr(),
                    fd.as_raw_fd(),
                    n,
                ))?;
            }
            check(libc::posix_spawn_file_actions_addchdir_np(
                actions.as_mut_ptr(),
                dir.as_ptr(),
            ))?;
            let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(
                attr.as_mut_ptr(),
                empty.as_ptr(),
            ))?;
            // SIGPIPE is ignored by the Rust runtime, and the child must not inherit that.
            let mut defaults = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(defaults.as_mut_ptr());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::sigaddset(defaults.as_mut_ptr(), sig);
                }
            }
            check(libc::posix_spawnattr_setsigdefault(
                attr.as_mut_ptr(),
                defaults.as_ptr(),
            ))?;
            // The constants differ in type across libc targets (gnu, musl); all fit in a short.
            #[allow(clippy::unnecessary_cast)]
            let flags = libc::POSIX_SPAWN_SETSID as i32
                | libc::POSIX_SPAWN_SETSIGMASK as i32
                | libc::POSIX_SPAWN_SETSIGDEF as i32;
            check(libc::posix_spawnattr_setflags(
                attr.as_mut_ptr(),
                flags as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                prog.as_ptr(),
                actions.as_ptr(),
                attr.as_ptr(),
                argv.as_ptr(),
                if env_owned.is_empty() {
                    environ
                } else {
                    envp.as_ptr()
                },
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(attr.as_mut_ptr());
        libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
        result
    }
}
