//! libupkeeper: the blocking client of the upkeeper controller.
//!
//! # Theory of operation
//!
//! A [`Client`] is one connection to the controller's socket (`StateDir/upkeeper.sock`).
//! [`Client::connect`] says `hello` and learns what the caller may do ([`Access`], decided by
//! the controller from the caller's uid and groups). Each method sends one request and waits
//! for its reply; control methods (start, stop, restart, ...) return once the service's buddy
//! has carried the command out, with the status right after it ([`Outcome`]);
//! [`Client::queue`] returns once the command is sent to the buddy, without its outcome.
//! [`Client::connect_lazy`] says `hello` with the first request, in one write, for callers
//! that send one request and go (upkctl). Failures are
//! typed ([`Error`]): the controller could not be reached, it refused the caller, there is no
//! such service, the buddy could not do it, or the wait timed out.
//!
//! [`Client::subscribe`] turns the connection into a [`Subscription`], an iterator over
//! stored events as the controller commits them. Every event carries its row id; pass the last
//! one seen as `after` when subscribing again and nothing is missed in between.
//!
//! [`Client::spawn`] makes the same client over a program's stdin and stdout instead of the
//! socket: `ssh HOST upkctl bridge` for `upkctl -H` ([`program`], docs/remote.md), with the
//! program's exit status and last stderr line as the error when it fails.
//!
//! [`buddy::BuddyClient`] talks to one buddy directly, for the few callers that must act while
//! the controller is down (OpenRC stopping services at shutdown). It bypasses the audit store.
//!
//! The wire protocol is newline-delimited JSON (`docs/protocol.md`); the message types are in
//! [`upk_core::client`], re-exported here. Long replies are hidden from callers: a list the
//! controller sends as several lines (`more`) comes back as one `Vec`, and `history` and
//! `audit`, which the controller answers a page at a time (a `cursor` after 5000 rows or
//! 4 MiB), are asked again from the cursor until every row asked for has come.
//!
//! # Examples
//!
//! Restart a service and say how it went:
//!
//! ```no_run
//! use libupkeeper::{Client, Outcome};
//!
//! let mut client = Client::connect(&libupkeeper::socket_path(None)?)?;
//! match client.restart("api")? {
//!     Outcome::Done { status, .. } => println!("api is {:?}", status.map(|s| s.state)),
//!     Outcome::ActionDone { exit, .. } => println!("{exit:?}"),
//!     Outcome::Queued { .. } => unreachable!("only `Client::queue` is answered `queued`"),
//! }
//! # Ok::<(), libupkeeper::Error>(())
//! ```
//!
//! What died last night, newest first:
//!
//! ```no_run
//! use libupkeeper::{Client, HistoryFilter};
//!
//! let mut client = Client::connect(&libupkeeper::socket_path(None)?)?;
//! let filter = HistoryFilter {
//!     kinds: vec!["died".into()],
//!     newest_first: true,
//!     limit: Some(20),
//!     ..HistoryFilter::default()
//! };
//! for row in client.history(&filter)? {
//!     println!("{} {} {}", row.id, row.service, row.record.summary());
//! }
//! # Ok::<(), libupkeeper::Error>(())
//! ```
//!
//! Follow events, resuming where a previous subscription stopped:
//!
//! ```no_run
//! use libupkeeper::Client;
//!
//! let last_seen: Option<i64> = None; // e.g. kept from an earlier run
//! let client = Client::connect(&libupkeeper::socket_path(None)?)?;
//! for event in client.subscribe(&[], last_seen)? {
//!     let event = event?;
//!     println!("#{} {} {}", event.id, event.service, event.record.summary());
//! }
//! # Ok::<(), libupkeeper::Error>(())
//! ```

pub mod buddy;
pub mod program;
mod wire;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use upk_core::cgroup::{Containment, Usage};
pub use upk_core::client::{Access, ClientReply, ClientRequest, ErrorCode, ServiceSummary};
pub use upk_core::death::{Reason, StopBy, StopStep, Tail};
pub use upk_core::event::{EventKind, Exit, Record, StateName};
pub use upk_core::history::{
    CommandEntry, CommandRow, ConfigChange, ConfigChangeRow, EventRow, GoodRun, HistoryFilter,
    HourBucket, Prerequisite, Stats, Why,
};
use upk_core::proto::Envelope;
pub use upk_core::proto::{SignalSpec, MAX_LINE, PROTOCOL_VERSION};
pub use upk_core::status::{Status, Want};
use wire::{ReadError, Wire};

/// How long [`Client::connect`] waits for the controller's `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller's socket could not be reached (the controller is not running, or the
    /// path is wrong).
    #[error("cannot reach the controller at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The controller answered with an error.
    #[error("{message}")]
    Controller {
        /// What kind of failure.
        code: ErrorCode,
        /// One sentence from the controller.
        message: String,
    },
    /// No reply within the timeout set with [`Client::set_timeout`].
    #[error("the controller did not answer within {0:?}")]
    TimedOut(Duration),
    /// The connection broke or closed.
    #[error("lost the connection to the controller: {0}")]
    Io(#[from] std::io::Error),
    /// The controller sent something this library does not understand.
    #[error("unexpected answer from the controller: {0}")]
    Protocol(String),
    /// The controller file could not be read.
    #[error("{0}")]
    Config(String),
    /// The program carrying the connection ([`Client::spawn`]: ssh) could not be started,
    /// or ended with a failure.
    #[error("{program} {status}{}", line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Program {
        /// The program, as it was started.
        program: String,
        /// How it ended: "exited with status 255", "could not be started: ...".
        status: String,
        /// The last line it wrote on stderr, if any.
        line: Option<String>,
    },
}

impl Error {
    /// The controller's error code, if the controller answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Controller { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What a control request did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The buddy carried the command out.
    Done {
        /// The service.
        service: String,
        /// Its status right after the command took effect.
        status: Option<Status>,
        /// Extra detail, such as "already running".
        message: Option<String>,
    },
    /// The command was sent to the service's buddy, its outcome not waited for
    /// ([`Client::queue`]).
    Queued {
        /// The service.
        service: String,
    },
    /// A reload or custom action ran to its end.
    ActionDone {
        /// The service.
        service: String,
        /// The action.
        action: String,
        /// How its script ended.
        exit: Exit,
        /// The signal the action only sent to the service, without running a script (the
        /// default reload, SIGHUP): a program that does not handle it dies of it.
        signal: Option<i32>,
    },
}

/// Which audited commands [`Client::audit`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// From this time (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Until this time (exclusive).
    pub until_us: Option<i64>,
    /// Only commands of this uid.
    pub uid: Option<u32>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only rows with a larger id.
    pub after_id: Option<i64>,
    /// Only rows with a smaller id.
    pub before_id: Option<i64>,
    /// The newest first (with `limit`: the last N).
    pub newest_first: bool,
}

/// The controller socket to use: `UPKEEPER_SOCKET` if set; else the one of the controller
/// file `config` (or the default controller file for this user, or built-in defaults); and for
/// a user without a controller of their own, the system controller's socket when it exists.
pub fn socket_path(config: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("UPKEEPER_SOCKET") {
        return Ok(p.into());
    }
    let ctl = upk_core::config::load_controller_or_defaults(config)
        .map_err(|e| Error::Config(e.to_string()))?;
    let own = ctl.socket_path();
    let system = upk_core::config::Controller::defaults(0).socket_path();
    if config.is_none() && !own.exists() && system.exists() {
        return Ok(system);
    }
    Ok(own)
}

/// Connects to a unix socket within `bound`. A connect to a listener whose backlog is full
/// (a controller that stopped accepting) blocks until a slot frees; the kernel bounds that wait
/// by the socket's send timeout, set before the connect, and then fails with `EAGAIN`.
/// Public for relays (`upkctl bridge`) that carry bytes without speaking the protocol.
pub fn dial(socket: &Path, bound: Duration) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(socket)?;
    // Zero means "no timeout" to the kernel: the smallest bound it takes is a microsecond.
    let bound = bound.max(Duration::from_micros(1));
    let timeval = nix::sys::time::TimeVal::new(
        bound.as_secs().min(i64::MAX as u64) as i64,
        i64::from(bound.subsec_micros()),
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeval)?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    let stream = UnixStream::from(fd);
    // The bound was for the connect; writes wait as `set_timeout` says.
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// One connection to the controller.
#[derive(Debug)]
pub struct Client {
    // Dropped before `program`: the program sees its stdin end, then is waited for.
    wire: Wire,
    access: Access,
    controller_pid: i32,
    timeout: Option<Duration>,
    /// The program the connection goes through ([`Client::spawn`]).
    program: Option<program::Program>,
    /// `hello` is still to be said, with this bound on its answer ([`Client::connect_lazy`]).
    owed: Option<Duration>,
}

impl Client {
    /// Connects to the controller at `socket` and says `hello`, waiting at most
    /// [`HELLO_TIMEOUT`] for its answer (a stopped controller still accepts connections).
    pub fn connect(socket: &Path) -> Result<Client> {
        Client::connect_timeout(socket, HELLO_TIMEOUT)
    }

    /// [`Client::connect`] with another bound on the connection and the wait for `hello`.
    /// Later requests wait without a bound until [`Client::set_timeout`] sets one.
    pub fn connect_timeout(socket: &Path, hello: Duration) -> Result<Client> {
        let mut client = Client::connect_lazy(socket, hello)?;
        client.hello()?;
        Ok(client)
    }

    /// Connects to the controller at `socket` within `hello`, and says `hello` with the first
    /// request, in the same write: a one-shot command costs one round trip, not two. The
    /// answer to `hello` is read first, within `hello`; until then [`Client::access`] is
    /// `None` and [`Client::controller_pid`] 0 (call [`Client::hello`] to learn them first).
    /// A controller that refuses the `hello` (a newer protocol) closes the connection without
    /// serving what followed it.
    pub fn connect_lazy(socket: &Path, hello: Duration) -> Result<Client> {
        let stream = dial(socket, hello).map_err(|source| match source.kind() {
            // The listener's backlog stayed full for the whole bound: a wedged controller.
            std::io::ErrorKind::WouldBlock => Error::TimedOut(hello),
            _ => Error::Unreachable {
                path: socket.to_owned(),
                source,
            },
        })?;
        let mut client = Client::unsaid(stream)?;
        client.owed = Some(hello);
        Ok(client)
    }

    /// Says `hello` on a stream already connected to something that speaks the protocol (the
    /// controller, or `upkeeper read-store` on a socket pair), waiting at most `hello`.
    pub fn over(stream: UnixStream, hello: Duration) -> Result<Client> {
        let mut client = Client::unsaid(stream)?;
        client.greet(hello, None)?;
        Ok(client)
    }

    fn unsaid(stream: UnixStream) -> Result<Client> {
        Ok(Client {
            wire: Wire::new(stream)?,
            access: Access::None,
            controller_pid: 0,
            timeout: None,
            program: None,
            owed: None,
        })
    }

    /// Says `hello` now, if it is still owed ([`Client::connect_lazy`]).
    pub fn hello(&mut self) -> Result<()> {
        match self.owed.take() {
            Some(bound) => self
                .greet(bound, None)
                .map(drop)
                .map_err(|e| self.explain(e)),
            None => Ok(()),
        }
    }

    /// Sends `hello`, and `then` after it in the same write, and waits at most `bound` for
    /// the answer to `hello`; returns the id `then`'s answer will carry.
    fn greet(&mut self, bound: Duration, then: Option<ClientRequest>) -> Result<Option<u64>> {
        let hello = ClientRequest::Hello {
            version: PROTOCOL_VERSION,
            origin: None,
        };
        let mut lines = vec![hello];
        lines.extend(then);
        self.wire.set_timeout(Some(bound))?;
        let ids = match self.wire.send_all(lines) {
            Ok(ids) => ids,
            // A controller that turned the connection away (`busy`) said why before closing
            // it: that sentence is the error, not the broken pipe.
            Err(e) => {
                return Err(match self.read() {
                    Ok(Envelope {
                        id: None,
                        body: ClientReply::Error { code, message },
                    }) => Error::Controller { code, message },
                    _ => Error::Io(e),
                })
            }
        };
        let answer = self.answer(ids[0]);
        self.wire.set_timeout(self.timeout)?;
        match answer? {
            ClientReply::Hello { access, pid, .. } => {
                self.access = access;
                self.controller_pid = pid;
                Ok(ids.get(1).copied())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// What the controller lets this caller do.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The controller's pid.
    pub fn controller_pid(&self) -> i32 {
        self.controller_pid
    }

    /// Bounds every wait for a reply (`None`: wait as long as it takes, the default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.timeout = timeout;
        Ok(self.wire.set_timeout(timeout)?)
    }

    /// Sends one request and returns its reply; an `error` reply is an [`Error::Controller`].
    pub fn call(&mut self, request: ClientRequest) -> Result<ClientReply> {
        self.exchange(request).map_err(|e| self.explain(e))
    }

    /// A broken connection through a program that failed is that program's failure.
    fn explain(&mut self, e: Error) -> Error {
        match (&e, &mut self.program) {
            (Error::Io(_), Some(program)) => program.failure(program::GRACE).unwrap_or(e),
            _ => e,
        }
    }

    fn exchange(&mut self, request: ClientRequest) -> Result<ClientReply> {
        let id = match self.owed.take() {
            Some(bound) => self.greet(bound, Some(request))?.unwrap_or_default(),
            None => self.wire.send(request)?,
        };
        self.answer(id)
    }

    /// Reads until the reply to request `id` has come whole.
    fn answer(&mut self, id: u64) -> Result<ClientReply> {
        loop {
            let msg = self.read()?;
            if let (None, ClientReply::Error { code, message }) = (msg.id, &msg.body) {
                // Said to no request: the controller is closing this connection (`busy`).
                return Err(Error::Controller {
                    code: *code,
                    message: message.clone(),
                });
            }
            if msg.id != Some(id) {
                continue; // an event pushed before a subscription was asked for: not ours
            }
            let mut body = match msg.body {
                ClientReply::Error { code, message } => {
                    return Err(Error::Controller { code, message })
                }
                body => body,
            };
            // A long list comes as several lines with this id: put them back together.
            while body.more() {
                let next = self.read()?;
                if next.id != Some(id) {
                    continue;
                }
                if let ClientReply::Error { code, message } = next.body {
                    return Err(Error::Controller { code, message });
                }
                if !body.absorb(next.body) {
                    return Err(Error::Protocol(
                        "a reply continued with another kind of reply".into(),
                    ));
                }
            }
            return Ok(body);
        }
    }

    fn read(&mut self) -> Result<Envelope<ClientReply>> {
        self.wire.read().map_err(|e| match e {
            ReadError::TimedOut => Error::TimedOut(self.timeout.unwrap_or_default()),
            ReadError::Io(e) => Error::Io(e),
            ReadError::Protocol(m) => Error::Protocol(m),
        })
    }

    /// Every configured service, with its status.
    pub fn list(&mut self) -> Result<Vec<ServiceSummary>> {
        match self.call(ClientRequest::List)? {
            ClientReply::Services { services, .. } => Ok(services),
            other => Err(unexpected(&other)),
        }
    }

    /// The status of some services (all when `services` is empty).
    pub fn status(&mut self, services: &[&str]) -> Result<Vec<ServiceSummary>> {
        let services = services.iter().map(|s| s.to_string()).collect();
        match self.call(ClientRequest::Status { services })? {
            ClientReply::Services { services, .. } => Ok(services),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a control request without waiting for its outcome (`upkctl --no-block`):
    /// [`Outcome::Queued`] once the controller has sent it to the service's buddy. The
    /// outcome is audited with the command; it is not told here, so a service that fails to
    /// start is seen in its status and history, not in this answer.
    pub fn queue(&mut self, request: ClientRequest) -> Result<Outcome> {
        self.command(ClientRequest::Queue {
            request: Box::new(request),
        })
    }

    /// Sends any control request (start, stop, ..., [`ClientRequest::Queue`]) and returns
    /// what it did.
    pub fn command(&mut self, request: ClientRequest) -> Result<Outcome> {
        match self.call(request)? {
            ClientReply::Queued { service } => Ok(Outcome::Queued { service }),
            ClientReply::Done {
                service,
                status,
                message,
            } => Ok(Outcome::Done {
                service,
                status,
                message,
            }),
            ClientReply::ActionDone {
                service,
                action,
                exit,
                signal,
            } => Ok(Outcome::ActionDone {
                service,
                action,
                exit,
                signal,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Wants the service up and starts it.
    pub fn start(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Start { service })
    }

    /// Wants the service down and stops it.
    pub fn stop(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Stop { service })
    }

    /// Stops the service if it runs, then starts it.
    pub fn restart(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Restart { service })
    }

    /// Runs the service's reload action; returns when it has ended.
    pub fn reload(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Reload { service })
    }

    /// Starts the service once, without restarting it when it ends.
    pub fn once(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Once { service })
    }

    /// Sends a signal to the service (to its process group with `group`).
    pub fn signal(&mut self, service: &str, signal: SignalSpec, group: bool) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Signal {
            service,
            signal,
            group,
        })
    }

    /// Runs a custom action by name (or number); returns when it has ended.
    pub fn action(&mut self, service: &str, name: &str) -> Result<Outcome> {
        let (service, name) = (service.to_owned(), name.to_owned());
        self.command(ClientRequest::Action { service, name })
    }

    /// Stops the service, shuts its buddy down, and forgets it until its definition changes.
    pub fn unconfigure(&mut self, service: &str) -> Result<Outcome> {
        let service = service.to_owned();
        self.command(ClientRequest::Unconfigure { service })
    }

    /// Stored events matching `filter`.
    ///
    /// The controller answers at most [`upk_core::client::MAX_ROWS`] rows per request; this
    /// asks again from where it stopped until `filter.limit` rows (or all) have come.
    pub fn history(&mut self, filter: &HistoryFilter) -> Result<Vec<EventRow>> {
        let wanted = filter.limit;
        let mut filter = filter.clone();
        let mut rows = Vec::new();
        loop {
            let request = ClientRequest::History {
                filter: filter.clone(),
            };
            let (events, cursor) = match self.call(request)? {
                ClientReply::History { events, cursor, .. } => (events, cursor),
                other => return Err(unexpected(&other)),
            };
            rows.extend(events);
            // Against the limit asked for, not the one left for this page.
            let Some(cursor) = continue_at(cursor, wanted, rows.len()) else {
                return Ok(rows);
            };
            filter.limit = wanted.map(|l| l.saturating_sub(rows.len()));
            if filter.by_time && !filter.newest_first {
                // After the last row: its time, and its id among the rows of that time.
                filter.since_us = rows.last().map(|r| r.record.wall_us);
                filter.after_id = Some(cursor);
            } else if filter.newest_first {
                filter.before_id = Some(cursor);
            } else {
                filter.after_id = Some(cursor);
            }
        }
    }

    /// Audited commands.
    ///
    /// Paged like [`Client::history`]: every matching row (up to `query.limit`) comes back.
    pub fn audit(&mut self, query: &AuditQuery) -> Result<Vec<CommandRow>> {
        let mut q = query.clone();
        let mut rows = Vec::new();
        loop {
            let request = ClientRequest::Audit {
                since_us: q.since_us,
                until_us: q.until_us,
                uid: q.uid,
                limit: q.limit,
                after_id: q.after_id,
                before_id: q.before_id,
                newest_first: q.newest_first,
            };
            let (commands, cursor) = match self.call(request)? {
                ClientReply::Audit {
                    commands, cursor, ..
                } => (commands, cursor),
                other => return Err(unexpected(&other)),
            };
            rows.extend(commands);
            let Some(cursor) = continue_at(cursor, query.limit, rows.len()) else {
                return Ok(rows);
            };
            q.limit = query.limit.map(|l| l.saturating_sub(rows.len()));
            if q.newest_first {
                q.before_id = Some(cursor);
            } else {
                q.after_id = Some(cursor);
            }
        }
    }

    /// What the store knows around the last death of `service` at or before `at_us` (now when
    /// `None`): the run, the streak it ends, the last good run, configuration changes, other
    /// services' failures, its prerequisites and the commands naming it.
    pub fn why(&mut self, service: &str, at_us: Option<i64>) -> Result<Why> {
        let request = ClientRequest::Why {
            service: service.to_owned(),
            at_us,
        };
        match self.call(request)? {
            ClientReply::Why { why } => Ok(*why),
            other => Err(unexpected(&other)),
        }
    }

    /// Configuration changes with `since_us <= wall_us < until_us`, oldest first, at most
    /// `limit` (and at most [`upk_core::client::MAX_ROWS`]).
    pub fn config_changes(
        &mut self,
        since_us: Option<i64>,
        until_us: Option<i64>,
        limit: Option<usize>,
    ) -> Result<Vec<ConfigChangeRow>> {
        let request = ClientRequest::ConfigChanges {
            since_us,
            until_us,
            limit,
        };
        match self.call(request)? {
            ClientReply::ConfigChanges { changes } => Ok(changes),
            other => Err(unexpected(&other)),
        }
    }

    /// Statistics of some services (all when empty) over `since_us..until_us` (default: the
    /// last 24 hours).
    pub fn stats(
        &mut self,
        services: &[&str],
        since_us: Option<i64>,
        until_us: Option<i64>,
    ) -> Result<Vec<Stats>> {
        let services = services.iter().map(|s| s.to_string()).collect();
        match self.call(ClientRequest::Stats {
            services,
            since_us,
            until_us,
        })? {
            ClientReply::Stats { stats, .. } => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }

    /// Subscribes to the events of some services (all when empty): first the stored events
    /// after row id `after` (none when `None`), then each new one as it is stored.
    pub fn subscribe(mut self, services: &[&str], after: Option<i64>) -> Result<Subscription> {
        let services = services.iter().map(|s| s.to_string()).collect();
        match self.call(ClientRequest::Subscribe { services, after })? {
            ClientReply::Subscribed { cursor } => Ok(Subscription {
                client: self,
                cursor: after.unwrap_or(cursor),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// [`Client::subscribe`] with a callback: `f` gets each event until it returns `false`
    /// or the connection ends (an error).
    pub fn subscribe_with<F>(self, services: &[&str], after: Option<i64>, mut f: F) -> Result<()>
    where
        F: FnMut(EventRow) -> bool,
    {
        for event in self.subscribe(services, after)? {
            if !f(event?) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Events as the controller stores them; see [`Client::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    cursor: i64,
}

impl Subscription {
    /// The row id of the last event received (or where the subscription started): pass it as
    /// `after` to a new subscription to miss nothing.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Bounds the wait for the next event; a wait that runs out is [`Error::TimedOut`] and
    /// the subscription stays usable.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.client.set_timeout(timeout)
    }

    /// The next event.
    pub fn next_event(&mut self) -> Result<EventRow> {
        loop {
            let msg = self.client.read().map_err(|e| self.client.explain(e))?;
            match msg.body {
                ClientReply::Event { event } => {
                    self.cursor = self.cursor.max(event.id);
                    return Ok(event);
                }
                ClientReply::Error { code, message } => {
                    return Err(Error::Controller { code, message })
                }
                _ => {}
            }
        }
    }
}

impl Iterator for Subscription {
    type Item = Result<EventRow>;

    /// The next event; `None` once the connection has ended.
    fn next(&mut self) -> Option<Result<EventRow>> {
        match self.next_event() {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            other => Some(other),
        }
    }
}

/// Where to ask again: the controller stopped at `cursor` and fewer than `limit` rows (or
/// not all) have come.
fn continue_at(cursor: Option<i64>, limit: Option<usize>, got: usize) -> Option<i64> {
    cursor.filter(|_| limit.is_none_or(|l| got < l))
}

fn unexpected(reply: &ClientReply) -> Error {
    let kind = serde_json::to_value(reply)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    Error::Protocol(format!("a `{kind}` reply"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    /// A controller that says `busy` and closes before the client has written anything: the
    /// client's first write breaks, and the error it gets is the controller's sentence.
    #[test]
    fn busy_said_before_the_first_write_is_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let mut client = Client::connect_lazy(&path, Duration::from_secs(10)).expect("connect");
        let (mut conn, _) = listener.accept().expect("accept");
        let busy = r#"{"type":"error","code":"busy","message":"uid 7 holds 32 connections"}"#;
        std::io::Write::write_all(&mut conn, format!("{busy}\n").as_bytes()).expect("write");
        drop(conn);
        match client.list() {
            Err(Error::Controller { code, message }) => {
                assert_eq!(code, ErrorCode::Busy);
                assert_eq!(message, "uid 7 holds 32 connections");
            }
            other => panic!("expected busy, got {other:?}"),
        }
    }

    /// A listener that never accepts, its backlog filled: the connect itself must give up at
    /// the bound, not wait for a slot for ever.
    #[test]
    fn a_connect_to_a_full_backlog_times_out_at_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let mut queued = Vec::new();
        let full = loop {
            match dial(&path, Duration::from_millis(20)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(e) => panic!("connect: {e}"),
            }
            if queued.len() > 100_000 {
                break false;
            }
        };
        assert!(full, "the backlog never filled");
        let t = Instant::now();
        let got = Client::connect_timeout(&path, Duration::from_millis(300));
        let took = t.elapsed();
        assert!(
            matches!(got, Err(Error::TimedOut(_))),
            "expected a time-out, got {got:?}"
        );
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(10),
            "gave up after {took:?}"
        );
    }
}
