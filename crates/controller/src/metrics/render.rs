//! The Prometheus text exposition format (version 0.0.4) of what [`Observed`] holds: one
//! family at a time (`# HELP`, `# TYPE`, then its samples, as the format requires), each
//! service's samples labelled `service` (its id) and `package` (the part before `::`, empty
//! without one). Pure and allocation-light: one `String`, the label pairs made once per
//! render. docs/metrics.md lists the series.

use std::fmt::Write;

use super::observe::{Live, Observed};
use upk_core::event::{Exit, Health, StateName};

/// Every state, in the order `upkeeper_service_state` lists them.
pub const STATES: [StateName; 7] = [
    StateName::Stopped,
    StateName::Running,
    StateName::Ready,
    StateName::Stopping,
    StateName::Backoff,
    StateName::Paused,
    StateName::Failed,
];

/// Every health, in the order `upkeeper_service_health` lists them.
pub const HEALTHS: [Health; 3] = [Health::Unknown, Health::Healthy, Health::Unhealthy];

/// A configured service, as the fleet knows it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceView<'a> {
    /// Its id (`name` or `package::name`).
    pub id: &'a str,
    /// It has a `HealthCheck`.
    pub health_check: bool,
    /// The controller holds a link to its buddy.
    pub linked: bool,
}

/// The controller's own gauges, read when the scrape comes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControllerView {
    /// Clients connected to the controller's socket.
    pub clients: usize,
    /// Items queued for the store's writer thread.
    pub queue_depth: u64,
    /// When the controller started, wall microseconds.
    pub start_time_us: i64,
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A decimal integer, without the formatting machinery (a scrape writes thousands).
fn int(out: &mut String, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// One sample: `name{labels,key="value"} v`; `extra` is the `(key, value)` of a one-hot family
/// (a value that needs no escaping).
fn sample(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, v: i64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    if let Some((key, value)) = extra {
        out.push(',');
        out.push_str(key);
        out.push_str("=\"");
        out.push_str(value);
        out.push('"');
    }
    out.push_str("} ");
    int(out, v);
    out.push('\n');
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// Seconds from wall microseconds, exactly (no float rounding of the microseconds); a time
/// before the epoch (a clock gone wrong) is 0.
fn seconds(out: &mut String, us: i64) {
    let us = us.max(0);
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    int(out, s);
    if frac != 0 {
        let mut digits = [0u8; 6];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let end = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[..end]).unwrap_or(""));
    }
}

/// Renders every series.
pub fn render(services: &[ServiceView], o: &Observed, c: &ControllerView) -> String {
    let mut out = String::with_capacity(256 + services.len() * 1200);
    // `service="...",package="..."` for each service, made once.
    let labels: Vec<String> = services
        .iter()
        .map(|s| {
            let mut l = String::from("service=\"");
            escape(&mut l, s.id);
            l.push_str("\",package=\"");
            escape(&mut l, s.id.split_once("::").map_or("", |(p, _)| p));
            l.push('"');
            l
        })
        .collect();
    let lives: Vec<Option<&Live>> = services.iter().map(|s| o.live(s.id)).collect();
    let each = |out: &mut String, name: &str, value: &dyn Fn(usize) -> Option<i64>| {
        for (i, l) in labels.iter().enumerate() {
            if let Some(v) = value(i) {
                sample(out, name, l, None, v);
            }
        }
    };
    let flag = |b: bool| Some(i64::from(b));

    family(
        &mut out,
        "upkeeper_service_up",
        "gauge",
        "1 while the service's main process runs (state running or ready).",
    );
    each(&mut out, "upkeeper_service_up", &|i| {
        flag(lives[i].is_some_and(Live::up))
    });

    family(
        &mut out,
        "upkeeper_service_state",
        "gauge",
        "The service's state, one-hot: 1 for the state it is in, 0 for the others (all 0 before its buddy answered).",
    );
    for (i, l) in labels.iter().enumerate() {
        let now = lives[i].and_then(|l| l.state);
        for s in STATES {
            let v = i64::from(now == Some(s));
            let name = "upkeeper_service_state";
            sample(&mut out, name, l, Some(("state", s.as_str())), v);
        }
    }

    family(
        &mut out,
        "upkeeper_service_ready",
        "gauge",
        "1 while the service serves: ready, or running without a readiness protocol.",
    );
    each(&mut out, "upkeeper_service_ready", &|i| {
        flag(lives[i].is_some_and(Live::ready))
    });

    family(
        &mut out,
        "upkeeper_service_health",
        "gauge",
        "The health checks' verdict, one-hot (services with a HealthCheck only); unknown until a verdict and while not running.",
    );
    for (i, l) in labels.iter().enumerate() {
        if !services[i].health_check {
            continue;
        }
        let live = lives[i];
        let now = match live {
            Some(l) if l.up() => l.health.unwrap_or(Health::Unknown),
            _ => Health::Unknown,
        };
        for h in HEALTHS {
            let v = i64::from(now == h);
            let name = "upkeeper_service_health";
            sample(&mut out, name, l, Some(("health", h.as_str())), v);
        }
    }

    family(
        &mut out,
        "upkeeper_service_linked",
        "gauge",
        "1 while the controller holds an event link to the service's buddy (0: the other series may be stale).",
    );
    each(&mut out, "upkeeper_service_linked", &|i| {
        flag(services[i].linked)
    });

    family(
        &mut out,
        "upkeeper_service_restarts_total",
        "counter",
        "Automatic restarts (by the restart policy or after the failed cool-down), as stored in the audit store.",
    );
    each(&mut out, "upkeeper_service_restarts_total", &|i| {
        let n = o.counters(services[i].id).map_or(0, |c| c.restarts);
        Some(i64::try_from(n).unwrap_or(i64::MAX))
    });

    family(
        &mut out,
        "upkeeper_service_deaths_total",
        "counter",
        "Deaths of the service's main process by reason (docs/insight.md), as stored; a reason appears once it happened.",
    );
    for (i, l) in labels.iter().enumerate() {
        let Some(c) = o.counters(services[i].id) else {
            continue;
        };
        for (reason, n) in &c.deaths {
            out.push_str("upkeeper_service_deaths_total{");
            out.push_str(l);
            out.push_str(",reason=\"");
            escape(&mut out, reason);
            out.push_str("\"} ");
            int(&mut out, i64::try_from(*n).unwrap_or(i64::MAX));
            out.push('\n');
        }
    }

    family(
        &mut out,
        "upkeeper_service_start_time_seconds",
        "gauge",
        "Start time of the service's current run, seconds since the epoch; 0 while it does not run.",
    );
    for (i, l) in labels.iter().enumerate() {
        out.push_str("upkeeper_service_start_time_seconds{");
        out.push_str(l);
        out.push_str("} ");
        seconds(
            &mut out,
            lives[i].and_then(|l| l.run_started_us).unwrap_or(0),
        );
        out.push('\n');
    }

    family(
        &mut out,
        "upkeeper_service_last_exit_code",
        "gauge",
        "Exit code of the service's last run, when it exited (absent when it was killed by a signal).",
    );
    each(
        &mut out,
        "upkeeper_service_last_exit_code",
        &|i| match lives[i].and_then(|l| l.last_exit) {
            Some(Exit::Exited { code }) => Some(i64::from(code)),
            _ => None,
        },
    );

    family(
        &mut out,
        "upkeeper_service_last_exit_signal",
        "gauge",
        "Signal number that killed the service's last run (absent when it exited).",
    );
    each(
        &mut out,
        "upkeeper_service_last_exit_signal",
        &|i| match lives[i].and_then(|l| l.last_exit) {
            Some(Exit::Killed { signal, .. }) => Some(i64::from(signal)),
            _ => None,
        },
    );

    family(
        &mut out,
        "upkeeper_service_crash_looping",
        "gauge",
        "1 while restarts are paused or given up, or the restart policy counts 2 or more failures in a row not yet forgiven by a stable run.",
    );
    each(&mut out, "upkeeper_service_crash_looping", &|i| {
        flag(lives[i].is_some_and(Live::crash_looping))
    });

    family(
        &mut out,
        "upkeeper_build_info",
        "gauge",
        "Always 1; the controller's version as a label.",
    );
    let _ = writeln!(
        out,
        "upkeeper_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "upkeeper_start_time_seconds",
        "gauge",
        "When the controller started, seconds since the epoch (its own counters start from 0 then).",
    );
    out.push_str("upkeeper_start_time_seconds ");
    seconds(&mut out, c.start_time_us);
    out.push('\n');
    let plain: [(&str, &str, &str, u64); 6] = [
        (
            "upkeeper_services",
            "gauge",
            "Services configured.",
            services.len() as u64,
        ),
        (
            "upkeeper_events_stored_total",
            "counter",
            "Event records ever stored in the audit store (kept across controller restarts and retention).",
            o.events_stored,
        ),
        (
            "upkeeper_events_lost_total",
            "counter",
            "Event records ever lost before they reached the store (ring overflow, a buddy killed with records pending), as the store counts them.",
            o.events_lost,
        ),
        (
            "upkeeper_store_queue_depth",
            "gauge",
            "Records, commands and configuration changes queued for the store's writer thread, not yet in a transaction.",
            c.queue_depth,
        ),
        (
            "upkeeper_store_write_errors_total",
            "counter",
            "Store transactions that failed since the controller started (their events stay with the buddies and are sent again).",
            o.write_errors,
        ),
        (
            "upkeeper_clients_connected",
            "gauge",
            "Clients connected to the controller's socket (upkctl, uptop, subscribers).",
            c.clients as u64,
        ),
    ];
    for (name, kind, help, v) in plain {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Counters, ServiceCounters};

    #[test]
    fn every_family_has_help_and_type_and_samples_follow_their_family() {
        let mut counters = Counters::default();
        let mut web = ServiceCounters {
            restarts: 2,
            ..ServiceCounters::default()
        };
        web.deaths.insert("signal".into(), 2);
        counters.services.insert("pkg::web".into(), web);
        let o = Observed::new(counters);
        let services = [
            ServiceView {
                id: "pkg::web",
                health_check: true,
                linked: true,
            },
            ServiceView {
                id: "db",
                health_check: false,
                linked: false,
            },
        ];
        let c = ControllerView {
            clients: 1,
            queue_depth: 0,
            start_time_us: 1_700_000_000_250_000,
        };
        let text = render(&services, &o, &c);
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().expect("name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                assert_eq!(Some(&name.to_owned()), families.last(), "{line}");
            }
        }
        let unique: std::collections::BTreeSet<_> = families.iter().collect();
        assert_eq!(unique.len(), families.len(), "a family twice");
        assert!(text
            .contains("upkeeper_service_restarts_total{service=\"pkg::web\",package=\"pkg\"} 2\n"));
        assert!(text.contains("upkeeper_service_restarts_total{service=\"db\",package=\"\"} 0\n"));
        assert!(text.contains(
            "upkeeper_service_deaths_total{service=\"pkg::web\",package=\"pkg\",reason=\"signal\"} 2\n"
        ));
        assert!(text.contains(
            "upkeeper_service_health{service=\"pkg::web\",package=\"pkg\",health=\"unknown\"} 1\n"
        ));
        assert!(!text.contains("upkeeper_service_health{service=\"db\""));
        assert!(text.contains("upkeeper_start_time_seconds 1700000000.25\n"));
        assert!(text.contains("upkeeper_build_info{version=\""));
        assert_eq!(
            text.matches("upkeeper_service_state{service=\"db\"")
                .count(),
            7
        );
    }

    #[test]
    fn label_values_are_escaped_and_seconds_are_exact() {
        let mut s = String::new();
        escape(&mut s, "a\\b\"c\nd");
        assert_eq!(s, "a\\\\b\\\"c\\nd");
        for (v, text) in [
            (0, "0"),
            (7, "7"),
            (-42, "-42"),
            (i64::MAX, "9223372036854775807"),
        ] {
            let mut s = String::new();
            int(&mut s, v);
            assert_eq!(s, text);
        }
        let mut s = String::new();
        int(&mut s, i64::MIN);
        assert_eq!(s, i64::MIN.to_string());
        for (us, text) in [
            (0, "0"),
            (1_500_000, "1.5"),
            (1, "0.000001"),
            (-1, "0"),
            (1_700_000_000_120_300, "1700000000.1203"),
        ] {
            let mut s = String::new();
            seconds(&mut s, us);
            assert_eq!(s, text);
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::store::{Counters, ServiceCounters};

    /// `cargo test --release -p upkeeper --lib render_time -- --ignored --nocapture`: the
    /// render alone for 1,000 services (bench/metrics.py measures whole scrapes).
    #[test]
    #[ignore = "a measurement, not a test: run it by hand with --release -- --ignored --nocapture"]
    fn render_time_of_1000_services() {
        let ids: Vec<String> = (0..1000).map(|i| format!("bench::svc-{i:04}")).collect();
        let mut counters = Counters::default();
        for id in &ids {
            let mut c = ServiceCounters::default();
            c.deaths.insert("signal".into(), 1);
            counters.services.insert(id.clone(), c);
        }
        let o = Observed::new(counters);
        let views: Vec<ServiceView> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| ServiceView {
                id,
                health_check: i % 10 == 0,
                linked: true,
            })
            .collect();
        let c = ControllerView::default();
        let mut best = std::time::Duration::MAX;
        let mut len = 0;
        for _ in 0..50 {
            let t = std::time::Instant::now();
            let text = render(&views, &o, &c);
            best = best.min(t.elapsed());
            len = text.len();
        }
        let t = std::time::Instant::now();
        let z = super::super::gzip(render(&views, &o, &c).as_bytes()).len();
        eprintln!(
            "render: {best:?} for {len} bytes; render + gzip: {:?}, {z} bytes",
            t.elapsed()
        );
    }
}
