//! The controller's foreground mode: keep the fleet in line with `SvcConfigPath`, one buddy
//! per service, and every buddy event in the audit store.
//!
//! One poll loop over a signalfd, the controller socket (buddies phone home to it), one
//! subscription per buddy, a wake-up from the store's writer thread, and the inotify watch on
//! `SvcConfigPath`; one deadline (buddy retries, the watcher's settle delay). Issue 3 grows this
//! into the whole controller (client socket, ordering that waits for prerequisites).
//!
//! - **Configuration.** Every rescan ([`load::scan`]) is compared with what is in force
//!   ([`diff`]): new services are rendered and get a buddy (in start-up order, [`order`]);
//!   changed ones are re-rendered, their buddy re-reads its settings (SIGHUP) and, if the
//!   service runs, restarts it; services whose definition disappeared are unconfigured (their
//!   buddy shut down) only with `UnconfigureOnFileRemoval`, and otherwise kept. A file that
//!   fails validation changes nothing: its services stay as they were.
//! - **Events.** Each record is printed as one line and written to the store
//!   (`StateDir/upkeeper.db`); a buddy is acknowledged only up to what the store *committed*.
//!   When the store cannot be written, the links are dropped and re-subscribed a second later,
//!   so the buddies send their unacknowledged backlog again (the store skips what it has).
//! - **Buddies.** A buddy that cannot be reached is (re)spawned at most once a second, in its
//!   own session; its lock makes a duplicate exit at once, and a new buddy adopts a service
//!   left running. SIGTERM/SIGINT end the controller and leave buddies and services running.
//!
//! [`load::scan`]: crate::load::scan
//! [`diff`]: crate::diff
//! [`order`]: crate::order

use crate::diff::{config_hash, diff};
use crate::load::{self, Scan};
use crate::render::Renderer;
use crate::store::{Batch, ConfigChange, StoreWriter};
use crate::watch::Watcher;
use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use upk_core::config::{Controller, Service};
use upk_core::event::StateName;
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, LineBuf, Role, PROTOCOL_VERSION};
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::Status;

const RETRY: Duration = Duration::from_secs(1);

/// One event stream: a subscription we opened, or a buddy that phoned home.
struct Link {
    stream: UnixStream,
    input: LineBuf,
    service: String,
}

impl Link {
    /// Sends one request on the link (the buddy's reply is read and ignored by [`pump`]).
    fn request(&mut self, body: BuddyRequest) -> std::io::Result<()> {
        self.stream
            .write_all(&proto::encode(&Envelope { id: None, body }))
    }
}

/// A configured service and its buddy.
struct Member {
    svc: Service,
    hash: String,
    file: PathBuf,
    dir: RunDir,
    child: Option<Child>,
    retry_at: Instant,
}

/// What is in force.
struct Fleet<'a> {
    ctl: &'a Controller,
    renderer: &'a Renderer,
    writer: StoreWriter,
    members: BTreeMap<String, Member>,
    links: Vec<Link>,
}

/// Runs the controller in the foreground until SIGTERM/SIGINT.
pub fn run(ctl: &Controller, renderer: &Renderer) -> anyhow::Result<()> {
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
    let sock = ctl.socket_path();
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    listener.set_nonblocking(true)?;
    let mut watcher = Watcher::new(&ctl.svc_config_path)
        .with_context(|| format!("watching {}", ctl.svc_config_path.display()))?;

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

    let mut fleet = Fleet {
        ctl,
        renderer,
        writer,
        members: BTreeMap::new(),
        links: Vec::new(),
    };
    fleet.apply(load::scan(ctl))?;
    eprintln!(
        "upkeeper: {} services under {}; events follow (Ctrl-C leaves them running)",
        fleet.members.len(),
        ctl.svc_run_path.display()
    );
    loop {
        let now = Instant::now();
        fleet.reach_buddies(now);
        let next = fleet
            .members
            .values()
            .map(|m| m.retry_at)
            .chain(watcher.deadline())
            .min();
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
            PollFd::new(watcher.fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            fleet
                .links
                .iter()
                .map(|l| PollFd::new(l.stream.as_fd(), PollFlags::POLLIN)),
        );
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
            for m in fleet.members.values_mut() {
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
                fleet.links.push(Link {
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
                fleet.committed(outcome.result);
            }
        }
        if ready[3] {
            watcher
                .read(Instant::now())
                .context("reading inotify events")?;
        }
        let mut dead = Vec::new();
        let mut batch = Batch::default();
        for (i, link) in fleet.links.iter_mut().enumerate() {
            if ready.get(i + 4) == Some(&true) && pump(link, &mut batch).is_err() {
                dead.push(i);
            }
        }
        for i in dead.into_iter().rev() {
            let gone = fleet.links.swap_remove(i);
            if let Some(m) = fleet.members.get_mut(&gone.service) {
                m.retry_at = Instant::now() + RETRY;
            }
        }
        if !batch.is_empty() {
            fleet
                .writer
                .submit(batch)
                .context("the audit store's writer stopped")?;
        }
        if watcher.take_due(Instant::now()) {
            fleet.apply(load::scan(ctl))?;
        }
    }
}

impl Fleet<'_> {
    /// Brings the fleet in line with a scan of the configuration.
    fn apply(&mut self, scan: Scan) -> anyhow::Result<()> {
        scan.errors.iter().for_each(|e| eprintln!("{e}"));
        // Services of a file that failed validation stay as they are.
        let kept: Vec<(Service, PathBuf)> = self
            .members
            .values()
            .filter(|m| scan.bad_files.contains(&m.file))
            .map(|m| (m.svc.clone(), m.file.clone()))
            .collect();
        let all: Vec<(Service, PathBuf)> = scan.services.into_iter().chain(kept).collect();
        let services: Vec<Service> = all.iter().map(|(s, _)| s.clone()).collect();
        let plan = crate::order::plan(&services);
        for (id, why) in &plan.blocked {
            if !self.members.contains_key(&id.to_string()) {
                eprintln!("upkeeper: not starting {id}: {why}");
            }
        }
        // Startable services in start-up order; blocked ones that already run stay as they are.
        let mut wanted: Vec<&(Service, PathBuf)> = plan
            .order
            .iter()
            .filter_map(|id| all.iter().find(|(s, _)| s.id == *id))
            .collect();
        wanted.extend(all.iter().filter(|(s, _)| {
            plan.blocked.contains_key(&s.id) && self.members.contains_key(&s.id.to_string())
        }));
        let current: BTreeMap<_, _> = self
            .members
            .values()
            .map(|m| (m.svc.id.clone(), m.hash.clone()))
            .collect();
        let wanted_services: Vec<Service> = wanted.iter().map(|(s, _)| s.clone()).collect();
        let changes = diff(&current, &wanted_services);

        let mut touched: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (svc, file) in wanted {
            if changes.unchanged.contains(&svc.id) {
                continue;
            }
            let id = svc.id.to_string();
            // One service that cannot be set up is reported and skipped; the rest go on.
            match self.configure(svc, file) {
                Ok(()) => touched.entry(file.clone()).or_default().push(id),
                Err(e) => eprintln!("upkeeper: {id}: {e:#}"),
            }
        }
        let mut removed = 0;
        for id in &changes.gone {
            let key = id.to_string();
            let Some(m) = self.members.get(&key) else {
                continue;
            };
            if !m.svc.unconfigure_on_file_removal {
                eprintln!(
                    "upkeeper: keeping {id}: its definition is gone, and UnconfigureOnFileRemoval is false"
                );
                continue;
            }
            touched.entry(m.file.clone()).or_default().push(key.clone());
            self.unconfigure(&key);
            removed += 1;
        }
        for (file, services) in touched {
            let hash = std::fs::read(&file)
                .map(|b| crate::diff::content_hash(&b))
                .unwrap_or_default();
            let change = ConfigChange {
                wall_us: upk_core::time::wall_us(),
                file: file.display().to_string(),
                hash,
                services,
            };
            self.writer.submit(Batch {
                config_changes: vec![change],
                ..Batch::default()
            })?;
        }
        eprintln!(
            "upkeeper: configuration applied: {} added, {} changed, {} removed, {} unchanged",
            changes.added.len(),
            changes.changed.len(),
            removed,
            changes.unchanged.len()
        );
        Ok(())
    }

    /// Sets up a new service, or takes a changed definition into use.
    fn configure(&mut self, svc: &Service, file: &std::path::Path) -> anyhow::Result<()> {
        let id = svc.id.to_string();
        if !self.members.contains_key(&id) {
            let (sid, uuid) = (id.clone(), svc.uuid.clone());
            self.writer
                .with_store(move |s| s.ensure_service(&sid, uuid.as_deref()))??;
        }
        let dir = self.render(svc)?;
        let hash = config_hash(svc);
        if let Some(m) = self.members.get_mut(&id) {
            // Changed: the buddy re-reads its settings, and a running service restarts.
            (m.svc, m.hash, m.file, m.dir) = (svc.clone(), hash, file.to_owned(), dir);
            self.refresh_buddy(&id);
        } else {
            let member = Member {
                svc: svc.clone(),
                hash,
                file: file.to_owned(),
                dir,
                child: None,
                retry_at: Instant::now(),
            };
            self.members.insert(id, member);
        }
        Ok(())
    }

    fn render(&self, svc: &Service) -> anyhow::Result<RunDir> {
        let settings = Settings {
            service: svc.clone(),
            controller_socket: self.ctl.socket_path(),
            polling_interval: self.ctl.buddy_polling_interval,
        };
        let dir = self
            .renderer
            .render(svc, &self.ctl.svc_run_path, &settings)?;
        let (id, hash) = (svc.id.to_string(), config_hash(svc));
        self.writer
            .with_store(move |s| s.set_config_hash(&id, &hash))??;
        Ok(dir)
    }

    /// After a re-render: SIGHUP makes the buddy re-read its settings; a running service is
    /// restarted so that it runs the new scripts.
    fn refresh_buddy(&mut self, id: &str) {
        let Some(m) = self.members.get(id) else {
            return;
        };
        let status = Status::read(&m.dir.status()).ok().flatten();
        if let Some(st) = &status {
            // Only a process that is the buddy of this directory gets the signal.
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", st.buddy_pid)).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("upk_buddy") {
                let pid = nix::unistd::Pid::from_raw(st.buddy_pid);
                let _ = nix::sys::signal::kill(pid, Signal::SIGHUP);
            }
        }
        if status.is_some_and(|s| s.state == StateName::Running) {
            self.tell(id, BuddyRequest::Restart);
        }
    }

    /// Sends a request to the buddy of `id`: on its subscription if there is one, else on a
    /// connection of its own (the reply is not awaited).
    fn tell(&mut self, id: &str, body: BuddyRequest) {
        if let Some(link) = self.links.iter_mut().find(|l| l.service == id) {
            if link.request(body.clone()).is_ok() {
                return;
            }
        }
        if let Some(m) = self.members.get(id) {
            if let Ok(mut s) = UnixStream::connect(m.dir.socket()) {
                let _ = s.write_all(&proto::encode(&Envelope { id: None, body }));
            }
        }
    }

    /// Shuts the buddy of `id` down (it stops the service first) and forgets the service. The
    /// run directory and its logs stay.
    fn unconfigure(&mut self, id: &str) {
        self.tell(id, BuddyRequest::Shutdown);
        if self.members.remove(id).is_some() {
            let key = id.to_owned();
            let _ = self.writer.with_store(move |s| s.mark_removed(&key));
        }
    }

    /// Subscribes to every buddy not linked yet, spawning the ones that cannot be reached.
    fn reach_buddies(&mut self, now: Instant) {
        for (id, m) in self.members.iter_mut() {
            if m.retry_at > now || self.links.iter().any(|l| l.service == *id) {
                continue;
            }
            m.retry_at = now + RETRY;
            match subscribe(&m.dir, id) {
                Ok(link) => self.links.push(link),
                Err(_) => spawn_buddy(&self.ctl.upk_buddy_path, id, m),
            }
        }
    }

    /// The store's answer to a batch: acknowledge what it committed, or re-subscribe later.
    fn committed(&mut self, result: crate::store::Result<crate::store::Committed>) {
        match result {
            Ok(committed) => {
                for link in self.links.iter_mut() {
                    if let Some(&seq) = committed.seqs.get(&link.service) {
                        let _ = link.request(BuddyRequest::Ack { seq });
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "upkeeper: cannot write the audit store ({e}); events stay with the buddies and are sent again in a second"
                );
                if e.is_unwritable() {
                    self.links.clear();
                    let later = Instant::now() + RETRY;
                    self.members.values_mut().for_each(|m| m.retry_at = later);
                }
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

fn spawn_buddy(buddy: &PathBuf, id: &str, m: &mut Member) {
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
        Err(e) => eprintln!("upkeeper: {id}: cannot start {}: {e}", buddy.display()),
    }
}
