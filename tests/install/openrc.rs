//! The controller's OpenRC script under real OpenRC (`../shared/OPENRC.md` section 5): each run
//! in its own mount and pid namespace, with a private `/run` (OpenRC's state and
//! supervise-daemon's pidfile) and the sandbox's `etc`
//! bound over `/usr/local/etc`, so nothing reaches the host's OpenRC state and every process
//! dies with the namespace. Needs root, `openrc-run` and `unshare`; skipped (and said so)
//! without them.

use super::*;

/// The scenario, run as pid 1 of the namespace. It prints `key=value` lines for the test to
/// check; every wait in it is bounded (10 s).
const SCENARIO: &str = r#"
set -u
U="$T/usr/bin/upkctl --config $T/etc/upkeeper/upkeeper.conf --timeout 2"
# A private /run: supervise-daemon's pidfile (/run/supervise-upkeeper.pid) and OpenRC's state.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/openrc
mount --bind "$T/etc" /usr/local/etc
rc-update -u >/dev/null 2>&1 || true
echo default > /run/openrc/softlevel

rc-service dep start; echo "dep_start=$?"
[ -e "$T/files/dep-saw-ready" ] && echo "dep_saw_ready=yes"
rc-service upkeeper status; echo "status_started=$?"
wait_for "$U status svc | grep -q ' running '"; echo "svc_running=$?"
svc=$(pgrep -f 'sleep 100[0]'); echo "svc_pid=$svc"

ctl=$(cat /run/openrc/options/upkeeper/child_pid); echo "ctl_pid=$ctl"
kill -9 "$ctl"
wait_for "[ \"\$(cat /run/openrc/options/upkeeper/child_pid)\" != $ctl ] && $U ping"
echo "respawned=$?"
wait_for "$U status svc | grep -q ' running '"; echo "svc_running_after=$?"
echo "svc_pid_after=$(pgrep -f 'sleep 100[0]')"

rc-service dep stop; echo "dep_stop=$?"
rc-service upkeeper stop; echo "stop=$?"
rc-service upkeeper status; echo "status_stopped=$?"
wait_for "! pgrep -f usr/sbin/upkeepe[r]"; echo "controller_gone=$?"
echo "svc_pid_stopped=$(pgrep -f 'sleep 100[0]')"
"#;

#[test]
fn openrc_script_starts_the_controller_gates_a_dependant_and_stops_it_alone() {
    if !openrc_available() {
        return;
    }
    let sb = Sandbox::new();
    let t = sb.path();
    let etc = install_for_openrc(&sb);
    std::fs::write(
        etc.join("upkeeper/upkeeper.d/svc.conf"),
        r#"{ "svc": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("service file");
    // A dependant that records whether the controller answered when it started.
    write_dependant(&etc, t);

    let text = in_namespace(t, 120, SCENARIO, &[]);
    let get = |key: &str| value_of(&text, key);
    for (key, want) in [
        ("dep_start", "0"),
        ("dep_saw_ready", "yes"),
        ("status_started", "0"),
        ("svc_running", "0"),
        ("respawned", "0"),
        ("svc_running_after", "0"),
        ("dep_stop", "0"),
        ("stop", "0"),
        ("status_stopped", "3"),
        ("controller_gone", "0"),
    ] {
        assert_eq!(get(key), want, "{key}:\n{text}");
    }
    // The service (and its buddy) outlived the controller's kill -9 and its stop.
    let svc = get("svc_pid");
    assert!(svc.parse::<i32>().is_ok(), "one service process:\n{text}");
    assert_eq!(get("svc_pid_after"), svc, "{text}");
    assert_eq!(get("svc_pid_stopped"), svc, "{text}");
}

/// The gate scenario: OpenRC starts a dependant while the controller is not up yet; the
/// controller comes up "from inittab" (started here by hand) while the gate waits.
const GATE_SCENARIO: &str = r#"
set -u
U="$T/usr/bin/upkctl --config $T/etc/upkeeper/upkeeper.conf --timeout 2"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/openrc
mount --bind "$T/etc" /usr/local/etc
rc-update -u >/dev/null 2>&1 || true
echo default > /run/openrc/softlevel

rc-service dep start > "$T/files/dep.out" 2>&1 &
dep=$!
wait_for "[ -e /run/openrc/starting/upkeeper-ready ]"; echo "gate_waiting=$?"
[ -e "$T/files/dep-saw-ready" ] && echo "dep_early=yes"
"$T/usr/sbin/upkeeper" --config "$T/etc/upkeeper/upkeeper.conf" run > "$T/files/ctl.out" 2>&1 &
wait "$dep"; echo "dep_start=$?"
[ -e "$T/files/dep-saw-ready" ] && echo "dep_saw_ready=yes"
rc-service upkeeper-ready status; echo "gate_status=$?"
echo "gate_resolved=$(ls /run/openrc/started | tr '\n' ' ')"
"#;

#[test]
fn the_inittab_gate_has_its_own_name_and_holds_need_upkeeper_until_the_controller_answers() {
    if !openrc_available() {
        return;
    }
    let sb = Sandbox::new();
    let t = sb.path();
    let etc = install_for_init(&sb, "inittab");
    assert!(etc.join("init.d/upkeeper-ready").is_file());
    assert!(
        !etc.join("init.d/upkeeper").exists(),
        "INIT=inittab installs no controller script"
    );
    write_dependant(&etc, t);
    let text = in_namespace(t, 120, GATE_SCENARIO, &[]);
    let dep_out = std::fs::read_to_string(t.join("files/dep.out")).unwrap_or_default();
    let text = format!("{text}\ndep.out:\n{dep_out}");
    assert!(
        !text.contains("dep_early=yes"),
        "dep started before the controller:\n{text}"
    );
    for (key, want) in [
        ("gate_waiting", "0"),
        ("dep_start", "0"),
        ("dep_saw_ready", "yes"),
        ("gate_status", "0"),
    ] {
        assert_eq!(value_of(&text, key), want, "{key}:\n{text}");
    }
    let started = value_of(&text, "gate_resolved");
    assert!(
        started.contains("upkeeper-ready") && started.contains("dep"),
        "{text}"
    );
}
