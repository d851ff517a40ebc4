//! stdin, RedirectStdout/RedirectStderr and the Pipe*Script loggers.

use super::*;
use serde_json::json;
use upk_testkit::{is_dead, Sandbox};

#[test]
fn output_goes_to_log_files_by_default_and_to_redirects_when_set() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "plain",
        &sh_service("", "echo out; echo err >&2; exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    running(&b);
    wait_until(Duration::from_secs(5), "log/stdout and log/stderr", || {
        let out = std::fs::read_to_string(dir.log_file("stdout")).unwrap_or_default();
        let err = std::fs::read_to_string(dir.log_file("stderr")).unwrap_or_default();
        if out == "out\n" && err == "err\n" {
            Ok(())
        } else {
            Err(format!("{out:?} {err:?}"))
        }
    });

    let (o, e) = (sb.file("o.txt"), sb.file("e.txt"));
    let extra = format!(
        "RedirectStdout: {:?}, RedirectStderr: {:?}",
        o.display().to_string(),
        e.display().to_string()
    );
    let dir = sb.service(
        "redir",
        &sh_service(&extra, "echo out; echo err >&2; exec sleep 1000"),
    );
    let _b = sb.buddy(&dir);
    wait_until(Duration::from_secs(5), "the redirect files", || {
        let out = std::fs::read_to_string(&o).unwrap_or_default();
        let err = std::fs::read_to_string(&e).unwrap_or_default();
        if out == "out\n" && err == "err\n" {
            Ok(())
        } else {
            Err(format!("{out:?} {err:?}"))
        }
    });
}

#[test]
fn a_logger_reads_the_pipe_survives_service_restarts_and_is_restarted_when_it_dies() {
    let sb = Sandbox::new();
    let logged = sb.file("logged");
    let logger = "#!/bin/sh\nexec sed -u 's/^/LOG: /'\n".to_string();
    let extra = format!(
        "UserRateLimit: 0, PipeStdoutScript: {logger:?}, RedirectStdout: {:?}",
        logged.display().to_string()
    );
    // Each run prints its pid, then waits to be killed.
    let dir = sb.service(
        "talker",
        &sh_service(&extra, "echo \"run $$\"; exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let first = running(&b);
    let has = |line: String| {
        let logged = logged.clone();
        move || {
            let text = std::fs::read_to_string(&logged).unwrap_or_default();
            if text.lines().any(|l| l == line) {
                Ok(())
            } else {
                Err(text)
            }
        }
    };
    wait_until(
        Duration::from_secs(5),
        "the first run's line",
        has(format!("LOG: run {first}")),
    );
    let logger_pid = b.wait_record("logger_started", |_| true)["pid"]
        .as_i64()
        .expect("pid") as i32;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let second = restarted(&b, first);
    wait_until(
        Duration::from_secs(5),
        "the second run's line",
        has(format!("LOG: run {second}")),
    );
    assert!(
        !is_dead(logger_pid),
        "the same logger survived the service restart"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(logger_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    b.wait_record("logger_died", |r| r["pid"] == logger_pid);
    let again = b.wait_record("logger_started", |r| r["pid"] != logger_pid);
    assert_ne!(again["pid"], logger_pid);
    // Output written while no logger ran waits in the pipe; the new logger carries it on.
    b.call(json!({"type": "restart"}));
    let third = restarted(&b, second);
    wait_until(
        Duration::from_secs(5),
        "the third run's line",
        has(format!("LOG: run {third}")),
    );
}

#[test]
fn logs_rotate_by_moving_the_file_and_sending_sighup() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "talker",
        &sh_service("UserRateLimit: 0", "echo \"run $$\"; exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let first = running(&b);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until(Duration::from_secs(5), "the first line", || {
        let t = read(&dir.log_file("stdout"));
        if t.contains(&format!("run {first}")) {
            Ok(())
        } else {
            Err(t)
        }
    });
    let rotated = dir.log_file("stdout.1");
    std::fs::rename(dir.log_file("stdout"), &rotated).expect("rotate");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("hup");
    // The HUP is queued before the request below is sent, and the buddy handles signals
    // before sockets in a poll round, so the restart sees the reopened files.
    let r = b.call(json!({"type": "restart"}));
    assert_eq!(r["type"], "ok", "{r}");
    let second = restarted(&b, first);
    wait_until(
        Duration::from_secs(5),
        "the second run in a new log/stdout",
        || {
            let t = read(&dir.log_file("stdout"));
            if t == format!("run {second}\n") {
                Ok(())
            } else {
                Err(t)
            }
        },
    );
    assert_eq!(
        read(&rotated),
        format!("run {first}\n"),
        "the old file kept only the old run"
    );
}
