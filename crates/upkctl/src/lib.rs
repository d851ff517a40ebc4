//! upkctl: the operator's command line for upkeeper.
//!
//! # Theory of operation
//!
//! Every command that needs the controller goes through libupkeeper, one [`Client`]
//! connection per command (two when it also follows events), with every reply bounded by
//! `--timeout`. Nothing else talks to the controller. Some commands work without it:
//! `status` and `list` fall back to the status files in `SvcRunPath` (the run directory is
//! the API, readable with no daemon); `history`, `audit`, `why` and `incident` read the store
//! through `upkeeper read-store` ([`Ctx::reader`]); `logs` reads the output files; and `check`
//! and `render` work on configuration files offline, with the controller's own loaders and
//! renderer.
//!
//! Each command is one function in a module of its kind ([`status`], [`control`], [`events`],
//! [`report`], [`why`], [`incident`], [`logs`], [`offline`]) that prints to the given writer
//! and returns an exit code, or a [`exit::Failure`]: one sentence and its code. `main` prints
//! the sentence and exits; the codes are in [`exit`] and `docs/exit-codes.md`.
//!
//! With `-H [USER@]HOST` ([`remote`]), the connection is ssh running `upkctl bridge`
//! ([`bridge`]) on that host instead of the local socket: every command that talks to the
//! controller works unchanged, and those that read this host's files (the status files, the
//! store with the controller down, `logs`, `check`, `render`, `openrc`) say they cannot.
//!
//! With `--fleet URL`, `history`, `why`, `incident` and `stats` ask the fleet's PostgreSQL
//! instead, through `upkeeper-ship query` ([`fleet`]): upkctl links no PostgreSQL client.
//!
//! [`openrc`] is the Rust half of the OpenRC supervisor glue (`openrc/upkeeper.sh`): it turns
//! an OpenRC service's variables into a service file, and stops such a service with or
//! without the controller.
//!
//! Output is text for people by default, one line per service or event, times in the local
//! zone (UTC with `--utc`, [`when`]); with
//! `--json` it is one JSON document (`status`, `list`, `stats`, `check`, `render`, control
//! commands) or one object per line for event streams (`history`, `audit`, `watch`).

pub mod bridge;
pub mod cli;
pub mod control;
pub mod direct;
pub mod events;
pub mod exit;
pub mod fleet;
pub mod incident;
pub mod logs;
pub mod manual;
pub mod offline;
pub mod openrc;
pub mod remote;
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
    /// Said on stderr after the command, when it succeeded (a failure's one sentence says
    /// enough): that the store was read without the controller.
    pub notes: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    /// `-H`: the controller is another host's, reached over ssh.
    pub remote: Option<remote::Remote>,
}

impl Ctx {
    /// The controller's socket: `--socket`, else the one of the controller file.
    pub fn socket(&self) -> Result<PathBuf> {
        match &self.socket {
            Some(p) => Ok(p.clone()),
            None => libupkeeper::socket_path(self.config.as_deref()).map_err(Failure::from),
        }
    }

    /// True with `-H`: this host's files are not the controller's.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// A connection to the controller, every reply bounded by `--timeout`.
    pub fn connect(&self) -> Result<Client> {
        if let Some(remote) = &self.remote {
            return remote.connect(self.timeout);
        }
        let socket = self.socket()?;
        // The connection and the controller's `hello` are bounded by `--timeout` (a stopped or
        // wedged controller still accepts connections, or stops accepting them). The `hello`
        // goes with the first request: one round trip per command.
        let mut client = match Client::connect_lazy(&socket, self.timeout) {
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

    /// A connection for reading the history: the controller, or when none answers its
    /// socket (no socket, or nobody listening), its store read directly by
    /// `upkeeper read-store` (docs/insight.md, "When the controller is down"), said on stderr.
    pub fn reader(&self) -> Result<Reader> {
        if let Some(remote) = &self.remote {
            return match self.connect() {
                Ok(client) => Ok(Reader {
                    client,
                    child: None,
                }),
                // The store is read without its controller only on its own host.
                Err(f) if f.code == exit::UNREACHABLE => Err(Failure::new(
                    f.code,
                    format!(
                        "{}; with -H the history needs the controller on {} running \
                         (its store is read directly only there)",
                        f.message, remote.given
                    ),
                )),
                Err(f) => Err(f),
            };
        }
        let socket = self.socket()?;
        let down = match self.connect() {
            Ok(client) => {
                return Ok(Reader {
                    client,
                    child: None,
                })
            }
            Err(failure) if failure.code == exit::UNREACHABLE => failure,
            Err(failure) => return Err(failure),
        };
        let store = socket.with_file_name("upkeeper.db");
        if !store.exists() {
            return Err(down);
        }
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Failure::new(exit::UNREACHABLE, format!("socketpair: {e}")))?;
        let bin = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("upkeeper"))
            .filter(|b| b.exists())
            .unwrap_or_else(|| PathBuf::from("upkeeper"));
        let reader = theirs
            .try_clone()
            .map_err(|e| Failure::new(exit::UNREACHABLE, format!("socketpair: {e}")))?;
        let mut child = std::process::Command::new(&bin)
            .arg("read-store")
            .arg(&store)
            .stdin(std::os::fd::OwnedFd::from(reader))
            .stdout(std::os::fd::OwnedFd::from(theirs))
            .spawn()
            .map_err(|e| {
                Failure::new(
                    down.code,
                    format!(
                        "{}; and {} cannot be run to read its store: {e}",
                        down.message,
                        bin.display()
                    ),
                )
            })?;
        let client = match Client::over(ours, self.timeout) {
            Ok(client) => client,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::new(
                    down.code,
                    format!(
                        "{}; and its store {} cannot be read ({e}; see above)",
                        down.message,
                        store.display()
                    ),
                ));
            }
        };
        let mut reader = Reader {
            client,
            child: Some(child),
        };
        reader.client.set_timeout(Some(self.timeout))?;
        self.notes.borrow_mut().push(format!(
            "the controller is not running ({}): this was read from its store {}",
            socket.display(),
            store.display()
        ));
        Ok(reader)
    }

    /// The controller file (or the built-in defaults when there is none); an invalid one is
    /// [`exit::INVALID_CONFIG`] with every error, one per line.
    pub fn controller(&self) -> Result<upk_core::config::Controller> {
        upk_core::config::load_controller_or_defaults(self.config.as_deref())
            .map_err(|e| Failure::new(exit::INVALID_CONFIG, e.to_string()))
    }
}

/// `upkctl ping [--wait SECS]`: the controller's pid once it answers; the failure to reach
/// it when it does not, at once or, with `wait`, when that much time has passed (each try
/// bounded by `--timeout` and by what is left, so the whole wait is `wait` however the
/// controller fails: absent, refusing, or hung).
fn ping(ctx: &Ctx, wait: Option<Duration>, out: &mut dyn Write) -> Result<i32> {
    let deadline = std::time::Instant::now() + wait.unwrap_or_default();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let attempt = Ctx {
            timeout: if wait.is_some() {
                ctx.timeout.min(left).max(Duration::from_millis(10))
            } else {
                ctx.timeout
            },
            ..ctx.clone()
        };
        match attempt
            .connect()
            .and_then(|mut c| c.hello().map(|()| c).map_err(Failure::from))
        {
            Ok(client) => {
                writeln!(out, "{}", client.controller_pid())?;
                return Ok(exit::OK);
            }
            Err(f) if left.is_zero() => return Err(f),
            Err(_) => std::thread::sleep(left.min(Duration::from_millis(100))),
        }
    }
}

/// A [`Client`] for read requests ([`Ctx::reader`]): the controller's, or one of
/// `upkeeper read-store`, which is ended with it.
#[derive(Debug)]
pub struct Reader {
    client: Client,
    child: Option<std::process::Child>,
}

impl Reader {
    /// True when this reads the store, the controller being down.
    pub fn offline(&self) -> bool {
        self.child.is_some()
    }
}

impl std::ops::Deref for Reader {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // It only reads: ending it at once is safe, and reaps it before upkctl exits.
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs one command line; returns the exit code, or the failure to report.
pub fn run(args: cli::Args, out: &mut dyn Write) -> Result<i32> {
    let cli::Args {
        global: args,
        command,
    } = args;
    use cli::{Cmd, ControlCmd, PastCmd, StateCmd, ToolCmd};
    let remote = match &args.remote {
        Some(host) => Some(remote::Remote::new(
            host,
            args.ssh,
            args.remote_upkctl,
            args.config.clone(),
            args.socket.clone(),
        )?),
        None => None,
    };
    let ctx = Ctx {
        config: args.config,
        socket: args.socket,
        json: args.json,
        timeout: Duration::from_secs_f64(args.timeout),
        zone: when::Zone::new(args.utc),
        notes: Default::default(),
        remote,
    };
    if let Some(url) = &args.fleet {
        let code = fleet::run(&ctx, url, &args.hosts, command, out)?;
        out.flush()?;
        return Ok(code);
    }
    if let Some(remote) = &ctx.remote {
        refuse_remote(remote, &command)?;
    }
    let code = match command {
        Cmd::State(StateCmd::Status { services }) => status::status(&ctx, &services, out)?,
        Cmd::State(StateCmd::List) => status::list(&ctx, out)?,
        Cmd::State(StateCmd::Ping { wait }) => ping(&ctx, wait.map(Duration::from_secs_f64), out)?,
        Cmd::State(StateCmd::IsActive { services }) => {
            status::is(&ctx, &services, status::Is::Active, out)?
        }
        Cmd::State(StateCmd::IsFailed { services }) => {
            status::is(&ctx, &services, status::Is::Failed, out)?
        }
        Cmd::Control(ControlCmd::Start(t)) => control::run(&ctx, control::Verb::Start, &t, out)?,
        Cmd::Control(ControlCmd::Stop(t)) => control::run(&ctx, control::Verb::Stop, &t, out)?,
        Cmd::Control(ControlCmd::Restart(t)) => {
            control::run(&ctx, control::Verb::Restart, &t, out)?
        }
        Cmd::Control(ControlCmd::Reload(t)) => control::run(&ctx, control::Verb::Reload, &t, out)?,
        Cmd::Control(ControlCmd::Once(t)) => control::run(&ctx, control::Verb::Once, &t, out)?,
        Cmd::Control(ControlCmd::Unconfigure { targets: t, direct }) => {
            match control::run(&ctx, control::Verb::Unconfigure, &t, out) {
                // With the controller down, a package's pre-remove hook must still stop what is
                // about to lose its program.
                Err(f) if direct && f.code == exit::UNREACHABLE && !t.all => {
                    direct::unconfigure_all(&ctx, &f, &t.services, out)?
                }
                other => other?,
            }
        }
        Cmd::Control(ControlCmd::Signal {
            signal,
            group,
            targets,
        }) => {
            let verb = control::Verb::Signal {
                signal: control::signal_spec(&signal)?,
                group,
            };
            control::run(&ctx, verb, &targets, out)?
        }
        Cmd::Control(ControlCmd::Action { name, targets }) => {
            control::run(&ctx, control::Verb::Action { name }, &targets, out)?
        }
        Cmd::Past(PastCmd::History {
            services,
            window,
            kind,
            lines,
            follow,
        }) => {
            let query = events::HistoryQuery {
                services,
                window,
                kinds: kind,
                lines,
                follow,
            };
            events::history(&ctx, &query, out)?
        }
        Cmd::Past(PastCmd::Watch {
            services,
            kind,
            count,
        }) => events::watch(&ctx, &services, &kind, count, out)?,
        Cmd::Past(PastCmd::Audit {
            window,
            user,
            lines,
        }) => report::audit(&ctx, &window, user.as_deref(), lines, out)?,
        Cmd::Past(PastCmd::Incident { window }) => {
            incident::incident(&ctx, window.since.as_deref(), window.until.as_deref(), out)?
        }
        Cmd::Past(PastCmd::Logs {
            service,
            lines,
            follow,
        }) => logs::logs(&ctx, &service, lines, follow, out)?,
        Cmd::Past(PastCmd::Why { service, at }) => why::why(&ctx, &service, at.as_deref(), out)?,
        Cmd::Past(PastCmd::Stats { services, since }) => {
            report::stats(&ctx, &services, since.as_deref(), out)?
        }
        Cmd::Tool(ToolCmd::Check {
            paths,
            controller,
            into,
        }) => offline::check(&ctx, &paths, controller, into.as_deref(), out)?,
        Cmd::Tool(ToolCmd::Render {
            services,
            templates,
        }) => offline::render(&ctx, &services, templates.as_deref(), out)?,
        Cmd::Tool(ToolCmd::Openrc(cli::OpenrcCmd::Start(start))) => {
            openrc::start(&ctx, &start, out)?
        }
        Cmd::Tool(ToolCmd::Openrc(cli::OpenrcCmd::Stop { svc })) => openrc::stop(&ctx, &svc, out)?,
        Cmd::Tool(ToolCmd::Completions { shell }) => {
            // clap_complete panics when its writer fails (a reader that went away, `| head`):
            // it writes into memory, and the write to stdout is ours.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli::Args::command(), "upkctl", &mut script);
            out.write_all(&script)?;
            exit::OK
        }
        Cmd::Tool(ToolCmd::Bridge) => bridge::bridge(&ctx)?,
        Cmd::Tool(ToolCmd::Man { dir }) => {
            let page = |out: &mut dyn Write| {
                let pages = upk_core::manpage::Subcommands::OwnPages;
                upk_core::manpage::render(cli::Args::command(), "1", pages, manual::SECTIONS, out)
            };
            match dir {
                // clap's page per subcommand, then upkctl.1 again with the written sections.
                Some(dir) => clap_mangen::generate_to(cli::Args::command(), &dir)
                    .and_then(|()| page(&mut std::fs::File::create(dir.join("upkctl.1"))?))
                    .map_err(|e| {
                        Failure::new(
                            exit::TEMPORARY,
                            format!("cannot write man pages into {}: {e}", dir.display()),
                        )
                    })?,
                None => page(out)?,
            }
            exit::OK
        }
    };
    out.flush()?;
    for note in ctx.notes.borrow().iter() {
        warn(note);
    }
    Ok(code)
}

/// With `-H`, the commands (and options) that would read or act on this host's files instead
/// of the remote controller are refused, each with one sentence.
fn refuse_remote(remote: &remote::Remote, command: &cli::Cmd) -> Result<()> {
    use cli::{Cmd, ControlCmd, PastCmd, ToolCmd};
    let usage = |m: &str| Err(Failure::new(exit::USAGE, m.to_owned()));
    match command {
        Cmd::Past(PastCmd::Logs { .. }) => Err(remote.local_only("logs")),
        Cmd::Tool(ToolCmd::Check { .. }) => Err(remote.local_only("check")),
        Cmd::Tool(ToolCmd::Render { .. }) => Err(remote.local_only("render")),
        Cmd::Tool(ToolCmd::Openrc(_)) => Err(remote.local_only("openrc")),
        Cmd::Tool(ToolCmd::Bridge) => {
            usage("`upkctl bridge` is what -H runs on the remote host; it takes no -H")
        }
        Cmd::Control(ControlCmd::Unconfigure { direct: true, .. }) => {
            usage("unconfigure --direct talks to this host's buddies and does not work with -H")
        }
        Cmd::Control(ControlCmd::Unconfigure { targets, .. }) if targets.wait => usage(
            "unconfigure --wait watches this host's status files and does not work with -H \
             (without --wait it does)",
        ),
        _ => Ok(()),
    }
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
