//! `upkctl why`: deaths explained from the store, with the right cause, the log tail, the
//! first failure of a cascade and the configuration change that preceded crashes.

use super::*;

/// Waits until `why SERVICE` prints a line containing every one of `needles`.
fn why_says(w: &World, service: &str, needles: &[&str]) -> String {
    wait_until(Duration::from_secs(15), "why to explain it", || {
        let out = w.upkctl(&["why", service, "--utc"]);
        if out.code == code::OK && needles.iter().all(|n| out.stdout.contains(n)) {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    })
}

#[test]
fn a_missing_binary_is_explained_with_the_shells_message() {
    let w = World::new(
        &[(
            "web.conf",
            r#"{ "web": { ExecStart: "/nonexistent/web --port 80", UserRateLimit: 0.2, InitialState: "running" } }"#,
        )],
        &[],
    );
    let text = why_says(
        &w,
        "web",
        &[
            "the program was not found",
            "last stderr:",
            "/nonexistent/web",
        ],
    );
    assert!(text.starts_with("web died "), "{text}");
    assert!(
        text.contains("looping:") || text.contains("then:"),
        "{text}"
    );
    let json = w.upkctl(&["why", "web", "--json"]);
    json.expect(code::OK);
    let v = json.json();
    assert_eq!(v["death"]["reason"], "not-found", "{v}");
    assert_eq!(v["death"]["exit"]["code"], 127, "{v}");
    w.upkctl(&["why", "nope"])
        .fails(code::NOT_FOUND, "no service \"nope\"");
    // The crash loop in the incident view: shown once, then counted.
    let text = wait_until(Duration::from_secs(15), "a collapsed loop", || {
        let out = w.upkctl(&["incident", "--since", "10 min ago", "--utc"]);
        if out.stdout.contains("more lines like the above") {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    });
    assert!(text.contains(">> first failure: "), "{text}");
    assert_eq!(
        text.matches("the program was not found").count(),
        3,
        "line, head, summary: {text}"
    );
    w.upkctl(&["incident", "--since", "+1h"])
        .fails(code::USAGE, "the window is empty");
    w.upkctl(&["why", "web", "--at", "next tuesday"])
        .fails(code::USAGE, "is not a time");
    let before = w.upkctl(&["why", "web", "--at", "2000-01-01"]);
    before.expect(code::OK);
    assert!(before.stdout.contains("no death"), "{}", before.stdout);
}

#[test]
fn a_cascade_names_its_first_failure_and_the_prerequisite_that_went_down() {
    let w = World::offline(&[]);
    let pid = |name: &str| w.sb.file(&format!("{name}.pid")).display().to_string();
    // api lives while db's process lives, web while api's does: killing db takes both down.
    let follower = |me: &str, leader: &str| {
        format!(
            "#!/bin/sh\nwhile [ ! -s {l} ]; do sleep 0.02; done\nleader=$(cat {l})\n\
             echo $$ > {m}\nwhile kill -0 $leader 2>/dev/null; do sleep 0.02; done\n\
             echo '{me}: lost {leader}' >&2\nexit 1\n",
            l = pid(leader),
            m = pid(me),
        )
    };
    let text = format!(
        r#"{{
            "db":  {{ StartScript: {db:?}, UserRateLimit: 2, InitialState: "running" }},
            "api": {{ StartScript: {api:?}, Prerequisites: ["db"], UserRateLimit: 2, InitialState: "running" }},
            "web": {{ StartScript: {web:?}, Prerequisites: ["api"], UserRateLimit: 2, InitialState: "running" }},
        }}"#,
        db = format!("#!/bin/sh\necho $$ > {}\nexec sleep 1000\n", pid("db")),
        api = follower("api", "db"),
        web = follower("web", "api"),
    );
    w.add("app.conf", &text);
    let mut w = w;
    w.start(&["db", "api", "web"]);
    wait_until(Duration::from_secs(10), "api and web watching", || {
        if w.sb.file("web.pid").exists() {
            Ok(())
        } else {
            Err("no web.pid".to_owned())
        }
    });
    let db = w.running("db").pid.expect("db pid");
    std::fs::remove_file(w.sb.file("db.pid")).expect("rm db.pid");
    std::fs::remove_file(w.sb.file("api.pid")).expect("rm api.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(db),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill db");
    let text = why_says(
        &w,
        "web",
        &["first failure: db", "killed by SIGKILL", "web: lost api"],
    );
    assert!(text.contains("around:   api"), "{text}");
    assert!(text.contains("prerequisite \"api\": api went"), "{text}");
    let api = why_says(&w, "api", &["first failure: db", "api: lost db"]);
    assert!(api.contains("prerequisite \"db\": db went"), "{api}");
    let out = w.upkctl(&["incident", "--since", "5 min ago", "--utc"]);
    out.expect(code::OK);
    let marked: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.contains(">> first failure"))
        .collect();
    assert_eq!(marked.len(), 1, "{}", out.stdout);
    assert!(
        marked[0].contains("  db  ") && marked[0].contains("killed by SIGKILL"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("first failure: db at "),
        "{}",
        out.stdout
    );
    let rows = w
        .upkctl(&["incident", "--since", "5 min ago", "--json"])
        .json_lines();
    assert!(
        rows.iter().any(|r| r["what"] == "config_change"),
        "{rows:?}"
    );
    assert_eq!(
        rows.iter().filter(|r| r["first_failure"] == true).count(),
        1
    );
}

#[test]
fn crashes_after_a_config_change_name_the_change() {
    let mut w = World::new(
        &[(
            "web.conf",
            r#"{ "web": { ExecStart: "sleep 1000", UserRateLimit: 0.2, InitialState: "running" } }"#,
        )],
        &["web"],
    );
    w.add(
        "web.conf",
        r##"{ "web": { StartScript: "#!/bin/sh\necho 'bad listen address' >&2\nexit 2\n", UserRateLimit: 0.2, InitialState: "running" } }"##,
    );
    let text = why_says(
        &w,
        "web",
        &[
            "changed:",
            "web.conf",
            "is not the last good run's",
            "bad listen address",
        ],
    );
    assert!(text.contains("exited with code 2"), "{text}");
    assert!(text.contains("last good run: from"), "{text}");
    w.stop_controller();
}

/// True when services get a memory controller here (root, a cgroup hierarchy with `memory`):
/// then a memory limit is enforced and its OOM kill can be caused.
fn memory_limits_here() -> bool {
    let h = upk_core::cgroup::Hierarchies::of_self();
    let unified = h.unified.as_ref().is_some_and(|d| {
        std::fs::read_to_string(d.join("cgroup.controllers"))
            .is_ok_and(|t| t.split_whitespace().any(|c| c == "memory"))
    });
    nix::unistd::geteuid().is_root() && (unified || h.v1_base("memory").is_some())
}

#[test]
fn a_segfault_a_stop_escalation_a_health_kill_and_an_oom_kill_are_each_explained() {
    let oom = memory_limits_here();
    let hog = if oom {
        r##""hog": { StartScript: "#!/bin/sh\necho 'hog: caching everything' >&2\nexec tail /dev/zero\n", MemoryMax: "32M", MaxConsecutiveFailures: 1, InitialState: "running" },"##
    } else {
        ""
    };
    let text = format!(
        r##"{{
    "seg": {{ StartScript: "#!/bin/sh\necho 'plugin x: bad pointer' >&2\nkill -SEGV $$\n", UserRateLimit: 0.2, InitialState: "running" }},
    "stubborn": {{ StartScript: "#!/bin/sh\ntrap '' TERM\necho 'stubborn: not stopping' >&2\nwhile :; do sleep 0.1; done\n", KillTimeout: 1, InitialState: "running" }},
    "sick": {{ StartScript: "#!/bin/sh\necho 'sick: serving' >&2\nexec sleep 1000\n", HealthCheck: "exit 1", HealthInterval: 0.1, HealthRetries: 2, UserRateLimit: 0.2, InitialState: "running" }},
    {hog}
}}"##
    );
    let w = World::new(&[("app.conf", &text)], &["stubborn"]);

    let seg = why_says(&w, "seg", &["killed by SIGSEGV", "plugin x: bad pointer"]);
    assert!(seg.starts_with("seg died "), "{seg}");
    let reason = w.upkctl(&["why", "seg", "--json"]).json()["death"]["reason"].clone();
    assert!(reason == "signal" || reason == "core-dumped", "{reason}");

    let sick = why_says(&w, "sick", &["health checks failed", "sick: serving"]);
    assert_eq!(
        w.upkctl(&["why", "sick", "--json"]).json()["death"]["reason"],
        "unhealthy",
        "{sick}"
    );

    // The trap is set once the line is written; then only SIGKILL ends it.
    wait_until(Duration::from_secs(10), "the trap set", || {
        let out = w.upkctl(&["logs", "stubborn"]);
        out.stdout
            .contains("not stopping")
            .then_some(())
            .ok_or(out.stdout)
    });
    w.upkctl(&["stop", "stubborn"]).expect(code::OK);
    let stubborn = why_says(
        &w,
        "stubborn",
        &[
            "SIGKILL to its process group at the KillTimeout",
            "stubborn: not stopping",
        ],
    );
    assert!(stubborn.contains("stopped ("), "{stubborn}");
    let me = nix::unistd::geteuid().as_raw();
    assert!(
        stubborn.contains("stop stubborn (uid ") && stubborn.contains(&format!("(uid {me}, pid ")),
        "who: {stubborn}"
    );
    assert_eq!(
        w.upkctl(&["why", "stubborn", "--json"]).json()["death"]["reason"],
        "stopped"
    );

    if oom {
        let hog = why_says(&w, "hog", &["OOM killer", "hog: caching everything"]);
        assert_eq!(
            w.upkctl(&["why", "hog", "--json"]).json()["death"]["reason"],
            "oom",
            "{hog}"
        );
    } else {
        // Classified from the memory controller's count (crates/core/src/death.rs tests).
        eprintln!("no memory controller here: the OOM kill is not caused, only classified");
    }
}
