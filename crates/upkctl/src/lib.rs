//! upkctl: the operator's command line for upkeeper.
//!
//! # Theory of operation
//!
//! Every command that needs the controller goes through libupkeeper, one [`Client`]
//! connection per command (two when it also follows events), with every reply bounded by
//! `--timeout`. Nothing else talks to the controller. Two kinds of command work without it:
//! `status` and `list` fall back to the status files in `SvcRunPath` (the run directory is
//! the API, readable with no daemon), and `check` and `render` work on configuration files
//! offline, with the controller's own loaders and renderer.
//!
//! Each command is one function in a module of its kind ([`status`], [`control`],
//! [`events`], [`report`], [`why`], [`incident`], [`logs`], [`offline`]) that prints to the given writer and returns an exit
//! code, or a [`exit::Failure`]: one sentence and its code. `main` prints the sentence and
//! exits; the codes are in [`exit`] and `docs/exit-codes.md`.
//!
//! [`openrc`] is the Rust half of the OpenRC supervisor glue (`openrc/upkeeper.sh`): it turns
//! an OpenRC service's variables into a service file, and stops such a service with or
//! without the controller.
//!
//! Output is text for people by default, one line per service or event, times in the local
//! zone (UTC with `--utc`, [`when`]); with
//! `--json` it is one JSON document (`status`, `list`, `stats`, `check`, `render`, control
//! commands) or one object per line for event streams (`history`, `audit`, `watch`).

pub mod cli;
pub mod control;
pub mod events;
pub mod exit;
pub mod incident;
pub mod logs;
pub mod offline;
pub mod openrc;
pub mod report;
pub mod show;
pub mod status;
pub mod table;
pub mod when;
pub mod why;

use clap::CommandFactory;
use exit::{Failure, Result};
use libupkeeper::Client;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// What every command needs: where the controller is, how to print, how long to wait.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
    /// `--timeout`.
    pub timeout: Duration,
    /// Where times are read and shown (`--utc`, else the local zone).
    pub zone: when::Zone,
}

impl Ctx {
    /// The controller's socket: `--socket`, else the one of the controller file.
    pub fn socket(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => libupkeeper::socket_path(self.config.as_deref()).map_err(Failure::from),
        }
    }

    /// A connection to the controller, every reply bounded by `--timeout`.
    pub fn connect(&self) -> Result<Client> {
        let socket = self.socket()?;
        // The connection and the controller's `hello` are bounded by `--timeout` (a stopped or
        // wedged controller still accepts connections, or stops accepting them).
        let mut client = match Client::connect_timeout(&socket, self.timeout) {
            Err(libupkeeper::Error::TimedOut(_)) => {
                return Err(Failure::new(
                    exit::TIMED_OUT,
                    format!(
                        "the controller at {} did not answer within {:.1}s (see --timeout)",
                        socket.display(),
                        self.timeout.as_secs_f64()
                    ),
                ))
            }
            connected => connected?,
        };
        client.set_timeout(Some(self.timeout))?;
        Ok(client)
    }

    /// The controller file (or the built-in defaults when there is none); an invalid one is
    /// [`exit::INVALID_CONFIG`] with every error, one per line.
    pub fn controller(&self) -> Result<upk_core::config::Controller> {
        upk_core::config::load_controller_or_defaults(self.config.as_deref())
            .map_err(|e| Failure::new(exit::INVALID_CONFIG, e.to_string()))
    }
}

/// Runs one command line; returns the exit code, or the failure to report.
pub fn run(args: cli::Args, out: &mut dyn Write) -> Result<i32> {
    use cli::Cmd;
    let ctx = Ctx {
        config: args.config,
        socket: args.socket,
        json: args.json,
        timeout: Duration::from_secs_f64(args.timeout),
        zone: when::Zone::new(args.utc),
    };
    let code = match args.command {
        Cmd::Status { services } => status::status(&ctx, &services, out)?,
        Cmd::List => status::list(&ctx, out)?,
        Cmd::Start(t) => control::run(&ctx, control::Verb::Start, &t, out)?,
        Cmd::Stop(t) => control::run(&ctx, control::Verb::Stop, &t, out)?,
        Cmd::Restart(t) => control::run(&ctx, control::Verb::Restart, &t, out)?,
        Cmd::Reload(t) => control::run(&ctx, control::Verb::Reload, &t, out)?,
        Cmd::Once(t) => control::run(&ctx, control::Verb::Once, &t, out)?,
        Cmd::Unconfigure(t) => control::run(&ctx, control::Verb::Unconfigure, &t, out)?,
        Cmd::Signal {
            signal,
            group,
            targets,
        } => {
            let verb = control::Verb::Signal {
                signal: control::signal_spec(&signal)?,
                group,
            };
            control::run(&ctx, verb, &targets, out)?
        }
        Cmd::Action { name, targets } => {
            control::run(&ctx, control::Verb::Action { name }, &targets, out)?
        }
        Cmd::History {
            services,
            window,
            kind,
            lines,
            follow,
        } => {
            let query = events::HistoryQuery {
                services,
                window,
                kinds: kind,
                lines,
                follow,
            };
            events::history(&ctx, &query, out)?
        }
        Cmd::Watch {
            services,
            kind,
            count,
        } => events::watch(&ctx, &services, &kind, count, out)?,
        Cmd::Audit {
            window,
            user,
            lines,
        } => report::audit(&ctx, &window, user.as_deref(), lines, out)?,
        Cmd::Incident { window } => {
            incident::incident(&ctx, window.since.as_deref(), window.until.as_deref(), out)?
        }
        Cmd::Logs {
            service,
            lines,
            follow,
        } => logs::logs(&ctx, &service, lines, follow, out)?,
        Cmd::Why { service, at } => why::why(&ctx, &service, at.as_deref(), out)?,
        Cmd::Stats { services, since } => report::stats(&ctx, &services, since.as_deref(), out)?,
        Cmd::Check { paths, controller } => offline::check(&ctx, &paths, controller, out)?,
        Cmd::Render {
            services,
            templates,
        } => offline::render(&ctx, &services, templates.as_deref(), out)?,
        Cmd::Openrc(cli::OpenrcCmd::Start(start)) => openrc::start(&ctx, &start, out)?,
        Cmd::Openrc(cli::OpenrcCmd::Stop { svc }) => openrc::stop(&ctx, &svc, out)?,
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut cli::Args::command(), "upkctl", out);
            exit::OK
        }
        Cmd::Man { dir } => {
            match dir {
                Some(dir) => clap_mangen::generate_to(cli::Args::command(), &dir).map_err(|e| {
                    Failure::new(
                        exit::TEMPORARY,
                        format!("cannot write man pages into {}: {e}", dir.display()),
                    )
                })?,
                None => clap_mangen::Man::new(cli::Args::command()).render(out)?,
            }
            exit::OK
        }
    };
    out.flush()?;
    Ok(code)
}

/// Prints `value` as one pretty JSON document.
pub fn print_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `value` as one JSON line (event streams).
pub fn print_json_line(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Says something on stderr, prefixed like every upkctl message.
pub fn warn(message: &str) {
    eprintln!("upkctl: {message}");
}
