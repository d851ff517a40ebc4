//! Exit codes shared by every upkeeper program, documented in `docs/exit-codes.md`.
//!
//! They follow the skarnet convention: 100 for a permanent failure (fix something before trying
//! again), 111 for a temporary one (trying again may work).

/// Success.
pub const OK: i32 = 0;
/// Permanent failure: bad usage, invalid configuration or settings, run directory already
/// supervised by another buddy.
pub const PERMANENT: i32 = 100;
/// Temporary failure: a system call failed (out of memory, resource limits, ...).
pub const TEMPORARY: i32 = 111;
