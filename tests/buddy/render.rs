//! Rendering: the run directory's layout and atomic re-rendering that keeps logs. (The
//! `upkeeper check`/`render` commands are the controller suite's, in `tests/controller`.)

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use upk_testkit::Sandbox;

#[test]
fn renders_the_layout_and_rerendering_keeps_logs() {
    let sb = Sandbox::new();
    let body = r##"{ ExecStart: "sleep 1", PipeStderrScript: "exec cat",
                     CustomActions: { rotate: "echo rotate", flush: "#!/bin/bash\necho %(EXEC_START)" } }"##;
    let dir = sb.service("pkg::web", body);
    assert!(dir.root().ends_with("run/pkg::web"));
    for (action, script) in [
        ("start", "start"),
        ("stop", "stop"),
        ("reload", "reload"),
        ("01", "rotate"),
        ("02", "flush"),
    ] {
        let link = std::fs::read_link(dir.action(action)).expect("symlink");
        assert_eq!(link, std::path::Path::new("../scripts").join(script));
        let meta = std::fs::metadata(dir.action(action)).expect("resolves");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{action}");
    }
    let start = std::fs::read_to_string(dir.script("start")).expect("start");
    assert!(
        start.starts_with("#!/bin/sh\n# pkg::web: the start script"),
        "{start}"
    );
    assert!(start.ends_with("exec sleep 1\n"), "{start}");
    let flush = std::fs::read_to_string(dir.script("flush")).expect("flush");
    assert!(
        flush.starts_with("#!/bin/bash\n") && flush.contains("echo sleep 1"),
        "{flush}"
    );
    // A FIFO for the configured logger only.
    assert!(std::fs::metadata(dir.log_file("stderr_pipe"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert!(!dir.log_file("stdout_pipe").exists());
    // A new directory was made whole elsewhere and renamed: no staging left behind.
    let hidden: Vec<_> = std::fs::read_dir(sb.run_path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");

    std::fs::write(dir.log_file("stdout"), "precious\n").expect("log");
    let dir = sb.service("pkg::web", r#"{ ExecStart: "sleep 2" }"#);
    assert_eq!(
        std::fs::read_to_string(dir.log_file("stdout")).expect("log"),
        "precious\n"
    );
    assert!(std::fs::read_to_string(dir.script("start"))
        .expect("start")
        .ends_with("exec sleep 2\n"));
    assert!(
        !dir.action("01").exists() && !dir.script("rotate").exists(),
        "removed actions are gone"
    );
    let settings = upk_core::rundir::Settings::read(&dir.settings()).expect("settings");
    assert_eq!(settings.service.exec_start.as_deref(), Some("sleep 2"));
    let names: Vec<String> = std::fs::read_dir(dir.root())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "no scratch left behind: {names:?}"
    );
}
