//! `history`, `audit`, `stats` and `watch`: the audit questions, answered from the store.

use super::*;

const SERVICES: &str = r#"{
    "web": { ExecStart: "sleep 1000", InitialState: "running" },
    "db": { ExecStart: "sleep 1000", InitialState: "running" },
}"#;

/// Kills `id`'s process with SIGKILL and waits until the buddy has run it again.
fn kill_and_wait_restart(w: &World, id: &str) -> i32 {
    let pid = w.running(id).pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_until(
        Duration::from_secs(10),
        &format!("{id} restarted"),
        || match w.status(id) {
            Some(s) if s.state == StateName::Running && s.pid != Some(pid) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    pid
}

#[test]
fn history_says_what_died_and_why() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    let killed = kill_and_wait_restart(&w, "web");

    // Stored a moment after it happened: wait for the death in the history.
    let line = wait_until(Duration::from_secs(10), "the death stored", || {
        let out = w.upkctl(&["history", "web", "--kind", "died", "--utc"]);
        out.expect(code::OK);
        out.lines()
            .last()
            .map(|l| l.to_string())
            .filter(|l| l.contains("killed by SIGKILL"))
            .ok_or(out.stdout)
    });
    // `2026-11-21T12:24:05.123Z  web  [running] killed by SIGKILL after 0.512s pid 42 (exit)`
    let parts: Vec<&str> = line.splitn(3, "  ").collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert!(
        parts[0].len() == 24 && parts[0].ends_with('Z') && parts[0].contains('T'),
        "a UTC time: {line}"
    );
    assert_eq!(parts[1], "web");
    assert!(parts[2].contains(&format!("pid {killed}")), "{line}");

    // Every kind, oldest first, for both services; -n keeps the newest.
    let all = w.upkctl(&["history", "--json", "-n", "0"]);
    all.expect(code::OK);
    let rows = all.json_lines();
    let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "oldest first: {ids:?}");
    let services: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["service"].as_str()).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["db", "web"]);
    assert!(rows.iter().any(|r| r["kind"] == "died"
        && r["service"] == "web"
        && r["exit"]["signal"] == 9
        && r["cause"] == "exit"));
    let last2 = w.upkctl(&["history", "--json", "-n", "2"]).json_lines();
    assert_eq!(
        last2.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        rows[rows.len() - 2..]
            .iter()
            .map(|r| r["id"].clone())
            .collect::<Vec<_>>()
    );

    // The window: everything is from the last hour, nothing from before it.
    let kinds = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["history", "web", "--json"];
        a.extend_from_slice(args);
        let out = w.upkctl(&a);
        out.expect(code::OK);
        out.json_lines()
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(kinds(&["--since", "1h"]).contains(&"died".to_owned()));
    assert_eq!(kinds(&["--until", "1h"]), Vec::<String>::new());
    assert_eq!(
        kinds(&["--since", "2000-01-01", "--kind", "died,stopped"]),
        ["died"]
    );

    w.upkctl(&["history", "nope"])
        .fails(code::NOT_FOUND, "no service \"nope\"");
    w.upkctl(&["history", "--kind", "dead"])
        .fails(code::USAGE, "\"dead\" is not a kind of event");
    w.upkctl(&["history", "--since", "next tuesday"])
        .fails(code::USAGE, "is not a time");
    w.upkctl(&["history", "--since", "yesterday"])
        .expect(code::OK);
    w.upkctl(&["history", "--follow", "--until", "1h"])
        .expect(code::USAGE);
}

#[test]
fn audit_says_who_did_what() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    w.upkctl(&["stop", "db"]).expect(code::OK);
    w.upkctl(&["signal", "USR2", "--group", "nope"])
        .expect(code::NOT_FOUND);

    let out = wait_until(Duration::from_secs(10), "the commands audited", || {
        let out = w.upkctl(&["audit"]);
        out.expect(code::OK);
        if out.lines().len() >= 2 {
            Ok(out)
        } else {
            Err(out.stdout)
        }
    });
    let lines = out.lines();
    assert!(
        lines[0].contains("  root  stop db: done: stopping (want down)")
            && lines[0].contains("upkctl --config")
            && lines[0].contains("stop db]"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("root  signal USR2 --group nope: failed: there is no service"),
        "{lines:?}"
    );

    let rows = w
        .upkctl(&["audit", "--json", "--user", "root"])
        .json_lines();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["request"]["type"], "stop");
    assert_eq!(rows[0]["service"], "db");
    assert_eq!(rows[0]["uid"], 0);
    assert_eq!(rows[0]["ok"], true);
    assert_eq!(rows[1]["ok"], false);
    assert_eq!(
        w.upkctl(&["audit", "--json", "-n", "1"]).json_lines(),
        rows[1..]
    );
    assert_eq!(w.upkctl(&["audit", "--user", "4242"]).stdout, "");
    assert_eq!(w.upkctl(&["audit", "--until", "1h"]).stdout, "");
    w.upkctl(&["audit", "--user", "upk-no-such-user"])
        .fails(code::NOT_FOUND, "there is no user \"upk-no-such-user\"");
}

#[test]
fn stats_count_restarts_failures_and_uptime() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    kill_and_wait_restart(&w, "web");

    let v = wait_until(Duration::from_secs(10), "the restart counted", || {
        let out = w.upkctl(&["stats", "web", "--json"]);
        out.expect(code::OK);
        let v = out.json();
        if v[0]["restarts"] == 1 && v[0]["failures"] == 1 {
            Ok(v)
        } else {
            Err(out.stdout)
        }
    });
    let s = &v[0];
    assert_eq!(s["service"], "web");
    assert_eq!(s["state"], "running");
    assert_eq!(s["restarts_peak_hour"], 1);
    assert_eq!(
        s["restarts_per_hour_mean"], 1.0,
        "one restart, observed < 1 h"
    );
    assert!(
        s["uptime"].as_f64().is_some_and(|u| u > 0.0 && u <= 1.0),
        "{s}"
    );
    let observed = s["observed_s"].as_f64().expect("observed");
    assert!(
        observed > 0.0 && observed < 600.0,
        "since the service's first event: {s}"
    );
    let mtbf = s["mtbf_s"].as_f64().expect("an MTBF");
    assert!(mtbf > 0.0 && mtbf <= observed, "{s}");
    assert!(s["since_last_failure_us"]
        .as_i64()
        .is_some_and(|us| us >= 0));
    assert!(
        s["flapping"].as_f64().is_some_and(|f| f > 0.0 && f < 0.5),
        "{s}"
    );
    assert_eq!(s["is_flapping"], false);

    let out = w.upkctl(&["stats"]);
    out.expect(code::OK);
    let mut lines = out.stdout.lines();
    assert!(
        lines.next().is_some_and(|l| l.starts_with("from ")),
        "{out:?}"
    );
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    let web = row(&rest, "web");
    assert_eq!(web[1], "running");
    assert!(web[2].ends_with('%'), "{web:?}");
    assert_eq!(web[3..7], ["1", "1.00", "1", "1"]);
    assert!(web[8].ends_with(" ago"), "{web:?}");
    let db = row(&rest, "db");
    assert_eq!(db[3..8], ["0", "0.00", "0", "0", "-"]);

    w.upkctl(&["stats", "nope"])
        .fails(code::NOT_FOUND, "no service \"nope\"");
    w.upkctl(&["stats", "--since", "soon"])
        .fails(code::USAGE, "is not a time");
}

#[test]
fn watch_and_follow_print_events_as_they_are_stored() {
    let mut w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);

    let watch = w.spawn(&[
        "watch",
        "web",
        "--json",
        "--count",
        "2",
        "--kind",
        "stopping,stopped",
    ]);
    watch.complained("watching web from event #");
    let follow = w.spawn(&["history", "web", "--follow", "-n", "1"]);
    // The newest stored event is printed first, so the subscription is in place.
    follow.said("  web  ");

    w.upkctl(&["stop", "db", "web"]).expect(code::OK);
    let stopping: Value = serde_json::from_str(&watch.said("\"stopping\"")).expect("JSON");
    assert_eq!(stopping["service"], "web", "only web: {stopping}");
    let stopped: Value = serde_json::from_str(&watch.said("\"stopped\"")).expect("JSON");
    assert_eq!(stopped["kind"], "stopped");
    assert!(stopped["id"].as_i64() > stopping["id"].as_i64());
    let mut watch = watch;
    assert_eq!(watch.wait_exit(), code::OK, "--count 2");

    let line = follow.said("[stopping->stopped] stopped");
    assert!(line.contains("  web  "), "{line}");

    // The controller going away ends a watch with "unreachable".
    let mut again = w.spawn(&["watch"]);
    again.complained("watching every service");
    w.stop_controller();
    again.complained("the controller closed the connection");
    assert_eq!(again.wait_exit(), code::UNREACHABLE);
}

#[test]
fn several_services_and_globs_and_a_suggestion_for_a_typo() {
    let w = World::new(
        &[(
            "app.conf",
            r#"{
    "web": { ExecStart: "sleep 1000", InitialState: "running" },
    "web2": { ExecStart: "sleep 1000", InitialState: "running" },
    "db": { ExecStart: "sleep 1000", InitialState: "running" },
}"#,
        )],
        &["web", "web2", "db"],
    );
    let services = |args: &[&str]| {
        let rows = wait_until(Duration::from_secs(10), "started rows", || {
            let rows = w.upkctl(args).json_lines();
            if rows.iter().filter(|r| r["kind"] == "started").count() >= 2 {
                Ok(rows)
            } else {
                Err(format!("{rows:?}"))
            }
        });
        let ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "one order: {ids:?}");
        rows.iter()
            .filter_map(|r| r["service"].as_str().map(str::to_owned))
            .collect::<std::collections::BTreeSet<String>>()
    };
    let both = services(&["history", "web", "db", "--json", "-n", "0"]);
    assert_eq!(both.into_iter().collect::<Vec<_>>(), ["db", "web"]);
    let glob = services(&["history", "web*", "--json", "-n", "0"]);
    assert_eq!(glob.into_iter().collect::<Vec<_>>(), ["web", "web2"]);
    // -n keeps the newest N of them all.
    let two = w.upkctl(&["history", "web", "db", "--json", "-n", "2"]);
    assert_eq!(two.json_lines().len(), 2);
    w.upkctl(&["history", "zz*"])
        .fails(code::NOT_FOUND, "no configured service matches \"zz*\"");
    w.upkctl(&["stop", "wbe"])
        .fails(code::NOT_FOUND, "did you mean \"web\"?");
    w.upkctl(&["history", "dbb"])
        .fails(code::NOT_FOUND, "did you mean \"db\"?");
    let status = w.upkctl(&["status", "web*"]);
    status.expect(code::OK);
    assert_eq!(table(&status.stdout).len(), 2, "{}", status.stdout);
}

#[test]
fn the_shell_completes_service_names_from_the_run_directories() {
    let w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    let complete = |words: &[&str]| {
        let out = Command::new(bin("upkctl"))
            .args(["--"])
            .args(words)
            .env("COMPLETE", "bash")
            .env("_CLAP_IFS", "\n")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_COMPLETE_COMP_TYPE", "9")
            .env("_CLAP_COMPLETE_SPACE", "true")
            .env("UPKEEPER_CONFIG", &w.ctl)
            .output()
            .expect("upkctl");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Options are offered too; the names are what this test is about.
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('-'))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    assert_eq!(complete(&["upkctl", "restart", "w"]), ["web"]);
    assert_eq!(complete(&["upkctl", "why", ""]), ["db", "web"]);
    assert_eq!(complete(&["upkctl", "sta"]), ["start", "stats", "status"]);
    // The registration script names the binary.
    let reg = Command::new(bin("upkctl"))
        .env("COMPLETE", "bash")
        .output()
        .expect("upkctl");
    assert!(String::from_utf8_lossy(&reg.stdout).contains("complete -o nospace"));
}

#[test]
fn history_why_and_audit_read_the_store_when_the_controller_is_down() {
    let mut w = World::new(&[("app.conf", SERVICES)], &["web", "db"]);
    let killed = kill_and_wait_restart(&w, "web");
    w.upkctl(&["stop", "db"]).expect(code::OK);
    wait_until(Duration::from_secs(10), "the death stored", || {
        let out = w.upkctl(&["history", "web", "--kind", "died"]);
        out.stdout
            .contains("killed by SIGKILL")
            .then_some(())
            .ok_or(out.stdout)
    });
    wait_until(Duration::from_secs(10), "the stop audited", || {
        let out = w.upkctl(&["audit"]);
        out.stdout
            .contains("stop db")
            .then_some(())
            .ok_or(out.stdout)
    });
    let live = w.upkctl(&["history", "--json", "-n", "0"]).json_lines();
    // Killed, its socket left behind: nobody listens there (ECONNREFUSED).
    w.controller.as_mut().expect("controller").kill();
    let db = w.sb.path().join("state").join("upkeeper.db");
    let before = std::fs::read(&db).expect("store");

    let out = w.upkctl(&["history", "--json", "-n", "0"]);
    out.expect(code::OK);
    assert!(
        out.stderr.contains("the controller is not running") && out.stderr.contains("upkeeper.db"),
        "said where it reads: {out:#?}"
    );
    let stored = out.json_lines();
    assert!(stored.len() >= live.len(), "{stored:?}");
    assert_eq!(
        stored[..live.len()],
        live[..],
        "the rows the controller gave"
    );
    let died = w.upkctl(&["history", "w*", "--kind", "died"]);
    died.expect(code::OK);
    assert!(
        died.stdout.contains("killed by SIGKILL") && died.stdout.contains(&format!("pid {killed}")),
        "{died:#?}"
    );
    let why = w.upkctl(&["why", "web"]);
    why.expect(code::OK);
    assert!(why.stdout.contains("SIGKILL"), "{why:#?}");
    let audit = w.upkctl(&["audit", "--json"]);
    audit.expect(code::OK);
    assert!(
        audit
            .json_lines()
            .iter()
            .any(|c| c["request"]["type"] == "stop" && c["service"] == "db"),
        "{audit:#?}"
    );
    w.upkctl(&["history", "nosuch"])
        .fails(code::NOT_FOUND, "no service \"nosuch\" in the store");
    w.upkctl(&["history", "-f", "web"])
        .fails(code::UNREACHABLE, "--follow needs the controller");
    w.upkctl(&["start", "web"])
        .fails(code::UNREACHABLE, "cannot reach the controller");

    // Without a socket at all, the same; and the store is only read.
    std::fs::remove_file(w.sb.path().join("state").join("upkeeper.sock")).expect("rm socket");
    w.upkctl(&["history", "db", "-n", "1"]).expect(code::OK);
    assert!(
        std::fs::read(&db).expect("store") == before,
        "the store is unchanged"
    );

    // The store's own permissions are the access rule (mode 0640, no read group here).
    if nix::unistd::geteuid().is_root() {
        let out = w.upkctl_as_nobody(&["history", "web"]);
        assert_ne!(out.code, code::OK, "{out:#?}");
        assert!(out.stderr.contains("cannot read the store"), "{out:#?}");
    } else {
        eprintln!("not root: the store's permissions are checked only as root (setpriv nobody)");
    }
}

#[test]
fn completions_and_the_man_page_into_a_closed_pipe_exit_quietly() {
    // `upkctl completions bash | head`: the reader is gone before the script is written.
    for args in [
        &["completions", "bash"][..],
        &["completions", "zsh"],
        &["man"],
    ] {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        let out = Command::new(bin("upkctl"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .expect("run upkctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code::OK), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
