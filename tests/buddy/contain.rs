//! Containment: a service that daemonizes (double fork and `setsid`) is kept by its cgroup,
//! so a stop leaves nothing and restarts never pile up copies; without a cgroup the process
//! group is all there is, and the status says so. Limits are checked from `/proc` of the
//! running service, and controller limits where this host has the controller.

use super::*;
use serde_json::json;
use std::path::Path;
use upk_core::event::StateName;
use upk_testkit::Sandbox;

/// True when this host lets us keep services in a unified cgroup (a cgroup2 mount we can
/// write, as root). The containment tests assert the cgroup behaviour then, and the fallback
/// otherwise: either way they check something.
fn cgroups_here() -> bool {
    let Some(base) = upk_core::cgroup::Hierarchies::of_self().unified else {
        return false;
    };
    nix::unistd::geteuid().is_root() && base.join("cgroup.procs").exists()
}

/// A start script whose daemon leaves its parent's session: `( setsid sleep N & )`, the
/// shell's double fork.
fn daemonizing(secs: u32, then: &str) -> String {
    format!("( setsid sleep {secs} </dev/null >/dev/null 2>&1 & )\n{then}")
}

fn line(path: &Path, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_daemonized_grandchild_is_gone_after_stop() {
    let sb = Sandbox::new();
    let script = daemonizing(1401, "exec sleep 1000");
    let dir = sb.service("web", &sh_service("KillTimeout: 2", &script));
    let b = sb.buddy(&dir);
    let st = b.wait_status("running", |s| s.state == StateName::Running);
    let pgid = st.pid.expect("pid");
    // The daemon is the `sleep` that has left the service's process group (`setsid` runs
    // as itself first, then execs sleep in its new session).
    wait_until(
        Duration::from_secs(5),
        "the daemon in a session of its own",
        || {
            let daemons: Vec<i32> = sb
                .processes("sleep 1401")
                .into_iter()
                .filter(|&p| upk_core::procfs::Stat::of(p).is_some_and(|s| s.pgrp != pgid))
                .filter(|&p| upk_testkit::cmdline(p).starts_with("sleep"))
                .collect();
            (daemons.len() == 1)
                .then_some(())
                .ok_or(format!("{daemons:?}"))
        },
    );
    let r = b.call(json!({"type": "stop"}));
    assert_eq!(r["type"], "ok", "{r}");
    let st = b.wait_status("stopped", |s| s.state == StateName::Stopped);
    let left = sb.processes("sleep 1401");
    if cgroups_here() {
        let cg = st.containment.cgroup.clone().expect("kept by a cgroup");
        assert_eq!(Some(cg.clone()), sb.cgroup_dir("web"));
        assert!(
            left.is_empty(),
            "the daemon is stopped with its cgroup: {left:?}"
        );
        assert_eq!(line(&cg.join("cgroup.events"), "populated"), "populated 0");
    } else {
        // The fallback, documented: the process group is all a buddy can see, and the
        // daemon left it.
        assert_eq!(st.containment.cgroup, None);
        assert!(st
            .containment
            .notes
            .iter()
            .any(|n| n.starts_with("no cgroup")));
        assert_eq!(
            left.len(),
            1,
            "without a cgroup the daemon survives the stop"
        );
    }
}

#[test]
fn restarts_of_a_daemonizing_service_never_leave_two_copies() {
    let sb = Sandbox::new();
    // The classic daemon: fork, setsid, and the parent exits at once.
    let script = daemonizing(1402, "exit 0");
    let dir = sb.service("web", &sh_service("UserRateLimit: 0.05", &script));
    let b = sb.buddy(&dir);
    let mut most = 0;
    wait_count(&b, "started", 10, Duration::from_secs(30));
    for _ in 0..20 {
        most = most.max(sb.processes("sleep 1402").len());
        std::thread::sleep(Duration::from_millis(20));
    }
    let copies = sb.processes("sleep 1402").len();
    if cgroups_here() {
        assert!(most <= 1, "at most one copy at any time, saw {most}");
        assert!(
            b.status().containment.cgroup.is_some(),
            "{:?}",
            b.status().containment
        );
    } else {
        assert!(copies >= 5, "without a cgroup copies pile up: {copies}");
    }
}

#[test]
fn without_a_cgroup_the_status_says_so_and_limits_are_reported() {
    let sb = Sandbox::new();
    let dir = sb.service(
        "web",
        &sh_service("TasksMax: 5, MemoryMax: \"64M\"", "exec sleep 1000"),
    );
    without_cgroup(&dir);
    let b = sb.buddy(&dir);
    let st = b.wait_status("running", |s| s.state == StateName::Running);
    assert_eq!(st.containment.cgroup, None);
    let notes = st.containment.notes.join("\n");
    assert!(
        notes.contains("no cgroup: the controller's Cgroup key is false"),
        "{notes}"
    );
    assert!(notes.contains("TasksMax not enforced"), "{notes}");
    assert!(
        notes.contains("MemoryMax/MemoryHigh not enforced"),
        "{notes}"
    );
    let recs = of_kind(&b.records(), "containment");
    assert_eq!(recs.len(), 3, "each note is a record: {recs:?}");
}

#[test]
fn limits_are_set_in_the_running_service() {
    let sb = Sandbox::new();
    let env_file = sb.file("env");
    std::fs::write(
        &env_file,
        "# a comment\nexport FROM_FILE='yes'\nSHARED=file\n",
    )
    .expect("env");
    let keys = format!(
        "LimitNOFILE: \"512:1024\", LimitCORE: 0, LimitSTACK: \"4M\", LimitNPROC: 3000, \
         LimitAS: \"8G:infinity\", LimitMEMLOCK: \"64K\", LimitCPU: 3600, LimitFSIZE: \"1G\", Nice: 7, \
         OOMScoreAdjust: 321, UMask: \"0027\", WorkingDirectory: \"/tmp\", \
         Environment: {{ FROM_KEY: \"k\", SHARED: \"key\" }}, EnvironmentFile: {:?}, \
         NoNewPrivileges: true, IOSchedulingClass: \"idle\"",
        env_file.display()
    );
    let dir = sb.service("web", &sh_service(&keys, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let pid = b
        .wait_status("running", |s| s.state == StateName::Running)
        .pid
        .expect("pid");
    let proc_ = |f: &str| Path::new("/proc").join(pid.to_string()).join(f);
    let limits = std::fs::read_to_string(proc_("limits")).expect("limits");
    let limit = |name: &str| {
        let l = limits.lines().find(|l| l.starts_with(name)).expect(name);
        l[name.len()..]
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max open files"), "512 1024");
    assert_eq!(limit("Max core file size"), "0 0");
    assert_eq!(limit("Max stack size"), "4194304 4194304");
    assert_eq!(limit("Max processes"), "3000 3000");
    assert_eq!(limit("Max address space"), "8589934592 unlimited");
    assert_eq!(limit("Max locked memory"), "65536 65536");
    assert_eq!(limit("Max cpu time"), "3600 3600");
    assert_eq!(limit("Max file size"), "1073741824 1073741824");
    let stat = std::fs::read_to_string(proc_("stat")).expect("stat");
    let nice = stat[stat.rfind(')').expect(")") + 2..]
        .split_whitespace()
        .nth(16)
        .expect("nice");
    assert_eq!(nice, "7");
    let oom = std::fs::read_to_string(proc_("oom_score_adj")).expect("oom");
    assert_eq!(oom.trim(), "321");
    assert_eq!(line(&proc_("status"), "Umask:"), "Umask:\t0027");
    assert_eq!(line(&proc_("status"), "NoNewPrivs:"), "NoNewPrivs:\t1");
    assert_eq!(
        std::fs::read_link(proc_("cwd")).expect("cwd"),
        Path::new("/tmp")
    );
    let env = std::fs::read(proc_("environ")).expect("environ");
    let vars: Vec<String> = env
        .split(|&c| c == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    for want in [
        "FROM_KEY=k",
        "FROM_FILE=yes",
        "SHARED=file",
        "PWD=/tmp",
        "UPK_SERVICE=web",
    ] {
        assert!(vars.iter().any(|v| v == want), "{want} in {vars:?}");
    }
    // The I/O class, as the kernel reports it to ionice (util-linux).
    if let Ok(out) = std::process::Command::new("ionice")
        .arg("-p")
        .arg(pid.to_string())
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "idle");
    }
}

#[test]
fn a_missing_environment_file_fails_the_start_with_its_name() {
    let sb = Sandbox::new();
    let keys = "EnvironmentFile: \"/nonexistent/upk-env\", MaxConsecutiveFailures: 1";
    let dir = sb.service("web", &sh_service(keys, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let rec = b.wait_record("spawn_failed", |_| true);
    let error = rec["error"].as_str().unwrap_or("");
    assert!(
        error.contains("EnvironmentFile /nonexistent/upk-env"),
        "{rec}"
    );
}

#[test]
fn a_pids_limit_is_enforced_where_the_host_has_the_controller() {
    let h = upk_core::cgroup::Hierarchies::of_self();
    let sb = Sandbox::new();
    // The fifth task cannot be forked: the shell says so and exits 2.
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1403 & done\nexec sleep 1000";
    let keys = "TasksMax: 4, MaxConsecutiveFailures: 1";
    let dir = sb.service("web", &sh_service(keys, script));
    let b = sb.buddy(&dir);
    if !cgroups_here() || (!unified_has("pids") && h.v1_base("pids").is_none()) {
        let st = b.wait_status("running", |s| s.state == StateName::Running);
        let notes = st.containment.notes.join("\n");
        assert!(notes.contains("TasksMax not enforced"), "{notes}");
        return;
    }
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["exit"]["code"], 2, "the shell could not fork: {died}");
    let stderr = std::fs::read_to_string(dir.log_file("stderr")).unwrap_or_default();
    assert!(stderr.to_lowercase().contains("fork"), "{stderr}");
    let st = b.wait_status("failed", |s| s.state == StateName::Failed);
    let leaf = match h.v1_base("pids") {
        Some(base) if !unified_has("pids") => base.join(sb.cgroup_name()).join("web"),
        _ => st.containment.cgroup.clone().expect("cgroup"),
    };
    let max = std::fs::read_to_string(leaf.join("pids.max")).expect("pids.max");
    assert_eq!(max.trim(), "4");
}

#[test]
fn an_oom_kill_under_a_memory_limit_is_classified() {
    let h = upk_core::cgroup::Hierarchies::of_self();
    if !cgroups_here() || h.v1_base("memory").is_none() && !unified_has("memory") {
        // No memory controller: the limit is reported, not enforced.
        let sb = Sandbox::new();
        let dir = sb.service("web", &sh_service("MemoryMax: \"32M\"", "exec sleep 1000"));
        let b = sb.buddy(&dir);
        let st = b.wait_status("running", |s| s.state == StateName::Running);
        assert!(st
            .containment
            .notes
            .join("\n")
            .contains("MemoryMax/MemoryHigh not enforced"));
        return;
    }
    let sb = Sandbox::new();
    // tail keeps the last "line" of /dev/zero, which never ends: memory grows until killed.
    let keys = "MemoryMax: \"32M\", MaxConsecutiveFailures: 1";
    let dir = sb.service("web", &sh_service(keys, "exec tail /dev/zero"));
    let b = sb.buddy(&dir);
    let died = b.wait_record("died", |_| true);
    assert_eq!(died["exit"]["signal"], 9, "{died}");
    assert_eq!(died["oom"], true, "{died}");
    assert_eq!(died["reason"], "oom", "{died}");
    assert!(died["cost"]["cpu_us"].as_u64().is_some(), "{died}");
    // The v1 memory controller's peak: the limit was reached.
    let peak = died["cost"]["memory_peak"].as_u64().unwrap_or(0);
    assert!(peak >= 30 << 20, "{died}");
}

fn unified_has(ctl: &str) -> bool {
    upk_core::cgroup::Hierarchies::of_self()
        .unified
        .is_some_and(|d| {
            std::fs::read_to_string(d.join("cgroup.controllers"))
                .is_ok_and(|t| t.split_whitespace().any(|c| c == ctl))
        })
}

#[test]
fn a_leaf_removed_while_stopped_is_made_again_at_the_next_start() {
    let sb = Sandbox::new();
    let dir = sb.service("web", &sh_service("TasksMax: 50", "exec sleep 1000"));
    let b = sb.buddy(&dir);
    b.wait_status("running", |s| s.state == StateName::Running);
    let r = b.call(json!({"type": "stop"}));
    assert_eq!(r["type"], "ok", "{r}");
    b.wait_status("stopped", |s| s.state == StateName::Stopped);
    let Some(leaf) = sb.cgroup_dir("web").filter(|_| cgroups_here()) else {
        return; // nothing to remove without cgroups; the other tests cover the fallback
    };
    std::fs::remove_dir(&leaf).expect("rmdir the empty leaf");
    let r = b.call(json!({"type": "start"}));
    assert_eq!(r["type"], "ok", "{r}");
    let st = b.wait_status("running", |s| s.state == StateName::Running);
    assert_eq!(st.containment.cgroup.as_deref(), Some(leaf.as_path()));
    let pid = st.pid.expect("pid");
    assert!(
        upk_core::cgroup::procs(&leaf).contains(&pid),
        "in the leaf made again"
    );
}

#[test]
fn a_limit_the_kernel_would_refuse_fails_the_start_with_its_key() {
    let sb = Sandbox::new();
    // Far above fs.nr_open (at most 2^30 on Linux).
    let keys = "LimitNOFILE: \"4T\", MaxConsecutiveFailures: 1";
    let dir = sb.service("web", &sh_service(keys, "exec sleep 1000"));
    let b = sb.buddy(&dir);
    let rec = b.wait_record("spawn_failed", |_| true);
    let error = rec["error"].as_str().unwrap_or("");
    assert!(
        error.contains("LimitNOFILE") && error.contains("fs.nr_open"),
        "{rec}"
    );
}
