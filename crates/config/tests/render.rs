//! The built-in rendering, byte for byte. The golden text below is what the controller wrote
//! (through tera and `templates/script.tera`) before rendering moved into this crate; a change
//! here is a change to every run directory in the field, so it is one to make on purpose.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use upk_config::render::Renderer;
use upk_core::rundir::Settings;

/// One service that reaches every kind of script: the defaults, an `%(EXEC_*)` substitution,
/// a `#!` of its own, trailing blank lines, no final newline, a logger, a hook, two actions.
const SAMPLE: &str = r##"{
  "shop::web": {
    ExecStart: "/usr/bin/httpd -f /etc/httpd.conf",
    ExecReload: "kill -USR1 $1",
    HealthCheck: "test -e /tmp/ok\n\n\n",
    PipeStdoutScript: "#!/usr/bin/awk -f\n{ print }",
    Notify: { page: { Run: "echo paged %(EXEC_START)", On: ["gave_up"] } },
    CustomActions: {
      rotate: "#!/bin/bash\nset -e\necho \"rotating %(EXEC_START)\"\n",
      hup: "kill -HUP $1",
    },
  },
}"##;

/// (file in `scripts/`, its exact content).
const GOLDEN: &[(&str, &str)] = &[
    (
        "health",
        r#"#!/bin/sh
# shop::web: the health script, rendered by upkeeper; edit the configuration, not this file.
test -e /tmp/ok
"#,
    ),
    (
        "hook@page",
        r#"#!/bin/sh
# shop::web: the hook@page script, rendered by upkeeper; edit the configuration, not this file.
echo paged /usr/bin/httpd -f /etc/httpd.conf
"#,
    ),
    (
        "hup",
        r#"#!/bin/sh
# shop::web: the hup script, rendered by upkeeper; edit the configuration, not this file.
kill -HUP $1
"#,
    ),
    (
        "pipe_stdout",
        r#"#!/usr/bin/awk -f
# shop::web: the pipe_stdout script, rendered by upkeeper; edit the configuration, not this file.
{ print }
"#,
    ),
    (
        "reload",
        r#"#!/bin/sh
# shop::web: the reload script, rendered by upkeeper; edit the configuration, not this file.
exec kill -USR1 $1 $1
"#,
    ),
    (
        "rotate",
        r#"#!/bin/bash
# shop::web: the rotate script, rendered by upkeeper; edit the configuration, not this file.
set -e
echo "rotating /usr/bin/httpd -f /etc/httpd.conf"
"#,
    ),
    (
        "start",
        r#"#!/bin/sh
# shop::web: the start script, rendered by upkeeper; edit the configuration, not this file.
exec /usr/bin/httpd -f /etc/httpd.conf
"#,
    ),
    (
        "stop",
        r#"#!/bin/sh
# shop::web: the stop script, rendered by upkeeper; edit the configuration, not this file.
exec kill $1
"#,
    ),
];

/// (link in `actions/`, its target).
const LINKS: &[(&str, &str)] = &[
    ("01", "../scripts/rotate"),
    ("02", "../scripts/hup"),
    ("health", "../scripts/health"),
    ("reload", "../scripts/reload"),
    ("start", "../scripts/start"),
    ("stop", "../scripts/stop"),
];

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn render_sample(renderer: &Renderer, run: &Path) -> upk_core::rundir::RunDir {
    let svc = upk_core::config::parse_services(SAMPLE, Path::new("web.conf"), &Default::default())
        .expect("the sample validates")
        .remove(0);
    let settings = Settings {
        service: svc.clone(),
        controller_socket: run.join("ctl.sock"),
        polling_interval: 0.5,
        cgroup: None,
        config_hash: None,
    };
    renderer.render(&svc, run, &settings).expect("render")
}

fn assert_golden(dir: &upk_core::rundir::RunDir) {
    let root = dir.root();
    assert_eq!(
        names(root),
        ["actions", "log", "scripts", "settings.json"],
        "the run directory"
    );
    assert_eq!(names(&root.join("log")), ["stdout_pipe"], "log/");
    assert_eq!(
        names(&root.join("scripts")),
        GOLDEN.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "scripts/"
    );
    for (name, text) in GOLDEN {
        let path = root.join("scripts").join(name);
        let got = std::fs::read(&path).expect("script");
        assert_eq!(
            String::from_utf8_lossy(&got),
            *text,
            "scripts/{name}, byte for byte"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "scripts/{name}'s mode");
    }
    assert_eq!(
        names(&root.join("actions")),
        LINKS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "actions/"
    );
    for (name, target) in LINKS {
        let got = std::fs::read_link(root.join("actions").join(name)).expect("link");
        assert_eq!(got, Path::new(target), "actions/{name}");
    }
}

#[test]
fn the_builtin_templates_render_a_sample_byte_for_byte() {
    let run = tempfile::tempdir().expect("tempdir");
    assert_golden(&render_sample(&Renderer::builtin(), run.path()));
}

#[test]
fn rendering_again_over_a_directory_gives_the_same_bytes() {
    // The second render takes the other path (scratch directory and exchange, not a rename).
    let run = tempfile::tempdir().expect("tempdir");
    render_sample(&Renderer::builtin(), run.path());
    assert_golden(&render_sample(&Renderer::builtin(), run.path()));
}

#[test]
fn the_shipped_template_directory_renders_what_the_builtin_does() {
    // `upkeeper --templates /usr/share/upkeeper/templates` must change nothing.
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
    let renderer = Renderer::from_dir(&templates).expect("templates/ loads");
    let run = tempfile::tempdir().expect("tempdir");
    assert_golden(&render_sample(&renderer, run.path()));
}
