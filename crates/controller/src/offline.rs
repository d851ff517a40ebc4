//! The store's read requests answered while the controller is down (`upkeeper read-store`).
//!
//! When no controller answers its socket, `upkctl history`, `audit`, `why` and `incident` run
//! `upkeeper read-store STORE` with a socket pair on its stdin and stdout and speak the
//! client protocol to it, as they would to the controller: `hello`, then requests, one
//! reply per request. It opens the store read-only as the caller, so the file's own
//! permissions are the access rule (root, the controller's user, and `ReadGroup` through the
//! store's mode 0640); the hello says `read`. It answers `list` and `status` (the services the store has,
//! without status), `history`, `audit`, `config_changes` and `why` (without the
//! prerequisites, which only the configuration knows) with the same code, caps, cursors and
//! pages as the controller, and refuses everything else as `unavailable`. It writes nothing: the
//! store stays the controller's (docs/insight.md, "When the controller is down").

use crate::server::read;
use crate::store::Store;
use std::io::{Read, Write};
use std::path::Path;
use upk_core::client::{Access, ClientReply, ClientRequest, ErrorCode, ServiceSummary};
use upk_core::proto::{self, Envelope, LineBuf, PROTOCOL_VERSION};

/// Answers the requests read from `input` on `output` until `input` ends. Fails only when the
/// store cannot be opened (said before any request is read) or the peer goes away.
pub fn serve(path: &Path, mut input: impl Read, mut output: impl Write) -> anyhow::Result<()> {
    let store = Store::open_read_only(path)
        .map_err(|e| anyhow::anyhow!("cannot read the store {}: {e}", path.display()))?;
    let mut lines = LineBuf::default();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        loop {
            let (id, reply) = match lines.next_line() {
                Ok(None) => break,
                Ok(Some(line)) => match proto::decode::<ClientRequest>(&line) {
                    Ok(msg) => (msg.id, answer(&store, msg.body)),
                    Err(message) => (None, error((ErrorCode::Invalid, message))),
                },
                Err(e) => {
                    output.write_all(&proto::encode(&Envelope {
                        id: None,
                        body: error((ErrorCode::Invalid, e.to_string())),
                    }))?;
                    return Ok(());
                }
            };
            // In pages, as the controller sends them (a line stays below the line limit).
            for body in read::lines(reply) {
                output.write_all(&proto::encode(&Envelope { id, body }))?;
            }
        }
        output.flush()?;
        match input.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => lines.push(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The reply to one request.
fn answer(store: &Store, body: ClientRequest) -> ClientReply {
    let reply = match body {
        ClientRequest::Hello { version, .. } if version == PROTOCOL_VERSION => {
            Ok(ClientReply::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id() as i32,
                access: Access::Read,
            })
        }
        ClientRequest::Hello { version, .. } => Err((
            ErrorCode::Version,
            format!("protocol version {version} is not {PROTOCOL_VERSION}"),
        )),
        ClientRequest::List => list(store, &[]),
        ClientRequest::Status { services } => list(store, &services),
        ClientRequest::History { filter } => read::history(store, filter),
        body @ ClientRequest::Audit { .. } => read::audit(store, body),
        body @ ClientRequest::ConfigChanges { .. } => read::config_changes(store, body),
        ClientRequest::Why { service, at_us } => why(store, &service, at_us),
        _ => Err((
            ErrorCode::Unavailable,
            "the controller is not running: only the store's history can be read".into(),
        )),
    };
    reply.unwrap_or_else(error)
}

/// The services the store has (`only` these, when named; one it lacks is not found).
fn list(store: &Store, only: &[String]) -> Result<ClientReply, (ErrorCode, String)> {
    let mut all = store.services().map_err(store_error)?;
    if let Some(missing) = only.iter().find(|s| !all.iter().any(|(id, ..)| id == *s)) {
        return Err(not_found(missing));
    }
    if !only.is_empty() {
        all.retain(|(id, ..)| only.contains(id));
    }
    let services = all
        .into_iter()
        .map(|(service, uuid, desired)| ServiceSummary {
            service,
            uuid: Some(uuid),
            file: String::new(),
            linked: false,
            status: None,
            desired,
            usage: None,
        })
        .collect();
    Ok(ClientReply::Services {
        services,
        more: false,
    })
}

fn why(
    store: &Store,
    service: &str,
    at_us: Option<i64>,
) -> Result<ClientReply, (ErrorCode, String)> {
    if store.service_uuid(service).map_err(store_error)?.is_none() {
        return Err(not_found(service));
    }
    let why = store.why(service, at_us, &[]).map_err(store_error)?;
    Ok(ClientReply::Why { why: Box::new(why) })
}

fn not_found(service: &str) -> (ErrorCode, String) {
    (
        ErrorCode::NotFound,
        format!("there is no service {service:?} in the store (the controller is not running)"),
    )
}

fn store_error(e: crate::store::StoreError) -> (ErrorCode, String) {
    (
        ErrorCode::Store,
        format!("the audit store cannot answer: {e}"),
    )
}

fn error((code, message): (ErrorCode, String)) -> ClientReply {
    ClientReply::Error { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replies `serve` writes for `input`, one JSON value per line.
    fn replies(input: &str) -> Vec<serde_json::Value> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("upkeeper.db");
        drop(Store::open(&db).expect("store"));
        let mut out = Vec::new();
        serve(&db, input.as_bytes(), &mut out).expect("serve");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    #[test]
    fn reads_are_answered_and_everything_else_is_unavailable() {
        let r = replies(concat!(
            "{\"id\":1,\"type\":\"hello\",\"version\":1}\n",
            "{\"id\":2,\"type\":\"history\",\"filter\":{}}\n",
            "{\"id\":3,\"type\":\"start\",\"service\":\"web\"}\n",
            "{\"id\":4,\"type\":\"why\",\"service\":\"web\"}\n",
            "not json\n",
            "{\"id\":5,\"type\":\"list\"}\n",
        ));
        assert_eq!(r.len(), 6, "{r:?}");
        assert_eq!(
            (r[0]["id"].as_u64(), r[0]["access"].as_str()),
            (Some(1), Some("read"))
        );
        assert_eq!(r[1]["type"], "history");
        assert_eq!(r[1]["events"], serde_json::json!([]));
        assert_eq!(
            (r[2]["id"].as_u64(), r[2]["code"].as_str()),
            (Some(3), Some("unavailable"))
        );
        assert_eq!(r[3]["code"], "not_found");
        assert_eq!(
            (r[4]["id"].as_u64(), r[4]["code"].as_str()),
            (None, Some("invalid"))
        );
        assert_eq!(r[5]["services"], serde_json::json!([]));
    }

    #[test]
    fn a_long_history_comes_in_pages_below_the_line_limit() {
        use upk_core::event::{EventKind, Record, StateName};
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("upkeeper.db");
        let mut store = Store::open(&db).expect("store");
        let records: Vec<Record> = (1..=4000u64)
            .map(|seq| Record {
                seq,
                wall_us: 1_790_000_000_000_000 + seq as i64,
                mono_us: seq as i64,
                from: StateName::Running,
                to: StateName::Running,
                pid: Some(42),
                cause: "x".repeat(300),
                kind: EventKind::Stopping,
            })
            .collect();
        store.insert_events("web", &records).expect("insert");
        drop(store);
        let mut out = Vec::new();
        let input = "{\"id\":1,\"type\":\"history\",\"filter\":{}}\n";
        serve(&db, input.as_bytes(), &mut out).expect("serve");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .inspect(|l| assert!(l.len() < upk_core::proto::MAX_LINE, "{}", l.len()))
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert!(lines.len() > 1, "several pages");
        let (last, rest) = lines.split_last().expect("lines");
        assert!(rest.iter().all(|l| l["more"] == true) && last["more"] != true);
        let rows: usize = lines
            .iter()
            .map(|l| l["events"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(rows, 4000);
    }

    #[test]
    fn a_missing_store_is_said_before_anything_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("upkeeper.db");
        let e = serve(&missing, &b""[..], Vec::new()).expect_err("no store");
        assert!(e.to_string().contains("cannot read the store"), "{e}");
        assert!(!missing.exists(), "nothing created");
    }
}
