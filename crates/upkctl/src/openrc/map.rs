//! The OpenRC variables of one service as the text of its upkeeper service file.
//!
//! Pure: [`service_file`] reads nothing but its arguments ([`Surroundings`] carries the
//! environment it needs; `run` reads it from the process) and either returns the file, `//`
//! comment lines and a JSON object with the one service `openrc::SVC`, or refuses in one
//! sentence what cannot be expressed. The mapping follows supervise-daemon: `respawn_*` onto
//! the restart policy, `retry` and `stopsig` onto the stop signal and `KillTimeout`,
//! `healthcheck_*` onto the buddy's probe, `notify` onto readiness, and a `Notify` hook that
//! tells OpenRC when the buddy gives up.

use crate::cli::OpenrcStart;
use crate::exit::{self, Failure, Result};
use libupkeeper::SignalSpec;
use serde_json::{json, Map, Value};
use std::ffi::OsString;

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

/// The `Notify` hooks: when the buddy gives up, OpenRC is told the service is stopped and
/// failed, as supervise-daemon does; at every start, rc-status' uptime and respawns. `RC_SVCNAME` and `RC_OPENRC_PID` must not be set for the
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
    // rc-status shows a supervised service's uptime and respawns from `start_time` (local time,
    // as supervise-daemon writes it) and `start_count` in RC_SVCDIR/options/SVC: written at
    // every start of a run, the restarts counted by the buddy, without a newline (OpenRC reads
    // the whole file as the value).
    let options = format!(
        "{}/options/{svc}",
        around.rc_svcdir.as_deref().unwrap_or("/run/openrc")
    );
    let started = format!(
        "#!/bin/sh\nd={}\nmkdir -p \"$d\" || exit 0\n\
         printf %s \"$(date '+%Y-%m-%d %H:%M:%S')\" > \"$d/start_time\"\n\
         printf %s \"${{UPK_RESTARTS:-0}}\" > \"$d/start_count\"\n",
        quote(&options)
    );
    json!({
        "openrc": { "Run": run, "On": ["gave_up"] },
        "openrc-started": { "Run": started, "On": ["started"] },
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use upk_core::config::{InitialState, Service};

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
        let hooks: Vec<&str> = s.notify.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(hooks, ["openrc", "openrc-started"]);
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
        let started = hook["openrc-started"]["Run"].as_str().expect("Run");
        assert!(
            started.contains("d='/run/openrc/options/demo'"),
            "{started}"
        );
        assert!(
            started.contains("\"${UPK_RESTARTS:-0}\" > \"$d/start_count\""),
            "{started}"
        );
        assert_eq!(hook["openrc-started"]["On"], json!(["started"]));
    }
}
