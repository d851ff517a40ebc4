//! What the buddy answers: one function per request of `docs/protocol.md`.
//!
//! `Buddy::apply` takes the [`Intent`]s the peers produced, in order, and carries each out:
//! commands become machine inputs (through `Buddy::drive`), actions and reloads become
//! action runs whose result is answered when they end, and the rest (hello, status, events,
//! subscribe, ack, signal) is answered at once. A relay is accepted only from a peer that said
//! hello as the controller, and carries the cause of the client behind it.

use crate::buddy::Buddy;
use crate::machine::{After, Command, Input, State};
use crate::peers::{encode, Intent};
use crate::phone::PhoneHome;
use nix::sys::signal;
use nix::unistd::Pid;
use upk_core::event::EventKind;
use upk_core::proto::{self, BuddyReply, BuddyRequest, Role, PROTOCOL_VERSION};

impl Buddy {
    /// Carries out one intent of a peer.
    pub(crate) fn apply(&mut self, intent: Intent) {
        match intent {
            Intent::Request {
                token,
                id,
                body,
                cause,
            } => {
                // An earlier request of the same read may have closed the peer.
                if self.peers.get_mut(token).is_some() {
                    self.on_request(token, id, body, cause);
                }
            }
            Intent::Closed { token } => {
                let owed = self.children.owes(token);
                self.peers.close_if_done(token, owed);
            }
        }
    }

    /// The buddy's hello, as sent to a peer and by phone home.
    pub(crate) fn hello(&self) -> BuddyReply {
        BuddyReply::Hello {
            version: PROTOCOL_VERSION,
            service: self.settings.service.id.to_string(),
            buddy_pid: std::process::id() as i32,
            incarnation: self.records.incarnation.clone(),
        }
    }

    fn ok(&mut self, token: u64, id: Option<u64>, message: Option<String>) {
        let status = self.status();
        self.peers
            .reply(token, id, BuddyReply::Ok { status, message });
    }

    fn error(&mut self, token: u64, id: Option<u64>, message: String) {
        self.peers.reply(token, id, BuddyReply::Error { message });
    }

    fn on_request(&mut self, token: u64, id: Option<u64>, body: BuddyRequest, cause: String) {
        match body {
            BuddyRequest::Hello { version, role } => {
                if version > PROTOCOL_VERSION {
                    let msg = format!(
                        "protocol version {version} is newer than this buddy's {PROTOCOL_VERSION}"
                    );
                    return self.peers.refuse(token, id, msg);
                }
                if let Some(c) = self.peers.get_mut(token) {
                    c.role = role;
                }
                let hello = self.hello();
                self.peers.reply(token, id, hello);
            }
            BuddyRequest::Status => self.ok(token, id, None),
            BuddyRequest::Start => self.command(token, id, Command::Start, cause),
            BuddyRequest::Stop => self.command(token, id, Command::Stop, cause),
            BuddyRequest::Restart => self.command(token, id, Command::Restart, cause),
            BuddyRequest::Once => self.command(token, id, Command::Once, cause),
            BuddyRequest::Reload => match self.machine.state().pid() {
                Some(pid) => self.action(token, id, "reload", "reload", Some(pid)),
                None => self.error(token, id, not_running("reload")),
            },
            BuddyRequest::Signal { signal, group } => self.signal(token, id, signal, group, cause),
            BuddyRequest::Action { name } => self.custom_action(token, id, &name),
            BuddyRequest::Events { after } => {
                let records = self.records.ring.after(after).cloned().collect();
                self.peers.reply(token, id, BuddyReply::Records { records });
            }
            BuddyRequest::Subscribe => self.subscribe(token, id),
            BuddyRequest::Ack { seq } => {
                self.records.ring.ack(seq);
                self.write_status();
            }
            BuddyRequest::Shutdown => {
                self.terminate(&cause);
                self.ok(token, id, None);
            }
            BuddyRequest::Relay { cause, request } => {
                let from_controller = self
                    .peers
                    .get_mut(token)
                    .is_some_and(|c| c.role == Role::Controller);
                if !from_controller {
                    let msg =
                        "relay is accepted only from the controller (hello with role controller)";
                    return self.peers.refuse(token, id, msg.into());
                }
                if matches!(*request, BuddyRequest::Relay { .. }) {
                    return self
                        .peers
                        .refuse(token, id, "a relay cannot hold a relay".into());
                }
                self.on_request(token, id, *request, cause);
            }
        }
    }

    fn subscribe(&mut self, token: u64, id: Option<u64>) {
        self.ok(token, id, None);
        let backlog: Vec<u8> = self
            .records
            .ring
            .after(0)
            .flat_map(|r| encode(None, BuddyReply::Event { record: r.clone() }))
            .collect();
        let Some(c) = self.peers.get_mut(token) else {
            return;
        };
        c.subscribed = true;
        if c.role == Role::Controller {
            self.phone = PhoneHome::new(self.settings.service.reconnect_retries);
        }
        self.peers.send(token, &backlog);
    }

    /// Stops the service and exits once; a second request changes nothing.
    pub(crate) fn terminate(&mut self, cause: &str) {
        if self.exit_by.is_none() && !self.exit_pending() {
            self.log.line(&format!(
                "terminating ({cause}): stopping the service first"
            ));
            self.drive(Input::Terminate);
        }
    }

    /// A stop is under way that ends with the buddy's exit.
    fn exit_pending(&self) -> bool {
        matches!(
            self.machine.state(),
            State::Stopping {
                then: After::Exit,
                ..
            }
        )
    }

    fn command(&mut self, token: u64, id: Option<u64>, cmd: Command, cause: String) {
        if self.exit_by.is_some() || self.exit_pending() {
            return self.error(token, id, "the buddy is exiting".into());
        }
        let before = (self.machine.state().name(), self.machine.want());
        self.drive(Input::Command(cmd, cause));
        let after = (self.machine.state().name(), self.machine.want());
        let message = (before == after).then(|| format!("already {}", after.0.as_str()));
        self.ok(token, id, message);
    }

    /// Runs an action script whose result is answered to `token` when it ends.
    fn action(&mut self, token: u64, id: Option<u64>, file: &str, name: &str, pid: Option<i32>) {
        match self.run_action(file, name, pid, Some((token, id))) {
            // Ended at once (a signal sent without the script): its record is in the status.
            Ok(None) => self.write_status(),
            Ok(Some(input)) => self.drive(input),
            Err(message) => self.error(token, id, message),
        }
    }

    fn signal(
        &mut self,
        token: u64,
        id: Option<u64>,
        spec: proto::SignalSpec,
        group: bool,
        cause: String,
    ) {
        let sig = match spec.resolve() {
            Ok(s) => s,
            Err(message) => return self.error(token, id, message),
        };
        // Never signal without a live service: kill(0) or kill(-1) would hit the buddy's own
        // group or everything the buddy may signal.
        let Some(pid) = self.machine.state().pid().filter(|&p| p > 1) else {
            return self.error(token, id, not_running("signal"));
        };
        let target = if group { -pid } else { pid };
        match signal::kill(Pid::from_raw(target), sig) {
            Ok(()) => {
                let kind = EventKind::Signaled {
                    signal: sig as i32,
                    group,
                };
                self.note(Some(pid), &cause, kind);
                self.write_status();
                self.ok(token, id, None);
            }
            Err(e) => self.error(token, id, format!("kill {}: {e}", sig.as_str())),
        }
    }

    fn custom_action(&mut self, token: u64, id: Option<u64>, name: &str) {
        let actions = &self.settings.service.custom_actions;
        let index = match name.parse::<usize>() {
            Ok(n) if (1..=actions.len()).contains(&n) => Some(n - 1),
            Ok(_) => None,
            Err(_) => actions.iter().position(|a| a.name == name),
        };
        let Some(index) = index else {
            let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
            let message = format!("no custom action {name:?} (known: {})", known.join(", "));
            return self.error(token, id, message);
        };
        let action = actions[index].name.clone();
        let file = upk_core::rundir::action_number(index + 1);
        let pid = self.machine.state().pid();
        self.action(token, id, &file, &action, pid);
    }
}

fn not_running(what: &str) -> String {
    format!("cannot {what}: the service is not running")
}
