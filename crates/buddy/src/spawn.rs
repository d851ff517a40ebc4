//! Starting processes: the service, its action scripts and its loggers.
//!
//! Every child gets an empty signal mask, its own session (so the service's process group is its own, and a signal
//! to that group can never reach the buddy), stdin from `/dev/null`, and the service's
//! credentials: supplementary groups, then gid, then uid, each checked after the fact in the
//! child, which refuses to exec if any id is not what was asked or root can be regained.
//! Credentials are resolved once (at start-up and on SIGHUP), never between fork and exec.

use nix::unistd::{Gid, Group, Uid, User};
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use upk_core::config::{IdSpec, Service};

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

/// The child's standard output and error.
pub struct Output {
    /// Standard output.
    pub stdout: File,
    /// Standard error.
    pub stderr: File,
}

impl Output {
    /// Duplicates both descriptors (the same files for another child).
    pub fn try_clone(&self) -> io::Result<Output> {
        Ok(Output {
            stdout: self.stdout.try_clone()?,
            stderr: self.stderr.try_clone()?,
        })
    }
}

/// Starts `program args...` in `cwd` in a new session with `creds`; returns its pid. The child
/// inherits the buddy's environment (which carries `UPK_SERVICE`), plus the new user's HOME,
/// USER and LOGNAME when credentials change.
///
/// `stdin` defaults to `/dev/null`. Exec failures are reported here (std's exec-error pipe),
/// not as a mysterious exit 127 later.
pub fn spawn(
    program: &Path,
    args: &[String],
    cwd: &Path,
    creds: &Creds,
    stdin: Option<File>,
    out: Output,
) -> io::Result<i32> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(out.stdout)
        .stderr(out.stderr);
    for (k, v) in &creds.env {
        cmd.env(k, v);
    }
    let (uid, gid, groups) = (creds.uid, creds.gid, creds.groups.clone());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (sigprocmask, setsid, setgroups, setgid, setuid and the get*id family); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The buddy blocks the signals it reads from its signalfd; the mask survives
            // fork and exec, and a service with SIGTERM blocked could never be stopped.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            nix::unistd::setsid()?;
            if let (Some(uid), Some(gid)) = (uid, gid) {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                let ok = nix::unistd::getuid() == uid
                    && nix::unistd::geteuid() == uid
                    && nix::unistd::getgid() == gid
                    && nix::unistd::getegid() == gid
                    && (uid.is_root() || nix::unistd::setuid(Uid::from_raw(0)).is_err());
                if !ok {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The poll loop reaps every child with waitpid; the handle is not needed.
    Ok(child.id() as i32)
}
