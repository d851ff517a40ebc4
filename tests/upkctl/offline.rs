//! Commands that need no controller: `check`, `render`, `completions`, `man`, and usage.

use super::*;

const GOOD: &str = r#"{
    "web": { ExecStart: "sleep 1000", PipeStdoutScript: "exec cat",
             CustomActions: { "ping": "echo pong" } },
    "db": { ExecStart: "sleep 1000" },
}"#;

// Two errors in one file (a wrong type, an unknown key), each with its line and column.
const BAD: &str = r#"{
    "api": {
        ExecStart: 5,
        KillTimout: 2,
    },
}"#;

#[test]
fn check_reports_every_error_with_its_location() {
    let w = World::offline(&[("a-good.conf", GOOD)]);
    let conf = w.sb.path().join("conf");

    let out = w.upkctl(&["check", conf.to_str().expect("utf8")]);
    out.expect(code::OK);
    assert_eq!(
        out.stdout,
        format!(
            "{}: ok, 2 services (web, db)\n",
            conf.join("a-good.conf").display()
        )
    );

    w.add("b-bad.conf", BAD);
    w.add("c-dup.conf", r#"{ "db": { ExecStart: "true" } }"#);
    let out = w.upkctl(&["check", conf.to_str().expect("utf8")]);
    out.expect(code::INVALID_CONFIG);
    assert_eq!(out.lines().len(), 1, "only the good file is ok: {out:?}");
    let bad = conf.join("b-bad.conf").display().to_string();
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 4, "{out:?}");
    assert!(
        errors[0].starts_with(&format!("{bad}:3:20: ")) && errors[0].contains("ExecStart"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(&format!("{bad}:4:9: ")) && errors[1].contains("KillTimeout"),
        "did you mean: {errors:?}"
    );
    assert!(
        errors[2].contains("c-dup.conf: service db is already defined in")
            && errors[2].contains("a-good.conf"),
        "{errors:?}"
    );
    assert_eq!(errors[3], "upkctl: 3 errors in 2 files");

    let v = w.upkctl(&["check", "--json", &bad]).json();
    assert_eq!(v["ok"], false);
    let e = &v["files"][0]["errors"];
    assert_eq!(
        (e[0]["line"].clone(), e[0]["column"].clone()),
        (3.into(), 20.into())
    );
    assert_eq!(
        (e[1]["line"].clone(), e[1]["column"].clone()),
        (4.into(), 9.into())
    );
    assert!(e[1]["message"]
        .as_str()
        .is_some_and(|m| m.contains("KillTimout")));

    // With no path: the controller file and every file of its SvcConfigPath.
    std::fs::remove_file(conf.join("b-bad.conf")).expect("rm");
    std::fs::remove_file(conf.join("c-dup.conf")).expect("rm");
    let out = w.upkctl(&["check"]);
    out.expect(code::OK);
    assert_eq!(
        out.lines(),
        [
            format!("{}: ok", w.ctl.display()),
            format!(
                "{}: ok, 2 services (web, db)",
                conf.join("a-good.conf").display()
            )
        ]
    );
    let v = w.upkctl(&["check", "--json"]).json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["files"][0]["controller"], true);

    // A controller file is checked as one with --controller; a bad one is invalid config.
    let bad_ctl = w.file("bad-upkeeper.conf");
    std::fs::write(&bad_ctl, "{ StateDir: 3 }").expect("write");
    let out = w.upkctl(&["check", "--controller", bad_ctl.to_str().expect("utf8")]);
    out.expect(code::INVALID_CONFIG);
    assert_eq!(
        out.stderr,
        format!(
            "{}:1:13: StateDir: expected a path (a non-empty string), found a number\n\
             upkctl: 1 error in 1 file\n",
            bad_ctl.display()
        )
    );
    w.upkctl(&["check", "--controller", w.ctl.to_str().expect("utf8")])
        .expect(code::OK);
    // Without --controller, a controller file is known by its keys: checked as one, not
    // reported as services that are all broken.
    let out = w.upkctl(&["check", w.ctl.to_str().expect("utf8")]);
    out.expect(code::OK);
    assert_eq!(out.stdout, format!("{}: ok\n", w.ctl.display()));
    let out = w.upkctl(&["check", bad_ctl.to_str().expect("utf8")]);
    out.expect(code::INVALID_CONFIG);
    assert!(out.stderr.contains("StateDir: expected a path"), "{out:?}");
    // Any command with an invalid --config says so.
    let out = Command::new(bin("upkctl"))
        .args(["--config", bad_ctl.to_str().expect("utf8"), "status"])
        .output()
        .expect("upkctl");
    assert_eq!(out.status.code(), Some(code::INVALID_CONFIG), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("StateDir"),
        "{out:?}"
    );
}

#[test]
fn render_shows_the_run_directory_without_writing_it() {
    let w = World::offline(&[("app.conf", GOOD)]);
    let out = w.upkctl(&["render", "web"]);
    out.expect(code::OK);
    let run_dir = w.sb.run_path().join("web");
    assert!(!run_dir.exists(), "nothing written into SvcRunPath");
    let text = &out.stdout;
    assert!(
        text.starts_with(&format!(
            "# web from {}",
            w.sb.path().join("conf/app.conf").display()
        )) && text
            .lines()
            .next()
            .is_some_and(|l| l.contains(&run_dir.display().to_string())),
        "{text}"
    );
    for line in [
        "actions/",
        "actions/01 -> ../scripts/ping",
        "actions/start -> ../scripts/start",
        "log/stdout_pipe  (fifo, 0600)",
        "scripts/start  (file, 0755)",
        "settings.json  (file, 0644)",
        "--- scripts/start",
        "exec sleep 1000",
        "--- scripts/ping",
        "echo pong",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }

    // The same as the controller renders: compare with what `upkeeper render` writes.
    let v = w.upkctl(&["render", "web", "db", "--json"]).json();
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(v[0]["run_dir"], run_dir.display().to_string());
    let ours: Vec<(String, Value)> = v[0]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap_or("").to_owned(),
                e["content"].clone(),
            )
        })
        .collect();
    let done = Command::new(bin("upkeeper"))
        .args(["--config", w.ctl.to_str().expect("utf8"), "render", "web"])
        .output()
        .expect("upkeeper render");
    assert!(done.status.success(), "{done:?}");
    for (path, content) in &ours {
        let real = run_dir.join(path);
        assert!(
            std::fs::symlink_metadata(&real).is_ok(),
            "{path} rendered by upkeeper too"
        );
        if let Some(text) = content.as_str() {
            assert_eq!(
                std::fs::read_to_string(&real).ok().as_deref(),
                Some(text),
                "{path}"
            );
        }
    }

    w.upkctl(&["render", "nope"])
        .fails(code::NOT_FOUND, "there is no service \"nope\"");
    w.upkctl(&["render"]).expect(code::USAGE);
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let w = World::offline(&[]);
    for shell in ["bash", "zsh", "fish"] {
        let out = w.upkctl(&["completions", shell]);
        out.expect(code::OK);
        for word in ["upkctl", "history", "unconfigure", "--wait"] {
            assert!(out.stdout.contains(word), "{shell}: {word}");
        }
    }
    w.upkctl(&["completions", "tcsh"]).expect(code::USAGE);

    let out = w.upkctl(&["man"]);
    out.expect(code::OK);
    assert!(
        out.stdout.contains(".TH upkctl"),
        "{}",
        &out.stdout[..200.min(out.stdout.len())]
    );
    assert!(out.stdout.contains("unconfigure"));
    let dir = w.file("man");
    std::fs::create_dir(&dir).expect("mkdir");
    w.upkctl(&["man", "--dir", dir.to_str().expect("utf8")])
        .expect(code::OK);
    for page in [
        "upkctl.1",
        "upkctl-status.1",
        "upkctl-history.1",
        "upkctl-check.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie"), "{page}: roff");
    }

    // Usage: 100 like every upkeeper program; help and version are not errors.
    let out = w.upkctl(&["frobnicate"]);
    out.expect(code::USAGE);
    assert!(out.stderr.contains("unrecognized subcommand"), "{out:?}");
    w.upkctl(&["status", "--timeout", "-1"]).expect(code::USAGE);
    let out = w.upkctl(&["--help"]);
    out.expect(code::OK);
    for cmd in [
        "status",
        "list",
        "start",
        "stop",
        "restart",
        "reload",
        "signal",
        "action",
        "once",
        "unconfigure",
        "history",
        "audit",
        "stats",
        "watch",
        "check",
        "render",
        "completions",
        "man",
    ] {
        assert!(out.stdout.contains(&format!("  {cmd} ")), "{cmd} in --help");
    }
    w.upkctl(&["--version"]).expect(code::OK);
}
