//! The metrics endpoint's sockets: a non-blocking TCP listener and one small state machine per
//! connection, polled by the controller's one loop like every other descriptor.
//!
//! A connection reads a request head ([`http::parse`], at most [`http::MAX_REQUEST`] bytes),
//! queues the whole answer, writes what the socket takes and waits for POLLOUT for the rest;
//! it reads the next request (keep-alive) only once the answer is out, so a client that does
//! not read holds one answer, never more. Every connection has one deadline, never extended
//! by a byte trickling in: [`IDLE`] from its accept or its last answer for a request to
//! arrive, [`IDLE`] from an answer being queued for it to be read; then it is closed. At most
//! [`MAX_CONNECTIONS`] are open: a new one closes the one whose deadline is nearest, so
//! that a client holding connections open cannot keep Prometheus out for long.
//!
//! The body is rendered by the caller (from memory, never the store) and kept for
//! [`FRESH`], with its gzip encoding made once on demand, so that a flood of scrapes costs at
//! most a few renders a second whatever the number of connections.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::http::{self, Parsed, Route, Status};

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a connection may take to send a request, or to read an answer.
pub const IDLE: Duration = Duration::from_secs(10);

/// How long a rendered body is served again before it is rendered anew.
pub const FRESH: Duration = Duration::from_millis(250);

/// Most connections accepted in one round of the loop.
const ACCEPT_BURST: usize = 64;

/// One client connection.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// What is left to write, in pieces (head, body), and how much of the first is written.
    output: VecDeque<Rc<[u8]>>,
    written: usize,
    /// Close once the output is written.
    close_after: bool,
    deadline: Instant,
}

impl Conn {
    /// Writes what the socket takes; `Err` when the connection is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        while let Some(piece) = self.output.front() {
            match self.stream.write(&piece[self.written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if self.written == piece.len() {
                        self.output.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has arrived, up to one byte past [`http::MAX_REQUEST`]; true at EOF.
    fn fill(&mut self) -> std::io::Result<bool> {
        let mut buf = [0u8; 4096];
        while self.input.len() <= http::MAX_REQUEST {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// The rendered body, fresh for [`FRESH`].
#[derive(Default)]
struct Cache {
    at: Option<Instant>,
    plain: Option<Rc<[u8]>>,
    gzip: Option<Rc<[u8]>>,
}

impl Cache {
    fn body(&mut self, gzip: bool, now: Instant, render: &mut dyn FnMut() -> String) -> Rc<[u8]> {
        if self
            .at
            .is_none_or(|at| now.saturating_duration_since(at) >= FRESH)
        {
            *self = Cache::default();
        }
        self.at.get_or_insert(now);
        let plain = self
            .plain
            .get_or_insert_with(|| Rc::from(render().into_bytes()))
            .clone();
        if !gzip {
            return plain;
        }
        self.gzip
            .get_or_insert_with(|| Rc::from(super::gzip(&plain)))
            .clone()
    }
}

/// The listener and its connections.
pub struct Endpoint {
    listener: TcpListener,
    conns: BTreeMap<u64, Conn>,
    next: u64,
    cache: Cache,
    /// Given up at the descriptor limit to accept and close a connection, as the client
    /// socket's listener does ([`crate::server::Server::accept_all`]): the listener never
    /// stays readable with nothing done, so the loop cannot spin on it.
    spare: Option<std::fs::File>,
}

impl Endpoint {
    /// Binds `addr` (non-blocking).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Endpoint {
            listener,
            conns: BTreeMap::new(),
            next: 1,
            cache: Cache::default(),
            spare: crate::server::spare_fd(),
        })
    }

    /// The address bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listener's descriptor (poll it for POLLIN).
    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Each connection: its token, its descriptor, and whether it waits to write (POLLOUT)
    /// rather than to read (POLLIN).
    pub fn fds(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>, bool)> {
        self.conns
            .iter()
            .map(|(t, c)| (*t, c.stream.as_fd(), !c.output.is_empty()))
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The nearest connection deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.deadline).min()
    }

    /// Closes the connections past their deadline.
    pub fn expire(&mut self, now: Instant) {
        self.conns.retain(|_, c| c.deadline > now);
    }

    /// Accepts what is waiting (a burst at most), closing the connection nearest its deadline
    /// when [`MAX_CONNECTIONS`] are open.
    pub fn accept_all(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BURST {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error().is_some_and(crate::server::is_fd_limit) => {
                    if self.spare.take().is_none() {
                        eprintln!(
                            "upkeeper: metrics: out of file descriptors and no spare one: {e}"
                        );
                        return;
                    }
                    if self.listener.accept().is_ok() {
                        eprintln!(
                            "upkeeper: metrics: out of file descriptors ({e}); closed a scrape"
                        );
                    }
                    self.spare = crate::server::spare_fd();
                    continue;
                }
                // ECONNABORTED and the like: that connection is gone.
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            while self.conns.len() >= MAX_CONNECTIONS {
                let Some(oldest) = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.deadline)
                    .map(|(t, _)| *t)
                else {
                    break;
                };
                self.conns.remove(&oldest);
            }
            let token = self.next;
            self.next += 1;
            let conn = Conn {
                stream,
                input: Vec::new(),
                output: VecDeque::new(),
                written: 0,
                close_after: false,
                deadline: now + IDLE,
            };
            self.conns.insert(token, conn);
        }
    }

    /// The connection `token` is ready: writes what waits, then reads and answers requests.
    /// `render` makes the metrics' text when a fresh one is needed.
    pub fn ready(&mut self, token: u64, now: Instant, render: &mut dyn FnMut() -> String) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let was_writing = !c.output.is_empty();
        if c.flush().is_err() {
            self.conns.remove(&token);
            return;
        }
        if !c.output.is_empty() {
            return;
        }
        if c.close_after {
            self.conns.remove(&token);
            return;
        }
        if was_writing {
            // The answer is read: the next request has its own time.
            c.deadline = now + IDLE;
        }
        let eof = match c.fill() {
            Ok(eof) => eof,
            Err(_) => {
                self.conns.remove(&token);
                return;
            }
        };
        // Requests already read (pipelined) are answered while each answer goes out at once;
        // each takes its bytes from the input, so this ends.
        loop {
            match self.answer(token, now, eof, render) {
                Some(true) => {}
                Some(false) => return,
                None => {
                    self.conns.remove(&token);
                    return;
                }
            }
        }
    }

    /// Answers the request at the start of `token`'s input, if it is whole. `Some(true)`: an
    /// answer went out whole and the connection reads on; `Some(false)`: wait for the socket;
    /// `None`: close it.
    fn answer(
        &mut self,
        token: u64,
        now: Instant,
        eof: bool,
        render: &mut dyn FnMut() -> String,
    ) -> Option<bool> {
        let c = self.conns.get_mut(&token)?;
        let (status, keep_alive) = match http::parse(&c.input) {
            Parsed::Incomplete if eof => return None,
            Parsed::Incomplete => return Some(false),
            Parsed::Refused(status) => (status, false),
            Parsed::Request(req) => {
                c.input.drain(..req.len);
                let keep = req.keep_alive && !eof;
                match http::route(&req) {
                    Route::Metrics { head_only } => {
                        let body = self.cache.body(req.gzip, now, render);
                        let head = http::head(Status::Ok, body.len(), req.gzip, keep);
                        c.output.push_back(Rc::from(head));
                        if !head_only {
                            c.output.push_back(body);
                        }
                        (Status::Ok, keep)
                    }
                    Route::Error(status) => (status, keep),
                }
            }
        };
        if status != Status::Ok {
            let text = http::error_body(status).as_bytes();
            let head = http::head(status, text.len(), false, keep_alive);
            c.output.push_back(Rc::from(head));
            c.output.push_back(Rc::from(text));
        }
        c.close_after = !keep_alive;
        c.deadline = now + IDLE;
        c.flush().ok()?;
        match (c.output.is_empty(), c.close_after) {
            (true, true) => None,
            (true, false) => Some(!c.input.is_empty()),
            (false, _) => Some(false),
        }
    }
}
