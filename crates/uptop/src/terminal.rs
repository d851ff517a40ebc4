//! The terminal: raw mode and the alternate screen while uptop runs, and the operator's
//! terminal given back however uptop ends.
//!
//! [`Screen`] restores on drop (a normal exit or an error unwinding out of the loop). A panic
//! hook restores first and then prints the panic, so the message lands on a usable terminal
//! instead of the wiped alternate screen; since a panic in any thread leaves the view
//! unusable, the hook then ends the process (exit code 101, as a panic would). SIGTERM, SIGINT,
//! SIGHUP and SIGQUIT are blocked in every thread and read by a thread of their own
//! (`lib.rs`), so they end the loop like `q` does and the drop restores the terminal.

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::Terminal;
use std::io::Stdout;

/// The terminal in uptop's hands; given back when dropped.
pub struct Screen {
    /// What ratatui draws on.
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    /// Takes the terminal: panic hook, raw mode, alternate screen, hidden cursor.
    pub fn take() -> std::io::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
            std::process::exit(101);
        }));
        let taken = terminal::enable_raw_mode().and_then(|()| {
            execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide
            )?;
            Terminal::new(CrosstermBackend::new(std::io::stdout()))
        });
        match taken {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen, shows the cursor and ends raw mode; safe to call twice.
fn restore() {
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}
