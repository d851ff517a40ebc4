//! What the loop adds to a run's records beyond the machine's facts (docs/insight.md).
//!
//! Before a start, [`Marks::of`] notes where each redirect file ends; [`Witness::begin`] adds
//! how the program was
//! executed (through the shell, or directly) and what `execve` said if the direct start
//! failed. At the death, [`Witness::complete`] fills the `died` record: the last lines the run
//! wrote (read back from the redirect files the buddy already holds, never past where the run
//! began, bounded by `death::TAIL_LINES` and `death::TAIL_BYTES`), the exec error, and the
//! [`Reason`] decided from all of it. [`Witness::started`] puts the configuration hash on the
//! `started` record. The files are read through `/proc/self/fd`, so what is read is the
//! inode the service writes, whatever was renamed or swapped at its path since: a death costs
//! two opens, two `fstat`s and two `pread`s of at most 2 KiB, and nothing is read while the
//! service runs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use upk_core::death::{last_lines, Reason, Tail, TAIL_BYTES, TAIL_LINES};
use upk_core::event::EventKind;

/// How the service's program was executed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct How {
    /// The start script ran through the shell (whose exit codes 126 and 127 have meanings).
    pub shell: bool,
    /// Why the direct start failed (`EACCES: Permission denied`), when the shell was the
    /// fallback.
    pub exec_error: Option<String>,
}

/// Where a redirect file ended when the run began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    dev: u64,
    ino: u64,
    size: u64,
}

/// Where the redirect files (stdout, stderr) ended: taken before the run is started, since
/// it may write before the start returns.
#[derive(Debug, Default, Clone, Copy)]
pub struct Marks([Option<Mark>; 2]);

impl Marks {
    /// The ends of `files` now.
    pub fn of(files: Option<[&File; 2]>) -> Marks {
        Marks(files.map_or([None, None], |f| [mark(f[0]), mark(f[1])]))
    }
}

/// What one run's death will be explained with.
#[derive(Debug, Default)]
pub struct Witness {
    marks: [Option<Mark>; 2],
    how: How,
}

fn mark(file: &File) -> Option<Mark> {
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| Mark {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
    })
}

impl Witness {
    /// A run begins, writing after `marks`, started as `how`.
    pub fn begin(marks: Marks, how: How) -> Witness {
        Witness {
            marks: marks.0,
            how,
        }
    }

    /// A run adopted from a predecessor: its output counts from now, and how it was
    /// executed is not known (its death's status is not known either).
    pub fn adopted(files: Option<[&File; 2]>) -> Witness {
        Witness::begin(Marks::of(files), How::default())
    }

    /// Fills a `started` record's configuration hash.
    pub fn started(kind: &mut EventKind, hash: Option<&str>) {
        if let EventKind::Started { config } = kind {
            *config = hash.map(str::to_owned);
        }
    }

    /// Fills a `died` record: tail, exec error, reason (after the cgroup has said `oom`).
    /// `files` are the redirect files at their paths now; `before`, the ones they replaced
    /// during the run (a rotation), which hold what the run wrote first.
    pub fn complete(
        &self,
        files: Option<[&File; 2]>,
        before: Option<[&File; 2]>,
        kind: &mut EventKind,
    ) {
        let EventKind::Died {
            exit,
            oom,
            stop,
            exec_error,
            tail,
            reason,
            ..
        } = kind
        else {
            return;
        };
        *reason = Some(Reason::decide(*exit, *oom, stop.as_ref(), self.how.shell));
        exec_error.clone_from(&self.how.exec_error);
        if let Some(files) = files {
            let t = self.tail(files, before);
            *tail = (!t.is_empty()).then(|| Box::new(t));
        }
    }

    /// stderr first (it most often says why), then stdout with what the budget leaves; one
    /// file serving both is read once.
    fn tail(&self, files: [&File; 2], before: Option<[&File; 2]>) -> Tail {
        let mut budget = TAIL_BYTES;
        let stderr = self.stream(1, files, before, TAIL_LINES, &mut budget);
        let same = self.marks[0].is_some()
            && matches!((self.marks[0], self.marks[1]), (Some(a), Some(b)) if (a.dev, a.ino) == (b.dev, b.ino));
        let stdout = if same {
            Vec::new()
        } else {
            let left = TAIL_LINES - stderr.len();
            self.stream(0, files, before, left, &mut budget)
        };
        Tail { stderr, stdout }
    }

    /// Stream `i`'s last lines: from the file at its path, and when that holds fewer than
    /// `lines` and replaced the marked one during the run, the rest from the marked one.
    fn stream(
        &self,
        i: usize,
        files: [&File; 2],
        before: Option<[&File; 2]>,
        lines: usize,
        budget: &mut usize,
    ) -> Vec<String> {
        let mut now = read_tail(files[i], self.marks[i], lines, budget);
        let Some(old) = before.map(|b| b[i]).filter(|_| now.len() < lines) else {
            return now;
        };
        let mut earlier = read_tail(old, self.marks[i], lines - now.len(), budget);
        earlier.append(&mut now);
        earlier
    }
}

/// The run's last lines in `file`: from where it ended at `mark`, at most `budget` bytes back
/// from its end. A file that is no longer the one marked (or was truncated) is read from its
/// start.
fn read_tail(file: &File, mark: Option<Mark>, lines: usize, budget: &mut usize) -> Vec<String> {
    let Some(mark) = mark else {
        return Vec::new();
    };
    if lines == 0 || *budget == 0 {
        return Vec::new();
    }
    // The redirect descriptor is write-only (O_APPEND): the same inode, opened for reading.
    let Ok(reader) = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return Vec::new();
    };
    let Ok(meta) = reader.metadata() else {
        return Vec::new();
    };
    if !meta.is_file() {
        return Vec::new();
    }
    let begin = if (meta.dev(), meta.ino()) == (mark.dev, mark.ino) && meta.len() >= mark.size {
        mark.size
    } else {
        0
    };
    let end = meta.len();
    let from = begin.max(end.saturating_sub(*budget as u64));
    let Ok(len) = usize::try_from(end - from) else {
        return Vec::new();
    };
    let mut buf = vec![0; len];
    let Ok(n) = reader.read_at(&mut buf, from) else {
        return Vec::new();
    };
    buf.truncate(n);
    last_lines(&buf, from == begin, lines, budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use upk_core::event::Exit;

    fn append(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open")
    }

    #[test]
    fn a_death_keeps_what_its_run_wrote_and_no_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, mut err) = (
            append(&dir.path().join("stdout")),
            append(&dir.path().join("stderr")),
        );
        writeln!(err, "from the run before").expect("write");
        let w = Witness::begin(
            Marks::of(Some([&out, &err])),
            How {
                shell: true,
                exec_error: None,
            },
        );
        writeln!(out, "listening on :80").expect("write");
        write!(err, "sh: 1: exec: /nope: not found").expect("write");
        let mut kind = EventKind::died(Exit::Exited { code: 127 }, 0.01);
        w.complete(Some([&out, &err]), None, &mut kind);
        let EventKind::Died { reason, tail, .. } = kind else {
            unreachable!()
        };
        assert_eq!(reason, Some(Reason::NotFound));
        let tail = tail.expect("a tail");
        assert_eq!(tail.stderr, ["sh: 1: exec: /nope: not found"]);
        assert_eq!(tail.stdout, ["listening on :80"]);
    }

    #[test]
    fn one_file_for_both_streams_is_read_once_and_the_budget_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut both = append(&dir.path().join("log"));
        let w = Witness::begin(Marks::of(Some([&both, &both])), How::default());
        for i in 0..5000 {
            writeln!(both, "line {i}").expect("write");
        }
        let mut kind = EventKind::died(Exit::Exited { code: 1 }, 1.0);
        w.complete(Some([&both, &both]), None, &mut kind);
        let EventKind::Died { tail, reason, .. } = kind else {
            unreachable!()
        };
        assert_eq!(reason, Some(Reason::Failed));
        let tail = tail.expect("a tail");
        assert!(tail.stdout.is_empty());
        assert_eq!(tail.stderr.len(), TAIL_LINES);
        assert_eq!(tail.stderr.last().map(String::as_str), Some("line 4999"));
    }

    #[test]
    fn dev_null_and_a_silent_run_leave_no_tail() {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open");
        let w = Witness::begin(Marks::of(Some([&null, &null])), How::default());
        let mut kind = EventKind::died(Exit::Exited { code: 0 }, 1.0);
        w.complete(Some([&null, &null]), None, &mut kind);
        assert!(matches!(kind, EventKind::Died { tail: None, .. }));
    }
}
