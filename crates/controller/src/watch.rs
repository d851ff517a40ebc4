//! Watching `SvcConfigPath` for service files that appear, change or go.
//!
//! The [`Watcher`] is a descriptor for the controller's poll loop plus one deadline: the first
//! relevant inotify event arms a short settle delay ([`SETTLE`]), later events in that window
//! ride along, and when it passes the controller rescans once. An editor's write-rename-chmod
//! dance or a package manager dropping ten files is therefore one rescan, done a tenth of a
//! second after things calm down. Only `*.conf` and `*.json5` files that are not hidden count
//! (editors' swap and backup files do not).
//!
//! Most new files announce themselves when they are closed after writing or renamed into
//! place. Some entries are only ever *created*: a symbolic link, a hard link, a FIFO or
//! another special file. A creation therefore counts when the new entry is anything but a
//! fresh regular file (which is still being written, and counts when it is closed), so that
//! the rescan reports why such a file is refused instead of passing over it in silence.

use inotify::{EventMask, Inotify, WatchMask};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait after a change for the rest of a burst.
pub const SETTLE: Duration = Duration::from_millis(100);

/// An inotify watch on one configuration directory.
pub struct Watcher {
    inotify: Inotify,
    dir: PathBuf,
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
            | WatchMask::ATTRIB
            | WatchMask::CREATE;
        inotify.watches().add(dir, mask)?;
        Ok(Watcher {
            inotify,
            dir: dir.to_owned(),
            due: None,
        })
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
                let Some(name) = e.name.filter(|n| relevant(Path::new(n))) else {
                    continue;
                };
                let counts = !e.mask.contains(EventMask::CREATE)
                    || !fresh_regular_file(&self.dir.join(name));
                if counts && self.due.is_none() {
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

/// A regular file with one link: just created by a writer, who will close it (an entry gone
/// again by now was nothing to wait for).
fn fresh_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.nlink() == 1)
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
    fn a_symlink_or_fifo_created_in_the_directory_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Watcher::new(dir.path()).expect("watch");
        std::os::unix::fs::symlink("/nowhere", dir.path().join("l.conf")).expect("symlink");
        settle(&mut w, 2000);
        let due = w.deadline().expect("a new symlink is a change");
        assert!(w.take_due(due));
        let fifo = dir.path().join("x.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        settle(&mut w, 2000);
        assert!(w.deadline().is_some(), "a new FIFO is a change");
    }

    #[test]
    fn a_regular_file_counts_when_closed_not_when_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Watcher::new(dir.path()).expect("watch");
        let f = std::fs::File::create(dir.path().join("a.conf")).expect("create");
        settle(&mut w, 300);
        assert_eq!(w.deadline(), None, "still being written");
        drop(f);
        settle(&mut w, 2000);
        assert!(w.deadline().is_some(), "closed after writing");
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
