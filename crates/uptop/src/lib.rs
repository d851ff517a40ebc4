//! uptop: the live view of an upkeeper controller.
//!
//! # Theory of operation
//!
//! uptop shows one row per configured service: its state against the desired one, pid,
//! uptime, automatic restarts of the last hour, how its last run ended. It learns everything
//! through libupkeeper, and it never polls: a connection thread ([`conn`]) subscribes to the
//! controller's events and, after each burst of events, asks for the service list again. The
//! view's thread sleeps on one channel that carries three kinds of [`Msg`]: keys from the
//! input thread, updates from the connection, and signals from the signal thread. It wakes on
//! a message, or once a second to age the uptimes, and redraws.
//!
//! The state is pure and unit-tested: [`model`] (what is known of the controller and its
//! services, and the highlight rule), [`app`] (sorting, filtering, selection, confirmation),
//! [`input`] (keys to intents). [`view`] draws it; `terminal` takes the terminal and gives it
//! back on any exit, panics included.
//!
//! When the controller goes away the header says so, the last known rows stay (dimmed), and
//! the connection retries with a backoff; the new subscription resumes after the last event
//! seen, so no event is missed. See `docs/uptop.md` for the keys and columns.

pub mod app;
pub mod conn;
pub mod input;
pub mod manual;
pub mod model;
mod terminal;
pub mod text;
pub mod view;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use ratatui::crossterm::event::Event;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

/// uptop's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "uptop",
    version,
    about = "The live view of an upkeeper controller: every service, its state against the \
             desired one, restarts, history; start, stop, restart and reload from the keyboard"
)]
pub struct Args {
    /// The controller file whose socket to use (default: the one upkctl would use).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The controller's socket (overrides --config and UPKEEPER_SOCKET).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the man page, uptop(1), and exit.
    #[arg(long, hide = true)]
    pub man: bool,
}

/// What wakes the view's thread.
#[derive(Debug)]
pub enum Msg {
    /// A key, a resize.
    Input(Event),
    /// The terminal could not be read.
    InputFailed(String),
    /// News from the connection.
    Update(model::Update),
    /// SIGTERM, SIGINT, SIGHUP or SIGQUIT.
    Signal(Signal),
}

/// Runs uptop until `q` or a signal; the exit code (0 after `q`, 128 + the signal number
/// after a signal).
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let socket = match &args.socket {
        Some(socket) => socket.clone(),
        None => libupkeeper::socket_path(args.config.as_deref())?,
    };
    anyhow::ensure!(
        std::io::stdout().is_terminal(),
        "uptop needs a terminal (use `upkctl status` or `upkctl watch` in scripts)"
    );
    // Before any thread exists, so that every thread inherits the mask.
    let signals = quit_signals();
    signals.thread_block().context("blocking signals")?;
    let (tx, rx) = mpsc::channel();
    spawn_signal_reader(signals, tx.clone())?;
    let connection = conn::spawn(socket.clone(), tx.clone());
    let mut screen = terminal::Screen::take().context("taking the terminal")?;
    spawn_input_reader(tx)?;

    let mut app = app::App {
        socket: socket.display().to_string(),
        ..app::App::default()
    };
    loop {
        let now = conn::now_us();
        screen.terminal.draw(|f| view::draw(f, &app, now))?;
        // Wake on a message, or at the next whole second to age the uptimes.
        let tick = Duration::from_micros(1_000_000 - now.rem_euclid(1_000_000) as u64);
        let first = match rx.recv_timeout(tick) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("every input thread ended"),
        };
        // Everything already queued before one redraw.
        for msg in std::iter::once(first).chain(rx.try_iter()) {
            let now = conn::now_us();
            let effect = match msg {
                Msg::Input(Event::Key(key)) => {
                    input::intent(&app.mode, key).and_then(|intent| app.handle(intent, now))
                }
                Msg::Input(_) => None,
                Msg::InputFailed(e) => anyhow::bail!("cannot read the terminal: {e}"),
                Msg::Update(update) => {
                    app.update(update, now);
                    None
                }
                Msg::Signal(sig) => return Ok(ExitCode::from(128 + sig as u8)),
            };
            match effect {
                Some(app::Effect::Quit) => return Ok(ExitCode::SUCCESS),
                Some(app::Effect::Run { verb, service }) => {
                    let _ = connection.send(conn::Request::Run { verb, service });
                }
                Some(app::Effect::Fetch(service)) => {
                    let _ = connection.send(conn::Request::Detail(service));
                }
                None => {}
            }
        }
    }
}

fn quit_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(sig);
    }
    set
}

fn spawn_signal_reader(signals: SigSet, tx: Sender<Msg>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                let _ = tx.send(Msg::Signal(sig));
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

fn spawn_input_reader(tx: Sender<Msg>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || loop {
            let msg = match ratatui::crossterm::event::read() {
                Ok(event) => Msg::Input(event),
                Err(e) => Msg::InputFailed(e.to_string()),
            };
            let failed = matches!(msg, Msg::InputFailed(_));
            if tx.send(msg).is_err() || failed {
                return;
            }
        })
        .context("spawning the input thread")?;
    Ok(())
}
