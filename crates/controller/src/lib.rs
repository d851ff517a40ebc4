//! `upkeeper`, the controller.
//!
//! # Theory of operation
//!
//! The controller turns configuration into running buddies and their events into history: it
//! loads the controller file and every service file ([`load`]), orders start-up ([`order`]),
//! renders each service's run directory ([`render`]), keeps one buddy per service and one event
//! link to each ([`fleet`]), writes every event and command into the audit store ([`store`], guarded by
//! [`storewatch`]),
//! serves clients on its socket ([`server`]) and follows `SvcConfigPath` ([`watch`], [`diff`]).
//! [`foreground`] is the one loop that drives all of it. Buddies own their services; the
//! controller can die and come back without disturbing them.

pub mod access;
pub mod apply;
pub mod desired;
pub mod diff;
pub mod fleet;
pub mod foreground;
pub mod link;
pub mod load;
pub mod order;
pub mod reach;
pub mod render;
pub mod server;
pub mod store;
pub mod storewatch;
pub mod watch;
