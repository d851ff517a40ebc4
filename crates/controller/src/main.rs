//! `upkeeper`: the controller's command line. Everything lives in the library.

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use upk_core::exit;
use upkeeper::{load, render::Renderer};

/// The controller of upkeeper, a process supervisor with an audit trail.
#[derive(Parser)]
#[command(
    version,
    about = "The controller of upkeeper, a process supervisor with an audit trail"
)]
struct Args {
    /// The controller file (default: /etc/upkeeper/upkeeper.conf for root,
    /// $XDG_CONFIG_HOME/upkeeper/upkeeper.conf otherwise; built-in defaults if it is missing).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Read the run-directory templates from this directory instead of the built-in ones.
    #[arg(long, global = true)]
    templates: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Render every service and keep one buddy per service running, in the foreground (default).
    Run,
    /// Validate configuration files offline; print every error with its location.
    Check {
        /// Service files (or the controller file with --controller).
        files: Vec<PathBuf>,
        /// The files are controller files.
        #[arg(long)]
        controller: bool,
    },
    /// Render the run directories of the named services (all when none is named).
    Render {
        /// Service ids.
        services: Vec<String>,
    },
    /// Answer the client protocol's read requests (history, audit, why) from a store, on
    /// stdin and stdout: what upkctl runs when the controller is down.
    ReadStore {
        /// The store (StateDir/upkeeper.db).
        store: PathBuf,
    },
    /// Print the man page, upkeeper(8).
    #[command(hide = true)]
    Man,
}

fn main() -> ExitCode {
    // Usage errors are permanent failures (100), like everywhere in upkeeper; help is not.
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::PERMANENT as u8
            } else {
                0
            });
        }
    };
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upkeeper: {e:#}");
            match e.downcast_ref::<upkeeper::foreground::AlreadyRunning>() {
                Some(_) => exit::PERMANENT,
                None => exit::TEMPORARY,
            }
        }
    };
    ExitCode::from(code as u8)
}

fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(Cmd::Man) = &args.command {
        let mut out = std::io::stdout().lock();
        let here = upk_core::manpage::Subcommands::Here;
        upk_core::manpage::render(
            Args::command(),
            "8",
            here,
            upkeeper::manual::SECTIONS,
            &mut out,
        )?;
        return Ok(exit::OK);
    }
    if let Some(Cmd::ReadStore { store }) = &args.command {
        // Needs no controller file: the store is named.
        upkeeper::offline::serve(store, std::io::stdin().lock(), std::io::stdout().lock())?;
        return Ok(exit::OK);
    }
    let ctl = match load::controller(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::PERMANENT);
        }
    };
    let renderer = match &args.templates {
        Some(dir) => Renderer::from_dir(dir)?,
        None => Renderer::builtin(),
    };
    match args.command.unwrap_or(Cmd::Run) {
        Cmd::Check { files, controller } => Ok(check(&ctl, &files, controller)),
        Cmd::Render { services } => {
            let (all, errors) = load::services(&ctl);
            errors.iter().for_each(|e| eprintln!("{e}"));
            let mut code = if errors.is_empty() {
                exit::OK
            } else {
                exit::PERMANENT
            };
            for name in &services {
                if !all.iter().any(|s| s.id.to_string() == *name) {
                    eprintln!(
                        "upkeeper: no service {name:?} in {}",
                        ctl.svc_config_path.display()
                    );
                    code = exit::PERMANENT;
                }
            }
            for svc in all
                .iter()
                .filter(|s| services.is_empty() || services.contains(&s.id.to_string()))
            {
                let settings = upk_core::rundir::Settings::new(&ctl, svc);
                let dir = renderer.render(svc, &ctl.svc_run_path, &settings)?;
                println!("{}", dir.root().display());
            }
            Ok(code)
        }
        Cmd::ReadStore { .. } | Cmd::Man => Ok(exit::OK),
        Cmd::Run => {
            upkeeper::foreground::run(&ctl, &renderer)?;
            Ok(exit::OK)
        }
    }
}

fn check(ctl: &upk_core::config::Controller, files: &[PathBuf], controller: bool) -> i32 {
    let mut code = exit::OK;
    for f in files {
        let result = if controller {
            upk_core::config::load_controller(f).map(|_| 1)
        } else {
            upk_core::config::load_services(f, &ctl.service_defaults).map(|s| s.len())
        };
        match result {
            Ok(_) if controller => println!("{}: ok", f.display()),
            Ok(n) => println!("{}: ok, {n} services", f.display()),
            Err(e) => {
                eprintln!("{e}");
                code = exit::PERMANENT;
            }
        }
    }
    code
}
