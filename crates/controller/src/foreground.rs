//! The controller's loop, `upkeeper run`: keep the fleet in line with `SvcConfigPath`, every
//! buddy event in the audit store, and clients answered.
//!
//! One `poll` over a signalfd, the controller socket `StateDir/upkeeper.sock` (clients, and
//! buddies phoning home), one event link per buddy ([`fleet`]), every client connection
//! ([`server`]), a wake-up from the store's writer thread, and the inotify watch on
//! `SvcConfigPath` ([`watch`]), and, when `MetricsListen` is set, the metrics listener and its
//! connections ([`metrics`]); one deadline (buddies to reach, the watcher's settle delay,
//! hourly retention, scrapers' idle time). Nothing here blocks on a peer: every socket is
//! non-blocking, and a scrape is rendered from memory.
//!
//! Events read in one round form one store batch, together with the commands audited in it;
//! the answers to those commands go out once that batch is committed, so `done` means audited.
//! A buddy is acknowledged only up to what the store *committed*, and subscribers are sent
//! only committed events (with their row ids, the cursor a client resumes from). When the
//! store cannot be written, the links are dropped and re-subscribed a second later, so the
//! buddies send their unacknowledged backlog again (the store skips what it has).
//!
//! Data goes one way: configuration is loaded and rendered into the fleet ([`Fleet::apply`]),
//! the fleet's links feed the store, the store's commits feed the server's subscribers and the
//! acks. The server only reads the fleet; what it needs done it returns as [`Intent`]s, which
//! this loop carries out. The loop never waits for the store: writes are queued
//! to its writer thread, and each commit comes back through the writer's wake-up; an operator's
//! command is answered once the desired state it leaves is committed.
//!
//! A lock on `StateDir/upkeeper.lock` makes a second controller on the same state exit at once.
//! SIGTERM and SIGINT end the controller and leave buddies and services running.
//!
//! [`fleet`]: crate::fleet
//! [`server`]: crate::server
//! [`watch`]: crate::watch
//! [`metrics`]: crate::metrics

use crate::desired::Desired;
use crate::fleet::{Fleet, Link};
use crate::load;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::server::{Intent, Policy, Server};
use crate::store::{Batch, Retention, Store, StoreWriter};
use crate::storewatch::StoreWatch;
use crate::watch::Watcher;
use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use upk_core::config::Controller;
use upk_core::proto::BuddyReply;
use upk_core::status::Want;

/// How often the store's retention bounds are applied.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// How long after start-up retention first runs.
const RETENTION_FIRST: Duration = Duration::from_secs(60);

/// How soon to look again while retention works through its chunks.
const RETENTION_AGAIN: Duration = Duration::from_millis(500);

/// Retention is not queued ([`retention_step`]).
const RETENTION_IDLE: u8 = 0;
/// A chunk is queued or running on the writer thread.
const RETENTION_QUEUED: u8 = 1;
/// The last chunk left rows to delete.
const RETENTION_MORE: u8 = 2;
/// The last chunk left nothing: done until the next period.
const RETENTION_DONE: u8 = 3;

/// Descriptors polled before the links and clients: signals, listener, writer wake-up,
/// configuration watch, store watch.
const FIXED_FDS: usize = 5;

/// Runs the controller in the foreground until SIGTERM/SIGINT.
pub fn run(ctl: &Controller, renderer: &Renderer) -> anyhow::Result<()> {
    // Before any thread or buddy starts, so that they inherit it (upk_core::sched).
    upk_core::sched::batch();
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGCHLD);
    mask.thread_block().context("sigprocmask")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;

    for dir in [&ctl.state_dir, &ctl.svc_config_path] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _lock = take_lock(ctl)?;
    let sock = ctl.socket_path();
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    // Anyone may connect; the peer's credentials decide what it may do.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    listener.set_nonblocking(true)?;
    let mut watcher = Watcher::new(&ctl.svc_config_path)
        .with_context(|| format!("watching {}", ctl.svc_config_path.display()))?;

    let db = ctl.state_dir.join("upkeeper.db");
    let (wake_rx, wake_tx) = UnixStream::pair().context("socketpair")?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (outcomes_tx, outcomes) = std::sync::mpsc::channel();
    let wake_recovered = wake_tx.try_clone().context("socketpair")?;
    let writer = StoreWriter::spawn(&db, move |o| {
        // Runs on the writer thread: hand over and wake the loop, nothing else.
        let _ = outcomes_tx.send(o);
        let _ = (&wake_tx).write(&[1]);
    })
    .with_context(|| format!("opening the audit store {}", db.display()))?;
    let mut store_watch =
        StoreWatch::new(&db).with_context(|| format!("watching {}", ctl.state_dir.display()))?;
    let reader = Store::open_read_only(&db)
        .with_context(|| format!("opening the audit store {} for queries", db.display()))?;
    // Read once, here: from now on the fleet keeps the desired states in memory.
    let desired = reader
        .desired_all()
        .with_context(|| format!("reading desired states from {}", db.display()))?;
    // Off unless MetricsListen asks for it; a port that cannot be bound is fatal here, before
    // the loop, like the socket.
    let mut metrics = match ctl.metrics_listen {
        None => None,
        Some(addr) => {
            let counters = reader
                .counters()
                .with_context(|| format!("reading the metrics' counters from {}", db.display()))?;
            let m = Metrics::start(addr, counters)
                .with_context(|| format!("MetricsListen: cannot listen on {addr}"))?;
            Some(m)
        }
    };
    let policy = Policy {
        own_uid: nix::unistd::geteuid().as_raw(),
        control_group: ctl.control_group,
        read_group: ctl.read_group,
    };
    let mut server = Server::new(policy, reader);
    let retention = Retention {
        max_age: ctl
            .history_max_age_days
            .map(|d| Duration::try_from_secs_f64(d * 86_400.0).unwrap_or(Duration::MAX)),
        max_rows: ctl.history_max_events,
    };
    // Not at once: start-up links and stores first; retention then runs in chunks.
    let mut next_retention = Instant::now() + RETENTION_FIRST;
    let retention_state = std::sync::Arc::new(AtomicU8::new(RETENTION_IDLE));

    let mut fleet = Fleet::new(ctl, renderer, writer, Desired::new(desired));
    // Desired states queued for the store: ticket -> service, and the relayed request whose
    // answer waits for it.
    let mut held: Held = BTreeMap::new();
    // Answers to commands, by the ticket of the batch that holds their audit rows.
    let mut audited: BTreeMap<u64, Vec<crate::server::Answer>> = BTreeMap::new();
    fleet.apply(load::scan(ctl))?;
    eprintln!(
        "upkeeper: {} services under {}; serving {}; events follow (Ctrl-C leaves them running)",
        fleet.members.len(),
        ctl.svc_run_path.display(),
        sock.display()
    );
    if let Some(addr) = metrics.as_ref().and_then(|m| m.endpoint.local_addr().ok()) {
        eprintln!("upkeeper: serving metrics on http://{addr}/metrics");
    }
    loop {
        let now = Instant::now();
        if next_retention <= now {
            next_retention = now + retention_step(&fleet, &retention, &retention_state)?;
        }
        if fleet.deadline().is_some_and(|d| d <= now) {
            fleet.reach_buddies(now);
        }
        if server.deadline().is_some_and(|d| d <= now) {
            server.expire_refusals(now);
        }
        let scrapes = metrics.as_mut().map(|m| &mut m.endpoint);
        if let Some(e) = scrapes.filter(|e| e.deadline().is_some_and(|d| d <= now)) {
            e.expire(now);
        }
        let next = [
            fleet.deadline(),
            watcher.deadline(),
            server.deadline(),
            Some(next_retention),
            metrics.as_ref().and_then(|m| m.endpoint.deadline()),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
            PollFd::new(watcher.fd(), PollFlags::POLLIN),
            PollFd::new(store_watch.fd(), PollFlags::POLLIN),
        ];
        let links = fleet.links.len();
        fds.extend(fleet.links.iter().map(|l| {
            let flags = if l.wants_write() {
                PollFlags::POLLIN | PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            PollFd::new(l.stream.as_fd(), flags)
        }));
        let clients: Vec<u64> = server.fds().map(|(t, _, _)| t).collect();
        fds.extend(server.fds().map(|(_, stream, out)| {
            let flags = if out {
                PollFlags::POLLIN | PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            PollFd::new(stream.as_fd(), flags)
        }));
        // The metrics listener and its connections come last.
        let metrics_at = FIXED_FDS + links + clients.len();
        let mut scrapers = Vec::new();
        if let Some(m) = &metrics {
            fds.push(PollFd::new(m.endpoint.listener_fd(), PollFlags::POLLIN));
            for (token, fd, out) in m.endpoint.fds() {
                let flags = if out {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(fd, flags));
                scrapers.push(token);
            }
        }
        let wait = next.map_or(60_000, |n| {
            n.saturating_duration_since(now).as_millis().min(60_000) + 1
        });
        match nix::poll::poll(&mut fds, PollTimeout::from(wait as u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                if info.ssi_signo != Signal::SIGCHLD as u32 {
                    eprintln!("upkeeper: exiting; buddies and services keep running");
                    return Ok(());
                }
            }
            fleet.reap();
        }
        if ready[1] {
            server.accept_all(&listener);
        }
        if ready[2] {
            let mut drain = [0u8; 64];
            while matches!((&wake_rx).read(&mut drain), Ok(n) if n > 0) {}
            while let Ok(outcome) = outcomes.try_recv() {
                for ticket in &outcome.tickets {
                    // Answers wait for the commit of their commands' audit rows, and of the
                    // desired states those commands left.
                    if let Some(answers) = audited.remove(ticket) {
                        server.answer_audited(answers);
                    }
                    for (service, _, rid) in held.remove(ticket).unwrap_or_default() {
                        if let Err(e) = &outcome.result {
                            eprintln!("upkeeper: {service}: cannot store its desired state: {e}");
                        }
                        if let Some(rid) = rid {
                            server.stored(rid);
                        }
                    }
                }
                if let Some(m) = metrics.as_mut() {
                    match &outcome.result {
                        Ok(c) => m.observed.committed(c),
                        Err(_) => m.observed.write_failed(),
                    }
                }
                committed(&mut fleet, &mut server, outcome.result)
            }
            // The writer may have recreated the store's file: queries follow it, and so do the
            // desired states (a file put in its place has its own), but for those still queued.
            let reader = server.store_mut();
            if reader.replaced() {
                match reader.reopen().and_then(|()| reader.desired_all()) {
                    Ok(stored) => {
                        fleet.desired = Desired::new(stored);
                        for (service, want, _) in held.values().flatten() {
                            fleet.desired.set(service, *want);
                        }
                    }
                    Err(e) => {
                        eprintln!("upkeeper: cannot reopen the audit store for queries: {e}")
                    }
                }
            }
        }
        if ready[3] {
            watcher
                .read(Instant::now())
                .context("reading inotify events")?;
        }
        if ready[4] && store_watch.read() {
            let wake = wake_recovered.try_clone().context("socketpair")?;
            fleet.writer.post(move |s| {
                match s.recover_if_replaced() {
                    Ok(Some(said)) => eprintln!("upkeeper: {said}"),
                    Ok(None) => {}
                    Err(e) => eprintln!("upkeeper: {e}; events stay with the buddies"),
                }
                let _ = (&wake).write(&[1]);
            })?;
        }
        let mut round = Round::default();
        for (i, token) in clients.iter().enumerate() {
            if ready[FIXED_FDS + links + i] {
                let intents = server.ready(*token, &fleet);
                carry_out(&mut fleet, &mut server, &mut round, intents);
            }
        }
        // Links that a phoning buddy handed over just now may hold lines already: read them too.
        // Answers are handled once every link is read and the closed ones are gone, since an
        // answer may change the set of links (unconfigure).
        let mut replies = Vec::new();
        let mut closed = Vec::new();
        for (i, link) in fleet.links.iter_mut().enumerate() {
            if i >= links || ready[FIXED_FDS + i] {
                // Writable: the rest of what it was sent (an error breaks the link).
                let _ = link.flush();
                // An unreadable link (I/O error, garbage) is finished like a closed one.
                let (got, gone) = link.pump(&mut round.batch).unwrap_or((Vec::new(), true));
                replies.extend(got.into_iter().map(|(id, r)| (link.service.clone(), id, r)));
                if gone {
                    closed.push(i);
                }
            } else if link.is_broken() {
                // Reset (see `Link`): dropped like a closed link, and reached again.
                closed.push(i);
            }
        }
        let closed: Vec<String> = closed
            .into_iter()
            .rev()
            .map(|i| fleet.links.swap_remove(i).service)
            .collect();
        if let Some(m) = metrics.as_mut() {
            for (origin, records) in &round.batch.events {
                records.iter().for_each(|r| m.observed.record(origin, r));
            }
            for (service, _, reply) in &replies {
                if let BuddyReply::Ok { status, .. } = reply {
                    m.observed.status(service, status);
                }
            }
        }
        for (service, id, reply) in replies {
            answer(
                &mut fleet,
                &mut server,
                &mut held,
                &mut round,
                &service,
                id,
                reply,
            );
        }
        for service in closed {
            fleet.link_lost(&service);
            server.link_lost(&service);
        }
        if !round.batch.events.is_empty() {
            fleet.release_waiting();
        }
        round.batch.commands.append(&mut server.audit);
        let answers = server.take_answers();
        if !round.batch.is_empty() {
            let ticket = fleet
                .writer
                .submit(round.batch)
                .context("the audit store's writer stopped")?;
            if !answers.is_empty() {
                audited.insert(ticket, answers);
            }
            if !round.wants.is_empty() {
                held.insert(ticket, round.wants);
            }
        } else {
            server.answer_audited(answers);
        }
        if let Some(m) = metrics.as_mut() {
            // Scrapes last: they see this round's records and statuses.
            let now = Instant::now();
            if ready.get(metrics_at) == Some(&true) {
                m.endpoint.accept_all(now);
            }
            let clients = server.fds().count();
            for (i, token) in scrapers.iter().enumerate() {
                if ready.get(metrics_at + 1 + i) == Some(&true) {
                    m.ready(*token, now, &fleet, clients);
                }
            }
        }
        if watcher.take_due(Instant::now()) {
            fleet.apply(load::scan(ctl))?;
        }
    }
}

/// Desired states queued for the store, by the writer's ticket: the service, what it wants, and
/// the relayed request whose answer waits for the commit (none for a reconciliation).
type Held = BTreeMap<u64, Vec<(String, Want, Option<u64>)>>;

/// What one turn of the loop gives the store, in one transaction: the records read from the
/// links, the commands audited, and the desired states those commands left (with the
/// requests whose answers wait for them), so that a command costs one commit.
#[derive(Default)]
struct Round {
    batch: Batch,
    wants: Vec<(String, Want, Option<u64>)>,
}

/// A buddy's reply on its link: the answer to a relayed request, or (without an id) the status
/// that answers the controller's subscription.
fn answer(
    fleet: &mut Fleet,
    server: &mut Server,
    held: &mut Held,
    round: &mut Round,
    service: &str,
    id: Option<u64>,
    reply: BuddyReply,
) {
    match (id, reply) {
        (Some(rid), reply) => {
            let intents = server.answered(rid, reply);
            carry_out(fleet, server, round, intents);
        }
        (None, BuddyReply::Ok { status, .. }) => {
            if let Some((ticket, want)) = fleet.reconcile(service, &status) {
                held.insert(ticket, vec![(service.to_owned(), want, None)]);
            }
        }
        (None, BuddyReply::Error { message }) => eprintln!("upkeeper: {service}: {message}"),
        _ => {}
    }
}

/// Carries out what the server asked for, and tells it how it went where it waits.
fn carry_out(fleet: &mut Fleet, server: &mut Server, round: &mut Round, intents: Vec<Intent>) {
    for intent in intents {
        match intent {
            Intent::Relay {
                rid,
                service,
                request,
            } => {
                let sent = fleet
                    .link_now(&service)
                    .is_some_and(|l| l.request(Some(rid), request).is_ok());
                match sent {
                    true => server.relayed(rid),
                    false => server.unreachable(rid),
                }
            }
            Intent::Link {
                stream,
                hello,
                rest,
            } => {
                let mut link = Link::incoming(stream);
                link.feed(&hello, rest);
                fleet.links.push(link);
            }
            Intent::SetWant {
                rid,
                service,
                want,
                audit,
            } => {
                fleet.desired.set(&service, want);
                round.batch.wants.push((service.clone(), want));
                round.batch.commands.push(audit);
                round.wants.push((service, want, Some(rid)));
            }
            Intent::Unconfigure { service } => fleet.unconfigured_by_command(&service),
        }
    }
}

/// The store's answer to a batch: acknowledge and publish what it committed, or re-subscribe
/// later.
fn committed(
    fleet: &mut Fleet,
    server: &mut Server,
    result: crate::store::Result<crate::store::Committed>,
) {
    match result {
        Ok(committed) => {
            for link in fleet.links.iter_mut() {
                if let Some(&seq) = committed.seqs.get(&link.origin()) {
                    let ack = upk_core::proto::BuddyRequest::Ack { seq };
                    let _ = link.request(None, ack);
                }
            }
            server.publish(&committed.rows);
        }
        Err(e) => {
            eprintln!(
                "upkeeper: cannot write the audit store ({e}); events stay with the buddies and are sent again in a second"
            );
            if e.is_unwritable() {
                fleet.resubscribe_later();
            }
        }
    }
}

/// Drives retention: queues one chunk ([`crate::store::RETENTION_CHUNK`] rows a table) at a
/// time and returns when to look again: soon while chunks remain, in an hour once a chunk left
/// nothing. Each chunk is its own job on the writer, so batches queued meanwhile go in between.
fn retention_step(
    fleet: &Fleet,
    bounds: &Retention,
    state: &std::sync::Arc<AtomicU8>,
) -> anyhow::Result<Duration> {
    if bounds.max_age.is_none() && bounds.max_rows.is_none() {
        return Ok(RETENTION_EVERY);
    }
    match state.load(Ordering::Acquire) {
        RETENTION_QUEUED => return Ok(RETENTION_AGAIN),
        RETENTION_DONE => {
            state.store(RETENTION_IDLE, Ordering::Release);
            return Ok(RETENTION_EVERY);
        }
        _ => {}
    }
    state.store(RETENTION_QUEUED, Ordering::Release);
    let (bounds, state) = (*bounds, std::sync::Arc::clone(state));
    fleet.writer.post(move |s| {
        let next = match s.retention(&bounds, upk_core::time::wall_us()) {
            Ok(p) if p.more => RETENTION_MORE,
            Ok(_) => RETENTION_DONE,
            Err(e) => {
                eprintln!("upkeeper: retention failed: {e}");
                RETENTION_DONE
            }
        };
        state.store(next, Ordering::Release);
    })?;
    Ok(RETENTION_AGAIN)
}

/// Another controller runs on the same `StateDir`: a permanent failure (exit 100).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyRunning(String);

/// The lock that makes this the only controller on `StateDir`.
fn take_lock(ctl: &Controller) -> anyhow::Result<Flock<File>> {
    let path = ctl.state_dir.join("upkeeper.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = (&file).read_to_string(&mut holder);
            Err(AlreadyRunning(format!(
                "another controller (pid {}) is running on {}; exiting",
                holder.trim(),
                ctl.state_dir.display()
            ))
            .into())
        }
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
