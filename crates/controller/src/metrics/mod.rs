//! Prometheus metrics: `GET /metrics` on `MetricsListen` (docs/metrics.md), served inside the
//! controller's one loop.
//!
//! [`observe`] keeps what the series say, in memory, as the loop sees statuses, records and
//! commits; [`render`] writes it in the text exposition format; [`http`] reads requests (pure,
//! fuzzed); [`endpoint`] owns the listener and the connections. A scrape is answered from
//! memory: it never waits for the store, a peer or a file, and its cost is the render
//! (bench/metrics.py). The counters come from the store's `counters` table (read once at
//! start-up, then handed back by each commit), so they never go backwards across buddy or
//! controller restarts.

pub mod endpoint;
pub mod http;
pub mod observe;
pub mod render;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use crate::fleet::Fleet;
use crate::store::Counters;
pub use endpoint::Endpoint;
pub use observe::Observed;
use render::{ControllerView, ServiceView};

/// gzip-encodes `data` at the fastest level: a scrape's text shrinks about tenfold even so,
/// and the loop spends the least time on it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 8),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The endpoint and what it serves.
pub struct Metrics {
    /// The sockets.
    pub endpoint: Endpoint,
    /// The series' state.
    pub observed: Observed,
    started_us: i64,
}

impl Metrics {
    /// Binds `addr` and starts from the store's `counters`.
    pub fn start(addr: SocketAddr, counters: Counters) -> std::io::Result<Metrics> {
        Ok(Metrics {
            endpoint: Endpoint::bind(addr)?,
            observed: Observed::new(counters),
            started_us: upk_core::time::wall_us(),
        })
    }

    /// The connection `token` is ready; a scrape renders `fleet` and what was observed.
    pub fn ready(&mut self, token: u64, now: Instant, fleet: &Fleet, clients: usize) {
        let (observed, started_us) = (&self.observed, self.started_us);
        let mut make = || {
            let view = ControllerView {
                clients,
                queue_depth: fleet.writer.queued(),
                start_time_us: started_us,
            };
            render::render(&services(fleet), observed, &view)
        };
        self.endpoint.ready(token, now, &mut make);
    }
}

/// The configured services, as [`render`] wants them.
pub fn services<'a>(fleet: &'a Fleet) -> Vec<ServiceView<'a>> {
    let linked: std::collections::HashSet<&str> =
        fleet.links.iter().map(|l| l.service.as_str()).collect();
    fleet
        .members
        .iter()
        .map(|(id, m)| ServiceView {
            id: id.as_str(),
            health_check: m.svc.health_check.is_some(),
            linked: linked.contains(id.as_str()),
        })
        .collect()
}
