//! `upkctl logs`: the last lines of a service's output files, and `-f` following them across
//! a restart and a rotation (move the file, SIGHUP the buddy), with the controller up or down.

use super::*;

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
}

#[test]
fn logs_shows_the_last_lines_and_follows_across_a_restart_and_a_rotation() {
    let script = "#!/bin/sh\\necho \\\"hello from $$\\\"\\necho \\\"oops from $$\\\" >&2\\nexec sleep 1000\\n";
    let conf = format!(
        r#"{{ "web": {{ StartScript: "{script}", InitialState: "running", UserRateLimit: 0 }} }}"#
    );
    let mut w = World::new(&[("web.conf", &conf)], &["web"]);
    let first = w.running("web").pid.expect("pid");
    let out = wait_until(Duration::from_secs(10), "the first lines", || {
        let out = w.upkctl(&["logs", "web"]);
        if out.stdout.contains(&format!("oops from {first}")) {
            Ok(out)
        } else {
            Err(format!("{out:?}"))
        }
    });
    out.expect(code::OK);
    assert!(out.stdout.contains("==> stdout ("), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("hello from {first}")),
        "{}",
        out.stdout
    );

    let f = w.spawn(&["logs", "web", "-f", "-n", "0"]);
    f.said(&format!("hello from {first}"));
    // A restart: the new run appends.
    kill(first, nix::sys::signal::Signal::SIGKILL);
    let second = wait_until(Duration::from_secs(10), "a new run", || {
        match w.status("web").and_then(|s| s.pid) {
            Some(p) if p != first => Ok(p),
            other => Err(format!("{other:?}")),
        }
    });
    f.said(&format!("hello from {second}"));
    // A rotation as logrotate does it: move the files away, SIGHUP the buddy; the next run
    // writes to new files, and -f reads them from their start.
    let log = w.sb.run_path().join("web").join("log");
    for s in ["stdout", "stderr"] {
        std::fs::rename(log.join(s), log.join(format!("{s}.1"))).expect("rotate");
    }
    let buddy = w.status("web").expect("status").buddy_pid;
    kill(buddy, nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "settings re-read", || {
        let text = std::fs::read_to_string(log.join("buddy")).unwrap_or_default();
        if text.contains("settings re-read") {
            Ok(())
        } else {
            Err(text)
        }
    });
    kill(second, nix::sys::signal::Signal::SIGKILL);
    let third = wait_until(Duration::from_secs(10), "a third run", || {
        match w.status("web").and_then(|s| s.pid) {
            Some(p) if p != second && p != first => Ok(p),
            other => Err(format!("{other:?}")),
        }
    });
    f.said(&format!("hello from {third}"));
    assert!(log.join("stdout").exists() && log.join("stdout.1").exists());

    // One service's status page: its processes, its last death explained, its last lines.
    let page = wait_until(Duration::from_secs(10), "the page", || {
        let out = w.upkctl(&["status", "web", "--utc"]);
        if out.stdout.contains("Last death:") && out.stdout.contains(&format!("hello from {third}"))
        {
            Ok(out.stdout)
        } else {
            Err(format!("{out:?}"))
        }
    });
    assert!(page.starts_with("● web"), "{page}");
    assert!(page.contains(&format!("Main PID: {third}")), "{page}");
    assert!(page.contains(&format!("{third} sleep 1000")), "{page}");
    assert!(page.contains("killed by SIGKILL"), "{page}");
    assert!(page.contains(&format!("oops from {third}")), "{page}");
    // The controller is not needed; -n 1 is one line of each file.
    w.stop_controller();
    let out = w.upkctl(&["logs", "web", "-n", "1"]);
    out.expect(code::OK);
    assert_eq!(
        out.lines(),
        [
            format!("==> stdout ({}) <==", log.join("stdout").display()).as_str(),
            format!("hello from {third}").as_str(),
            format!("==> stderr ({}) <==", log.join("stderr").display()).as_str(),
            format!("oops from {third}").as_str(),
        ]
    );
    w.upkctl(&["logs", "nope"])
        .fails(code::NOT_FOUND, "no service \"nope\"");
}

#[test]
fn logs_follow_misses_nothing_across_the_buddys_own_rotations() {
    let script =
        "#!/bin/sh\\ni=0\\nwhile :; do echo \\\"tick $i\\\"; i=$((i+1)); sleep 0.002; done\\n";
    let conf = format!(
        r#"{{ "web": {{ StartScript: "{script}", InitialState: "running", LogMaxSize: "4K", LogKeep: 3 }} }}"#
    );
    let w = World::new(&[("web.conf", &conf)], &["web"]);
    let f = w.spawn(&["logs", "web", "-f", "-n", "0"]);
    let log = w.sb.run_path().join("web").join("log");
    let mut last: Option<u64> = None;
    let mut rotations_seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rotations_seen {
        assert!(Instant::now() < deadline, "no two rotations within 60 s");
        let line = f.said("tick ");
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        if let Some(prev) = last {
            assert_eq!(n, prev + 1, "a line lost or repeated after tick {prev}");
        }
        last = Some(n);
        rotations_seen = log.join("stdout.2").exists();
    }
    // Exactly LogKeep rotated files, however many rotations.
    wait_until(Duration::from_secs(60), "a third rotation", || {
        if log.join("stdout.3").exists() {
            Ok(())
        } else {
            Err("no stdout.3 yet".to_owned())
        }
    });
    // Another rotation replaces stdout.3 (its first line changes), and stdout.4 never exists.
    let first = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
    };
    let oldest = first(&log.join("stdout.3"));
    wait_until(Duration::from_secs(60), "a fourth rotation", || {
        assert!(!log.join("stdout.4").exists(), "more than LogKeep files");
        let now = first(&log.join("stdout.3"));
        if now.is_some() && now != oldest {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    assert!(!log.join("stdout.4").exists(), "more than LogKeep files");
}
