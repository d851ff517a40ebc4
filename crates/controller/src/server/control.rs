//! Control requests: relayed to the service's buddy, answered when the buddy has answered
//! and the desired state it leaves is stored, audited either way. What the loop must do for
//! them (send the relay, store the desired state, unconfigure) is returned as [`Intent`]s.

use super::{not_found, Peer, Pending, Server, NOBODY};
use crate::fleet::Fleet;
use crate::store::CommandEntry;
use std::os::unix::net::UnixStream;
use upk_core::client::{ClientReply, ClientRequest, ErrorCode};
use upk_core::proto::{BuddyReply, BuddyRequest, LineBuf};

/// Control requests relayed to one service's buddy and not answered yet, at most; more are
/// answered `unavailable`.
pub const MAX_IN_FLIGHT_PER_SERVICE: usize = 64;

/// Control requests relayed and not answered yet, for all services together, at most.
pub const MAX_IN_FLIGHT: usize = 4096;

/// What the server needs done by the rest of the controller: the loop carries it out.
#[derive(Debug)]
pub enum Intent {
    /// Send `request` (a relay) with id `rid` to the buddy of `service`, linking now if need
    /// be; if it cannot be sent, tell [`Server::unreachable`].
    Relay {
        /// The id its answer comes back with.
        rid: u64,
        /// The service.
        service: String,
        /// The relayed request.
        request: BuddyRequest,
    },
    /// A buddy phoned home on this connection: an event link from now on. `hello` is its
    /// first line and `rest` what was read after it.
    Link {
        /// The connection.
        stream: UnixStream,
        /// The `hello` line.
        hello: Vec<u8>,
        /// What followed it.
        rest: LineBuf,
    },
    /// A command took effect: record `want` as `service`'s desired state, and tell
    /// [`Server::stored`] with `rid` once it is stored.
    SetWant {
        /// The relayed request whose answer waits.
        rid: u64,
        /// The service.
        service: String,
        /// What its buddy now wants.
        want: upk_core::status::Want,
        /// The command's audit row, to store in the same transaction.
        audit: CommandEntry,
    },
    /// An operator unconfigured `service`: forget it until its definition changes.
    Unconfigure {
        /// The service.
        service: String,
    },
}

impl Server {
    /// Relays a control request to the buddy; the reply comes with its answer.
    pub(super) fn control(
        &mut self,
        token: u64,
        id: Option<u64>,
        body: &ClientRequest,
        peer: &Peer,
        fleet: &Fleet,
    ) -> Result<(), (ErrorCode, String)> {
        let (inner, queued) = match body {
            ClientRequest::Queue { request } => match **request {
                ClientRequest::Queue { .. } => return Err(not_queueable()),
                ref inner if inner.is_control() => (inner, true),
                _ => return Err(not_queueable()),
            },
            body => (body, false),
        };
        let service = body.service().unwrap_or_default().to_owned();
        let Some(member) = fleet.members.get(&service) else {
            return Err(not_found(&service, fleet));
        };
        let request = match inner.clone() {
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
        // Bounded: a buddy that does not answer (stopped, wedged) must not let commands pile
        // up here, and `--no-block` callers do not wait for them to be answered.
        let (mine, all) = (
            self.pending
                .values()
                .filter(|p| p.service == service)
                .count(),
            self.pending.len(),
        );
        if mine >= MAX_IN_FLIGHT_PER_SERVICE || all >= MAX_IN_FLIGHT {
            let (n, whose) = match mine >= MAX_IN_FLIGHT_PER_SERVICE {
                true => (mine, format!("{service}'s buddy has")),
                false => (all, "the buddies have".to_owned()),
            };
            return Err((
                ErrorCode::Unavailable,
                format!("{n} commands are in flight that {whose} not answered yet; try again once they are"),
            ));
        }
        let rid = self.token();
        let relay = BuddyRequest::Relay {
            cause: peer.cause(),
            request: Box::new(request),
        };
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
            origin: peer.origin.clone(),
        };
        let unconfigure = matches!(inner, ClientRequest::Unconfigure { .. });
        self.pending.insert(
            rid,
            Pending {
                client: token,
                id,
                service: service.clone(),
                entry,
                unconfigure,
                queued,
                answer: None,
            },
        );
        self.intents.push(Intent::Relay {
            rid,
            service,
            request: relay,
        });
        Ok(())
    }

    /// The relay of `rid` was sent to the buddy. A `queue`d command is answered `queued`
    /// now; its outcome is audited when the buddy answers, and told to nobody.
    pub fn relayed(&mut self, rid: u64) {
        let Some(p) = self.pending.get_mut(&rid).filter(|p| p.queued) else {
            return;
        };
        let (client, id) = (std::mem::replace(&mut p.client, NOBODY), p.id);
        let service = p.service.clone();
        self.send(client, id, ClientReply::Queued { service });
        self.flush(client);
    }

    /// The relay of `rid` could not be sent (no link to the buddy, or a broken one): the
    /// client is told to try again, and the command is audited as failed.
    pub fn unreachable(&mut self, rid: u64) {
        let Some(mut p) = self.pending.remove(&rid) else {
            return;
        };
        let message = format!(
            "the buddy of {} is not connected (it is being started); try again in a second",
            p.service
        );
        (p.entry.result, p.entry.ok) = (message.clone(), false);
        self.audit.push(p.entry);
        self.fail(p.client, p.id, ErrorCode::Unavailable, message);
        self.flush(p.client);
    }

    /// The desired state left by the command of `rid` is stored with the command's audit row
    /// (or could not be, which was said: the command was carried out all the same): its answer
    /// goes out now.
    pub fn stored(&mut self, rid: u64) {
        if self.pending.get(&rid).is_none_or(|p| p.answer.is_none()) {
            return;
        }
        if let Some(Pending {
            client,
            id,
            answer: Some(body),
            ..
        }) = self.pending.remove(&rid)
        {
            self.send(client, id, body);
            self.flush(client);
        }
    }

    /// A buddy answered a relayed request: answer the client and audit the command, after
    /// the loop stored the desired state it leaves ([`Intent::SetWant`]).
    pub fn answered(&mut self, rid: u64, reply: BuddyReply) -> Vec<Intent> {
        self.answer(rid, reply);
        std::mem::take(&mut self.intents)
    }

    fn answer(&mut self, rid: u64, reply: BuddyReply) {
        let Some(p) = self.pending.get(&rid) else {
            return;
        };
        if p.answer.is_some() {
            return; // answered already, waiting for the store
        }
        let service = p.service.clone();
        let (body, result, ok) = match reply {
            BuddyReply::Ok { status, message } => {
                let want = status.want;
                let result = format!(
                    "done: {} (want {}){}",
                    status.state.as_str(),
                    crate::store::want_str(want),
                    message
                        .as_deref()
                        .map(|m| format!("; {m}"))
                        .unwrap_or_default()
                );
                let body = ClientReply::Done {
                    service: service.clone(),
                    status: Some(status),
                    message,
                };
                if p.unconfigure {
                    self.intents.push(Intent::Unconfigure { service });
                } else {
                    // Answered once the wish is stored, with the command's audit row: see
                    // `stored`.
                    let Some(p) = self.pending.get_mut(&rid) else {
                        return;
                    };
                    let mut audit = p.entry.clone();
                    (audit.result, audit.ok) = (result, true);
                    p.answer = Some(body);
                    self.intents.push(Intent::SetWant {
                        rid,
                        service,
                        want,
                        audit,
                    });
                    return;
                }
                (body, result, true)
            }
            BuddyReply::ActionDone {
                action,
                exit,
                signal,
            } => {
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
                        signal,
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

    /// A relayed request failed: the client gets the buddy's sentence (unless it was only
    /// told `queued`).
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
        self.answers.push(super::Answer {
            client: p.client,
            id: p.id,
            body,
        });
    }

    /// The answers whose audit rows the loop is putting into a store batch now: to give back
    /// to [`Server::answer_audited`] once that batch is committed.
    pub fn take_answers(&mut self) -> Vec<super::Answer> {
        std::mem::take(&mut self.answers)
    }

    /// The batch holding these answers' audit rows was committed (or could not be, when the
    /// store cannot be written: the commands were carried out all the same, and the error is
    /// said on stderr): the clients get their answers.
    pub fn answer_audited(&mut self, answers: Vec<super::Answer>) {
        let mut clients = Vec::new();
        for a in answers {
            self.send(a.client, a.id, a.body);
            clients.push(a.client);
        }
        clients.dedup();
        for client in clients {
            self.flush(client);
        }
    }

    /// The link to `service`'s buddy is gone: its requests in flight fail.
    pub fn link_lost(&mut self, service: &str) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.service == service && p.answer.is_none())
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

fn not_queueable() -> (ErrorCode, String) {
    (
        ErrorCode::BadValue,
        "only a control request (start, stop, restart, reload, once, signal, action, \
         unconfigure) can be queued"
            .into(),
    )
}
