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

#[test]
fn the_buddys_own_logger_rotates_at_the_size_and_keeps_exactly_n_files() {
    let sb = Sandbox::new();
    let script = "i=0\nwhile [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done\necho finished >&2\nexec sleep 1000";
    let extra = "LogMaxSize: \"4K\", LogKeep: 2, LogTimestamps: true";
    let dir = sb.service("chatty", &sh_service(extra, script));
    let _b = sb.buddy(&dir);
    let log = dir.log();
    wait_until(Duration::from_secs(20), "every line written", || {
        let out = std::fs::read_to_string(log.join("stdout")).unwrap_or_default();
        if out.contains("line 2999\n") {
            Ok(())
        } else {
            Err(out.lines().last().unwrap_or_default().to_owned())
        }
    });
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .expect("log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stdout"))
        .collect();
    names.sort();
    assert_eq!(names, ["stdout", "stdout.1", "stdout.2", "stdout_pipe"]);
    let mut kept = Vec::new();
    for n in ["stdout.2", "stdout.1", "stdout"] {
        let body = std::fs::read_to_string(log.join(n)).expect("read");
        assert!(body.len() <= 4096, "{n} holds {} bytes", body.len());
        kept.extend(body.lines().map(str::to_owned));
    }
    // Every kept line is stamped, and they are the newest lines, in order, none missing.
    let numbers: Vec<u32> = kept
        .iter()
        .map(|l| {
            let (stamp, rest) = l.split_once(' ').expect("a stamp");
            assert!(stamp.ends_with('Z') && stamp.len() == 27, "{l}");
            rest.strip_prefix("line ")
                .expect("a line")
                .parse()
                .expect("n")
        })
        .collect();
    assert_eq!(numbers.last(), Some(&2999));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap in {numbers:?}"
    );
    let stderr = std::fs::read_to_string(log.join("stderr")).expect("stderr");
    assert!(stderr.ends_with(" finished\n"), "{stderr}");
}

#[test]
fn a_death_keeps_its_tail_through_the_buddys_own_logger() {
    let sb = Sandbox::new();
    let script = "echo 'fatal: no config' >&2\nexit 1";
    let dir = sb.service(
        "crash",
        &sh_service("LogMaxSize: \"1M\", UserRateLimit: 1", script),
    );
    let b = sb.buddy(&dir);
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["tail"]["stderr"][0], "fatal: no config", "{died}");
}

#[test]
fn every_death_keeps_its_tail_when_the_logger_rotated_during_the_run() {
    let sb = Sandbox::new();
    // Each run writes past LogMaxSize (4K) on stderr, so the logger rotates while it runs:
    // the last line is in the new file, the first ones in the one it replaced.
    let script = "i=0\nwhile [ $i -lt 100 ]; do echo \"filler $i: padding padding padding padding padding\" >&2; i=$((i+1)); done\necho \"fatal: pid $$\" >&2\nexit 1";
    let dir = sb.service(
        "chatty",
        &sh_service("LogMaxSize: \"4K\", LogKeep: 2, UserRateLimit: 0.1", script),
    );
    let b = sb.buddy(&dir);
    for n in 1..=3 {
        let died = b.wait_record("died", |r| {
            r["seq"].as_u64().is_some() && deaths_before(&b, r) == n - 1
        });
        let tail: Vec<String> = died["tail"]["stderr"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let pid = died["pid"].as_i64().expect("pid");
        let files = || {
            ["stderr", "stderr.1", "stderr.2", "buddy"]
                .map(|f| {
                    let text = std::fs::read_to_string(dir.log_file(f)).unwrap_or_default();
                    format!(
                        "== {f}: {}",
                        text.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
                    )
                })
                .join("\n")
        };
        assert_eq!(
            tail.last().map(String::as_str),
            Some(format!("fatal: pid {pid}").as_str()),
            "death {n}: {died}\n{}",
            files()
        );
        assert!(tail.len() > 1, "lines from before the rotation too: {died}");
        assert!(
            tail.iter()
                .all(|l| l.starts_with("filler ") || l.starts_with("fatal: ")),
            "{died}"
        );
    }
    assert!(dir.log_file("stderr.1").exists(), "the logger rotated");
}

/// How many `died` records come before `r` in the buddy's records.
fn deaths_before(b: &upk_testkit::Buddy, r: &serde_json::Value) -> usize {
    b.records()
        .iter()
        .take_while(|x| x["seq"] != r["seq"])
        .filter(|x| x["kind"] == "died")
        .count()
}
