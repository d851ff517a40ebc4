//! Start-up order: which services may start, in what order, and which wait on what.
//!
//! A service *provides* its explicit `Provides` entries plus, implicitly, its id (`name` or
//! `package::name`), its name, its package, `package:name` and, when it has one, its UUID and
//! `uuid#<uuid>`. A `Prerequisites` entry names something provided; every configured service
//! that provides it must start first (waiting for all providers is the deterministic choice:
//! "any one of them" would depend on which happened to be up). Among services whose
//! prerequisites are met, lower `StartPriority` starts first, then the id decides, so the order
//! is a pure function of the configuration.
//!
//! Nothing here hangs on bad input: a prerequisite nobody provides blocks its service (and
//! everything behind it), a cycle blocks its members (and everything behind them), and the
//! rest of the fleet is planned as usual. [`plan`] is pure and unit-tested.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use upk_core::config::{Service, ServiceId};

/// Why a service cannot be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// No configured service provides this prerequisite.
    Missing(String),
    /// The service is part of a dependency cycle with these members (in id order).
    Cycle(Vec<ServiceId>),
    /// It waits, directly or not, for this blocked service.
    Behind(ServiceId),
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Missing(p) => {
                write!(f, "prerequisite {p:?} is provided by no configured service")
            }
            Blocker::Cycle(members) => {
                let names: Vec<String> = members.iter().map(ToString::to_string).collect();
                write!(f, "prerequisites form a cycle: {}", names.join(" -> "))
            }
            Blocker::Behind(id) => write!(f, "waits for {id}, which cannot start"),
        }
    }
}

/// The start-up plan of a set of services.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Every startable service, prerequisites first, then by priority and id.
    pub order: Vec<ServiceId>,
    /// For each startable service, the services that must be running before it starts.
    pub after: BTreeMap<ServiceId, BTreeSet<ServiceId>>,
    /// Services that cannot start, and why.
    pub blocked: BTreeMap<ServiceId, Blocker>,
}

/// Everything `svc` provides, explicit and implied.
pub fn provides(svc: &Service) -> Vec<String> {
    let mut out = svc.provides.clone();
    out.push(svc.id.to_string());
    out.push(svc.id.name().to_owned());
    if let Some(p) = svc.id.package() {
        out.push(p.to_owned());
        out.push(format!("{p}:{}", svc.id.name()));
    }
    if let Some(u) = &svc.uuid {
        out.push(u.clone());
        out.push(format!("uuid#{u}"));
    }
    out
}

/// Plans the start-up of `services`.
pub fn plan(services: &[Service]) -> Plan {
    let mut providers: BTreeMap<String, BTreeSet<ServiceId>> = BTreeMap::new();
    for svc in services {
        for p in provides(svc) {
            providers.entry(p).or_default().insert(svc.id.clone());
        }
    }
    let mut plan = Plan::default();
    // Edges: service -> the services it waits for (never itself: providing what one needs is
    // not a dependency).
    let mut deps: BTreeMap<ServiceId, BTreeSet<ServiceId>> = BTreeMap::new();
    for svc in services {
        let mut mine = BTreeSet::new();
        for pre in &svc.prerequisites {
            match providers.get(pre) {
                Some(ids) => mine.extend(ids.iter().filter(|id| **id != svc.id).cloned()),
                None => {
                    plan.blocked
                        .entry(svc.id.clone())
                        .or_insert_with(|| Blocker::Missing(pre.clone()));
                }
            }
        }
        deps.insert(svc.id.clone(), mine);
    }
    let priority: BTreeMap<&ServiceId, i64> =
        services.iter().map(|s| (&s.id, s.start_priority)).collect();

    // Kahn's algorithm over the services not blocked yet, smallest (priority, id) first.
    let mut waiting: BTreeMap<ServiceId, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&ServiceId, Vec<&ServiceId>> = BTreeMap::new();
    for (id, ds) in &deps {
        waiting.insert(id.clone(), ds.len());
        for d in ds {
            dependents.entry(d).or_default().push(id);
        }
    }
    let mut ready: BinaryHeap<Reverse<(i64, ServiceId)>> = waiting
        .iter()
        .filter(|(id, n)| **n == 0 && !plan.blocked.contains_key(*id))
        .map(|(id, _)| Reverse((priority[id], id.clone())))
        .collect();
    while let Some(Reverse((_, id))) = ready.pop() {
        for dep in dependents.get(&id).into_iter().flatten() {
            let n = waiting.get_mut(*dep).expect("every service has a count");
            *n -= 1;
            if *n == 0 && !plan.blocked.contains_key(*dep) {
                ready.push(Reverse((priority[*dep], (*dep).clone())));
            }
        }
        plan.after.insert(id.clone(), deps[&id].clone());
        plan.order.push(id);
    }

    // What is left is blocked: missing prerequisites (already noted), cycles, or behind either.
    let placed: BTreeSet<&ServiceId> = plan.order.iter().collect();
    let left: Vec<ServiceId> = deps
        .keys()
        .filter(|id| !placed.contains(id))
        .cloned()
        .collect();
    for cycle in cycles(&left, &deps) {
        for id in &cycle {
            plan.blocked
                .entry(id.clone())
                .or_insert_with(|| Blocker::Cycle(cycle.clone()));
        }
    }
    for id in &left {
        if !plan.blocked.contains_key(id) {
            let culprit = first_blocked(id, &deps, &plan.blocked);
            plan.blocked.insert(id.clone(), Blocker::Behind(culprit));
        }
    }
    plan
}

/// Strongly connected components of size > 1 (or with a self-edge) among `nodes` (Tarjan).
fn cycles(
    nodes: &[ServiceId],
    deps: &BTreeMap<ServiceId, BTreeSet<ServiceId>>,
) -> Vec<Vec<ServiceId>> {
    struct Tarjan<'a> {
        deps: &'a BTreeMap<ServiceId, BTreeSet<ServiceId>>,
        inside: BTreeSet<&'a ServiceId>,
        index: BTreeMap<&'a ServiceId, usize>,
        low: BTreeMap<&'a ServiceId, usize>,
        stack: Vec<&'a ServiceId>,
        on_stack: BTreeSet<&'a ServiceId>,
        found: Vec<Vec<ServiceId>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a ServiceId) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            let deps: &'a BTreeMap<ServiceId, BTreeSet<ServiceId>> = self.deps;
            let next: Vec<&'a ServiceId> =
                deps[v].iter().filter(|w| self.inside.contains(w)).collect();
            for w in next {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 || self.deps[v].contains(v) {
                    scc.sort();
                    self.found.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        deps,
        inside: nodes.iter().collect(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            t.visit(n);
        }
    }
    t.found
}

/// The first blocked service `id` waits for, searching its prerequisites breadth first.
fn first_blocked(
    id: &ServiceId,
    deps: &BTreeMap<ServiceId, BTreeSet<ServiceId>>,
    blocked: &BTreeMap<ServiceId, Blocker>,
) -> ServiceId {
    let mut seen = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([id.clone()]);
    while let Some(v) = queue.pop_front() {
        for d in &deps[&v] {
            if blocked.contains_key(d) {
                return d.clone();
            }
            if seen.insert(d.clone()) {
                queue.push_back(d.clone());
            }
        }
    }
    id.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn services(src: &str) -> Vec<Service> {
        upk_core::config::parse_services(src, Path::new("t.conf"), &Default::default())
            .expect("valid")
    }

    fn ids(v: &[ServiceId]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn prerequisites_then_priority_then_id() {
        let s = services(
            r#"{
            "web": { ExecStart: "x", Prerequisites: ["db", "cache"] },
            "pg::db": { ExecStart: "x", StartPriority: 5 },
            "cache": { ExecStart: "x", Provides: ["memcached"], StartPriority: 1 },
            "zz": { ExecStart: "x", StartPriority: -1 },
            "aa": { ExecStart: "x" },
            "worker": { ExecStart: "x", Prerequisites: ["pg:db", "memcached"] },
        }"#,
        );
        let p = plan(&s);
        assert!(p.blocked.is_empty(), "{:?}", p.blocked);
        assert_eq!(
            ids(&p.order),
            ["zz", "aa", "cache", "pg::db", "web", "worker"]
        );
        let web = &p.after[&ServiceId::parse("web").expect("id")];
        assert_eq!(
            ids(&web.iter().cloned().collect::<Vec<_>>()),
            ["cache", "pg::db"]
        );
    }

    #[test]
    fn uuid_prerequisites_resolve() {
        let s = services(
            r#"{
            "a": { ExecStart: "x", UUID: "6a2f41a3-c54c-fce8-32d2-0324e1c32e22" },
            "b": { ExecStart: "x", Prerequisites: ["uuid#6a2f41a3-c54c-fce8-32d2-0324e1c32e22"], StartPriority: -9 },
        }"#,
        );
        assert_eq!(ids(&plan(&s).order), ["a", "b"]);
    }

    #[test]
    fn a_cycle_and_a_missing_prerequisite_block_only_their_part() {
        let s = services(
            r#"{
            "a": { ExecStart: "x", Prerequisites: ["b"] },
            "b": { ExecStart: "x", Prerequisites: ["c"] },
            "c": { ExecStart: "x", Prerequisites: ["a"] },
            "d": { ExecStart: "x", Prerequisites: ["c"] },
            "e": { ExecStart: "x", Prerequisites: ["nothing-provides-this"] },
            "f": { ExecStart: "x", Prerequisites: ["e"] },
            "ok": { ExecStart: "x" },
        }"#,
        );
        let p = plan(&s);
        assert_eq!(ids(&p.order), ["ok"]);
        let id = |s: &str| ServiceId::parse(s).expect("id");
        let cycle = Blocker::Cycle(vec![id("a"), id("b"), id("c")]);
        assert_eq!(p.blocked[&id("a")], cycle);
        assert_eq!(p.blocked[&id("c")], cycle);
        assert_eq!(p.blocked[&id("d")], Blocker::Behind(id("c")));
        assert_eq!(
            p.blocked[&id("e")],
            Blocker::Missing("nothing-provides-this".into())
        );
        assert_eq!(p.blocked[&id("f")], Blocker::Behind(id("e")));
        assert_eq!(
            p.blocked[&id("a")].to_string(),
            "prerequisites form a cycle: a -> b -> c"
        );
    }

    #[test]
    fn all_providers_come_first_and_providing_ones_own_need_is_no_cycle() {
        let s = services(
            r#"{
            "p1": { ExecStart: "x", Provides: ["log"], StartPriority: 3 },
            "p2": { ExecStart: "x", Provides: ["log"], StartPriority: 2 },
            "app": { ExecStart: "x", Prerequisites: ["log"], StartPriority: -5 },
            "selfish": { ExecStart: "x", Provides: ["me"], Prerequisites: ["me"] },
        }"#,
        );
        let p = plan(&s);
        assert!(p.blocked.is_empty(), "{:?}", p.blocked);
        assert_eq!(ids(&p.order), ["selfish", "p2", "p1", "app"]);
    }
}
