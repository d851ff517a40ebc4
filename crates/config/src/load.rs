//! Finding and loading the configuration: the controller file and every service file.
//!
//! A bad service file is reported with all its errors and skipped; the others load. An id
//! defined in two files keeps its first definition (files in name order) and the second is
//! reported. Nothing here touches running services. What makes a file unreadable (its type,
//! owner, mode and size, a symbolic link and what it leads to) is decided by
//! `upk_core::config` before the file is opened, and each refusal is one error for that file.

use std::path::{Path, PathBuf};
use upk_core::config::{self, Controller, Service};

pub use upk_core::config::{
    controller_file as default_config_path, load_controller_or_defaults as controller,
};

/// The service files in `dir` (`*.conf`, `*.json5`), in name order.
pub fn service_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "json5")
            )
        })
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The result of scanning `SvcConfigPath`.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every valid service, with the file that defines it.
    pub services: Vec<(Service, PathBuf)>,
    /// Files that failed validation: the services they defined before stay as they were.
    pub bad_files: Vec<PathBuf>,
    /// One line per problem (file:line:col: message).
    pub errors: Vec<String>,
    /// When each file read was last written ([`FileStamp`]).
    pub stamps: std::collections::BTreeMap<PathBuf, FileStamp>,
}

/// What changes whenever a file is written or replaced: its inode, its change time and its
/// modification time. A package's hook replaces a file by renaming a new one over it, so even
/// an identical definition gets a new stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    ctime_ns: i128,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of `path` now, if it can be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileStamp {
            ino: m.ino(),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        })
    }
}

/// Loads every service file in `SvcConfigPath`. A bad file is reported and skipped; an id
/// defined twice keeps its first definition (files in name order).
pub fn scan(ctl: &Controller) -> Scan {
    let mut scan = Scan::default();
    // Ids seen so far: a file may hold thousands of services.
    let mut ids = std::collections::HashSet::new();
    let files = match service_files(&ctl.svc_config_path) {
        Ok(f) => f,
        Err(e) => {
            scan.errors
                .push(format!("{}: {e}", ctl.svc_config_path.display()));
            return scan;
        }
    };
    for file in files {
        if let Some(stamp) = FileStamp::of(&file) {
            scan.stamps.insert(file.clone(), stamp);
        }
        match config::load_services(&file, &ctl.service_defaults) {
            Ok(list) => {
                for svc in list {
                    if !ids.insert(svc.id.clone()) {
                        scan.errors.push(format!(
                            "{}: service {} is already defined in an earlier file; ignored here",
                            file.display(),
                            svc.id
                        ));
                    } else {
                        scan.services.push((svc, file.clone()));
                    }
                }
            }
            Err(e) => {
                scan.errors.push(e.to_string());
                scan.bad_files.push(file);
            }
        }
    }
    scan
}

/// Every valid service, plus the errors of the files (or entries) that were skipped.
pub fn services(ctl: &Controller) -> (Vec<Service>, Vec<String>) {
    let scan = scan(ctl);
    (
        scan.services.into_iter().map(|(s, _)| s).collect(),
        scan.errors,
    )
}
