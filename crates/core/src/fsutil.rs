//! Atomic file replacement: write a sibling temporary file, fsync it, rename it over the target.
//!
//! A reader therefore sees either the old or the new content, never a torn one, even when the
//! writer dies half-way (the s6 `status.new` pattern).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `data` atomically, with file mode `mode`.
///
/// `durable` adds an fsync of the file before the rename; the status file skips it because a
/// stale status after a power cut is harmless while an fsync per transition is not free.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let tmp = tmp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.new`: hidden, on the same file system as the target so rename is atomic.
fn tmp_sibling(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.new"))
}

/// Opens `path` for appending, creating it with `mode` if needed.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("status");
        write_atomic(&p, b"one", 0o644, false).expect("first write");
        write_atomic(&p, b"two", 0o644, true).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status")]);
    }
}
