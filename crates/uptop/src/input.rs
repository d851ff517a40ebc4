//! Keys to intents. One table per mode, so a letter typed into the filter is text, never a
//! command, and only `y` confirms. Ctrl-C quits from anywhere (the terminal is in raw mode, so
//! it arrives as a key, not as SIGINT). Pure: [`intent`] maps a crossterm key event; the view's
//! state changes in `app.rs`.

use crate::app::Mode;
use crate::model::Verb;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Leave uptop.
    Quit,
    /// Move the selection by this many rows (negative: up).
    Move(i32),
    /// Select the first row.
    Top,
    /// Select the last row.
    Bottom,
    /// Sort by the next column.
    NextSort,
    /// Reverse the sort order.
    InvertSort,
    /// Start typing a filter.
    StartFilter,
    /// A character of the filter.
    FilterChar(char),
    /// Delete the filter's last character.
    FilterBackspace,
    /// Keep the filter and go back to the table.
    FilterAccept,
    /// Drop the filter and go back to the table.
    FilterCancel,
    /// Ask to do this to the selected service.
    Ask(Verb),
    /// Yes, do it.
    Confirm,
    /// No, don't.
    Cancel,
    /// Open or close the detail pane of the selected service.
    ToggleDetail,
    /// Close the detail pane, or else clear the filter.
    Back,
    /// Show or hide the key help.
    ToggleHelp,
}

/// The intent of `key` in `mode`, if it has one.
pub fn intent(mode: &Mode, key: KeyEvent) -> Option<Intent> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') => Some(Intent::Quit),
            _ => None,
        };
    }
    match mode {
        Mode::Table => table(key.code),
        Mode::Filter => filter(key.code),
        Mode::Confirm { .. } => match key.code {
            KeyCode::Char('y' | 'Y') => Some(Intent::Confirm),
            _ => Some(Intent::Cancel),
        },
        Mode::Help => Some(Intent::ToggleHelp),
    }
}

fn table(code: KeyCode) -> Option<Intent> {
    Some(match code {
        KeyCode::Char('q') => Intent::Quit,
        KeyCode::Up | KeyCode::Char('k') => Intent::Move(-1),
        KeyCode::Down | KeyCode::Char('j') => Intent::Move(1),
        KeyCode::PageUp => Intent::Move(-10),
        KeyCode::PageDown => Intent::Move(10),
        KeyCode::Home | KeyCode::Char('g') => Intent::Top,
        KeyCode::End | KeyCode::Char('G') => Intent::Bottom,
        KeyCode::Char('s') => Intent::NextSort,
        KeyCode::Char('I') => Intent::InvertSort,
        KeyCode::Char('/') => Intent::StartFilter,
        KeyCode::Char('S') => Intent::Ask(Verb::Start),
        KeyCode::Char('T') => Intent::Ask(Verb::Stop),
        KeyCode::Char('R') => Intent::Ask(Verb::Restart),
        KeyCode::Char('L') => Intent::Ask(Verb::Reload),
        KeyCode::Enter | KeyCode::Char('d') => Intent::ToggleDetail,
        KeyCode::Esc => Intent::Back,
        KeyCode::Char('?') => Intent::ToggleHelp,
        _ => return None,
    })
}

fn filter(code: KeyCode) -> Option<Intent> {
    Some(match code {
        KeyCode::Enter => Intent::FilterAccept,
        KeyCode::Esc => Intent::FilterCancel,
        KeyCode::Backspace => Intent::FilterBackspace,
        KeyCode::Char(c) => Intent::FilterChar(c),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn letters_are_commands_in_the_table_and_text_in_the_filter() {
        let ch = |c| key(KeyCode::Char(c));
        assert_eq!(intent(&Mode::Table, ch('q')), Some(Intent::Quit));
        assert_eq!(
            intent(&Mode::Filter, ch('q')),
            Some(Intent::FilterChar('q'))
        );
        assert_eq!(
            intent(&Mode::Table, ch('R')),
            Some(Intent::Ask(Verb::Restart))
        );
        assert_eq!(
            intent(&Mode::Filter, ch('R')),
            Some(Intent::FilterChar('R'))
        );
        assert_eq!(intent(&Mode::Table, ch('x')), None);
        assert_eq!(
            intent(&Mode::Filter, key(KeyCode::Esc)),
            Some(Intent::FilterCancel)
        );
    }

    #[test]
    fn only_y_confirms_and_ctrl_c_always_quits() {
        let confirm = Mode::Confirm {
            verb: Verb::Stop,
            service: "web".into(),
        };
        let ch = |c| key(KeyCode::Char(c));
        assert_eq!(intent(&confirm, ch('y')), Some(Intent::Confirm));
        assert_eq!(intent(&confirm, ch('n')), Some(Intent::Cancel));
        assert_eq!(intent(&confirm, ch('q')), Some(Intent::Cancel));
        assert_eq!(intent(&confirm, key(KeyCode::Enter)), Some(Intent::Cancel));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        for mode in [Mode::Table, Mode::Filter, Mode::Help, confirm] {
            assert_eq!(intent(&mode, ctrl_c), Some(Intent::Quit), "{mode:?}");
        }
    }
}
