//! The controller key `MetricsListen` (docs/metrics.md): off when absent, `:PORT` is loopback,
//! anything else is an address written out in full; bad values are one sentence naming the key.

use std::net::SocketAddr;
use std::path::Path;
use upk_core::config::parse_controller;

fn listen(text: &str) -> Result<Option<SocketAddr>, String> {
    parse_controller(text, Path::new("u.conf"))
        .map(|c| c.metrics_listen)
        .map_err(|e| e.to_string())
}

#[test]
fn metrics_are_off_unless_asked_for() {
    assert_eq!(listen("{}"), Ok(None));
    assert_eq!(listen("{ MetricsListen: Null }"), Ok(None));
}

#[test]
fn a_bare_port_means_loopback_and_other_addresses_are_written_in_full() {
    let addr = |s: &str| Ok(Some(s.parse::<SocketAddr>().expect("addr")));
    assert_eq!(
        listen(r#"{ MetricsListen: ":9477" }"#),
        addr("127.0.0.1:9477")
    );
    assert_eq!(
        listen(r#"{ metricslisten: "127.0.0.1:1" }"#),
        addr("127.0.0.1:1")
    );
    assert_eq!(
        listen(r#"{ MetricsListen: "[::1]:9477" }"#),
        addr("[::1]:9477")
    );
    assert_eq!(
        listen(r#"{ MetricsListen: "0.0.0.0:9477" }"#),
        addr("0.0.0.0:9477")
    );
}

#[test]
fn bad_metrics_addresses_are_one_sentence_naming_the_key() {
    for bad in [
        r#"{ MetricsListen: "localhost:9477" }"#,
        r#"{ MetricsListen: "9477" }"#,
        r#"{ MetricsListen: ":0" }"#,
        r#"{ MetricsListen: ":65536" }"#,
        r#"{ MetricsListen: ":-1" }"#,
        r#"{ MetricsListen: "" }"#,
        r#"{ MetricsListen: 9477 }"#,
        r#"{ MetricsListen: true }"#,
        r#"{ MetricsListen: "127.0.0.1:9477/metrics" }"#,
    ] {
        let e = listen(bad).expect_err(bad);
        assert!(
            e.starts_with("u.conf:1:") && e.contains("MetricsListen: "),
            "{bad}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{bad}: {e}");
    }
    let e = listen(r#"{ MetricsListen: ":0" }"#).expect_err("port 0");
    assert!(
        e.ends_with("has port 0; give a port from 1 to 65535"),
        "{e}"
    );
    let long = format!(r#"{{ MetricsListen: "{}" }}"#, "x".repeat(10_000));
    assert!(
        listen(&long).expect_err("long").len() < 400,
        "a long value is cut"
    );
}
