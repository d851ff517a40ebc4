//! Inputs that must never stop a buddy: starts that fail at once, credentials that cannot be
//! applied, stop scripts that cannot run, a polluted environment (issue 11).

use super::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::io::Write;
use upk_core::event::StateName;
use upk_testkit::{is_dead, Sandbox};

#[test]
fn a_start_that_fails_at_once_with_rate_limit_zero_leaves_the_buddy_responsive() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "nostart",
        &sh_service("UserRateLimit: 0", "exec sleep 1000"),
    );
    std::fs::remove_file(dir.action("start")).expect("remove actions/start");
    // `buddy` waits for the hello answer: a buddy stuck in its step never gives it.
    let mut b = sb.buddy(&dir);
    let first = b.wait_record("spawn_failed", |_| true);
    let r = b.call(json!({"type": "status"}));
    assert_eq!(r["type"], "ok", "{r}");
    // Failed starts back off (1 s, 2 s, ...): a handful in three seconds, not thousands.
    wait_until(Duration::from_secs(10), "a third failed start", || {
        let n = of_kind(&b.records(), "spawn_failed").len();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    let recs = b.records();
    let failed = of_kind(&recs, "spawn_failed");
    let span = mono(&failed[failed.len() - 1]) - mono(&first);
    assert!(
        failed.len() <= 4 && span >= 2.0,
        "{} failed starts in {span:.2} s",
        failed.len()
    );
    kill(Pid::from_raw(b.pid()), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
}

#[test]
fn a_user_missing_at_run_time_ends_in_failed_with_a_record_saying_why() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "ghost",
        &sh_service(r#"SetUID: "nobody""#, "exec sleep 1000"),
    );
    // The user is deleted after the configuration was checked and rendered.
    let settings = std::fs::read_to_string(dir.settings()).expect("settings");
    let patched = settings.replace("\"nobody\"", "\"no-such-user-here\"");
    assert_ne!(settings, patched, "{settings}");
    std::fs::write(dir.settings(), patched).expect("settings");
    let b = sb.buddy(&dir);
    let st = b.wait_status("failed", |s| s.state == StateName::Failed);
    assert_eq!(st.want, upk_core::status::Want::Up);
    let recs = b.records();
    let failed = of_kind(&recs, "spawn_failed");
    assert_eq!(failed.len(), 1, "tried once, not every second: {recs:#?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-user-here")),
        "{failed:?}"
    );
    let gave_up = of_kind(&recs, "gave_up");
    assert_eq!(gave_up.len(), 1, "{recs:#?}");
    assert!(
        gave_up[0]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("cannot succeed by retrying")),
        "{gave_up:?}"
    );
}

#[test]
fn a_stop_script_that_cannot_run_goes_straight_to_sigterm() {
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("KillTimeout: 60", "exec sleep 1000"));
    let mut b = sb.buddy(&dir);
    let pid = running(&b);
    std::fs::remove_file(dir.action("stop")).expect("remove actions/stop");
    kill(Pid::from_raw(b.pid()), Signal::SIGTERM).expect("SIGTERM");
    // Without escalation nothing would happen before KillTimeout/2 = 30 s.
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
    wait_until(Duration::from_secs(5), "the service to be gone", || {
        if is_dead(pid) {
            Ok(())
        } else {
            Err("alive".into())
        }
    });
    let st = upk_testkit::read_status(&dir);
    assert_eq!(st.state, StateName::Stopped);
}

#[test]
fn failed_stop_script_goes_on_to_term_and_kill() {
    let sb = Sandbox::new();
    let stop = "#!/bin/sh\nexit 3\n";
    let extra = format!("KillTimeout: 60, StopScript: {stop:?}");
    let dir = sb.service("web", &sh_service(&extra, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    running(&b);
    b.call(json!({"type": "stop"}));
    let st = b.wait_status("stopped", |s| s.state == StateName::Stopped);
    assert_eq!(st.pid, None);
    let recs = b.records();
    let signaled = of_kind(&recs, "signaled");
    assert_eq!(signaled.len(), 1, "{recs:#?}");
    assert_eq!(
        (
            signaled[0]["signal"].as_i64(),
            signaled[0]["cause"].as_str()
        ),
        (Some(15), Some("stop script failed"))
    );
}

#[test]
fn services_start_from_a_clean_documented_environment() {
    let sb = Sandbox::new();
    let seen = sb.file("env");
    let script = format!("env > {}\nexec sleep 1000", seen.display());
    let dir = sb.service("web", &sh_service("", &script));
    // What OpenRC leaves in the environment of a controller it starts.
    let polluted = [
        ("RC_SVCNAME", "upkeeper"),
        ("RC_SERVICE", "/etc/init.d/upkeeper"),
        ("EINFO_QUIET", "NO"),
        ("PATH", "/opt/evil/bin:/usr/bin:/bin"),
    ];
    let b = sb.buddy_with_env(&dir, &polluted);
    running(&b);
    let env = wait_until(Duration::from_secs(5), "the service's env output", || {
        let t = std::fs::read_to_string(&seen).unwrap_or_default();
        if t.contains("UPK_SERVICE") {
            Ok(t)
        } else {
            Err(t)
        }
    });
    let mut keys: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    // What the shell itself adds.
    keys.retain(|k| !["PWD", "OLDPWD", "SHLVL", "_"].contains(k));
    keys.sort_unstable();
    assert_eq!(keys, ["PATH", "UPK_SANDBOX", "UPK_SERVICE"], "{env}");
    assert!(
        env.lines()
            .any(|l| l == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "UPK_SERVICE=web"), "{env}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    upk_core::procfs::Stat::of(pid).expect("stat").cpu_ticks
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn out_of_descriptors_a_buddy_keeps_track_of_its_child_and_never_spins() {
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("UserRateLimit: 0", "exec sleep 1000"));
    let mut b = sb.buddy(&dir);
    let first = running(&b);
    let limit = open_fds(b.pid()) as u64 + 24;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads the struct it is given and writes nothing (old limit: null).
    let rc = unsafe { libc::prlimit(b.pid(), libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // Someone holds more connections than the buddy has descriptors for.
    let held: Vec<std::os::unix::net::UnixStream> = (0..60)
        .map(|_| std::os::unix::net::UnixStream::connect(dir.socket()).expect("connect"))
        .collect();
    wait_until(
        Duration::from_secs(5),
        "the buddy to take connections",
        || {
            let n = open_fds(b.pid()) as u64;
            if n + 20 >= limit {
                Ok(())
            } else {
                Err(format!("{n} of {limit}"))
            }
        },
    );
    // The service dies and is restarted: the status file must name the new process.
    kill(Pid::from_raw(first), Signal::SIGKILL).expect("kill");
    let second = restarted(&b, first);
    // Refused connections are closed, not left pending: the loop sleeps in poll.
    let before = cpu_ticks(b.pid());
    // Taken or refused, a new client gets an answer at once, not a hang. A refused one gets
    // its error line and is closed, perhaps before it writes: the write may fail (EPIPE).
    let c = std::os::unix::net::UnixStream::connect(dir.socket()).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = (&c).write_all(b"{\"type\":\"status\"}\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&c), &mut line).expect("an answer");
    let answer: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    assert!(
        answer["type"] == "ok" || answer["type"] == "error",
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(1000)); // a measurement window, not a wait
    let spent = cpu_ticks(b.pid()) - before;
    assert!(spent < 30, "{spent} ticks of CPU in one second: spinning");
    drop(held);
    drop(c);
    wait_until(Duration::from_secs(5), "the buddy to answer again", || {
        let mut c = upk_testkit::Client::raw(&dir.socket());
        let r = c.call(json!({"type": "status"}));
        if r["type"] == "ok" {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
    // A successor adopts the running copy instead of starting a second one.
    b.child.kill().expect("SIGKILL the buddy");
    b.child.wait().expect("reap");
    let next = sb.buddy(&dir);
    let st = next.wait_status("adopted", |s| s.buddy_pid == next.pid());
    assert_eq!(st.pid, Some(second));
    wait_processes(&sb, "sleep 1000", &[second]);
}

#[test]
fn a_redirect_swapped_for_a_link_to_a_root_file_is_never_written_through() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("a_redirect_swapped_for_a_link_...: not root here; running as nobody needs root");
        return;
    }
    use std::os::unix::fs::symlink;
    let sb = Sandbox::new();
    let own = sb.file("nobody");
    std::fs::create_dir(&own).expect("mkdir");
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    nix::unistd::chown(&own, nobody, Some(nix::unistd::Gid::from_raw(65534))).expect("chown");
    let secret = sb.file("root-owned");
    std::fs::write(&secret, "secret\n").expect("root file");
    let out = own.join("out.log");
    let extra = format!(
        r#"SetUID: "nobody", SetGID: "nogroup", UserRateLimit: 0, RedirectStdout: {:?}"#,
        out.display().to_string()
    );
    let dir = sb.service(
        "web",
        &sh_service(&extra, "echo \"run $$\"; exec sleep 1000"),
    );
    let b = sb.buddy(&dir);
    let first = running(&b);
    let hup = || kill(Pid::from_raw(b.pid()), Signal::SIGHUP).expect("SIGHUP");
    wait_until(Duration::from_secs(5), "the first run's line", || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        if t.contains(&format!("run {first}")) {
            Ok(())
        } else {
            Err(t)
        }
    });

    // The service's user swaps its log for a link to a root file, and the log is reopened.
    std::fs::remove_file(&out).expect("rm");
    symlink(&secret, &out).expect("symlink");
    hup();
    b.call(json!({"type": "restart"}));
    let failed = b.wait_record("spawn_failed", |_| true);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("symbolic link")),
        "{failed}"
    );
    // A hard link to a root file (possible where fs.protected_hardlinks is off).
    std::fs::remove_file(&out).expect("rm");
    std::fs::hard_link(&secret, &out).expect("link");
    hup();
    b.call(json!({"type": "start"}));
    b.wait_record("spawn_failed", |r| {
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than one link"))
    });
    std::fs::remove_file(&out).expect("rm");

    // The race: the name flips between a file and a link while the buddy reopens.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (own, out, secret, stop) = (own.clone(), out.clone(), secret.clone(), stop.clone());
        std::thread::spawn(move || {
            let (file, link) = (own.join("f.tmp"), own.join("l.tmp"));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&file, "");
                let _ = std::fs::rename(&file, &out);
                let _ = symlink(&secret, &link);
                let _ = std::fs::rename(&link, &out);
            }
        })
    };
    for _ in 0..20 {
        hup();
        b.call(json!({"type": "restart"}));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("root file"),
        "secret\n",
        "the root file was never written"
    );
}

#[test]
fn a_probe_that_cannot_start_with_a_tiny_interval_leaves_the_buddy_responsive() {
    let sb = Sandbox::new();
    let extra = r#"HealthCheck: "exit 0", HealthInterval: 0.000001, HealthAction: "record""#;
    let dir = sb.service("web", &sh_service(extra, "exec sleep 1000"));
    std::fs::remove_file(dir.action("health")).expect("remove actions/health");
    let mut b = sb.buddy(&dir);
    running(&b);
    for _ in 0..3 {
        let r = b.call(json!({"type": "status"}));
        assert_eq!(r["type"], "ok", "{r}");
    }
    kill(Pid::from_raw(b.pid()), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(b.wait_exit(Duration::from_secs(10)), 0);
}
