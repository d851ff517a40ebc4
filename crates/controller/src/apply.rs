//! What a scan of `SvcConfigPath` changes in the fleet, decided without touching anything:
//! [`plan`] takes the services in force and a [`Scan`] and says which services to set up or
//! take a changed definition into use (in start-up order, each with the prerequisites it
//! waits for), which to unconfigure, and what to say. [`Fleet::apply`] carries it out
//! (render, spawn, the store).
//!
//! The rules: services of a file that failed validation stay as they are; a service an
//! operator unconfigured stays out while its definition is the same and its file is not
//! written again (a package's reinstall brings it back); a service that cannot
//! start (a cycle, a missing prerequisite) is not set up, but one already in force stays;
//! an unchanged definition is left alone; a service whose definition is gone is unconfigured
//! only with `UnconfigureOnFileRemoval`.
//!
//! [`Fleet::apply`]: crate::fleet::Fleet::apply

use crate::diff::{config_hash, diff, Changes};
use crate::load::{FileStamp, Scan};
use std::collections::BTreeMap;
use std::path::PathBuf;
use upk_core::config::Service;

/// A service in force, as [`plan`] needs to know it.
#[derive(Debug, Clone)]
pub struct InForce {
    /// Its definition.
    pub svc: Service,
    /// [`config_hash`] of it.
    pub hash: String,
    /// The file that defines it.
    pub file: PathBuf,
}

/// A service to set up, or to take a changed definition into use.
#[derive(Debug, Clone)]
pub struct Configure {
    /// Its definition.
    pub svc: Service,
    /// The file that defines it.
    pub file: PathBuf,
    /// The services that must run before it starts (ids).
    pub waits_for: Vec<String>,
}

/// What applying a scan does.
#[derive(Debug, Default)]
pub struct Plan {
    /// To set up or re-render, in start-up order.
    pub configure: Vec<Configure>,
    /// To unconfigure (their definition is gone and `UnconfigureOnFileRemoval` is set), with
    /// the file that defined them.
    pub remove: Vec<(String, PathBuf)>,
    /// What the diff found, for the summary line.
    pub changes: Changes,
    /// Lines to say on stderr: the scan's errors, services not started, services kept.
    pub said: Vec<String>,
}

/// A service an operator unconfigured: the definition it had, and its file's stamp then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfigured {
    /// [`config_hash`] of the definition.
    pub hash: String,
    /// The defining file's [`FileStamp`] when it was unconfigured.
    pub stamp: Option<FileStamp>,
}

/// Decides what applying `scan` changes, given the services in force and those an operator
/// unconfigured (entries whose definition changed or went, or whose file was written since,
/// are dropped from it).
pub fn plan(
    in_force: &BTreeMap<String, InForce>,
    unconfigured: &mut BTreeMap<String, Unconfigured>,
    scan: Scan,
) -> Plan {
    let mut said = scan.errors;
    // Services of a file that failed validation stay as they are.
    let kept: Vec<(Service, PathBuf)> = in_force
        .values()
        .filter(|m| scan.bad_files.contains(&m.file))
        .map(|m| (m.svc.clone(), m.file.clone()))
        .collect();
    // Services unconfigured by a command stay out while their definition is the same and
    // its file was not written again.
    unconfigured.retain(|id, out| {
        scan.services.iter().any(|(s, file)| {
            s.id.to_string() == *id
                && config_hash(s) == out.hash
                && scan.stamps.get(file) == out.stamp.as_ref()
        })
    });
    let all: Vec<(Service, PathBuf)> = scan
        .services
        .into_iter()
        .filter(|(s, _)| !unconfigured.contains_key(&s.id.to_string()))
        .chain(kept)
        .collect();
    let services: Vec<Service> = all.iter().map(|(s, _)| s.clone()).collect();
    let order = crate::order::plan(&services);
    for (id, why) in &order.blocked {
        if !in_force.contains_key(&id.to_string()) {
            said.push(format!("upkeeper: not starting {id}: {why}"));
        }
    }
    // Startable services in start-up order; blocked ones that already run stay as they are.
    let mut wanted: Vec<&(Service, PathBuf)> = order
        .order
        .iter()
        .filter_map(|id| all.iter().find(|(s, _)| s.id == *id))
        .collect();
    wanted.extend(all.iter().filter(|(s, _)| {
        order.blocked.contains_key(&s.id) && in_force.contains_key(&s.id.to_string())
    }));
    let current: BTreeMap<_, _> = in_force
        .values()
        .map(|m| (m.svc.id.clone(), m.hash.clone()))
        .collect();
    let wanted_services: Vec<Service> = wanted.iter().map(|(s, _)| s.clone()).collect();
    let changes = diff(&current, &wanted_services);
    let configure = wanted
        .into_iter()
        .filter(|(s, _)| !changes.unchanged.contains(&s.id))
        .map(|(svc, file)| Configure {
            waits_for: order
                .after
                .get(&svc.id)
                .map(|n| n.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            svc: svc.clone(),
            file: file.clone(),
        })
        .collect();
    let mut remove = Vec::new();
    for id in &changes.gone {
        let Some(m) = in_force.get(&id.to_string()) else {
            continue;
        };
        if m.svc.unconfigure_on_file_removal {
            remove.push((id.to_string(), m.file.clone()));
        } else {
            said.push(format!(
                "upkeeper: keeping {id}: its definition is gone, and UnconfigureOnFileRemoval is false"
            ));
        }
    }
    Plan {
        configure,
        remove,
        changes,
        said,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn services(file: &str, text: &str) -> Vec<(Service, PathBuf)> {
        let path = PathBuf::from(file);
        let defaults = upk_core::config::parse_controller("{}", Path::new("c.conf"))
            .expect("defaults")
            .service_defaults;
        upk_core::config::parse_services(text, &path, &defaults)
            .expect("valid")
            .into_iter()
            .map(|s| (s, path.clone()))
            .collect()
    }

    fn in_force(list: &[(Service, PathBuf)]) -> BTreeMap<String, InForce> {
        list.iter()
            .map(|(svc, file)| {
                let m = InForce {
                    svc: svc.clone(),
                    hash: config_hash(svc),
                    file: file.clone(),
                };
                (svc.id.to_string(), m)
            })
            .collect()
    }

    fn scan(list: Vec<(Service, PathBuf)>) -> Scan {
        Scan {
            services: list,
            ..Scan::default()
        }
    }

    fn ids(p: &Plan) -> Vec<String> {
        p.configure.iter().map(|c| c.svc.id.to_string()).collect()
    }

    #[test]
    fn new_services_come_in_start_up_order_with_what_they_wait_for() {
        let list = services(
            "a.conf",
            r#"{ "web": { ExecStart: "x", Prerequisites: ["db"] }, "db": { ExecStart: "x" } }"#,
        );
        let p = plan(&BTreeMap::new(), &mut BTreeMap::new(), scan(list));
        assert_eq!(ids(&p), ["db", "web"]);
        assert_eq!(p.configure[1].waits_for, ["db"]);
        assert!(p.configure[0].waits_for.is_empty());
        assert_eq!(p.changes.added.len(), 2);
        assert!(p.remove.is_empty() && p.said.is_empty());
    }

    #[test]
    fn only_changed_definitions_are_configured_again() {
        let old = services(
            "a.conf",
            r#"{ "a": { ExecStart: "x" }, "b": { ExecStart: "y" } }"#,
        );
        let new = services(
            "a.conf",
            r#"{ "a": { ExecStart: "x" }, "b": { ExecStart: "z" } }"#,
        );
        let p = plan(&in_force(&old), &mut BTreeMap::new(), scan(new));
        assert_eq!(ids(&p), ["b"]);
        assert_eq!(p.changes.unchanged.len(), 1);
        assert_eq!(p.changes.changed.len(), 1);
    }

    #[test]
    fn a_gone_definition_unconfigures_only_with_unconfigure_on_file_removal() {
        let old = services(
            "a.conf",
            r#"{ "keep": { ExecStart: "x" }, "drop": { ExecStart: "x", UnconfigureOnFileRemoval: true } }"#,
        );
        let p = plan(&in_force(&old), &mut BTreeMap::new(), scan(Vec::new()));
        assert!(p.configure.is_empty());
        assert_eq!(p.remove, [("drop".to_owned(), PathBuf::from("a.conf"))]);
        assert_eq!(p.said.len(), 1);
        assert!(p.said[0].contains("keeping keep"), "{:?}", p.said);
    }

    #[test]
    fn the_services_of_a_bad_file_stay_as_they_are() {
        let old = services("bad.conf", r#"{ "a": { ExecStart: "x" } }"#);
        let bad = Scan {
            bad_files: vec![PathBuf::from("bad.conf")],
            errors: vec!["bad.conf:1:1: nonsense".into()],
            ..Scan::default()
        };
        let p = plan(&in_force(&old), &mut BTreeMap::new(), bad);
        assert!(p.configure.is_empty() && p.remove.is_empty());
        assert_eq!(p.changes.unchanged.len(), 1);
        assert_eq!(p.said, ["bad.conf:1:1: nonsense"]);
    }

    #[test]
    fn an_unconfigured_service_stays_out_until_its_definition_changes() {
        let same = services("a.conf", r#"{ "a": { ExecStart: "x" } }"#);
        let out_a = Unconfigured {
            hash: config_hash(&same[0].0),
            stamp: None,
        };
        let mut out = BTreeMap::from([("a".to_owned(), out_a)]);
        let p = plan(&BTreeMap::new(), &mut out, scan(same));
        assert!(p.configure.is_empty());
        assert!(out.contains_key("a"), "still out");
        let changed = services("a.conf", r#"{ "a": { ExecStart: "y" } }"#);
        let p = plan(&BTreeMap::new(), &mut out, scan(changed));
        assert_eq!(ids(&p), ["a"]);
        assert!(out.is_empty(), "back in");
    }

    #[test]
    fn an_unconfigured_service_comes_back_when_its_file_is_written_again() {
        let dir = std::env::temp_dir().join(format!("upk-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("a.conf");
        std::fs::write(&file, "old").expect("write");
        let stamp = FileStamp::of(&file);
        let same = services(
            file.to_str().expect("utf8"),
            r#"{ "a": { ExecStart: "x" } }"#,
        );
        let hash = config_hash(&same[0].0);
        let mut out = BTreeMap::from([("a".to_owned(), Unconfigured { hash, stamp })]);
        let stamped = |list: Vec<(Service, PathBuf)>| Scan {
            stamps: BTreeMap::from([(file.clone(), FileStamp::of(&file).expect("stamp"))]),
            ..scan(list)
        };
        let p = plan(&BTreeMap::new(), &mut out, stamped(same.clone()));
        assert!(p.configure.is_empty(), "the same file: still out");
        // A package's reinstall: the same definition, renamed over the old file.
        let tmp = dir.join(".a.conf.tmp");
        std::fs::write(&tmp, "old").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        let p = plan(&BTreeMap::new(), &mut out, stamped(same));
        assert_eq!(ids(&p), ["a"]);
        assert!(out.is_empty(), "back in");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_blocked_service_is_not_set_up_but_one_in_force_stays() {
        let list = services(
            "a.conf",
            r#"{ "new": { ExecStart: "x", Prerequisites: ["nowhere"] }, "old": { ExecStart: "x", Prerequisites: ["nowhere"] } }"#,
        );
        let old = in_force(&list[1..]);
        let p = plan(&old, &mut BTreeMap::new(), scan(list));
        assert!(p.configure.is_empty(), "{:?}", ids(&p));
        assert!(p.remove.is_empty(), "old stays");
        assert_eq!(p.said.len(), 1);
        assert!(p.said[0].contains("not starting new"), "{:?}", p.said);
    }
}
