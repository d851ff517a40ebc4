//! `check` and `render`: configuration without the controller.
//!
//! Both use the controller's own code (upk_core's loaders, `upk_config::load` and
//! `upk_config::render::Renderer`), so upkctl accepts exactly what the controller accepts and
//! shows exactly what it would write. `render` writes into a scratch directory that is removed
//! afterwards: the live run directories belong to the controller and the buddies.

use crate::exit::{self, Failure, Result};
use crate::{print_json, warn, Ctx};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use upk_config::render::{RenderError, Renderer};
use upk_core::config::{self, ConfigErrors};
use upk_core::rundir::Settings;

/// One checked file.
#[derive(Debug, Serialize)]
struct Checked {
    file: PathBuf,
    ok: bool,
    /// Whether it is a controller file.
    controller: bool,
    /// The services it defines (service files).
    services: Vec<String>,
    errors: Vec<Problem>,
}

/// One error, with its location (line and column are 0 when it has none).
#[derive(Debug, Serialize)]
struct Problem {
    file: PathBuf,
    line: usize,
    column: usize,
    message: String,
}

impl Problem {
    fn of(errors: &ConfigErrors) -> Vec<Problem> {
        errors
            .0
            .iter()
            .map(|e| Problem {
                file: e.file.clone(),
                line: e.line,
                column: e.column,
                message: e.message.clone(),
            })
            .collect()
    }
}

/// `upkctl check [FILE|DIR...] [--controller] [--into DIR/NAME]`.
pub fn check(
    ctx: &Ctx,
    paths: &[PathBuf],
    controller: bool,
    into: Option<&Path>,
    out: &mut dyn Write,
) -> Result<i32> {
    let mut checked = Vec::new();
    let defaults;
    if let Some(target) = into {
        let [file] = paths else {
            return Err(Failure::new(
                exit::USAGE,
                "--into checks exactly one service file",
            ));
        };
        defaults = ctx.controller()?.service_defaults;
        let mut c = check_services(file, &defaults);
        c.errors.extend(collisions(&c, target, &defaults));
        c.ok = c.errors.is_empty();
        checked.push(c);
    } else if paths.is_empty() && !controller {
        // The whole configuration: the controller file, then its SvcConfigPath.
        let file = ctx
            .config
            .clone()
            .unwrap_or_else(|| config::controller_file(nix::unistd::geteuid().as_raw()));
        let ctl = if file.exists() {
            let c = check_controller(&file);
            let ctl = config::load_controller(&file).ok();
            checked.push(c);
            ctl
        } else {
            warn(&format!(
                "{} does not exist: built-in defaults apply",
                file.display()
            ));
            Some(config::Controller::defaults(
                nix::unistd::geteuid().as_raw(),
            ))
        };
        if let Some(ctl) = ctl {
            check_dir(&ctl.svc_config_path, &ctl.service_defaults, &mut checked);
        }
    } else if controller {
        for p in paths {
            checked.push(check_controller(p));
        }
    } else {
        defaults = ctx.controller()?.service_defaults;
        for p in paths {
            if p.is_dir() {
                check_dir(p, &defaults, &mut checked);
            } else if config::is_controller_file(p) {
                // Its keys say what it is; --controller says so for one with unknown keys.
                checked.push(check_controller(p));
            } else {
                checked.push(check_services(p, &defaults));
            }
        }
    }

    let errors: usize = checked.iter().map(|c| c.errors.len()).sum();
    let bad = checked.iter().filter(|c| !c.ok).count();
    if ctx.json {
        #[derive(Serialize)]
        struct Report<'a> {
            ok: bool,
            files: &'a [Checked],
        }
        let ok = errors == 0;
        print_json(
            out,
            &Report {
                ok,
                files: &checked,
            },
        )?;
    } else {
        for c in &checked {
            if c.ok && c.controller {
                writeln!(out, "{}: ok", c.file.display())?;
            } else if c.ok {
                let n = c.services.len();
                let s = if n == 1 { "" } else { "s" };
                writeln!(
                    out,
                    "{}: ok, {n} service{s} ({})",
                    c.file.display(),
                    c.services.join(", ")
                )?;
            }
            for e in &c.errors {
                eprintln!(
                    "{}",
                    config::ConfigError {
                        file: e.file.clone(),
                        line: e.line,
                        column: e.column,
                        message: e.message.clone(),
                    }
                );
            }
        }
    }
    if errors > 0 {
        let (es, fs) = (plural(errors, "error"), plural(bad, "file"));
        return Err(Failure::new(exit::INVALID_CONFIG, format!("{es} in {fs}")));
    }
    Ok(exit::OK)
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn check_controller(file: &Path) -> Checked {
    let result = config::load_controller(file);
    Checked {
        file: file.to_owned(),
        ok: result.is_ok(),
        controller: true,
        services: Vec::new(),
        errors: result.err().map(|e| Problem::of(&e)).unwrap_or_default(),
    }
}

fn check_services(file: &Path, defaults: &config::ServiceLayer) -> Checked {
    let result = config::load_services(file, defaults);
    let services = match &result {
        Ok(list) => list.iter().map(|s| s.id.to_string()).collect(),
        Err(_) => Vec::new(),
    };
    Checked {
        file: file.to_owned(),
        ok: result.is_ok(),
        controller: false,
        services,
        errors: result.err().map(|e| Problem::of(&e)).unwrap_or_default(),
    }
}

/// The ids of `c` that another service file beside `target` (DIR/NAME) already defines: the
/// controller would keep only one of the two definitions. Files that do not load define nothing.
fn collisions(c: &Checked, target: &Path, defaults: &config::ServiceLayer) -> Vec<Problem> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(files) = upk_config::load::service_files(dir) else {
        return Vec::new(); // no directory yet: nothing to collide with
    };
    let mut found = Vec::new();
    for other in files.iter().filter(|f| f.file_name() != target.file_name()) {
        let Ok(list) = config::load_services(other, defaults) else {
            continue;
        };
        for svc in list {
            let id = svc.id.to_string();
            if c.services.contains(&id) {
                found.push(Problem {
                    file: c.file.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "service {id} is already defined in {}: installed as {}, one of the two would be ignored",
                        other.display(),
                        target.display()
                    ),
                });
            }
        }
    }
    found
}

/// Every service file of `dir` in name order, and ids defined twice (the controller keeps
/// the first and ignores the second).
fn check_dir(dir: &Path, defaults: &config::ServiceLayer, checked: &mut Vec<Checked>) {
    let files = match upk_config::load::service_files(dir) {
        Ok(f) => f,
        Err(e) => {
            checked.push(Checked {
                file: dir.to_owned(),
                ok: false,
                controller: false,
                services: Vec::new(),
                errors: vec![Problem {
                    file: dir.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read the directory: {e}"),
                }],
            });
            return;
        }
    };
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for file in files {
        let mut c = check_services(&file, defaults);
        for id in &c.services {
            if let Some((_, first)) = seen.iter().find(|(s, _)| s == id) {
                c.errors.push(Problem {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "service {id} is already defined in {}; the controller ignores it here",
                        first.display()
                    ),
                });
                c.ok = false;
            } else {
                seen.push((id.clone(), file.clone()));
            }
        }
        checked.push(c);
    }
}

/// One entry of a rendered run directory.
#[derive(Debug, Serialize)]
struct Entry {
    /// Relative to the run directory.
    path: String,
    /// `dir`, `file`, `symlink` or `fifo`.
    r#type: &'static str,
    /// Permission bits, octal.
    mode: String,
    /// A symlink's target.
    target: Option<String>,
    /// A file's content.
    content: Option<String>,
}

/// One rendered service.
#[derive(Debug, Serialize)]
struct Rendered {
    service: String,
    /// Where the controller renders it.
    run_dir: PathBuf,
    /// The file that defines it.
    file: PathBuf,
    entries: Vec<Entry>,
}

/// `upkctl render SERVICE... [--templates DIR]`.
pub fn render(
    ctx: &Ctx,
    services: &[String],
    templates: Option<&Path>,
    out: &mut dyn Write,
) -> Result<i32> {
    let ctl = ctx.controller()?;
    let renderer = match templates {
        Some(dir) => Renderer::from_dir(dir).map_err(render_failure)?,
        None => Renderer::builtin(),
    };
    let scan = upk_config::load::scan(&ctl);
    for e in &scan.errors {
        eprintln!("{e}");
    }
    let scratch = tempfile::Builder::new()
        .prefix("upkctl-render-")
        .tempdir()
        .map_err(|e| {
            Failure::new(
                exit::TEMPORARY,
                format!("cannot create a scratch directory: {e}"),
            )
        })?;
    let mut rendered = Vec::new();
    for name in services {
        let Some((svc, file)) = scan
            .services
            .iter()
            .find(|(s, _)| s.id.to_string() == *name)
        else {
            let why = if scan.bad_files.is_empty() {
                String::new()
            } else {
                " (some files have errors: see above)".to_owned()
            };
            let code = if scan.bad_files.is_empty() {
                exit::NOT_FOUND
            } else {
                exit::INVALID_CONFIG
            };
            return Err(Failure::new(
                code,
                format!(
                    "there is no service {name:?} in {}{why}",
                    ctl.svc_config_path.display()
                ),
            ));
        };
        let settings = Settings::new(&ctl, svc);
        let dir = renderer
            .render(svc, scratch.path(), &settings)
            .map_err(render_failure)?;
        rendered.push(Rendered {
            service: name.clone(),
            run_dir: ctl.svc_run_path.join(name),
            file: file.clone(),
            entries: entries(dir.root()).map_err(|e| {
                Failure::new(
                    exit::TEMPORARY,
                    format!("cannot read the rendered directory: {e}"),
                )
            })?,
        });
    }
    if ctx.json {
        print_json(out, &rendered)?;
        return Ok(exit::OK);
    }
    for r in &rendered {
        writeln!(
            out,
            "# {} from {}, as the controller would render it into {} (nothing written there)",
            r.service,
            r.file.display(),
            r.run_dir.display()
        )?;
        for e in &r.entries {
            match (&e.target, e.r#type) {
                (Some(t), _) => writeln!(out, "{} -> {t}", e.path)?,
                (None, "dir") => writeln!(out, "{}/", e.path)?,
                (None, kind) => writeln!(out, "{}  ({kind}, {})", e.path, e.mode)?,
            }
        }
        for e in r.entries.iter().filter(|e| e.content.is_some()) {
            writeln!(out, "\n--- {}", e.path)?;
            let text = e.content.as_deref().unwrap_or_default();
            write!(out, "{text}")?;
            if !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
    }
    Ok(exit::OK)
}

fn render_failure(e: RenderError) -> Failure {
    let code = match e {
        RenderError::Io { .. } => exit::TEMPORARY,
        RenderError::Template { .. } | RenderError::Invalid { .. } => exit::INVALID_CONFIG,
    };
    Failure::new(code, e.to_string())
}

/// Every entry under `root`, in path order.
fn entries(root: &Path) -> std::io::Result<Vec<Entry>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
        names.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in names {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let mode = format!("{:04o}", meta.permissions().mode() & 0o7777);
            let (kind, target, content) = if ft.is_symlink() {
                let t = std::fs::read_link(&path)?.display().to_string();
                ("symlink", Some(t), None)
            } else if ft.is_dir() {
                subdirs.push(path.clone());
                ("dir", None, None)
            } else if ft.is_fifo() {
                ("fifo", None, None)
            } else {
                let bytes = std::fs::read(&path)?;
                (
                    "file",
                    None,
                    Some(String::from_utf8_lossy(&bytes).into_owned()),
                )
            };
            out.push(Entry {
                path: rel,
                r#type: kind,
                mode,
                target,
                content,
            });
        }
        stack.extend(subdirs);
    }
    // `actions` sorts before `actions/01`: path order lists each directory before its content.
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
