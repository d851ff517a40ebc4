//! Black-box tests of the controller (`upkeeper run`) with the real binaries: its client
//! protocol through libupkeeper and raw sockets, access by peer credentials, start-up order,
//! the audit store through crashes of the controller and of buddies, and a store that cannot
//! be written.

mod access;
mod audit_trail;
mod basics;
mod config;
mod health;
mod hostile;
mod metrics;
mod outage;
mod restart;
mod seed;

use std::path::{Path, PathBuf};
use std::time::Duration;
use upk_testkit::{wait_until, Sandbox};

/// The seed's sample controller file, byte for byte except its four paths, which point into
/// the sandbox (state in `state/`, service files in `conf/`, run directories in `run/`).
pub fn seed_controller_file(sb: &Sandbox) -> PathBuf {
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/seed-sample.conf"),
    )
    .expect("the seed sample");
    let mut text = sample.clone();
    for (from, to) in [
        ("\"/usr/var/upkeeper/buddies\"", sb.run_path()),
        ("\"/usr/var/upkeeper\"", sb.path().join("state")),
        ("\"/usr/etc/upkeeper.d\"", sb.path().join("conf")),
        ("\"/usr/libexec/upk_buddy\"", upk_testkit::bin("upk_buddy")),
    ] {
        assert!(text.contains(from), "the sample sets {from}");
        text = text.replace(from, &format!("{to:?}"));
    }
    let path = sb.path().join("upkeeper.conf");
    std::fs::write(&path, text).expect("controller file");
    path
}

/// Writes a service file into the sandbox's `conf/`.
pub fn service_file(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    let path = sb.path().join("conf").join(name);
    std::fs::write(&path, text).expect("service file");
    path
}

/// The status file of a service of the sandbox.
pub fn status(sb: &Sandbox, id: &str) -> Option<upk_core::status::Status> {
    upk_core::status::Status::read(&sb.run_path().join(id).join("status"))
        .ok()
        .flatten()
}

/// Waits until `id` is running and returns its status.
pub fn running(sb: &Sandbox, id: &str) -> upk_core::status::Status {
    wait_until(
        Duration::from_secs(10),
        &format!("{id} running"),
        || match status(sb, id) {
            Some(s) if s.state == upk_core::event::StateName::Running && s.pid.is_some() => Ok(s),
            other => Err(format!("{other:?}")),
        },
    )
}

/// Every stored event of `service` (or all), read straight from the database.
pub fn stored(db: &Path, service: Option<&str>) -> Vec<upk_core::history::EventRow> {
    let Ok(store) = upkeeper::store::Store::open_read_only(db) else {
        return Vec::new();
    };
    let filter = upk_core::history::HistoryFilter {
        service: service.map(str::to_owned),
        ..Default::default()
    };
    store.history(&filter).unwrap_or_default()
}
