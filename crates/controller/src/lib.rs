//! `upkeeper`, the controller.
//!
//! # Theory of operation
//!
//! The controller turns configuration into running buddies: it loads the controller file and
//! every service file ([`load`]), renders each service's run directory ([`render`]), and keeps
//! one buddy per service, taking their events ([`foreground`]). Buddies own their services; the
//! controller can die and come back without disturbing them.
//!
//! Today the foreground mode prints events; the audit store, client socket, ordering and
//! inotify watching come with the controller issue.

pub mod diff;
pub mod foreground;
pub mod load;
pub mod order;
pub mod render;
pub mod store;
pub mod watch;
