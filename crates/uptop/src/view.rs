//! Drawing: the header (controller link and totals), one table row per service, the detail
//! pane, the prompt and key line, and the help overlay. A function of the [`App`] and the
//! time only; it keeps no state, so any frame can be redrawn from scratch.
//!
//! The one colour that carries meaning is red: a state that differs from the desired one
//! ([`summary_differs`]), and a controller that cannot be reached. While the controller is away the
//! rows are the last ones known, dimmed.

use crate::app::{uptime_us, App, Mode};
use crate::model::{summary_differs, wanted, Link, HOUR_US};
use crate::text;
use libupkeeper::{Access, ServiceSummary, Stats};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

/// Slices of the restart sparkline in a row (five minutes each).
const ROW_BINS: usize = 12;

const HEADINGS: [&str; 10] = [
    "SERVICE",
    "STATE",
    "WANT",
    "PID",
    "UPTIME",
    "RESTARTS/1h",
    "LAST EXIT",
    "HEALTH",
    "CPU%",
    "MEM",
];

/// The width of each column after SERVICE, in [`HEADINGS`]' order.
const WIDTHS: [u16; 9] = [8, 4, 7, 6, 16, 14, 6, 5, 6];

/// The columns a narrow terminal drops, first to last (indices into [`HEADINGS`]): usage, then
/// health, pid, last exit, uptime, want, restarts. SERVICE and STATE always stay.
const DROP_ORDER: [usize; 8] = [8, 9, 7, 3, 6, 4, 2, 5];

/// The columns that fit in `width` cells with a SERVICE column of `id_width`, in order: each
/// column costs its width and one cell of spacing, the highlight symbol two.
fn visible_columns(width: u16, id_width: u16) -> Vec<usize> {
    let cost = |i: usize| if i == 0 { id_width } else { WIDTHS[i - 1] } + 1;
    let mut shown: Vec<usize> = (0..HEADINGS.len()).collect();
    let total = |shown: &[usize]| 2 + shown.iter().map(|&i| cost(i)).sum::<u16>();
    for drop in DROP_ORDER {
        if total(&shown) <= width {
            break;
        }
        shown.retain(|&i| i != drop);
    }
    shown
}

const KEYS: &str = "q quit  ↑↓/jk select  s sort  I invert  / filter  d detail  \
                    S start  T stop  R restart  L reload  ? help";

/// Draws the whole screen for wall time `now_us`.
pub fn draw(frame: &mut Frame, app: &App, now_us: i64) {
    let [header, body, prompt, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(app, now_us)), header);
    match &app.detail {
        Some(id) => {
            let [table, pane] =
                Layout::vertical([Constraint::Min(3), Constraint::Percentage(45)]).areas(body);
            draw_table(frame, app, table, now_us);
            draw_detail(frame, app, id, pane, now_us);
        }
        None => draw_table(frame, app, body, now_us),
    }
    frame.render_widget(Paragraph::new(prompt_line(app)), prompt);
    frame.render_widget(
        Paragraph::new(KEYS).style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
    if app.mode == Mode::Help {
        draw_help(frame);
    }
}

fn header_lines(app: &App, now_us: i64) -> Vec<Line<'static>> {
    let alarm = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let link = match &app.fleet.link {
        Link::Connecting => Span::raw(format!("connecting to the controller at {}", app.socket)),
        Link::Connected { pid, access } => Span::raw(format!(
            "controller connected, pid {pid}, {} access · {}",
            match access {
                Access::Control => "control",
                Access::Read => "read",
                Access::None => "no",
            },
            app.socket
        )),
        Link::Unreachable { error, since_us } => Span::styled(
            format!(
                "controller unreachable for {}, retrying: {error}",
                text::duration(now_us - since_us)
            ),
            alarm,
        ),
    };
    let title = Span::styled("uptop ", Style::new().add_modifier(Modifier::BOLD));
    let totals = app.fleet.totals();
    let mut counts: Vec<String> = totals
        .by_state
        .iter()
        .map(|(st, n)| format!("{n} {}", st.as_str()))
        .collect();
    if totals.unknown > 0 {
        counts.push(format!("{} unknown", totals.unknown));
    }
    let mut second = vec![Span::raw(if counts.is_empty() {
        format!("{} services", totals.services)
    } else {
        format!("{} services: {}", totals.services, counts.join(", "))
    })];
    if totals.differing > 0 {
        second.push(Span::raw(" · "));
        second.push(Span::styled(
            format!("{} not as desired", totals.differing),
            alarm,
        ));
    }
    let flapping = app.fleet.flapping(now_us);
    if flapping > 0 {
        second.push(Span::raw(" · "));
        let warn = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
        second.push(Span::styled(format!("{flapping} flapping"), warn));
    }
    second.push(Span::raw(format!(
        " · sort: {}{}",
        app.sort.label(),
        if app.reversed { " (reversed)" } else { "" }
    )));
    if !app.filter.is_empty() {
        second.push(Span::raw(format!(" · filter: {}", app.filter)));
    }
    vec![Line::from(vec![title, link]), Line::from(second)]
}

fn draw_table(frame: &mut Frame, app: &App, area: Rect, now_us: i64) {
    let rows = app.rows(now_us);
    let id_width = rows
        .iter()
        .map(|s| s.service.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(7, 32) as u16;
    let shown = visible_columns(area.width, id_width);
    let widths = shown.iter().map(|&i| match i {
        0 => Constraint::Length(id_width),
        i => Constraint::Length(WIDTHS[i - 1]),
    });
    let stale = !app.fleet.connected();
    let table_rows = rows.iter().map(|s| {
        let row = service_row(app, s, now_us, &shown);
        if stale {
            row.style(Style::new().add_modifier(Modifier::DIM))
        } else {
            row
        }
    });
    let heading = Row::new(shown.iter().map(|&i| HEADINGS[i]))
        .style(Style::new().add_modifier(Modifier::BOLD));
    let table = Table::new(table_rows, widths)
        .header(heading)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(app.selection(&rows));
    frame.render_stateful_widget(table, area, &mut state);
}

/// One service's row, with the cells of the `shown` columns.
fn service_row<'a>(app: &App, s: &'a ServiceSummary, now_us: i64, shown: &[usize]) -> Row<'a> {
    let Some(st) = &s.status else {
        let unknown = Style::new().add_modifier(Modifier::DIM);
        let cells = [
            Cell::from(s.service.as_str()),
            Cell::from("unknown").style(unknown),
            Cell::from("-"),
        ];
        return shown_cells(cells, shown);
    };
    let activity = app.fleet.activity(&s.service);
    let flapping = activity.flapping(now_us);
    let warn = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
    let state_style = if summary_differs(s) {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if flapping {
        warn
    } else if st.state.is_up() {
        Style::new().fg(Color::Green)
    } else {
        Style::new()
    };
    let restarts = format!(
        "{:>3} {}",
        activity.restarts_since(now_us - HOUR_US),
        text::sparkline(&activity.restart_bins(now_us, ROW_BINS))
    );
    let cells = [
        Cell::from(s.service.as_str()),
        Cell::from(st.state.as_str()).style(state_style),
        Cell::from(format!("{:?}", wanted(s).unwrap_or(st.want)).to_lowercase()),
        Cell::from(st.pid.map_or("-".into(), |p| p.to_string())),
        Cell::from(uptime_us(s, now_us).map_or("-".into(), text::duration)),
        Cell::from(restarts).style(if flapping { warn } else { Style::new() }),
        Cell::from(st.last_exit.as_ref().map_or("-".into(), text::exit)),
        Cell::from(st.health.map_or("-", |h| h.as_str())),
        Cell::from(
            app.fleet
                .cpu_percent(&s.service)
                .map_or("-".into(), |p| format!("{p:.1}")),
        ),
        Cell::from(s.usage.map_or("-".into(), |u| u.memory_text())),
    ];
    shown_cells(cells, shown)
}

/// A row of the cells in the `shown` columns (cells are in [`HEADINGS`]' order).
fn shown_cells<'a, const N: usize>(cells: [Cell<'a>; N], shown: &[usize]) -> Row<'a> {
    let cells = cells.into_iter().enumerate();
    Row::new(cells.filter(|(i, _)| shown.contains(i)).map(|(_, c)| c))
}

fn draw_detail(frame: &mut Frame, app: &App, id: &str, area: Rect, now_us: i64) {
    let activity = app.fleet.activity(id);
    let mut lines = Vec::new();
    if let Some(s) = app.fleet.service(id) {
        let mut facts = vec![format!("file {}", s.file)];
        if !s.linked {
            facts.push("buddy not linked".into());
        }
        if let Some(st) = &s.status {
            facts.push(format!("buddy pid {}", st.buddy_pid));
            facts.push(format!("restarts: {}", st.restarts));
            if st.failures > 0 {
                facts.push(format!("failures in a row: {}", st.failures));
            }
            if let Some(at) = st.next_start_us {
                facts.push(format!("next start in {}", text::duration(at - now_us)));
            }
        }
        lines.push(Line::from(facts.join(" · ")));
    }
    lines.push(Line::from(match &activity.stats {
        Some(stats) => stats_line(stats),
        None => "last 24h: …".into(),
    }));
    for row in activity.recent() {
        let age = text::duration(now_us - row.record.wall_us);
        lines.push(Line::from(format!(
            "{age:>6} ago  {}",
            row.record.summary()
        )));
    }
    let block = Block::bordered().title(format!(" {id}: recent history, newest first "));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn stats_line(stats: &Stats) -> String {
    // One slice per hour of the window, oldest first.
    let end_hour = stats.until_us.div_euclid(HOUR_US) * HOUR_US;
    let hours: Vec<u64> = (0..24)
        .map(|i| {
            let start = end_hour - (23 - i) * HOUR_US;
            let bucket = stats.restarts_per_hour.iter().find(|b| b.start_us == start);
            bucket.map_or(0, |b| b.restarts)
        })
        .collect();
    let uptime = stats
        .uptime
        .map_or("-".into(), |u| format!("{:.1}%", u * 100.0));
    format!(
        "last 24h: restarts {} {} · failures {} · up {uptime} · flapping {:.2}",
        stats.restarts,
        text::sparkline(&hours),
        stats.failures,
        stats.flapping
    )
}

fn prompt_line(app: &App) -> Line<'static> {
    match &app.mode {
        Mode::Filter => Line::from(format!(
            "filter: {}▏ (Enter keeps it, Esc clears it)",
            app.filter
        )),
        Mode::Confirm { verb, service } => Line::from(Span::styled(
            format!("{} {service}? (y/n)", verb.as_str()),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        )),
        _ => Line::from(app.message.clone().unwrap_or_default()),
    }
}

fn draw_help(frame: &mut Frame) {
    const HELP: [&str; 16] = [
        "↑ ↓ j k PgUp PgDn g G   select a service",
        "s                       sort by the next column",
        "I                       reverse the sort order",
        "/ text Enter            filter by id or state (Esc clears)",
        "Enter d                 open or close the detail pane",
        "Esc                     close the pane, or clear the filter",
        "S T R L                 start, stop, restart, reload (asks y/n)",
        "q Ctrl-C                quit",
        "",
        "A red state differs from the desired one: wanted up but not",
        "running, wanted down but running, or a once that failed.",
        "RESTARTS/1h: automatic restarts in the last hour, and when",
        "(twelve five-minute slices, oldest first).",
        "CPU%: the share of one CPU since the last refresh; MEM: memory",
        "in use (its cgroup's, see docs/containment.md).",
        "Any key closes this help.",
    ];
    let area = frame.area();
    let (w, h) = (66.min(area.width), (HELP.len() as u16 + 2).min(area.height));
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP.map(Line::from).to_vec())
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{event, summary};
    use crate::model::Update;
    use libupkeeper::StateName;
    use libupkeeper::{EventKind, Exit, Want};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    const NOW: i64 = 100 * HOUR_US;

    fn screen(app: &App) -> (Vec<String>, ratatui::buffer::Buffer) {
        screen_of(app, 120)
    }

    fn screen_of(app: &App, width: u16) -> (Vec<String>, ratatui::buffer::Buffer) {
        let mut term = Terminal::new(TestBackend::new(width, 20)).expect("terminal");
        term.draw(|f| draw(f, app, NOW)).expect("draw");
        let buf = term.backend().buffer().clone();
        let lines = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect();
        (lines, buf)
    }

    fn app() -> App {
        let mut app = App {
            socket: "/run/upk.sock".into(),
            ..App::default()
        };
        let mut web = summary("web", StateName::Running, Want::Up);
        if let Some(s) = web.status.as_mut() {
            s.since_us = NOW - 185_000_000;
            s.last_exit = Some(Exit::Killed {
                signal: 9,
                core: false,
            });
        }
        let usage = |cpu_us| libupkeeper::Usage {
            cpu_us,
            memory: 5 << 20,
            memory_peak: None,
            tasks: 1,
        };
        web.usage = Some(usage(1_000_000));
        app.update(
            Update::Connected {
                pid: 42,
                access: Access::Control,
                services: vec![summary("cron", StateName::Failed, Want::Up), web.clone()],
                starts: vec![event(1, "web", NOW - 1, EventKind::STARTED, "policy")],
            },
            NOW - 2_000_000,
        );
        // Two lists 2 s apart, 0.5 s of CPU between them: 25% of one CPU.
        web.usage = Some(usage(1_500_000));
        let cron = summary("cron", StateName::Failed, Want::Up);
        app.update(Update::Services(vec![cron, web]), NOW);
        app
    }

    #[test]
    fn a_row_shows_every_column_and_a_differing_state_is_red() {
        let (lines, buf) = screen(&app());
        assert!(
            lines[0].contains("controller connected, pid 42"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("2 services: 1 failed, 1 running"),
            "{lines:#?}"
        );
        assert!(lines[1].contains("1 not as desired"), "{lines:#?}");
        let web = lines
            .iter()
            .position(|l| l.contains("web"))
            .expect("web row");
        let words: Vec<&str> = lines[web].split_whitespace().collect();
        assert_eq!(
            words,
            [
                "web",
                "running",
                "up",
                "100",
                "3m05s",
                "1",
                "▁▁▁▁▁▁▁▁▁▁▁▂",
                "SIGKILL",
                "-",
                "25.0",
                "5.0M"
            ]
        );
        let cron = lines
            .iter()
            .position(|l| l.contains("cron"))
            .expect("cron row");
        let x = lines[cron].find("failed").expect("state") as u16;
        assert_eq!(buf[(x, cron as u16)].fg, Color::Red);
        let x = lines[web].find("running").expect("state") as u16;
        assert_eq!(buf[(x, web as u16)].fg, Color::Green);
    }

    #[test]
    fn a_narrow_terminal_drops_columns_instead_of_cutting_cells() {
        let row_words = |width| {
            let (lines, _) = screen_of(&app(), width);
            let web = lines.iter().find(|l| l.contains("web")).expect("web row");
            let heading = lines
                .iter()
                .find(|l| l.contains("SERVICE"))
                .expect("heading");
            (
                heading
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                web.split_whitespace().map(String::from).collect::<Vec<_>>(),
            )
        };
        let (heading, web) = row_words(40);
        assert_eq!(heading, ["SERVICE", "STATE", "RESTARTS/1h"]);
        assert_eq!(web, ["web", "running", "1", "▁▁▁▁▁▁▁▁▁▁▁▂"]);
        let (heading, web) = row_words(64);
        assert_eq!(
            heading,
            [
                "SERVICE",
                "STATE",
                "WANT",
                "UPTIME",
                "RESTARTS/1h",
                "LAST",
                "EXIT"
            ]
        );
        assert_eq!(web[..4], ["web", "running", "up", "3m05s"]);
        // Every column when there is room (the 120-wide screen of the test above), and never a
        // line wider than the terminal.
        assert_eq!(visible_columns(91, 7).len(), 10);
        assert_eq!(visible_columns(90, 7).len(), 9);
        assert_eq!(visible_columns(0, 7), [0, 1]);
    }

    #[test]
    fn a_flapping_service_is_flagged_though_it_runs() {
        let mut app = app();
        let restarts =
            (2..6).map(|i| event(i, "web", NOW - i * 60_000_000, EventKind::STARTED, "policy"));
        for row in restarts {
            app.update(Update::Event(row), NOW);
        }
        let (lines, buf) = screen(&app);
        assert!(lines[1].contains("1 flapping"), "{lines:#?}");
        let web = lines
            .iter()
            .position(|l| l.contains("web"))
            .expect("web row");
        let x = lines[web].find("running").expect("state") as u16;
        assert_eq!(buf[(x, web as u16)].fg, Color::Yellow, "{lines:#?}");
    }

    #[test]
    fn an_unreachable_controller_is_said_in_red_and_rows_stay() {
        let mut app = app();
        app.update(Update::Unreachable("connection refused".into()), NOW);
        let (lines, buf) = screen(&app);
        assert!(
            lines[0].contains("controller unreachable for 0s, retrying: connection refused"),
            "{lines:#?}"
        );
        assert_eq!(buf[(10, 0)].fg, Color::Red);
        assert!(lines
            .iter()
            .any(|l| l.contains("web") && l.contains("running")));
    }

    #[test]
    fn the_prompt_asks_before_a_command_and_the_pane_shows_history() {
        let mut app = app();
        app.mode = Mode::Confirm {
            verb: crate::model::Verb::Restart,
            service: "web".into(),
        };
        app.detail = Some("web".into());
        let (lines, _) = screen(&app);
        assert!(
            lines.iter().any(|l| l.contains("restart web? (y/n)")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("web: recent history")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("0s ago  [backoff->running] started pid 7 (policy)")),
            "{lines:#?}"
        );
    }
}
