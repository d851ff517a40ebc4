//! The wire protocol: newline-delimited JSON over unix stream sockets.
//!
//! One JSON object per line, each with a `type`. Requests may carry an `id` that the reply
//! echoes. A line longer than [`MAX_LINE`] or one that does not parse gets an `error` reply and
//! the connection is closed; the daemon itself is never harmed. `docs/protocol.md` is the
//! reference for writing a client in any language (or with `socat`).
//!
//! This module holds the framing ([`LineBuf`], [`encode`]) and the buddy's message set. On the
//! buddy's socket a client sends [`BuddyRequest`]s and receives [`BuddyReply`]s. When a buddy
//! phones home it dials the controller's socket and speaks the same messages with the roles
//! reversed: it sends `hello` and `event` (replies), the controller answers with `ack`.

use crate::event::{Exit, Record};
use crate::status::Status;
use serde::{Deserialize, Serialize};

/// Version announced in `hello`; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted line, newline excluded.
pub const MAX_LINE: usize = 1 << 20;

/// A message with an optional correlation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Echoed in the reply to a request; absent on pushed messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The message.
    #[serde(flatten)]
    pub body: T,
}

/// Who opens a connection to a buddy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An operator tool or test: may act and read, does not take over event delivery.
    #[default]
    Client,
    /// The controller: its `subscribe` makes it the event sink that acknowledges records.
    Controller,
}

/// A signal by name (`HUP`, `SIGHUP`) or number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    /// A number such as 1.
    Number(i32),
    /// A name such as `HUP` or `SIGHUP` (case-insensitive).
    Name(String),
}

impl SignalSpec {
    /// Resolves to a signal, or one sentence saying why not.
    pub fn resolve(&self) -> Result<nix::sys::signal::Signal, String> {
        use nix::sys::signal::Signal;
        match self {
            SignalSpec::Number(n) => {
                Signal::try_from(*n).map_err(|_| format!("{n} is not a signal number"))
            }
            SignalSpec::Name(name) => {
                let upper = name.to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                full.parse::<Signal>()
                    .map_err(|_| format!("{name:?} is not a signal name"))
            }
        }
    }
}

/// Requests a buddy accepts on `buddy.sock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuddyRequest {
    /// Opening exchange; the buddy answers with its own `hello`.
    Hello {
        /// The client's protocol version.
        version: u32,
        /// Who is calling.
        #[serde(default)]
        role: Role,
    },
    /// The current status record.
    Status,
    /// Want up: start now if stopped, failed or waiting.
    Start,
    /// Want down: stop (stop script, SIGTERM, SIGKILL to the group).
    Stop,
    /// Stop if running, then start.
    Restart,
    /// Start if stopped, and do not restart when it ends.
    Once,
    /// Run `actions/reload` with the pid; the reply carries its exit.
    Reload,
    /// Send a signal to the running service.
    Signal {
        /// Which signal.
        signal: SignalSpec,
        /// To the whole process group rather than the main process.
        #[serde(default)]
        group: bool,
    },
    /// Run a custom action by name or number (`01`..`32`); the reply carries its exit.
    Action {
        /// Name or number.
        name: String,
    },
    /// Unacknowledged records with a sequence number above `after`.
    Events {
        /// Cursor.
        #[serde(default)]
        after: u64,
    },
    /// Push every record as it is made (after sending the backlog). A controller's
    /// subscription also stops the buddy from phoning home.
    Subscribe,
    /// Records up to `seq` are committed and may be forgotten.
    Ack {
        /// Highest committed sequence number.
        seq: u64,
    },
    /// Stop the service, deliver pending records, exit.
    Shutdown,
    /// The controller relays an operator's request: carried out like `request`, with `cause`
    /// (who asked, as the controller authenticated them) in the records it causes. Only
    /// accepted from a connection that said `hello` with role `controller`.
    Relay {
        /// Who asked, e.g. `upkctl restart api (uid 1000, pid 4242)`.
        cause: String,
        /// The request.
        request: Box<BuddyRequest>,
    },
}

/// What a buddy sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuddyReply {
    /// Answer to `hello`, and the first line of a phone-home connection.
    Hello {
        /// The buddy's protocol version.
        version: u32,
        /// The service id.
        service: String,
        /// The buddy's pid.
        buddy_pid: i32,
        /// The incarnation the seqs of its records belong to ([`Status::incarnation`]);
        /// absent (empty) from a buddy older than incarnations.
        #[serde(default)]
        incarnation: String,
    },
    /// The request was carried out; the status after it.
    Ok {
        /// Status after the request took effect.
        status: Status,
        /// Extra detail ("already running").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// An action script ran to its end.
    ActionDone {
        /// Action name.
        action: String,
        /// How it ended.
        exit: Exit,
        /// The script only sent this signal to the service, and the buddy sent it instead of
        /// running the script (the default `kill -HUP $1` reload): a program that does not
        /// handle the signal dies of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// Backlog for `events`.
    Records {
        /// Records in sequence order.
        records: Vec<Record>,
    },
    /// A pushed record (subscription or phone home).
    Event {
        /// The record.
        record: Record,
    },
    /// The request failed; one sentence.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Serialises one message as a line.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own message types cannot fail (no maps with non-string keys).
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Why a connection's input is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A line exceeded [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Splits a byte stream into lines, refusing lines longer than [`MAX_LINE`].
///
/// The work is linear in the bytes pushed, however they are cut into reads and lines: taken
/// lines are only skipped over (`start`), the consumed front is dropped once it is at least
/// half the buffer (so each byte is moved at most once more than it is consumed), and the
/// newline search resumes where the last one stopped (`scanned`) instead of at the front.
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
    /// Bytes before this offset were returned as lines already.
    start: usize,
    /// `buf[start..scanned]` holds no newline.
    scanned: usize,
    /// Bytes examined, moved or copied: what the linearity test counts.
    #[cfg(test)]
    work: usize,
}

impl LineBuf {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            #[cfg(test)]
            {
                self.work += self.buf.len() - self.start;
            }
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes buffered and not yet returned as lines.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// Bytes buffered and not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete line (without its newline), if any.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        #[cfg(test)]
        {
            self.work += found.map_or(self.buf.len() - self.scanned, |n| n + 1);
        }
        match found.map(|n| self.scanned + n) {
            Some(end) if end - self.start > MAX_LINE => {
                self.scanned = end;
                Err(FrameError::TooLong)
            }
            Some(end) => {
                let line = self.buf[self.start..end].to_vec();
                #[cfg(test)]
                {
                    self.work += line.len();
                }
                self.start = end + 1;
                self.scanned = self.start;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.pending() > MAX_LINE {
                    Err(FrameError::TooLong)
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// Parses one line as a message with an envelope; the error is one sentence for the peer.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<Envelope<T>, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_and_oversize_refused() {
        let mut b = LineBuf::default();
        b.push(b"{\"type\":\"status\"}\n{\"type\":");
        assert_eq!(
            b.next_line().expect("ok").expect("line"),
            b"{\"type\":\"status\"}"
        );
        assert_eq!(b.next_line().expect("ok"), None);
        b.push(&vec![b'x'; MAX_LINE + 1]);
        assert_eq!(b.next_line(), Err(FrameError::TooLong));
        assert_eq!(b.next_line(), Err(FrameError::TooLong), "and stays refused");
    }

    #[test]
    fn lines_are_returned_whole_however_the_reads_cut_them() {
        let text = b"one\ntwo\n\nthree\nfour";
        for chunk in 1..text.len() {
            let mut b = LineBuf::default();
            let mut lines = Vec::new();
            for piece in text.chunks(chunk) {
                b.push(piece);
                while let Some(l) = b.next_line().expect("ok") {
                    lines.push(l);
                }
            }
            assert_eq!(lines, [&b"one"[..], b"two", b"", b"three"], "chunk {chunk}");
            assert_eq!(b.pending(), 4);
            assert_eq!(b.into_bytes(), b"four");
        }
    }

    /// 262,144 buffered lines took the buddy 13.7 s when each taken line moved the rest of
    /// the buffer; the work must stay a small multiple of the bytes.
    #[test]
    fn splitting_262144_buffered_lines_is_linear_work() {
        let lines = 262_144;
        let mut b = LineBuf::default();
        b.push(&b"x\n".repeat(lines));
        let mut n = 0;
        while b.next_line().expect("ok").is_some() {
            n += 1;
        }
        assert_eq!(n, lines);
        let bytes = 2 * lines;
        assert!(
            b.work <= 3 * bytes,
            "{} units of work for {bytes} bytes",
            b.work
        );

        // A line that arrives one byte at a time is scanned once, not once per read.
        let mut b = LineBuf::default();
        for _ in 0..100_000 {
            b.push(b"y");
            assert_eq!(b.next_line(), Ok(None));
        }
        b.push(b"\n");
        assert_eq!(b.next_line().expect("ok").map(|l| l.len()), Some(100_000));
        assert!(
            b.work <= 3 * 100_001,
            "{} units of work for a 100,001-byte line",
            b.work
        );
    }

    #[test]
    fn requests_parse_with_ids_and_signal_names() {
        let r: Envelope<BuddyRequest> =
            decode(br#"{"type":"signal","id":3,"signal":"hup"}"#).expect("parse");
        assert_eq!(r.id, Some(3));
        match r.body {
            BuddyRequest::Signal { signal, group } => {
                assert!(!group);
                assert_eq!(signal.resolve(), Ok(nix::sys::signal::Signal::SIGHUP));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode::<BuddyRequest>(br#"{"type":"explode"}"#).is_err());
        assert_eq!(
            SignalSpec::Number(15).resolve(),
            Ok(nix::sys::signal::Signal::SIGTERM)
        );
        assert!(SignalSpec::Name("NOPE".into()).resolve().is_err());
    }
}
