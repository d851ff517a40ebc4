//! Phone home: the buddy dials the controller itself when records pile up unheard.
//!
//! When no controller is subscribed and the ring is 75% full, or the buddy is exiting with
//! records pending, the buddy connects to the controller's socket, says hello and sends every
//! held record; the connection then counts as a subscribed controller. A failed dial is
//! retried every [`RETRY`] ([`RETRY_EXITING`] while exiting) until `ReconnectRetries` tries
//! are used up (negative: for ever); a controller that subscribes renews them.

use crate::buddy::Buddy;
use crate::conn::Conn;
use crate::logs::BuddyLog;
use crate::ring::Ring;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use upk_core::proto::{self, BuddyReply, Envelope, Role};

/// Pause between phone-home attempts (shorter while exiting).
pub const RETRY: Duration = Duration::from_secs(1);
/// Pause between attempts while the buddy exits.
pub const RETRY_EXITING: Duration = Duration::from_millis(100);

/// Phone-home bookkeeping.
pub struct PhoneHome {
    tries_left: i64,
    next_try: Option<Instant>,
}

impl PhoneHome {
    /// A fresh set of `retries` tries.
    pub fn new(retries: i64) -> PhoneHome {
        PhoneHome {
            tries_left: retries,
            next_try: None,
        }
    }

    /// Every try is used up.
    pub fn gave_up(&self) -> bool {
        self.tries_left == 0
    }

    /// The records need dialling home: there are some, no controller listens, and the ring
    /// is nearly full or the buddy exits.
    pub fn needed(&self, ring: &Ring, listening: bool, exiting: bool) -> bool {
        !ring.is_empty() && !listening && (ring.nearly_full() || exiting) && self.tries_left != 0
    }

    /// When to try next, if a try waits.
    pub fn next_try(&self) -> Option<Instant> {
        self.next_try
    }

    /// Dials `socket` unless the next try is not due; on success the new connection (token
    /// `token`) carries the hello and the backlog, and the tries are renewed with `retries`.
    #[allow(clippy::too_many_arguments)]
    pub fn dial(
        &mut self,
        now: Instant,
        socket: &Path,
        token: u64,
        hello: BuddyReply,
        ring: &Ring,
        exiting: bool,
        retries: i64,
        log: &mut BuddyLog,
    ) -> Option<Conn> {
        if self.next_try.is_some_and(|t| t > now) {
            return None;
        }
        match UnixStream::connect(socket) {
            Ok(stream) => {
                let mut c = match Conn::new(token, stream, (0, 0), true) {
                    Ok(c) => c,
                    Err(e) => {
                        log.line(&format!("phone home: {e}"));
                        return None;
                    }
                };
                c.role = Role::Controller;
                c.subscribed = true;
                *self = PhoneHome::new(retries);
                let mut bytes = proto::encode(&Envelope {
                    id: None,
                    body: hello,
                });
                for r in ring.after(0) {
                    bytes.extend(proto::encode(&Envelope {
                        id: None,
                        body: BuddyReply::Event { record: r.clone() },
                    }));
                }
                log.line(&format!(
                    "phoned home to {}: {} records",
                    socket.display(),
                    ring.len()
                ));
                c.send(&bytes).is_ok().then_some(c)
            }
            Err(e) => {
                if self.tries_left > 0 {
                    self.tries_left -= 1;
                }
                let pause = if exiting { RETRY_EXITING } else { RETRY };
                self.next_try = Some(now + pause);
                if self.tries_left == 0 {
                    log.line(&format!(
                        "cannot reach the controller at {} ({e}); giving up with {} records pending",
                        socket.display(),
                        ring.len()
                    ));
                }
                None
            }
        }
    }
}

/// The loop's side: when to dial, and the connection it adds.
impl Buddy {
    pub(crate) fn must_phone_home(&self) -> bool {
        let listening = self.peers.controller_listening();
        let exiting = self.exit_by.is_some();
        self.phone.needed(&self.records.ring, listening, exiting)
    }

    /// Dials the controller when the ring is 75% full (or the buddy exits) and none listens.
    pub(crate) fn phone_home(&mut self, now: Instant) {
        if !self.must_phone_home() || self.phone.next_try().is_some_and(|t| t > now) {
            return;
        }
        let token = self.peers.token();
        let (hello, exiting) = (self.hello(), self.exit_by.is_some());
        let socket = self.settings.controller_socket.clone();
        let retries = self.settings.service.reconnect_retries;
        let ring = &self.records.ring;
        let log = &mut self.log;
        let dialled = self
            .phone
            .dial(now, &socket, token, hello, ring, exiting, retries, log);
        if let Some(c) = dialled {
            self.peers.push(c);
        }
    }
}
