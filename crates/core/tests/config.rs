//! The configuration loader against real files: the seed's sample verbatim, the dialect's
//! corners, layering and substitution, and every error a fleet operator is likely to make,
//! each reported with file, line and column.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use upk_core::config::{
    load_controller, load_services, parse_controller, parse_services, ConfigErrors, HealthAction,
    HookEvent, IdSpec, InitialState, Readiness, Service, ServiceLayer, SERVICE_KEYS,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies a fixture into a private directory with mode 0644 (a checkout's umask may differ).
fn private_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    fs::copy(fixture(name), &path).expect("copy fixture");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    (dir, path)
}

fn services(src: &str) -> Vec<Service> {
    parse_services(src, Path::new("t.conf"), &ServiceLayer::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn errors(src: &str) -> ConfigErrors {
    parse_services(src, Path::new("t.conf"), &ServiceLayer::default())
        .expect_err("should be refused")
}

/// `(line, column, message)` of each error, for compact assertions.
fn positions(e: &ConfigErrors) -> Vec<(usize, usize, String)> {
    e.0.iter()
        .map(|e| (e.line, e.column, e.message.clone()))
        .collect()
}

#[test]
fn seed_sample_loads_as_a_controller_file() {
    let (_dir, path) = private_copy("seed-sample.conf");
    let c = load_controller(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.state_dir, Path::new("/usr/var/upkeeper"));
    assert_eq!(c.svc_config_path, Path::new("/usr/etc/upkeeper.d"));
    assert_eq!(c.svc_run_path, Path::new("/usr/var/upkeeper/buddies"));
    assert_eq!(c.upk_buddy_path, Path::new("/usr/libexec/upk_buddy"));
    assert_eq!(c.buddy_polling_interval, 0.5);
    let d = &c.service_defaults;
    assert_eq!(d.kill_timeout, Some(60.0));
    assert_eq!(d.ringbuffer_size, Some(64));
    assert_eq!(d.uuid, Some(None));
    assert_eq!(d.exec_start, Some(None));
    assert_eq!(d.set_uid, Some(IdSpec::Id(0)));
    assert_eq!(d.initial_state, Some(InitialState::Stopped));
    // The sample sets every key of the seed (the first 31), to exactly the built-in
    // defaults; the keys upkeeper added later (health, readiness, backoff, hooks, limits) it
    // leaves out.
    assert_eq!(d.over(&ServiceLayer::builtin()), ServiceLayer::builtin());
    assert_eq!(SERVICE_KEYS.len(), 68);
    assert_eq!(SERVICE_KEYS[30], "PreferBuddyStateForRunning");
    assert_eq!((d.health_check.clone(), d.notify.clone()), (None, None));
    let mut only_seed = ServiceLayer::builtin();
    only_seed.health_check = None;
    only_seed.health_interval = None;
    only_seed.health_timeout = None;
    only_seed.health_start_period = None;
    only_seed.health_retries = None;
    only_seed.health_action = None;
    only_seed.readiness = None;
    only_seed.ready_timeout = None;
    only_seed.restart_backoff = None;
    only_seed.restart_delay_max = None;
    only_seed.failed_retry_after = None;
    only_seed.notify = None;
    // Containment and limits (issue 14).
    only_seed.working_directory = None;
    only_seed.environment = None;
    only_seed.environment_file = None;
    only_seed.limit_nofile = None;
    only_seed.limit_nproc = None;
    only_seed.limit_core = None;
    only_seed.limit_as = None;
    only_seed.limit_memlock = None;
    only_seed.limit_stack = None;
    only_seed.limit_cpu = None;
    only_seed.limit_fsize = None;
    only_seed.nice = None;
    only_seed.io_scheduling_class = None;
    only_seed.io_scheduling_priority = None;
    only_seed.oom_score_adjust = None;
    only_seed.umask = None;
    only_seed.no_new_privileges = None;
    only_seed.memory_max = None;
    only_seed.memory_high = None;
    only_seed.cpu_weight = None;
    only_seed.cpu_quota = None;
    only_seed.tasks_max = None;
    // The buddy's own rotating logger (issue 13).
    only_seed.log_max_size = None;
    only_seed.log_keep = None;
    only_seed.log_timestamps = None;
    assert_eq!(*d, only_seed);
}

#[test]
fn seed_sample_as_defaults_for_a_service() {
    let c = parse_controller(
        &fs::read_to_string(fixture("seed-sample.conf")).expect("read"),
        Path::new("/x/u.conf"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let s = parse_services(
        r#"{"sleeper": {"ExecStart": "sleep 100"}}"#,
        Path::new("s.conf"),
        &c.service_defaults,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s[0].start_script, "#!/bin/sh\nexec sleep 100\n");
    assert_eq!(s[0].stop_script, "#!/bin/sh\nexec kill $1\n");
    assert_eq!(s[0].reload_script, "#!/bin/sh\nexec kill -HUP $1\n");
    assert_eq!(s[0].reconnect_retries, 10);
    assert!(s[0].prefer_buddy_state_for_running);
}

#[test]
fn two_services_layered_over_controller_defaults() {
    let (_d1, ctl) = private_copy("defaults.conf");
    let (_d2, svc) = private_copy("two-services.conf");
    let c = load_controller(&ctl).unwrap_or_else(|e| panic!("{e}"));
    let s = load_services(&svc, &c.service_defaults).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<String> = s.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, ["web", "pkg::db"]);
    let (web, db) = (&s[0], &s[1]);

    // entry over defaults over built-in
    assert_eq!(web.kill_timeout, 2.5);
    assert_eq!(db.kill_timeout, 10.0);
    assert_eq!(web.ringbuffer_size, 128);
    assert_eq!(db.max_consecutive_failures, -1);
    // lists replace, they do not append
    assert_eq!(web.provides, ["http"]);
    assert_eq!(db.provides, ["base"]);
    assert_eq!(web.prerequisites, ["network", "syslog"]);
    assert!(db.prerequisites.is_empty());
    // an explicit Null resets a nullable key that the defaults set
    assert_eq!(web.pipe_stdout_script, None);
    assert_eq!(web.exec_reload, None);

    // substitution, every occurrence, every script
    assert_eq!(
        web.start_script,
        "#!/bin/sh\n# runs /usr/sbin/httpd -f\nexec /usr/sbin/httpd -f\n"
    );
    assert_eq!(web.stop_script, "#!/bin/sh\nexec kill -TERM $1\n");
    assert_eq!(web.reload_script, "#!/bin/sh\nexit 0\n");
    let actions: Vec<(&str, &str)> = web
        .custom_actions
        .iter()
        .map(|a| (a.name.as_str(), a.script.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("rotate", "#!/bin/sh\nexec kill -TERM -USR1 $1\n"),
            ("configtest", "#!/bin/sh\nexec /usr/sbin/httpd -f -t\n"),
        ]
    );
    assert_eq!(
        db.pipe_stdout_script.as_deref(),
        Some("#!/bin/sh\nexec logger -t /usr/bin/postgres -D /var/lib/pg\n")
    );
    assert_eq!(db.reload_script, "#!/bin/sh\nexec kill -HUP $1\n");

    assert_eq!(web.initial_state, InitialState::Running);
    assert_eq!(db.id.package(), Some("pkg"));
    assert_eq!(db.id.name(), "db");
    assert_eq!(
        db.uuid.as_deref(),
        Some("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    );
    assert_eq!(db.set_uid, IdSpec::Name("nobody".into()));
    assert_eq!(db.set_gid, IdSpec::Id(70));
    assert_eq!(
        (db.user_max_restarts, db.user_restart_window),
        (Some(3), Some(60.0))
    );
    assert!(db.randomize_rate_limit);
    assert!(!db.prefer_buddy_state_for_running);
}

#[test]
fn state_dir_given_derives_svc_run_path() {
    let c = parse_controller(
        r#"{"StateDir": "/srv/upk"}"#,
        Path::new("/etc/upkeeper.conf"),
    )
    .expect("valid");
    assert_eq!(c.state_dir, Path::new("/srv/upk"));
    assert_eq!(c.svc_run_path, Path::new("/srv/upk/buddies"));
    assert_eq!(c.socket_path(), Path::new("/srv/upk/upkeeper.sock"));
    let c = parse_controller(
        r#"{"StateDir": "/srv/upk", SvcRunPath: "/run/x"}"#,
        Path::new("/e.conf"),
    )
    .expect("valid");
    assert_eq!(c.svc_run_path, Path::new("/run/x"));
}

#[test]
fn comment_only_files_are_empty() {
    assert!(services("// nothing configured yet\n").is_empty());
    assert!(services("{}").is_empty());
    let c = parse_controller("/* all defaults */", Path::new("/etc/u.conf")).expect("valid");
    assert_eq!(c.buddy_polling_interval, 0.5);
}

#[test]
fn unknown_key_has_position_and_suggestion() {
    let e = errors("{\n  \"web\": {\n    \"KillTimout\": 5,\n    \"ExecStart\": \"x\",\n  },\n}\n");
    assert_eq!(
        e.to_string(),
        "t.conf:3:5: unknown key `KillTimout`; did you mean `KillTimeout`?"
    );
}

#[test]
fn every_error_in_a_file_is_reported() {
    let src = r#"{
  "a": {
    "ExecStart": "x",
    "Frobnicate": 1,
  },
  "b": {
    "ExecStart": "y",
    "KillTimeout": "soon",
  },
  "c": {
    "ExecStart": "z", "InitialState": "up",
  },
}"#;
    let e = errors(src);
    assert_eq!(
        positions(&e),
        [
            (4, 5, "unknown key `Frobnicate`".to_owned()),
            (
                8,
                20,
                "KillTimeout: expected a number, found a string".to_owned()
            ),
            (
                11,
                39,
                "InitialState: must be \"stopped\" or \"running\"".to_owned()
            ),
        ]
    );
    assert_eq!(e.to_string().lines().count(), 3);
}

#[test]
fn syntax_error_reports_its_line() {
    let e = errors("{\n  \"web\": {\n    \"ExecStart\": \"x\"\n    \"KillTimeout\": 5,\n  },\n}\n");
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].line, 4, "{e}");
    assert!(e.0[0].message.starts_with("syntax error"), "{e}");
}

#[test]
fn duplicate_keys_in_any_case_and_duplicate_ids() {
    let e = errors(
        "{\n \"web\": {\n  \"ExecStart\": \"x\",\n  \"execstart\": \"y\",\n },\n \"web\": {},\n}",
    );
    let p = positions(&e);
    assert_eq!(p.len(), 2, "{e}");
    assert_eq!((p[0].0, p[0].1), (4, 3));
    assert!(
        p[0].2
            .contains("duplicate key `execstart` (first given at line 3"),
        "{e}"
    );
    assert_eq!((p[1].0, p[1].1), (6, 2));
    assert!(p[1].2.contains("duplicate service id `web`"), "{e}");
}

#[test]
fn bad_service_id() {
    let e =
        errors("{\n  \"my web\": {\"ExecStart\": \"x\"},\n  \"::db\": {\"ExecStart\": \"x\"},\n}");
    let p = positions(&e);
    assert_eq!((p[0].0, p[0].1), (2, 3));
    assert!(p[0].2.starts_with("bad service id `my web`"), "{e}");
    assert_eq!(p[1].0, 3);
}

#[test]
fn uuid_must_parse_and_be_unique() {
    let e = errors("{\"web\": {\"ExecStart\": \"x\",\n \"UUID\": \"not-a-uuid\"}}");
    assert_eq!((e.0[0].line, e.0[0].column), (2, 10), "{e}");
    assert!(
        e.0[0]
            .message
            .starts_with("UUID: \"not-a-uuid\" is not a valid UUID"),
        "{e}"
    );
    let u = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    let entry = format!(r#"{{"ExecStart": "x", "UUID": "{u}"}}"#);
    let e = errors(&format!("{{\"a\": {entry},\n \"b\": {entry}}}"));
    assert!(
        e.0[0].message.contains("also the UUID of service `a`"),
        "{e}"
    );
}

#[test]
fn missing_exec_start_is_reported_at_the_service() {
    let e = errors("{\n  \"web\": {\n    \"ExecStop\": Null,\n  },\n}");
    assert_eq!(
        positions(&e),
        [
            (
                2,
                3,
                "service `web`: StartScript uses %(EXEC_START) but ExecStart is not set".to_owned()
            ),
            (
                2,
                3,
                "service `web`: StopScript uses %(EXEC_STOP) but ExecStop is not set".to_owned()
            ),
        ]
    );
}

#[test]
fn at_most_32_custom_actions_with_valid_names() {
    let many: Vec<String> = (0..33)
        .map(|i| format!("\"a{i}\": \"#!/bin/sh\\ntrue\\n\""))
        .collect();
    let e = errors(&format!(
        "{{\"web\": {{\"ExecStart\": \"x\",\n \"CustomActions\": {{{}}}}}}}",
        many.join(", ")
    ));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].line, 2);
    assert!(e.0[0].message.contains("at most 32 custom actions"), "{e}");

    let e = errors(
        r#"{"web": {"ExecStart": "x", "CustomActions": {
 "42": "true",
 "../x": "true"}}}"#,
    );
    let p = positions(&e);
    assert_eq!(p.len(), 2, "{e}");
    assert_eq!((p[0].0, p[1].0), (2, 3));
    assert!(p[0].2.contains("must not be all digits"), "{e}");
}

#[test]
fn null_on_a_non_nullable_key_means_not_given() {
    let defaults = parse_controller("{ServiceDefaults: {KillTimeout: 7}}", Path::new("/u.conf"))
        .expect("valid");
    let s = parse_services(
        "{w: {ExecStart: 'x', KillTimeout: Null}}",
        Path::new("t"),
        &defaults.service_defaults,
    )
    .expect("valid");
    assert_eq!(s[0].kill_timeout, 7.0);
}

#[test]
fn controller_errors_are_positioned_in_the_controller_file() {
    let src = r#"{
  "KillTimeout": 5,
  "ServiceDefaults": {
    "RingbufferSize": 1,
    "StateDir": "/x",
  },
  "BuddyPollingInterval": 0,
}"#;
    let e = parse_controller(src, Path::new("/etc/upkeeper.conf")).expect_err("invalid");
    let p = positions(&e);
    assert_eq!(
        p.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
        [(2, 3), (4, 23), (5, 5), (7, 27)],
        "{e}"
    );
    assert!(p[0].2.contains("put it inside ServiceDefaults"), "{e}");
    assert!(p[3].2.contains("greater than 0"), "{e}");
}

#[test]
fn files_others_could_write_are_refused() {
    let (_dir, path) = private_copy("two-services.conf");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
    let e = load_services(&path, &ServiceLayer::default()).expect_err("refused");
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: refusing to read: it is writable by group/others (mode 0666); chmod go-w it",
            path.display()
        )
    );
    let e = load_controller(&path.with_file_name("missing.conf")).expect_err("unreadable");
    assert_eq!(e.0[0].line, 0);
    assert!(e.0[0].message.starts_with("cannot read"), "{e}");
}

#[test]
fn user_max_restarts_of_zero_points_to_the_right_key() {
    let e = errors("{ \"w\": { ExecStart: \"x\", UserMaxRestarts: 0 } }");
    let text = e.to_string();
    assert!(
        text.contains("UserMaxRestarts") && text.contains("MaxConsecutiveFailures: 0"),
        "{text}"
    );
    assert_eq!(
        services("{ \"w\": { ExecStart: \"x\", UserMaxRestarts: 1 } }")[0].user_max_restarts,
        Some(1)
    );
}

#[test]
fn health_readiness_backoff_and_hooks() {
    let defaults = parse_controller(
        r#"{ ServiceDefaults: { Notify: {
               pager: { Run: "page-oncall", On: ["gave_up", "unhealthy"] },
               log: { Run: "logger upkeeper" } } } }"#,
        Path::new("/x/u.conf"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .service_defaults;
    let s = parse_services(
        r#"{ "db": { ExecStart: "db", HealthCheck: "test -e /tmp/ok", HealthRetries: 2,
                     healthaction: "RECORD", Readiness: "fd:3", RestartBackoff: 2,
                     FailedRetryAfter: 60,
                     Notify: { log: Null, mine: { run: "echo $UPK_EVENT", timeout: 1.5 } } } }"#,
        Path::new("s.conf"),
        &defaults,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let db = &s[0];
    assert_eq!(db.health_check.as_deref(), Some("test -e /tmp/ok"));
    assert_eq!((db.health_retries, db.health_interval), (2, 30.0));
    assert_eq!(db.health_action, HealthAction::Record);
    assert_eq!(db.readiness, Readiness::Fd(3));
    assert_eq!(db.ready_timeout, Some(90.0));
    assert_eq!((db.restart_backoff, db.restart_delay_max), (2.0, 300.0));
    assert_eq!(db.failed_retry_after, Some(60.0));
    // Hooks merge by name: the default `pager` stays, `log` is removed, `mine` is added.
    let names: Vec<&str> = db.notify.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["pager", "mine"]);
    assert_eq!(db.notify[0].on, [HookEvent::GaveUp, HookEvent::Unhealthy]);
    assert_eq!(db.notify[1].on, HookEvent::ALL);
    assert_eq!(db.notify[1].timeout, 1.5);

    for (entry, message) in [
        (r#"Readiness: "fd:1""#, "from 3 to 1023"),
        (r#"Readiness: "socket""#, "\"none\", \"fd:N\""),
        (r#"Readiness: "health""#, "needs a HealthCheck"),
        (
            r#"LogMaxSize: "1M", RedirectStdout: "log/all", RedirectStderr: "log/all""#,
            "LogMaxSize needs RedirectStdout and RedirectStderr to be two files",
        ),
        ("RestartBackoff: 0.5", "between 1 and 100"),
        ("HealthRetries: 0", "between 1 and 1000"),
        (r#"Notify: { x: { On: ["failed"] } }"#, "Run is missing"),
        (
            r#"Notify: { x: { Run: "y", On: ["died"] } }"#,
            "unknown event \"died\"",
        ),
        (
            r#"Notify: { x: { Run: "y", When: 1 } }"#,
            "unknown key `When`",
        ),
    ] {
        let text = format!(r#"{{ "a": {{ ExecStart: "a", {entry} }} }}"#);
        let e =
            parse_services(&text, Path::new("s.conf"), &ServiceLayer::default()).expect_err(entry);
        assert!(e.to_string().contains(message), "{entry}: {e}");
    }
}

// Issue 11: every number from outside has an upper bound, every file a size, every substitution
// a result size, and no file type or link makes the loader block or stay silent.

/// The message of the one error a value of `key` gets in a service entry, or `None` if the
/// value is accepted.
fn value_error(key: &str, value: &str) -> Option<String> {
    let src = format!("{{ \"svc\": {{ ExecStart: \"x\", {key}: {value} }} }}");
    match parse_services(&src, Path::new("t.conf"), &ServiceLayer::default()) {
        Ok(_) => None,
        Err(e) => {
            assert_eq!(e.0.len(), 1, "{key}: {value}: {e}");
            let err = &e.0[0];
            assert_eq!(
                (err.line, err.column),
                (1, 30 + key.len()),
                "{key}: {value} points at the value: {e}"
            );
            Some(err.message.clone())
        }
    }
}

#[test]
fn kill_timeout_of_1e20_is_a_config_error() {
    let m = value_error("KillTimeout", "1e20").expect("refused");
    assert_eq!(
        m,
        "KillTimeout: must be at most 31536000 seconds (365 days), found 100000000000000000000"
    );
    assert_eq!(
        value_error("KillTimeout", "-1"),
        None,
        "negative: never SIGKILL"
    );
    assert_eq!(value_error("KillTimeout", "31536000"), None);
}

#[test]
fn every_seconds_key_is_bounded_at_365_days() {
    for key in [
        "KillTimeout",
        "UserRestartWindow",
        "UserRateLimit",
        "HealthInterval",
        "HealthTimeout",
        "HealthStartPeriod",
        "ReadyTimeout",
        "RestartDelayMax",
        "FailedRetryAfter",
    ] {
        for huge in ["1e19", "1e20", "31536000.5", "1.7976931348623157e308"] {
            let m = value_error(key, huge).unwrap_or_else(|| panic!("{key}: {huge} accepted"));
            assert!(m.contains("at most 31536000 seconds"), "{key}: {huge}: {m}");
        }
        assert_eq!(value_error(key, "86400"), None, "{key}: a day is fine");
        let m = value_error(key, "1e999").unwrap_or_else(|| panic!("{key}: 1e999 accepted"));
        assert!(m.contains("out of range"), "{key}: 1e999: {m}");
    }
    // A hook's Timeout too.
    let src = r#"{ "svc": { ExecStart: "x", Notify: { page: { Run: "p", Timeout: 1e20 } } } }"#;
    let e = errors(src);
    assert!(
        e.to_string()
            .contains("Timeout: must be at most 31536000 seconds"),
        "{e}"
    );
}

#[test]
fn every_count_and_priority_is_bounded() {
    let refused = [
        ("StartPriority", "1e15"),
        ("StartPriority", "-3000000000"),
        ("MaxConsecutiveFailures", "4294967296"),
        ("MaxConsecutiveFailures", "1e19"),
        ("ReconnectRetries", "1e19"),
        ("ReconnectRetries", "18446744073709551615"),
        ("UserMaxRestarts", "4294967296"),
        ("RingbufferSize", "1e9"),
        ("HealthRetries", "1e6"),
        ("RestartBackoff", "1e300"),
        ("SetUID", "4294967295"),
        ("SetGID", "1e12"),
        ("Readiness", "\"fd:99999999999999999999\""),
    ];
    for (key, value) in refused {
        assert!(value_error(key, value).is_some(), "{key}: {value} accepted");
    }
    for (key, value) in [
        ("StartPriority", "-2147483648"),
        ("MaxConsecutiveFailures", "4294967295"),
        ("ReconnectRetries", "-1e15"),
        ("UserMaxRestarts", "4294967295"),
    ] {
        assert_eq!(value_error(key, value), None, "{key}: {value}");
    }
    // Any negative means "without limit"; kept as -1 so no counter can wrap on it.
    let s = services(
        r#"{ "a": { ExecStart: "x", ReconnectRetries: -8e15, MaxConsecutiveFailures: -5 } }"#,
    );
    assert_eq!(
        (s[0].reconnect_retries, s[0].max_consecutive_failures),
        (-1, -1)
    );
}

#[test]
fn history_max_age_days_of_1e15_is_a_config_error() {
    let e =
        parse_controller("{ HistoryMaxAgeDays: 1e15 }", Path::new("u.conf")).expect_err("refused");
    assert_eq!(
        e.to_string(),
        "u.conf:1:22: HistoryMaxAgeDays: must be greater than 0 and at most 36500 days, found 1000000000000000"
    );
    for bad in [
        "{ HistoryMaxEvents: 1e19 }",
        "{ HistoryMaxEvents: 18446744073709551615 }",
        "{ BuddyPollingInterval: 1e20 }",
        "{ HistoryMaxAgeDays: 1e999 }",
        "{ ControlGroup: 1e10 }",
    ] {
        assert!(
            parse_controller(bad, Path::new("u.conf")).is_err(),
            "{bad} accepted"
        );
    }
    let c = parse_controller(
        "{ HistoryMaxAgeDays: 36500, HistoryMaxEvents: 1e12, BuddyPollingInterval: 3600 }",
        Path::new("u.conf"),
    )
    .expect("the maxima themselves are fine");
    assert_eq!(c.history_max_events, Some(1_000_000_000_000));
}

/// `ExecStart` holding `%(EXEC_STOP)` a hundred times, `ExecStop` holding `%(EXEC_RELOAD)` a
/// hundred times, `ExecReload` 1000 bytes, and a script using `%(EXEC_START)` a hundred times:
/// a 5 KB file became a gigabyte when each substitution's result was searched again.
#[test]
fn exec_placeholders_are_substituted_once_not_chained() {
    let s = services(
        r#"{ "a": { ExecStart: "run %(EXEC_STOP)", ExecStop: "halt", StopScript: "%(EXEC_STOP) %(EXEC_START) %(EXEC_NOPE)" } }"#,
    );
    assert_eq!(s[0].start_script, "#!/bin/sh\nexec run %(EXEC_STOP)\n");
    assert_eq!(s[0].stop_script, "halt run %(EXEC_STOP) %(EXEC_NOPE)");

    let chain = format!(
        r#"{{ "a": {{ ExecStart: "{}", ExecStop: "{}", ExecReload: "{}", StartScript: "{}" }} }}"#,
        "%(EXEC_STOP)".repeat(100),
        "%(EXEC_RELOAD)".repeat(100),
        "x".repeat(1000),
        "%(EXEC_START)".repeat(100),
    );
    let s = services(&chain);
    assert_eq!(s[0].start_script.len(), 100 * 100 * "%(EXEC_STOP)".len());
}

#[test]
fn a_script_longer_than_1_mib_after_substitution_is_an_error() {
    let src = format!(
        r#"{{ "a": {{ ExecStart: "{}", StartScript: "{}" }} }}"#,
        "x".repeat(100_000),
        "%(EXEC_START) ".repeat(11),
    );
    let e = errors(&src);
    assert_eq!(
        positions(&e),
        [(
            1,
            3,
            "service `a`: StartScript is 1100011 bytes after %(EXEC_*) substitution, more than 1048576"
                .to_owned()
        )]
    );
}

#[test]
fn nesting_100000_deep_is_one_error_and_the_file_is_refused() {
    let src = format!("{{ \"a\": {}", "[".repeat(100_000));
    let e = errors(&src);
    assert_eq!(
        positions(&e),
        [(
            1,
            71,
            "syntax error: objects and arrays nest deeper than 64 levels here".to_owned()
        )]
    );
}

#[test]
fn thousands_of_errors_are_cut_at_100_and_counted() {
    let src = format!(
        "{{ \"a\": {{ ExecStart: \"x\", {} }} }}",
        (0..5000).map(|i| format!("k{i}: 1,")).collect::<String>()
    );
    let e = errors(&src);
    assert_eq!(e.0.len(), 101);
    assert_eq!(e.0[100].message, "4900 more errors not shown");
}

#[test]
fn set_uid_naming_a_user_that_does_not_exist_is_a_config_error() {
    let e = errors(r#"{ "a": { ExecStart: "x", SetUID: "upk-no-such-user" } }"#);
    assert_eq!(
        positions(&e),
        [(
            1,
            34,
            "SetUID: there is no user named \"upk-no-such-user\" on this system".to_owned()
        )]
    );
    let e = errors(r#"{ "a": { ExecStart: "x", SetGID: "upk-no-such-group" } }"#);
    assert!(
        e.to_string()
            .contains("SetGID: there is no group named \"upk-no-such-group\" on this system"),
        "{e}"
    );
    // Names the system knows, and numbers (which need no entry), are accepted.
    let s = services(r#"{ "a": { ExecStart: "x", SetUID: "root", SetGID: "root" } }"#);
    assert_eq!(s[0].set_uid, IdSpec::Name("root".into()));
    services(r#"{ "a": { ExecStart: "x", SetUID: 4000000, SetGID: 4000000 } }"#);
    // In ServiceDefaults too.
    let e = parse_controller(
        r#"{ ServiceDefaults: { SetUID: "upk-no-such-user" } }"#,
        Path::new("u.conf"),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("no user named"), "{e}");
}

/// A private directory holding `name` with `text`, mode 0644.
fn file_in_dir(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    fs::write(&path, text).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    (dir, path)
}

/// The one error loading `path` gives, within a bounded wait: a loader that blocks fails the
/// test instead of hanging it.
fn load_error(path: &Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(load_services(&p, &ServiceLayer::default()).map(|s| s.len()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Err(e)) => {
            assert_eq!(e.0.len(), 1, "{e}");
            e.to_string()
        }
        Ok(Ok(n)) => panic!("{} loaded with {n} services", path.display()),
        Err(_) => panic!("loading {} blocked for 10 s", path.display()),
    }
}

#[test]
fn a_fifo_named_x_conf_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("x.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let e = load_error(&fifo);
    assert!(
        e.ends_with("refusing to read: it is a FIFO, not a regular file"),
        "{e}"
    );
    // Through a link too.
    let link = dir.path().join("y.conf");
    std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
    let e = load_error(&link);
    assert!(e.contains("is a symbolic link to"), "{e}");
    assert!(e.ends_with("which is a FIFO, not a regular file"), "{e}");
}

#[test]
fn a_service_file_over_1_mib_is_refused_with_its_size() {
    let big = format!("{{ \"a\": {{ ExecStart: \"x\" }} }}{}", " ".repeat(1 << 20));
    let (_dir, path) = file_in_dir("big.conf", &big);
    let e = load_error(&path);
    assert!(
        e.ends_with(&format!(
            "refusing to read: it is {} bytes, more than the 1048576 a configuration file may hold; split it into several files",
            big.len()
        )),
        "{e}"
    );
    let fits = format!("{{ \"a\": {{ ExecStart: \"x\" }} }}{}", " ".repeat(1000));
    let (_dir, path) = file_in_dir("ok.conf", &fits);
    assert_eq!(
        load_services(&path, &ServiceLayer::default()).map(|s| s.len()),
        Ok(1)
    );
}

#[test]
fn symlinked_service_files_say_why_they_are_refused() {
    let (dir, good) = file_in_dir("a.conf", r#"{ "a": { ExecStart: "x" } }"#);
    let link = |name: &str, to: &Path| {
        let p = dir.path().join(name);
        std::os::unix::fs::symlink(to, &p).expect("symlink");
        p
    };
    // A link to a good file made by an allowed owner is followed.
    let ok = link("b.conf", &good);
    assert_eq!(
        load_services(&ok, &ServiceLayer::default()).map(|s| s.len()),
        Ok(1)
    );

    let sub = dir.path().join("sub");
    fs::create_dir(&sub).expect("mkdir");
    let e = load_error(&link("dir.conf", &sub));
    assert!(
        e.ends_with(&format!(
            "refusing to read: it is a symbolic link to {}, which is a directory, not a regular file",
            sub.display()
        )),
        "{e}"
    );
    let looped = dir.path().join("loop.conf");
    link("loop.conf", &looped);
    let e = load_error(&looped);
    assert!(
        e.ends_with("that loops (too many levels of symbolic links)"),
        "{e}"
    );
    let e = load_error(&link("gone.conf", &dir.path().join("nowhere")));
    assert!(e.ends_with("which does not exist"), "{e}");
    let e = load_error(&link("null.conf", Path::new("/dev/null")));
    assert!(
        e.ends_with("to /dev/null, which is a device, not a regular file"),
        "{e}"
    );
}

/// A link made by another user (into a directory someone left writable) could make a root
/// controller read any root file, /etc/shadow included, and echo its words in errors.
#[test]
fn a_symlink_made_by_another_user_is_not_followed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to make a link owned by another user");
        return;
    }
    let (dir, good) = file_in_dir("a.conf", r#"{ "a": { ExecStart: "x" } }"#);
    let link = dir.path().join("shadow.conf");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    std::os::unix::fs::lchown(&link, Some(65534), None).expect("lchown");
    let e = load_error(&link);
    assert!(
        e.ends_with(&format!(
            "refusing to read: it is a symbolic link to {}, and the link is owned by uid 65534, not by root; chown it",
            good.display()
        )),
        "{e}"
    );
}

/// Found by the config fuzz target's speed: the "did you mean" search costs the product of
/// the key's length and each known key's, so one 200 KB unknown key took 16 s (debug build)
/// inside the controller's loop.
#[test]
fn a_200_kb_unknown_key_gets_no_suggestion_search_and_a_short_message() {
    let key = "K".repeat(200_000);
    let e = errors(&format!("{{ \"a\": {{ ExecStart: \"x\", {key}: 1 }} }}"));
    assert_eq!(
        positions(&e),
        [(
            1,
            26,
            format!("unknown key `{}...` (200000 characters)", &key[..64])
        )]
    );
    let e = parse_controller(&format!("{{ {key}: 1 }}"), Path::new("u.conf")).expect_err("refused");
    assert!(e.to_string().ends_with("(200000 characters)"), "{e}");
}
