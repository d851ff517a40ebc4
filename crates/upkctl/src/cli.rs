//! The command line as clap sees it: every subcommand, flag and help text.
//!
//! These definitions are also the source of the shell completions and man pages
//! (`upkctl completions`, `upkctl man`), so the help text here is the reference text.

use clap::{Args as ClapArgs, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use std::ffi::OsString;
use std::path::PathBuf;

/// The root of the command line: its name and version (its help is [`Args`]'s).
fn root() -> Command {
    Command::new("upkctl")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .arg_required_else_help(true)
}

/// upkeeper's operator tool: status, control, history, audit and statistics of services.
///
/// upkctl talks to the controller through its socket (StateDir/upkeeper.sock of the controller
/// file). `status` and `list` still answer from the status files when the controller is down.
/// With `-H [USER@]HOST`, commands go to that host's controller over ssh (docs/remote.md).
/// Exit codes: 0 ok, 1 failed, 2 not found, 3 refused, 4 controller unreachable, 5 timed out,
/// 6 invalid configuration, 100 usage, 111 temporary failure (docs/exit-codes.md).
//
// (The doc comment above is `upkctl --help`'s text. The command line is the [`Global`]
// options, before or after the subcommand, and the subcommand.)
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Options before or after the subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

impl CommandFactory for Args {
    fn command() -> Command {
        <Args as ClapArgs>::augment_args(root())
    }

    fn command_for_update() -> Command {
        <Args as ClapArgs>::augment_args_for_update(root())
    }
}

impl Parser for Args {}

/// The options every subcommand takes (clap's global ones).
#[derive(Debug, Clone, ClapArgs)]
pub struct Global {
    /// The controller file (default: /etc/upkeeper/upkeeper.conf for root,
    /// $XDG_CONFIG_HOME/upkeeper/upkeeper.conf otherwise; built-in defaults if it is missing).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The controller's socket, instead of the one the controller file names.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of text (one document, or one object per line for event streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read and show times in UTC instead of the local time zone (TZ, /etc/localtime).
    #[arg(long, global = true)]
    pub utc: bool,
    /// Give up after this many seconds: on each answer from the controller (the first one too),
    /// and on --wait.
    #[arg(long, global = true, value_name = "SECS", default_value = "30",
          value_parser = parse_seconds)]
    pub timeout: f64,
    /// Run the command against the controller of another host, over ssh (as `systemctl -H`):
    /// as the ssh user there, audited there with this connection's origin. --config and
    /// --socket then name that host's files (docs/remote.md).
    #[arg(
        short = 'H',
        long = "remote",
        global = true,
        value_name = "[USER@]HOST[:PORT]"
    )]
    pub remote: Option<String>,
    /// With -H: the ssh program to run (default: $UPKCTL_SSH, else `ssh`), one path given the
    /// options, `--`, the destination and the remote command.
    #[arg(long, global = true, value_name = "PROG")]
    pub ssh: Option<std::ffi::OsString>,
    /// With -H: upkctl's path on the remote host (default: $UPKCTL_REMOTE, else `upkctl`).
    #[arg(long, global = true, value_name = "PATH")]
    pub remote_upkctl: Option<String>,
    /// Ask the fleet's PostgreSQL (history, why, incident, stats across hosts) through
    /// upkeeper-ship, instead of this host's controller (docs/fleet.md).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "remote")]
    pub fleet: Option<String>,
    /// With --fleet: only hosts matching this glob.
    #[arg(
        long,
        global = true,
        value_name = "GLOB",
        default_value = "*",
        requires = "fleet"
    )]
    pub hosts: String,
}

impl Args {
    /// Parses `argv` (the program's name first), as [`Parser::try_parse_from`] does.
    ///
    /// clap builds every subcommand (forty) before it parses, and copies every global option
    /// (eleven) into each: about 0.4 ms of the 1.4 ms an `upkctl is-active` took
    /// (docs/benchmarks.md). So when `argv` names a subcommand, the tree parsed holds its
    /// group's subcommands alone ([`Cmd`]): the same options, help and errors for it. Anything
    /// else (no subcommand, a misspelt one, `help`) is parsed with the whole tree, which lists
    /// and suggests them all.
    pub fn parse_argv(argv: Vec<OsString>) -> Result<Args, clap::Error> {
        let globals = Global::augment_args(root());
        let mut cmd = match named_subcommand(&globals, &argv) {
            Some(name) if StateCmd::has_subcommand(name) => StateCmd::augment_subcommands(globals),
            Some(name) if ControlCmd::has_subcommand(name) => {
                ControlCmd::augment_subcommands(globals)
            }
            Some(name) if PastCmd::has_subcommand(name) => PastCmd::augment_subcommands(globals),
            Some(name) if ToolCmd::has_subcommand(name) => ToolCmd::augment_subcommands(globals),
            _ => Args::command(),
        };
        let mut matches = cmd.try_get_matches_from_mut(argv)?;
        Args::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
    }
}

/// The word of `argv` that names the subcommand: the first that is neither an option of
/// `globals` nor the value of one that takes it (`--config PATH`, `-H HOST`).
fn named_subcommand<'a>(globals: &Command, argv: &'a [OsString]) -> Option<&'a str> {
    let takes_value = |arg: &clap::Arg| arg.get_action().takes_values();
    let mut words = argv.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        let valued = if word == "--" {
            return None; // operands follow: no subcommand
        } else if let Some(long) = word.strip_prefix("--") {
            // `--config=PATH` holds its value; `--config PATH` does not.
            !long.contains('=')
                && globals
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long) && takes_value(a))
        } else if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            // `-Hhost` holds its value; `-H host` does not.
            shorts.len() == 1
                && globals.get_arguments().any(|a| {
                    a.get_short().map(String::from).as_deref() == Some(shorts) && takes_value(a)
                })
        } else {
            return Some(word);
        };
        if valued {
            words.next();
        }
    }
    None
}

/// The subcommands, in four groups, so that a command line is parsed with its own group's
/// subcommands alone ([`Args::parse_argv`]).
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// status, list, ping, is-active, is-failed.
    #[command(flatten)]
    State(StateCmd),
    /// start, stop, restart, reload, signal, action, once, unconfigure.
    #[command(flatten)]
    Control(ControlCmd),
    /// history, audit, why, logs, incident, stats, watch.
    #[command(flatten)]
    Past(PastCmd),
    /// check, render, openrc, completions, man, bridge.
    #[command(flatten)]
    Tool(ToolCmd),
}

/// What services are doing now.
#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Show the state of services (all when none is named); from the status files when the
    /// controller is down.
    Status {
        /// Service ids.
        #[arg(value_name = "SERVICE", add = ArgValueCandidates::new(service_names))]
        services: Vec<String>,
    },
    /// List the configured services.
    List,
    /// Exit 0 when the controller answers (and print its pid): what readiness checks ask.
    /// With --wait, keep asking until it answers or SECS have passed.
    Ping {
        /// Keep asking, every 100 ms, for at most this many seconds in all.
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        wait: Option<f64>,
    },
    /// Exit 0 when every service named runs (running or ready), 1 otherwise; prints each
    /// one's state. For scripts, as `systemctl is-active`.
    IsActive {
        /// Service ids.
        #[arg(value_name = "SERVICE", required = true, add = ArgValueCandidates::new(service_names))]
        services: Vec<String>,
    },
    /// Exit 0 when any service named is failed (or its restarts are paused), 1 otherwise;
    /// prints each one's state. For scripts, as `systemctl is-failed`.
    IsFailed {
        /// Service ids.
        #[arg(value_name = "SERVICE", required = true, add = ArgValueCandidates::new(service_names))]
        services: Vec<String>,
    },
}

/// What services are told to do.
#[derive(Debug, Subcommand)]
pub enum ControlCmd {
    /// Want services up and start them.
    Start(Targets),
    /// Want services down and stop them (stop script, SIGTERM, SIGKILL to the group).
    Stop(Targets),
    /// Stop services if they run, then start them.
    Restart(Targets),
    /// Run the services' reload action; returns when it has ended.
    Reload(Targets),
    /// Send a signal to services.
    Signal {
        /// The signal: a name (HUP, SIGHUP) or a number.
        #[arg(value_name = "SIG")]
        signal: String,
        /// Send it to the whole process group.
        #[arg(long)]
        group: bool,
        #[command(flatten)]
        targets: Targets,
    },
    /// Run a custom action of services; returns when it has ended.
    Action {
        /// The action's name (or number).
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        targets: Targets,
    },
    /// Start services once, without restarting them when they end.
    Once(Targets),
    /// Stop services, shut their buddies down, and forget them until their files change.
    Unconfigure {
        #[command(flatten)]
        targets: Targets,
        /// When the controller is unreachable, stop each service through its buddy and shut
        /// the buddy down (not audited): what a package's pre-remove hook needs, since the
        /// service's program is about to be deleted.
        #[arg(long)]
        direct: bool,
    },
}

/// What happened: the store's history, audit and statistics, the service's own output.
#[derive(Debug, Subcommand)]
pub enum PastCmd {
    /// Show stored events, oldest first.
    History {
        /// Only these services: ids, or globs such as 'pkg::*' (all when none is named).
        #[arg(value_name = "SERVICE", add = ArgValueCandidates::new(service_names))]
        services: Vec<String>,
        #[command(flatten)]
        window: Window,
        /// Only events of these kinds (died, started, stopped, ...; repeat or separate with
        /// commas).
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
        /// At most the last N events (0: no limit).
        #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
        lines: usize,
        /// Then keep printing new events as they are stored.
        #[arg(short, long, conflicts_with = "until")]
        follow: bool,
    },
    /// Show audited commands: who asked what, when, and what came of it.
    Audit {
        #[command(flatten)]
        window: Window,
        /// Only commands of this user (a name or a uid).
        #[arg(long, value_name = "NAME|UID")]
        user: Option<String>,
        /// At most the last N commands (0: no limit).
        #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
        lines: usize,
    },
    /// Explain a service's last death (or the last at or before --at): how it died, what it
    /// last wrote, the streak of failures, the configuration changes since its last good run,
    /// the commands that named it and what else failed around it.
    Why {
        /// The service id.
        #[arg(value_name = "SERVICE", add = ArgValueCandidates::new(service_names))]
        service: String,
        /// The last death at or before this time (as for `history --since`).
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// Show what a service wrote (its RedirectStdout and RedirectStderr files), like
    /// `tail -F`; works with the controller down.
    Logs {
        /// The service id.
        #[arg(value_name = "SERVICE", add = ArgValueCandidates::new(service_names))]
        service: String,
        /// The last N lines of each file (0: all).
        #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
        lines: usize,
        /// Then keep printing what it writes, across restarts and rotations.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show everything in a window (default: the last hour) in one order: every service's
    /// events, the commands and the configuration changes, the first failure marked, crash
    /// loops collapsed, and a summary per service.
    Incident {
        #[command(flatten)]
        window: Window,
    },
    /// Show restarts per hour, uptime, mean time between failures and flapping.
    Stats {
        /// Service ids (all when none is named).
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
        /// Start of the window (default: 24 hours ago); as for `history`.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
    },
    /// Print events live as the controller stores them.
    Watch {
        /// Only these services: ids, or globs such as 'pkg::*'.
        #[arg(value_name = "SERVICE", add = ArgValueCandidates::new(service_names))]
        services: Vec<String>,
        /// Only events of these kinds (repeat or separate with commas).
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
        /// Exit after N events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// Configuration, integration and the tool itself.
#[derive(Debug, Subcommand)]
pub enum ToolCmd {
    /// Validate configuration offline and print every error with its location (default: the
    /// controller file and every service file in its SvcConfigPath).
    Check {
        /// Service files, or directories of them.
        #[arg(value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
        /// The files are controller files.
        #[arg(long)]
        controller: bool,
        /// Check one service file as it would be installed as this path (DIR/NAME): its ids
        /// must not be defined by another file of DIR (what a package's post-install asks).
        #[arg(long, value_name = "DIR/NAME", conflicts_with = "controller")]
        into: Option<PathBuf>,
    },
    /// Show the run directory the controller would render for services, without writing it.
    Render {
        /// Service ids.
        #[arg(value_name = "SERVICE", required = true)]
        services: Vec<String>,
        /// Read the templates from this directory instead of the built-in ones.
        #[arg(long, value_name = "DIR")]
        templates: Option<PathBuf>,
    },
    /// The OpenRC supervisor glue: start and stop an OpenRC service through upkeeper (called
    /// by PREFIX/lib/upkeeper/openrc.sh for services with supervisor=upkeeper).
    #[command(subcommand)]
    Openrc(OpenrcCmd),
    /// Print a completion script for a shell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (or write one per subcommand into a directory).
    Man {
        /// Write upkctl.1 and upkctl-SUBCOMMAND.1 into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The remote half of -H, run by ssh: relay stdin and stdout to this host's controller
    /// socket, adding the ssh client's address to the hello (docs/remote.md).
    #[command(hide = true)]
    Bridge,
}

/// `upkctl openrc ...`: what the OpenRC glue asks for.
#[derive(Debug, Subcommand)]
pub enum OpenrcCmd {
    /// Hand an OpenRC service to upkeeper and start it: write SvcConfigPath/openrc-SVC.conf
    /// (service openrc::SVC), wait until the controller has taken it into use, start it and
    /// wait (bounded by --timeout) until it runs, then write OpenRC's daemon record. The
    /// exported environment (less RC_*, EINFO_*, IN_*, SVCNAME, TERM and the like) is passed
    /// on to the service. An empty option value means the variable is not set.
    Start(Box<OpenrcStart>),
    /// Stop an OpenRC service handed to upkeeper and wait until it is stopped: through the
    /// controller when it answers, otherwise through the service's buddy directly. A service
    /// that is stopped already, or was never handed over, is a success.
    Stop {
        /// The OpenRC service name (RC_SVCNAME).
        #[arg(value_name = "SVC")]
        svc: String,
    },
}

/// The OpenRC variables of a service, as the glue passes them (docs/integration.md lists how
/// each one maps onto service keys).
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct OpenrcStart {
    /// The OpenRC service name (RC_SVCNAME).
    #[arg(value_name = "SVC")]
    pub svc: String,
    /// command_user: the user to run as, or USER:GROUP.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// directory: the working directory (absolute).
    #[arg(long, value_name = "DIR")]
    pub directory: Option<String>,
    /// umask, in octal.
    #[arg(long, value_name = "MASK")]
    pub umask: Option<String>,
    /// output_log: the file stdout is appended to (absolute).
    #[arg(long, value_name = "PATH")]
    pub output_log: Option<String>,
    /// error_log: the file stderr is appended to (absolute).
    #[arg(long, value_name = "PATH")]
    pub error_log: Option<String>,
    /// respawn_delay: seconds (or 500ms, 2s, 1m) from a death to the restart.
    #[arg(long, value_name = "DURATION")]
    pub respawn_delay: Option<String>,
    /// respawn_max: respawns allowed before giving up (0: without limit; default 10).
    #[arg(long, value_name = "N")]
    pub respawn_max: Option<String>,
    /// respawn_period: a run longer than this is stable and resets the respawn count.
    #[arg(long, value_name = "DURATION")]
    pub respawn_period: Option<String>,
    /// retry: the stop schedule (TIMEOUT, or SIG/TIMEOUT/SIG/TIMEOUT...).
    #[arg(long, value_name = "SCHEDULE")]
    pub retry: Option<String>,
    /// stopsig: the signal that asks the service to stop (default TERM).
    #[arg(long, value_name = "SIG")]
    pub stopsig: Option<String>,
    /// healthcheck_timer: seconds between runs of the script's `healthcheck` function; on a
    /// failure its `unhealthy` function runs and the service is restarted.
    #[arg(long, value_name = "DURATION")]
    pub healthcheck_timer: Option<String>,
    /// healthcheck_delay: seconds after the start during which failed health checks do not
    /// count.
    #[arg(long, value_name = "DURATION")]
    pub healthcheck_delay: Option<String>,
    /// notify (OpenRC 0.60): `fd:N` or `socket:ready`, how the service says it is ready.
    #[arg(long, value_name = "HOW")]
    pub notify: Option<String>,
    /// The command line: command, command_args and command_args_foreground, as the shell
    /// split them.
    #[arg(value_name = "ARGV", last = true, required = true)]
    pub argv: Vec<String>,
}

/// The services a control command acts on.
#[derive(Debug, Clone, ClapArgs)]
pub struct Targets {
    /// Service ids.
    #[arg(
        value_name = "SERVICE",
        required_unless_present = "all",
        conflicts_with = "all",
        add = ArgValueCandidates::new(service_names)
    )]
    pub services: Vec<String>,
    /// Every configured service.
    #[arg(long)]
    pub all: bool,
    /// Block until each service has reached its new state (bounded by --timeout).
    #[arg(long)]
    pub wait: bool,
    /// Return once the controller has sent the command to the service's buddy, without
    /// waiting for its outcome (it is audited all the same; see `upkctl status`).
    #[arg(long, conflicts_with = "wait")]
    pub no_block: bool,
}

/// A time window.
#[derive(Debug, Clone, ClapArgs)]
pub struct Window {
    /// From this time: now, today, yesterday, "10 min ago", -1h, a span ago (90s, 1h30m, 2d),
    /// a local date and time (2026-11-21, "2026-11-21 12:00", 12:00; UTC with --utc), one
    /// with an offset (2026-11-21T12:00:00Z) or @EPOCH.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until this time (exclusive), written as for --since.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

/// The services a shell completes (`COMPLETE=bash upkctl`): those with a run directory under
/// the default controller file's SvcRunPath (`UPKEEPER_CONFIG`'s, when set), read from the
/// files so that a TAB never waits for the controller.
fn service_names() -> Vec<CompletionCandidate> {
    let config = std::env::var_os("UPKEEPER_CONFIG").map(PathBuf::from);
    let Ok(ctl) = upk_core::config::load_controller_or_defaults(config.as_deref()) else {
        return Vec::new();
    };
    let Ok(dirs) = std::fs::read_dir(&ctl.svc_run_path) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dirs
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(upk_core::rundir::SETTINGS).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// The longest `--timeout` or `--wait` (about 31 years): a deadline this far ahead is still
/// representable; more would overflow the clock's arithmetic.
const MAX_SECONDS: f64 = 1e9;

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most {MAX_SECONDS:e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(argv: &[&str]) -> Vec<OsString> {
        argv.iter().map(OsString::from).collect()
    }

    /// What the whole tree and [`Args::parse_argv`] make of `argv`: the parsed arguments, or
    /// the error's kind and text (help and version are errors to clap).
    fn both(argv: &[&str]) -> (String, String) {
        let show = |r: Result<Args, clap::Error>| match r {
            Ok(a) => format!("{a:?}"),
            Err(e) => format!("{:?}: {}", e.kind(), e.render()),
        };
        let full = Args::command()
            .try_get_matches_from(words(argv))
            .and_then(|mut m| Args::from_arg_matches_mut(&mut m));
        (show(full), show(Args::parse_argv(words(argv))))
    }

    #[test]
    fn one_subcommand_parses_as_the_whole_tree_does() {
        let full = Args::command();
        for sub in full.get_subcommands() {
            let name = sub.get_name();
            for argv in [
                vec!["upkctl", name, "--help"],
                vec!["upkctl", "--json", name, "-h"],
                vec!["upkctl", name, "--no-such-option"],
                vec!["upkctl", name],
                vec!["upkctl", name, "--version"],
            ] {
                let (whole, cut) = both(&argv);
                assert_eq!(whole, cut, "{argv:?}");
            }
        }
        for argv in [
            &[
                "upkctl",
                "--config",
                "/c",
                "stop",
                "web",
                "--json",
                "--timeout=2",
            ][..],
            &["upkctl", "stop", "--no-block", "a", "b", "--config=/c"],
            &["upkctl", "-H", "ops@h:22", "status", "--utc"],
            &[
                "upkctl",
                "-Hh",
                "restart",
                "web",
                "--wait",
                "--timeout",
                "0.5",
            ],
            &[
                "upkctl", "--fleet", "pg://", "history", "web", "--since", "1h", "--hosts", "w*",
            ],
            &["upkctl", "--config", "stop", "status"],
            &[
                "upkctl", "openrc", "start", "svc", "--user", "u", "--", "/bin/x", "--json",
            ],
            &["upkctl", "signal", "HUP", "web", "--group"],
            &["upkctl", "stpo", "web"],
            &["upkctl", "help", "stop"],
            &["upkctl", "--", "stop"],
            &["upkctl"],
            &["upkctl", "--version"],
            &["upkctl", "--timeout", "-1", "stop", "web"],
        ] {
            let (whole, cut) = both(argv);
            assert_eq!(whole, cut, "{argv:?}");
        }
    }

    #[test]
    fn the_subcommand_is_found_past_root_options_and_their_values() {
        let globals = Global::augment_args(root());
        let named = |argv: &[&str]| named_subcommand(&globals, &words(argv)).map(str::to_owned);
        assert_eq!(named(&["upkctl", "stop", "web"]).as_deref(), Some("stop"));
        assert_eq!(
            named(&["upkctl", "--config", "status", "--json", "-H", "h", "stop"]).as_deref(),
            Some("stop")
        );
        assert_eq!(
            named(&["upkctl", "--config=/c", "-Hh", "is-active", "x"]).as_deref(),
            Some("is-active")
        );
        assert_eq!(named(&["upkctl", "--", "stop"]), None);
        assert_eq!(named(&["upkctl", "stpo"]).as_deref(), Some("stpo"));
        assert_eq!(named(&["upkctl", "--json"]), None);
    }
}
