//! Where cgroups are on this host and what they say: the mounts, a process's membership, a
//! cgroup's members, `populated`, and its CPU and memory counters, read in one place.
//!
//! Two kinds of hierarchy exist. The unified one (cgroup v2, `cgroup2` in mountinfo) is the
//! one upkeeper keeps services in: every cgroup there has `cgroup.procs`, `cgroup.events`
//! (`populated 0|1`, pollable), `cgroup.kill` (5.14+) and `cpu.stat` whether or not any
//! controller is enabled. The v1 hierarchies (`cgroup` in mountinfo, one per set of
//! controllers such as `memory` or `pids`) are used only for the limits of a controller the
//! unified hierarchy does not offer. A hybrid host has both; `docs/containment.md` says how
//! each is used. Paths inside a hierarchy are what `/proc/PID/cgroup` prints (`/a/b`); a
//! mount whose root is not `/` (a cgroup namespace) is accounted for. Everything here
//! only parses and reads; creating, joining and killing is the buddy's (`contain.rs`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub at: PathBuf,
    /// The cgroup path at the mount's root (`/` outside a namespace).
    pub root: String,
    /// `None` for the unified hierarchy; the controllers of a v1 hierarchy.
    pub controllers: Option<Vec<String>>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in the text of a mountinfo file; lines that are not cgroup mounts, or
/// malformed, are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let mut after = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (after.next(), after.next(), after.next())
        else {
            continue;
        };
        let (Some(root), Some(at)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let controllers = match fstype {
            "cgroup2" => None,
            "cgroup" => Some(
                opts.split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro") && !o.contains('=') && !o.starts_with("no")
                    })
                    .filter(|o| !matches!(*o, "relatime" | "clone_children" | "xattr"))
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => continue,
        };
        out.push(Mount {
            at: PathBuf::from(unescape(at)),
            root: unescape(root),
            controllers,
        });
    }
    out
}

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Empty for the unified hierarchy; otherwise its controllers (`name=systemd` included).
    pub controllers: Vec<String>,
    /// The cgroup's path in that hierarchy.
    pub path: String,
}

/// The lines of a `/proc/PID/cgroup` text.
pub fn parse_membership(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some(Membership {
                controllers,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// `path` (a cgroup path) as a directory under a hierarchy mounted at `mount`.
fn dir_of(mount: &Mount, path: &str) -> Option<PathBuf> {
    let inside = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())?
    };
    let rel = inside.trim_start_matches('/');
    Some(if rel.is_empty() {
        mount.at.clone()
    } else {
        mount.at.join(rel)
    })
}

/// The hierarchies this process sees and its own cgroup in each: the base under which a
/// service's cgroup is made (it nests in the controller's own, as delegation expects).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The unified hierarchy's directory of our own cgroup.
    pub unified: Option<PathBuf>,
    /// For each v1 controller: the directory of our own cgroup in its hierarchy.
    pub v1: Vec<(String, PathBuf)>,
}

impl Hierarchies {
    /// From a mountinfo text and our `/proc/self/cgroup` text.
    pub fn from_texts(mountinfo: &str, own: &str) -> Hierarchies {
        let mounts = parse_mountinfo(mountinfo);
        let member = parse_membership(own);
        let mut h = Hierarchies::default();
        for m in &mounts {
            match &m.controllers {
                None if h.unified.is_none() => {
                    let path = member.iter().find(|l| l.controllers.is_empty());
                    h.unified = path.and_then(|l| dir_of(m, &l.path));
                }
                None => {}
                Some(ctls) => {
                    let line = member.iter().find(|l| l.controllers == *ctls);
                    let Some(dir) = line.and_then(|l| dir_of(m, &l.path)) else {
                        continue;
                    };
                    for c in ctls {
                        if !h.v1.iter().any(|(have, _)| have == c) {
                            h.v1.push((c.clone(), dir.clone()));
                        }
                    }
                }
            }
        }
        h
    }

    /// This process's hierarchies, from `/proc/self`.
    pub fn of_self() -> Hierarchies {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Hierarchies::from_texts(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"))
    }

    /// Our own cgroup's directory in the v1 hierarchy of `controller`.
    pub fn v1_base(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, d)| d.as_path())
    }
}

/// The pids in a cgroup (`cgroup.procs` of `dir`); empty when it cannot be read.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `populated` in a `cgroup.events` text.
pub fn populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() == "1")
}

/// True when `pid` is a member of the unified cgroup at `path` (as `/proc/PID/cgroup` names it).
pub fn is_member(pid: i32, path: &str) -> bool {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    parse_membership(&text)
        .iter()
        .any(|l| l.controllers.is_empty() && l.path == path)
}

/// A value of a flat-keyed file (`cpu.stat`'s `usage_usec 123`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A single-number file (`memory.current`, `pids.max`); `max` is `u64::MAX`.
pub fn number(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        t => t.parse().ok(),
    }
}

/// What a service costs now: CPU time, memory and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, microseconds: the cgroup's since it was made (every process that ever ran
    /// in it), or without a cgroup the main process's own.
    pub cpu_us: u64,
    /// Memory in use, bytes: the memory controller's count, or the resident sets of the
    /// cgroup's processes (without a cgroup, of the main process).
    pub memory: u64,
    /// The highest memory use the kernel saw (a memory controller only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
    /// Processes.
    pub tasks: u32,
}

/// What one run cost, recorded with its death (a cgroup's counters only: they outlive the
/// processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cost {
    /// CPU time of the run, microseconds (every process of it, the dead included).
    pub cpu_us: u64,
    /// The highest memory use the kernel saw during the run (a memory controller only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak: Option<u64>,
}

impl Usage {
    /// CPU time as people read it: `0.42s`, `3m12s`, `5h07m`.
    pub fn cpu_text(&self) -> String {
        let s = self.cpu_us / 1_000_000;
        match s {
            0..=59 => format!("{:.2}s", self.cpu_us as f64 / 1e6),
            60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
            _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        }
    }

    /// Memory in binary units: `812K`, `12.5M`, `1.2G`.
    pub fn memory_text(&self) -> String {
        bytes_text(self.memory)
    }
}

/// Bytes in binary units, one decimal below 10 of a unit: `512B`, `812K`, `12.5M`, `1.2G`.
pub fn bytes_text(n: u64) -> String {
    let units = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v >= 10.0 {
        format!("{:.0}{}", v, units[i])
    } else {
        format!("{:.1}{}", v, units[i])
    }
}

/// Where a service is kept, as its buddy writes it into the status file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Containment {
    /// The unified cgroup holding the service's current run; `None`: its process group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// The cgroup a memory controller counts the service in: `cgroup` itself where the
    /// unified hierarchy has the controller, or a v1 leaf a limit put it in; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PathBuf>,
    /// Why there is no cgroup, and each limit that is not enforced: one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Containment {
    /// The usage of the service whose main process is `pid`, read now: its cgroup's, or
    /// without one the main process's own (a scan of `/proc` for its group would cost a
    /// reader of many services too much).
    pub fn usage(&self, pid: Option<i32>) -> Usage {
        let members = match (&self.cgroup, pid) {
            (Some(dir), _) => procs(dir),
            (None, Some(p)) if p > 1 => vec![p],
            _ => Vec::new(),
        };
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let ticks = || {
            // SAFETY: sysconf reads a constant.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            members
                .iter()
                .filter_map(|&p| crate::procfs::Stat::of(p))
                .map(|s| s.cpu_ticks.saturating_mul(1_000_000) / hz)
                .fold(0u64, u64::saturating_add)
        };
        let cpu_us = self
            .cgroup
            .as_deref()
            .and_then(|d| keyed(&read(d, "cpu.stat")?, "usage_usec"))
            .unwrap_or_else(ticks);
        let counted = self.memory_files().and_then(|(d, [now, peak, _])| {
            Some((
                number(&read(d, now)?)?,
                read(d, peak).and_then(|t| number(&t)),
            ))
        });
        let (memory, memory_peak) = counted.unwrap_or_else(|| {
            // SAFETY: sysconf reads a constant.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
            let rss = members
                .iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/statm")).ok())
                .filter_map(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
                .fold(0u64, |a, pages| {
                    a.saturating_add(pages.saturating_mul(page))
                });
            (rss, None)
        });
        Usage {
            cpu_us,
            memory,
            memory_peak,
            tasks: u32::try_from(members.len()).unwrap_or(u32::MAX),
        }
    }

    /// The cgroup's CPU time so far (`cpu.stat` `usage_usec`); `None` without a cgroup.
    pub fn cpu_us(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.cgroup.as_deref()?.join("cpu.stat")).ok()?;
        keyed(&text, "usage_usec")
    }

    /// The memory controller's directory and the names of its files there: in use, peak,
    /// and the file counting OOM kills (v2 or v1 names).
    fn memory_files(&self) -> Option<(&Path, [&'static str; 3])> {
        let d = self.memory.as_deref()?;
        Some(if self.cgroup.as_deref() == Some(d) {
            (d, ["memory.current", "memory.peak", "memory.events"])
        } else {
            (
                d,
                [
                    "memory.usage_in_bytes",
                    "memory.max_usage_in_bytes",
                    "memory.oom_control",
                ],
            )
        })
    }

    /// The memory controller's peak (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub fn memory_peak(&self) -> Option<u64> {
        let (d, [_, peak, _]) = self.memory_files()?;
        number(&std::fs::read_to_string(d.join(peak)).ok()?)
    }

    /// OOM kills counted by the service's memory controller (v2 `memory.events`, v1
    /// `memory.oom_control`); `None` without one.
    pub fn oom_kills(&self) -> Option<u64> {
        let (d, [_, _, events]) = self.memory_files()?;
        keyed(&std::fs::read_to_string(d.join(events)).ok()?, "oom_kill")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/x
0::/
";

    #[test]
    fn a_hybrid_host() {
        let h = Hierarchies::from_texts(HYBRID, OWN);
        assert_eq!(h.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            h.v1_base("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(h.v1_base("pids"), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(
            h.v1_base("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/x"))
        );
        assert_eq!(h.v1_base("cpuacct"), h.v1_base("cpu"));
        assert_eq!(h.v1_base("systemd"), None);
    }

    #[test]
    fn a_unified_host_in_a_namespace_and_odd_lines() {
        let mi = "29 23 0:26 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
                  garbage\n1 2 3\n";
        let h = Hierarchies::from_texts(mi, "0::/ctr/openrc.upkeeper\n");
        assert_eq!(
            h.unified,
            Some(PathBuf::from("/sys/fs/cgroup/openrc.upkeeper"))
        );
        assert!(h.v1.is_empty());
        // Our cgroup outside the mount's root: not reachable.
        assert_eq!(Hierarchies::from_texts(mi, "0::/other\n").unified, None);
        assert_eq!(Hierarchies::from_texts("", "").unified, None);
        let spaced = "1 2 0:1 / /a\\040b rw - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(spaced)[0].at, PathBuf::from("/a b"));
    }

    #[test]
    fn files() {
        assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(populated("populated 0\n"), Some(false));
        assert_eq!(populated(""), None);
        assert_eq!(
            keyed("usage_usec 42\nuser_usec 40\n", "usage_usec"),
            Some(42)
        );
        assert_eq!(keyed("usage_usec x\n", "usage_usec"), None);
        assert_eq!(number("max\n"), Some(u64::MAX));
        assert_eq!(number("123\n"), Some(123));
        assert_eq!(bytes_text(512), "512B");
        assert_eq!(bytes_text(5 << 20), "5.0M");
        assert_eq!(bytes_text(300 << 20), "300M");
        assert_eq!(bytes_text(u64::MAX), "16384P");
        let u = |cpu_us| Usage {
            cpu_us,
            ..Usage::default()
        };
        assert_eq!(u(420_000).cpu_text(), "0.42s");
        assert_eq!(u(192_000_000).cpu_text(), "3m12s");
        assert_eq!(u(18_420_000_000).cpu_text(), "5h07m");
        let me = std::process::id() as i32;
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if let Some(l) = parse_membership(&own)
            .iter()
            .find(|l| l.controllers.is_empty())
        {
            assert!(is_member(me, &l.path));
            assert!(!is_member(me, "/no/such/cgroup"));
        }
    }
}
