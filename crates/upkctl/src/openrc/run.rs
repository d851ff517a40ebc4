//! Starting and stopping an OpenRC service through upkeeper: the orchestration around the
//! file [`super::map`] writes.
//!
//! [`start`] writes the file, waits for the controller to take it into use, starts the service
//! and writes OpenRC's daemon record. [`stop`] goes through the controller when it answers,
//! else to the buddy, else stops a leftover service process itself. Every wait is bounded by
//! `--timeout` (a stop by `KillTimeout` and a little more).

use super::map::{captured_env, service_file, service_id, Surroundings};
use crate::cli::{OpenrcStart, Targets};
use crate::control::{self, Verb};
use crate::exit::{self, Failure, Result};
use crate::Ctx;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use upk_core::config::{InitialState, Service};
use upk_core::rundir::{RunDir, Settings};

/// How often the controller's list, a run directory or a status file is read again while
/// waiting for it.
const RECHECK: Duration = Duration::from_millis(100);

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
        no_block: false,
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
        Ok(Err(_)) | Err(_) => crate::direct::stop(&id, &run_dir, timeout),
    }
}
