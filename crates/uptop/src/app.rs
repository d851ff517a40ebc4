//! The view's state: the fleet plus how the operator is looking at it (sort column and order,
//! filter, selected service, open pane, pending confirmation, last message), and what each
//! intent does to it.
//!
//! The selection is a service id, not a row number, so a row that moves (re-sorted, another
//! row filtered out or added) stays selected. A command never runs from a key alone: `S`, `T`,
//! `R`, `L` only ask, and the [`Effect::Run`] comes from the `y` that answers. Pure: effects
//! that need the controller are returned to the caller, which hands them to the connection.

use crate::input::Intent;
use crate::model::{summary_differs, Fleet, Update, Verb, HOUR_US, STATE_ORDER};
use libupkeeper::{ServiceSummary, Want};
use std::cmp::Ordering;

/// What the keys currently do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Moving around the table.
    Table,
    /// Typing a filter.
    Filter,
    /// Waiting for y/n before running a command.
    Confirm {
        /// The command.
        verb: Verb,
        /// Its service.
        service: String,
    },
    /// The key help is shown.
    Help,
}

/// The columns rows can be sorted by, in the order `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Service id.
    Service,
    /// Trouble first: failed, paused, backoff, stopping, stopped, running, unknown.
    State,
    /// up, once, down.
    Want,
    /// Main pid, none last.
    Pid,
    /// Shortest uptime first (most recently started), not running last.
    Uptime,
    /// Most automatic restarts in the last hour first.
    Restarts,
    /// How the last run ended, alphabetically.
    LastExit,
}

impl SortKey {
    /// The next column.
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Service => SortKey::State,
            SortKey::State => SortKey::Want,
            SortKey::Want => SortKey::Pid,
            SortKey::Pid => SortKey::Uptime,
            SortKey::Uptime => SortKey::Restarts,
            SortKey::Restarts => SortKey::LastExit,
            SortKey::LastExit => SortKey::Service,
        }
    }

    /// The column's name in the header.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Service => "service",
            SortKey::State => "state",
            SortKey::Want => "want",
            SortKey::Pid => "pid",
            SortKey::Uptime => "uptime",
            SortKey::Restarts => "restarts",
            SortKey::LastExit => "last exit",
        }
    }
}

/// What the caller must do after an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Leave.
    Quit,
    /// Send this command to the controller.
    Run {
        /// The command.
        verb: Verb,
        /// Its service.
        service: String,
    },
    /// Fetch this service's recent history for the detail pane.
    Fetch(String),
}

/// The whole state of the view.
#[derive(Debug, Clone)]
pub struct App {
    /// What is known of the controller and services.
    pub fleet: Fleet,
    /// Sort column.
    pub sort: SortKey,
    /// Sort order reversed.
    pub reversed: bool,
    /// Rows whose id or state contains this (case-insensitive).
    pub filter: String,
    /// What the keys do.
    pub mode: Mode,
    /// The selected service.
    pub selected: Option<String>,
    /// The service whose detail pane is open.
    pub detail: Option<String>,
    /// The last thing to tell the operator.
    pub message: Option<String>,
    /// The controller's socket, for the header.
    pub socket: String,
}

impl Default for App {
    fn default() -> Self {
        App {
            fleet: Fleet::default(),
            sort: SortKey::Service,
            reversed: false,
            filter: String::new(),
            mode: Mode::Table,
            selected: None,
            detail: None,
            message: None,
            socket: String::new(),
        }
    }
}

impl App {
    /// The rows to show at wall time `now_us`: filtered, then sorted (ties by id).
    pub fn rows(&self, now_us: i64) -> Vec<&ServiceSummary> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&ServiceSummary> = self
            .fleet
            .services()
            .iter()
            .filter(|s| needle.is_empty() || haystack(s).contains(&needle))
            .collect();
        rows.sort_by(|a, b| {
            let order = self.compare(a, b, now_us);
            let order = if self.reversed {
                order.reverse()
            } else {
                order
            };
            order.then_with(|| a.service.cmp(&b.service))
        });
        rows
    }

    fn compare(&self, a: &ServiceSummary, b: &ServiceSummary, now_us: i64) -> Ordering {
        let restarts = |s: &ServiceSummary| {
            let n = self.fleet.activity(&s.service);
            n.restarts_since(now_us - HOUR_US)
        };
        match self.sort {
            SortKey::Service => a.service.cmp(&b.service),
            SortKey::State => state_rank(a).cmp(&state_rank(b)),
            SortKey::Want => want_rank(a).cmp(&want_rank(b)),
            SortKey::Pid => last_if_none(pid(a), pid(b)),
            SortKey::Uptime => last_if_none(uptime_us(a, now_us), uptime_us(b, now_us)),
            SortKey::Restarts => restarts(b).cmp(&restarts(a)),
            SortKey::LastExit => last_exit(a).cmp(&last_exit(b)),
        }
    }

    /// The selected row's index in `rows` (the first row when the selected service is not
    /// shown), or `None` when there are no rows.
    pub fn selection(&self, rows: &[&ServiceSummary]) -> Option<usize> {
        let found = self
            .selected
            .as_deref()
            .and_then(|id| rows.iter().position(|s| s.service == id));
        found.or((!rows.is_empty()).then_some(0))
    }

    fn selected_id(&self, now_us: i64) -> Option<String> {
        let rows = self.rows(now_us);
        self.selection(&rows).map(|i| rows[i].service.clone())
    }

    /// Applies an update from the connection.
    pub fn update(&mut self, update: Update, now_us: i64) {
        match &update {
            Update::Done {
                verb,
                service,
                result,
            } => {
                self.message = Some(match result {
                    Ok(what) => format!("{} {service}: {what}", verb.as_str()),
                    Err(why) => format!("{} {service} failed: {why}", verb.as_str()),
                })
            }
            Update::Failed(why) => self.message = Some(why.clone()),
            _ => {}
        }
        self.fleet.apply(update, now_us);
    }

    /// Does what `intent` asks at wall time `now_us`.
    pub fn handle(&mut self, intent: Intent, now_us: i64) -> Option<Effect> {
        match intent {
            Intent::Quit => return Some(Effect::Quit),
            Intent::Move(by) => return self.move_by(by, now_us),
            Intent::Top => return self.move_by(i32::MIN, now_us),
            Intent::Bottom => return self.move_by(i32::MAX, now_us),
            Intent::NextSort => self.sort = self.sort.next(),
            Intent::InvertSort => self.reversed = !self.reversed,
            Intent::StartFilter => self.mode = Mode::Filter,
            Intent::FilterChar(c) => self.filter.push(c),
            Intent::FilterBackspace => {
                self.filter.pop();
            }
            Intent::FilterAccept => self.mode = Mode::Table,
            Intent::FilterCancel => {
                self.filter.clear();
                self.mode = Mode::Table;
            }
            Intent::Ask(verb) => match self.selected_id(now_us) {
                Some(service) => self.mode = Mode::Confirm { verb, service },
                None => self.message = Some("no service selected".into()),
            },
            Intent::Confirm => {
                if let Mode::Confirm { verb, service } =
                    std::mem::replace(&mut self.mode, Mode::Table)
                {
                    self.message = Some(format!("{} {service}…", verb.as_str()));
                    return Some(Effect::Run { verb, service });
                }
            }
            Intent::Cancel => {
                if let Mode::Confirm { verb, service } = &self.mode {
                    self.message = Some(format!("{} {service}: cancelled", verb.as_str()));
                }
                self.mode = Mode::Table;
            }
            Intent::ToggleDetail => {
                if self.detail.take().is_none() {
                    self.detail = self.selected_id(now_us);
                    return self.detail.clone().map(Effect::Fetch);
                }
            }
            Intent::Back => {
                if self.detail.take().is_none() {
                    self.filter.clear();
                }
            }
            Intent::ToggleHelp => {
                self.mode = match self.mode {
                    Mode::Help => Mode::Table,
                    _ => Mode::Help,
                }
            }
        }
        None
    }

    fn move_by(&mut self, by: i32, now_us: i64) -> Option<Effect> {
        let rows = self.rows(now_us);
        let at = self.selection(&rows)? as i64;
        let to = (at + by as i64).clamp(0, rows.len() as i64 - 1) as usize;
        let id = rows[to].service.clone();
        self.selected = Some(id.clone());
        // An open pane follows the selection.
        if self.detail.is_some() && self.detail.as_deref() != Some(&id) {
            self.detail = Some(id.clone());
            return Some(Effect::Fetch(id));
        }
        None
    }
}

fn haystack(s: &ServiceSummary) -> String {
    let state = s.status.as_ref().map_or("unknown", |st| st.state.as_str());
    format!("{} {state}", s.service).to_lowercase()
}

fn state_rank(s: &ServiceSummary) -> (usize, bool) {
    match &s.status {
        Some(st) => (
            STATE_ORDER
                .iter()
                .position(|&x| x == st.state)
                .unwrap_or(STATE_ORDER.len()),
            !summary_differs(s),
        ),
        None => (STATE_ORDER.len() + 1, true),
    }
}

fn want_rank(s: &ServiceSummary) -> u8 {
    match s.status.as_ref().map(|st| st.want) {
        Some(Want::Up) => 0,
        Some(Want::Once) => 1,
        Some(Want::Down) => 2,
        None => 3,
    }
}

fn pid(s: &ServiceSummary) -> Option<i32> {
    s.status.as_ref()?.pid
}

/// How long the service has been running, if it is.
pub fn uptime_us(s: &ServiceSummary, now_us: i64) -> Option<i64> {
    let st = s.status.as_ref()?;
    st.state.is_up().then(|| now_us - st.since_us)
}

fn last_exit(s: &ServiceSummary) -> Option<String> {
    Some(crate::text::exit(s.status.as_ref()?.last_exit.as_ref()?))
}

fn last_if_none<T: Ord>(a: Option<T>, b: Option<T>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (a, b) => a.is_none().cmp(&b.is_none()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{event, summary};
    use libupkeeper::{Access, EventKind, StateName};

    const NOW: i64 = 100 * HOUR_US;

    fn app() -> App {
        let mut app = App::default();
        let mut web = summary("web", StateName::Running, Want::Up);
        if let Some(s) = web.status.as_mut() {
            s.pid = Some(300);
            s.since_us = NOW - 5_000_000;
        }
        let mut db = summary("db", StateName::Running, Want::Up);
        if let Some(s) = db.status.as_mut() {
            s.pid = Some(200);
            s.since_us = NOW - HOUR_US;
        }
        let cron = summary("cron", StateName::Failed, Want::Up);
        app.update(
            Update::Connected {
                pid: 1,
                access: Access::Control,
                services: vec![cron, db, web],
                starts: vec![event(1, "web", NOW - 10, EventKind::STARTED, "policy")],
            },
            NOW,
        );
        app
    }

    fn ids(app: &App) -> Vec<&str> {
        app.rows(NOW).iter().map(|s| s.service.as_str()).collect()
    }

    #[test]
    fn s_cycles_the_sort_column_and_capital_i_reverses_it() {
        let mut app = app();
        assert_eq!(ids(&app), ["cron", "db", "web"]);
        let mut seen = vec![];
        for _ in 0..7 {
            app.handle(Intent::NextSort, NOW);
            seen.push((app.sort.label(), ids(&app).join(" ")));
        }
        assert_eq!(
            seen,
            [
                ("state", "cron db web".into()),
                ("want", "cron db web".into()),
                ("pid", "db web cron".into()),
                ("uptime", "web db cron".into()),
                ("restarts", "web cron db".into()),
                ("last exit", "cron db web".into()),
                ("service", "cron db web".into()),
            ]
        );
        app.handle(Intent::InvertSort, NOW);
        assert_eq!(ids(&app), ["web", "db", "cron"]);
    }

    #[test]
    fn the_filter_narrows_rows_and_escape_clears_it() {
        let mut app = app();
        app.handle(Intent::StartFilter, NOW);
        assert_eq!(app.mode, Mode::Filter);
        for c in "FAIL".chars() {
            app.handle(Intent::FilterChar(c), NOW);
        }
        assert_eq!(ids(&app), ["cron"], "matches the state too, in any case");
        app.handle(Intent::FilterBackspace, NOW);
        app.handle(Intent::FilterAccept, NOW);
        assert_eq!(
            (app.mode.clone(), app.filter.as_str()),
            (Mode::Table, "FAI")
        );
        app.handle(Intent::Back, NOW);
        assert_eq!(ids(&app).len(), 3);
        app.handle(Intent::StartFilter, NOW);
        app.handle(Intent::FilterChar('w'), NOW);
        app.handle(Intent::FilterCancel, NOW);
        assert_eq!((app.mode.clone(), ids(&app).len()), (Mode::Table, 3));
    }

    #[test]
    fn the_selection_follows_the_service_and_stays_in_bounds() {
        let mut app = app();
        assert_eq!(app.handle(Intent::Move(-1), NOW), None);
        assert_eq!(app.selected.as_deref(), Some("cron"));
        app.handle(Intent::Move(1), NOW);
        assert_eq!(app.selected.as_deref(), Some("db"));
        app.handle(Intent::InvertSort, NOW);
        let rows = app.rows(NOW);
        assert_eq!(rows[app.selection(&rows).unwrap_or(9)].service, "db");
        app.handle(Intent::Bottom, NOW);
        assert_eq!(app.selected.as_deref(), Some("cron"));
        app.handle(Intent::Top, NOW);
        assert_eq!(app.selected.as_deref(), Some("web"));
    }

    #[test]
    fn a_command_runs_only_after_yes() {
        let mut app = app();
        app.handle(Intent::Move(1), NOW);
        assert_eq!(app.handle(Intent::Ask(Verb::Restart), NOW), None);
        assert_eq!(
            app.mode,
            Mode::Confirm {
                verb: Verb::Restart,
                service: "db".into()
            }
        );
        assert_eq!(app.handle(Intent::Cancel, NOW), None);
        assert_eq!(app.message.as_deref(), Some("restart db: cancelled"));
        app.handle(Intent::Ask(Verb::Stop), NOW);
        assert_eq!(
            app.handle(Intent::Confirm, NOW),
            Some(Effect::Run {
                verb: Verb::Stop,
                service: "db".into()
            })
        );
        assert_eq!(app.mode, Mode::Table);
        app.update(
            Update::Done {
                verb: Verb::Stop,
                service: "db".into(),
                result: Err("refused".into()),
            },
            NOW,
        );
        assert_eq!(app.message.as_deref(), Some("stop db failed: refused"));
        assert_eq!(app.handle(Intent::Confirm, NOW), None, "nothing pending");
    }

    #[test]
    fn the_detail_pane_opens_on_the_selection_and_follows_it() {
        let mut app = app();
        assert_eq!(
            app.handle(Intent::ToggleDetail, NOW),
            Some(Effect::Fetch("cron".into()))
        );
        assert_eq!(
            app.handle(Intent::Move(1), NOW),
            Some(Effect::Fetch("db".into()))
        );
        assert_eq!(app.detail.as_deref(), Some("db"));
        assert_eq!(app.handle(Intent::ToggleDetail, NOW), None);
        assert_eq!(app.detail, None);
        app.handle(Intent::ToggleDetail, NOW);
        app.filter = "w".into();
        app.handle(Intent::Back, NOW);
        assert_eq!((app.detail.clone(), app.filter.as_str()), (None, "w"));
    }
}
