//! The interim foreground mode: render every service, keep one buddy per service alive, and
//! take their events.
//!
//! This is the controller's skeleton (issue 3 replaces it): one poll loop over a signalfd, the
//! controller socket (for buddies that phone home), one subscription per buddy, and a wake-up
//! from the audit store's writer thread. Each record is printed as one line on stdout and
//! written to the store (`StateDir/upkeeper.db`); a buddy is acknowledged only up to what the
//! store has *committed*. When the store cannot be written, the links are dropped and
//! re-subscribed a second later, so the buddies send their unacknowledged backlog again (the
//! store skips what it already has): nothing is lost within the buddies' rings. A buddy that
//! cannot be reached is (re)spawned at most once a second; its lock makes a duplicate exit at
//! once, and a new buddy adopts a service left running. SIGTERM/SIGINT end the controller and
//! leave buddies and services running: they belong to the buddies.

use crate::store::{Batch, StoreWriter};
use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upk_core::config::{Controller, Service};
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, LineBuf, Role, PROTOCOL_VERSION};
use upk_core::rundir::{RunDir, Settings};

const RETRY: Duration = Duration::from_secs(1);

/// One event stream: a subscription we opened, or a buddy that phoned home.
struct Link {
    stream: UnixStream,
    input: LineBuf,
    service: String,
}

struct Member {
    id: String,
    dir: RunDir,
    child: Option<Child>,
    retry_at: Instant,
}

/// Renders and supervises `services` until SIGTERM/SIGINT.
pub fn run(
    ctl: &Controller,
    services: &[Service],
    renderer: &crate::render::Renderer,
) -> anyhow::Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGCHLD);
    mask.thread_block().context("sigprocmask")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;

    std::fs::create_dir_all(&ctl.state_dir)
        .with_context(|| format!("creating {}", ctl.state_dir.display()))?;
    let sock = ctl.socket_path();
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    listener.set_nonblocking(true)?;

    // Buddies start in dependency order; a service whose prerequisites cannot be met (missing,
    // cyclic) is neither rendered nor started, and the operator is told why. Waiting for each
    // prerequisite to be *running* before its dependants start comes with the controller.
    let plan = crate::order::plan(services);
    for (id, why) in &plan.blocked {
        eprintln!("upkeeper: not starting {id}: {why}");
    }
    let rank = |svc: &Service| plan.order.iter().position(|id| *id == svc.id);
    let mut ordered: Vec<&Service> = services.iter().filter(|s| rank(s).is_some()).collect();
    ordered.sort_by_key(|s| rank(s));
    let db = ctl.state_dir.join("upkeeper.db");
    let (wake_rx, wake_tx) = UnixStream::pair().context("socketpair")?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (outcomes_tx, outcomes) = std::sync::mpsc::channel();
    let writer = StoreWriter::spawn(&db, move |o| {
        // Runs on the writer thread: hand over and wake the loop, nothing else.
        let _ = outcomes_tx.send(o);
        let _ = (&wake_tx).write(&[1]);
    })
    .with_context(|| format!("opening the audit store {}", db.display()))?;
    let mut members = Vec::new();
    for svc in ordered {
        let (id, uuid) = (svc.id.to_string(), svc.uuid.clone());
        writer.with_store(move |s| s.ensure_service(&id, uuid.as_deref()))??;
        let settings = Settings {
            service: svc.clone(),
            controller_socket: sock.clone(),
            polling_interval: ctl.buddy_polling_interval,
        };
        let dir = renderer.render(svc, &ctl.svc_run_path, &settings)?;
        members.push(Member {
            id: svc.id.to_string(),
            dir,
            child: None,
            retry_at: Instant::now(),
        });
    }
    eprintln!(
        "upkeeper: {} services under {}; events follow (Ctrl-C leaves them running)",
        members.len(),
        ctl.svc_run_path.display()
    );
    let mut links: Vec<Link> = Vec::new();
    loop {
        let now = Instant::now();
        for m in members.iter_mut() {
            if m.retry_at > now || links.iter().any(|l| l.service == m.id) {
                continue;
            }
            m.retry_at = now + RETRY;
            match subscribe(&m.dir, &m.id) {
                Ok(link) => links.push(link),
                Err(_) => spawn_buddy(&ctl.upk_buddy_path, m),
            }
        }
        let next = members
            .iter()
            .map(|m| m.retry_at)
            .min()
            .unwrap_or(now + RETRY);
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            links
                .iter()
                .map(|l| PollFd::new(l.stream.as_fd(), PollFlags::POLLIN)),
        );
        let ms = next.saturating_duration_since(now).as_millis().min(60_000) as u16;
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
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
            for m in &mut members {
                if m.child
                    .as_mut()
                    .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
                {
                    m.child = None;
                }
            }
        }
        if ready[1] {
            while let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(true);
                links.push(Link {
                    stream,
                    input: LineBuf::default(),
                    service: String::new(),
                });
            }
        }
        if ready[2] {
            let mut drain = [0u8; 64];
            while matches!((&wake_rx).read(&mut drain), Ok(n) if n > 0) {}
            while let Ok(outcome) = outcomes.try_recv() {
                match outcome.result {
                    Ok(committed) => {
                        for link in links.iter_mut() {
                            if let Some(&seq) = committed.seqs.get(&link.service) {
                                let ack = BuddyRequest::Ack { seq };
                                let _ = link.stream.write_all(&proto::encode(&Envelope {
                                    id: None,
                                    body: ack,
                                }));
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("upkeeper: cannot write the audit store ({e}); events stay with the buddies and are sent again in a second");
                        if e.is_unwritable() {
                            links.clear();
                            members
                                .iter_mut()
                                .for_each(|m| m.retry_at = Instant::now() + RETRY);
                        }
                    }
                }
            }
        }
        let mut dead = Vec::new();
        let mut batch = Batch::default();
        for (i, link) in links.iter_mut().enumerate() {
            if ready.get(i + 3) == Some(&true) && pump(link, &mut batch).is_err() {
                dead.push(i);
            }
        }
        if !batch.is_empty() {
            writer
                .submit(batch)
                .context("the audit store's writer stopped")?;
        }
        for i in dead.into_iter().rev() {
            let gone = links.swap_remove(i);
            if let Some(m) = members.iter_mut().find(|m| m.id == gone.service) {
                m.retry_at = Instant::now() + RETRY;
            }
        }
    }
}

/// Opens a controller subscription to the buddy of `dir`.
fn subscribe(dir: &RunDir, id: &str) -> std::io::Result<Link> {
    let mut stream = UnixStream::connect(dir.socket())?;
    let hello = BuddyRequest::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Controller,
    };
    stream.write_all(&proto::encode(&Envelope {
        id: None,
        body: hello,
    }))?;
    stream.write_all(&proto::encode(&Envelope {
        id: None,
        body: BuddyRequest::Subscribe,
    }))?;
    stream.set_nonblocking(true)?;
    Ok(Link {
        stream,
        input: LineBuf::default(),
        service: id.to_owned(),
    })
}

/// Reads what a buddy sent: prints each record and adds it to `batch` for the store.
fn pump(link: &mut Link, batch: &mut Batch) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match link.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => link.input.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(e) => return Err(e),
        }
    };
    while let Some(line) = link.input.next_line().map_err(std::io::Error::other)? {
        match proto::decode::<BuddyReply>(&line).map(|e| e.body) {
            Ok(BuddyReply::Hello { service, .. }) if link.service.is_empty() => {
                link.service = service
            }
            Ok(BuddyReply::Event { record }) => {
                let when = upk_core::time::format_utc(record.wall_us);
                println!(
                    "{when} {} #{} {}",
                    link.service,
                    record.seq,
                    record.summary()
                );
                match batch.events.iter_mut().find(|(s, _)| *s == link.service) {
                    Some((_, records)) => records.push(record),
                    None => batch.events.push((link.service.clone(), vec![record])),
                }
            }
            Ok(BuddyReply::Error { message }) => eprintln!("upkeeper: {}: {message}", link.service),
            Ok(_) => {}
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    if closed {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn spawn_buddy(buddy: &PathBuf, m: &mut Member) {
    if m.child.is_some() {
        return;
    }
    let log = upk_core::fsutil::open_append(&m.dir.log_file("buddy"), 0o640);
    let mut cmd = Command::new(buddy);
    cmd.arg(m.dir.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Ok(f) = log {
        cmd.stderr(f);
    }
    // SAFETY: only sigprocmask and setsid run between fork and exec; both are signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty().thread_set_mask()?;
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(c) => m.child = Some(c),
        Err(e) => eprintln!("upkeeper: {}: cannot start {}: {e}", m.id, buddy.display()),
    }
}
