//! The fleet: one buddy per configured service, and one event link to each.
//!
//! [`Fleet::apply`] carries out what [`apply::plan`] decides for a scan of `SvcConfigPath`:
//! new services are registered in the store and rendered, changed ones re-rendered (their
//! buddy re-reads its settings, a running service restarts), gone ones unconfigured. Start-up
//! order ([`order`]) decides who comes first, and a service waits until every service it
//! needs is running.
//!
//! [`Fleet::reach_buddies`] keeps one subscription ([`Link`]) per buddy, spawning a buddy (in
//! its own session, at most once a second per service, [`reach`] decides) when none answers;
//! its lock makes a duplicate exit at once, and a new buddy adopts a service left running. The first answer of
//! a buddy after the controller starts is reconciled with the desired state ([`desired`]
//! decides, `PreferBuddyStateForStopped`/`PreferBuddyStateForRunning`). A service the store
//! already knows is rendered with the store's desired state, so `InitialState` applies only to
//! newly configured services.
//!
//! The fleet writes to the store only through queued work ([`StoreWriter::post`],
//! [`StoreWriter::submit`], [`StoreWriter::set_desired`]) and never waits for it: desired
//! states are read from memory ([`Desired`]).
//!
//! [`order`]: crate::order
//! [`desired`]: crate::desired
//! [`reach`]: crate::reach

use crate::apply::{self, InForce};
use crate::desired::{self, Desired};
use crate::diff::config_hash;
pub use crate::link::{Answer, Link};
use crate::load::Scan;
use crate::reach::{self, Reach};
use crate::render::Renderer;
use crate::store::{Batch, ConfigChange, Configured, StoreWriter};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use upk_core::config::{Controller, Service};
use upk_core::proto::{self, BuddyRequest, Envelope};
use upk_core::rundir::{RunDir, Settings};
use upk_core::status::{Status, Want};

pub use crate::reach::RETRY;

/// A configured service and its buddy.
pub struct Member {
    /// The resolved definition.
    pub svc: Service,
    hash: String,
    /// The file that defines it.
    pub file: PathBuf,
    /// Its run directory.
    pub dir: RunDir,
    /// When to reach its buddy, and the one this controller spawned.
    reach: Reach,
    /// Its buddy has answered this controller at least once (and was reconciled then).
    reconciled: bool,
    /// Not started yet: waiting for these prerequisites to be running.
    pub waiting_for: Vec<String>,
}

/// What is in force.
pub struct Fleet<'a> {
    ctl: &'a Controller,
    renderer: &'a Renderer,
    /// The audit store's writer.
    pub writer: StoreWriter,
    /// Configured services by id.
    pub members: BTreeMap<String, Member>,
    /// One per reachable buddy.
    pub links: Vec<Link>,
    /// Services unconfigured by a command, with the definition they had: they stay out until
    /// their definition changes or their file is written again.
    unconfigured: BTreeMap<String, apply::Unconfigured>,
    /// What each service should do, as stored.
    pub desired: Desired,
}

impl<'a> Fleet<'a> {
    /// An empty fleet; `desired` is what the store wants for each service it knows.
    pub fn new(
        ctl: &'a Controller,
        renderer: &'a Renderer,
        writer: StoreWriter,
        desired: Desired,
    ) -> Self {
        Fleet {
            ctl,
            renderer,
            writer,
            members: BTreeMap::new(),
            links: Vec::new(),
            unconfigured: BTreeMap::new(),
            desired,
        }
    }

    /// When [`Fleet::reach_buddies`] next has something to do: a linked buddy needs nothing.
    pub fn deadline(&self) -> Option<Instant> {
        let linked = self.linked();
        self.members
            .iter()
            .filter(|(id, _)| !linked.contains(id.as_str()))
            .map(|(_, m)| m.reach.retry_at)
            .min()
    }

    fn linked(&self) -> std::collections::HashSet<&str> {
        self.links.iter().map(|l| l.service.as_str()).collect()
    }

    /// The link to the buddy of `id`, if it is up.
    pub fn link(&mut self, id: &str) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.service == id)
    }

    /// The link to the buddy of `id`, trying to connect now if there is none (a buddy spawned
    /// a moment ago is otherwise linked at its next retry).
    pub fn link_now(&mut self, id: &str) -> Option<&mut Link> {
        if self.link(id).is_none() {
            self.reach(id, Instant::now());
        }
        self.link(id)
    }

    /// Brings the fleet in line with a scan of the configuration: [`apply::plan`] decides,
    /// this carries it out.
    pub fn apply(&mut self, scan: Scan) -> anyhow::Result<()> {
        let in_force: BTreeMap<String, InForce> = self
            .members
            .iter()
            .map(|(id, m)| {
                let f = InForce {
                    svc: m.svc.clone(),
                    hash: m.hash.clone(),
                    file: m.file.clone(),
                };
                (id.clone(), f)
            })
            .collect();
        let plan = apply::plan(&in_force, &mut self.unconfigured, scan);
        plan.said.iter().for_each(|line| eprintln!("{line}"));
        // The desired states the store has (kept in memory), then render and spawn service
        // by service while the writer thread records the scan in one transaction: services
        // start without waiting for the store's write.
        let configured: Vec<Configured> = plan
            .configure
            .iter()
            .map(|c| Configured {
                service: c.svc.id.to_string(),
                uuid: c.svc.uuid.clone(),
                hash: config_hash(&c.svc),
                initial: desired::initial_want(c.svc.initial_state),
            })
            .collect();
        let desired: Vec<Option<Want>> = configured
            .iter()
            .map(|c| self.desired.configured(&c.service, c.initial))
            .collect();
        self.writer.post(move |s| {
            if let Err(e) = s.configure(&configured) {
                eprintln!("upkeeper: cannot record the configuration in the store: {e}");
            }
        })?;
        let mut touched: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (c, desired) in plan.configure.into_iter().zip(desired) {
            let id = c.svc.id.to_string();
            // One service that cannot be set up is reported and skipped; the rest go on.
            match self.configure(&c.svc, &c.file, c.waits_for, desired) {
                Ok(()) => touched.entry(c.file).or_default().push(id),
                Err(e) => eprintln!("upkeeper: {id}: {e:#}"),
            }
        }
        for (id, file) in &plan.remove {
            touched.entry(file.clone()).or_default().push(id.clone());
            self.unconfigure(id);
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
        let changes = &plan.changes;
        eprintln!(
            "upkeeper: configuration applied: {} added, {} changed, {} removed, {} unchanged",
            changes.added.len(),
            changes.changed.len(),
            plan.remove.len(),
            changes.unchanged.len()
        );
        Ok(())
    }

    /// Sets up a new service, or takes a changed definition into use. `desired` is what the
    /// store wants for it, which wins over its `InitialState`; a new service's buddy starts
    /// once `waiting_for` run.
    fn configure(
        &mut self,
        svc: &Service,
        file: &Path,
        waiting_for: Vec<String>,
        desired: Option<Want>,
    ) -> anyhow::Result<()> {
        let id = svc.id.to_string();
        let hash = config_hash(svc);
        let mut rendered = svc.clone();
        rendered.initial_state = desired::rendered_initial(svc.initial_state, desired);
        let dir = self.render(&rendered)?;
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
                reach: Reach::new(Instant::now()),
                reconciled: false,
                waiting_for,
            };
            self.members.insert(id.clone(), member);
            // Spawned now, not after the whole scan: buddies start while the rest renders.
            self.reach(&id, Instant::now());
        }
        Ok(())
    }

    fn render(&self, svc: &Service) -> anyhow::Result<RunDir> {
        let settings = Settings::new(self.ctl, svc);
        Ok(self
            .renderer
            .render(svc, &self.ctl.svc_run_path, &settings)?)
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
        if status.is_some_and(|s| s.state.is_up()) {
            self.tell(id, BuddyRequest::Restart);
        }
    }

    /// Sends a request to the buddy of `id`: on its link if there is one, else on a
    /// connection of its own (the reply is not awaited).
    fn tell(&mut self, id: &str, body: BuddyRequest) {
        if let Some(link) = self.link(id) {
            if link.request(None, body.clone()).is_ok() {
                return;
            }
        }
        if let Some(m) = self.members.get(id) {
            if let Ok(s) = crate::link::connect(&m.dir.socket()) {
                // One try: a line this short fits the empty buffer of a new connection.
                let _ = (&s).write(&proto::encode(&Envelope { id: None, body }));
            }
        }
    }

    /// Shuts the buddy of `id` down (it stops the service first) and forgets the service. The
    /// run directory and its logs stay.
    pub fn unconfigure(&mut self, id: &str) {
        self.tell(id, BuddyRequest::Shutdown);
        self.forget(id);
    }

    /// Forgets `id` (its buddy was told to shut down): marked removed in the store, with its
    /// desired state, so that it comes back as a new service, with its `InitialState`.
    pub fn forget(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.desired.forget(id);
            let key = id.to_owned();
            let _ = self.writer.post(move |s| drop(s.mark_removed(&key)));
        }
        self.links.retain(|l| l.service != id);
    }

    /// Forgets `id` until its definition changes or its file is written again: an operator's
    /// `unconfigure`.
    pub fn unconfigured_by_command(&mut self, id: &str) {
        if let Some(m) = self.members.get(id) {
            let out = apply::Unconfigured {
                hash: m.hash.clone(),
                stamp: crate::load::FileStamp::of(&m.file),
            };
            self.unconfigured.insert(id.to_owned(), out);
        }
        self.forget(id);
    }

    /// Subscribes to every buddy not linked yet whose retry is due, and spawns the ones that
    /// cannot be reached unless their service still waits for a prerequisite.
    pub fn reach_buddies(&mut self, now: Instant) {
        self.release_waiting();
        let linked = self.linked();
        let due: Vec<String> = self
            .members
            .iter()
            .filter(|(id, m)| m.reach.retry_at <= now && !linked.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.reach(&id, now);
        }
    }

    /// Subscribes to the buddy of `id`, or spawns it when [`Reach`] allows and tries again
    /// soon: a buddy binds its socket within milliseconds.
    fn reach(&mut self, id: &str, now: Instant) {
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        match reach::subscribe(&m.dir, id) {
            Ok(link) => {
                m.reach.linked();
                self.links.push(link);
            }
            Err(_) => {
                // A buddy that holds its lock but did not answer (busy, or not listening yet)
                // is reached again later, never doubled.
                if m.reach.missed(now, !m.waiting_for.is_empty()) && !reach::holds_lock(&m.dir) {
                    let child = reach::spawn_buddy(&self.ctl.upk_buddy_path, id, &m.dir);
                    m.reach.spawned(now, child);
                }
            }
        }
    }

    /// A service's buddy is started once each of its prerequisites serves (it is ready, or
    /// runs without a readiness protocol, or missed its ReadyTimeout) or is no longer
    /// configured. Called after every round of events, and cheap when nobody waits.
    pub fn release_waiting(&mut self) {
        let running = |dir: &RunDir| {
            Status::read(&dir.status())
                .ok()
                .flatten()
                .is_some_and(|s| s.serves())
        };
        let waiting: Vec<(String, Vec<String>)> = self
            .members
            .iter()
            .filter(|(_, m)| !m.waiting_for.is_empty())
            .map(|(id, m)| {
                let still = m
                    .waiting_for
                    .iter()
                    .filter(|p| self.members.get(*p).is_some_and(|pm| !running(&pm.dir)))
                    .cloned()
                    .collect();
                (id.clone(), still)
            })
            .collect();
        for (id, still) in waiting {
            if let Some(m) = self.members.get_mut(&id) {
                if still.is_empty() {
                    eprintln!("upkeeper: {id}: its prerequisites run; starting it");
                    m.reach.retry_at = Instant::now();
                }
                m.waiting_for = still;
            }
        }
    }

    /// A link ended: reach its buddy again soon (spawning a new one at most once a second).
    pub fn link_lost(&mut self, service: &str) {
        if let Some(m) = self.members.get_mut(service) {
            m.reach.lost(Instant::now());
        }
    }

    /// Reaps buddies the controller spawned that have exited.
    pub fn reap(&mut self) {
        self.members.values_mut().for_each(|m| m.reach.reap());
    }

    /// The store could not be written: drop every link and subscribe again a second later, so
    /// that the buddies send their unacknowledged records again.
    pub fn resubscribe_later(&mut self) {
        self.links.clear();
        let later = Instant::now() + RETRY;
        self.members
            .values_mut()
            .for_each(|m| m.reach.retry_at = later);
    }

    /// The first status a buddy gives this controller (the answer to its subscription): if
    /// what the buddy does differs from what the store wants, the service's
    /// `PreferBuddyState*` keys decide who is right ([`desired::reconcile`]). Returns the
    /// desired state it queued for the store, with the writer's ticket, if it queued one.
    pub fn reconcile(&mut self, id: &str, status: &Status) -> Option<(u64, Want)> {
        let m = self.members.get_mut(id)?;
        if std::mem::replace(&mut m.reconciled, true) {
            return None;
        }
        let stored = self.desired.of(id);
        let r = desired::reconcile(
            stored,
            status.want,
            m.svc.prefer_buddy_state_for_stopped,
            m.svc.prefer_buddy_state_for_running,
        )?;
        let word = |w: Option<Want>| w.map_or("?", crate::store::want_str);
        eprintln!(
            "upkeeper: {id}: the store wants it {}, its buddy has it {}; {}",
            word(stored),
            if status.want != Want::Down {
                "up"
            } else {
                "down"
            },
            match r.winner {
                desired::Winner::Store => "following the store",
                desired::Winner::Buddy => "following the buddy (PreferBuddyState*)",
            }
        );
        if let Some(req) = r.tell {
            let cause = "controller: reconciling with the desired state in the store".to_owned();
            let relay = BuddyRequest::Relay {
                cause,
                request: Box::new(req),
            };
            self.tell(id, relay);
        }
        self.set_desired(id, r.want).map(|ticket| (ticket, r.want))
    }

    /// Records what reconciliation wants for `id`: at once in memory, and queued for the
    /// store. Returns the writer's ticket, whose outcome says when it is stored (`None`: the
    /// writer has stopped, which was said). A command's desired state goes into the loop's
    /// batch instead, with the command's audit row.
    pub fn set_desired(&mut self, id: &str, want: Want) -> Option<u64> {
        self.desired.set(id, want);
        match self.writer.set_desired(vec![(id.to_owned(), want)]) {
            Ok(ticket) => Some(ticket),
            Err(e) => {
                eprintln!("upkeeper: {id}: cannot store its desired state: {e}");
                None
            }
        }
    }
}
