//! upkeeper's shared contracts.
//!
//! # Theory of operation
//!
//! Every upkeeper program (the buddy, the controller, the clients) agrees on a few things and
//! nothing else; those things live here and nowhere else:
//!
//! * [`config`]: the configuration dialect (JSON with comments, trailing commas and `Null`,
//!   case-insensitive keys), its validation with file/line/column errors, and the typed model
//!   of a service after layering built-in defaults, `ServiceDefaults` and the service entry.
//! * [`rundir`]: the on-disk API of one service, `SvcRunPath/<id>/`, and the `settings.json`
//!   the buddy reads from it.
//! * [`event`] and [`status`]: what a buddy records (sequence-numbered event records) and the
//!   status file it rewrites atomically on every transition; [`death`]: why a run ended.
//! * [`proto`]: the newline-delimited JSON framing and the buddy's message set; [`client`]:
//!   the message set clients speak with the controller.
//! * [`history`]: what the audit store answers (stored events, audited commands, statistics).
//! * [`direct`]: when a rendered script needs no shell (the buddy's fast path).
//! * [`procfs`]: `/proc/PID/stat`, process-group scans and pidfds, read in one place;
//!   [`cgroup`]: where the cgroup hierarchies are and what a cgroup says.
//! * [`fsutil`] and [`exit`]: atomic file writes and the documented exit codes.
//! * [`sched`]: the daemons run `SCHED_BATCH`, what they start `SCHED_OTHER`.
//! * [`escalate`]: stopping a process group from outside a poll loop (a signal, a bounded
//!   wait, SIGKILL), for the programs that may block.
//! * [`manpage`] (feature `man`): a command's man page, generated from its clap definition,
//!   with the sections clap cannot know (EXIT STATUS, EXAMPLES, FILES, SEE ALSO).
//!
//! This crate holds no daemon logic and starts no processes.

pub mod cgroup;
pub mod client;
pub mod config;
pub mod death;
pub mod direct;
pub mod escalate;
pub mod event;
pub mod exit;
pub mod fsutil;
pub mod history;
#[cfg(feature = "man")]
pub mod manpage;
pub mod procfs;
pub mod proto;
pub mod rundir;
pub mod sched;
pub mod status;
pub mod time;
