//! Windows and sizes at their limits (issue 11): a `--since` in the future, and `audit -n`
//! answered by the controller, not trimmed here.

use super::*;

const ONE: &str = r#"{ "web": { ExecStart: "sleep 1000" } }"#;

#[test]
fn stats_since_a_future_date_is_a_usage_error_and_the_controller_lives() {
    let w = World::new(&[("web.conf", ONE)], &[]);
    w.upkctl(&["stats", "--since", "2999-01-01"])
        .fails(code::USAGE, "is not in the past");
    w.upkctl(&["stats", "web", "--since", "2999-01-01"])
        .fails(code::USAGE, "is not in the past");
    // The controller is still there and answers.
    w.upkctl(&["stats", "web"]).expect(code::OK);
    w.upkctl(&["stats", "--since", "1970-01-01"])
        .expect(code::OK);
}

#[test]
fn audit_last_n_are_the_newest_in_order() {
    let w = World::new(&[("web.conf", ONE)], &[]);
    for _ in 0..5 {
        w.upkctl(&["start", "nope"]).expect(code::NOT_FOUND);
    }
    w.upkctl(&["stop", "web"]).expect(code::OK);
    let all = wait_until(Duration::from_secs(10), "six commands audited", || {
        let rows = w.upkctl(&["audit", "--json", "-n", "0"]).json_lines();
        if rows.len() >= 6 {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    });
    let last = w.upkctl(&["audit", "--json", "-n", "2"]).json_lines();
    assert_eq!(last, all[all.len() - 2..], "the last two, oldest first");
    assert_eq!(last[1]["request"]["type"], "stop");
}

#[test]
fn a_huge_timeout_or_wait_is_a_usage_error_not_a_panic() {
    let w = World::offline(&[("web.conf", ONE)]);
    for args in [
        &["--timeout", "1e300", "list"][..],
        &["ping", "--wait", "1e19"],
        &["--timeout", "inf", "ping"],
        &["ping", "--wait", "0"],
    ] {
        let out = w.upkctl(args);
        assert_eq!(out.code, code::USAGE, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("is not a number of seconds"),
            "{args:?}: {out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}: {out:?}");
    }
}
