//! A full disk under the audit store: supervision goes on, the controller says so, and once
//! there is room again every event is stored, once and in sequence.

use super::*;
use std::io::Write;
use std::process::Command;
use upk_testkit::Controller;

/// A small tmpfs mounted on a directory for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "upk-test"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {out:?}");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` until it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&block[..1024]);
    let _ = f.sync_all();
}

#[test]
fn a_full_store_does_not_stop_supervision_and_catches_up_afterwards() {
    let sb = Sandbox::new();
    let state = sb.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "4m");
    let ctl = sb.controller_file();
    service_file(
        &sb,
        "crash.conf",
        r##"{ "crash": { StartScript: "#!/bin/sh\nexit 1\n", InitialState: "running",
             UserRateLimit: 0.05, MaxConsecutiveFailures: -1, RingbufferSize: 4096 } }"##,
    );
    let db = state.join("upkeeper.db");
    let c = Controller::start(&sb, &ctl);
    wait_until(Duration::from_secs(10), "the first events stored", || {
        let n = stored(&db, Some("crash")).len();
        if n >= 5 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    });

    fill(&state.join("filler"));
    c.said("cannot write the audit store");
    // Supervision goes on: the crash loop keeps restarting, unacknowledged.
    let then = status(&sb, "crash").expect("status");
    let during = wait_until(
        Duration::from_secs(10),
        "restarts during the outage",
        || match status(&sb, "crash") {
            Some(s) if s.restarts >= then.restarts + 10 => Ok(s),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        during.acked < during.seq,
        "records wait in the ring: {during:?}"
    );
    let c2 = c.client().list().expect("clients are still served");
    assert_eq!(c2.len(), 1);

    std::fs::remove_file(state.join("filler")).expect("make room");
    let now = status(&sb, "crash").expect("status").seq;
    wait_until(Duration::from_secs(15), "the backlog stored", || {
        let rows = stored(&db, Some("crash"));
        let seqs: Vec<u64> = rows.iter().map(|r| r.record.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != expected {
            return Err(format!("not contiguous from 1: {seqs:?}"));
        }
        if (seqs.len() as u64) < now {
            return Err(format!("{} of {now} stored", seqs.len()));
        }
        Ok(())
    });
    drop(c);
}
