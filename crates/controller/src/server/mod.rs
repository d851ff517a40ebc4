//! The client side of the controller socket: who may do what, requests and their replies,
//! subscriptions, and the audit of every command.
//!
//! Clients connect to `StateDir/upkeeper.sock` (mode 0666: the peer's credentials decide).
//! Each connection's access comes from SO_PEERCRED at accept ([`access`]). Every control
//! request, and every refused request, is audited in the store's `commands` with the caller's
//! uid, gid, pid and command line.
//!
//! The server reads the fleet and never changes it: what it needs done elsewhere it returns as
//! [`Intent`]s, which the loop carries out (relay to a buddy, take a phoning buddy's link, store
//! a desired state, unconfigure) and reports back ([`Server::unreachable`], [`Server::stored`]).
//!
//! Read requests are answered at once (status files, the store through a read-only
//! connection). A control request is relayed to the service's buddy on the controller's link,
//! with the caller as the cause of what it does, and answered when the buddy answers and the
//! desired state it leaves is stored: the reply says what happened, not that something was
//! sent, and the wish survives a controller crash once the caller is told. A subscription
//! first replays stored events after the client's cursor, then receives each event as the
//! store commits it.
//!
//! A buddy phoning home dials the same socket; its first line (`hello` with `buddy_pid`) hands
//! the connection over to the fleet as an event link.
//!
//! The parts: `read` answers read requests, `control` relays control requests and waits for
//! their answers, `refusals` bounds what refused callers cost the audit store.
//!
//! [`access`]: crate::access

mod control;
pub(crate) mod read;
mod refusals;

pub use crate::access::{Peer, Policy};
use crate::fleet::Fleet;
use crate::store::{CommandEntry, Store};
pub use control::Intent;
use refusals::RefusalLog;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;
use upk_core::client::{Access, ClientReply, ClientRequest, ErrorCode, MAX_ROWS};
use upk_core::history::EventRow;
use upk_core::proto::{self, Envelope, LineBuf, PROTOCOL_VERSION};

/// A client whose unread output exceeds this is dropped (a subscriber that stopped reading).
const MAX_BACKLOG: usize = 16 << 20;

/// All clients' unread output together: past this, the client with the most is dropped.
const MAX_BACKLOG_TOTAL: usize = 128 << 20;

/// Connections one uid without control access may hold; more are answered `busy` and closed.
pub const MAX_PER_UID: usize = 32;

/// Connections all callers without control access may hold together (at most a quarter of
/// the descriptor limit, see `unprivileged_limit`). Callers with control access (root, the
/// controller's user, `ControlGroup`) are not counted against it, so they always get in
/// while the controller has descriptors left.
pub const MAX_UNPRIVILEGED: usize = 256;

/// Connections taken per turn of the loop, so a flood of connects cannot starve the rest.
const ACCEPT_PER_TURN: usize = 256;

struct Client {
    stream: UnixStream,
    input: LineBuf,
    out: Vec<u8>,
    peer: Peer,
    access: Access,
    /// Nothing read yet: the first line says whether this is a client or a buddy.
    fresh: bool,
    /// Services subscribed to (all when empty) and the last row id sent.
    sub: Option<(BTreeSet<String>, i64)>,
    /// The subscription is still replaying stored events: pages are read from the store as
    /// the client drains its output, and live events wait for the replay to reach them.
    replaying: bool,
    /// Flush what is queued, then close.
    closing: bool,
    /// The peer has finished sending: close once every answer it is owed is written.
    eof: bool,
}

/// A control request waiting for its buddy's answer, then for the store.
struct Pending {
    client: u64,
    id: Option<u64>,
    service: String,
    entry: CommandEntry,
    unconfigure: bool,
    /// Answered `queued` once relayed ([`Server::relayed`]); then `client` is [`NOBODY`].
    queued: bool,
    /// The buddy answered: the reply, sent once the desired state it leaves is stored with
    /// the command's audit row ([`Server::stored`]).
    answer: Option<ClientReply>,
}

/// The token no connection has (they start at 2): where the answer of a command goes once
/// its client was told `queued`, that is nowhere.
const NOBODY: u64 = 0;

/// An answer held until its command's audit row is committed: the client, the request's id,
/// the reply.
#[derive(Debug)]
pub struct Answer {
    client: u64,
    id: Option<u64>,
    body: ClientReply,
}

/// Every client connection, and the relayed requests in flight.
pub struct Server {
    policy: Policy,
    reader: Store,
    clients: BTreeMap<u64, Client>,
    pending: BTreeMap<u64, Pending>,
    next: u64,
    /// Refusals per uid within their window.
    refusals: RefusalLog,
    /// Held open to be given up when accept hits the descriptor limit: with it free, the
    /// pending connection is accepted and closed, so the listener does not stay readable and
    /// spin the loop.
    spare: Option<std::fs::File>,
    /// Commands to audit, taken by the loop into the next store batch.
    pub audit: Vec<CommandEntry>,
    /// The answers to those commands: sent only once the batch that holds their audit rows
    /// is committed ([`Server::answer_audited`]), so that a client told `done` can rely on the
    /// command being in the store, whenever the controller dies.
    answers: Vec<Answer>,
    /// What the loop is to do, returned by [`Server::ready`] and [`Server::answered`].
    intents: Vec<Intent>,
}

/// How far [`Server::serve_lines`] got.
enum Served {
    /// Every complete line was answered.
    All,
    /// It stopped at the output cap with lines perhaps left.
    Capped,
    /// The connection was a buddy's and went to the fleet.
    HandedOver,
}

impl Server {
    /// The read-only connection queries use (the loop reopens it when the store's file was
    /// recreated).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.reader
    }

    /// A server answering queries from `reader` (a read-only connection to the store).
    pub fn new(policy: Policy, reader: Store) -> Server {
        Server {
            policy,
            reader,
            clients: BTreeMap::new(),
            pending: BTreeMap::new(),
            next: 1,
            refusals: RefusalLog::default(),
            spare: spare_fd(),
            audit: Vec::new(),
            answers: Vec::new(),
            intents: Vec::new(),
        }
    }

    /// Takes the connections waiting on `listener` (at most `ACCEPT_PER_TURN`). At the
    /// descriptor limit (EMFILE, ENFILE) the spare descriptor is given up to accept the
    /// connection and close it at once, then taken again: the listener never stays readable
    /// with nothing done, so the loop cannot spin on it.
    pub fn accept_all(&mut self, listener: &UnixListener) {
        for _ in 0..ACCEPT_PER_TURN {
            match listener.accept() {
                Ok((stream, _)) => self.accept(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error().is_some_and(is_fd_limit) => {
                    if self.spare.take().is_none() {
                        eprintln!("upkeeper: out of file descriptors and no spare one: {e}");
                        break;
                    }
                    if let Ok((stream, _)) = listener.accept() {
                        let who = Peer::of(&stream).map(|p| p.uid).unwrap_or(u32::MAX);
                        eprintln!(
                            "upkeeper: out of file descriptors ({e}); closed a connection from uid {who}"
                        );
                    }
                    self.spare = spare_fd();
                }
                Err(_) => break, // ECONNABORTED and the like: that connection is gone
            }
        }
        self.expire_refusals(Instant::now());
    }

    /// Takes a new connection, unless its caller (without control access) holds
    /// [`MAX_PER_UID`] already or such callers hold [`MAX_UNPRIVILEGED`]: then it is told
    /// `busy` and closed.
    pub fn accept(&mut self, stream: UnixStream) {
        let Ok(peer) = Peer::of(&stream) else {
            return; // the peer is already gone
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let access = self.policy.access(&peer);
        if access < Access::Control {
            let mine = self
                .clients
                .values()
                .filter(|c| c.peer.uid == peer.uid)
                .count();
            let all = self
                .clients
                .values()
                .filter(|c| c.access < Access::Control)
                .count();
            let full = if mine >= MAX_PER_UID {
                Some(format!(
                    "uid {} holds {mine} connections to the controller already (the limit is {MAX_PER_UID}); close one first",
                    peer.uid
                ))
            } else if all >= unprivileged_limit() {
                Some(format!(
                    "the controller holds {all} connections from callers without control access (the limit is {}); try again later",
                    unprivileged_limit()
                ))
            } else {
                None
            };
            if let Some(message) = full {
                // One try, never blocking: the reply fits any socket buffer.
                let busy = ClientReply::Error {
                    code: ErrorCode::Busy,
                    message,
                };
                let _ = (&stream).write(&proto::encode(&Envelope {
                    id: None,
                    body: busy,
                }));
                return;
            }
        }
        let token = self.token();
        self.clients.insert(
            token,
            Client {
                stream,
                input: LineBuf::default(),
                out: Vec::new(),
                peer,
                access,
                fresh: true,
                sub: None,
                replaying: false,
                closing: false,
                eof: false,
            },
        );
    }

    fn token(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The connections to poll, with whether each has output waiting. One whose peer has
    /// finished sending is polled only for output (its end-of-file would wake us forever).
    pub fn fds(&self) -> impl Iterator<Item = (u64, &UnixStream, bool)> {
        self.clients
            .iter()
            .filter(|(_, c)| !c.eof || !c.out.is_empty())
            .map(|(t, c)| (*t, &c.stream, !c.out.is_empty()))
    }

    /// The connection `token` is readable or writable: read its requests and answer them;
    /// returns what the loop is to do for them.
    pub fn ready(&mut self, token: u64, fleet: &Fleet) -> Vec<Intent> {
        let mut buf = [0u8; 16 * 1024];
        if let Some(c) = self.clients.get_mut(&token) {
            while !c.eof {
                match c.stream.read(&mut buf) {
                    Ok(0) => c.eof = true,
                    Ok(n) => c.input.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => c.eof = true,
                }
            }
        }
        // Serve, write, and serve again while writing made room: the requests still buffered
        // here wake no poll of their own once the output is empty.
        loop {
            match self.serve_lines(token, fleet) {
                Served::HandedOver => return std::mem::take(&mut self.intents),
                Served::Capped => {}
                Served::All => break,
            }
            self.flush(token);
            match self.clients.get(&token) {
                Some(c) if !c.closing && c.out.len() <= MAX_BACKLOG / 2 => {}
                _ => break,
            }
        }
        self.flush(token);
        self.bound_backlogs();
        std::mem::take(&mut self.intents)
    }

    /// Answers the complete request lines buffered for `token`, until they run out or its
    /// unread output passes half the cap.
    fn serve_lines(&mut self, token: u64, fleet: &Fleet) -> Served {
        loop {
            let Some(c) = self.clients.get_mut(&token) else {
                return Served::All;
            };
            // A client that asks faster than it reads is served again once it has read: its
            // unread output stays below the cap, and a reply is at most REPLY_BYTES.
            if c.closing {
                return Served::All;
            }
            if c.out.len() > MAX_BACKLOG / 2 {
                return Served::Capped;
            }
            let line = match c.input.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return Served::All,
                Err(e) => {
                    self.fail(token, None, ErrorCode::Invalid, e.to_string());
                    return Served::All;
                }
            };
            if std::mem::replace(&mut c.fresh, false) && is_buddy_hello(&line) {
                self.hand_over(token, line);
                return Served::HandedOver;
            }
            match proto::decode::<ClientRequest>(&line) {
                Ok(req) => self.request(token, req, fleet),
                Err(message) => self.fail(token, None, ErrorCode::Invalid, message),
            }
        }
    }

    /// Writes what is queued for `token`; drops the connection when it is finished: closing
    /// or at end-of-file, with nothing left to write and no answer still owed.
    ///
    /// A subscriber still replaying gets its next page from the store whenever its output has
    /// drained, so a replay of millions of events holds one page in memory at a time.
    fn flush(&mut self, token: u64) {
        let owed = self.pending.values().any(|p| p.client == token)
            || self.answers.iter().any(|a| a.client == token);
        loop {
            let Some(c) = self.clients.get_mut(&token) else {
                return;
            };
            while !c.out.is_empty() {
                match c.stream.write(&c.out) {
                    Ok(0) => break,
                    Ok(n) => drop(c.out.drain(..n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.out.clear();
                        c.closing = true;
                        c.replaying = false;
                        break;
                    }
                }
            }
            if !(c.out.is_empty() && c.replaying && !c.closing) {
                break;
            }
            self.replay_page(token);
        }
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        let done = (c.closing || (c.eof && !owed)) && c.out.is_empty() && !c.replaying;
        if done {
            self.drop_client(token, None);
        } else if c.out.len() > MAX_BACKLOG {
            let why = format!("it left more than {} MiB unread", MAX_BACKLOG >> 20);
            self.drop_client(token, Some(why));
        }
    }

    /// Forgets a connection; `why` (a client dropped for its backlog) is said on stderr.
    fn drop_client(&mut self, token: u64, why: Option<String>) {
        if let Some(c) = self.clients.remove(&token) {
            if let Some(why) = why {
                eprintln!(
                    "upkeeper: dropped the connection of uid {} pid {} ({}): {why}",
                    c.peer.uid,
                    c.peer.pid,
                    if c.sub.is_some() {
                        "a subscriber"
                    } else {
                        "a client"
                    }
                );
            }
        }
        self.expire_refusals(Instant::now());
    }

    /// Drops the clients with the most unread output until all of it together is within
    /// [`MAX_BACKLOG_TOTAL`].
    fn bound_backlogs(&mut self) {
        loop {
            let total: usize = self.clients.values().map(|c| c.out.len()).sum();
            if total <= MAX_BACKLOG_TOTAL {
                return;
            }
            let Some((&token, c)) = self.clients.iter().max_by_key(|(_, c)| c.out.len()) else {
                return;
            };
            let why = format!(
                "all clients together left more than {} MiB unread and it had the most ({} KiB)",
                MAX_BACKLOG_TOTAL >> 20,
                c.out.len() >> 10
            );
            self.drop_client(token, Some(why));
        }
    }

    /// The next page of a replaying subscription: stored events after its cursor.
    fn replay_page(&mut self, token: u64) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        let Some((services, last)) = &c.sub else {
            c.replaying = false;
            return;
        };
        let services: Vec<String> = services.iter().cloned().collect();
        let page = match self.reader.events_after(*last, &services, MAX_ROWS) {
            Ok(page) => page,
            Err(e) => {
                let (code, message) = store_error(e);
                c.replaying = false;
                c.closing = true;
                c.out.extend(proto::encode(&Envelope {
                    id: None,
                    body: ClientReply::Error { code, message },
                }));
                return;
            }
        };
        if page.len() < MAX_ROWS {
            c.replaying = false;
        }
        for event in page {
            if let Some((_, last)) = &mut c.sub {
                *last = (*last).max(event.id);
            }
            c.out.extend(proto::encode(&Envelope {
                id: None,
                body: ClientReply::Event { event },
            }));
        }
    }

    fn send(&mut self, token: u64, id: Option<u64>, body: ClientReply) {
        if let Some(c) = self.clients.get_mut(&token) {
            c.out.extend(proto::encode(&Envelope { id, body }));
        }
    }

    /// Replies with an error; a malformed message also closes the connection.
    fn fail(&mut self, token: u64, id: Option<u64>, code: ErrorCode, message: String) {
        self.send(token, id, ClientReply::Error { code, message });
        if code == ErrorCode::Invalid {
            if let Some(c) = self.clients.get_mut(&token) {
                c.closing = true;
            }
        }
    }

    /// Replies to a `hello` with an error and closes the connection once that is written.
    fn refuse_hello(&mut self, token: u64, id: Option<u64>, code: ErrorCode, message: String) {
        self.fail(token, id, code, message);
        if let Some(c) = self.clients.get_mut(&token) {
            c.closing = true;
        }
    }

    /// A buddy phoning home: its connection becomes an event link, if it runs as us (or root).
    fn hand_over(&mut self, token: u64, hello: Vec<u8>) {
        let Some(c) = self.clients.remove(&token) else {
            return;
        };
        if c.peer.uid != 0 && c.peer.uid != self.policy.own_uid {
            eprintln!(
                "upkeeper: refused a buddy connection from uid {} (pid {})",
                c.peer.uid, c.peer.pid
            );
            return;
        }
        self.intents.push(Intent::Link {
            stream: c.stream,
            hello,
            rest: c.input,
        });
    }

    fn request(&mut self, token: u64, req: Envelope<ClientRequest>, fleet: &Fleet) {
        let Some(c) = self.clients.get(&token) else {
            return;
        };
        let (id, access, peer) = (req.id, c.access, c.peer.clone());
        let body = req.body;
        if let ClientRequest::Hello { version, origin } = body {
            // A refused hello ends the connection: a client may send its first request in the
            // same write (libupkeeper does), and it must not be served.
            if version > PROTOCOL_VERSION {
                let msg = format!(
                    "protocol version {version} is newer than this controller's {PROTOCOL_VERSION}"
                );
                return self.refuse_hello(token, id, ErrorCode::Version, msg);
            }
            // Where the caller says it comes from enters here: bounded, printable, then kept
            // for every command of this connection's audit (docs/remote.md).
            if let Some(origin) = origin {
                if let Err(msg) = upk_core::client::check_origin(&origin) {
                    return self.refuse_hello(token, id, ErrorCode::BadValue, msg);
                }
                if let Some(c) = self.clients.get_mut(&token) {
                    c.peer.origin = Some(origin);
                }
            }
            let hello = ClientReply::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id() as i32,
                access,
            };
            return self.send(token, id, hello);
        }
        let needed = if body.is_control() {
            Access::Control
        } else {
            Access::Read
        };
        let entry = |result: String, ok: bool| CommandEntry {
            wall_us: upk_core::time::wall_us(),
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            cmdline: peer.cmdline.clone(),
            request: serde_json::to_value(&body).unwrap_or_default(),
            service: body.service().map(str::to_owned),
            result,
            ok,
            origin: peer.origin.clone(),
        };
        if access < needed {
            let msg = format!(
                "uid {} may not {}: it needs {} access: {}",
                peer.uid,
                verb(&body),
                if needed == Access::Control {
                    "control"
                } else {
                    "read"
                },
                self.policy.granted_to(needed)
            );
            if self.first_refusal(&peer) {
                self.audit.push(entry(format!("refused: {msg}"), false));
            }
            return self.fail(token, id, ErrorCode::Refused, msg);
        }
        if body.is_control() {
            return match self.control(token, id, &body, &peer, fleet) {
                Ok(()) => {}
                Err((code, msg)) => {
                    self.audit.push(entry(msg.clone(), false));
                    self.fail(token, id, code, msg)
                }
            };
        }
        let answer = match body {
            ClientRequest::Subscribe { services, after } => {
                self.subscribe(token, id, services, after)
            }
            body => self.answer_read(token, id, body, fleet),
        };
        if let Err((code, msg)) = answer {
            self.fail(token, id, code, msg)
        }
    }

    /// Replies `subscribed`, then sends the stored events after `after`; new ones follow as
    /// the store commits them ([`Server::publish`]).
    fn subscribe(
        &mut self,
        token: u64,
        id: Option<u64>,
        services: Vec<String>,
        after: Option<i64>,
    ) -> Result<(), (ErrorCode, String)> {
        let cursor = self.reader.last_event_id().map_err(store_error)?;
        let services: BTreeSet<String> = services.into_iter().collect();
        self.send(token, id, ClientReply::Subscribed { cursor });
        if let Some(c) = self.clients.get_mut(&token) {
            // The replay goes page by page as the client reads (see `flush`).
            c.replaying = after.is_some();
            c.sub = Some((services, after.unwrap_or(cursor)));
        }
        Ok(())
    }

    /// Events the store just committed: to every subscriber that wants them and has not had
    /// them yet.
    pub fn publish(&mut self, rows: &[EventRow]) {
        if rows.is_empty() {
            return;
        }
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        for token in tokens {
            let Some(c) = self.clients.get_mut(&token) else {
                continue;
            };
            if c.replaying {
                continue; // the replay reaches these rows from the store
            }
            let Some((services, last)) = &mut c.sub else {
                continue;
            };
            let mut out = Vec::new();
            for row in rows {
                if row.id > *last && (services.is_empty() || services.contains(&row.service)) {
                    *last = row.id;
                    out.extend(proto::encode(&Envelope {
                        id: None,
                        body: ClientReply::Event { event: row.clone() },
                    }));
                }
            }
            c.out.extend(out);
            self.flush(token);
        }
        self.bound_backlogs();
    }
}

fn store_error(e: crate::store::StoreError) -> (ErrorCode, String) {
    (
        ErrorCode::Store,
        format!("the audit store cannot answer: {e}"),
    )
}

fn not_found(service: &str, fleet: &Fleet) -> (ErrorCode, String) {
    let hint = match upk_core::config::closest(service, fleet.members.keys().map(String::as_str)) {
        Some(near) => format!("did you mean {near:?}? see `upkctl list`"),
        None => "see `upkctl list`".to_owned(),
    };
    (
        ErrorCode::NotFound,
        format!("there is no service {service:?} ({hint})"),
    )
}

fn verb(body: &ClientRequest) -> String {
    serde_json::to_value(body)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "do that".into())
}

/// A buddy's phone-home greeting: `hello` with a `buddy_pid`.
fn is_buddy_hello(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| {
        v.get("type").and_then(|t| t.as_str()) == Some("hello") && v.get("buddy_pid").is_some()
    })
}

/// How many connections callers without control access may hold together: [`MAX_UNPRIVILEGED`],
/// and never more than a quarter of the descriptor limit, so that the rest stays for the
/// buddies' links, the store and callers with control access.
fn unprivileged_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    MAX_UNPRIVILEGED.min(soft / 4)
}

/// EMFILE or ENFILE: out of descriptors, in this process or in the system.
pub(crate) fn is_fd_limit(errno: i32) -> bool {
    errno == nix::errno::Errno::EMFILE as i32 || errno == nix::errno::Errno::ENFILE as i32
}

/// A descriptor to give up when accept hits the limit (see [`Server::accept_all`]).
pub(crate) fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a fresh store with `n` subscribers (all services), each on a socket pair
    /// whose far end is returned and never read.
    fn subscribers(n: usize) -> (tempfile::TempDir, Server, Vec<UnixStream>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("upkeeper.db");
        drop(Store::open(&db).expect("store"));
        let policy = Policy {
            own_uid: nix::unistd::geteuid().as_raw(),
            control_group: None,
            read_group: None,
        };
        let mut server = Server::new(policy, Store::open_read_only(&db).expect("reader"));
        let mut far = Vec::new();
        for _ in 0..n {
            let (near, other) = UnixStream::pair().expect("pair");
            server.accept(near);
            far.push(other);
        }
        let tokens: Vec<u64> = server.clients.keys().copied().collect();
        for token in tokens {
            server
                .subscribe(token, None, Vec::new(), None)
                .expect("subscribe");
        }
        (dir, server, far)
    }

    fn event(id: i64, cause: &str) -> EventRow {
        EventRow {
            id,
            service: "web".into(),
            record: upk_core::event::Record {
                seq: u64::try_from(id).unwrap_or(0),
                wall_us: 0,
                mono_us: 0,
                from: upk_core::event::StateName::Running,
                to: upk_core::event::StateName::Running,
                pid: None,
                cause: cause.into(),
                kind: upk_core::event::EventKind::STARTED,
            },
        }
    }

    #[test]
    fn a_subscriber_that_never_reads_is_dropped_at_its_cap_and_all_together_are_bounded() {
        let (_dir, mut server, _far) = subscribers(10);
        let cause = "c".repeat(64 * 1024);
        // 1200 events of 64 KiB: 75 MiB to each subscriber that never reads.
        for id in 1..=1200 {
            server.publish(&[event(id, &cause)]);
            let total: usize = server.clients.values().map(|c| c.out.len()).sum();
            assert!(
                total <= MAX_BACKLOG_TOTAL,
                "{total} bytes held at event {id}"
            );
            assert!(server
                .clients
                .values()
                .all(|c| c.out.len() <= MAX_BACKLOG + 128 * 1024));
        }
        assert!(server.clients.is_empty(), "every non-reader dropped");
    }
}
