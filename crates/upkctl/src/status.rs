//! `status` and `list`: what each service is doing, from the controller or, when it is down,
//! from the status files.
//!
//! The controller answers with each service's status file anyway, so both sources give the
//! same record; the files only lack what the controller knows (the defining file, whether the
//! buddy is linked). When the controller cannot be reached (or does not answer in time),
//! upkctl says so on stderr and reads `SvcRunPath/<id>/status` itself. A status file whose
//! buddy is gone may be out of date, and upkctl says that too.

use crate::exit::{self, Failure, Result};
use crate::{print_json, table, warn, when, Ctx};
use libupkeeper::{Exit, ServiceSummary, StateName, Status, Want};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One service as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Service id.
    pub service: String,
    /// Current state (`None`: no status file yet).
    pub state: Option<StateName>,
    /// Desired state.
    pub want: Option<Want>,
    /// Main pid.
    pub pid: Option<i32>,
    /// When the current state was entered (wall microseconds).
    pub since_us: Option<i64>,
    /// Seconds since the start, while it runs (`running` or `ready`).
    pub uptime_s: Option<f64>,
    /// Automatic restarts of the run directory (carried across buddy restarts).
    pub restarts: Option<u64>,
    /// Consecutive failures.
    pub failures: Option<u32>,
    /// How the last run ended.
    pub last_exit: Option<Exit>,
    /// When the next start is due (backoff, paused, failed with a cool-down).
    pub next_start_us: Option<i64>,
    /// `unknown`, `healthy` or `unhealthy` while it runs with a HealthCheck; else `null`.
    pub health: Option<String>,
    /// Whether the controller is linked to the buddy (`null` without the controller).
    pub linked: Option<bool>,
    /// Whether the buddy process lives (checked only without the controller).
    pub buddy_alive: Option<bool>,
    /// The file that defines it (`null` without the controller).
    pub file: Option<String>,
    /// What it costs now (`null` without the controller, or when it does not run).
    pub usage: Option<libupkeeper::Usage>,
    /// Its cgroup, or why it has none, and the limits not enforced.
    pub containment: Option<libupkeeper::Containment>,
}

impl Row {
    fn new(service: String, st: Option<&Status>, now_us: i64) -> Row {
        Row {
            service,
            state: st.map(|s| s.state),
            want: st.map(|s| s.want),
            pid: st.and_then(|s| s.pid),
            since_us: st.map(|s| s.since_us),
            uptime_s: st
                .filter(|s| s.state.is_up())
                .map(|s| (now_us - s.since_us).max(0) as f64 / 1e6),
            restarts: st.map(|s| s.restarts),
            failures: st.map(|s| s.failures),
            last_exit: st.and_then(|s| s.last_exit),
            next_start_us: st.and_then(|s| s.next_start_us),
            health: st.and_then(|s| s.health).map(|h| h.as_str().to_owned()),
            linked: None,
            buddy_alive: None,
            file: None,
            usage: None,
            containment: st.map(|s| (*s.containment).clone()),
        }
    }

    fn from_summary(s: &ServiceSummary, now_us: i64) -> Row {
        Row {
            linked: Some(s.linked),
            file: Some(s.file.clone()),
            usage: s.usage,
            ..Row::new(s.service.clone(), s.status.as_ref(), now_us)
        }
    }

    fn cells(&self, now_us: i64) -> Vec<String> {
        let dash = || "-".to_owned();
        let state = match (self.state, self.next_start_us) {
            (
                Some(s @ (StateName::Backoff | StateName::Paused | StateName::Failed)),
                Some(next),
            ) => {
                format!("{} ({} left)", s.as_str(), when::duration(next - now_us))
            }
            (Some(s), _) => s.as_str().to_owned(),
            (None, _) => "unknown".to_owned(),
        };
        vec![
            self.service.clone(),
            state,
            self.want.map_or_else(dash, want_str),
            self.pid.map_or_else(dash, |p| p.to_string()),
            self.uptime_s
                .map_or_else(dash, |s| when::duration((s * 1e6) as i64)),
            self.restarts.map_or_else(dash, |r| r.to_string()),
            self.last_exit.map_or_else(dash, |e| e.to_string()),
            self.health.clone().unwrap_or_else(dash),
            self.usage.map_or_else(dash, |u| u.cpu_text()),
            self.usage.map_or_else(dash, |u| u.memory_text()),
        ]
    }
}

/// The lowercase name of a desired state.
pub fn want_str(w: Want) -> String {
    match w {
        Want::Up => "up",
        Want::Down => "down",
        Want::Once => "once",
    }
    .to_owned()
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// Whether the controller answered (else: read from the status files).
    controller: bool,
    services: Vec<Row>,
}

const HEADER: [&str; 10] = [
    "SERVICE",
    "STATE",
    "WANT",
    "PID",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
    "HEALTH",
    "CPU",
    "MEMORY",
];

/// The rows of `services` (all when empty): from the controller, or from the status files
/// when it is down (then `false`).
fn rows(ctx: &Ctx, services: &[String], now: i64) -> Result<(bool, Vec<Row>)> {
    let answer = ctx.connect().and_then(|mut c| {
        // Globs need the controller's list; without it, the names are taken as ids.
        let services = crate::events::expand(&mut c, services)?;
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        Ok(c.status(&names)?)
    });
    match answer {
        Ok(list) => Ok((
            true,
            list.iter().map(|s| Row::from_summary(s, now)).collect(),
        )),
        Err(f) if falls_back(ctx, &f) => Ok((false, from_files(ctx, &f, services, now)?)),
        Err(f) => Err(f),
    }
}

/// What `is-active` and `is-failed` ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Is {
    /// Every service named runs.
    Active,
    /// Some service named is failed or paused.
    Failed,
}

/// `upkctl is-active|is-failed SERVICE...`: each state on a line (`unknown` without a
/// status file), and the answer as the exit code: 0 yes, 1 no.
pub fn is(ctx: &Ctx, services: &[String], ask: Is, out: &mut dyn Write) -> Result<i32> {
    let (_, rows) = rows(ctx, services, upk_core::time::wall_us())?;
    for r in &rows {
        writeln!(out, "{}", r.state.map_or("unknown", StateName::as_str))?;
    }
    let yes = match ask {
        Is::Active => {
            !rows.is_empty() && rows.iter().all(|r| r.state.is_some_and(StateName::is_up))
        }
        Is::Failed => rows
            .iter()
            .any(|r| matches!(r.state, Some(StateName::Failed | StateName::Paused))),
    };
    Ok(if yes { exit::OK } else { exit::FAILED })
}

/// `upkctl status [SERVICE...]`.
pub fn status(ctx: &Ctx, services: &[String], out: &mut dyn Write) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let (controller, rows) = rows(ctx, services, now)?;
    if ctx.json {
        print_json(
            out,
            &Report {
                controller,
                services: rows,
            },
        )?;
    } else if let ([_], [row]) = (services, rows.as_slice()) {
        // One service named: its page, with its last death explained when the store answers.
        let why = if controller {
            ctx.connect()
                .ok()
                .and_then(|mut c| c.why(&row.service, None).ok())
        } else {
            None
        };
        // With -H the run directories (description, output files) are on the other host.
        let run_path = match ctx.is_remote() {
            true => None,
            false => Some(ctx.controller()?.svc_run_path),
        };
        let page = crate::show::page(row, run_path.as_deref(), why.as_ref(), &ctx.zone, now);
        for line in page {
            writeln!(out, "{line}")?;
        }
    } else {
        let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells(now)).collect();
        table::print(out, &HEADER, &cells)?;
    }
    Ok(exit::OK)
}

/// `upkctl list`.
pub fn list(ctx: &Ctx, out: &mut dyn Write) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let answer = ctx.connect().and_then(|mut c| Ok(c.list()?));
    let rows: Vec<Row> = match answer {
        Ok(list) => list.iter().map(|s| Row::from_summary(s, now)).collect(),
        Err(f) if falls_back(ctx, &f) => from_files(ctx, &f, &[], now)?,
        Err(f) => return Err(f),
    };
    if ctx.json {
        #[derive(Serialize)]
        struct Entry<'a> {
            service: &'a str,
            state: Option<StateName>,
            want: Option<Want>,
            linked: Option<bool>,
            file: Option<&'a str>,
        }
        let entries: Vec<Entry> = rows
            .iter()
            .map(|r| Entry {
                service: &r.service,
                state: r.state,
                want: r.want,
                linked: r.linked,
                file: r.file.as_deref(),
            })
            .collect();
        print_json(out, &entries)?;
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let dash = || "-".to_owned();
                vec![
                    r.service.clone(),
                    r.state
                        .map_or_else(|| "unknown".into(), |s| s.as_str().into()),
                    r.want.map_or_else(dash, want_str),
                    r.linked
                        .map_or_else(dash, |l| if l { "yes" } else { "no" }.into()),
                    r.file.clone().unwrap_or_else(dash),
                ]
            })
            .collect();
        table::print(out, &["SERVICE", "STATE", "WANT", "LINKED", "FILE"], &cells)?;
    }
    Ok(exit::OK)
}

/// Read commands answer from the files when the controller is down or does not answer (and
/// is this host's: with -H, this host's files say nothing of the remote one).
fn falls_back(ctx: &Ctx, f: &Failure) -> bool {
    !ctx.is_remote() && (f.code == exit::UNREACHABLE || f.code == exit::TIMED_OUT)
}

/// The rows of the status files in `SvcRunPath`, saying on stderr why and from where.
fn from_files(ctx: &Ctx, why: &Failure, services: &[String], now: i64) -> Result<Vec<Row>> {
    let ctl = ctx.controller()?;
    let run_path = &ctl.svc_run_path;
    warn(&format!(
        "{}; showing the status files in {}",
        why.message,
        run_path.display()
    ));
    let ids = if services.is_empty() {
        all_run_dirs(run_path).map_err(|e| {
            Failure::new(
                exit::UNREACHABLE,
                format!(
                    "{}, and {} cannot be read: {e}",
                    why.message,
                    run_path.display()
                ),
            )
        })?
    } else {
        services.to_vec()
    };
    let mut rows = Vec::new();
    for id in ids {
        let st = read_status(run_path, &id)?;
        let mut row = Row::new(id.clone(), st.as_ref(), now);
        if let Some(st) = &st {
            let alive = buddy_alive(st.buddy_pid);
            if !alive {
                warn(&format!(
                    "the buddy of {id} (pid {}) is not running: its status may be out of date",
                    st.buddy_pid
                ));
            }
            row.buddy_alive = Some(alive);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The status file of `id` under `run_path`; a service without a run directory is not found.
pub fn read_status(run_path: &Path, id: &str) -> Result<Option<Status>> {
    // The id names a directory: refuse anything that is not an id (`..`, slashes).
    upk_core::config::ServiceId::parse(id)
        .map_err(|e| Failure::new(exit::NOT_FOUND, format!("there is no service {id:?}: {e}")))?;
    let dir = run_path.join(id);
    if !dir.is_dir() {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("there is no service {id:?} in {}", run_path.display()),
        ));
    }
    Status::read(&dir.join("status")).map_err(|e| {
        Failure::new(
            exit::TEMPORARY,
            format!("cannot read {}: {e}", dir.join("status").display()),
        )
    })
}

/// The run directories under `run_path`, in name order.
fn all_run_dirs(run_path: &Path) -> std::io::Result<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(run_path)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("status").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// True while a buddy process with this pid lives (its pid may have been reused by another
/// program: the command line must name upk_buddy).
pub fn buddy_alive(pid: i32) -> bool {
    let running = upk_core::status::process_state(pid).is_some_and(|s| s != 'Z');
    running
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("upk_buddy"))
}
