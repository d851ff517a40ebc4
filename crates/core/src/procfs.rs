//! What the kernel says about other processes: `/proc/PID/stat`, process-group scans and
//! pidfds, read in one place.
//!
//! [`Stat`] is the one parser of `/proc/PID/stat` (the status file's `pid_start`, the test
//! kit's process scans and the buddy's group checks all read it through here). The command
//! name (field 2) is in parentheses and may hold spaces or `)`, so fields are counted from
//! the *last* `)`. [`pidfd_open`] is the one `unsafe` call: it wraps the raw syscall into an
//! [`OwnedFd`] that becomes readable when the process ends, for processes that are not our
//! children (waitpid cannot see them). Linux only, like the rest of upkeeper.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The fields of `/proc/PID/stat` upkeeper reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 4: the parent pid.
    pub ppid: i32,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Fields 14 + 15: user and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: the start time in clock ticks since boot; with the pid, it names a process
    /// for good (a recycled pid has a later start time).
    pub start_time: u64,
}

impl Stat {
    /// Parses the text of a `/proc/PID/stat` file.
    pub fn parse(text: &str) -> Option<Stat> {
        let rest = text.get(text.rfind(')')? + 1..)?;
        // `rest` begins at field 3 (state).
        let fields: Vec<&str> = rest.split_whitespace().take(20).collect();
        let state = fields.first()?.chars().next()?;
        Some(Stat {
            state,
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            cpu_ticks: fields.get(11)?.parse::<u64>().ok()?
                + fields.get(12)?.parse::<u64>().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Reads `/proc/<pid>/stat`; `None` when the process is gone (or unreadable).
    pub fn of(pid: i32) -> Option<Stat> {
        if pid <= 0 {
            return None;
        }
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Neither a zombie nor dead: the process still runs (or sleeps).
    pub fn live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// The live (not zombie) processes of group `pgid`, found by a scan of `/proc`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| Stat::of(pid).is_some_and(|s| s.pgrp == pgid && s.live()))
        .collect()
}

/// A pidfd for `pid` (`pidfd_open(2)`): readable once the process has ended, whoever reaps it.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it touches
    // no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_from_the_last_parenthesis() {
        let text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 98765 1000 10 18446744073709551615\n";
        let s = Stat::parse(text).expect("parses");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                cpu_ticks: 12,
                start_time: 98765
            }
        );
        assert!(s.live());
        assert_eq!(Stat::parse("12 (x) Z 1"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn own_stat_is_readable_and_own_group_has_us() {
        let me = std::process::id() as i32;
        let s = Stat::of(me).expect("own stat");
        assert_eq!(Stat::of(me).map(|t| t.start_time), Some(s.start_time));
        assert!(matches!(s.state, 'R' | 'S'));
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw());
        assert!(group_members(s.pgrp).contains(&me));
    }

    #[test]
    fn a_pidfd_of_ourselves_opens_and_of_nobody_does_not() {
        assert!(pidfd_open(std::process::id() as i32).is_ok());
        assert!(pidfd_open(0).is_err());
        assert!(pidfd_open(i32::MAX).is_err());
    }
}
