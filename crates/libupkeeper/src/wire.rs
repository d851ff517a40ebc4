//! One line-protocol connection (controller or buddy, `docs/protocol.md`): numbered requests
//! out, one JSON object per line in.
//!
//! Both clients ([`crate::Client`], [`crate::buddy::BuddyClient`]) sit on this. It owns the
//! socket, the request numbering and the read side: a line is at most `MAX_LINE` bytes, and a
//! line cut by a read timeout is kept for the next read, so a timeout never loses or splits a
//! reply.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use upk_core::proto::{self, Envelope, MAX_LINE};

/// Why no line could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The read timeout passed.
    TimedOut,
    /// The connection broke or closed.
    Io(std::io::Error),
    /// The line is not a message of this protocol.
    Protocol(String),
}

/// A connected socket with its reader, writer and request counter.
#[derive(Debug)]
pub(crate) struct Wire {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// The part of a line read before a timeout: kept for the next read.
    partial: Vec<u8>,
}

impl Wire {
    pub(crate) fn new(stream: UnixStream) -> std::io::Result<Wire> {
        let writer = stream.try_clone()?;
        Ok(Wire {
            reader: BufReader::new(stream),
            writer,
            next_id: 0,
            partial: Vec::new(),
        })
    }

    /// Bounds every read (`None`: no bound) and every write.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.writer.set_read_timeout(timeout)?;
        self.writer.set_write_timeout(timeout)
    }

    /// Sends `body` with the next request id; returns the id its reply will carry.
    pub(crate) fn send<T: Serialize>(&mut self, body: T) -> std::io::Result<u64> {
        Ok(self.send_all([body])?[0])
    }

    /// Sends each of `bodies` with the next request ids, in one write; returns the ids their
    /// replies will carry.
    pub(crate) fn send_all<T: Serialize>(
        &mut self,
        bodies: impl IntoIterator<Item = T>,
    ) -> std::io::Result<Vec<u64>> {
        let (mut lines, mut ids) = (Vec::new(), Vec::new());
        for body in bodies {
            self.next_id += 1;
            ids.push(self.next_id);
            lines.extend(proto::encode(&Envelope {
                id: Some(self.next_id),
                body,
            }));
        }
        self.writer.write_all(&lines)?;
        Ok(ids)
    }

    /// The next whole line, decoded.
    pub(crate) fn read<R: DeserializeOwned>(&mut self) -> Result<Envelope<R>, ReadError> {
        let room = (MAX_LINE + 1).saturating_sub(self.partial.len()) as u64;
        let n = (&mut self.reader)
            .take(room)
            .read_until(b'\n', &mut self.partial)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ReadError::TimedOut
                }
                _ => ReadError::Io(e),
            })?;
        if n == 0 && !self.partial.ends_with(b"\n") {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let line = std::mem::take(&mut self.partial);
        proto::decode(line.trim_ascii_end()).map_err(ReadError::Protocol)
    }
}
