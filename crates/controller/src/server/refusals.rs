//! What refused callers cost: a caller without access may send requests as fast as it
//! likes, but the audit store gets at most a few rows per uid per window from it.

use super::{Peer, Server};
use crate::store::CommandEntry;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A caller's refusals within this window after its first [`REFUSAL_BURST`] audited ones are
/// counted, not audited one by one; one summary row says how many there were.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

/// Refusals of one uid audited in full per window.
const REFUSAL_BURST: u32 = 10;

/// Refusals per uid, so that a caller without access cannot grow the audit store at the rate
/// it sends requests: its first refusal opens a window of [`REFUSAL_WINDOW`]; the first
/// [`REFUSAL_BURST`] in the window are audited in full, later ones are counted, and one
/// summary row says how many when it ends. A uid therefore writes at most
/// `REFUSAL_BURST + 1` rows per window, whatever it sends.
#[derive(Default)]
pub(super) struct RefusalLog {
    windows: BTreeMap<u32, Refusals>,
}

impl RefusalLog {
    /// Notes a refusal of `peer`; true when it is among the first of its window (audit it).
    pub(super) fn refused(&mut self, peer: &Peer, now: Instant) -> bool {
        let r = self.windows.entry(peer.uid).or_insert_with(|| Refusals {
            since: now,
            since_us: upk_core::time::wall_us(),
            audited: 0,
            more: 0,
            last: peer.clone(),
        });
        if r.audited < REFUSAL_BURST {
            r.audited += 1;
            return true;
        }
        r.more = r.more.saturating_add(1);
        r.last = peer.clone();
        false
    }

    /// The windows that are over at `now`, taken out.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(u32, Refusals)> {
        let over: Vec<u32> = self
            .windows
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.since) >= REFUSAL_WINDOW)
            .map(|(uid, _)| *uid)
            .collect();
        over.into_iter()
            .filter_map(|uid| self.windows.remove(&uid).map(|r| (uid, r)))
            .collect()
    }

    /// When the first open window ends.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.windows
            .values()
            .map(|r| r.since + REFUSAL_WINDOW)
            .min()
    }
}

/// One caller's refusals in the current window: the first is audited, the rest counted.
pub(super) struct Refusals {
    since: Instant,
    since_us: i64,
    /// Audited in full so far in this window.
    audited: u32,
    /// Refused since the audited ones, not yet in the store.
    more: u64,
    /// The last refused caller, for the summary row.
    last: Peer,
}

impl Server {
    /// Whether `peer`'s refusal is to be audited (see [`RefusalLog`]).
    pub(super) fn first_refusal(&mut self, peer: &Peer) -> bool {
        let now = Instant::now();
        self.expire_refusals(now);
        self.refusals.refused(peer, now)
    }

    /// When the next refusal window ends (the loop calls [`Server::expire_refusals`] then).
    pub fn deadline(&self) -> Option<Instant> {
        self.refusals.deadline()
    }

    /// Ends the refusal windows that are over, each with one summary row for the refusals
    /// counted in it.
    pub fn expire_refusals(&mut self, now: Instant) {
        for (uid, r) in self.refusals.expire(now) {
            self.summarise_refusals(uid, r);
        }
    }

    fn summarise_refusals(&mut self, uid: u32, r: Refusals) {
        if r.more == 0 {
            return;
        }
        let until_us = upk_core::time::wall_us();
        self.audit.push(CommandEntry {
            wall_us: until_us,
            uid,
            gid: r.last.gid,
            pid: r.last.pid,
            cmdline: r.last.cmdline.clone(),
            request: serde_json::json!({
                "type": "refused",
                "count": r.more,
                "since_us": r.since_us,
                "until_us": until_us,
            }),
            service: None,
            result: format!(
                "refused: {} more requests from uid {uid} after the {REFUSAL_BURST} recorded before, counted and not recorded one by one",
                r.more
            ),
            ok: false,
            origin: r.last.origin.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            ..Peer::default()
        }
    }

    #[test]
    fn refusals_of_a_uid_are_a_few_rows_then_counted_then_one_summary_per_window() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        for _ in 0..REFUSAL_BURST {
            assert!(log.refused(&peer(1000), t0), "the first ones are audited");
        }
        for i in 0..100_000u32 {
            assert!(!log.refused(&peer(1000), t0 + Duration::from_micros(i.into())));
        }
        assert!(
            log.refused(&peer(1001), t0),
            "another uid has its own window"
        );
        assert_eq!(log.deadline(), Some(t0 + REFUSAL_WINDOW));
        assert!(log.expire(t0 + REFUSAL_WINDOW / 2).is_empty());
        let over = log.expire(t0 + REFUSAL_WINDOW);
        let counted: Vec<(u32, u64)> = over.iter().map(|(uid, r)| (*uid, r.more)).collect();
        assert_eq!(counted, [(1000, 100_000), (1001, 0)]);
        assert_eq!(log.deadline(), None);
        assert!(
            log.refused(&peer(1000), t0 + REFUSAL_WINDOW),
            "a new window audits again"
        );
    }
}
