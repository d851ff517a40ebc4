//! A [`Client`] whose connection is a program's stdin and stdout: `ssh HOST upkctl bridge`
//! for `upkctl -H` (docs/remote.md), or any program that relays the protocol.
//!
//! The program gets one end of a socket pair as its stdin and stdout, so the connection is a
//! [`UnixStream`] like the controller's socket and every request, timeout and subscription of
//! [`Client`] works unchanged over it. Its stderr is a pipe read by a thread that keeps the last
//! few KiB: when the program fails (ssh cannot connect, the key is refused, there is no upkctl
//! on the other side, the remote controller is not running), the error is one sentence made
//! of its exit status and the last line it wrote ([`Error::Program`]). While the connection
//! works, what it writes on stderr is not shown.
//!
//! The program is the client's: dropping the client closes the connection, which ends the
//! program's stdin; it is then given [`GRACE`] to exit before it is killed, and is reaped.

use crate::{Client, Error, Result};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a program whose connection was closed may take to exit before it is killed.
pub const GRACE: Duration = Duration::from_secs(2);

/// How much of the program's stderr is kept.
const TAIL_BYTES: usize = 4096;

/// The longest stderr line quoted in an error, in characters.
const LINE_CHARS: usize = 300;

/// The end of what the program wrote on stderr, and whether it has closed it.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    closed: bool,
}

/// The program behind a [`Client`]: the child, its name for errors, its stderr's tail.
#[derive(Debug)]
pub(crate) struct Program {
    name: String,
    child: Child,
    tail: Arc<(Mutex<Tail>, Condvar)>,
}

impl Client {
    /// Runs `command` with its stdin and stdout connected to this client and says `hello`
    /// through it, waiting at most `hello` for the answer. The program must relay the
    /// protocol to a controller (`ssh HOST upkctl bridge`). Its stderr is kept for errors:
    /// when it ends before answering, the error is [`Error::Program`] with its exit status and
    /// the last line it wrote. Later requests wait without a bound until
    /// [`Client::set_timeout`] sets one.
    pub fn spawn(mut command: Command, hello: Duration) -> Result<Client> {
        let name = command.get_program().to_string_lossy().into_owned();
        let (ours, theirs) = UnixStream::pair()?;
        let stdin = OwnedFd::from(theirs.try_clone()?);
        command
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::piped());
        let spawned = command.spawn();
        // The command holds the program's ends of the pair until it is dropped: without this,
        // its end never reads as closed when the program exits.
        drop(command);
        let mut child = spawned.map_err(|e| Error::Program {
            program: name.clone(),
            status: format!("could not be started: {e}"),
            line: None,
        })?;
        let tail = Arc::new((Mutex::new(Tail::default()), Condvar::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&tail);
            // Not joined: a program may leave a descendant holding its stderr (an ssh
            // ControlMaster); the thread ends when the last writer closes it.
            std::thread::spawn(move || keep_tail(stderr, &tail));
        }
        let mut program = Program { name, child, tail };
        let started = Instant::now();
        match Client::over(ours, hello) {
            Ok(mut client) => {
                client.program = Some(program);
                Ok(client)
            }
            Err(e @ Error::TimedOut(_)) => {
                // Still connecting, or hung: no grace for it.
                program.end();
                Err(e)
            }
            Err(e) => {
                let left = hello.saturating_sub(started.elapsed()).max(GRACE);
                Err(program.failure(left).unwrap_or(e))
            }
        }
    }
}

impl Program {
    /// Why the connection broke, when it was the program that ended: waits at most `bound`
    /// for it to exit, then says how it ended and what it last wrote. `None` when it is
    /// still running or exited with 0 (the other side closed the connection, an end).
    pub(crate) fn failure(&mut self, bound: Duration) -> Option<Error> {
        let status = self.wait(bound)?;
        if status.success() {
            return None;
        }
        let status = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => format!("ended ({status})"),
        };
        Some(Error::Program {
            program: self.name.clone(),
            status,
            line: self.last_line(Duration::from_millis(500)),
        })
    }

    /// Kills it and reaps it.
    fn end(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its exit status, waiting for it at most `bound`.
    fn wait(&mut self, bound: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + bound;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The last non-empty line of its stderr, once the reader has seen the end of it (or
    /// after `bound`), cleaned for one line of text.
    fn last_line(&self, bound: Duration) -> Option<String> {
        let (lock, cond) = &*self.tail;
        let tail = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (tail, _) = cond
            .wait_timeout_while(tail, bound, |t| !t.closed)
            .unwrap_or_else(|p| p.into_inner());
        last_line(&tail.bytes)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // The connection is closed by now (the wire is dropped first): the program sees the
        // end of its stdin and should exit by itself.
        if self.wait(GRACE).is_none() {
            self.end();
        }
    }
}

/// Reads `stderr` to its end, keeping its last [`TAIL_BYTES`].
fn keep_tail(mut stderr: impl Read, tail: &(Mutex<Tail>, Condvar)) {
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut t = tail.0.lock().unwrap_or_else(|p| p.into_inner());
        t.bytes.extend_from_slice(&chunk[..n]);
        let excess = t.bytes.len().saturating_sub(TAIL_BYTES);
        t.bytes.drain(..excess);
    }
    tail.0.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    tail.1.notify_all();
}

/// The last line of `bytes` with text on it: control characters dropped, at most
/// [`LINE_CHARS`] characters.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let mut clean: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(LINE_CHARS)
        .collect();
    if line.chars().count() > LINE_CHARS {
        clean.push_str("...");
    }
    Some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn the_last_line_is_the_last_one_with_text() {
        assert_eq!(
            last_line(b"Warning: added\r\nssh: connect to host x port 1: refused\r\n\n"),
            Some("ssh: connect to host x port 1: refused".into())
        );
        assert_eq!(last_line(b"\n \n"), None);
        assert_eq!(last_line(b"a\x1b[31mred"), Some("a[31mred".into()));
        let long = last_line(&[b'x'; 1000]).expect("a line");
        assert_eq!(long.len(), LINE_CHARS + 3);
    }

    #[test]
    fn a_program_that_fails_before_hello_says_its_status_and_last_line() {
        let got = Client::spawn(
            sh("echo first >&2; echo 'Permission denied (publickey).' >&2; exit 255"),
            Duration::from_secs(10),
        );
        match got {
            Err(Error::Program { status, line, .. }) => {
                assert_eq!(status, "exited with status 255");
                assert_eq!(line.as_deref(), Some("Permission denied (publickey)."));
            }
            other => panic!("expected a program failure, got {other:?}"),
        }
        let e = Client::spawn(sh("exit 3"), Duration::from_secs(10)).expect_err("fails");
        assert_eq!(e.to_string(), "sh exited with status 3");
    }

    #[test]
    fn a_program_that_cannot_start_says_so() {
        let e = Client::spawn(
            Command::new("/nonexistent/upk-no-such-program"),
            Duration::from_secs(10),
        )
        .expect_err("fails");
        let text = e.to_string();
        assert!(
            text.starts_with("/nonexistent/upk-no-such-program could not be started: "),
            "{text}"
        );
    }

    #[test]
    fn a_program_that_never_answers_times_out_at_the_bound_and_is_ended() {
        let t = Instant::now();
        let e = Client::spawn(sh("exec sleep 60"), Duration::from_millis(300)).expect_err("hangs");
        assert!(matches!(e, Error::TimedOut(_)), "{e:?}");
        assert!(t.elapsed() < GRACE, "ended at once: {:?}", t.elapsed());
    }

    /// A relay that answers `hello` as a controller would: the client works over it, and
    /// dropping the client ends it.
    #[test]
    fn requests_go_through_the_program() {
        let hello = r#"{"id":1,"type":"hello","version":1,"pid":77,"access":"read"}"#;
        let list = r#"{"id":2,"type":"services","services":[]}"#;
        let script = format!("read a; echo '{hello}'; read b; echo '{list}'; read c");
        let mut client = Client::spawn(sh(&script), Duration::from_secs(10)).expect("spawn");
        assert_eq!(client.controller_pid(), 77);
        assert_eq!(client.access(), crate::Access::Read);
        assert!(client.list().expect("list").is_empty());
        let t = Instant::now();
        drop(client);
        assert!(t.elapsed() < GRACE, "the relay ended when its stdin did");
    }

    /// The program ending after `hello` is a program failure on the next request, not a bare
    /// end of file.
    #[test]
    fn a_program_that_dies_later_is_named_on_the_next_request() {
        let hello = r#"{"id":1,"type":"hello","version":1,"pid":77,"access":"read"}"#;
        let script =
            format!("read a; echo '{hello}'; read b; echo 'Connection reset' >&2; exit 255");
        let mut client = Client::spawn(sh(&script), Duration::from_secs(10)).expect("spawn");
        client
            .set_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let e = client.list().expect_err("the relay died");
        assert_eq!(e.to_string(), "sh exited with status 255: Connection reset");
    }
}
