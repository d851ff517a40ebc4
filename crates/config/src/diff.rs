//! What a configuration change touches.
//!
//! Each service's definition has a [`config_hash`]: SHA-256 of its resolved settings as JSON,
//! which is stable across controller versions (it is stored in the audit store to tell when a
//! definition changed). [`diff`] compares the services in force with a newly loaded set and
//! sorts every id into added, changed, unchanged or gone, so that only changed services are
//! re-rendered and restarted. Whether a gone service is unconfigured is the caller's policy
//! (`UnconfigureOnFileRemoval`), not this module's.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use upk_core::config::{Service, ServiceId};

/// Hex SHA-256 of the resolved definition of `svc`.
pub fn config_hash(svc: &Service) -> String {
    // Serialising a resolved service cannot fail: it holds no maps with non-string keys.
    content_hash(&serde_json::to_vec(svc).unwrap_or_default())
}

/// Hex SHA-256 of `bytes` (a file's content, for the audit store's `config_changes`).
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The effect of a new configuration on the services in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New ids.
    pub added: Vec<ServiceId>,
    /// Ids whose definition changed: re-render, restart if running.
    pub changed: Vec<ServiceId>,
    /// Ids whose definition is the same: leave alone.
    pub unchanged: Vec<ServiceId>,
    /// Ids no longer defined.
    pub gone: Vec<ServiceId>,
}

/// Compares `current` (id -> config hash of what is in force) with `new`.
pub fn diff(current: &BTreeMap<ServiceId, String>, new: &[Service]) -> Changes {
    let mut c = Changes::default();
    let mut seen = std::collections::BTreeSet::new();
    for svc in new {
        seen.insert(&svc.id);
        match current.get(&svc.id) {
            None => c.added.push(svc.id.clone()),
            Some(h) if *h == config_hash(svc) => c.unchanged.push(svc.id.clone()),
            Some(_) => c.changed.push(svc.id.clone()),
        }
    }
    c.gone = current
        .keys()
        .filter(|id| !seen.contains(id))
        .cloned()
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn services(src: &str) -> Vec<Service> {
        upk_core::config::parse_services(src, Path::new("t.conf"), &Default::default())
            .expect("valid")
    }

    #[test]
    fn sorts_ids_by_what_changed() {
        let before = services(
            r#"{ "a": { ExecStart: "x" }, "b": { ExecStart: "y" }, "c": { ExecStart: "z" } }"#,
        );
        let current: BTreeMap<ServiceId, String> = before
            .iter()
            .map(|s| (s.id.clone(), config_hash(s)))
            .collect();
        // Comments and key case do not change a definition; a value does.
        let after = services(
            r#"{ "a": { /* same */ execstart: "x" }, "b": { ExecStart: "y", KillTimeout: 3 }, "d": { ExecStart: "w" } }"#,
        );
        let c = diff(&current, &after);
        let s = |v: &[ServiceId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            (s(&c.added), s(&c.changed), s(&c.unchanged), s(&c.gone)),
            (
                vec!["d".to_owned()],
                vec!["b".to_owned()],
                vec!["a".to_owned()],
                vec!["c".to_owned()]
            )
        );
    }

    #[test]
    fn the_hash_is_stable_and_hex() {
        let a = &services(r#"{ "a": { ExecStart: "x" } }"#)[0];
        let h = config_hash(a);
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, config_hash(a));
    }
}
