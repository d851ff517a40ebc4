//! A direct client of one buddy's socket (`SvcRunPath/<id>/buddy.sock`), for when the
//! controller cannot be asked.
//!
//! Everything an operator does normally goes through the controller ([`crate::Client`]), which
//! relays it to the buddy and audits it. A few callers must act without the controller: OpenRC
//! stopping services at shutdown, after init has already killed the controller. They talk to
//! the buddy itself, with the buddy protocol (`docs/protocol.md`, "Requests (to the buddy)")
//! and role `client`: the buddy serves root and its own uid, and its records then name the
//! caller's uid and pid as the cause. Nothing reaches the audit store this way.
//!
//! Every wait is bounded by the timeout given to [`BuddyClient::connect`]. A socket with no
//! buddy behind it fails at once ([`BuddyError::Unreachable`]), so "no buddy is running" never
//! hangs.

use crate::wire::{ReadError, Wire};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use upk_core::proto::{BuddyReply, BuddyRequest, Role};
use upk_core::proto::{Envelope, PROTOCOL_VERSION};
use upk_core::status::Status;

/// Why a request to a buddy did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BuddyError {
    /// Nothing listens on the socket: no buddy runs for this service.
    #[error("no buddy answers at {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The buddy answered with an error (one sentence of its own).
    #[error("the buddy refused: {0}")]
    Refused(String),
    /// No answer within the timeout.
    #[error("the buddy did not answer within {0:?}")]
    TimedOut(Duration),
    /// The connection broke or closed.
    #[error("lost the connection to the buddy: {0}")]
    Io(#[from] std::io::Error),
    /// The buddy sent something this library does not understand.
    #[error("unexpected answer from the buddy: {0}")]
    Protocol(String),
}

/// A result with [`BuddyError`].
pub type BuddyResult<T> = std::result::Result<T, BuddyError>;

/// One connection to one buddy, as a `client`.
#[derive(Debug)]
pub struct BuddyClient {
    wire: Wire,
    timeout: Duration,
    service: String,
    buddy_pid: i32,
}

impl BuddyClient {
    /// Connects to the buddy at `socket` and says `hello` (role `client`); every later reply
    /// is awaited for at most `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> BuddyResult<BuddyClient> {
        let stream = UnixStream::connect(socket).map_err(|source| BuddyError::Unreachable {
            path: socket.to_owned(),
            source,
        })?;
        let wire = Wire::new(stream)?;
        wire.set_timeout(Some(timeout))?;
        let mut client = BuddyClient {
            wire,
            timeout,
            service: String::new(),
            buddy_pid: 0,
        };
        match client.call(BuddyRequest::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
        })? {
            BuddyReply::Hello {
                service, buddy_pid, ..
            } => {
                (client.service, client.buddy_pid) = (service, buddy_pid);
                Ok(client)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The service id the buddy said it runs.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The buddy's pid, as it said in `hello`.
    pub fn buddy_pid(&self) -> i32 {
        self.buddy_pid
    }

    /// Sends one request and returns its reply; an `error` reply is [`BuddyError::Refused`].
    /// Pushed events (a subscription) are skipped.
    pub fn call(&mut self, request: BuddyRequest) -> BuddyResult<BuddyReply> {
        let id = self.wire.send(request)?;
        loop {
            let msg = self.read()?;
            match msg.body {
                // A refusal of the connection as a whole (permission, version) has no id.
                BuddyReply::Error { message } if msg.id.is_none() || msg.id == Some(id) => {
                    return Err(BuddyError::Refused(message))
                }
                body if msg.id == Some(id) => return Ok(body),
                _ => continue,
            }
        }
    }

    fn read(&mut self) -> BuddyResult<Envelope<BuddyReply>> {
        self.wire.read().map_err(|e| match e {
            ReadError::TimedOut => BuddyError::TimedOut(self.timeout),
            ReadError::Io(e) => BuddyError::Io(e),
            ReadError::Protocol(m) => BuddyError::Protocol(m),
        })
    }

    fn ok(&mut self, request: BuddyRequest) -> BuddyResult<Status> {
        match self.call(request)? {
            BuddyReply::Ok { status, .. } => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    /// The buddy's current status.
    pub fn status(&mut self) -> BuddyResult<Status> {
        self.ok(BuddyRequest::Status)
    }

    /// Wants the service down and stops it; returns the status right after (usually
    /// `stopping`: follow the status file to see it `stopped`).
    pub fn stop(&mut self) -> BuddyResult<Status> {
        self.ok(BuddyRequest::Stop)
    }

    /// Wants the service up and starts it; returns the status right after.
    pub fn start(&mut self) -> BuddyResult<Status> {
        self.ok(BuddyRequest::Start)
    }
}

fn unexpected(reply: &BuddyReply) -> BuddyError {
    let kind = serde_json::to_value(reply)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    BuddyError::Protocol(format!("a `{kind}` reply"))
}
