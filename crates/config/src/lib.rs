//! `upk-config`: the configuration as the controller applies it, shared with the clients that
//! must agree with it byte for byte.
//!
//! # Theory of operation
//!
//! `upk_core::config` parses and validates one file; this crate works on what those files
//! become. [`load`] finds and loads every service file of `SvcConfigPath` (a bad file is
//! reported and skipped), [`render`] lays a resolved service out as its run directory (scripts
//! from the tera templates, action links, `settings.json`, swapped in atomically), and [`diff`]
//! tells which definitions changed. The controller (`upkeeper`) drives all three; `upkctl check`
//! and `upkctl render` and the test kit use the same code, so what they accept and write is
//! exactly what the controller would. Nothing here talks to a daemon, opens the audit store or
//! watches a directory: those stay in the controller, and so do their dependencies.

pub mod diff;
pub mod load;
pub mod render;
