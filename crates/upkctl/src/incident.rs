//! `incident`: everything that happened in a window, in one order (docs/insight.md).
//!
//! Every service's events, every audited command and every configuration change between
//! `--since` and `--until` are merged by time into one list. The first failure is marked;
//! a crash loop's repeated lines are collapsed per service into one line with a count (a line
//! whose shape, its text with the digits masked, the service printed among its last
//! `RECENT` (8) shapes is counted, not printed); and a summary groups the services: failures,
//! the first one, the state the window ended in. The window holds at most [`MAX_EVENTS`]
//! events; a longer one says where it stopped.

use crate::exit::{self, Failure, Result};
use crate::{print_json_line, when, Ctx};
use libupkeeper::{AuditQuery, CommandRow, ConfigChangeRow, EventRow, HistoryFilter};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;

/// The most events one incident reads: one page of the store's (below
/// [`upk_core::client::MAX_ROWS`]), which a person can still read collapsed, and which the
/// store answers in well under 100 ms whatever the window holds (docs/benchmarks.md).
pub const MAX_EVENTS: usize = 3_000;
/// How many of a service's latest line shapes count as "seen" for collapsing.
const RECENT: usize = 8;

/// One thing that happened.
#[derive(Debug, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Item {
    /// A service's event.
    Event {
        /// The row.
        #[serde(flatten)]
        row: EventRow,
        /// The window's first failure.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        first_failure: bool,
    },
    /// An audited command.
    Command(CommandRow),
    /// A configuration change.
    ConfigChange(ConfigChangeRow),
}

impl Item {
    fn wall_us(&self) -> i64 {
        match self {
            Item::Event { row, .. } => row.record.wall_us,
            Item::Command(c) => c.entry.wall_us,
            Item::ConfigChange(c) => c.change.wall_us,
        }
    }
}

/// `upkctl incident [--since T] [--until T]`.
pub fn incident(
    ctx: &Ctx,
    since: Option<&str>,
    until: Option<&str>,
    out: &mut dyn Write,
) -> Result<i32> {
    let now = upk_core::time::wall_us();
    let parse = |t: &str| {
        ctx.zone
            .parse(t, now)
            .map_err(|e| Failure::new(exit::USAGE, e))
    };
    let since_us = parse(since.unwrap_or("1h"))?;
    let until_us = until
        .map(parse)
        .transpose()?
        .unwrap_or(now.saturating_add(1));
    if since_us >= until_us {
        return Err(Failure::new(
            exit::USAGE,
            "the window is empty: --since is not before --until".to_owned(),
        ));
    }
    let mut client = ctx.reader()?;
    let mut events = client.history(&HistoryFilter {
        since_us: Some(since_us),
        until_us: Some(until_us),
        limit: Some(MAX_EVENTS + 1),
        by_time: true,
        ..HistoryFilter::default()
    })?;
    // A window cut at MAX_EVENTS events ends there for the commands and changes too
    // (they are bounded the same way), so that what is shown is all of what happened until
    // the line that says where it stopped.
    let cut = events.len() > MAX_EVENTS;
    events.truncate(MAX_EVENTS);
    let until_us = match (cut, events.last()) {
        (true, Some(last)) => last.record.wall_us.saturating_add(1),
        _ => until_us,
    };
    let mut commands = client.audit(&AuditQuery {
        since_us: Some(since_us),
        until_us: Some(until_us),
        limit: Some(MAX_EVENTS),
        ..AuditQuery::default()
    })?;
    let max_changes = upk_core::client::MAX_ROWS;
    let changes = client.config_changes(Some(since_us), Some(until_us), Some(max_changes))?;
    let cut = cut || commands.len() >= MAX_EVENTS || changes.len() >= max_changes;
    commands.truncate(MAX_EVENTS);
    let items = merge(events, commands, changes);
    if ctx.json {
        for item in &items {
            print_json_line(out, item)?;
        }
        return Ok(exit::OK);
    }
    let stopped_at = cut.then(|| items.last().map(Item::wall_us)).flatten();
    for line in render(&items, &ctx.zone, since_us, until_us, stopped_at) {
        writeln!(out, "{line}")?;
    }
    Ok(exit::OK)
}

/// Everything in time order (ties: configuration, then commands, then events, as a change
/// causes what follows it), the first failure marked.
pub fn merge(
    events: Vec<EventRow>,
    commands: Vec<CommandRow>,
    changes: Vec<ConfigChangeRow>,
) -> Vec<Item> {
    let mut items: Vec<Item> = changes.into_iter().map(Item::ConfigChange).collect();
    items.extend(commands.into_iter().map(Item::Command));
    items.extend(events.into_iter().map(|row| Item::Event {
        row,
        first_failure: false,
    }));
    // Stable: within a kind, rows keep the store's order.
    items.sort_by_key(Item::wall_us);
    if let Some(Item::Event { first_failure, .. }) = items
        .iter_mut()
        .find(|i| matches!(i, Item::Event { row, .. } if upk_core::death::failed(&row.record)))
    {
        *first_failure = true;
    }
    items
}

/// A line's shape: its text with every digit masked, so that one crash loop's lines match.
fn shape(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// Per service: what it showed lately, and what has been held back since.
#[derive(Default)]
struct Seen {
    recent: VecDeque<String>,
    held: usize,
    held_from: i64,
    held_until: i64,
}

/// A service's figures for the summary.
#[derive(Default)]
struct Tally {
    events: usize,
    failures: usize,
    first: Option<(i64, String)>,
    last_state: Option<&'static str>,
}

/// The incident's lines: a heading, the merged list with loops collapsed, the summary.
pub fn render(
    items: &[Item],
    zone: &when::Zone,
    since_us: i64,
    until_us: i64,
    stopped_at: Option<i64>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    let mut tally: BTreeMap<&str, Tally> = BTreeMap::new();
    let width = items
        .iter()
        .filter_map(|i| match i {
            Item::Event { row, .. } => Some(row.service.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0)
        .max(7);
    let held_line = |service: &str, s: &Seen| {
        format!(
            "{:24}  {service:width$}  ... {} more lines like the above, until {}",
            "",
            s.held,
            zone.show(s.held_until)
        )
    };
    let mut first: Option<String> = None;
    for item in items {
        let at = zone.show(item.wall_us());
        match item {
            Item::ConfigChange(c) => {
                let what = if c.change.hash.is_empty() {
                    "removed"
                } else {
                    "loaded"
                };
                lines.push(format!(
                    "{at}  {:width$}  {} {what}: {}",
                    "config",
                    c.change.file,
                    c.change.services.join(", ")
                ));
            }
            Item::Command(c) => {
                let e = &c.entry;
                lines.push(format!(
                    "{at}  {:width$}  uid {} ({}): {}",
                    "command", e.uid, e.cmdline, e.result
                ));
            }
            Item::Event { row, first_failure } => {
                let r = &row.record;
                let t = tally.entry(&row.service).or_default();
                t.events += 1;
                t.last_state = Some(r.to.as_str());
                let text = r.summary();
                if upk_core::death::failed(r) {
                    t.failures += 1;
                    t.first.get_or_insert((r.wall_us, text.clone()));
                }
                let s = seen.entry(&row.service).or_default();
                let sh = shape(&text);
                if !first_failure && s.recent.contains(&sh) {
                    if s.held == 0 {
                        s.held_from = r.wall_us;
                    }
                    s.held += 1;
                    s.held_until = r.wall_us;
                    continue;
                }
                if s.held > 0 {
                    lines.push(held_line(&row.service, s));
                    s.held = 0;
                }
                s.recent.push_back(sh);
                if s.recent.len() > RECENT {
                    s.recent.pop_front();
                }
                let mark = if *first_failure {
                    first = Some(format!("{} at {at}: {text}", row.service));
                    ">> first failure: "
                } else {
                    ""
                };
                lines.push(format!("{at}  {:width$}  {mark}{text}", row.service));
            }
        }
    }
    for (service, s) in &seen {
        if s.held > 0 {
            lines.push(held_line(service, s));
        }
    }
    let failures: usize = tally.values().map(|t| t.failures).sum();
    let mut head = vec![format!(
        "from {} to {}: {} events of {} services, {} commands, {} configuration changes, {failures} failures",
        zone.show(since_us),
        zone.show(until_us),
        tally.values().map(|t| t.events).sum::<usize>(),
        tally.len(),
        items.iter().filter(|i| matches!(i, Item::Command(_))).count(),
        items.iter().filter(|i| matches!(i, Item::ConfigChange(_))).count(),
    )];
    if let Some(f) = first {
        head.push(format!("first failure: {f}"));
    }
    if let Some(at) = stopped_at {
        head.push(format!(
            "stopped after {MAX_EVENTS} events, at {}: narrow the window with --until",
            zone.show(at)
        ));
    }
    head.push(String::new());
    head.append(&mut lines);
    if !tally.is_empty() {
        head.push(String::new());
        for (service, t) in &tally {
            let first = t
                .first
                .as_ref()
                .map(|(at, text)| format!(", first at {}: {text}", zone.show(*at)))
                .unwrap_or_default();
            head.push(format!(
                "{service:width$}  {} events, {} failures, ended {}{first}",
                t.events,
                t.failures,
                t.last_state.unwrap_or("?")
            ));
        }
    }
    head
}
