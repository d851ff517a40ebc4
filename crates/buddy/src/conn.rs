//! One peer on a unix socket: a non-blocking stream, a line splitter for input and a buffer
//! for output the peer has not taken yet.
//!
//! Writes never block the loop: what the kernel does not take now waits in `out` and is
//! flushed when the socket polls writable. A peer that lets more than [`MAX_BACKLOG`] pile up
//! is dropped, so a stuck subscriber cannot grow the buddy without bound.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use upk_core::proto::{FrameError, LineBuf, Role};

/// Most unsent bytes kept for one peer.
pub const MAX_BACKLOG: usize = 8 << 20;

/// What a read produced.
pub enum Input {
    /// Complete lines, in order.
    Lines(Vec<Vec<u8>>),
    /// The peer closed its end (after any lines it sent).
    Closed(Vec<Vec<u8>>),
    /// The peer sent a line that is too long.
    TooLong,
}

/// A connected peer.
pub struct Conn {
    /// Unique for the buddy's lifetime; pending replies name their connection by it.
    pub token: u64,
    /// The socket.
    pub stream: UnixStream,
    /// Who the peer said it is.
    pub role: Role,
    /// Receives every new record.
    pub subscribed: bool,
    /// This connection was dialled by the buddy (phone home).
    pub outgoing: bool,
    /// Close once `out` is flushed.
    pub closing: bool,
    /// The peer's uid and pid (SO_PEERCRED), for the audit cause.
    pub peer: (u32, i32),
    inbuf: LineBuf,
    out: Vec<u8>,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(
        token: u64,
        stream: UnixStream,
        peer: (u32, i32),
        outgoing: bool,
    ) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            token,
            stream,
            role: Role::Client,
            subscribed: false,
            outgoing,
            closing: false,
            peer,
            inbuf: LineBuf::default(),
            out: Vec::new(),
        })
    }

    /// Reads what is available.
    pub fn read(&mut self) -> io::Result<Input> {
        // Small on purpose: this frame is inlined into the loop's, and every stack page the
        // loop ever touches stays resident in each of a fleet of buddies (requests are short).
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.inbuf.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.inbuf_full() {
                break;
            }
        }
        let mut lines = Vec::new();
        loop {
            match self.inbuf.next_line() {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(FrameError::TooLong) => return Ok(Input::TooLong),
            }
        }
        Ok(if closed {
            Input::Closed(lines)
        } else {
            Input::Lines(lines)
        })
    }

    /// Stops reading once a line's worth is buffered: a flood cannot grow memory unbounded.
    fn inbuf_full(&self) -> bool {
        self.inbuf.pending() > upk_core::proto::MAX_LINE
    }

    /// Queues `bytes` and writes as much as the socket takes now.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        if self.out.len() > MAX_BACKLOG {
            return Err(io::Error::other("peer is not reading"));
        }
        self.flush()
    }

    /// Writes queued output; `Ok` even if some remains (poll for writability then).
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Output is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }
}
