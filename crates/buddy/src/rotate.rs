//! The buddy's own logger: `upk_buddy --logger FILE MAX_SIZE KEEP TIMESTAMPS`, which the buddy
//! runs for a stream when `LogMaxSize` is set and the stream has no Pipe*Script
//! (docs/servicedir.md, "Output").
//!
//! It is a logger like any Pipe*Script: started by the buddy with the stream's FIFO as stdin,
//! as the service's user, restarted when it dies, and left running by a killed buddy until
//! the next one retires it (so the service never writes into a pipe without a reader). It
//! reads whole lines and appends them to FILE, each after its UTC time with TIMESTAMPS 1
//! (`2026-12-02T21:03:12.123456Z `). Before a line would take FILE past MAX_SIZE, FILE is
//! rotated as svlogd and s6-log do it: `FILE.(KEEP-1)` becomes `FILE.KEEP` (the oldest is
//! replaced), ..., `FILE` becomes `FILE.1`, and a new FILE is begun; so exactly KEEP rotated
//! files are kept. A line longer than 64 KiB is written in pieces. Nothing is lost across a
//! rotation: the renames happen between two writes. It ends at EOF (no writer is left) or at
//! SIGTERM, writing the partial line it holds.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest piece written without its newline.
const LINE_MAX: usize = 64 << 10;

/// What the logger is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The file written.
    pub file: PathBuf,
    /// Rotate before it would grow past this many bytes.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// Each line begins with its UTC time.
    pub timestamps: bool,
}

impl Rotation {
    /// The command line arguments after the program (`--logger FILE MAX KEEP TS`).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--logger".into(),
            self.file.display().to_string(),
            self.max_size.to_string(),
            self.keep.to_string(),
            u8::from(self.timestamps).to_string(),
        ]
    }

    /// Parses what [`Rotation::args`] made (after `--logger`).
    pub fn parse(args: &[String]) -> Option<Rotation> {
        let [file, max, keep, ts] = args else {
            return None;
        };
        Some(Rotation {
            file: PathBuf::from(file),
            max_size: max.parse().ok().filter(|n| *n >= 1)?,
            keep: keep.parse().ok().filter(|n| (1..=1000).contains(n))?,
            timestamps: match ts.as_str() {
                "0" => false,
                "1" => true,
                _ => return None,
            },
        })
    }
}

/// The writing side: the open file, its size, and how to rotate it.
pub struct Writer {
    rotation: Rotation,
    file: File,
    size: u64,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Writer {
    /// Opens (creating) the file to append to.
    pub fn open(rotation: Rotation) -> io::Result<Writer> {
        let file = open(&rotation.file)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            rotation,
            file,
            size,
        })
    }

    /// Writes one line (or piece of one), rotating first if it would not fit.
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        let stamp = if self.rotation.timestamps {
            format!("{} ", upk_core::time::format_utc(upk_core::time::wall_us()))
        } else {
            String::new()
        };
        let len = (stamp.len() + line.len()) as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.rotation.max_size {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(stamp.len() + line.len());
        buf.extend_from_slice(stamp.as_bytes());
        buf.extend_from_slice(line);
        self.file.write_all(&buf)?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// FILE -> FILE.1 -> ... -> FILE.KEEP (the oldest replaced), then a new FILE.
    fn rotate(&mut self) -> io::Result<()> {
        let path = self.rotation.file.clone();
        for n in (1..self.rotation.keep).rev() {
            match std::fs::rename(numbered(&path, n), numbered(&path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::rename(&path, numbered(&path, 1)) {
            // Removed by hand: a new FILE is begun all the same.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.file = open(&path)?;
        self.size = 0;
        Ok(())
    }
}

/// Set by SIGTERM: the read it interrupts ends the copy.
static TERMINATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERMINATED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Copies whole lines from `input` to the writer until EOF or SIGTERM (once
/// `end_at_sigterm` is in force); what is left of a last line without its newline is written
/// at the end.
pub fn copy(input: &mut impl Read, out: &mut Writer) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if TERMINATED.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            out.line(&pending[start..=start + i])?;
            start += i + 1;
        }
        pending.drain(..start);
        while pending.len() >= LINE_MAX {
            let piece: Vec<u8> = pending.drain(..LINE_MAX).collect();
            out.line(&piece)?;
        }
    }
    if !pending.is_empty() {
        out.line(&pending)?;
    }
    Ok(())
}

/// SIGTERM interrupts the read the logger waits in (no `SA_RESTART`), so that [`copy`] writes
/// the partial line it holds and returns.
fn end_at_sigterm() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
}

/// `upk_buddy --logger ...`: the exit code.
pub fn run(args: &[String]) -> i32 {
    let Some(rotation) = Rotation::parse(args) else {
        eprintln!("usage: upk_buddy --logger FILE MAX_SIZE KEEP 0|1");
        return upk_core::exit::PERMANENT;
    };
    let mut out = match Writer::open(rotation.clone()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("upk_buddy --logger: {}: {e}", rotation.file.display());
            return upk_core::exit::TEMPORARY;
        }
    };
    end_at_sigterm();
    match copy(&mut io::stdin().lock(), &mut out) {
        Ok(()) => upk_core::exit::OK,
        Err(e) => {
            eprintln!("upk_buddy --logger: {}: {e}", rotation.file.display());
            upk_core::exit::TEMPORARY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(dir: &Path, max_size: u64, keep: u32) -> Rotation {
        Rotation {
            file: dir.join("out"),
            max_size,
            keep,
            timestamps: false,
        }
    }

    #[test]
    fn rotation_keeps_exactly_keep_files_and_loses_no_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = rotation(dir.path(), 100, 3);
        let mut w = Writer::open(r.clone()).expect("open");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        copy(&mut text.as_bytes(), &mut w).expect("copy");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["out", "out.1", "out.2", "out.3"]);
        // The newest lines, in order, across the kept files; every file within the size.
        let mut kept = String::new();
        for n in ["out.3", "out.2", "out.1", "out"] {
            let body = std::fs::read_to_string(dir.path().join(n)).expect("read");
            assert!(body.len() <= 100, "{n}: {}", body.len());
            kept.push_str(&body);
        }
        assert!(text.ends_with(&kept), "{kept}");
        assert!(kept.ends_with("line 099\n"));
        assert_eq!(Rotation::parse(&r.args()[1..]), Some(r));
    }

    #[test]
    fn a_partial_last_line_is_written_and_long_lines_in_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = Writer::open(Rotation {
            timestamps: true,
            ..rotation(dir.path(), 1 << 30, 1)
        })
        .expect("open");
        let long = "x".repeat(LINE_MAX + 10);
        copy(&mut format!("{long}\nno newline").as_bytes(), &mut w).expect("copy");
        let body = std::fs::read_to_string(dir.path().join("out")).expect("read");
        // Three writes, each stamped: the long line's two pieces and the partial last line.
        assert_eq!(body.matches("Z x").count(), 2);
        assert!(
            body.ends_with("Z no newline"),
            "{}",
            &body[body.len() - 40..]
        );
        assert_eq!(body.len(), LINE_MAX + 10 + 1 + "no newline".len() + 3 * 28);
        assert!(Rotation::parse(&["f".into(), "0".into(), "1".into(), "0".into()]).is_none());
        assert!(Rotation::parse(&["f".into(), "9".into(), "0".into(), "0".into()]).is_none());
    }
}
