//! Read requests: `list`, `status`, `history`, `audit`, `stats`, `why`, `config_changes`,
//! answered at once from the fleet, the status files and the store's read-only connection,
//! and cut into lines below the line limit.

use super::{not_found, store_error, Server};
use crate::fleet::Fleet;
use crate::store::Store;
use serde::Serialize;
use std::collections::BTreeSet;
use upk_core::client::{
    ClientReply, ClientRequest, ErrorCode, ServiceSummary, MAX_ROWS, PAGE_BYTES,
};
use upk_core::history::HistoryFilter;
use upk_core::status::Status;

/// The rows of one `history` or `audit` reply stop at about this many bytes of JSON (the
/// reply then has a cursor), so that the answers a client is owed stay below [`MAX_BACKLOG`](super::MAX_BACKLOG).
const REPLY_BYTES: usize = 4 << 20;

impl Server {
    /// Answers a read request (not `subscribe`); a list reply goes out in pages.
    pub(super) fn answer_read(
        &mut self,
        token: u64,
        id: Option<u64>,
        body: ClientRequest,
        fleet: &Fleet,
    ) -> Result<(), (ErrorCode, String)> {
        for line in lines(self.read(body, fleet)?) {
            self.send(token, id, line);
        }
        Ok(())
    }

    /// The answer to a read request (not `subscribe`), in one piece.
    fn read(&self, body: ClientRequest, fleet: &Fleet) -> Result<ClientReply, (ErrorCode, String)> {
        let store = store_error;
        Ok(match body {
            ClientRequest::List => ClientReply::Services {
                services: self.summaries(&fleet.members.keys().cloned().collect::<Vec<_>>(), fleet),
                more: false,
            },
            ClientRequest::Status { services } => {
                let ids: Vec<String> = if services.is_empty() {
                    fleet.members.keys().cloned().collect()
                } else {
                    unique(services)
                };
                if let Some(unknown) = ids.iter().find(|id| !fleet.members.contains_key(*id)) {
                    return Err(not_found(unknown, fleet));
                }
                ClientReply::Services {
                    services: self.summaries(&ids, fleet),
                    more: false,
                }
            }
            ClientRequest::History { filter } => {
                if let Some(id) = &filter.service {
                    self.known(id, fleet)?;
                }
                history(&self.reader, filter)?
            }
            body @ ClientRequest::Audit { .. } => audit(&self.reader, body)?,
            ClientRequest::Stats {
                services,
                since_us,
                until_us,
            } => {
                let until = until_us.unwrap_or_else(upk_core::time::wall_us);
                let since = match since_us {
                    Some(since) => since,
                    None => until.checked_sub(24 * 3_600_000_000).ok_or_else(|| {
                        bad_value(format!(
                            "until_us {until} is too far in the past to count 24 hours back from"
                        ))
                    })?,
                };
                if since >= until {
                    return Err(bad_value(format!(
                        "the window is empty: since_us {since} is not before until_us {until}"
                    )));
                }
                let ids: Vec<String> = if services.is_empty() {
                    fleet.members.keys().cloned().collect()
                } else {
                    unique(services)
                };
                for id in &ids {
                    self.known(id, fleet)?;
                }
                let stats = ids
                    .iter()
                    .map(|id| self.reader.stats(id, since, until))
                    .collect::<Result<_, _>>()
                    .map_err(store)?;
                ClientReply::Stats { stats, more: false }
            }
            ClientRequest::Why { service, at_us } => {
                self.known(&service, fleet)?;
                let providers = fleet
                    .members
                    .get(&service)
                    .map(|m| providers(&m.svc.prerequisites, fleet))
                    .unwrap_or_default();
                let why = self
                    .reader
                    .why(&service, at_us, &providers)
                    .map_err(store)?;
                ClientReply::Why { why: Box::new(why) }
            }
            body @ ClientRequest::ConfigChanges { .. } => config_changes(&self.reader, body)?,
            _ => return Err((ErrorCode::Invalid, "not a read request".into())),
        })
    }

    /// A service is known when it is configured or has a history in the store.
    fn known(&self, id: &str, fleet: &Fleet) -> Result<(), (ErrorCode, String)> {
        if fleet.members.contains_key(id) || self.reader.service_uuid(id).ok().flatten().is_some() {
            Ok(())
        } else {
            Err(not_found(id, fleet))
        }
    }

    /// One summary per id: the status file, and one store query each.
    fn summaries(&self, ids: &[String], fleet: &Fleet) -> Vec<ServiceSummary> {
        let linked: BTreeSet<&str> = fleet.links.iter().map(|l| l.service.as_str()).collect();
        ids.iter()
            .map(|id| {
                let m = fleet.members.get(id);
                let (uuid, desired) = match self.reader.service_row(id) {
                    Ok(Some((uuid, desired))) => (Some(uuid), desired),
                    _ => (None, None),
                };
                let status = m.and_then(|m| Status::read(&m.dir.status()).ok().flatten());
                let usage = status
                    .as_ref()
                    .and_then(|s| Some(s.containment.usage(Some(s.pid?))));
                ServiceSummary {
                    service: id.clone(),
                    uuid,
                    file: m.map(|m| m.file.display().to_string()).unwrap_or_default(),
                    linked: linked.contains(id.as_str()),
                    status,
                    desired,
                    usage,
                }
            })
            .collect()
    }
}

/// A `history` reply: at most [`MAX_ROWS`] rows and [`REPLY_BYTES`] of them, with a cursor
/// when either cut it.
pub(crate) fn history(
    reader: &Store,
    mut filter: HistoryFilter,
) -> Result<ClientReply, (ErrorCode, String)> {
    let (limit, capped) = cap_rows(filter.limit);
    filter.limit = Some(limit);
    let mut events = reader.history(&filter).map_err(store_error)?;
    let cut = fit_bytes(&mut events) || (capped && events.len() == limit);
    let cursor = cut.then(|| events.last().map(|e| e.id)).flatten();
    Ok(ClientReply::History {
        events,
        more: false,
        cursor,
    })
}

/// An `audit` reply (`body` is an `audit` request), cut as [`history`]'s.
pub(crate) fn audit(
    reader: &Store,
    body: ClientRequest,
) -> Result<ClientReply, (ErrorCode, String)> {
    let ClientRequest::Audit {
        since_us,
        until_us,
        uid,
        limit,
        after_id,
        before_id,
        newest_first,
    } = body
    else {
        return Err((ErrorCode::Invalid, "not an audit request".into()));
    };
    let (limit, capped) = cap_rows(limit);
    let filter = HistoryFilter {
        since_us,
        until_us,
        after_id,
        before_id,
        limit: Some(limit),
        newest_first,
        ..HistoryFilter::default()
    };
    let mut commands = reader.commands_page(&filter, uid).map_err(store_error)?;
    let cut = fit_bytes(&mut commands) || (capped && commands.len() == limit);
    let cursor = cut.then(|| commands.last().map(|c| c.id)).flatten();
    Ok(ClientReply::Audit {
        commands,
        more: false,
        cursor,
    })
}

/// A `config_changes` reply (`body` is a `config_changes` request).
pub(crate) fn config_changes(
    reader: &Store,
    body: ClientRequest,
) -> Result<ClientReply, (ErrorCode, String)> {
    let ClientRequest::ConfigChanges {
        since_us,
        until_us,
        limit,
    } = body
    else {
        return Err((ErrorCode::Invalid, "not a config_changes request".into()));
    };
    let (limit, _) = cap_rows(limit);
    let mut changes = reader
        .config_changes(since_us, until_us, Some(limit))
        .map_err(store_error)?;
    fit_bytes(&mut changes);
    Ok(ClientReply::ConfigChanges { changes })
}

/// The configured services that provide `prerequisites`, each with the name it provides
/// (a prerequisite nobody provides is left out).
fn providers(prerequisites: &[String], fleet: &Fleet) -> Vec<(String, String)> {
    prerequisites
        .iter()
        .flat_map(|p| {
            fleet
                .members
                .iter()
                .filter(|(_, m)| crate::order::provides(&m.svc).contains(p))
                .map(move |(id, _)| (id.clone(), p.clone()))
        })
        .collect()
}

/// The rows to ask the store for: the request's limit up to [`MAX_ROWS`], and whether the cap
/// cut it (then the reply carries a cursor to continue from).
fn cap_rows(limit: Option<usize>) -> (usize, bool) {
    match limit {
        Some(l) if l <= MAX_ROWS => (l, false),
        _ => (MAX_ROWS, true),
    }
}

/// A reply as the lines it is sent in: a list (`services`, `history`, `audit`, `stats`) in
/// pages of about [`PAGE_BYTES`], each but the last saying `more` (a cursor only on the last);
/// anything else in one line.
pub(crate) fn lines(reply: ClientReply) -> Vec<ClientReply> {
    fn paged<T: Serialize>(
        items: Vec<T>,
        make: impl Fn(Vec<T>, bool) -> ClientReply,
    ) -> Vec<ClientReply> {
        let pages = pages(items);
        let n = pages.len();
        pages
            .into_iter()
            .enumerate()
            .map(|(i, page)| make(page, i + 1 < n))
            .collect()
    }
    match reply {
        ClientReply::Services { services, .. } => paged(services, |services, more| {
            ClientReply::Services { services, more }
        }),
        ClientReply::History { events, cursor, .. } => {
            paged(events, |events, more| ClientReply::History {
                events,
                more,
                cursor: if more { None } else { cursor },
            })
        }
        ClientReply::Audit {
            commands, cursor, ..
        } => paged(commands, |commands, more| ClientReply::Audit {
            commands,
            more,
            cursor: if more { None } else { cursor },
        }),
        ClientReply::Stats { stats, .. } => {
            paged(stats, |stats, more| ClientReply::Stats { stats, more })
        }
        reply => vec![reply],
    }
}

/// `items` cut into pages of about [`PAGE_BYTES`] of JSON each (an item larger than that is a
/// page of its own); at least one page, empty when `items` is.
pub(super) fn pages<T: Serialize>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut pages = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        let len = json_len(&item) + 1;
        if size + len > PAGE_BYTES && pages.last().is_some_and(|p| !p.is_empty()) {
            pages.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(page) = pages.last_mut() {
            page.push(item);
        }
    }
    pages
}

/// Keeps the rows of `rows` that fit in [`REPLY_BYTES`] of JSON (at least one); true when
/// some were cut.
fn fit_bytes<T: Serialize>(rows: &mut Vec<T>) -> bool {
    let mut size = 0;
    let keep = rows
        .iter()
        .position(|r| {
            size += json_len(r) + 1;
            size > REPLY_BYTES
        })
        .map_or(rows.len(), |i| i.max(1));
    let cut = keep < rows.len();
    rows.truncate(keep);
    cut
}

/// The length of `item`'s JSON, counted as it is written (nothing is kept).
fn json_len<T: Serialize>(item: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, item);
    count.0
}

/// `ids` each once, in the order first named: a request naming one service 100,000 times is
/// answered once for it.
fn unique(ids: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn bad_value(message: String) -> (ErrorCode, String) {
    (ErrorCode::BadValue, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use upk_core::proto::{self, Envelope};

    #[test]
    fn long_lists_are_split_into_lines_below_the_line_limit() {
        let items: Vec<String> = (0..20_000).map(|i| format!("{i:0>100}")).collect();
        let split = pages(items.clone());
        assert!(split.len() > 1);
        for page in &split {
            let line = proto::encode(&Envelope {
                id: Some(1),
                body: ClientReply::Stats {
                    stats: Vec::new(),
                    more: true,
                },
            });
            let size = serde_json::to_vec(page).expect("json").len() + line.len();
            assert!(size < PAGE_BYTES + 1024, "{size}");
        }
        assert_eq!(split.concat(), items, "nothing lost or reordered");
        assert_eq!(
            pages(Vec::<u8>::new()),
            [Vec::<u8>::new()],
            "one empty page"
        );
    }

    #[test]
    fn row_limits_are_capped_with_a_cursor_past_the_cap() {
        assert_eq!(cap_rows(Some(10)), (10, false));
        assert_eq!(cap_rows(Some(MAX_ROWS)), (MAX_ROWS, false));
        assert_eq!(cap_rows(Some(usize::MAX)), (MAX_ROWS, true));
        assert_eq!(cap_rows(None), (MAX_ROWS, true));
    }
}
