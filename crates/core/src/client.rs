//! The client protocol's message set: what a client (upkctl, uptop, libupkeeper, `socat`)
//! sends to the controller on `StateDir/upkeeper.sock`, and what the controller answers.
//!
//! Framing is [`crate::proto`]'s: one JSON object per line, each in an [`Envelope`] whose `id`
//! the reply echoes. A client opens with `hello`; the controller's `hello` says which
//! [`Access`] the caller's credentials (SO_PEERCRED) give. Every request gets exactly one
//! reply, except `subscribe`, which is answered with `subscribed` and then pushes `event`
//! messages (without an id) until the connection closes. Control requests are answered only
//! once the service's buddy has answered, so `done` means the buddy carried the command out;
//! anything else is an `error` with a [`ErrorCode`] and one sentence. A control request
//! wrapped in `queue` is answered `queued` once it is sent to the buddy.
//!
//! [`Envelope`]: crate::proto::Envelope

use crate::event::Exit;
use crate::history::{CommandRow, EventRow, HistoryFilter, Stats};
use crate::proto::SignalSpec;
use crate::status::{Status, Want};
use serde::{Deserialize, Serialize};

/// What a client asks the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest {
    /// Opening exchange: the controller answers with its version and the caller's access.
    Hello {
        /// The client's protocol version.
        version: u32,
        /// Where the caller says it is connecting from, when it comes through a relay:
        /// `upkctl bridge` sets `ssh ADDRESS:PORT` from `SSH_CONNECTION` (docs/remote.md).
        /// Reported, not authenticated: the audit keeps it beside the peer's uid, which is.
        /// At most [`MAX_ORIGIN`] printable ASCII bytes ([`check_origin`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    /// Every configured service, with a one-line summary each.
    List,
    /// The status records of some services (all when empty).
    Status {
        /// Service ids.
        #[serde(default)]
        services: Vec<String>,
    },
    /// Want up, start now.
    Start {
        /// Service id.
        service: String,
    },
    /// Want down, stop now (stop script, SIGTERM, SIGKILL to the group).
    Stop {
        /// Service id.
        service: String,
    },
    /// Stop if running, then start.
    Restart {
        /// Service id.
        service: String,
    },
    /// Run the reload action.
    Reload {
        /// Service id.
        service: String,
    },
    /// Start once, without restarting it when it ends.
    Once {
        /// Service id.
        service: String,
    },
    /// Send a signal to the running service.
    Signal {
        /// Service id.
        service: String,
        /// Which signal (a name such as `HUP`, or a number).
        signal: SignalSpec,
        /// To the whole process group.
        #[serde(default)]
        group: bool,
    },
    /// Run a custom action by name (or number).
    Action {
        /// Service id.
        service: String,
        /// The action's name.
        name: String,
    },
    /// Stop the service, shut its buddy down and forget it until its file changes.
    Unconfigure {
        /// Service id.
        service: String,
    },
    /// Stored events after `after` (a row id), then every new one as it is stored.
    Subscribe {
        /// Only these services (all when empty).
        #[serde(default)]
        services: Vec<String>,
        /// Resume after this row id; `None`: only events stored from now on.
        #[serde(default)]
        after: Option<i64>,
    },
    /// Stored events matching a filter.
    History {
        /// Which events.
        #[serde(flatten)]
        filter: HistoryFilter,
    },
    /// Audited commands.
    Audit {
        /// From this time (microseconds since the epoch).
        #[serde(default)]
        since_us: Option<i64>,
        /// Until this time (exclusive).
        #[serde(default)]
        until_us: Option<i64>,
        /// Only commands of this uid.
        #[serde(default)]
        uid: Option<u32>,
        /// At most this many (the oldest first, or the newest with `newest_first`).
        #[serde(default)]
        limit: Option<usize>,
        /// Only rows with a larger id (a cursor: the last id already seen).
        #[serde(default)]
        after_id: Option<i64>,
        /// Only rows with a smaller id (a cursor when paging newest first).
        #[serde(default)]
        before_id: Option<i64>,
        /// The newest rows first (with `limit`: the last N).
        #[serde(default)]
        newest_first: bool,
    },
    /// Why a service's last death (or the last at or before `at_us`) happened: what the store
    /// knows around it ([`crate::history::Why`]).
    Why {
        /// The service.
        service: String,
        /// The latest death at or before this time (default: now).
        #[serde(default)]
        at_us: Option<i64>,
    },
    /// Configuration changes (files loaded, changed, removed), oldest first.
    ConfigChanges {
        /// From this time.
        #[serde(default)]
        since_us: Option<i64>,
        /// Until this time (exclusive).
        #[serde(default)]
        until_us: Option<i64>,
        /// At most this many (default and cap: [`MAX_ROWS`]).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// A control request relayed without waiting for its outcome (`upkctl --no-block`):
    /// answered `queued` as soon as the service's buddy has been sent it. The command is
    /// audited with its outcome, as `request` alone would be; the caller is not told that
    /// outcome. `request` must be a control request other than `queue`.
    Queue {
        /// The control request.
        request: Box<ClientRequest>,
    },
    /// Per-service statistics over a window (default: the last 24 hours).
    Stats {
        /// Only these services (all configured ones when empty).
        #[serde(default)]
        services: Vec<String>,
        /// Window start.
        #[serde(default)]
        since_us: Option<i64>,
        /// Window end (default: now).
        #[serde(default)]
        until_us: Option<i64>,
    },
}

impl ClientRequest {
    /// True for requests that change something (they need [`Access::Control`] and are
    /// audited).
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            ClientRequest::Start { .. }
                | ClientRequest::Stop { .. }
                | ClientRequest::Restart { .. }
                | ClientRequest::Reload { .. }
                | ClientRequest::Once { .. }
                | ClientRequest::Signal { .. }
                | ClientRequest::Action { .. }
                | ClientRequest::Unconfigure { .. }
                | ClientRequest::Queue { .. }
        )
    }

    /// The one service a control request names.
    pub fn service(&self) -> Option<&str> {
        match self {
            ClientRequest::Start { service }
            | ClientRequest::Stop { service }
            | ClientRequest::Restart { service }
            | ClientRequest::Reload { service }
            | ClientRequest::Once { service }
            | ClientRequest::Signal { service, .. }
            | ClientRequest::Action { service, .. }
            | ClientRequest::Unconfigure { service } => Some(service),
            ClientRequest::Queue { request } => request.service(),
            _ => None,
        }
    }
}

/// What a caller may do, from its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Nothing but `hello`.
    None,
    /// list, status, subscribe, history, audit, stats, why, config changes.
    Read,
    /// Everything.
    Control,
}

/// Why a request failed, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be parsed (the connection is closed after this reply).
    Invalid,
    /// The caller's access does not allow the request.
    Refused,
    /// No such service, or no such action.
    NotFound,
    /// The service's buddy cannot be reached right now.
    Unavailable,
    /// The buddy refused or could not carry out the request.
    Failed,
    /// The audit store could not answer.
    Store,
    /// The client speaks a newer protocol version.
    Version,
    /// A value in the request is out of range (a time window that ends before it starts, a
    /// time whose arithmetic would overflow); the connection stays open.
    BadValue,
    /// The controller has too many connections from this caller (or in all) and closes this
    /// one.
    Busy,
}

/// A service in `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Service id.
    pub service: String,
    /// Its UUID in the store, when known.
    #[serde(default)]
    pub uuid: Option<String>,
    /// The file that defines it.
    pub file: String,
    /// Whether the controller is connected to its buddy.
    pub linked: bool,
    /// Its status file, when there is one.
    #[serde(default)]
    pub status: Option<Status>,
    /// What the controller's store wants for it (`"up"`, `"down"`, `"once"` on the wire): the
    /// operator's last command through the controller, or its `InitialState`. The buddy's own
    /// `want` (in `status`) differs when someone talked to the buddy directly.
    #[serde(default)]
    pub desired: Option<Want>,
    /// What it costs now (CPU time, memory, tasks), read by the controller as it answers;
    /// absent when it does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::cgroup::Usage>,
}

/// What the controller answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientReply {
    /// Answer to `hello`.
    Hello {
        /// The controller's protocol version.
        version: u32,
        /// The controller's pid.
        pid: i32,
        /// What this caller may do.
        access: Access,
    },
    /// Answer to `list` and `status`.
    Services {
        /// In id order.
        services: Vec<ServiceSummary>,
        /// More lines of this reply follow (see [`ClientReply::more`]).
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    /// A control request was carried out by the buddy.
    Done {
        /// The service.
        service: String,
        /// Its status right after the command took effect.
        #[serde(default)]
        status: Option<Status>,
        /// Extra detail ("already running").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A `queue`d control request was sent to the service's buddy; its outcome is audited,
    /// not answered.
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
        /// How the action's script ended.
        exit: Exit,
        /// The signal the action only sent to the service (the buddy's `signal`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// `subscribe` is in place; stored events follow.
    Subscribed {
        /// The newest row id stored when the subscription began.
        cursor: i64,
    },
    /// A stored event (pushed to subscribers).
    Event {
        /// The event and its row id (the resume cursor). Not flattened: the row id would
        /// collide with the envelope's `id`.
        event: EventRow,
    },
    /// Answer to `history`.
    History {
        /// Matching events.
        events: Vec<EventRow>,
        /// More lines of this reply follow.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// On the last line, when the controller stopped at [`MAX_ROWS`] rows before the
        /// request's own `limit`: the id of the last row sent, to ask again with as `after_id`
        /// (or `before_id` when newest first) for the rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<i64>,
    },
    /// Answer to `audit`.
    Audit {
        /// Matching commands.
        commands: Vec<CommandRow>,
        /// More lines of this reply follow.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// As in `history`: where to continue when the controller stopped at [`MAX_ROWS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<i64>,
    },
    /// Answer to `why`.
    Why {
        /// The facts.
        why: Box<crate::history::Why>,
    },
    /// Answer to `config_changes`.
    ConfigChanges {
        /// The changes, oldest first.
        changes: Vec<crate::history::ConfigChangeRow>,
    },
    /// Answer to `stats`.
    Stats {
        /// One per service.
        stats: Vec<Stats>,
        /// More lines of this reply follow.
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    /// The request failed.
    Error {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, in one sentence.
        message: String,
    },
}

/// The most rows one `history` or `audit` reply carries; a request for more (or for all) gets
/// these and a `cursor` to continue from.
pub const MAX_ROWS: usize = 5000;

/// A reply line holds at most about this many bytes of list items; longer lists go out as
/// several lines with the same id, all but the last marked `more`.
pub const PAGE_BYTES: usize = 256 * 1024;

/// The longest `origin` a `hello` may carry, in bytes.
pub const MAX_ORIGIN: usize = 128;

/// Checks a `hello`'s `origin` where it enters the controller: at most [`MAX_ORIGIN`] bytes,
/// printable ASCII only (it is shown in `upkctl audit` and stored as given); the error is one
/// sentence.
pub fn check_origin(origin: &str) -> Result<(), String> {
    if origin.len() > MAX_ORIGIN {
        return Err(format!(
            "the hello's origin is {} bytes long; at most {MAX_ORIGIN} are allowed",
            origin.len()
        ));
    }
    if let Some(b) = origin.bytes().find(|b| !(b' '..=b'~').contains(b)) {
        return Err(format!(
            "the hello's origin holds the byte {b:#04x}; only printable ASCII is allowed"
        ));
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ClientReply {
    /// Whether more lines of the same reply (the same request id) follow this one. A list
    /// reply (`services`, `history`, `audit`, `stats`) longer than [`PAGE_BYTES`] is split
    /// into several lines so that no line comes near the protocol's line limit; the client
    /// appends their lists in order.
    pub fn more(&self) -> bool {
        match self {
            ClientReply::Services { more, .. }
            | ClientReply::History { more, .. }
            | ClientReply::Audit { more, .. }
            | ClientReply::Stats { more, .. } => *more,
            _ => false,
        }
    }

    /// Appends the list of `next`, a later line of the same reply, to this one's, and takes
    /// its `more` and `cursor`. False (and nothing changed) when `next` is another kind.
    pub fn absorb(&mut self, next: ClientReply) -> bool {
        match (self, next) {
            (
                ClientReply::Services { services, more },
                ClientReply::Services {
                    services: n,
                    more: m,
                },
            ) => {
                services.extend(n);
                *more = m;
            }
            (
                ClientReply::History {
                    events,
                    more,
                    cursor,
                },
                ClientReply::History {
                    events: n,
                    more: m,
                    cursor: c,
                },
            ) => {
                events.extend(n);
                (*more, *cursor) = (m, c);
            }
            (
                ClientReply::Audit {
                    commands,
                    more,
                    cursor,
                },
                ClientReply::Audit {
                    commands: n,
                    more: m,
                    cursor: c,
                },
            ) => {
                commands.extend(n);
                (*more, *cursor) = (m, c);
            }
            (ClientReply::Stats { stats, more }, ClientReply::Stats { stats: n, more: m }) => {
                stats.extend(n);
                *more = m;
            }
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{decode, encode, Envelope};

    #[test]
    fn the_desired_state_of_a_summary_is_the_same_word_on_the_wire() {
        for (want, word) in [(Want::Up, "up"), (Want::Down, "down"), (Want::Once, "once")] {
            let line =
                format!(r#"{{"service":"web","file":"f","linked":true,"desired":"{word}"}}"#);
            let s: ServiceSummary = serde_json::from_str(&line).expect("parse");
            assert_eq!(s.desired, Some(want));
            let back = serde_json::to_value(&s).expect("encode");
            assert_eq!(back["desired"], word);
        }
        let old: ServiceSummary =
            serde_json::from_str(r#"{"service":"web","file":"f","linked":false}"#).expect("parse");
        assert_eq!(old.desired, None, "a controller that sends none");
    }

    #[test]
    fn a_hello_without_origin_reads_as_before_and_one_with_it_round_trips() {
        let old: Envelope<ClientRequest> =
            decode(br#"{"type":"hello","version":1}"#).expect("parse");
        assert_eq!(
            old.body,
            ClientRequest::Hello {
                version: 1,
                origin: None
            }
        );
        assert_eq!(
            String::from_utf8_lossy(&encode(&old)),
            "{\"type\":\"hello\",\"version\":1}\n",
            "no origin, no key: an old controller reads it"
        );
        let with: Envelope<ClientRequest> =
            decode(br#"{"type":"hello","version":1,"origin":"ssh 10.0.0.1:40404"}"#)
                .expect("parse");
        let again: Envelope<ClientRequest> = decode(encode(&with).trim_ascii_end()).expect("again");
        assert_eq!(again.body, with.body);
    }

    #[test]
    fn an_origin_is_short_printable_ascii() {
        assert_eq!(check_origin("ssh 127.0.0.1:40404"), Ok(()));
        assert_eq!(check_origin(""), Ok(()));
        assert_eq!(check_origin(&"x".repeat(MAX_ORIGIN)), Ok(()));
        let long = check_origin(&"x".repeat(MAX_ORIGIN + 1)).expect_err("too long");
        assert!(long.contains("129 bytes"), "{long}");
        for bad in ["a\nb", "tab\there", "caf\u{e9}", "\u{7f}"] {
            let e = check_origin(bad).expect_err(bad);
            assert!(e.contains("printable ASCII"), "{e}");
        }
    }

    #[test]
    fn requests_read_like_the_docs() {
        let r: Envelope<ClientRequest> =
            decode(br#"{"type":"restart","id":7,"service":"api"}"#).expect("parse");
        assert_eq!(r.id, Some(7));
        assert!(r.body.is_control());
        assert_eq!(r.body.service(), Some("api"));
        let h: Envelope<ClientRequest> =
            decode(br#"{"type":"history","service":"api","kinds":["died"],"limit":5}"#)
                .expect("parse");
        match h.body {
            ClientRequest::History { filter } => {
                assert_eq!(filter.service.as_deref(), Some("api"));
                assert_eq!(filter.kinds, ["died"]);
                assert_eq!(filter.limit, Some(5));
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = encode(&Envelope {
            id: Some(1),
            body: ClientReply::Error {
                code: ErrorCode::NotFound,
                message: "no service \"x\"".into(),
            },
        });
        assert_eq!(
            String::from_utf8_lossy(&e),
            "{\"id\":1,\"type\":\"error\",\"code\":\"not_found\",\"message\":\"no service \\\"x\\\"\"}\n"
        );
    }
}
