//! The buddy's socket: the listener, the peers connected to it (and the one phone home
//! dialled), who may talk, and what they ask.
//!
//! [`Peers`] accepts (refusing, with one error line, a peer whose uid is neither root's nor the
//! buddy's, and anything past [`MAX_CONNS`] or the descriptor headroom), reads lines, and turns
//! them into [`Intent`]s the loop applies; it answers nonsense itself (a malformed or overlong
//! line) by an error and closing. Replies and records are
//! queued per peer and flushed on POLLOUT, so no write blocks the loop.

use crate::conn::{self, Conn};
use crate::fds::{fds_short, out_of_fds, Spare};
use crate::logs::BuddyLog;
use nix::poll::{PollFd, PollFlags};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, Role};

/// Most client connections at once; more are answered with an error and closed.
pub const MAX_CONNS: usize = 64;

/// What a peer asked of the loop.
#[derive(Debug)]
pub enum Intent {
    /// A request, with the cause to record.
    Request {
        /// The peer.
        token: u64,
        /// The id to echo.
        id: Option<u64>,
        /// What.
        body: BuddyRequest,
        /// "command from uid U pid P".
        cause: String,
    },
    /// The peer closed its end: drop it once nothing is owed to it.
    Closed {
        /// The peer.
        token: u64,
    },
}

/// May a peer with `uid` talk to a buddy running as `me`? Root and the buddy's own user.
pub fn authorized(uid: u32, me: u32) -> bool {
    uid == 0 || uid == me
}

/// The listener and its peers.
pub struct Peers {
    listener: UnixListener,
    conns: Vec<Conn>,
    next_token: u64,
}

impl Peers {
    /// Serves `listener` (non-blocking).
    pub fn new(listener: UnixListener) -> Peers {
        Peers {
            listener,
            conns: Vec::new(),
            next_token: 0,
        }
    }

    /// A token no peer had.
    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Adds a connection the buddy dialled.
    pub fn push(&mut self, c: Conn) {
        self.conns.push(c);
    }

    /// The descriptors to poll: the listener first, then the peers, whose tokens are returned
    /// in the same order.
    pub fn poll_fds(&self) -> (Vec<PollFd<'_>>, Vec<u64>) {
        let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let mut tokens = Vec::new();
        // A peer that closed its end is only polled while output waits: its POLLHUP would
        // otherwise wake the loop for nothing until its last reply is ready.
        for c in &self.conns {
            let mut flags = if c.closing {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            if c.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            if !flags.is_empty() {
                fds.push(PollFd::new(c.stream.as_fd(), flags));
                tokens.push(c.token);
            }
        }
        (fds, tokens)
    }

    /// A subscribed controller is connected.
    pub fn controller_listening(&self) -> bool {
        self.conns
            .iter()
            .any(|c| c.subscribed && c.role == Role::Controller)
    }

    /// Someone receives records.
    pub fn any_subscribed(&self) -> bool {
        self.conns.iter().any(|c| c.subscribed)
    }

    /// The peer `token`, while connected.
    pub fn get_mut(&mut self, token: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.token == token)
    }

    /// Takes every pending connection.
    pub fn accept(&mut self, spare: &mut Spare, log: &mut BuddyLog) {
        let mut refused = 0u64;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if out_of_fds(&e) => {
                    // The pending connection keeps the listener readable: take it with the
                    // spare descriptor and refuse it, or poll would return at once forever.
                    let listener = &self.listener;
                    spare.give_up_for(|| {
                        if let Ok((stream, _)) = listener.accept() {
                            refuse_conn(stream, "the buddy is out of file descriptors");
                        }
                    });
                    break;
                }
                Err(_) => break,
            };
            if self.conns.len() >= MAX_CONNS || fds_short(&stream) {
                refuse_conn(stream, "too many connections to this buddy");
                refused += 1;
                continue;
            }
            let peer =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| (c.uid(), c.pid()))
                    .unwrap_or((u32::MAX, 0));
            let token = self.token();
            let Ok(mut c) = Conn::new(token, stream, peer, false) else {
                continue;
            };
            if !authorized(peer.0, nix::unistd::geteuid().as_raw()) {
                let message = format!(
                    "permission denied: uid {} may not talk to this buddy",
                    peer.0
                );
                let _ = c.send(&encode(None, BuddyReply::Error { message }));
                log.line(&format!(
                    "refused a connection from uid {} pid {}",
                    peer.0, peer.1
                ));
                continue;
            }
            self.conns.push(c);
        }
        if refused > 0 {
            // One line per poll round, not one per connection: a flood must not fill the log.
            log.line(&format!(
                "refused {refused} connections: {} open (at most {MAX_CONNS}), or descriptors short",
                self.conns.len()
            ));
        }
    }

    /// Serves what `poll` found on peer `token`: flushes output, reads lines, and returns the
    /// requests (and the peer's close) for the loop to apply, in order.
    pub fn on_ready(&mut self, token: u64, flags: PollFlags) -> Vec<Intent> {
        let mut intents = Vec::new();
        let Some(c) = self.get_mut(token) else {
            return intents;
        };
        if flags.contains(PollFlags::POLLOUT) {
            if c.flush().is_err() {
                self.drop_conn(token);
                return intents;
            }
            if c.closing && !c.wants_write() {
                intents.push(Intent::Closed { token });
            }
        }
        if !flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return intents;
        }
        let (lines, closed) = match c.read() {
            Ok(conn::Input::Lines(l)) => (l, false),
            Ok(conn::Input::Closed(l)) => (l, true),
            Ok(conn::Input::TooLong) => {
                let message = format!("line longer than {} bytes", proto::MAX_LINE);
                self.refuse(token, None, message);
                return intents;
            }
            Err(_) => (Vec::new(), true),
        };
        let cause = format!("command from uid {} pid {}", c.peer.0, c.peer.1);
        for line in lines {
            match proto::decode::<BuddyRequest>(&line) {
                Ok(req) => intents.push(Intent::Request {
                    token,
                    id: req.id,
                    body: req.body,
                    cause: cause.clone(),
                }),
                Err(message) => {
                    self.refuse(token, None, message);
                    return intents;
                }
            }
        }
        if closed {
            // `echo request | socat - UNIX-CONNECT:...` closes its end at once and still reads:
            // keep the connection until its pending action replies are out.
            if let Some(c) = self.get_mut(token) {
                c.closing = true;
            }
            intents.push(Intent::Closed { token });
        }
        intents
    }

    /// Drops a peer that closed its end once nothing is owed to it (`owed`: an action's
    /// result) and its output is flushed.
    pub fn close_if_done(&mut self, token: u64, owed: bool) {
        let done = self
            .conns
            .iter()
            .any(|c| c.token == token && c.closing && !c.wants_write());
        if done && !owed {
            self.drop_conn(token);
        }
    }

    /// Forgets a peer.
    pub fn drop_conn(&mut self, token: u64) {
        self.conns.retain(|c| c.token != token);
    }

    /// Sends an error and closes: the peer spoke nonsense.
    pub fn refuse(&mut self, token: u64, id: Option<u64>, message: String) {
        self.reply(token, id, BuddyReply::Error { message });
        self.drop_conn(token);
    }

    /// Queues one reply; a peer whose backlog overflows is dropped.
    pub fn reply(&mut self, token: u64, id: Option<u64>, body: BuddyReply) {
        self.send(token, &encode(id, body));
    }

    /// Queues bytes for one peer; a peer whose backlog overflows is dropped.
    pub fn send(&mut self, token: u64, bytes: &[u8]) {
        if let Some(c) = self.get_mut(token) {
            if c.send(bytes).is_err() {
                self.drop_conn(token);
            }
        }
    }

    /// Sends encoded records to every subscriber.
    pub fn publish(&mut self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut dead = Vec::new();
        for c in self.conns.iter_mut().filter(|c| c.subscribed) {
            if c.send(lines).is_err() {
                dead.push(c.token);
            }
        }
        self.conns.retain(|c| !dead.contains(&c.token));
    }
}

/// One line of the protocol.
pub fn encode(id: Option<u64>, body: BuddyReply) -> Vec<u8> {
    proto::encode(&Envelope { id, body })
}

/// Answers a connection that is not taken with one error line (best effort) and closes it.
fn refuse_conn(stream: UnixStream, why: &str) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let refusal = BuddyReply::Error {
        message: why.to_owned(),
    };
    let _ = (&stream).write_all(&encode(None, refusal));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_buddys_user_may_talk() {
        assert!(authorized(0, 1000));
        assert!(authorized(1000, 1000));
        assert!(!authorized(1001, 1000));
        assert!(authorized(0, 0));
        assert!(!authorized(u32::MAX, 0));
    }
}
