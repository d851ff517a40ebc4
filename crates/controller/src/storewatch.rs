//! Watching `StateDir` for the audit store's files being deleted or replaced.
//!
//! An operator's `rm upkeeper.db*` (or a restore over it) would otherwise go unnoticed until
//! the next write, and queries would answer from the deleted file meanwhile. The watch is one
//! inotify descriptor in the controller's poll loop; when it says the database's name was
//! deleted, moved or created, or `StateDir` itself went, the controller asks the store writer
//! to recover ([`Store::recover_if_replaced`]) and reopens its query connection. The writer
//! also checks before every transaction, so nothing depends on this watch alone.
//!
//! [`Store::recover_if_replaced`]: crate::store::Store::recover_if_replaced

use inotify::{EventMask, Inotify, WatchMask};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// An inotify watch on `StateDir`, for the store's file name.
pub struct StoreWatch {
    inotify: Inotify,
    name: String,
}

impl StoreWatch {
    /// Watches the directory of `db` for its name being deleted, moved or created.
    pub fn new(db: &Path) -> std::io::Result<StoreWatch> {
        let inotify = Inotify::init()?;
        let dir = db.parent().unwrap_or(Path::new("."));
        let mask = WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CREATE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        inotify.watches().add(dir, mask)?;
        let name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(StoreWatch { inotify, name })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads pending events; true when one concerns the store's files (`upkeeper.db`, its
    /// `-wal` and `-shm`) or the directory itself.
    pub fn read(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(events) => events,
                Err(_) => return hit,
            };
            let mut any = false;
            for e in events {
                any = true;
                let ours = e
                    .name
                    .is_some_and(|n| n.to_string_lossy().starts_with(&self.name));
                let gone = e
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED);
                hit |= ours || gone;
            }
            if !any {
                return hit;
            }
        }
    }
}
