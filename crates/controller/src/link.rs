//! One event link to a buddy: the controller's subscription to it, or the connection a buddy
//! opened to phone home. It owns the connection's framing both ways.
//!
//! Input is cut into lines ([`LineBuf`]) and decoded: records go into the loop's store batch,
//! answers are handed back with the id of the request they answer. Output is one buffer per
//! link: [`Link::request`] appends a whole line and writes as much as the socket takes; the
//! rest waits for the loop to see the socket writable ([`Link::wants_write`], POLLOUT) and
//! call [`Link::flush`], so a buddy never reads half a line followed by the start of another,
//! and the loop never waits on a slow buddy. A link whose unwritten output passes
//! [`MAX_OUTPUT`] (a buddy that stopped reading), or whose socket failed, is *broken*: every
//! later request fails at once and the loop drops it like a closed link, so its relayed
//! requests fail, and the fleet subscribes again (the buddy then sends its unacknowledged
//! records again).

use crate::store::{Batch, Origin};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, LineBuf};

/// Unwritten output past which a link is reset: acks and relayed commands are at most a few
/// hundred bytes each, so a megabyte means the buddy has not read for thousands of them.
pub const MAX_OUTPUT: usize = 1 << 20;

/// Connects to a buddy's socket without blocking: a unix socket connects at once or fails
/// (EAGAIN when the buddy's backlog is full, as for a buddy too busy to accept), so the loop
/// never waits in `connect`. The stream is non-blocking.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// A buddy's reply other than a record, with the id of the request it answers.
pub type Answer = (Option<u64>, BuddyReply);

/// One event stream: a subscription we opened, or a buddy that phoned home.
pub struct Link {
    /// The connection (non-blocking).
    pub stream: UnixStream,
    input: LineBuf,
    /// Whole lines not yet taken by the socket.
    output: Vec<u8>,
    /// The socket failed or the output passed [`MAX_OUTPUT`]: drop the link.
    broken: bool,
    /// The service (empty until a phoning buddy said `hello`).
    pub service: String,
    /// The incarnation its records belong to, from the buddy's `hello` (empty before it, and
    /// from a buddy older than incarnations).
    pub incarnation: String,
}

impl Link {
    /// Wraps a connection to the buddy of `service` (empty: not known until its `hello`).
    pub fn new(stream: UnixStream, service: &str) -> Link {
        Link {
            stream,
            input: LineBuf::default(),
            output: Vec::new(),
            broken: false,
            service: service.to_owned(),
            incarnation: String::new(),
        }
    }

    /// Wraps a connection a buddy opened to phone home.
    pub fn incoming(stream: UnixStream) -> Link {
        Link::new(stream, "")
    }

    /// Puts back what the server read before it knew this was a buddy: the `hello` line and
    /// whatever followed it.
    pub fn feed(&mut self, hello: &[u8], rest: LineBuf) {
        self.input.push(hello);
        self.input.push(b"\n");
        self.input.push(&rest.into_bytes());
    }

    /// Queues one request and writes what the socket takes now; a reply with `id` comes back
    /// through [`Link::pump`]. An error means the link is broken (see the module) and the
    /// request was not sent.
    pub fn request(&mut self, id: Option<u64>, body: BuddyRequest) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other("the link is being reset"));
        }
        self.output
            .extend_from_slice(&proto::encode(&Envelope { id, body }));
        self.flush()?;
        if self.output.len() > MAX_OUTPUT {
            self.broken = true;
            return Err(std::io::Error::other(format!(
                "the buddy left more than {} KiB unread; resetting the link",
                MAX_OUTPUT >> 10
            )));
        }
        Ok(())
    }

    /// Writes queued output until it is gone or the socket is full. An error (the buddy went
    /// away) breaks the link.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => break,
                Ok(n) => drop(self.output.drain(..n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    self.output.clear();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Output is waiting for the socket: poll it for POLLOUT.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty() && !self.broken
    }

    /// The link is to be dropped (see the module).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads what the buddy sent: records go to `batch` (and are printed), other replies are
    /// returned, with whether the buddy closed the link after them (a buddy told to shut down
    /// answers, then closes: both can come in one read). An error means the link is finished
    /// and unreadable.
    pub fn pump(&mut self, batch: &mut Batch) -> std::io::Result<(Vec<Answer>, bool)> {
        let mut buf = [0u8; 16 * 1024];
        let closed = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => self.input.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) => return Err(e),
            }
        };
        let mut replies = Vec::new();
        while let Some(line) = self.input.next_line().map_err(std::io::Error::other)? {
            let msg = proto::decode::<BuddyReply>(&line).map_err(std::io::Error::other)?;
            match msg.body {
                BuddyReply::Hello {
                    service,
                    incarnation,
                    ..
                } => {
                    if self.service.is_empty() {
                        self.service = service;
                    }
                    self.incarnation = incarnation;
                }
                BuddyReply::Event { record } => {
                    let when = upk_core::time::format_utc(record.wall_us);
                    println!(
                        "{when} {} #{} {}",
                        self.service,
                        record.seq,
                        record.summary()
                    );
                    batch.push(self.origin(), record);
                }
                body => replies.push((msg.id, body)),
            }
        }
        Ok((replies, closed || self.broken))
    }

    /// Whose records this link carries: the store's key for them, and what acks match.
    pub fn origin(&self) -> Origin {
        Origin {
            service: self.service.clone(),
            incarnation: self.incarnation.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A link on one end of a socket pair whose send buffer is as small as the kernel allows.
    fn small_pair() -> (Link, UnixStream) {
        let (near, far) = UnixStream::pair().expect("pair");
        nix::sys::socket::setsockopt(&near, nix::sys::socket::sockopt::SndBuf, &1024)
            .expect("SO_SNDBUF");
        near.set_nonblocking(true).expect("non-blocking");
        (Link::new(near, "web"), far)
    }

    fn relay(n: usize) -> BuddyRequest {
        BuddyRequest::Relay {
            cause: format!("{n}:{}", "c".repeat(500)),
            request: Box::new(BuddyRequest::Start),
        }
    }

    #[test]
    fn a_write_the_socket_cannot_take_whole_is_resumed_and_no_line_is_torn() {
        let (mut link, far) = small_pair();
        let mut sent = 0;
        while !link.wants_write() {
            link.request(Some(sent as u64), relay(sent))
                .expect("queued");
            sent += 1;
            assert!(sent < 10_000, "the socket never filled");
        }
        // The socket is full with part of a line written: more requests queue behind it.
        for _ in 0..20 {
            link.request(Some(sent as u64), relay(sent))
                .expect("queued");
            sent += 1;
        }
        assert!(link.wants_write());
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(far).lines() {
                lines.push(line.expect("line"));
            }
            lines
        });
        // What the loop does on POLLOUT.
        while link.wants_write() {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&link.stream),
                nix::poll::PollFlags::POLLOUT,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).expect("poll");
            link.flush().expect("flush");
        }
        drop(link);
        let lines = reader.join().expect("reader");
        assert_eq!(lines.len(), sent, "every line arrived");
        for (i, line) in lines.iter().enumerate() {
            let msg: Envelope<BuddyRequest> = proto::decode(line.as_bytes()).expect("a whole line");
            assert_eq!(msg.id, Some(i as u64), "in order");
            assert_eq!(msg.body, relay(i));
        }
    }

    #[test]
    fn connecting_to_a_listener_that_does_not_accept_fails_at_once_when_its_backlog_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("buddy.sock");
        // A listener with a backlog of one that never accepts: a buddy too busy to.
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
        let listener = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        socket::bind(listener.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
        socket::listen(&listener, Backlog::new(1).expect("backlog")).expect("listen");
        let start = std::time::Instant::now();
        let mut held = Vec::new();
        let err = loop {
            match connect(&path) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100, "the backlog never filled");
        };
        assert!(!held.is_empty(), "the first connects at once");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        drop(listener);
        assert!(connect(&dir.path().join("nobody.sock")).is_err());
    }

    #[test]
    fn a_buddy_that_stops_reading_has_its_link_reset_at_the_bound() {
        let (mut link, _far) = small_pair();
        let mut n = 0;
        let err = loop {
            match link.request(None, relay(n)) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "never reset");
        };
        assert!(err.to_string().contains("unread"), "{err}");
        assert!(link.is_broken() && !link.wants_write());
        assert!(link.request(None, relay(0)).is_err(), "stays broken");
        let mut batch = Batch::default();
        let (_, gone) = link.pump(&mut batch).expect("pump");
        assert!(gone, "the loop drops it like a closed link");
    }
}
