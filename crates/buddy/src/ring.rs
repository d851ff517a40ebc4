//! The event ring: records wait here until a controller acknowledges them.
//!
//! Invariants: sequence numbers are assigned here, contiguous and increasing; a record leaves
//! only when acknowledged ([`Ring::ack`]) or when the ring overflows. On overflow the oldest
//! records are folded into one `lost` record at the front, which occupies a slot of its own,
//! counts exactly how many records it replaces, and carries the sequence number of the last of
//! them, so the stream a controller sees stays contiguous and every gap is accounted for.

use std::collections::VecDeque;
use upk_core::event::{EventKind, Record};

/// Bounded queue of unacknowledged records.
#[derive(Debug)]
pub struct Ring {
    cap: usize,
    records: VecDeque<Record>,
    last_seq: u64,
    acked: u64,
}

impl Ring {
    /// An empty ring of `cap` slots (at least 2) continuing after sequence number `last_seq`,
    /// of which everything up to `acked` was acknowledged.
    pub fn new(cap: usize, last_seq: u64, acked: u64) -> Ring {
        Ring {
            cap: cap.max(2),
            records: VecDeque::new(),
            last_seq,
            acked: acked.min(last_seq),
        }
    }

    /// Stamps `record` with the next sequence number, stores it and returns the stored copy.
    pub fn push(&mut self, mut record: Record) -> &Record {
        // Never wraps: a buddy goes on from at most `status::MAX_SEQ` (2^62).
        self.last_seq = self.last_seq.saturating_add(1);
        record.seq = self.last_seq;
        while self.records.len() >= self.cap {
            self.fold_oldest("ring overflow");
        }
        self.records.push_back(record);
        self.records.back().expect("just pushed")
    }

    /// Drops the oldest record into the `lost` record at the front (creating it from the
    /// oldest one when there is none; it then needs a slot, so a second record folds in).
    fn fold_oldest(&mut self, reason: &str) {
        let Some(first) = self.records.pop_front() else {
            return;
        };
        let mut marker = if is_lost(&first) {
            first
        } else {
            into_lost(first, reason)
        };
        if let Some(next) = self.records.pop_front() {
            absorb(&mut marker, next, reason);
        }
        self.records.push_front(marker);
    }

    /// Accounts for records a killed predecessor assigned but never got acknowledged: one
    /// `lost` record standing for sequence numbers `acked+1 ..= last_seq`. Call on a new ring.
    pub fn account_unacked(&mut self, mut record: Record, reason: &str) {
        let count = self.last_seq - self.acked;
        if count == 0 {
            return;
        }
        record.seq = self.last_seq;
        record.kind = EventKind::Lost {
            count,
            reason: reason.to_owned(),
        };
        self.records.push_front(record);
    }

    /// Forgets everything up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            self.records.pop_front();
        }
        self.acked = self.acked.max(seq.min(self.last_seq));
    }

    /// Unacknowledged records after `after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.seq > after)
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.records.len()
    }
    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Changes the capacity (settings re-read), folding the oldest records if it shrinks.
    pub fn resize(&mut self, cap: usize) {
        self.cap = cap.max(2);
        while self.records.len() > self.cap {
            self.fold_oldest("ring shrunk");
        }
    }
    /// The last sequence number assigned.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    /// The highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }
    /// True at 75% or more of capacity: time to phone home if nobody listens.
    pub fn nearly_full(&self) -> bool {
        self.records.len() * 4 >= self.cap * 3
    }
}

fn is_lost(r: &Record) -> bool {
    matches!(r.kind, EventKind::Lost { .. })
}

fn into_lost(r: Record, reason: &str) -> Record {
    Record {
        kind: EventKind::Lost {
            count: 1,
            reason: reason.to_owned(),
        },
        cause: reason.to_owned(),
        ..r
    }
}

fn absorb(marker: &mut Record, r: Record, reason: &str) {
    let extra = match &r.kind {
        EventKind::Lost { count, .. } => *count,
        _ => 1,
    };
    if let EventKind::Lost { count, reason: why } = &mut marker.kind {
        *count += extra;
        if !why.contains(reason) {
            why.push_str(", ");
            why.push_str(reason);
        }
    }
    marker.seq = r.seq;
    marker.wall_us = r.wall_us;
    marker.mono_us = r.mono_us;
    marker.to = r.to;
}

#[cfg(test)]
mod tests {
    use super::*;
    use upk_core::event::StateName;

    fn rec() -> Record {
        Record {
            seq: 0,
            wall_us: 0,
            mono_us: 0,
            from: StateName::Running,
            to: StateName::Running,
            pid: None,
            cause: "test".into(),
            kind: EventKind::STARTED,
        }
    }

    fn lost(r: &Record) -> Option<u64> {
        match r.kind {
            EventKind::Lost { count, .. } => Some(count),
            _ => None,
        }
    }

    #[test]
    fn sequence_numbers_continue_and_ack_releases() {
        let mut ring = Ring::new(8, 41, 41);
        assert_eq!(ring.push(rec()).seq, 42);
        ring.push(rec());
        ring.push(rec());
        ring.ack(43);
        assert_eq!(ring.after(0).map(|r| r.seq).collect::<Vec<_>>(), [44]);
        assert_eq!(ring.acked(), 43);
    }

    #[test]
    fn overflow_counts_every_lost_record_exactly() {
        for (cap, pushed) in [(4usize, 10u64), (2, 5), (5, 6), (64, 1000)] {
            let mut ring = Ring::new(cap, 0, 0);
            for _ in 0..pushed {
                ring.push(rec());
            }
            let held: Vec<&Record> = ring.after(0).collect();
            assert_eq!(held.len(), cap);
            let marker = held[0];
            let count = lost(marker).expect("lost record first");
            let kept = (cap - 1) as u64;
            assert_eq!(count, pushed - kept, "cap {cap} pushed {pushed}");
            assert_eq!(
                marker.seq,
                pushed - kept,
                "the marker stands for seqs 1..=count"
            );
            let seqs: Vec<u64> = held[1..].iter().map(|r| r.seq).collect();
            assert_eq!(seqs, ((pushed - kept + 1)..=pushed).collect::<Vec<_>>());
        }
    }

    #[test]
    fn no_loss_below_capacity_and_nearly_full_at_three_quarters() {
        let mut ring = Ring::new(8, 0, 0);
        for _ in 0..5 {
            ring.push(rec());
        }
        assert!(!ring.nearly_full());
        ring.push(rec());
        assert!(ring.nearly_full());
        assert!(ring.after(0).all(|r| lost(r).is_none()));
    }

    #[test]
    fn an_existing_lost_record_absorbs_overflow() {
        let mut ring = Ring::new(3, 10, 4);
        ring.account_unacked(rec(), "previous buddy killed");
        let first = ring.after(0).next().expect("first");
        assert_eq!((lost(first), first.seq), (Some(6), 10), "stands for 5..=10");
        for _ in 0..4 {
            ring.push(rec()); // 11..=14; 11 and 12 fold into the marker
        }
        let first = ring.after(0).next().expect("first");
        assert_eq!((lost(first), first.seq), (Some(8), 12), "stands for 5..=12");
    }
}
