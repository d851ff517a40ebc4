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
use std::os::unix::fs::MetadataExt;
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
        let mut f = Followed {
            name,
            path,
            file: None,
            ino: None,
            offset: 0,
        };
        let text = f.last_lines(lines)?;
        if several {
            writeln!(out, "==> {name} ({}) <==", f.path.display())?;
        }
        out.write_all(text.as_bytes())?;
        followed.push(f);
    }
    out.flush()?;
    if !follow {
        return Ok(exit::OK);
    }
    let mut last: Option<usize> = None;
    loop {
        for (i, f) in followed.iter_mut().enumerate() {
            let new = f.read_new()?;
            if new.is_empty() {
                continue;
            }
            if several && last != Some(i) {
                writeln!(out, "==> {} <==", f.name)?;
            }
            last = Some(i);
            out.write_all(&new)?;
            out.flush()?;
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// The last `n` lines of the file at `path` (all with 0; nothing when it is not there).
pub fn last_lines(path: &Path, n: usize) -> Result<String> {
    Followed {
        name: "",
        path: path.to_owned(),
        file: None,
        ino: None,
        offset: 0,
    }
    .last_lines(n)
}

impl Followed {
    /// Opens the file if it is there; `Ok(false)` if it is not (yet).
    fn open(&mut self) -> Result<bool> {
        match File::open(&self.path) {
            Ok(f) => {
                let m = f.metadata()?;
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

    /// The last `n` lines (all with 0), and the read position left at the end.
    fn last_lines(&mut self, n: usize) -> Result<String> {
        if !self.open()? {
            return Ok(String::new());
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(String::new());
        };
        let len = file.metadata()?.len();
        let from = if n == 0 {
            0
        } else {
            len.saturating_sub(TAIL_WINDOW)
        };
        file.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        file.take(len - from).read_to_end(&mut buf)?;
        self.offset = from + buf.len() as u64;
        let text = String::from_utf8_lossy(&buf);
        if n == 0 {
            return Ok(text.into_owned());
        }
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut parts: Vec<&str> = body.rsplitn(n + 1, '\n').collect();
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

    /// What was written since the last look; a file replaced at its path or truncated is
    /// read again from its start.
    fn read_new(&mut self) -> Result<Vec<u8>> {
        let now = std::fs::metadata(&self.path)
            .ok()
            .map(|m| ((m.dev(), m.ino()), m.len()));
        let mut buf = Vec::new();
        match now {
            None => return Ok(buf),
            Some((ino, len)) if Some(ino) != self.ino || len < self.offset => {
                // Rotated: first what the old file still had, then the new one from its start.
                if Some(ino) != self.ino {
                    self.drain(&mut buf)?;
                }
                if !self.open()? {
                    return Ok(buf);
                }
            }
            Some(_) => {}
        }
        self.drain(&mut buf)?;
        Ok(buf)
    }

    fn drain(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.seek(SeekFrom::Start(self.offset))?;
            let n = file.read_to_end(buf)?;
            self.offset += n as u64;
        }
        Ok(())
    }
}
