//! The command line: `run` (ship) and `query` (ask the fleet), every number range-checked.

use clap::{Args as ClapArgs, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// upkeeper-ship: copies this host's audit trail into a central PostgreSQL, and asks the
/// fleet's history questions of it (docs/fleet.md).
///
/// Exit codes: 0 ok, 100 usage or a permanent failure, 111 temporary failure (PostgreSQL
/// unreachable for a query).
#[derive(Debug, Parser)]
#[command(name = "upkeeper-ship", version)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Ship the store's committed rows, batch by batch, until SIGTERM or SIGINT.
    Run(Run),
    /// Ask the fleet database; prints JSON lines, each with its `host`.
    Query(Query),
}

/// `upkeeper-ship run`.
#[derive(Debug, ClapArgs)]
pub struct Run {
    /// The controller's audit store (StateDir/upkeeper.db), opened read-only.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/upkeeper/upkeeper.db"
    )]
    pub store: PathBuf,
    /// The fleet database: a PostgreSQL URL (postgresql://user@host/db) or key=value string
    /// (default: $UPKEEPER_SHIP_DATABASE, which keeps a password off the command line).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// This host's id (default: the host name, else /etc/machine-id): 1 to 64 letters,
    /// digits, '.', '_', '-'.
    #[arg(long, value_name = "ID")]
    pub host: Option<String>,
    /// Rows per transaction (1 to 50000).
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub batch: u32,
    /// Milliseconds between looks at the store once caught up (10 to 3600000).
    #[arg(long, value_name = "MS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(10..=3_600_000))]
    pub interval: u32,
    /// The longest wait between retries while PostgreSQL or the store fails, in ms (100 to
    /// 600000).
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(100..=600_000))]
    pub backoff_max: u32,
    /// Exit 0 once everything the store holds is shipped (for a cron job or a catch-up).
    #[arg(long)]
    pub once: bool,
    /// Say every batch on stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

impl Run {
    /// The interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval))
    }
    /// The backoff cap as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(u64::from(self.backoff_max))
    }
}

/// `upkeeper-ship query`.
#[derive(Debug, ClapArgs)]
pub struct Query {
    /// The fleet database (as for `run`; default: $UPKEEPER_SHIP_DATABASE).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Only hosts matching this glob (`*` any run of characters, `?` one).
    #[arg(long, value_name = "GLOB", default_value = "*", global = true)]
    pub hosts: String,
    /// From this time: µs since the epoch, or anything PostgreSQL reads as a timestamptz
    /// ('2026-12-03 03:00+00', 'today').
    #[arg(long, value_name = "WHEN", global = true)]
    pub since: Option<String>,
    /// Until this time (exclusive), as for --since.
    #[arg(long, value_name = "WHEN", global = true)]
    pub until: Option<String>,
    /// Give up after this many seconds: connecting, and each statement (1 to 86400).
    #[arg(long, value_name = "SECS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub timeout: u32,
    /// The question.
    #[command(subcommand)]
    pub what: Question,
}

/// The questions.
#[derive(Debug, Subcommand)]
pub enum Question {
    /// Events, oldest first (the last --limit of the window).
    History {
        /// Only services matching this glob.
        #[arg(long, value_name = "GLOB", default_value = "*")]
        service: String,
        /// Only events of these kinds (repeat or separate with commas).
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
        /// At most the last N events (1 to 100000).
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Restarts, failures, the last failure and flapping per host and service (default
    /// window: the last 24 hours).
    Stats {
        /// Only services matching this glob.
        #[arg(long, value_name = "GLOB", default_value = "*")]
        service: String,
    },
    /// Each host's last death of SERVICE (at or before --at, after --since), explained.
    Why {
        /// The service id.
        service: String,
        /// The last death at or before this time (as for --since).
        #[arg(long, value_name = "WHEN")]
        at: Option<String>,
    },
    /// Per host, every event, command and configuration change in the window (default: the
    /// last hour).
    Incident,
}
