//! upkeeper-ship: one history for the fleet, in PostgreSQL.
//!
//! # Theory of operation
//!
//! Each host runs one shipper beside its controller. It reads the controller's audit store
//! ([`local`], read-only, under WAL) in storage order and copies committed events, commands
//! and configuration changes into one central PostgreSQL ([`central`]) in batches, each batch
//! and the move of the host's cursor in one transaction. Rows are keyed so that shipping one
//! twice stores it once: events by (host, service UUID, incarnation, seq), commands and
//! configuration changes by (host, local row id, wall time). The cursor (per host and table,
//! the last local row id shipped) lives in PostgreSQL, beside the rows it accounts for, so a
//! shipper killed at any point resumes exactly where the last commit left it.
//!
//! [`ship`] is the loop: it never dies of an outage, says each outage once when it begins and
//! once when it ends, and retries with a capped backoff. Rows the local store deleted before
//! they were shipped are not silently skipped: their id range becomes a gap row centrally.
//!
//! [`query`] answers the fleet's questions (`history`, `stats`, `why`, `incident`) as JSON
//! lines carrying the store's own row types and a `host`; `upkctl --fleet` runs
//! `upkeeper-ship query` and renders them, so no client but this binary links PostgreSQL.
//! The design at scale, the schema and the commands: `docs/fleet.md`.

pub mod central;
pub mod cli;
pub mod host;
pub mod local;
pub mod query;
pub mod ship;

/// Says something on stderr, prefixed like every message of the shipper.
pub fn say(message: &str) {
    eprintln!("upkeeper-ship: {message}");
}

/// Now, µs since the epoch.
pub fn now_us() -> i64 {
    upk_core::time::wall_us()
}
