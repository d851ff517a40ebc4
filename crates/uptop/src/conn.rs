//! The connection to the controller: one thread that keeps uptop subscribed, answers the
//! view's requests, and reconnects when the controller goes away.
//!
//! A session is two libupkeeper connections. The first subscribes to every service's events;
//! a reader thread owns it and forwards each event to the view as it arrives (nothing polls).
//! The second asks: the snapshot when a session starts, the service list again after events
//! (a burst of events is one `list`) and every two seconds (the services' CPU and memory; a
//! large fleet's less often, so that it costs the controller at most about 1%), and a
//! service's history and statistics for the detail pane. Commands get a connection and a thread each, because a control request is answered
//! only when the buddy has carried it out, and the view must not wait for that.
//!
//! When the subscription ends, the session is over: the view hears `Unreachable`, and the
//! thread reconnects with a backoff (0.1 s doubling to 2 s). The new subscription starts
//! `after` the last event id seen, so the controller replays whatever was stored meanwhile
//! and nothing is missed or seen twice.

use crate::model::{Update, Verb, HOUR_US};
use crate::Msg;
use libupkeeper::{Client, HistoryFilter, Outcome, Subscription};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the service list (with each service's usage) is asked for when no event comes.
const USAGE_REFRESH: Duration = Duration::from_secs(2);
/// The refresh waits at least this many times as long as the last `list` took (1,000
/// services: about 40 ms, so every 4 s; docs/benchmarks.md).
const REFRESH_SHARE: u32 = 100;
/// Bounds every query, so a controller that hangs is noticed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a command: a stop may take the service's KillTimeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Events per service in the detail pane.
const DETAIL_EVENTS: usize = 100;

/// What the view asks of the connection.
#[derive(Debug)]
pub enum Request {
    /// Fetch a service's history and statistics.
    Detail(String),
    /// Run a command.
    Run {
        /// The command.
        verb: Verb,
        /// Its service.
        service: String,
    },
    /// Events arrived: fetch the services again.
    Refresh,
    /// The subscription ended after the event with this id.
    Lost {
        /// The last event id seen.
        cursor: i64,
        /// Why it ended.
        error: String,
    },
}

/// Starts the connection thread; the view sends it requests through the returned sender.
pub fn spawn(socket: PathBuf, out: Sender<Msg>) -> Sender<Request> {
    let (tx, rx) = mpsc::channel();
    let to_self = tx.clone();
    std::thread::Builder::new()
        .name("connection".into())
        .spawn(move || {
            Connection {
                socket,
                out,
                to_self,
            }
            .run(rx)
        })
        .expect("spawn the connection thread");
    tx
}

struct Connection {
    socket: PathBuf,
    out: Sender<Msg>,
    to_self: Sender<Request>,
}

impl Connection {
    fn tell(&self, update: Update) {
        let _ = self.out.send(Msg::Update(update));
    }

    fn run(self, requests: Receiver<Request>) {
        let mut cursor = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.begin(cursor) {
                Ok(query) => {
                    backoff = MIN_BACKOFF;
                    match self.serve(query, &requests) {
                        Some((last, error)) => {
                            cursor = Some(last);
                            self.tell(Update::Unreachable(error));
                        }
                        None => return, // the view is gone
                    }
                }
                Err(e) => {
                    self.tell(Update::Unreachable(e.to_string()));
                    if !self.wait(&requests, backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Subscribes after `cursor` (or from now), sends the snapshot, and starts the reader.
    /// Returns the connection for queries.
    fn begin(&self, cursor: Option<i64>) -> libupkeeper::Result<Client> {
        let events = Client::connect(&self.socket)?;
        let (pid, access) = (events.controller_pid(), events.access());
        let subscription = events.subscribe(&[], cursor)?;
        let mut query = connect(&self.socket, QUERY_TIMEOUT)?;
        let services = query.list()?;
        // Up to where the subscription starts: it delivers what comes after.
        let starts = query.history(&HistoryFilter {
            kinds: vec!["started".into()],
            since_us: Some(now_us() - HOUR_US),
            before_id: Some(subscription.cursor() + 1),
            ..HistoryFilter::default()
        })?;
        self.tell(Update::Connected {
            pid,
            access,
            services,
            starts,
        });
        let (out, to_self) = (self.out.clone(), self.to_self.clone());
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || read_events(subscription, out, to_self))
            .map_err(libupkeeper::Error::Io)?;
        Ok(query)
    }

    /// Answers requests until the subscription ends (its cursor and why) or the view is
    /// gone (`None`).
    fn serve(&self, mut query: Client, requests: &Receiver<Request>) -> Option<(i64, String)> {
        // How long the last `list` took: the refresh without events waits at least
        // REFRESH_SHARE times that, so that it never costs the controller more than about 1%.
        let mut took = Duration::ZERO;
        loop {
            // Without events the list is still asked for every USAGE_REFRESH (or longer for
            // a large fleet), for the services' CPU and memory.
            let every = USAGE_REFRESH.max(took.saturating_mul(REFRESH_SHARE));
            let first = match requests.recv_timeout(every) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => Request::Refresh,
                Err(RecvTimeoutError::Disconnected) => return None,
            };
            let mut refresh = false;
            // Everything already queued is handled together: many events, one `list`.
            for request in std::iter::once(first).chain(requests.try_iter()) {
                match request {
                    Request::Refresh => refresh = true,
                    Request::Detail(service) => self.detail(&mut query, service),
                    Request::Run { verb, service } => self.run_command(verb, service),
                    Request::Lost { cursor, error } => return Some((cursor, error)),
                }
            }
            if refresh {
                let asked = std::time::Instant::now();
                let answer = query.list();
                took = asked.elapsed();
                match answer {
                    Ok(services) => self.tell(Update::Services(services)),
                    Err(e) => self.tell(Update::Failed(format!("list: {e}"))),
                }
            }
        }
    }

    /// Waits out a backoff while still answering the view; false when the view is gone.
    fn wait(&self, requests: &Receiver<Request>, pause: Duration) -> bool {
        let end = std::time::Instant::now() + pause;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match requests.recv_timeout(left) {
                // Fails at once with "cannot reach the controller", which is what to say.
                Ok(Request::Run { verb, service }) => self.run_command(verb, service),
                Ok(Request::Detail(service)) => {
                    self.tell(Update::Failed(format!(
                        "{service}: no history while the controller is unreachable"
                    )));
                }
                Ok(Request::Refresh | Request::Lost { .. }) => {}
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    fn detail(&self, query: &mut Client, service: String) {
        let filter = HistoryFilter {
            service: Some(service.clone()),
            newest_first: true,
            limit: Some(DETAIL_EVENTS),
            ..HistoryFilter::default()
        };
        let answer = query.history(&filter).and_then(|events| {
            let stats = query.stats(&[&service], None, None)?;
            Ok((events, stats.into_iter().next()))
        });
        match answer {
            Ok((events, stats)) => self.tell(Update::Detail {
                service,
                events,
                stats,
            }),
            Err(e) => self.tell(Update::Failed(format!("history of {service}: {e}"))),
        }
    }

    fn run_command(&self, verb: Verb, service: String) {
        let (socket, out) = (self.socket.clone(), self.out.clone());
        let spawned = std::thread::Builder::new()
            .name("command".into())
            .spawn(move || {
                let result = command(&socket, verb, &service);
                let _ = out.send(Msg::Update(Update::Done {
                    verb,
                    service,
                    result,
                }));
            });
        if let Err(e) = spawned {
            self.tell(Update::Failed(format!(
                "cannot start a command thread: {e}"
            )));
        }
    }
}

/// Forwards events to the view until the subscription ends, then says so to the connection.
fn read_events(mut events: Subscription, out: Sender<Msg>, connection: Sender<Request>) {
    let error = loop {
        match events.next_event() {
            Ok(event) => {
                if out.send(Msg::Update(Update::Event(event))).is_err() {
                    return;
                }
                let _ = connection.send(Request::Refresh);
            }
            Err(e) => break e.to_string(),
        }
    };
    let cursor = events.cursor();
    let _ = connection.send(Request::Lost { cursor, error });
}

fn connect(socket: &Path, timeout: Duration) -> libupkeeper::Result<Client> {
    let mut client = Client::connect(socket)?;
    client.set_timeout(Some(timeout))?;
    Ok(client)
}

/// Runs one command on its own connection; what came of it in a few words.
fn command(socket: &Path, verb: Verb, service: &str) -> Result<String, String> {
    let mut client = connect(socket, COMMAND_TIMEOUT).map_err(|e| e.to_string())?;
    let outcome = match verb {
        Verb::Start => client.start(service),
        Verb::Stop => client.stop(service),
        Verb::Restart => client.restart(service),
        Verb::Reload => client.reload(service),
    };
    match outcome.map_err(|e| e.to_string())? {
        Outcome::Done {
            message: Some(m), ..
        } => Ok(m),
        Outcome::Done {
            status: Some(s), ..
        } => Ok(format!("done, now {}", s.state.as_str())),
        Outcome::Done { .. } => Ok("done".into()),
        Outcome::ActionDone { exit, .. } => Ok(exit.to_string()),
        Outcome::Queued { .. } => Ok("queued".into()),
    }
}

/// Wall-clock microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
