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
    // defaults; the keys upkeeper added later (health, readiness, backoff, hooks) it leaves out.
    assert_eq!(d.over(&ServiceLayer::builtin()), ServiceLayer::builtin());
    assert_eq!(SERVICE_KEYS.len(), 43);
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
    assert_eq!(db.set_uid, IdSpec::Name("postgres".into()));
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
