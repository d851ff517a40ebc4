//! Watching `SvcConfigPath` for service files that appear, change or go.
//!
//! The [`Watcher`] is a descriptor for the controller's poll loop plus one deadline: the first
//! relevant inotify event arms a short settle delay ([`SETTLE`]), later events in that window
//! ride along, and when it passes the controller rescans once. An editor's write-rename-chmod
//! dance or a package manager dropping ten files is therefore one rescan, done a tenth of a
//! second after things calm down. Only `*.conf` and `*.json5` files that are not hidden count
//! (editors' swap and backup files do not).

use inotify::{Inotify, WatchMask};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait after a change for the rest of a burst.
pub const SETTLE: Duration = Duration::from_millis(100);

/// An inotify watch on one configuration directory.
pub struct Watcher {
    inotify: Inotify,
    due: Option<Instant>,
}

impl Watcher {
    /// Watches `dir` (which must exist) for files written, moved in or out, or deleted.
    pub fn new(dir: &Path) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB;
        inotify.watches().add(dir, mask)?;
        Ok(Watcher { inotify, due: None })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads pending events; a relevant one arms the settle deadline (if not armed yet).
    pub fn read(&mut self, now: Instant) -> std::io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut any = false;
            for e in events {
                any = true;
                if e.name.is_some_and(|n| relevant(Path::new(n))) && self.due.is_none() {
                    self.due = Some(now + SETTLE);
                }
            }
            if !any {
                return Ok(());
            }
        }
    }

    /// When the controller should rescan, if a change is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// True once the settle delay has passed; disarms until the next change.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due.is_some_and(|d| d <= now) {
            self.due = None;
            return true;
        }
        false
    }
}

/// A service file name: `*.conf` or `*.json5`, not hidden.
pub fn relevant(name: &Path) -> bool {
    let hidden = name
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let ext = name.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("conf" | "json5"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout};

    /// Polls the watcher's descriptor for up to `ms`, then reads.
    fn settle(w: &mut Watcher, ms: u16) {
        let mut fds = [PollFd::new(w.fd(), PollFlags::POLLIN)];
        let ready = nix::poll::poll(&mut fds, PollTimeout::from(ms)).expect("poll");
        if ready > 0 {
            w.read(Instant::now()).expect("read");
        }
    }

    #[test]
    fn a_burst_of_service_file_writes_is_one_rescan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Watcher::new(dir.path()).expect("watch");
        for name in ["a.conf", "b.json5", "a.conf"] {
            std::fs::write(dir.path().join(name), "{}").expect("write");
        }
        settle(&mut w, 2000);
        let due = w.deadline().expect("a rescan is due");
        assert!(
            !w.take_due(due - Duration::from_millis(1)),
            "not before the settle delay"
        );
        assert!(w.take_due(due));
        assert_eq!(w.deadline(), None, "one rescan for the burst");
        std::fs::remove_file(dir.path().join("b.json5")).expect("remove");
        settle(&mut w, 2000);
        assert!(w.deadline().is_some(), "a removal is a change too");
    }

    #[test]
    fn swap_files_and_other_names_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Watcher::new(dir.path()).expect("watch");
        for name in [".a.conf.swp", "notes.txt", ".hidden.conf", "a.conf~"] {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        settle(&mut w, 300);
        assert_eq!(w.deadline(), None);
        assert!(relevant(Path::new("x.conf")) && relevant(Path::new("pkg.json5")));
    }
}
