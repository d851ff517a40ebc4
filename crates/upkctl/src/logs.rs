//! `logs`: what a service wrote, from the files it writes to, like `tail -F` (docs/upkctl.md).
//!
//! The files are the service's RedirectStdout and RedirectStderr (relative to its run
//! directory; `log/stdout` and `log/stderr` by default), read from its run directory's
//! `settings.json`, so `logs` works with the controller down and reads only what the caller
//! may read (the files' own permissions decide). A Pipe*Script logger writes to the same
//! files; output it sends elsewhere is its own. One file serving both streams is read once;
//! two are shown one after the other, each under a `==> stream <==` line, as `tail` does.
//!
//! `-f` follows by name: new lines are printed as they are written, across restarts (the
//! service appends) and rotations (a file replaced at its path, or truncated, is read again
//! from its start), looking every 100 ms, until interrupted.

use crate::exit::{self, Failure, Result};
use crate::Ctx;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use upk_core::rundir::Settings;

/// How often `-f` looks at the files.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// The most bytes read back from a file's end to find the last lines.
const TAIL_WINDOW: u64 = 1 << 20;

/// One stream's file, and how far it has been read.
struct Followed {
    name: &'static str,
    path: PathBuf,
    file: Option<File>,
    ino: Option<(u64, u64)>,
    offset: u64,
    /// The path names something else than a regular file: not read.
    special: bool,
}

/// The service's output files: (stream, path), stdout first; one entry when both are one.
pub fn files(run_path: &Path, service: &str) -> Result<Vec<(&'static str, PathBuf)>> {
    upk_core::config::ServiceId::parse(service).map_err(|e| {
        Failure::new(
            exit::NOT_FOUND,
            format!("there is no service {service:?}: {e}"),
        )
    })?;
    let root = run_path.join(service);
    let settings = root.join(upk_core::rundir::SETTINGS);
    if !settings.exists() {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("there is no service {service:?} in {}", run_path.display()),
        ));
    }
    let svc = Settings::read(&settings)
        .map_err(|e| Failure::new(exit::FAILED, e))?
        .service;
    let path = |p: &Option<PathBuf>, default: &str| {
        p.as_ref()
            .map_or_else(|| root.join("log").join(default), |p| root.join(p))
    };
    let out = path(&svc.redirect_stdout, "stdout");
    let err = path(&svc.redirect_stderr, "stderr");
    let same = match (std::fs::metadata(&out), std::fs::metadata(&err)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => out == err,
    };
    Ok(if same {
        vec![("output", out)]
    } else {
        vec![("stdout", out), ("stderr", err)]
    })
}

/// `upkctl logs SERVICE [-n N] [-f]`.
pub fn logs(
    ctx: &Ctx,
    service: &str,
    lines: usize,
    follow: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let ctl = ctx.controller()?;
    let files = files(&ctl.svc_run_path, service)?;
    let several = files.len() > 1;
    let mut followed = Vec::new();
    for (name, path) in files {
        let mut f = Followed::new(name, path);
        if several {
            writeln!(out, "==> {name} ({}) <==", f.path.display())?;
        }
        if lines == 0 {
            if f.open()? {
                f.copy_new(out)?;
            }
        } else {
            out.write_all(f.last_lines(lines)?.as_bytes())?;
        }
        if f.special {
            crate::warn(&format!(
                "{} is not a regular file (a FIFO, a terminal?): not read",
                f.path.display()
            ));
        }
        followed.push(f);
    }
    out.flush()?;
    if !follow {
        return Ok(exit::OK);
    }
    let mut last: Option<usize> = None;
    loop {
        for (i, f) in followed.iter_mut().enumerate() {
            let header = (several && last != Some(i)).then_some(f.name);
            if f.follow(header, out)? {
                last = Some(i);
                out.flush()?;
            }
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// The last `n` lines of the file at `path` (nothing when it is not there, or is not a
/// regular file).
pub fn last_lines(path: &Path, n: usize) -> Result<String> {
    Followed::new("", path.to_owned()).last_lines(n)
}

impl Followed {
    fn new(name: &'static str, path: PathBuf) -> Followed {
        Followed {
            name,
            path,
            file: None,
            ino: None,
            offset: 0,
            special: false,
        }
    }

    /// Opens the file if it is there and a regular file; `Ok(false)` if it is not (yet). The
    /// open does not wait (a FIFO with no writer would block it), and only a regular file is
    /// read (a FIFO's data is its reader's, a terminal's too).
    fn open(&mut self) -> Result<bool> {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        match opened {
            Ok(f) => {
                let m = f.metadata()?;
                if !m.is_file() {
                    self.special = true;
                    return Ok(false);
                }
                self.ino = Some((m.dev(), m.ino()));
                self.file = Some(f);
                self.offset = 0;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Failure::new(
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    exit::REFUSED
                } else {
                    exit::TEMPORARY
                },
                format!("cannot read {}: {e}", self.path.display()),
            )),
        }
    }

    /// The last `n` lines (nothing with 0), and the read position left at the end. At most
    /// [`TAIL_WINDOW`] bytes are read back from the end.
    fn last_lines(&mut self, n: usize) -> Result<String> {
        if n == 0 || !self.open()? {
            return Ok(String::new());
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(String::new());
        };
        let len = file.metadata()?.len();
        let from = len.saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        file.take(len - from).read_to_end(&mut buf)?;
        self.offset = from + buf.len() as u64;
        let text = String::from_utf8_lossy(&buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut parts: Vec<&str> = body.rsplitn(n.saturating_add(1), '\n').collect();
        if parts.len() > n {
            parts.truncate(n);
        } else if from > 0 && parts.len() > 1 {
            // A window that began mid-file begins mid-line: that piece is not a line.
            parts.pop();
        }
        parts.reverse();
        let mut out = parts.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes what was written since the last look, after `header` when there is something;
    /// a file replaced at its path or truncated is read again from its start (after the rest
    /// of the old one). True when something was written.
    fn follow(&mut self, header: Option<&'static str>, out: &mut dyn Write) -> Result<bool> {
        let now = std::fs::metadata(&self.path)
            .ok()
            .map(|m| ((m.dev(), m.ino()), m.len()));
        let mut header = header;
        let mut wrote = false;
        let mut emit = |f: &mut Followed, out: &mut dyn Write| -> Result<()> {
            let mut w = Headed {
                out,
                header: &mut header,
            };
            wrote |= f.copy_new(&mut w)? > 0;
            Ok(())
        };
        match now {
            None => return Ok(false),
            Some((ino, len)) if Some(ino) != self.ino || len < self.offset => {
                if Some(ino) != self.ino {
                    emit(self, out)?;
                }
                if !self.open()? {
                    return Ok(wrote);
                }
            }
            Some(_) => {}
        }
        emit(self, out)?;
        Ok(wrote)
    }

    /// Copies the file from the read position to its end, in bounded pieces; returns the
    /// bytes copied.
    fn copy_new(&mut self, out: &mut dyn Write) -> Result<u64> {
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = vec![0; 64 * 1024];
        let mut total = 0;
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                return Ok(total);
            }
            out.write_all(&chunk[..n])?;
            self.offset += n as u64;
            total += n as u64;
        }
    }
}

/// A writer that writes `==> NAME <==` before the first bytes, if it has a header.
struct Headed<'a, 'h> {
    out: &'a mut dyn Write,
    header: &'h mut Option<&'static str>,
}

impl Write for Headed<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(name) = self.header.take() {
            writeln!(self.out, "==> {name} <==")?;
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
