//! The one path every child is started by, and the context it owns: the working directory
//! (the run directory), the service's credentials, stdin from `/dev/null`, and the redirect
//! files for stdout and stderr.
//!
//! A caller describes only what differs ([`Child`]: the program, its arguments, whose
//! credentials, any descriptor of its own, [`Extra`]); everything else is the context's, so
//! the service, its scripts, probes, hooks and loggers cannot drift apart. The redirect files
//! are opened at first use for the service's user and kept until SIGHUP ([`Launcher::reconfigure`]),
//! so a restart opens nothing.
//!
//! It also holds the fast path ([`upk_core::direct`]): the start script is read at each start
//! (at most [`SCRIPT_MAX`] bytes) and, when it is the default `exec PROGRAM ARGS` that needs no
//! shell, the program is started directly, with the argv the shell would have built and the
//! `PWD` it would have exported; if that fails, the script runs as it always did, so errors
//! (sh's exit 127 and its message) are the shell's. [`signal_plan`] says when a stop or
//! reload script is only `kill -SIG $1`. `docs/servicedir.md` says exactly when.

use crate::explain::How;
use crate::logs::{open_redirects, redirect_paths, Redirects};
use crate::spawn::{self, Creds, Extra, Setup, Stdio};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use upk_core::config::Service;
use upk_core::direct::{self, Direct};
use upk_core::rundir::RunDir;

/// The longest script the fast path reads; a longer one simply runs.
pub const SCRIPT_MAX: u64 = 64 << 10;

/// Whose credentials a child runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// The service's (SetUID/SetGID): the service, its scripts, probes and loggers.
    Service,
    /// The buddy's own: hooks, which are the operator's code.
    Buddy,
}

/// What a child is to the service, which decides its working directory, environment and
/// limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The service itself (`actions/start`): in `WorkingDirectory`, with `Environment`,
    /// `EnvironmentFile` and the limits, joining the service's cgroups.
    Service,
    /// A script acting on it (stop, reload, custom actions, the health probe): as the
    /// service, but outside its cgroup.
    Script,
    /// upkeeper's plumbing (loggers, hooks): in the run directory, with the base environment.
    Plumbing,
}

/// What one child needs beyond the shared context.
#[derive(Clone)]
pub struct Child<'a> {
    /// The program to execute.
    pub program: PathBuf,
    /// Its arguments (after argv\[0\]).
    pub args: Vec<String>,
    /// Whose credentials.
    pub creds: As,
    /// stdin; `/dev/null` when `None`.
    pub stdin: Option<BorrowedFd<'a>>,
    /// stdout; the stdout redirect when `None`.
    pub stdout: Option<BorrowedFd<'a>>,
    /// stderr; the stderr redirect when `None`.
    pub stderr: Option<BorrowedFd<'a>>,
    /// Environment, one more descriptor, argv\[0\].
    pub extra: Extra<'a>,
    /// What it is to the service.
    pub part: Part,
    /// The unified cgroup it starts in, and `cgroup.procs` files it joins (the service only).
    pub cgroup: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
    /// `cgroup.procs` files of v1 hierarchies it joins (the service only).
    pub joins: Vec<BorrowedFd<'a>>,
}

impl<'a> Child<'a> {
    /// `program` with the context's defaults: no arguments, the service's credentials,
    /// `/dev/null` in, the redirect files out.
    pub fn new(program: PathBuf) -> Child<'a> {
        Child {
            program,
            args: Vec::new(),
            creds: As::Service,
            stdin: None,
            stdout: None,
            stderr: None,
            extra: Extra::default(),
            part: Part::Script,
            cgroup: None,
            joins: Vec::new(),
        }
    }
}

/// Why a child did not start: one sentence, and the error number when there is one.
#[derive(Debug)]
pub struct Failed {
    /// One sentence.
    pub message: String,
    /// The OS error, e.g. EPERM from a refused privilege drop.
    pub errno: Option<i32>,
}

impl From<String> for Failed {
    fn from(message: String) -> Failed {
        Failed {
            message,
            errno: None,
        }
    }
}

/// The context every child is started in.
pub struct Launcher {
    dir: RunDir,
    creds: Result<Creds, String>,
    redirects: Option<Redirects>,
    devnull: File,
}

impl Launcher {
    /// The context of `svc` in `dir`.
    pub fn new(dir: &RunDir, svc: &Service) -> std::io::Result<Launcher> {
        Ok(Launcher {
            dir: dir.clone(),
            creds: resolve(svc),
            redirects: None,
            devnull: File::open("/dev/null")?,
        })
    }

    /// The service's credentials, or why they cannot be had.
    pub fn creds(&self) -> Result<&Creds, &str> {
        self.creds.as_ref().map_err(String::as_str)
    }

    /// Settings were re-read (SIGHUP): credentials resolved again, redirects reopened at
    /// next use (they may have been rotated or reconfigured).
    pub fn reconfigure(&mut self, svc: &Service) {
        self.creds = resolve(svc);
        self.redirects = None;
    }

    /// The redirect files are reopened at next use (rotated logs, SIGHUP).
    pub fn reopen_redirects(&mut self) {
        self.redirects = None;
    }

    /// Looks the credentials up again if they failed (the user may have been created since).
    pub fn retry_creds(&mut self, svc: &Service) {
        if self.creds.is_err() {
            self.creds = resolve(svc);
        }
    }

    /// Starts `child` in the context; returns its pid.
    pub fn launch(&mut self, svc: &Service, child: &Child<'_>) -> Result<i32, Failed> {
        if child.creds == As::Service && (child.stdout.is_none() || child.stderr.is_none()) {
            self.open_redirects(svc)?;
        }
        let buddy = Creds::default();
        let creds = match child.creds {
            As::Service => self.creds.as_ref().map_err(Clone::clone)?,
            As::Buddy => &buddy,
        };
        let redirect = |pick: fn(&Redirects) -> &File| {
            self.redirects
                .as_ref()
                .map(|r| pick(r).as_fd())
                .ok_or_else(|| "no redirect files".to_owned())
        };
        let of_service = child.part != Part::Plumbing;
        let cwd = if of_service {
            svc.working_directory.as_path()
        } else {
            self.dir.root()
        };
        let mut extra = child.extra.clone();
        let mut setup = Setup::default();
        if of_service {
            let mut env = svc.environment.clone();
            if let Some(file) = &svc.environment_file {
                env.extend(read_env_file(&file.path, file.optional)?);
            }
            env.retain(|(k, _)| !extra.env.iter().any(|(e, _)| e == k));
            env.append(&mut extra.env);
            extra.env = env;
            check_rlimits(svc)?;
            setup = limits(svc);
        }
        setup.cgroup = child.cgroup;
        setup.joins = child.joins.clone();
        let stdio = Stdio {
            stdin: child.stdin.unwrap_or(self.devnull.as_fd()),
            stdout: match child.stdout {
                Some(fd) => fd,
                None => redirect(|r| &r.stdout)?,
            },
            stderr: match child.stderr {
                Some(fd) => fd,
                None => redirect(|r| &r.stderr)?,
            },
        };
        spawn::spawn(
            &child.program,
            &child.args,
            cwd,
            creds,
            stdio,
            &extra,
            &setup,
        )
        .map_err(|e| Failed {
            message: format!("cannot execute {}: {e}", child.program.display()),
            errno: e.raw_os_error(),
        })
    }

    /// Starts the service from `child` (its start script): directly when the script is the
    /// default `exec PROGRAM ARGS` and the program is found in `PATH`, else (or when that
    /// start fails) through the script. Says which, and why the direct start failed.
    pub fn start_service(
        &mut self,
        svc: &Service,
        child: &Child<'_>,
    ) -> Result<(i32, How), Failed> {
        let mut how = How {
            shell: true,
            exec_error: None,
        };
        if let Some(Direct::Exec(argv)) = read_script(&child.program)
            .as_deref()
            .and_then(direct::plan)
        {
            if let Some(program) = argv.first().and_then(|a| lookup(a, &svc.working_directory)) {
                let mut direct = child.clone();
                direct.program = program;
                direct.args = argv[1..].to_vec();
                direct.extra.argv0 = argv.first().cloned();
                // dash exports the working directory it finds; the program must see it too.
                let pwd = std::fs::canonicalize(&svc.working_directory)
                    .unwrap_or_else(|_| svc.working_directory.clone());
                direct
                    .extra
                    .env
                    .push(("PWD".into(), pwd.display().to_string()));
                match self.launch(svc, &direct) {
                    Ok(pid) => {
                        how.shell = false;
                        return Ok((pid, how));
                    }
                    // The shell's `exec` reports this failure its own way (exit 126 or 127
                    // and a line on stderr): let it, and keep what execve said.
                    Err(Failed { errno: Some(e), .. }) => {
                        how.exec_error = Some(nix::errno::Errno::from_raw(e).to_string())
                    }
                    Err(_) => {}
                }
            }
        }
        Ok((self.launch(svc, child)?, how))
    }

    /// The redirect files (stdout, stderr) once they are open: where a death's tail is read.
    fn redirect_files(&self) -> Option<[&File; 2]> {
        self.redirects.as_ref().map(|r| [&r.stdout, &r.stderr])
    }

    /// The redirect files at their paths now: opened if they are not yet, and opened again
    /// if a path names another file than the one held (the built-in logger rotates by
    /// renaming, so the held file is then `FILE.1`). `None` if they cannot be opened (the
    /// start then fails with the reason). Returns also the files held before, when they were
    /// replaced: what the run wrote before the rotation.
    pub fn output_files(&mut self, svc: &Service) -> (Option<[&File; 2]>, Option<Redirects>) {
        let replaced = self
            .redirects
            .as_ref()
            .is_some_and(|r| self.replaced(svc, r))
            .then(|| self.redirects.take())
            .flatten();
        if self.open_redirects(svc).is_err() {
            return (None, replaced);
        }
        (self.redirect_files(), replaced)
    }

    /// True when a redirect path no longer names the file held for it.
    fn replaced(&self, svc: &Service, held: &Redirects) -> bool {
        use std::os::unix::fs::MetadataExt;
        let paths = redirect_paths(&self.dir, svc);
        [(&paths[0], &held.stdout), (&paths[1], &held.stderr)]
            .iter()
            .any(
                |(path, file)| match (std::fs::metadata(path), file.metadata()) {
                    (Ok(now), Ok(held)) => (now.dev(), now.ino()) != (held.dev(), held.ino()),
                    // Gone: opened (created) again at next use, as a start would.
                    (Err(_), _) => true,
                    (_, Err(_)) => false,
                },
            )
    }

    /// The redirect files, opened at first use.
    fn open_redirects(&mut self, svc: &Service) -> Result<(), String> {
        if self.redirects.is_none() {
            // Opened for the service's user: what it could not write, it cannot redirect to.
            let creds = self.creds.as_ref().map_err(Clone::clone)?;
            let r = open_redirects(&self.dir, svc, creds).map_err(|e| e.to_string())?;
            self.redirects = Some(r);
        }
        Ok(())
    }
}

/// `name` as the shell's `exec` finds it: a path when it holds a slash, else the first
/// executable regular file of that name in `PATH` (an empty entry is the working directory
/// `cwd`). `None`: the shell would not find it either; let it say so.
fn lookup(name: &str, cwd: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').find_map(|entry| {
        let dir = if entry.is_empty() {
            cwd
        } else {
            Path::new(entry)
        };
        let candidate = dir.join(name);
        let meta = std::fs::metadata(&candidate).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// The most an `EnvironmentFile` may hold.
pub const ENV_FILE_MAX: u64 = 64 << 10;

/// `EnvironmentFile` read now: `KEY=VALUE` lines, with `#` comments, blank lines, an
/// optional `export ` and one pair of quotes around the value, as systemd and shells' conf
/// files have them. A line that is none of these is an error naming it.
fn read_env_file(path: &Path, optional: bool) -> Result<Vec<(String, String)>, Failed> {
    let text = match File::open(path) {
        Ok(f) => {
            let mut text = String::new();
            f.take(ENV_FILE_MAX + 1)
                .read_to_string(&mut text)
                .map_err(|e| format!("EnvironmentFile {}: {e}", path.display()))?;
            if text.len() as u64 > ENV_FILE_MAX {
                return Err(format!(
                    "EnvironmentFile {} is larger than {ENV_FILE_MAX} bytes",
                    path.display()
                )
                .into());
            }
            text
        }
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("EnvironmentFile {}: {e}", path.display()).into()),
    };
    parse_env(&text)
        .map_err(|(n, why)| format!("EnvironmentFile {} line {n}: {why}", path.display()).into())
}

/// The pairs of an environment file's text, or the (1-based) line that is wrong and why.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, (usize, &'static str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, "expected KEY=VALUE"));
        };
        let key = key.trim_end();
        let mut chars = key.chars();
        let name_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err((i + 1, "the name must be letters, digits and _"));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(value);
        if unquoted.contains('\0') {
            return Err((i + 1, "the value holds a NUL byte"));
        }
        out.push((key.to_owned(), unquoted.to_owned()));
    }
    Ok(out)
}

/// Refuses, with a sentence naming the key, a resource limit the kernel would refuse in the
/// child (where only an errno would come back): a hard limit raised without privilege, or
/// `LimitNOFILE` above the kernel's `fs.nr_open`.
fn check_rlimits(svc: &Service) -> Result<(), Failed> {
    use upk_core::config::Rlimit;
    for (r, v) in svc.rlimits() {
        if r == Rlimit::Nofile {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            if let Some(max) = nr_open.filter(|&m| v.hard > m) {
                let hard = if v.hard == u64::MAX {
                    "infinity".into()
                } else {
                    v.hard.to_string()
                };
                return Err(format!(
                    "LimitNOFILE: {hard} is above the kernel's fs.nr_open ({max})"
                )
                .into());
            }
        }
        if nix::unistd::geteuid().is_root() {
            continue;
        }
        let resource = limits_resource(r);
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we own. The resource's type differs by libc.
        #[allow(clippy::useless_conversion)]
        let got = unsafe { libc::getrlimit(resource.try_into().unwrap_or_default(), &mut cur) };
        // rlim_t is u64 on the targets upkeeper builds for; the cast is for any other.
        #[allow(clippy::unnecessary_cast)]
        let now = if cur.rlim_max == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            cur.rlim_max as u64
        };
        if got == 0 && v.hard > now {
            return Err(format!(
                "{}: the hard limit cannot be raised above {now} without privilege",
                r.key()
            )
            .into());
        }
    }
    Ok(())
}

/// The `RLIMIT_*` number of a limit.
fn limits_resource(r: upk_core::config::Rlimit) -> i32 {
    use upk_core::config::Rlimit;
    // The constants' type differs across libc targets; every value fits an i32.
    #[allow(clippy::unnecessary_cast)]
    let n = match r {
        Rlimit::Nofile => libc::RLIMIT_NOFILE,
        Rlimit::Nproc => libc::RLIMIT_NPROC,
        Rlimit::Core => libc::RLIMIT_CORE,
        Rlimit::As => libc::RLIMIT_AS,
        Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
        Rlimit::Stack => libc::RLIMIT_STACK,
        Rlimit::Cpu => libc::RLIMIT_CPU,
        Rlimit::Fsize => libc::RLIMIT_FSIZE,
    } as i32;
    n
}

/// The process attributes of `svc` as a child sets them on itself.
fn limits(svc: &Service) -> Setup<'static> {
    use upk_core::config::IoClass;
    let lim = |v: u64| {
        if v == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            v as libc::rlim_t
        }
    };
    let ioprio = match (svc.io_scheduling_class, svc.io_scheduling_priority) {
        (None, None) => None,
        (class, level) => {
            let class = match class.unwrap_or(IoClass::BestEffort) {
                IoClass::Realtime => 1,
                IoClass::BestEffort => 2,
                IoClass::Idle => 3,
            };
            Some(class << 13 | i32::from(level.unwrap_or(4)))
        }
    };
    Setup {
        cgroup: None,
        joins: Vec::new(),
        rlimits: svc
            .rlimits()
            .into_iter()
            .map(|(r, v)| {
                let l = libc::rlimit {
                    rlim_cur: lim(v.soft),
                    rlim_max: lim(v.hard),
                };
                (limits_resource(r), l)
            })
            .collect(),
        nice: svc.nice,
        ioprio,
        oom_score_adj: svc.oom_score_adjust,
        umask: svc.umask,
        no_new_privs: svc.no_new_privileges,
    }
}

/// The signal a stop or reload script only sends to `$1` (`exec kill [-SIG] $1`), read from
/// the script now; `None`: the script must run.
pub fn signal_plan(script: &Path) -> Option<i32> {
    match direct::plan(&read_script(script)?)? {
        Direct::Signal(sig) => Some(sig),
        Direct::Exec(_) => None,
    }
}

/// The text of a script, when it is short enough for the fast path and UTF-8.
fn read_script(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path)
        .ok()?
        .take(SCRIPT_MAX + 1)
        .read_to_string(&mut text)
        .ok()?;
    (text.len() as u64 <= SCRIPT_MAX).then_some(text)
}

fn resolve(svc: &Service) -> Result<Creds, String> {
    Creds::resolve(svc, nix::unistd::geteuid(), nix::unistd::getegid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use upk_core::config::{parse_services, ServiceLayer};

    fn service(dir: &Path) -> Service {
        let file = dir.join("web.conf");
        let mut s = parse_services(
            r#"{ "web": { ExecStart: "sleep 1000" } }"#,
            &file,
            &ServiceLayer::default(),
        )
        .expect("a service");
        s.remove(0)
    }

    /// Starts `script` as the service's start script; the process's exe the moment the
    /// spawn returns (posix_spawn returns after the child's exec).
    fn exe_at_once(script: &str) -> PathBuf {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = RunDir::new(tmp.path());
        std::fs::create_dir_all(dir.action("start").parent().expect("actions/")).expect("mkdir");
        std::fs::write(dir.action("start"), script).expect("write");
        std::fs::set_permissions(dir.action("start"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let svc = service(tmp.path());
        let mut launcher = Launcher::new(&dir, &svc).expect("launcher");
        let null = File::options().write(true).open("/dev/null").expect("null");
        let mut child = Child::new(dir.action("start"));
        child.stdout = Some(null.as_fd());
        child.stderr = Some(null.as_fd());
        let (pid, _) = launcher.start_service(&svc, &child).expect("started");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        exe
    }

    #[test]
    fn the_default_start_script_is_the_program_from_the_first_instant() {
        let sleep = exe_at_once("#!/bin/sh\n# web: the start script\nexec sleep 1000\n");
        assert_eq!(
            sleep.file_name().and_then(|n| n.to_str()),
            Some("sleep"),
            "{sleep:?}"
        );
        // Through the script, the first instant is the shell's (it has not exec'd yet, or it
        // has: either way the fast path above did not depend on it).
        let shell = exe_at_once("#!/bin/sh\nexec sleep 1000 # a comment keeps the shell\n");
        let name = shell.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            ["dash", "bash", "sh", "busybox", "sleep"].contains(&name),
            "{shell:?}"
        );
    }

    #[test]
    fn environment_files_read_as_systemd_and_shells_write_them() {
        let text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted # kept\"\nD='x'\nE=\n";
        let pairs = parse_env(text).expect("parses");
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "quoted # kept"),
            ("D", "x"),
            ("E", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, want);
        assert_eq!(
            parse_env("ok=1\nnot a pair\n"),
            Err((2, "expected KEY=VALUE"))
        );
        assert_eq!(
            parse_env("1X=2\n"),
            Err((1, "the name must be letters, digits and _"))
        );
    }

    #[test]
    fn a_script_past_the_limit_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small");
        std::fs::write(&small, "#!/bin/sh\nexec kill -HUP $1\n").expect("write");
        assert_eq!(signal_plan(&small), Some(libc::SIGHUP));
        let big = dir.path().join("big");
        let mut text = "#!/bin/sh\nexec kill $1\n".to_owned();
        text.push_str(&"#\n".repeat(SCRIPT_MAX as usize));
        std::fs::write(&big, text).expect("write");
        assert_eq!(signal_plan(&big), None);
        assert_eq!(signal_plan(&dir.path().join("missing")), None);
    }
}
