//! `upkeeper`, the controller.
//!
//! # Theory of operation
//!
//! The controller turns configuration into running buddies and their events into history: it
//! loads the controller file and every service file ([`load`]), decides what a scan changes
//! ([`apply`]), orders start-up ([`order`]), renders each service's run directory
//! ([`render`]), keeps one buddy per service and one event link to each ([`fleet`], [`reach`],
//! [`link`]), knows what each service should be doing ([`desired`]), writes every event and
//! command into the audit store ([`store`], guarded by [`storewatch`]), serves clients on its
//! socket ([`server`], [`access`]) and follows `SvcConfigPath` ([`watch`], [`diff`]); while it
//! is down, [`offline`] answers clients' reads from the store.
//! [`foreground`] is the one loop that drives all of it and carries the server's intents to the
//! fleet and the store: data flows config -> render -> fleet -> store -> server, one way
//! (`docs/architecture.md`). Buddies own their services; the controller can die and come back
//! without disturbing them. [`load`], [`render`] and [`diff`]
//! are the `upk-config` crate's, shared with `upkctl` and re-exported here.

// Loading, rendering and diffing live in `upk-config`, shared with upkctl and the test kit,
// which must not link the daemon (SQLite, inotify). Re-exported under their old names so that
// `crate::render::Renderer` and `upkeeper::load::scan` keep meaning what they meant.
pub use upk_config::{diff, load, render};

pub mod access;
pub mod apply;
pub mod desired;
pub mod fleet;
pub mod foreground;
pub mod link;
pub mod manual;
pub mod metrics;
pub mod offline;
pub mod order;
pub mod reach;
pub mod server;
pub mod store;
pub mod storewatch;
pub mod watch;
