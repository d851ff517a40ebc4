//! `upkeeper-ship run`: the loop that copies a host's store into the fleet database.
//!
//! One thread, one loop. Each round reads, per table, at most `batch` rows after the cursor
//! from the local store and ships them in one PostgreSQL transaction with the cursor's move
//! ([`crate::central`]). A round that found a full batch goes on at once (catching up); one
//! that found less waits `interval` on a signalfd, so SIGTERM and SIGINT end the shipper between
//! two transactions, at once, and nothing is ever half shipped (SIGHUP is said and ignored).
//!
//! From the first round on the shipper does not die of the outside world: a PostgreSQL that is
//! down, slow, refusing or restarted, or a local store that is missing or locked, is said once
//! on stderr when the outage begins and once when it ends, and retried with a backoff that
//! doubles from 100 ms up to `--backoff-max` (10 s). The cursor lives in PostgreSQL, so a
//! retry starts exactly after the last committed batch, and nothing the local store still
//! holds is lost, however long the outage.

use crate::central::{Central, CentralError, HostInfo};
use crate::local::{LocalError, Store, Table};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The local store.
    pub store: PathBuf,
    /// The fleet database.
    pub database: postgres::Config,
    /// Who this host is.
    pub host: HostInfo,
    /// Rows per transaction.
    pub batch: usize,
    /// The wait between rounds that found nothing more to ship.
    pub interval: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// Exit once everything the store holds is shipped.
    pub once: bool,
    /// Say every batch on stderr.
    pub verbose: bool,
}

/// What failed in a round.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("{0}")]
    Local(#[from] LocalError),
    #[error("{0}")]
    Central(#[from] CentralError),
}

/// One side's outage: said when it begins and when it ends.
#[derive(Debug)]
struct Outage {
    /// What is out: `PostgreSQL`, `the local audit store`.
    name: &'static str,
    since: Option<Instant>,
}

impl Outage {
    fn new(name: &'static str) -> Outage {
        Outage { name, since: None }
    }

    fn begin(&mut self, error: &dyn std::fmt::Display, backoff_max: Duration) {
        if self.since.is_none() {
            crate::say(&format!(
                "cannot use {}: {error}; retrying (backoff up to {:.0}s); nothing the local \
                 store holds is lost meanwhile",
                self.name,
                backoff_max.as_secs_f64()
            ));
            self.since = Some(Instant::now());
        }
    }

    fn end(&mut self) {
        if let Some(since) = self.since.take() {
            crate::say(&format!(
                "{} is back after {:.1}s: shipping from the cursor",
                self.name,
                since.elapsed().as_secs_f64()
            ));
        }
    }
}

/// Ships until a signal (or, with `once`, until caught up). Errors before the loop (the
/// signals cannot be set up) are returned; inside it, none are.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block()?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let mut local: Option<Store> = None;
    let mut central: Option<Central> = None;
    let mut pg_down = Outage::new("PostgreSQL");
    let mut store_down = Outage::new("the local audit store");
    let mut backoff = Duration::ZERO;
    // From now on the shipper does not die: every failure is said and retried.
    loop {
        let wait = match round(opts, &mut local, &mut central) {
            Ok(caught_up) => {
                pg_down.end();
                store_down.end();
                backoff = Duration::ZERO;
                if caught_up && opts.once {
                    return Ok(());
                }
                if caught_up {
                    opts.interval
                } else {
                    Duration::ZERO
                }
            }
            Err(RoundError::Local(e)) => {
                local = None;
                store_down.begin(&e, opts.backoff_max);
                backoff = next_backoff(backoff, opts.backoff_max);
                backoff
            }
            Err(RoundError::Central(e @ CentralError::Moved { .. })) => {
                // Said every time (at the backoff's pace): two shippers for one host id is a
                // configuration error, and the cursor is read again.
                crate::say(&e.to_string());
                if let Err(e) = central.as_mut().map_or(Ok(()), Central::reload) {
                    central = None;
                    pg_down.begin(&e, opts.backoff_max);
                }
                backoff = next_backoff(backoff, opts.backoff_max);
                backoff
            }
            Err(RoundError::Central(e)) => {
                central = None;
                pg_down.begin(&e, opts.backoff_max);
                backoff = next_backoff(backoff, opts.backoff_max);
                backoff
            }
        };
        if signalled(&signals, wait) {
            return Ok(());
        }
    }
}

/// The next retry's wait: 100 ms, doubling, at most `max`.
fn next_backoff(last: Duration, max: Duration) -> Duration {
    if last.is_zero() {
        Duration::from_millis(100).min(max)
    } else {
        last.saturating_mul(2).min(max)
    }
}

/// Waits up to `wait` for a signal; true when one came (or the signalfd failed).
fn signalled(signals: &SignalFd, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        // poll's timeout is at most 65.535 s: a longer wait is several.
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if Instant::now() >= deadline => return false,
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => match signals.read_signal() {
                // A reload (upkeeper's default ExecReload is SIGHUP): nothing to re-read.
                Ok(Some(info)) if info.ssi_signo == Signal::SIGHUP as u32 => {
                    crate::say("SIGHUP: nothing to re-read; shipping goes on");
                }
                Ok(Some(info)) => {
                    crate::say(&format!("signal {}: stopping", info.ssi_signo));
                    return true;
                }
                Ok(None) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => {
                    crate::say(&format!("signalfd: {e}: stopping"));
                    return true;
                }
            },
            Err(e) => {
                crate::say(&format!("poll: {e}: stopping"));
                return true;
            }
        }
    }
}

/// One round over every table; true when each had less than a batch left (caught up).
fn round(
    opts: &Options,
    local: &mut Option<Store>,
    central: &mut Option<Central>,
) -> Result<bool, RoundError> {
    // A store deleted and recreated by the controller, or restored by an operator, is a new
    // file: the old connection would read the deleted one forever.
    if local.as_ref().is_some_and(|s| !s.is_current()) {
        crate::say(&format!(
            "{} is a new file (recreated or restored): reading it from now on",
            opts.store.display()
        ));
        *local = None;
    }
    if local.is_none() {
        *local = Some(Store::open(&opts.store)?);
    }
    if central.is_none() {
        *central = Some(Central::connect(&opts.database, &opts.host)?);
    }
    let (Some(store), Some(db)) = (local.as_mut(), central.as_mut()) else {
        return Ok(false);
    };
    let mut caught_up = true;
    for table in Table::ALL {
        let cursor = db.cursor(table);
        let batch = store.after(table, cursor, opts.batch)?;
        if batch.rows.is_empty() {
            let max = store.max_id(table)?;
            if max < cursor {
                crate::say(&format!(
                    "the local {} ids went back from {cursor} to {max} (store replaced or \
                     emptied): recorded as a gap, shipping it again from the start",
                    table.name()
                ));
                db.rewind(table, cursor, max)?;
                caught_up = false;
            }
            continue;
        }
        let shipped = db.ship(&batch, cursor)?;
        for (from, to) in &batch.holes {
            crate::say(&format!(
                "local {} rows {from}..={to} were gone before they were shipped (retention, \
                 or a replaced store): recorded as a gap",
                table.name()
            ));
        }
        if opts.verbose {
            crate::say(&format!(
                "{}: {} rows after {cursor}: {} new, {} already there",
                table.name(),
                batch.rows.len(),
                shipped.inserted,
                shipped.skipped
            ));
        }
        if batch.rows.len() >= opts.batch {
            caught_up = false;
        }
    }
    Ok(caught_up)
}

#[cfg(test)]
mod tests {
    use super::next_backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(10);
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b, max);
            seen.push(b.as_millis());
        }
        assert_eq!(
            seen,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
    }
}
