//! Configuration: the dialect, validation with positioned errors, layering, and the typed model.
//!
//! This module owns everything between a configuration file on disk and the typed
//! [`Controller`] and [`Service`] values: the refusal of files that others could have written
//! (or that are no regular file, lead through a stranger's symbolic link, or pass 1 MiB),
//! the dialect (JSON with comments, trailing commas and the seed's `Null`/`True`/`False`,
//! keys matched case-insensitively; the `dialect` pass lexes, json5 parses), the key table and its
//! layering (built-in <- controller `ServiceDefaults` <- service entry, see [`ServiceLayer`]),
//! `%(EXEC_START)`-style substitution, and errors that carry file, line and column. Every error
//! in a file is reported at once, and a file with any error yields no result at all, so that a
//! caller can keep the previous configuration in force. Every number read has an upper bound
//! ([`MAX_SECONDS`] for times), so nothing downstream can overflow on a configured value.

mod dialect;
mod keys;
mod model;
mod validate;

pub use keys::{
    check_action_name, closest, ServiceLayer, MAX_RINGBUFFER_SIZE, MAX_SECONDS, SERVICE_KEYS,
};
pub use model::*;
pub use validate::{
    controller_file, default_cgroup, is_controller_file, load_controller,
    load_controller_or_defaults, load_services, parse_controller, parse_services, CONTROLLER_KEYS,
    MAX_ERRORS, MAX_FILE_SIZE, MAX_HISTORY_DAYS, MAX_HISTORY_EVENTS, MAX_SCRIPT_SIZE,
};

use std::fmt;
use std::path::PathBuf;

/// One configuration error: where, and what is wrong in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as it was named to the loader.
    pub file: PathBuf,
    /// 1-based line; 0 when the error has no position (e.g. the file cannot be read).
    pub line: usize,
    /// 1-based column in characters; 0 when the error has no position.
    pub column: usize,
    /// The problem, one sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `file:line:column: message`, or `file: message` when there is no position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            let (file, line, column) = (self.file.display(), self.line, self.column);
            write!(f, "{file}:{line}:{column}: {}", self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// All errors found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
