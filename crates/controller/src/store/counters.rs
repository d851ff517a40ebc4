//! The counters metrics are made of (table `counters`, made by the migration `COUNTERS`): per
//! service, the events stored, the records lost, the automatic restarts and the deaths by
//! reason. A trigger counts each event row as it is inserted and retention never deletes a
//! counter, so every value only grows: across buddy restarts, controller restarts and pruning.
//! The controller reads them
//! all once at start-up ([`Store::counters`]) and, after each commit, those of the services
//! the commit stored rows for (in [`Committed::counters`](super::Committed)), so a scrape is
//! answered from memory.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::{Result, Store};

/// One service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Event rows stored.
    pub events: u64,
    /// Records lost (the counts of its `lost` rows).
    pub lost: u64,
    /// Automatic restarts: starts and failed starts by the restart policy or after the failed
    /// cool-down.
    pub restarts: u64,
    /// Deaths by reason (`upk_core::death::Reason`'s names; `unknown` for records without one).
    pub deaths: BTreeMap<String, u64>,
}

/// Every service's counters, and the store's totals (services removed since included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// By service id, for services the store does not mark removed.
    pub services: BTreeMap<String, ServiceCounters>,
    /// Event rows ever stored.
    pub events: u64,
    /// Records ever lost.
    pub lost: u64,
}

fn add(c: &mut ServiceCounters, name: &str, label: String, value: i64) {
    let v = u64::try_from(value).unwrap_or(0);
    match name {
        "events" => c.events = v,
        "lost" => c.lost = v,
        "restarts" => c.restarts = v,
        "deaths" => drop(c.deaths.insert(label, v)),
        _ => {}
    }
}

/// The counters of `service` (all zero when it has none).
pub(crate) fn of_service(conn: &Connection, service: &str) -> Result<ServiceCounters> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.name, c.label, c.value FROM counters c JOIN services s ON s.id = c.service_id \
         WHERE s.service = ?1",
    )?;
    let mut c = ServiceCounters::default();
    let mut rows = stmt.query([service])?;
    while let Some(r) = rows.next()? {
        add(&mut c, &r.get::<_, String>(0)?, r.get(1)?, r.get(2)?);
    }
    Ok(c)
}

impl Store {
    /// Every counter: what the controller starts its metrics from.
    pub fn counters(&self) -> Result<Counters> {
        let mut all = Counters::default();
        let mut stmt = self.conn.prepare(
            "SELECT s.service, s.removed_us IS NOT NULL, c.name, c.label, c.value \
             FROM counters c JOIN services s ON s.id = c.service_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (service, removed, name): (String, bool, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            let value: i64 = r.get(4)?;
            let v = u64::try_from(value).unwrap_or(0);
            match name.as_str() {
                "events" => all.events = all.events.saturating_add(v),
                "lost" => all.lost = all.lost.saturating_add(v),
                _ => {}
            }
            if !removed {
                add(
                    all.services.entry(service).or_default(),
                    &name,
                    r.get(3)?,
                    value,
                );
            }
        }
        Ok(all)
    }

    /// The counters of one service (tests, tools).
    pub fn service_counters(&self, service: &str) -> Result<ServiceCounters> {
        of_service(&self.conn, service)
    }
}
