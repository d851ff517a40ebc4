//! `upkctl openrc start|stop`: the Rust half of the OpenRC supervisor glue.
//!
//! The shell half (`openrc/upkeeper.sh`, installed as `PREFIX/lib/upkeeper/openrc.sh`) only
//! splits the command line and passes the OpenRC variables on; everything with a rule in it is
//! here. An OpenRC service `SVC` becomes the upkeeper service `openrc::SVC` (package `openrc`,
//! so it never collides with an upkeeper.d service), defined in `SvcConfigPath/openrc-SVC.conf`.
//! This module owns that file: [`service_file`] turns the variables into its text (a pure
//! function: validation, quoting, the mapping of respawn, stop and health-check settings),
//! and [`start`] writes it atomically and only when it changed, waits until the controller
//! has taken it into use, starts the service through the controller (relayed and audited like
//! any `upkctl start`) and waits until it runs, then writes OpenRC's daemon record, whose
//! pidfile is the buddy's `buddy.pid`, so OpenRC sees `crashed` when the buddy dies.
//!
//! [`stop`] must work at shutdown, after init has killed the controller: it goes through the
//! controller when it answers, and otherwise to the service's buddy directly
//! ([`libupkeeper::buddy`]), and when no buddy is left either it stops a service process that
//! is still running itself. The file stays after a stop (the service's history and a fast next
//! start); `InitialState: "stopped"` keeps it stopped whenever a controller reads it anew.

use crate::cli::{OpenrcStart, Targets};
use crate::control::{self, Verb};
use crate::exit::{self, Failure, Result};
use crate::Ctx;
use libupkeeper::buddy::{BuddyClient, BuddyError};
use libupkeeper::{SignalSpec, StateName};
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use upk_core::config::{InitialState, Service};
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::{Proc, Status};

/// How often the controller's list, a run directory or a status file is read again while
/// waiting for it.
const RECHECK: Duration = Duration::from_millis(100);

/// supervise-daemon's `respawn_max` when the script sets none.
const DEFAULT_RESPAWN_MAX: i64 = 10;

/// Seconds from the stop signal to SIGKILL when the script sets no `retry` (OpenRC's default
/// schedule waits 5 s after the signal).
const DEFAULT_STOP_WAIT: f64 = 5.0;

/// The upkeeper id of the OpenRC service `svc`: `openrc::svc`, or one sentence why not.
pub fn service_id(svc: &str) -> Result<String> {
    let id = format!("openrc::{svc}");
    upk_core::config::ServiceId::parse(&id).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("the OpenRC service name {svc:?} cannot be an upkeeper service name: {e}"),
        )
    })?;
    Ok(id)
}

/// What [`service_file`] needs besides the options: the environment to pass on and where
/// OpenRC lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Surroundings {
    /// The variables to export to the service, sorted by name.
    pub env: Vec<(String, String)>,
    /// `RC_SERVICE`: the script's path, for the description.
    pub rc_service: Option<String>,
    /// `RC_LIBEXECDIR` (`/lib/rc`): where `mark_service_*` are, for the Notify hook.
    pub rc_libexecdir: Option<String>,
    /// `RC_SVCDIR` (`/run/openrc`): OpenRC's state, for the Notify hook.
    pub rc_svcdir: Option<String>,
}

impl Surroundings {
    /// From upkctl's own environment, which is openrc-run's exported one.
    pub fn from_env(keep_identity: bool) -> Surroundings {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Surroundings {
            env: captured_env(std::env::vars_os(), keep_identity),
            rc_service: get("RC_SERVICE"),
            rc_libexecdir: get("RC_LIBEXECDIR"),
            rc_svcdir: get("RC_SVCDIR"),
        }
    }
}

/// The exported environment of openrc-run that the service gets, as OpenRC's s6 backend
/// passes it on: without OpenRC's own variables (`RC_*`, `EINFO_*`, `IN_*`, `SVCNAME`), the
/// terminal's (`TERM`, `COLUMNS`, `LINES`), the shell's (`PWD`, `OLDPWD`, `SHLVL`, `_`) and
/// upkeeper's settings (`UPKEEPER_*`); with OpenRC's helper directories taken out of `PATH`.
/// Without `keep_identity` (the service runs as another user), `HOME`, `USER` and `LOGNAME`
/// are left to the buddy, which sets them for that user. A variable whose name is not a shell
/// name or whose value is not UTF-8 cannot be written into the start script and is left out.
pub fn captured_env(
    vars: impl Iterator<Item = (OsString, OsString)>,
    keep_identity: bool,
) -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = vars
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let libexec = vars
        .iter()
        .find(|(k, _)| k == "RC_LIBEXECDIR")
        .map_or("/lib/rc", |(_, v)| v.as_str())
        .to_owned();
    let mut env: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| shell_name(k) && !dropped(k, keep_identity))
        .map(|(k, v)| {
            if k == "PATH" {
                let helpers = [format!("{libexec}/bin"), format!("{libexec}/sbin")];
                let kept: Vec<&str> = v
                    .split(':')
                    .filter(|d| !helpers.iter().any(|h| h == d))
                    .collect();
                (k, kept.join(":"))
            } else {
                (k, v)
            }
        })
        .collect();
    env.sort();
    env
}

fn dropped(name: &str, keep_identity: bool) -> bool {
    const PREFIXES: [&str; 4] = ["RC_", "EINFO_", "IN_", "UPKEEPER_"];
    const NAMES: [&str; 8] = [
        "SVCNAME", "TERM", "COLUMNS", "LINES", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || NAMES.contains(&name)
        || (!keep_identity && ["HOME", "USER", "LOGNAME"].contains(&name))
}

fn shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` as one shell word. Single quotes make everything literal; `%(` is written `%''(` so
/// that the script never contains an upkeeper placeholder (`%(EXEC_START)` would otherwise be
/// substituted inside an argument).
pub fn quote(text: &str) -> String {
    let inner = text.replace('\'', r"'\''").replace("%(", "%''(");
    format!("'{inner}'")
}

/// An OpenRC duration: seconds (`5`, `1.5`) or with a unit (`500ms`, `2s`, `1m`, `1h`), as
/// supervise-daemon reads `respawn_delay` and `respawn_period`.
pub fn parse_duration(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match number.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v * scale),
        _ => Err(format!(
            "{text:?} is not a duration (seconds, or a number with ms, s, m or h)"
        )),
    }
}

/// How a stop goes: the signal the stop script sends, and upkeeper's `KillTimeout` (SIGTERM to
/// the process group at half of it, SIGKILL at the end; negative: neither).
#[derive(Debug, Clone, PartialEq)]
pub struct StopPlan {
    /// The signal's name without `SIG` (`TERM`).
    pub signal: String,
    /// Seconds.
    pub kill_timeout: f64,
}

/// Maps `retry` and `stopsig` onto a [`StopPlan`]. OpenRC's schedule is `TIMEOUT` (the stop
/// signal, then wait) or `SIG/TIMEOUT/SIG/TIMEOUT...` with an optional `forever`. The first
/// signal becomes the stop signal; `KillTimeout` is the time the schedule waits before it
/// sends KILL, or in all when it never does (upkeeper still ends with SIGKILL then, where OpenRC
/// would give up and leave the process); `forever` means never SIGKILL. Signals in between are
/// not sent: upkeeper sends SIGTERM to the group at half the time instead.
pub fn stop_plan(
    retry: Option<&str>,
    stopsig: Option<&str>,
) -> std::result::Result<StopPlan, String> {
    let signal_name = |text: &str, what: &str| -> std::result::Result<String, String> {
        let text = text.trim().trim_start_matches('-');
        let spec = match text.parse::<i32>() {
            Ok(n) => SignalSpec::Number(n),
            Err(_) => SignalSpec::Name(text.to_owned()),
        };
        let sig = spec.resolve().map_err(|e| format!("{what}: {e}"))?;
        Ok(sig.as_str().trim_start_matches("SIG").to_owned())
    };
    let default_signal = match stopsig {
        Some(s) => signal_name(s, "stopsig")?,
        None => "TERM".to_owned(),
    };
    let Some(retry) = retry else {
        return Ok(StopPlan {
            signal: default_signal,
            kill_timeout: DEFAULT_STOP_WAIT,
        });
    };
    let bad = |why: String| format!("retry {retry:?}: {why}");
    if !retry.contains('/') {
        let secs = retry
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0 && v.is_finite())
            .ok_or_else(|| bad("a schedule without / must be a number of seconds".into()))?;
        return Ok(StopPlan {
            signal: default_signal,
            kill_timeout: secs,
        });
    }
    let mut first_signal = None;
    let mut waited = 0.0;
    let mut killed = false;
    let mut forever = false;
    for item in retry.split('/') {
        let item = item.trim();
        if item.eq_ignore_ascii_case("forever") {
            forever = !killed;
        } else if let Ok(secs) = item.parse::<f64>() {
            if !(secs >= 0.0 && secs.is_finite()) {
                return Err(bad(format!("{item:?} is not a number of seconds")));
            }
            if !killed {
                waited += secs;
            }
        } else {
            let name = signal_name(item, &format!("retry {retry:?}"))?;
            killed |= name == "KILL" && first_signal.is_some();
            first_signal.get_or_insert(name);
        }
    }
    Ok(StopPlan {
        signal: first_signal.unwrap_or(default_signal),
        kill_timeout: if forever { -1.0 } else { waited },
    })
}

/// One service file for `opts`: `// comment` lines, then a JSON object with the one service
/// `openrc::SVC`. Refuses, in one sentence, what cannot be expressed.
pub fn service_file(opts: &OpenrcStart, around: &Surroundings) -> Result<String> {
    let id = service_id(&opts.svc)?;
    let usage = |m: String| Failure::new(exit::USAGE, format!("{}: {m}", opts.svc));
    let set = |o: &Option<String>| o.clone().filter(|v| !v.is_empty());
    if opts.argv.is_empty() || opts.argv[0].is_empty() {
        return Err(usage("command is not set".into()));
    }
    let mut entry = Map::new();
    let what = match &around.rc_service {
        Some(path) => format!("OpenRC service {} ({path})", opts.svc),
        None => format!("OpenRC service {}", opts.svc),
    };
    entry.insert("ShortDescription".into(), json!(what));
    entry.insert("InitialState".into(), json!("stopped"));
    entry.insert("UnconfigureOnFileRemoval".into(), json!(true));
    // OpenRC decides whether it runs: a service OpenRC stopped through its buddy while the
    // controller was down stays stopped when the controller comes back, whatever the store
    // remembered.
    entry.insert("PreferBuddyStateForStopped".into(), json!(true));

    let mut script = format!(
        "#!/bin/sh\n# {}: started by upkeeper for OpenRC (upkctl openrc start)\n",
        opts.svc
    );
    for (k, v) in &around.env {
        script.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(dir) = set(&opts.directory) {
        if !dir.starts_with('/') {
            return Err(usage(format!("directory {dir:?} is not an absolute path")));
        }
        script.push_str(&format!("cd {} || exit 1\n", quote(&dir)));
    }
    if let Some(mask) = set(&opts.umask) {
        let octal = mask.len() <= 4 && mask.chars().all(|c| ('0'..='7').contains(&c));
        if !octal {
            return Err(usage(format!("umask {mask:?} is not an octal mask")));
        }
        script.push_str(&format!("umask {mask}\n"));
    }
    let argv: Vec<String> = opts.argv.iter().map(|a| quote(a)).collect();
    script.push_str(&format!("exec {}\n", argv.join(" ")));
    entry.insert("StartScript".into(), json!(script));

    let plan =
        stop_plan(set(&opts.retry).as_deref(), set(&opts.stopsig).as_deref()).map_err(usage)?;
    entry.insert("ExecStop".into(), json!(format!("kill -s {}", plan.signal)));
    entry.insert("KillTimeout".into(), json!(plan.kill_timeout));

    let respawn_max = match set(&opts.respawn_max) {
        None => DEFAULT_RESPAWN_MAX,
        Some(n) => n
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| usage(format!("respawn_max {n:?} is not a whole number >= 0")))?,
    };
    // supervise-daemon gives up when a death would be respawn number respawn_max + 1; upkeeper
    // counts the deaths themselves.
    let failures = if respawn_max == 0 {
        -1
    } else {
        respawn_max + 1
    };
    entry.insert("MaxConsecutiveFailures".into(), json!(failures));
    if let Some(d) = set(&opts.respawn_delay) {
        let secs = parse_duration(&d).map_err(|e| usage(format!("respawn_delay: {e}")))?;
        entry.insert("UserRateLimit".into(), json!(secs));
    }
    if let Some(p) = set(&opts.respawn_period) {
        let secs = parse_duration(&p).map_err(|e| usage(format!("respawn_period: {e}")))?;
        if secs <= 0.0 {
            return Err(usage(format!("respawn_period {p:?} must be more than 0")));
        }
        entry.insert("UserRestartWindow".into(), json!(secs));
    }

    if let Some(user) = set(&opts.user) {
        let (name, group) = match user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned()).filter(|g| !g.is_empty())),
            None => (user.clone(), None),
        };
        if name.is_empty() {
            return Err(usage(format!("command_user {user:?} names no user")));
        }
        entry.insert("SetUID".into(), json!(name));
        if let Some(g) = group {
            entry.insert("SetGID".into(), json!(g));
        }
    }
    for (key, var, value) in [
        ("RedirectStdout", "output_log", &opts.output_log),
        ("RedirectStderr", "error_log", &opts.error_log),
    ] {
        if let Some(path) = set(value) {
            if !path.starts_with('/') {
                return Err(usage(format!("{var} {path:?} is not an absolute path")));
            }
            entry.insert(key.into(), json!(path));
        }
    }
    let mut hooks = notify(&opts.svc, around);
    if let Some(timer) = set(&opts.healthcheck_timer) {
        let health = health_check(opts, around, &timer).map_err(usage)?;
        for (k, v) in health.checks {
            entry.insert(k.into(), v);
        }
        if let Some(all) = hooks.as_object_mut() {
            all.insert("openrc-unhealthy".into(), health.hook);
        }
    }
    match set(&opts.notify).as_deref() {
        None => {}
        Some("socket:ready") => {
            entry.insert("Readiness".into(), json!("notify"));
        }
        Some(n)
            if n.strip_prefix("fd:")
                .is_some_and(|d| d.parse::<u32>().is_ok()) =>
        {
            entry.insert("Readiness".into(), json!(n));
        }
        Some(n) => return Err(usage(format!("notify {n:?} is not fd:N or socket:ready"))),
    }
    entry.insert("Notify".into(), hooks);

    let file = json!({ id: Value::Object(entry) });
    let body = serde_json::to_string_pretty(&file).map_err(std::io::Error::from)?;
    Ok(format!(
        "// Written by `upkctl openrc start` for the OpenRC service {}; rewritten when it starts.\n\
         // Edit the service script or its conf.d file, not this file.\n{body}\n",
        opts.svc
    ))
}

/// The `Notify` hook: when the buddy gives up, OpenRC is told the service is stopped and
/// failed, as supervise-daemon does. `RC_SVCNAME` and `RC_OPENRC_PID` must not be set for the
/// markers, or they would signal an openrc-run that is long gone (or a recycled pid).
pub fn notify(svc: &str, around: &Surroundings) -> Value {
    let libexec = around.rc_libexecdir.as_deref().unwrap_or("/lib/rc");
    let mut run = String::from("#!/bin/sh\nunset RC_SVCNAME RC_OPENRC_PID\n");
    if let Some(dir) = &around.rc_svcdir {
        run.push_str(&format!("RC_SVCDIR={}; export RC_SVCDIR\n", quote(dir)));
    }
    run.push_str(&format!(
        "{} {svc}\nexec {} {svc}\n",
        quote(&format!("{libexec}/sbin/mark_service_stopped")),
        quote(&format!("{libexec}/sbin/mark_service_failed")),
    ));
    json!({ "openrc": { "Run": run, "On": ["gave_up"] } })
}

/// The keys of an OpenRC health check, and the hook that runs the script's `unhealthy`.
struct HealthMapping {
    checks: Vec<(&'static str, Value)>,
    hook: Value,
}

/// `healthcheck_timer` and `healthcheck_delay` as supervise-daemon uses them: every `timer`
/// seconds the script's `healthcheck` runs (`RC_SERVICE healthcheck`, here as the buddy's
/// probe); one failure runs the script's `unhealthy` and restarts the service.
fn health_check(
    opts: &OpenrcStart,
    around: &Surroundings,
    timer: &str,
) -> std::result::Result<HealthMapping, String> {
    let interval = parse_duration(timer).map_err(|e| format!("healthcheck_timer: {e}"))?;
    if interval <= 0.0 {
        return Err(format!("healthcheck_timer {timer:?} must be more than 0"));
    }
    let script = around
        .rc_service
        .as_deref()
        .ok_or("healthcheck_timer needs RC_SERVICE (run it from openrc-run)")?;
    let mut checks = vec![
        (
            "HealthCheck",
            json!(format!("#!/bin/sh\nexec {} healthcheck\n", quote(script))),
        ),
        ("HealthInterval", json!(interval)),
        ("HealthRetries", json!(1)),
        ("HealthAction", json!("restart")),
    ];
    if let Some(delay) = opts.healthcheck_delay.as_deref().filter(|d| !d.is_empty()) {
        let secs = parse_duration(delay).map_err(|e| format!("healthcheck_delay: {e}"))?;
        checks.push(("HealthStartPeriod", json!(secs)));
    }
    let hook = json!({
        "Run": format!("#!/bin/sh\nunset RC_SVCNAME RC_OPENRC_PID\nexec {} unhealthy\n", quote(script)),
        "On": ["unhealthy"],
    });
    Ok(HealthMapping { checks, hook })
}

/// `upkctl openrc start SVC [options] -- ARGV...`.
pub fn start(ctx: &Ctx, opts: &OpenrcStart, out: &mut dyn Write) -> Result<i32> {
    let deadline = Instant::now() + ctx.timeout;
    let id = service_id(&opts.svc)?;
    let keep_identity = opts.user.as_deref().is_none_or(str::is_empty);
    let around = Surroundings::from_env(keep_identity);
    let text = service_file(opts, &around)?;
    let ctl = ctx.controller()?;
    let path = ctl
        .svc_config_path
        .join(format!("openrc-{}.conf", opts.svc));
    // The controller's own checker, layered over its ServiceDefaults: what passes here is what
    // it will load.
    let wanted = upk_core::config::parse_services(&text, &path, &ctl.service_defaults)
        .map_err(|e| {
            Failure::new(
                exit::INVALID_CONFIG,
                format!("{}: the service file would be invalid:\n{e}", opts.svc),
            )
        })?
        .pop()
        .ok_or_else(|| Failure::new(exit::TEMPORARY, "the service file defines no service"))?;
    if let Some(user) = opts.user.as_deref().filter(|u| !u.is_empty()) {
        check_user(&opts.svc, user)?;
    }
    let mut client = ctx.connect()?;
    write_if_changed(&path, &text)?;
    let run_dir = RunDir::new(ctl.svc_run_path.join(&id));
    wait_taken(
        &mut client,
        &id,
        &path,
        &wanted,
        &run_dir,
        deadline,
        ctx.timeout,
    )?;
    drop(client);

    let left = deadline.saturating_duration_since(Instant::now());
    let rest = Ctx {
        timeout: left.max(Duration::from_millis(100)),
        ..ctx.clone()
    };
    let mut said = Vec::new();
    let code = control::run(&rest, Verb::Start, &one(&id), &mut said)?;
    if code != exit::OK {
        return Ok(code);
    }
    daemon_record(&opts.svc, &ctl.upk_buddy_path, &run_dir.pidfile())?;
    out.write_all(&said)?;
    Ok(exit::OK)
}

fn one(id: &str) -> Targets {
    Targets {
        services: vec![id.to_owned()],
        all: false,
        wait: true,
    }
}

/// Refuses a user or group that does not exist now, rather than a start that fails later.
fn check_user(svc: &str, spec: &str) -> Result<()> {
    let (user, group) = spec.split_once(':').unwrap_or((spec, ""));
    let numeric = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let missing = |what: &str, name: &str| {
        Failure::new(
            exit::NOT_FOUND,
            format!("{svc}: command_user {spec:?}: there is no {what} {name:?}"),
        )
    };
    if !numeric(user) && !matches!(nix::unistd::User::from_name(user), Ok(Some(_))) {
        return Err(missing("user", user));
    }
    if !group.is_empty()
        && !numeric(group)
        && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_)))
    {
        return Err(missing("group", group));
    }
    Ok(())
}

/// Writes the service file under a hidden temporary name and renames it, only when its
/// content differs: an unchanged file is not touched, so the controller has nothing to do.
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let fail = |e: std::io::Error| {
        Failure::new(
            exit::TEMPORARY,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    upk_core::fsutil::write_atomic(path, text.as_bytes(), 0o644, true).map_err(fail)
}

/// Waits until the controller lists `id` from `file` and its run directory holds `wanted`:
/// only then does a start run the new definition.
#[allow(clippy::too_many_arguments)]
fn wait_taken(
    client: &mut libupkeeper::Client,
    id: &str,
    file: &Path,
    wanted: &Service,
    run_dir: &RunDir,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        let listed = client.list()?.into_iter().find(|s| s.service == id);
        let why = match listed {
            None => "the controller does not list it yet".to_owned(),
            Some(s) if Path::new(&s.file) != file => {
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "{id} is already defined in {}, not in {}",
                        s.file,
                        file.display()
                    ),
                ))
            }
            Some(_) => match Settings::read(&run_dir.settings()) {
                Ok(settings) if same(&settings.service, wanted) => return Ok(()),
                Ok(_) => "its run directory still holds the previous definition".to_owned(),
                Err(e) => e,
            },
        };
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::TIMED_OUT,
                format!(
                    "the controller did not take {} into use within {:.1}s ({why}; see upkeeper's log)",
                    file.display(),
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(RECHECK.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The same definition, whatever the controller's store decided about the initial state and
/// the UUID.
fn same(rendered: &Service, wanted: &Service) -> bool {
    let mut a = rendered.clone();
    (a.initial_state, a.uuid) = (InitialState::Stopped, None);
    let mut b = wanted.clone();
    (b.initial_state, b.uuid) = (InitialState::Stopped, None);
    a == b
}

/// Writes `$RC_SVCDIR/daemons/$RC_SVCNAME/001` as librc does, naming the buddy and its pidfile:
/// `rc-status` and `_status` then say `crashed` while the pid in it is dead. Only when upkctl
/// runs for OpenRC (RC_SVCDIR and RC_SVCNAME set, and naming this service).
fn daemon_record(svc: &str, buddy: &Path, pidfile: &Path) -> Result<()> {
    let (Some(svcdir), Some(name)) = (
        std::env::var_os("RC_SVCDIR"),
        std::env::var("RC_SVCNAME").ok(),
    ) else {
        return Ok(());
    };
    if name != svc {
        return Ok(());
    }
    let dir = PathBuf::from(svcdir).join("daemons").join(svc);
    let text = format!(
        "exec={b}\nargv_0={b}\npidfile={}\n",
        pidfile.display(),
        b = buddy.display()
    );
    let fail = |e: std::io::Error| {
        Failure::new(
            exit::TEMPORARY,
            format!(
                "cannot write OpenRC's daemon record in {}: {e}",
                dir.display()
            ),
        )
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    upk_core::fsutil::write_atomic(&dir.join("001"), text.as_bytes(), 0o644, false).map_err(fail)
}

/// `upkctl openrc stop SVC`.
pub fn stop(ctx: &Ctx, svc: &str, out: &mut dyn Write) -> Result<i32> {
    let id = service_id(svc)?;
    let ctl = ctx.controller()?;
    let run_dir = RunDir::new(ctl.svc_run_path.join(&id));
    // A stop lasts up to KillTimeout: wait for that and a little more, whatever --timeout says.
    let kill_timeout = Settings::read(&run_dir.settings())
        .map(|s| s.service.kill_timeout)
        .unwrap_or(0.0);
    let timeout = ctx
        .timeout
        .max(Duration::from_secs_f64(kill_timeout.max(0.0) + 5.0));
    let ctx = Ctx {
        timeout,
        ..ctx.clone()
    };
    // A controller that is down or wedged (init kills it before the shutdown runlevel) costs at
    // most this much before the buddy is asked directly.
    let probe = Ctx {
        timeout: timeout.min(Duration::from_secs(2)),
        ..ctx.clone()
    };
    let known = probe.connect().map(|mut c| c.status(&[id.as_str()]));
    match known {
        Ok(Ok(_)) => {
            let mut said = Vec::new();
            let code = control::run(&ctx, Verb::Stop, &one(&id), &mut said)?;
            out.write_all(&said)?;
            Ok(code)
        }
        // The controller is down or wedged, or the service is not its own (never handed over,
        // or unconfigured, while its buddy may still run): ask the buddy.
        Ok(Err(_)) | Err(_) => stop_direct(&id, &run_dir, timeout),
    }
}

/// Stops the service without the controller: through its buddy, or, when no buddy is left,
/// by signalling the service process the status file names.
fn stop_direct(id: &str, run_dir: &RunDir, timeout: Duration) -> Result<i32> {
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
    use nix::sys::signal::{killpg, Signal};
    let (Some(pid), Some(start)) = (st.pid, st.pid_start) else {
        return Ok(exit::OK);
    };
    let proc = Proc { pid, start };
    if !proc.alive() {
        return Ok(exit::OK);
    }
    let group = nix::unistd::Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    while proc.alive() {
        if Instant::now() >= deadline {
            let _ = killpg(group, Signal::SIGKILL);
            crate::warn(&format!(
                "{id}: no buddy runs; its process {pid} did not end on SIGTERM and was killed"
            ));
            return Ok(exit::OK);
        }
        std::thread::sleep(RECHECK);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(argv: &[&str]) -> OpenrcStart {
        OpenrcStart {
            svc: "demo".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..OpenrcStart::default()
        }
    }

    fn parsed(text: &str) -> Service {
        upk_core::config::parse_services(
            text,
            Path::new("/x/openrc-demo.conf"),
            &upk_core::config::ServiceLayer::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .pop()
        .expect("one service")
    }

    #[test]
    fn healthcheck_and_notify_map_onto_health_and_readiness() {
        let mut o = opts(&["/bin/sleep", "1000"]);
        o.healthcheck_timer = Some("5".into());
        o.healthcheck_delay = Some("2s".into());
        o.notify = Some("fd:4".into());
        let around = Surroundings {
            rc_service: Some("/etc/init.d/demo".into()),
            ..Surroundings::default()
        };
        let svc = parsed(&service_file(&o, &around).expect("file"));
        assert_eq!(
            svc.health_check.as_deref(),
            Some("#!/bin/sh\nexec '/etc/init.d/demo' healthcheck\n")
        );
        assert_eq!((svc.health_interval, svc.health_retries), (5.0, 1));
        assert_eq!(svc.health_start_period, 2.0);
        assert_eq!(svc.readiness, upk_core::config::Readiness::Fd(4));
        let hook = svc
            .notify
            .iter()
            .find(|h| h.name == "openrc-unhealthy")
            .expect("the unhealthy hook");
        assert_eq!(hook.on, [upk_core::config::HookEvent::Unhealthy]);
        assert!(hook
            .run
            .as_deref()
            .is_some_and(|r| r.ends_with("exec '/etc/init.d/demo' unhealthy\n")));
        o.notify = Some("socket:ready".into());
        let svc = parsed(&service_file(&o, &around).expect("file"));
        assert_eq!(svc.readiness, upk_core::config::Readiness::Notify);
        o.notify = Some("pipe".into());
        assert!(service_file(&o, &around).is_err());
        o.notify = None;
        assert!(
            service_file(&o, &Surroundings::default()).is_err(),
            "a health check needs the script's path"
        );
    }

    #[test]
    fn quoting_keeps_arguments_whole_and_hides_placeholders() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("%(EXEC_START)"), "'%''(EXEC_START)'");
        assert!(!quote("%'(").contains("%("));
        // The shell reads them back as they were.
        for arg in [
            "a b",
            "it's",
            "%(EXEC_START)",
            "%'(",
            "$HOME `x` \\ \"",
            "line\nbreak",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(arg)))
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), arg);
        }
    }

    #[test]
    fn the_file_passes_the_checker_and_maps_the_variables() {
        let mut o = opts(&["/bin/sleep", "1000", "%(EXEC_STOP)"]);
        o.user = Some("nobody:nogroup".into());
        o.directory = Some("/tmp".into());
        o.umask = Some("027".into());
        o.output_log = Some("/var/log/demo.out".into());
        o.respawn_delay = Some("500ms".into());
        o.respawn_max = Some("3".into());
        o.respawn_period = Some("1m".into());
        o.retry = Some("HUP/10/KILL/5".into());
        let around = Surroundings {
            env: vec![("FOO".into(), "a 'b' %(c)".into())],
            ..Surroundings::default()
        };
        let s = parsed(&service_file(&o, &around).expect("file"));
        assert_eq!(s.id.to_string(), "openrc::demo");
        assert_eq!(s.initial_state, InitialState::Stopped);
        assert!(s.unconfigure_on_file_removal && s.prefer_buddy_state_for_stopped);
        assert_eq!(
            s.start_script,
            "#!/bin/sh\n# demo: started by upkeeper for OpenRC (upkctl openrc start)\n\
             export FOO='a '\\''b'\\'' %''(c)'\ncd '/tmp' || exit 1\numask 027\n\
             exec '/bin/sleep' '1000' '%''(EXEC_STOP)'\n"
        );
        assert_eq!(s.exec_stop.as_deref(), Some("kill -s HUP"));
        assert_eq!(s.kill_timeout, 10.0);
        assert_eq!(s.max_consecutive_failures, 4);
        assert_eq!(s.user_rate_limit, Some(0.5));
        assert_eq!(s.user_restart_window, Some(60.0));
        assert_eq!(s.redirect_stdout, Some(PathBuf::from("/var/log/demo.out")));
        assert_eq!(s.redirect_stderr, None);
        assert_eq!(s.notify.len(), 1);
        assert_eq!(s.notify[0].name, "openrc");
        use upk_core::config::IdSpec;
        assert_eq!(s.set_uid, IdSpec::Name("nobody".into()));
        assert_eq!(s.set_gid, IdSpec::Name("nogroup".into()));
    }

    #[test]
    fn defaults_follow_supervise_daemon() {
        let s = parsed(&service_file(&opts(&["sleep"]), &Surroundings::default()).expect("file"));
        assert_eq!(s.max_consecutive_failures, DEFAULT_RESPAWN_MAX + 1);
        assert_eq!(s.kill_timeout, DEFAULT_STOP_WAIT);
        assert_eq!(s.exec_stop.as_deref(), Some("kill -s TERM"));
        let mut unlimited = opts(&["sleep"]);
        unlimited.respawn_max = Some("0".into());
        let s = parsed(&service_file(&unlimited, &Surroundings::default()).expect("file"));
        assert_eq!(s.max_consecutive_failures, -1);
    }

    #[test]
    fn bad_variables_get_one_sentence() {
        type Edit = fn(&mut OpenrcStart);
        let cases: [(Edit, &str); 6] = [
            (|o| o.argv.clear(), "command is not set"),
            (|o| o.directory = Some("rel".into()), "not an absolute path"),
            (|o| o.umask = Some("9".into()), "not an octal mask"),
            (|o| o.respawn_delay = Some("soon".into()), "not a duration"),
            (
                |o| o.retry = Some("TERM/x/BOGUS".into()),
                "not a signal name",
            ),
            (|o| o.output_log = Some("out.log".into()), "output_log"),
        ];
        for (edit, want) in cases {
            let mut o = opts(&["sleep"]);
            edit(&mut o);
            let e = service_file(&o, &Surroundings::default()).expect_err(want);
            assert!(
                e.message.contains(want) && !e.message.contains('\n'),
                "{}",
                e.message
            );
        }
        let e = service_id("a b").expect_err("space");
        assert!(
            e.message.contains("cannot be an upkeeper service name"),
            "{}",
            e.message
        );
    }

    #[test]
    fn stop_schedules_map_onto_kill_timeout() {
        let plan = |r: Option<&str>, s: Option<&str>| stop_plan(r, s).expect("plan");
        assert_eq!(
            plan(None, None),
            StopPlan {
                signal: "TERM".into(),
                kill_timeout: 5.0
            }
        );
        assert_eq!(
            plan(Some("30"), Some("INT")),
            StopPlan {
                signal: "INT".into(),
                kill_timeout: 30.0
            }
        );
        assert_eq!(
            plan(Some("SIGQUIT/10/TERM/5/KILL/5"), None).kill_timeout,
            15.0
        );
        assert_eq!(plan(Some("-TERM/10"), None).kill_timeout, 10.0);
        assert_eq!(plan(Some("TERM/2/forever"), None).kill_timeout, -1.0);
        assert_eq!(
            plan(Some("KILL/3"), None),
            StopPlan {
                signal: "KILL".into(),
                kill_timeout: 3.0
            }
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(2.0));
        assert_eq!(parse_duration("1.5s"), Ok(1.5));
        assert_eq!(parse_duration("250ms"), Ok(0.25));
        assert_eq!(parse_duration("2m"), Ok(120.0));
        assert!(parse_duration("-1").is_err() && parse_duration("x").is_err());
    }

    #[test]
    fn the_environment_loses_openrc_and_terminal_variables() {
        let vars = [
            ("RC_SVCNAME", "demo"),
            ("RC_LIBEXECDIR", "/lib/rc"),
            ("EINFO_LASTCMD", "ebegin"),
            ("IN_BACKGROUND", "NO"),
            ("SVCNAME", "demo"),
            ("TERM", "xterm"),
            ("SHLVL", "2"),
            ("UPKEEPER_CONFIG", "/etc/upkeeper/upkeeper.conf"),
            ("HOME", "/root"),
            ("bad-name", "x"),
            ("PATH", "/lib/rc/sbin:/lib/rc/bin:/bin:/usr/bin"),
            ("FOO", "bar"),
        ];
        let it = || {
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        };
        let kept = captured_env(it(), true);
        assert_eq!(
            kept,
            vec![
                ("FOO".into(), "bar".into()),
                ("HOME".into(), "/root".into()),
                ("PATH".into(), "/bin:/usr/bin".into()),
            ]
        );
        let other_user = captured_env(it(), false);
        assert!(!other_user.iter().any(|(k, _)| k == "HOME"));
    }

    #[test]
    fn the_notify_hook_scrubs_openrc_and_marks_stopped_then_failed() {
        let around = Surroundings {
            rc_libexecdir: Some("/lib/rc".into()),
            rc_svcdir: Some("/run/openrc".into()),
            ..Surroundings::default()
        };
        let hook = notify("demo", &around);
        let run = hook["openrc"]["Run"].as_str().expect("Run");
        let unset = run.find("unset RC_SVCNAME RC_OPENRC_PID").expect("unset");
        let stopped = run
            .find("/lib/rc/sbin/mark_service_stopped' demo")
            .expect("stopped");
        let failed = run
            .find("/lib/rc/sbin/mark_service_failed' demo")
            .expect("failed");
        assert!(unset < stopped && stopped < failed, "{run}");
        assert_eq!(hook["openrc"]["On"], json!(["gave_up"]));
    }
}
