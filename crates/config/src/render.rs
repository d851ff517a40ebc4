//! Rendering a service's run directory from its resolved configuration.
//!
//! The renderer writes `scripts/` (from the tera templates in `templates/`, mode 0755),
//! `actions/` (symlinks `start`, `stop`, `reload`, `health` and `01`..`32` into `../scripts/`;
//! notification hooks are `scripts/hook@<name>`, run by the buddy directly) and
//! `settings.json` into a scratch directory inside the run directory, then swaps each into
//! place with `renameat2(RENAME_EXCHANGE)`: a buddy or a client always finds a whole old or a
//! whole new file set, never a half-written one. A new run directory is made whole under a
//! hidden name (`.<id>.new`) and renamed into place. `log/`, `status`, `lock` and `buddy.sock`
//! are never touched, so rendering never deletes logs; the FIFOs of configured loggers are
//! created if missing.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use upk_core::config::Service;
use upk_core::rundir::{self, RunDir, Settings};

const SCRIPT_TEMPLATE: &str = include_str!("../../../templates/script.tera");

/// Why a run directory could not be rendered; one sentence with the path.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
    /// A template failed.
    #[error("template {name}: {message}")]
    Template {
        /// Which template.
        name: String,
        /// Tera's explanation, with its causes.
        message: String,
    },
    /// The configuration cannot be laid out on disk.
    #[error("service {id}: {message}")]
    Invalid {
        /// The service.
        id: String,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RenderError + '_ {
    move |source| RenderError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Renders run directories with a fixed set of templates.
pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    /// The templates compiled into the binary.
    pub fn builtin() -> Renderer {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        // The built-in template is tested; failing to parse it is a build defect.
        tera.add_raw_template("script.tera", SCRIPT_TEMPLATE)
            .expect("built-in script.tera parses");
        Renderer { tera }
    }

    /// Templates read from `dir` (same file names as `templates/`).
    pub fn from_dir(dir: &Path) -> Result<Renderer, RenderError> {
        let path = dir.join("script.tera");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_template("script.tera", &text)
            .map_err(|e| template_err("script.tera", &e))?;
        Ok(Renderer { tera })
    }

    /// Renders `svc` under `svc_run_path`; returns its run directory.
    pub fn render(
        &self,
        svc: &Service,
        svc_run_path: &Path,
        settings: &Settings,
    ) -> Result<RunDir, RenderError> {
        let dir = RunDir::of(svc_run_path, &svc.id);
        let scripts = scripts_of(svc)?;
        if !dir.root().exists() {
            // A new directory is made whole under a hidden name and renamed into place: one
            // rename instead of three exchanges, and no scratch directory to clean up.
            let staging = svc_run_path.join(format!(".{}.new", svc.id));
            remove_any(&staging)?;
            fs::create_dir_all(staging.join("log")).map_err(io_err(&staging))?;
            make_fifos(&RunDir::new(&staging), svc)?;
            self.fill(&staging, svc, &scripts, settings)?;
            match fs::rename(&staging, dir.root()) {
                Ok(()) => return Ok(dir),
                // Someone made it meanwhile: render over it the usual way.
                Err(_) if dir.root().exists() => remove_any(&staging)?,
                Err(e) => return Err(io_err(dir.root())(e)),
            }
        }
        let log = dir.log();
        fs::create_dir_all(&log).map_err(io_err(&log))?;
        make_fifos(&dir, svc)?;
        let scratch = dir.root().join(".render");
        remove_any(&scratch)?;
        self.fill(&scratch, svc, &scripts, settings)?;
        // Scripts first: new actions may point at scripts that only the new set has.
        for name in ["scripts", "actions", rundir::SETTINGS] {
            swap_in(&scratch.join(name), &dir.root().join(name))?;
        }
        remove_any(&scratch)?;
        Ok(dir)
    }

    /// Writes `scripts/`, `actions/` and `settings.json` under `root`.
    fn fill(
        &self,
        root: &Path,
        svc: &Service,
        scripts: &[(Option<String>, String, String)],
        settings: &Settings,
    ) -> Result<(), RenderError> {
        let id = svc.id.to_string();
        let (new_scripts, new_actions) = (root.join("scripts"), root.join("actions"));
        for d in [&new_scripts, &new_actions] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        for (action, script, body) in scripts {
            let path = new_scripts.join(script);
            let text = self.script(&id, script, body)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&path)
                .map_err(io_err(&path))?;
            f.write_all(text.as_bytes()).map_err(io_err(&path))?;
            // The umask may have taken bits away: scripts are 0755 whatever it is.
            f.set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(io_err(&path))?;
            if let Some(action) = action {
                let link = new_actions.join(action);
                symlink(Path::new("../scripts").join(script), &link).map_err(io_err(&link))?;
            }
        }
        let settings_path = root.join(rundir::SETTINGS);
        // The hash goes with the settings, so every start record names the configuration
        // its run has.
        let settings = Settings {
            config_hash: Some(crate::diff::config_hash(svc)),
            ..settings.clone()
        };
        let json = serde_json::to_vec_pretty(&settings)
            .map_err(|e| io_err(&settings_path)(io::Error::other(e)))?;
        fs::write(&settings_path, json).map_err(io_err(&settings_path))?;
        Ok(())
    }

    fn script(&self, id: &str, name: &str, body: &str) -> Result<String, RenderError> {
        let (shebang, rest) = match body.strip_prefix("#!") {
            Some(_) => body.split_once('\n').unwrap_or((body, "")),
            None => ("#!/bin/sh", body),
        };
        let mut ctx = tera::Context::new();
        ctx.insert("id", id);
        ctx.insert("name", name);
        ctx.insert("shebang", shebang);
        ctx.insert("body", rest);
        let text = self
            .tera
            .render("script.tera", &ctx)
            .map_err(|e| template_err("script.tera", &e))?;
        // Exactly one final newline, whatever the template and the body end with.
        Ok(format!("{}\n", text.trim_end_matches('\n')))
    }
}

fn template_err(name: &str, e: &tera::Error) -> RenderError {
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    RenderError::Template {
        name: name.to_owned(),
        message,
    }
}

/// (action link name, script file name, script body) for every script of `svc`.
fn scripts_of(svc: &Service) -> Result<Vec<(Option<String>, String, String)>, RenderError> {
    let mut out = vec![
        (
            Some("start".to_owned()),
            "start".to_owned(),
            svc.start_script.clone(),
        ),
        (
            Some("stop".to_owned()),
            "stop".to_owned(),
            svc.stop_script.clone(),
        ),
        (
            Some("reload".to_owned()),
            "reload".to_owned(),
            svc.reload_script.clone(),
        ),
    ];
    if let Some(probe) = &svc.health_check {
        out.push((
            Some("health".to_owned()),
            "health".to_owned(),
            probe.clone(),
        ));
    }
    for hook in &svc.notify {
        if let Some(run) = &hook.run {
            out.push((None, format!("hook@{}", hook.name), run.clone()));
        }
    }
    for (stream, script) in [
        ("stdout", &svc.pipe_stdout_script),
        ("stderr", &svc.pipe_stderr_script),
    ] {
        if let Some(s) = script {
            out.push((None, format!("pipe_{stream}"), s.clone()));
        }
    }
    for (i, a) in svc.custom_actions.iter().enumerate() {
        if rundir::RESERVED_SCRIPTS.contains(&a.name.as_str()) {
            let message = format!(
                "custom action {:?} would overwrite the {} script; rename it",
                a.name, a.name
            );
            return Err(RenderError::Invalid {
                id: svc.id.to_string(),
                message,
            });
        }
        out.push((
            Some(rundir::action_number(i + 1)),
            a.name.clone(),
            a.script.clone(),
        ));
    }
    Ok(out)
}

/// The FIFOs of the configured loggers, a script or the buddy's own rotating logger
/// (`LogMaxSize`); the buddy makes a missing one too.
fn make_fifos(dir: &RunDir, svc: &Service) -> Result<(), RenderError> {
    for (fifo, script) in [
        ("stdout_pipe", &svc.pipe_stdout_script),
        ("stderr_pipe", &svc.pipe_stderr_script),
    ] {
        if script.is_none() && svc.log_max_size.is_none() {
            continue;
        }
        let p = dir.log_file(fifo);
        match nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(RenderError::Io {
                    path: p,
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

/// Moves `new` to `target`, atomically exchanging with an existing `target`; the old content
/// ends up at `new`, inside the scratch directory that is removed afterwards.
fn swap_in(new: &Path, target: &Path) -> Result<(), RenderError> {
    match exchange(new, target) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => fs::rename(new, target).map_err(io_err(target)),
        Err(e) => Err(RenderError::Io {
            path: target.to_owned(),
            source: e.into(),
        }),
    }
}

fn remove_any(path: &Path) -> Result<(), RenderError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RenderError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// `renameat2(RENAME_EXCHANGE)` by its system call: nix wraps it for glibc only, and the
/// clients that render (upkctl) are built for musl as well.
fn exchange(a: &Path, b: &Path) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (a, b) = (
        path(a).map_err(|_| nix::errno::Errno::EINVAL)?,
        path(b).map_err(|_| nix::errno::Errno::EINVAL)?,
    );
    // SAFETY: both are NUL-terminated paths that outlive the call; the kernel reads them only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}
