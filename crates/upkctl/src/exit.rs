//! upkctl's exit codes and the one error type every command returns.
//!
//! Scripts branch on the code; people read the sentence. The codes are documented in
//! `docs/exit-codes.md`; 100 and 111 keep the meaning they have for every upkeeper program
//! (`upk_core::exit`), and the small numbers say what went wrong in operator terms.

use libupkeeper::{Error, ErrorCode};

/// Success.
pub const OK: i32 = 0;
/// The command reached its service but did not work: the buddy refused or could not carry it
/// out, an action script exited non-zero, or the service ended in another state than asked.
pub const FAILED: i32 = 1;
/// No such service, action or user.
pub const NOT_FOUND: i32 = 2;
/// The controller refused: the caller's access does not allow the request.
pub const REFUSED: i32 = 3;
/// The controller cannot be reached (not running, wrong socket) or went away.
pub const UNREACHABLE: i32 = 4;
/// No answer, or the new state not reached, within --timeout.
pub const TIMED_OUT: i32 = 5;
/// A configuration file is invalid (`check`, `render`, or the controller file itself).
pub const INVALID_CONFIG: i32 = 6;
/// Bad usage (as every upkeeper program: permanent failure).
pub const USAGE: i32 = upk_core::exit::PERMANENT;
/// A temporary failure: the buddy is not connected yet, the store cannot answer, a file
/// cannot be read or written (trying again may work).
pub const TEMPORARY: i32 = upk_core::exit::TEMPORARY;

/// Why a command failed: its exit code and one sentence for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// One sentence (empty: nothing to say, e.g. the reader of stdout went away).
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for an error from the client library.
pub fn code_of(e: &Error) -> i32 {
    match e {
        // ssh (upkctl -H) failing is the remote controller unreachable (docs/remote.md).
        Error::Unreachable { .. } | Error::Io(_) | Error::Program { .. } => UNREACHABLE,
        Error::TimedOut(_) => TIMED_OUT,
        Error::Config(_) => INVALID_CONFIG,
        Error::Protocol(_) => TEMPORARY,
        Error::Controller { code, .. } => match code {
            ErrorCode::NotFound => NOT_FOUND,
            ErrorCode::Refused => REFUSED,
            ErrorCode::Failed => FAILED,
            ErrorCode::Unavailable | ErrorCode::Store | ErrorCode::Busy => TEMPORARY,
            ErrorCode::Invalid | ErrorCode::Version | ErrorCode::BadValue => USAGE,
        },
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let message = match &e {
            Error::Unreachable { path, source } => format!(
                "cannot reach the controller at {}: {source} (is `upkeeper run` running?)",
                path.display()
            ),
            Error::TimedOut(d) => format!(
                "the controller did not answer within {:.1}s (see --timeout)",
                d.as_secs_f64()
            ),
            e => e.to_string(),
        };
        Failure::new(code_of(&e), message)
    }
}

impl From<std::io::Error> for Failure {
    /// Writing to stdout: a reader that went away (`upkctl history | head`) is not an error.
    fn from(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::new(OK, "")
        } else {
            Failure::new(TEMPORARY, format!("cannot write the output: {e}"))
        }
    }
}

/// A result of a command.
pub type Result<T> = std::result::Result<T, Failure>;
