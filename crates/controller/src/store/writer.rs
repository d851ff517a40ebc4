//! The store-writer thread: the one read-write connection, fed over a channel.
//!
//! Invariants: work runs in the order it was submitted; everything queued when the thread
//! wakes is merged into one transaction (up to [`MAX_MERGE`] items); every submitted batch is
//! reported exactly once through the callback, committed or not, and a ticket is reported
//! committed only after COMMIT returned. When the store cannot be written (full, read-only,
//! I/O, busy) the events of the failed transaction are dropped here (they are still in the
//! buddies' rings, unacknowledged, and the controller sends them again), while its commands,
//! configuration changes and desired states, which exist nowhere else, are carried into the
//! next transaction (at most [`MAX_CARRY`] commands and changes, the oldest dropped beyond
//! that; a service's last desired state only). The thread keeps running and tries
//! again with whatever comes next; an empty batch is a valid retry, made on a connection opened
//! anew. A database file deleted while in use is written back from the open connection before
//! the next transaction, so nothing it committed is lost.
//!
//! The controller's loop never waits for this thread: it queues batches ([`StoreWriter::submit`],
//! which carry desired states too) and jobs ([`StoreWriter::post`]), and learns
//! of each ticket's commit through the callback, which wakes its poll. [`StoreWriter::with_store`]
//! is a blocking round trip, for tests and tools, not for a loop.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::write::{self, Batch, Committed};
use super::{Result, Store, StoreError};
use upk_core::status::Want;

/// Most items (records, commands, changes) merged into one transaction.
pub const MAX_MERGE: usize = 100_000;

/// Most commands and configuration changes kept for a retry while the store is unwritable.
pub const MAX_CARRY: usize = 10_000;

/// The report of one transaction.
#[derive(Debug)]
pub struct Outcome {
    /// The tickets ([`StoreWriter::submit`]) of the batches it held, in submission order.
    pub tickets: Vec<u64>,
    /// What was committed, or why nothing was: ack a buddy only up to `seqs` of an `Ok`.
    pub result: Result<Committed>,
    /// Commands and configuration changes waiting for the next transaction.
    pub carried: usize,
    /// Commands and configuration changes dropped so far because the carry was full.
    pub dropped: u64,
}

type Call = Box<dyn FnOnce(&mut Store) + Send>;

enum Msg {
    Batch(u64, Batch),
    Call(Call),
}

/// The handle of the writer thread. Dropping it (or [`StoreWriter::shutdown`]) finishes the
/// queued work and joins the thread.
pub struct StoreWriter {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    next: AtomicU64,
    /// Items (records, commands, changes) of submitted batches the thread has not taken yet.
    queued: Arc<AtomicU64>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Opens (creating, migrating) the store at `path` on the caller's thread, so that a store
    /// that cannot be opened is an error here, then starts the thread. `on_done` runs on the
    /// writer thread once per transaction: keep it short (send to a channel, wake a poll loop).
    pub fn spawn<F>(path: &Path, on_done: F) -> Result<StoreWriter>
    where
        F: FnMut(Outcome) + Send + 'static,
    {
        let store = Store::open(path)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicU64::new(0));
        let taken = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("upk-store".into())
            .spawn(move || run(store, rx, &taken, on_done))
            .map_err(|source| StoreError::Create {
                path: "(the store writer thread)".into(),
                source,
            })?;
        Ok(StoreWriter {
            tx: Some(tx),
            thread: Some(thread),
            next: AtomicU64::new(1),
            queued,
        })
    }

    /// [`StoreWriter::spawn`] with the outcomes sent to a channel.
    pub fn spawn_with_channel(path: &Path) -> Result<(StoreWriter, Receiver<Outcome>)> {
        let (tx, rx) = mpsc::channel();
        let writer = StoreWriter::spawn(path, move |o| {
            // The receiver gone means nobody is listening any more: nothing to do.
            let _ = tx.send(o);
        })?;
        Ok((writer, rx))
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(msg)
            .map_err(|_| StoreError::WriterGone)
    }

    /// Queues `batch`; returns its ticket, which a later [`Outcome`] names.
    pub fn submit(&self, batch: Batch) -> Result<u64> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let items = batch.len() as u64;
        self.queued.fetch_add(items, Ordering::Relaxed);
        if let Err(e) = self.send(Msg::Batch(ticket, batch)) {
            self.queued.fetch_sub(items, Ordering::Relaxed);
            return Err(e);
        }
        Ok(ticket)
    }

    /// Items (records, commands, configuration changes) submitted and not yet taken into a
    /// transaction by the thread: the store's queue depth (metrics).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues desired states to record, as a batch of their own (merged like any other):
    /// returns its ticket. A service the store does not know is skipped with a warning.
    pub fn set_desired(&self, wants: Vec<(String, Want)>) -> Result<u64> {
        self.submit(Batch {
            wants,
            ..Batch::default()
        })
    }

    /// Runs `f` on the writer's connection, after the work queued before it, and waits for its
    /// result: the size limit, queries of what was written (tests, tools). It blocks for as long
    /// as the queue ahead of it takes: never call it from a poll loop.
    pub fn with_store<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> R + Send + 'static,
    {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.send(Msg::Call(Box::new(move |s| {
            let _ = rtx.send(f(s));
        })))?;
        rrx.recv().map_err(|_| StoreError::WriterGone)
    }

    /// Runs `f` on the writer's connection after the work queued before it, without waiting
    /// for it (desired states, retention): what it returns is dropped.
    pub fn post<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&mut Store) + Send + 'static,
    {
        self.send(Msg::Call(Box::new(f)))
    }

    /// Finishes the queued work and stops the thread.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(StoreError::WriterGone),
            _ => Ok(()),
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // A panicked writer was already reported to submitters as WriterGone.
        let _ = self.stop();
    }
}

fn merge(into: &mut Committed, part: Committed) {
    for (service, seq) in part.seqs {
        let e = into.seqs.entry(service).or_insert(0);
        *e = (*e).max(seq);
    }
    into.inserted += part.inserted;
    into.rows.extend(part.rows);
    into.duplicates += part.duplicates;
    into.commands += part.commands;
    into.config_changes += part.config_changes;
    // A later part read its counters after the earlier parts' rows: it wins.
    into.counters.extend(part.counters);
}

/// Makes the connection fit to write before a transaction: the file deleted under it is
/// recreated from it ([`Store::recover_if_replaced`]); after a failure that may pass (a store
/// made read-only, then writable again) the connection is opened anew, since SQLite keeps
/// some of those failures for the life of a connection.
fn prepare(store: &mut Store, reopen: &mut bool) -> Result<()> {
    if let Some(said) = store.recover_if_replaced()? {
        eprintln!("upkeeper: {said}");
        *reopen = false;
    }
    if std::mem::take(reopen) {
        if let Err(e) = store.reopen() {
            *reopen = true;
            return Err(e);
        }
    }
    Ok(())
}

fn commit(store: &mut Store, parts: &[&Batch]) -> Result<Committed> {
    let tx = store.conn.transaction()?;
    let mut done = Committed::default();
    for part in parts {
        merge(&mut done, write::apply(&tx, part)?);
    }
    tx.commit()?;
    Ok(done)
}

/// Keeps what exists nowhere else for the next transaction: commands, configuration changes
/// and desired states (one per service, the last: bounded by the services, not the commands).
fn carry_over(carry: &mut Batch, part: &mut Batch) {
    carry.commands.append(&mut part.commands);
    carry.config_changes.append(&mut part.config_changes);
    for (service, want) in part.wants.drain(..) {
        carry.wants.retain(|(s, _)| *s != service);
        carry.wants.push((service, want));
    }
}

fn run<F: FnMut(Outcome)>(mut store: Store, rx: Receiver<Msg>, queued: &AtomicU64, mut on_done: F) {
    let take = |b: &Batch| queued.fetch_sub(b.len() as u64, Ordering::Relaxed);
    let mut carry = Batch::default();
    let mut dropped = 0u64;
    let mut deferred: Option<Msg> = None;
    let mut reopen = false;
    loop {
        let msg = match deferred.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        let (ticket, batch) = match msg {
            Msg::Call(f) => {
                f(&mut store);
                continue;
            }
            Msg::Batch(t, b) => {
                take(&b);
                (t, b)
            }
        };
        let mut parts: Vec<(Option<u64>, Batch)> = Vec::new();
        if !carry.is_empty() {
            parts.push((None, std::mem::take(&mut carry)));
        }
        let mut size = batch.len();
        parts.push((Some(ticket), batch));
        while size < MAX_MERGE {
            match rx.try_recv() {
                Ok(Msg::Batch(t, b)) => {
                    take(&b);
                    size += b.len();
                    parts.push((Some(t), b));
                }
                Ok(call) => {
                    deferred = Some(call);
                    break;
                }
                Err(_) => break,
            }
        }
        let all: Vec<&Batch> = parts.iter().map(|(_, b)| b).collect();
        let result = prepare(&mut store, &mut reopen).and_then(|()| commit(&mut store, &all));
        reopen |= matches!(&result, Err(e) if e.is_unwritable());
        let retry_alone = matches!(&result, Err(e) if !e.is_unwritable()) && parts.len() > 1;
        if retry_alone {
            // One bad batch must not sink the others merged with it: try each on its own.
            for (ticket, mut part) in parts {
                let result = commit(&mut store, &[&part]);
                if matches!(&result, Err(e) if e.is_unwritable()) {
                    carry_over(&mut carry, &mut part);
                }
                on_done(Outcome {
                    tickets: ticket.into_iter().collect(),
                    result,
                    carried: carry.len(),
                    dropped,
                });
            }
            continue;
        }
        if matches!(&result, Err(e) if e.is_unwritable()) {
            for (_, part) in parts.iter_mut() {
                carry_over(&mut carry, part);
            }
            // Desired states are bounded by the services already: the bound is on the rest.
            let kept = carry.commands.len() + carry.config_changes.len();
            let over = kept.saturating_sub(MAX_CARRY);
            let from_commands = over.min(carry.commands.len());
            carry.commands.drain(..from_commands);
            carry.config_changes.drain(..over - from_commands);
            dropped += over as u64;
        }
        on_done(Outcome {
            tickets: parts.iter().filter_map(|(t, _)| *t).collect(),
            result,
            carried: carry.len(),
            dropped,
        });
    }
}
