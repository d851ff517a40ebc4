//! The fast path: a default start script's program started without `/bin/sh`, default stop
//! and reload scripts carried out as signals, and everything else through the shell as before
//! (docs/servicedir.md, "When the shell is skipped").

use super::*;
use serde_json::json;
use upk_core::event::StateName;
use upk_testkit::Sandbox;

/// argv of a process, as the kernel has it.
fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The value of `key` in a process's environment.
fn env_of(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

/// The first `name` in the children's PATH, resolved.
fn which(name: &str) -> std::path::PathBuf {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| panic!("no {name} in PATH"))
}

#[test]
fn the_default_start_script_execs_the_program_itself_with_the_shells_argv() {
    let sb = Sandbox::new();
    let dir = sb.service("web", SLEEPER);
    let b = sb.buddy(&dir);
    let pid = running(&b);
    // What the program sees is what sh's `exec` would have given it (that no shell ran at
    // all is the launcher's unit test: the program is the exe from the first instant).
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(exe, which("sleep"));
    assert_eq!(
        argv(pid),
        ["sleep", "1000"],
        "argv[0] as written, like sh's exec"
    );
    let stat = upk_core::procfs::Stat::of(pid).expect("stat");
    assert_eq!(stat.ppid, b.pid(), "the buddy's own child");
    assert_eq!(stat.pgrp, pid, "in a session of its own");
    // The service's working directory (WorkingDirectory, `/` by default), as sh exports it.
    assert_eq!(env_of(pid, "PWD").as_deref(), Some("/"), "sh's PWD");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(cwd, std::path::Path::new("/"));
    assert_eq!(env_of(pid, "UPK_SERVICE").as_deref(), Some("web"));
    // The rendered script stays the contract on disk.
    let script = std::fs::read_to_string(dir.action("start")).expect("start script");
    assert!(script.ends_with("exec sleep 1000\n"), "{script}");
}

#[test]
fn a_start_script_the_shell_must_interpret_still_goes_through_sh() {
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("", "exec sleep $((500 + 500))"));
    let b = sb.buddy(&dir);
    let pid = running(&b);
    wait_until(Duration::from_secs(5), "sh to expand and exec", || {
        let a = argv(pid);
        if a == ["sleep", "1000"] {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });
}

#[test]
fn a_missing_program_still_exits_127_through_sh() {
    for program in ["no-such-program-upk", "/nonexistent/upk-program"] {
        let sb = Sandbox::new();
        let svc = format!(r#"{{ ExecStart: "{program} --flag", InitialState: "running" }}"#);
        let dir = sb.service("web", &svc);
        let b = sb.buddy(&dir);
        let died = b.wait_record("died", |_| true);
        assert_eq!(died["exit"]["how"], "exited", "{program}: {died}");
        assert_eq!(died["exit"]["code"], 127, "{program}: {died}");
        let stderr = std::fs::read_to_string(dir.log_file("stderr")).unwrap_or_default();
        assert!(
            stderr.contains(program) && stderr.contains("not found"),
            "sh's own message: {stderr:?}"
        );
    }
}

#[test]
fn default_stop_and_reload_deliver_term_and_hup_without_a_script() {
    let sb = Sandbox::new();
    let seen = sb.file("signals");
    let program = sb.file("trapper");
    let text = format!(
        "#!/bin/sh\ntrap 'echo hup >> {0}' HUP\ntrap 'echo term >> {0}; exit 0' TERM\necho trapped > {1}\nwhile :; do sleep 0.1; done\n",
        seen.display(),
        sb.file("trapped").display()
    );
    upk_testkit::write_script(&program, &text);
    let svc = format!(
        r#"{{ ExecStart: "{}", InitialState: "running", KillTimeout: 20 }}"#,
        program.display()
    );
    let dir = sb.service("web", &svc);
    let b = sb.buddy(&dir);
    let pid = running(&b);
    // `running` comes once the program is exec'd; a HUP before its traps are set kills it.
    wait_until(Duration::from_secs(5), "the traps set", || {
        if lines(&sb, "trapped") == ["trapped"] {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let done = b.call(json!({"type": "reload"}));
    assert_eq!(done["type"], "action_done", "{done}");
    assert_eq!(done["exit"]["code"], 0, "{done}");
    wait_until(Duration::from_secs(5), "the HUP trap", || {
        let l = lines(&sb, "signals");
        if l == ["hup"] {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });
    b.call(json!({"type": "stop"}));
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert_eq!(lines(&sb, "signals"), ["hup", "term"]);
    let recs = b.records();
    let died = of_kind(&recs, "died");
    assert_eq!(
        died[0]["exit"]["code"], 0,
        "ended by its TERM trap: {died:?}"
    );
    // Both actions are recorded as a script that exited 0 would be, but no process ran.
    let actions = of_kind(&recs, "action_run");
    let summary: Vec<(&str, i64, bool)> = actions
        .iter()
        .map(|r| {
            let name = r["action"].as_str().unwrap_or("");
            (
                name,
                r["exit"]["code"].as_i64().unwrap_or(-1),
                r["pid"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("reload", 0, true), ("stop", 0, true)],
        "{actions:?}"
    );
    assert_eq!(of_kind(&recs, "stopping")[0]["pid"], pid);
}

#[test]
fn a_stop_script_with_more_than_a_kill_still_runs() {
    let sb = Sandbox::new();
    let seen = sb.file("stop-ran");
    let stop = format!("#!/bin/sh\necho ran > {}\nexec kill $1\n", seen.display());
    let svc =
        format!(r#"{{ ExecStart: "sleep 1000", InitialState: "running", StopScript: {stop:?} }}"#);
    let dir = sb.service("web", &svc);
    let b = sb.buddy(&dir);
    running(&b);
    b.call(json!({"type": "stop"}));
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert_eq!(lines(&sb, "stop-ran"), ["ran"]);
    let run = b.wait_record("action_run", |r| r["action"] == "stop");
    assert!(run["pid"].is_i64(), "a script ran: {run}");
}
