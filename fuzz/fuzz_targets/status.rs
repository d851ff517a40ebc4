//! The status file reader: arbitrary bytes as `SvcRunPath/<id>/status`, read with
//! `Status::read` as upkctl, uptop and a new buddy do. Nothing may panic; a status that reads
//! must serialise (as `Status::write` does, without its fsync) and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use upk_core::status::Status;

/// One scratch file per fuzzing process.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("upk-fuzz-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("status")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the status file");
    let Ok(Some(status)) = Status::read(path) else {
        return;
    };
    let _ = status.serves();
    let text = serde_json::to_vec(&status).expect("a status serialises");
    let again: Status = serde_json::from_slice(&text).expect("a written status reads");
    assert_eq!(again.seq, status.seq);
    assert_eq!(again.state, status.state);
});
