//! The host id the fleet's rows are keyed by.
//!
//! By default the kernel's host name (what operators glob with `upkctl --fleet --hosts`),
//! else `/etc/machine-id`; `--host` overrides both. Either way it is checked: 1 to 64
//! characters of letters, digits, `.`, `_` and `-`, not starting with `-` or `.`. The
//! machine id and host name are also recorded beside it in `hosts`, so a host renamed or
//! cloned can be told apart.

use crate::central::HostInfo;
use std::path::Path;

/// The longest host id.
pub const MAX_LEN: usize = 64;

/// Checks a host id; the error is one sentence.
pub fn validate(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_LEN {
        return Err(format!(
            "host id {id:?} must be 1 to {MAX_LEN} characters long"
        ));
    }
    if let Some(bad) = id.chars().find(|&c| !ok_char(c)) {
        return Err(format!(
            "host id {id:?} holds {bad:?}: only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if id.starts_with(['-', '.']) {
        return Err(format!("host id {id:?} must not start with '-' or '.'"));
    }
    Ok(())
}

fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The kernel's host name, when there is a usable one.
pub fn hostname() -> Option<String> {
    first_line(Path::new("/proc/sys/kernel/hostname"))
        .filter(|h| h != "localhost" && h != "(none)" && validate(h).is_ok())
}

/// `/etc/machine-id`, when there is a valid one (32 hex digits).
pub fn machine_id() -> Option<String> {
    first_line(Path::new("/etc/machine-id"))
        .filter(|m| m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The host's identity: `--host` when given (checked), else the host name, else the
/// machine id.
pub fn resolve(explicit: Option<&str>, store: &Path) -> Result<HostInfo, String> {
    let host = match explicit {
        Some(h) => {
            validate(h)?;
            h.to_owned()
        }
        None => hostname().or_else(machine_id).ok_or_else(|| {
            "this host has neither a usable host name nor /etc/machine-id: pass --host ID"
                .to_owned()
        })?,
    };
    Ok(HostInfo {
        host,
        machine_id: machine_id(),
        hostname: first_line(Path::new("/proc/sys/kernel/hostname")),
        store: store.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn host_ids_are_short_and_plain() {
        assert!(validate("web-01.example").is_ok());
        assert!(validate("0123456789abcdef0123456789abcdef").is_ok());
        assert!(validate("").is_err());
        assert!(validate(&"a".repeat(65)).is_err());
        assert!(validate("-web").is_err());
        assert!(validate("web 1").is_err());
        assert!(validate("web'; DROP TABLE events").is_err());
    }
}
