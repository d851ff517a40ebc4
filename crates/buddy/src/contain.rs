//! What "the service's processes" means: its cgroup where the host allows one, else its
//! process group; and the cgroup limits.
//!
//! A service whose buddy has a unified (v2) cgroup for it lives in a leaf of its own,
//! `<the buddy's cgroup>/<Cgroup>/<id>`: the service is cloned into it (`clone3` with
//! `CLONE_INTO_CGROUP`, `clone.rs`; on older kernels the child writes to `cgroup.procs`
//! before exec), so a double fork and `setsid` cannot leave it. Then "the group is alive"
//! means `populated 1` in `cgroup.events` (polled for its change, [`Contain::events`]); a
//! signal to "the group" goes to every member, and
//! SIGKILL is `cgroup.kill`; leftovers of a run are killed before the next one starts, so
//! restarts never pile up copies. Without a cgroup (no cgroup2 mount, no permission,
//! `Cgroup: false`, or a run adopted from outside the leaf) the process group is used, as
//! before, and the status file says which and why ([`Contain::describe`]).
//!
//! Limits kept by controllers (`MemoryMax`, `MemoryHigh`, `CPUWeight`, `CPUQuota`,
//! `TasksMax`) are written into the unified leaf when its parent can enable the controller,
//! else into a leaf of the same name in the controller's v1 hierarchy, which the service
//! then joins too. A limit that neither can hold is a sentence among the notes
//! ([`Contain::describe`]), which the buddy records and the status file shows.
//! `docs/containment.md` is the long form.

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use upk_core::cgroup::{self, Containment, Cost, Hierarchies};
use upk_core::config::Service;
use upk_core::event::{EventKind, Exit};

/// One cgroup directory the service joins.
struct Leaf {
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: the child writes `0` to it to join.
    procs: File,
}

impl Leaf {
    fn make(dir: PathBuf) -> Result<Leaf, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?;
        Ok(Leaf { dir, procs })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value).map_err(|e| {
            format!(
                "cannot write {value:?} to {}/{file}: {e}",
                self.dir.display()
            )
        })
    }
}

/// The service's unified cgroup.
struct Unified {
    leaf: Leaf,
    /// The leaf's directory, open: what `clone3` starts the service in.
    dir: File,
    /// `cgroup.events`, read again at each look (a read also re-arms its poll event).
    events: File,
    /// `cpu.stat`, kept open: read at each start and death, on the restart path.
    cpu_stat: Option<File>,
    /// Our own cgroup's directory, under which the subtree is made.
    base: PathBuf,
}

/// How the service's processes are kept and limited.
pub struct Contain {
    unified: Option<Unified>,
    /// v1 leaves by controller, for limits the unified hierarchy cannot hold.
    v1: Vec<(String, Leaf)>,
    /// The current run is in the unified leaf (false for a run adopted from outside it).
    run_inside: bool,
    /// Why there is no cgroup, and the limits not enforced.
    notes: Vec<String>,
    /// Notes not yet recorded.
    fresh: Vec<String>,
    /// The service's cgroup path below our own (`Settings::cgroup`).
    rel: Option<String>,
    /// The cgroup's CPU time and OOM kills when the current run began.
    at_start: (u64, Option<u64>),
    /// A memory controller counts the service (v2 in the leaf, or a v1 leaf).
    memory: bool,
}

impl Contain {
    /// The containment `settings` ask for, made now: the leaf created and opened, the limits
    /// of `svc` written. Nothing here fails the buddy; what cannot be had becomes a note.
    pub fn open(rel: Option<&str>, svc: &Service) -> Contain {
        let mut c = Contain {
            unified: None,
            v1: Vec::new(),
            run_inside: false,
            notes: Vec::new(),
            fresh: Vec::new(),
            rel: rel.map(str::to_owned),
            at_start: (0, None),
            memory: false,
        };
        let h = Hierarchies::of_self();
        match (rel, &h.unified) {
            (None, _) => c.note("no cgroup: the controller's Cgroup key is false".into()),
            (Some(_), None) => {
                c.note("no cgroup: this host has no cgroup v2 (unified) hierarchy".into())
            }
            (Some(rel), Some(base)) => match Self::unified(base, rel) {
                Ok(u) => c.unified = Some(u),
                Err(e) => c.note(format!("no cgroup: {e}")),
            },
        }
        c.configure(svc, &h);
        c.run_inside = c.unified.is_some();
        c
    }

    fn unified(base: &Path, rel: &str) -> Result<Unified, String> {
        let leaf = Leaf::make(base.join(rel))?;
        let events = File::open(leaf.dir.join("cgroup.events"))
            .map_err(|e| format!("cannot open {}/cgroup.events: {e}", leaf.dir.display()))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&leaf.dir)
            .map_err(|e| format!("cannot open {}: {e}", leaf.dir.display()))?;
        let cpu_stat = File::open(leaf.dir.join("cpu.stat")).ok();
        Ok(Unified {
            leaf,
            dir,
            events,
            cpu_stat,
            base: base.to_owned(),
        })
    }

    fn note(&mut self, line: String) {
        if !self.notes.contains(&line) {
            self.notes.push(line.clone());
            self.fresh.push(line);
        }
    }

    /// Settings were re-read: the limits written again (an unset one back to unlimited).
    pub fn reconfigure(&mut self, svc: &Service) {
        self.notes.retain(|n| n.starts_with("no cgroup"));
        self.configure(svc, &Hierarchies::of_self());
    }

    fn configure(&mut self, svc: &Service, h: &Hierarchies) {
        self.set_limits(svc, h);
        let v2 = self.unified.as_ref().is_some_and(|u| {
            std::fs::read_to_string(u.leaf.dir.join("cgroup.controllers"))
                .is_ok_and(|t| t.split_whitespace().any(|c| c == "memory"))
        });
        self.memory = v2 || self.v1.iter().any(|(c, _)| c == "memory");
    }

    fn set_limits(&mut self, svc: &Service, h: &Hierarchies) {
        let max = |v: Option<u64>| match v {
            None | Some(u64::MAX) => "max".to_owned(),
            Some(n) => n.to_string(),
        };
        let quota = |pct: Option<f64>, period: u64| {
            pct.map(|p| ((p / 100.0 * period as f64) as u64).max(1000))
        };
        let controllers: [(&str, bool); 3] = [
            (
                "memory",
                svc.memory_max.is_some() || svc.memory_high.is_some(),
            ),
            ("cpu", svc.cpu_weight.is_some() || svc.cpu_quota.is_some()),
            ("pids", svc.tasks_max.is_some()),
        ];
        for (ctl, wanted) in controllers {
            let in_v1 = self.v1.iter().any(|(c, _)| c == ctl);
            if !wanted && !in_v1 {
                continue;
            }
            let result = if !in_v1 && self.enable_unified(ctl) {
                let leaf = &self.unified.as_ref().map(|u| &u.leaf);
                let leaf = leaf.ok_or_else(String::new);
                leaf.and_then(|leaf| match ctl {
                    "memory" => leaf
                        .write("memory.max", &max(svc.memory_max))
                        .and(leaf.write("memory.high", &max(svc.memory_high))),
                    "cpu" => leaf
                        .write("cpu.weight", &svc.cpu_weight.unwrap_or(100).to_string())
                        .and(leaf.write(
                            "cpu.max",
                            &format!("{} 100000", max(quota(svc.cpu_quota, 100_000))),
                        )),
                    _ => leaf.write("pids.max", &max(svc.tasks_max)),
                })
            } else {
                self.v1_leaf(ctl, h).and_then(|leaf| match ctl {
                    "memory" => {
                        let v1 = |v: Option<u64>| {
                            v.filter(|&n| n != u64::MAX)
                                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
                        };
                        leaf.write("memory.limit_in_bytes", &v1(svc.memory_max).to_string())
                    }
                    "cpu" => {
                        let shares = svc
                            .cpu_weight
                            .map_or(1024, |w| (u64::from(w) * 1024 / 100).max(2));
                        let q = quota(svc.cpu_quota, 100_000)
                            .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX));
                        leaf.write("cpu.shares", &shares.to_string())
                            .and(leaf.write("cpu.cfs_period_us", "100000"))
                            .and(leaf.write("cpu.cfs_quota_us", &q.to_string()))
                    }
                    _ => leaf.write("pids.max", &max(svc.tasks_max)),
                })
            };
            let in_v1 = self.v1.iter().any(|(c, _)| c == ctl);
            if in_v1 && ctl == "memory" && svc.memory_high.is_some() {
                self.note("MemoryHigh is not enforced: cgroup v1 has no such limit".into());
            }
            if let Err(e) = result {
                let keys = match ctl {
                    "memory" => "MemoryMax/MemoryHigh",
                    "cpu" => "CPUWeight/CPUQuota",
                    _ => "TasksMax",
                };
                self.note(format!("{keys} not enforced: {e}"));
            }
        }
    }

    /// The leaf's CPU time so far, from the open `cpu.stat`.
    fn cpu_us(&mut self) -> Option<u64> {
        let f = self.unified.as_mut()?.cpu_stat.as_mut()?;
        let mut text = String::new();
        f.rewind().ok()?;
        f.read_to_string(&mut text).ok()?;
        cgroup::keyed(&text, "usage_usec")
    }

    /// True when the unified leaf can hold `ctl`'s files: it is enabled down to the leaf,
    /// or can be within our subtree (each directory between our own cgroup and the leaf gets
    /// `+ctl` in its subtree_control). Our own cgroup is not ours to change: if it does not
    /// pass the controller down, the leaf cannot have it.
    fn enable_unified(&self, ctl: &str) -> bool {
        let Some(u) = &self.unified else { return false };
        let has = |d: &Path| {
            std::fs::read_to_string(d.join("cgroup.controllers"))
                .is_ok_and(|t| t.split_whitespace().any(|c| c == ctl))
        };
        if has(&u.leaf.dir) {
            return true;
        }
        let Ok(rel) = u.leaf.dir.strip_prefix(&u.base) else {
            return false;
        };
        let parts: Vec<_> = rel.components().collect();
        let mut dir = u.base.clone();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push(part);
            if !has(&dir) {
                return false;
            }
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{ctl}"));
        }
        has(&u.leaf.dir)
    }

    /// The v1 leaf of `ctl`, made at first use.
    fn v1_leaf(&mut self, ctl: &str, h: &Hierarchies) -> Result<&Leaf, String> {
        if let Some(i) = self.v1.iter().position(|(c, _)| c == ctl) {
            return Ok(&self.v1[i].1);
        }
        let rel = self
            .rel
            .clone()
            .ok_or("no cgroup: the controller's Cgroup key is false")?;
        let base = h.v1_base(ctl).ok_or_else(|| {
            format!("this host has no {ctl} controller (neither cgroup v2 nor v1)")
        })?;
        let leaf = Leaf::make(base.join(&rel))?;
        self.v1.push((ctl.to_owned(), leaf));
        Ok(&self.v1[self.v1.len() - 1].1)
    }

    /// The service has a unified cgroup (whether or not the current run is in it).
    pub fn has_cgroup(&self) -> bool {
        self.unified.is_some()
    }

    /// Notes made since the last call, to be recorded.
    pub fn take_fresh(&mut self) -> Vec<String> {
        std::mem::take(&mut self.fresh)
    }

    /// What the status file says about it.
    pub fn describe(&self) -> Containment {
        Containment {
            cgroup: self
                .unified
                .as_ref()
                .filter(|_| self.run_inside)
                .map(|u| u.leaf.dir.clone()),
            memory: self
                .v1
                .iter()
                .find(|(c, _)| c == "memory")
                .map(|(_, l)| l.dir.clone())
                .or_else(|| {
                    let u = self
                        .unified
                        .as_ref()
                        .filter(|_| self.run_inside && self.memory)?;
                    Some(u.leaf.dir.clone())
                }),
            notes: self.notes.clone(),
        }
    }

    /// The unified leaf a new run starts in: its directory (for `clone3`) and its
    /// `cgroup.procs` (to join by, where the kernel cannot clone into a cgroup).
    pub fn start_in(&self) -> Option<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        self.unified
            .as_ref()
            .map(|u| (u.dir.as_fd(), u.leaf.procs.as_fd()))
    }

    /// The v1 leaves' `cgroup.procs`, which a new run writes `0` to, joining them.
    pub fn joins(&self) -> Vec<BorrowedFd<'_>> {
        self.v1.iter().map(|(_, l)| l.procs.as_fd()).collect()
    }

    /// The unified leaf's `cgroup.events`, to poll (POLLPRI) while a stop waits for the
    /// service's processes; `None` when the run is kept by its process group.
    pub fn events(&self) -> Option<BorrowedFd<'_>> {
        self.unified
            .as_ref()
            .filter(|_| self.run_inside)
            .map(|u| u.events.as_fd())
    }

    /// `populated`, read now; `None` when the run is not in the leaf (or it cannot be read).
    fn populated(&mut self) -> Option<bool> {
        let u = self.unified.as_mut().filter(|_| self.run_inside)?;
        let mut text = String::new();
        u.events.rewind().ok()?;
        u.events.read_to_string(&mut text).ok()?;
        cgroup::populated(&text)
    }

    /// True while any process of the service is left: its cgroup is populated, or (without
    /// one) its process group `pgid` has a member.
    pub fn alive(&mut self, pgid: i32) -> bool {
        match self.populated() {
            Some(p) => p,
            None => crate::watch::group_alive(pgid),
        }
    }

    /// Signals every process of the service: the cgroup's members (SIGKILL by
    /// `cgroup.kill`, which also catches a member forking meanwhile), and group `pgid`.
    pub fn signal(&mut self, pgid: i32, sig: Signal) {
        crate::effects::kill_group(pgid, sig);
        let Some(u) = self.unified.as_ref().filter(|_| self.run_inside) else {
            return;
        };
        if sig == Signal::SIGKILL && std::fs::write(u.leaf.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in cgroup::procs(&u.leaf.dir) {
            let _ = signal::kill(Pid::from_raw(pid), sig);
        }
    }

    /// Before a new run: leftovers of the last one (a daemon that left its parent, members
    /// that ignored SIGTERM) are killed, and the count returned, so that restarts never
    /// leave two copies. The new run is inside the leaf.
    pub fn clear_for_run(&mut self, svc: &Service) -> usize {
        // Removed from outside while the service was stopped (an rmdir of the empty leaf):
        // made again, or the start would fail on a cgroup that is gone.
        if let Some(u) = &self.unified {
            if !u.leaf.dir.exists() {
                let (base, rel) = (u.base.clone(), self.rel.clone().unwrap_or_default());
                match Self::unified(&base, &rel) {
                    Ok(again) => self.unified = Some(again),
                    Err(e) => {
                        self.unified = None;
                        self.note(format!("no cgroup: {e}"));
                    }
                }
                // Its limits went with it.
                self.configure(svc, &Hierarchies::of_self());
            }
        }
        self.run_inside = self.unified.is_some();
        if self.populated() != Some(true) {
            return 0;
        }
        let Some(u) = &self.unified else { return 0 };
        let left = cgroup::procs(&u.leaf.dir).len();
        if left > 0 {
            self.signal(0, Signal::SIGKILL);
        }
        left
    }

    /// The run began: its costs count from now. Only counters are read here (this is on
    /// the restart path): the cgroup's CPU time from the open `cpu.stat` and, with a memory
    /// controller, its OOM kills; the v1 memory peak is reset (v2 keeps `memory.peak` since
    /// the leaf was made).
    pub fn run_began(&mut self) {
        let oom = if self.memory {
            let c = self.describe();
            if let Some((_, m)) = self.v1.iter().find(|(c, _)| c == "memory") {
                let _ = std::fs::write(m.dir.join("memory.max_usage_in_bytes"), "0");
            }
            c.oom_kills()
        } else {
            None
        };
        self.at_start = (self.cpu_us().unwrap_or(0), oom);
    }

    /// Fills in a death record from the cgroup's counters: what the run cost, and whether
    /// the OOM killer ended it.
    pub fn explain(&mut self, kind: &mut EventKind) {
        let EventKind::Died {
            oom, cost, exit, ..
        } = kind
        else {
            return;
        };
        if !self.run_inside {
            return;
        }
        let Some(cpu) = self.cpu_us() else { return };
        let c = self.memory.then(|| self.describe());
        *cost = Some(Cost {
            cpu_us: cpu.saturating_sub(self.at_start.0),
            memory_peak: c.as_ref().and_then(Containment::memory_peak),
        });
        let killed = matches!(exit, Exit::Killed { signal: 9, .. });
        *oom = killed
            && c.and_then(|c| c.oom_kills())
                .zip(self.at_start.1)
                .is_some_and(|(now, then)| now > then);
    }

    /// A service adopted from a predecessor: kept by the cgroup only if it is in the leaf.
    pub fn adopt(&mut self, pid: i32) -> bool {
        self.run_inside = self
            .unified
            .as_ref()
            .is_some_and(|u| cgroup::procs(&u.leaf.dir).contains(&pid));
        self.run_inside
    }

    /// The buddy exits: its empty leaves are removed (a populated one stays for the next).
    pub fn remove(&mut self) {
        if self.populated() == Some(true) {
            return;
        }
        self.run_inside = false;
        if let Some(u) = &self.unified {
            let _ = std::fs::remove_dir(&u.leaf.dir);
        }
        for (_, l) in &self.v1 {
            let _ = std::fs::remove_dir(&l.dir);
        }
    }
}
