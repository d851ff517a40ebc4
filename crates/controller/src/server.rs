//! The client side of the controller socket: who may do what, requests and their replies,
//! subscriptions, and the audit of every command.
//!
//! Clients connect to `StateDir/upkeeper.sock` (mode 0666: the peer's credentials decide).
//! Each connection's access comes from SO_PEERCRED at accept: root, the controller's own user
//! and members of `ControlGroup` may control; members of `ReadGroup` may read and subscribe;
//! others may only say `hello`. Every control request, and every refused request, is audited
//! in the store's `commands` with the caller's uid, gid, pid and command line.
//!
//! Read requests are answered at once (status files, the store through a read-only
//! connection). A control request is relayed to the service's buddy on the controller's link,
//! with the caller as the cause of what it does, and answered when the buddy answers: the
//! reply says what happened, not that something was sent. A subscription first replays
//! stored events after the client's cursor, then receives each event as the store commits it.
//!
//! A buddy phoning home dials the same socket; its first line (`hello` with `buddy_pid`) hands
//! the connection over to the fleet as an event link.

use crate::fleet::{Fleet, Link};
use crate::store::{CommandEntry, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use upk_core::client::{Access, ClientReply, ClientRequest, ErrorCode, ServiceSummary};
use upk_core::history::{EventRow, HistoryFilter};
use upk_core::proto::{self, BuddyReply, BuddyRequest, Envelope, LineBuf, PROTOCOL_VERSION};
use upk_core::status::{Status, Want};

/// A client whose unread output exceeds this is dropped (a subscriber that stopped reading).
const MAX_BACKLOG: usize = 64 << 20;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Uid (SO_PEERCRED).
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Pid.
    pub pid: i32,
    /// Supplementary groups (`/proc/PID/status`).
    pub groups: Vec<u32>,
    /// Command line (`/proc/PID/cmdline`, arguments joined by spaces).
    pub cmdline: String,
}

impl Peer {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred =
            nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
        let pid = cred.pid();
        let proc_file = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let status = String::from_utf8_lossy(&proc_file("status")).into_owned();
        let groups = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let cmdline = proc_file("cmdline")
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups,
            cmdline,
        })
    }

    fn in_group(&self, gid: Option<u32>) -> bool {
        gid.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }

    /// Who asked, for the records a command causes.
    fn cause(&self) -> String {
        let mut what: String = self.cmdline.chars().take(200).collect();
        if what.is_empty() {
            what = "a client".into();
        }
        format!("{what} (uid {}, pid {})", self.uid, self.pid)
    }
}

/// Who may do what.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The controller's effective uid: its own user may do everything.
    pub own_uid: u32,
    /// `ControlGroup`.
    pub control_group: Option<u32>,
    /// `ReadGroup`.
    pub read_group: Option<u32>,
}

impl Policy {
    /// The access `peer` gets.
    pub fn access(&self, peer: &Peer) -> Access {
        if peer.uid == 0 || peer.uid == self.own_uid || peer.in_group(self.control_group) {
            Access::Control
        } else if peer.in_group(self.read_group) {
            Access::Read
        } else {
            Access::None
        }
    }
}

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
    /// Flush what is queued, then close.
    closing: bool,
    /// The peer has finished sending: close once every answer it is owed is written.
    eof: bool,
}

/// A control request waiting for its buddy's answer.
struct Pending {
    client: u64,
    id: Option<u64>,
    service: String,
    entry: CommandEntry,
    unconfigure: bool,
}

/// Every client connection, and the relayed requests in flight.
pub struct Server {
    policy: Policy,
    reader: Store,
    clients: BTreeMap<u64, Client>,
    pending: BTreeMap<u64, Pending>,
    next: u64,
    /// Commands to audit, taken by the loop into the next store batch.
    pub audit: Vec<CommandEntry>,
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
            audit: Vec::new(),
        }
    }

    /// Takes a new connection.
    pub fn accept(&mut self, stream: UnixStream) {
        let Ok(peer) = Peer::of(&stream) else {
            return; // the peer is already gone
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let access = self.policy.access(&peer);
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

    /// The connection `token` is readable or writable: read its requests and answer them.
    pub fn ready(&mut self, token: u64, fleet: &mut Fleet) {
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
        loop {
            let Some(c) = self.clients.get_mut(&token) else {
                return;
            };
            if c.closing {
                break;
            }
            let line = match c.input.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    self.fail(token, None, ErrorCode::Invalid, e.to_string());
                    break;
                }
            };
            if std::mem::replace(&mut c.fresh, false) && is_buddy_hello(&line) {
                return self.hand_over(token, line, fleet);
            }
            match proto::decode::<ClientRequest>(&line) {
                Ok(req) => self.request(token, req, fleet),
                Err(message) => self.fail(token, None, ErrorCode::Invalid, message),
            }
        }
        self.flush(token);
    }

    /// Writes what is queued for `token`; drops the connection when it is finished: closing
    /// or at end-of-file, with nothing left to write and no answer still owed.
    fn flush(&mut self, token: u64) {
        let owed = self.pending.values().any(|p| p.client == token);
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
                    break;
                }
            }
        }
        let done = (c.closing || (c.eof && !owed)) && c.out.is_empty();
        if done || c.out.len() > MAX_BACKLOG {
            self.clients.remove(&token);
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

    /// A buddy phoning home: its connection becomes an event link, if it runs as us (or root).
    fn hand_over(&mut self, token: u64, hello: Vec<u8>, fleet: &mut Fleet) {
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
        let mut link = Link::incoming(c.stream);
        link.feed(&hello, c.input);
        fleet.links.push(link);
    }

    fn request(&mut self, token: u64, req: Envelope<ClientRequest>, fleet: &mut Fleet) {
        let Some(c) = self.clients.get(&token) else {
            return;
        };
        let (id, access, peer) = (req.id, c.access, c.peer.clone());
        let body = req.body;
        if let ClientRequest::Hello { version } = body {
            if version > PROTOCOL_VERSION {
                let msg = format!(
                    "protocol version {version} is newer than this controller's {PROTOCOL_VERSION}"
                );
                return self.fail(token, id, ErrorCode::Version, msg);
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
        };
        if access < needed {
            let msg = format!(
                "uid {} may not {}: it needs {} access",
                peer.uid,
                verb(&body),
                if needed == Access::Control {
                    "control"
                } else {
                    "read"
                }
            );
            self.audit.push(entry(format!("refused: {msg}"), false));
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
            body => self
                .read(body, fleet)
                .map(|reply| self.send(token, id, reply)),
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
        let mut backlog = Vec::new();
        if let Some(after) = after {
            let filter = HistoryFilter {
                after_id: Some(after),
                ..HistoryFilter::default()
            };
            backlog = self.reader.history(&filter).map_err(store_error)?;
            backlog.retain(|e| services.is_empty() || services.contains(&e.service));
        }
        let last = backlog.last().map_or(cursor, |e| e.id.max(cursor));
        if let Some(c) = self.clients.get_mut(&token) {
            c.sub = Some((services, last));
        }
        self.send(token, id, ClientReply::Subscribed { cursor });
        for event in backlog {
            self.send(token, None, ClientReply::Event { event });
        }
        Ok(())
    }

    /// Relays a control request to the buddy; the reply comes with its answer.
    fn control(
        &mut self,
        token: u64,
        id: Option<u64>,
        body: &ClientRequest,
        peer: &Peer,
        fleet: &mut Fleet,
    ) -> Result<(), (ErrorCode, String)> {
        let service = body.service().unwrap_or_default().to_owned();
        let Some(member) = fleet.members.get(&service) else {
            return Err(not_found(&service));
        };
        let request = match body.clone() {
            ClientRequest::Start { .. } => BuddyRequest::Start,
            ClientRequest::Stop { .. } => BuddyRequest::Stop,
            ClientRequest::Restart { .. } => BuddyRequest::Restart,
            ClientRequest::Reload { .. } => BuddyRequest::Reload,
            ClientRequest::Once { .. } => BuddyRequest::Once,
            ClientRequest::Signal { signal, group, .. } => BuddyRequest::Signal { signal, group },
            ClientRequest::Action { name, .. } => {
                let actions = &member.svc.custom_actions;
                let known = actions.iter().any(|a| a.name == name)
                    || name
                        .parse::<usize>()
                        .is_ok_and(|n| (1..=actions.len()).contains(&n));
                if !known {
                    let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
                    return Err((
                        ErrorCode::NotFound,
                        format!(
                            "{service} has no action {name:?} (it has: {})",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                BuddyRequest::Action { name }
            }
            ClientRequest::Unconfigure { .. } => BuddyRequest::Shutdown,
            _ => return Err((ErrorCode::Invalid, "not a control request".into())),
        };
        let rid = self.token();
        let relay = BuddyRequest::Relay {
            cause: peer.cause(),
            request: Box::new(request),
        };
        let unavailable = || {
            (
                ErrorCode::Unavailable,
                format!("the buddy of {service} is not connected (it is being started); try again in a second"),
            )
        };
        let link = fleet.link_now(&service).ok_or_else(unavailable)?;
        link.request(Some(rid), relay).map_err(|_| unavailable())?;
        let entry = CommandEntry {
            wall_us: upk_core::time::wall_us(),
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            cmdline: peer.cmdline.clone(),
            request: serde_json::to_value(body).unwrap_or_default(),
            service: Some(service.clone()),
            result: String::new(),
            ok: false,
        };
        let unconfigure = matches!(body, ClientRequest::Unconfigure { .. });
        self.pending.insert(
            rid,
            Pending {
                client: token,
                id,
                service,
                entry,
                unconfigure,
            },
        );
        Ok(())
    }

    /// Answers a read request (not `subscribe`).
    fn read(&self, body: ClientRequest, fleet: &Fleet) -> Result<ClientReply, (ErrorCode, String)> {
        let store = store_error;
        Ok(match body {
            ClientRequest::List => ClientReply::Services {
                services: self.summaries(&fleet.members.keys().cloned().collect::<Vec<_>>(), fleet),
            },
            ClientRequest::Status { services } => {
                let ids: Vec<String> = if services.is_empty() {
                    fleet.members.keys().cloned().collect()
                } else {
                    services
                };
                if let Some(unknown) = ids.iter().find(|id| !fleet.members.contains_key(*id)) {
                    return Err(not_found(unknown));
                }
                ClientReply::Services {
                    services: self.summaries(&ids, fleet),
                }
            }
            ClientRequest::History { filter } => {
                if let Some(id) = &filter.service {
                    self.known(id, fleet)?;
                }
                ClientReply::History {
                    events: self.reader.history(&filter).map_err(store)?,
                }
            }
            ClientRequest::Audit {
                since_us,
                until_us,
                uid,
                limit,
            } => ClientReply::Audit {
                commands: self
                    .reader
                    .commands(since_us, until_us, uid, limit)
                    .map_err(store)?,
            },
            ClientRequest::Stats {
                services,
                since_us,
                until_us,
            } => {
                let until = until_us.unwrap_or_else(upk_core::time::wall_us);
                let since = since_us.unwrap_or(until - 24 * 3_600_000_000);
                let ids: Vec<String> = if services.is_empty() {
                    fleet.members.keys().cloned().collect()
                } else {
                    services
                };
                for id in &ids {
                    self.known(id, fleet)?;
                }
                let stats = ids
                    .iter()
                    .map(|id| self.reader.stats(id, since, until))
                    .collect::<Result<_, _>>()
                    .map_err(store)?;
                ClientReply::Stats { stats }
            }
            _ => return Err((ErrorCode::Invalid, "not a read request".into())),
        })
    }

    /// A service is known when it is configured or has a history in the store.
    fn known(&self, id: &str, fleet: &Fleet) -> Result<(), (ErrorCode, String)> {
        if fleet.members.contains_key(id) || self.reader.service_uuid(id).ok().flatten().is_some() {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// One summary per id: the status file, and one store query each.
    fn summaries(&self, ids: &[String], fleet: &Fleet) -> Vec<ServiceSummary> {
        let linked: BTreeSet<&str> = fleet.links.iter().map(|l| l.service.as_str()).collect();
        ids.iter()
            .map(|id| {
                let m = fleet.members.get(id);
                let (uuid, desired) = match self.reader.service_row(id) {
                    Ok(Some((uuid, desired))) => (Some(uuid), desired),
                    _ => (None, None),
                };
                ServiceSummary {
                    service: id.clone(),
                    uuid,
                    file: m.map(|m| m.file.display().to_string()).unwrap_or_default(),
                    linked: linked.contains(id.as_str()),
                    status: m.and_then(|m| Status::read(&m.dir.status()).ok().flatten()),
                    desired,
                }
            })
            .collect()
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
    }

    /// A buddy answered a relayed request: answer the client, audit the command.
    pub fn answered(&mut self, rid: u64, reply: BuddyReply, fleet: &mut Fleet) {
        let Some(p) = self.pending.get(&rid) else {
            return;
        };
        let service = p.service.clone();
        let (body, result, ok) = match reply {
            BuddyReply::Ok { status, message } => {
                let desired = match status.want {
                    Want::Up => "up",
                    Want::Down => "down",
                    Want::Once => "once",
                };
                let result = format!(
                    "done: {} (want {desired}){}",
                    status.state.as_str(),
                    message
                        .as_deref()
                        .map(|m| format!("; {m}"))
                        .unwrap_or_default()
                );
                if p.unconfigure {
                    fleet.unconfigured_by_command(&service);
                } else {
                    fleet.set_desired(&service, desired);
                }
                let status = Some(status);
                (
                    ClientReply::Done {
                        service,
                        status,
                        message,
                    },
                    result,
                    true,
                )
            }
            BuddyReply::ActionDone { action, exit } => {
                let ok = exit == upk_core::event::Exit::Exited { code: 0 };
                let result = format!(
                    "{action}: {}",
                    serde_json::to_string(&exit).unwrap_or_default()
                );
                (
                    ClientReply::ActionDone {
                        service,
                        action,
                        exit,
                    },
                    result,
                    ok,
                )
            }
            BuddyReply::Error { message } => return self.failed(rid, message),
            // Not an answer to a relayed request: keep waiting for one.
            _ => return,
        };
        self.finish(rid, body, result, ok);
    }

    /// A relayed request failed: the client gets the buddy's sentence.
    fn failed(&mut self, rid: u64, message: String) {
        let Some(p) = self.pending.get(&rid) else {
            return;
        };
        let body = ClientReply::Error {
            code: ErrorCode::Failed,
            message: format!("{}: {message}", p.service),
        };
        self.finish(rid, body, format!("failed: {message}"), false);
    }

    fn finish(&mut self, rid: u64, body: ClientReply, result: String, ok: bool) {
        let Some(mut p) = self.pending.remove(&rid) else {
            return;
        };
        (p.entry.result, p.entry.ok) = (result, ok);
        self.audit.push(p.entry);
        self.send(p.client, p.id, body);
        self.flush(p.client);
    }

    /// The link to `service`'s buddy is gone: its requests in flight fail.
    pub fn link_lost(&mut self, service: &str) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.service == service)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in lost {
            self.failed(
                rid,
                "its buddy went away before answering; see `upkctl status`".into(),
            );
        }
    }
}

fn store_error(e: crate::store::StoreError) -> (ErrorCode, String) {
    (
        ErrorCode::Store,
        format!("the audit store cannot answer: {e}"),
    )
}

fn not_found(service: &str) -> (ErrorCode, String) {
    (
        ErrorCode::NotFound,
        format!("there is no service {service:?} (see `upkctl list`)"),
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
