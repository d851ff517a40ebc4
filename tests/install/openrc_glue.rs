//! The OpenRC supervisor glue under real OpenRC: ordinary service scripts with
//! `supervisor=upkeeper` (the library sourced by the script) or `rc_supervise_module=upkeeper`
//! (the global rc.conf.d file, through a bound copy of /etc/rc.conf that sources it), installed
//! by install.sh into a sandbox PREFIX, with the installed controller running inside the
//! namespace.
//!
//! As in [`super::openrc`], each scenario runs as pid 1 of its own mount and pid namespace,
//! with a private `/run` (OpenRC's state) and the sandbox's `etc` bound over `/usr/local/etc`,
//! so nothing reaches the host's OpenRC and every process dies with the namespace. The scenario
//! prints `key=value` lines that the test checks; every wait in it is bounded. Needs root,
//! `openrc-run` and `unshare`; skipped (and said so) without them.

use super::*;

/// Shared by every scenario: a private /run, the namespace's OpenRC, the controller, and
/// bounded waits (`wait_for CONDITION`: 10 s).
const SETUP: &str = r#"
set -u
CONF=$T/etc/upkeeper/upkeeper.conf
U="$T/usr/bin/upkctl --config $CONF --timeout 5"
ID='openrc::demo'
RUN=$T/run/$ID
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/openrc
mount --bind "$T/etc" /usr/local/etc
[ -n "${RCCONF:-}" ] && mount --bind "$RCCONF" /etc/rc.conf
rc-update -u >/dev/null 2>&1 || true
echo default > /run/openrc/softlevel
start_controller() {
	"$T/usr/sbin/upkeeper" --config "$CONF" run >>"$T/files/controller.log" 2>&1 &
	CTL=$!
	wait_for "$U ping"
}
svc_pid() { pgrep -f 'sleep 100[0]'; }
start_controller; echo "controller_up=$?"
"#;

/// Start, status, who runs it and with what, a restart after kill -9, crashed when the buddy
/// dies, stop, and stop with the controller gone.
const LIFECYCLE: &str = r#"
rc-service demo start; echo "start=$?"
rc-service demo status; echo "status_started=$?"
svc=$(svc_pid); echo "svc_pid=$svc"
buddy=$(cat "$RUN/buddy.pid"); echo "buddy_pid=$buddy"
echo "svc_ppid=$(awk '/^PPid:/ {print $2}' /proc/$svc/status)"
echo "svc_uid=$(awk '/^Uid:/ {print $2}' /proc/$svc/status)"
tr '\0' '\n' < /proc/$svc/environ | grep -qx 'UPK_OPENRC_PROBE=hello world' && echo "env_seen=yes"
tr '\0' '\n' < /proc/$svc/environ | grep -q '^RC_' && echo "rc_env_leaked=yes"
echo "record=$(tr '\n' ' ' < /run/openrc/daemons/demo/001)"

kill -9 "$svc"
wait_for "[ -n \"\$(pgrep -f 'sleep 100[0]' | grep -vx $svc)\" ]"; echo "restarted=$?"
wait_for "$U history $ID | grep -q 'killed by SIGKILL' && [ \$($U history $ID | grep -c '\] started') -ge 2 ]"
echo "history_restart=$?"
$U history "$ID"
$U audit | grep -q "start $ID: done.*openrc start demo" && echo "audited=yes"
# rc-status shows the uptime of the current run and the respawns, as for supervise-daemon.
wait_for "grep -qx 1 /run/openrc/options/demo/start_count"; echo "respawns_counted=$?"
COLUMNS=200 rc-status 2>/dev/null | grep demo
COLUMNS=200 rc-status 2>/dev/null | grep -Eq 'demo .*started +[0-9]{2}:[0-9]{2}:[0-9]{2} \(1\)' && echo "rc_status_uptime=yes"
rc-service demo status; echo "status_after_restart=$?"

# The buddy dies while the controller is down: the pid in buddy.pid is dead. The controller is
# killed, not stopped with SIGSTOP: a stopped controller cannot reap its buddy, and OpenRC counts
# a zombie as alive (started, 0). Killed, the buddy is reaped by this namespace's pid 1.
kill -9 "$CTL"
wait_for "[ ! -e /proc/$CTL ]"
kill -9 "$buddy"
wait_for "[ ! -e /proc/$buddy ]"; echo "buddy_gone=$?"
rc-service demo status; echo "status_crashed=$?"
rc-status -c 2>/dev/null | grep -q demo && echo "crashed_listed=yes"
# The controller respawns the buddy, which adopts the service and rewrites buddy.pid.
start_controller
wait_for "p=\$(cat $RUN/buddy.pid) && [ \$p != $buddy ] && [ -e /proc/\$p ]"; echo "buddy_back=$?"
rc-service demo status; echo "status_recovered=$?"

rc-service demo stop; echo "stop=$?"
rc-service demo status; echo "status_stopped=$?"
wait_for "[ -z \"\$(pgrep -f 'sleep 100[0]')\" ]"; echo "svc_gone=$?"

# A changed conf.d changes the service file: the next start runs the new definition.
echo 'export UPK_OPENRC_PROBE="second run"' > "$T/etc/conf.d/demo"
rc-service demo start; echo "start_again=$?"
tr '\0' '\n' < /proc/$(svc_pid)/environ | grep -qx 'UPK_OPENRC_PROBE=second run' && echo "env_changed=yes"
kill -9 "$CTL"
wait_for "[ ! -e /proc/$CTL ]"
rc-service demo stop; echo "stop_without_controller=$?"
rc-service demo status; echo "status_stopped_again=$?"
wait_for "[ -z \"\$(pgrep -f 'sleep 100[0]')\" ]"; echo "svc_gone_again=$?"
# The controller comes back: OpenRC stopped the service, so it stays stopped.
start_controller
wait_for "grep -q 'openrc::demo: the store wants it up, its buddy has it down; following the buddy' $T/files/controller.log"
echo "kept_stopped=$?"
$U status "$ID"
rc-service demo status; echo "status_after_controller_back=$?"
[ -z "$(svc_pid)" ] && echo "still_no_svc=yes"
rc-service demo stop; echo "stop_twice=$?"
"#;

/// The buddy gives up after respawn_max respawns: OpenRC shows stopped and failed.
const EXHAUSTION: &str = r#"
rc-service demo start; echo "start=$?"
for i in 1 2 3; do
	svc=$(svc_pid)
	kill -9 "$svc"
	[ "$i" -lt 3 ] && wait_for "[ -n \"\$(pgrep -f 'sleep 100[0]' | grep -vx $svc)\" ]"
done
wait_for "[ -e /run/openrc/failed/demo ]"; echo "marked_failed=$?"
rc-service demo status; echo "status_after_giving_up=$?"
COLUMNS=200 rc-status 2>/dev/null | grep demo
rc-status 2>/dev/null | grep demo | grep -q failed && echo "rc_status_failed=yes"
# As after supervise-daemon gave up, a plain start works again.
rc-service demo start; echo "start_after_failed=$?"
rc-service demo status; echo "status_restarted=$?"
[ -e /run/openrc/failed/demo ] || echo "failed_cleared=yes"
rc-service demo stop; echo "stop=$?"
"#;

/// The script's `healthcheck` fails once /run/demo-healthy is gone: its `unhealthy` runs and
/// the service is restarted, and the history says so.
const HEALTH: &str = r#"
touch /run/demo-healthy
rc-service demo start; echo "start=$?"
svc=$(svc_pid)
wait_for "$U history $ID | grep -q '\] healthy (0 failed'"; echo "healthy=$?"
rm /run/demo-healthy
wait_for "[ -e /run/demo-unhealthy-ran ]"; echo "unhealthy_ran=$?"
wait_for "[ -n \"\$(pgrep -f 'sleep 100[0]' | grep -vx $svc)\" ]"; echo "restarted=$?"
touch /run/demo-healthy
$U history "$ID"
$U history "$ID" | grep -q 'unhealthy (1 failed probes in a row)' && echo "history_unhealthy=yes"
$U history "$ID" | grep -q 'stopping pid [0-9]* (unhealthy)' && echo "history_restart=yes"
rc-service demo stop; echo "stop=$?"
"#;

/// `rc-service demo reload` with the script's reload() left to the template: the reload action
/// (SIGHUP to the daemon, `sleep` here, which dies of it and is restarted), audited.
const RELOAD: &str = r#"
rc-service demo start; echo "start=$?"
rc-service demo reload; echo "reload=$?"
wait_for "$U history $ID | grep -q 'killed by SIGHUP'"; echo "hup_delivered=$?"
$U audit | grep -q "reload $ID: reload: exited with code 0.*upkctl .* reload $ID" && echo "reload_audited=yes"
rc-service demo stop; echo "stop=$?"
"#;

/// How the service script selects upkeeper.
#[derive(Clone, Copy)]
enum Variant {
    /// `supervisor=upkeeper` and `. PREFIX/lib/upkeeper/openrc.sh` in the script.
    Library,
    /// `rc_supervise_module=upkeeper`, with the glue from rc.conf.d for every script.
    Global,
}

/// Installs into the sandbox, writes the service script `demo` (with `extra` lines), runs
/// `SETUP` and `scenario` in a namespace, and returns what it printed. `None`: skipped.
fn run_scenario(variant: Variant, extra: &str, scenario: &str) -> Option<String> {
    if !openrc_available() {
        return None;
    }
    let sb = Sandbox::new();
    let t = sb.path();
    let etc = install_for_openrc(&sb);

    let select = match variant {
        Variant::Library => format!(
            "supervisor=upkeeper\n. {}/usr/lib/upkeeper/openrc.sh\n",
            t.display()
        ),
        Variant::Global => "rc_supervise_module=upkeeper\n".to_owned(),
    };
    upk_testkit::write_script(
        &etc.join("init.d/demo"),
        &format!(
            "#!/sbin/openrc-run\n{select}command=/bin/sleep\ncommand_args=1000\n\
             command_user=nobody\nrespawn_delay=0\n{extra}"
        ),
    );
    std::fs::write(
        etc.join("conf.d/demo"),
        "export UPK_OPENRC_PROBE=\"hello world\"\n",
    )
    .expect("conf.d");
    let rc_conf = t.join("rc.conf");
    let mut env: Vec<(&str, &Path)> = Vec::new();
    if let Variant::Global = variant {
        // /etc/rc.conf.d may not exist here: a copy of rc.conf that sources the installed
        // global file stands in for it (OPENRC.md section 5).
        let stock = std::fs::read_to_string("/etc/rc.conf").unwrap_or_default();
        std::fs::write(
            &rc_conf,
            format!(
                "{stock}\n. {}\n",
                etc.join("rc.conf.d/upkeeper.conf").display()
            ),
        )
        .expect("rc.conf");
        env.push(("RCCONF", &rc_conf));
    }
    let text = in_namespace(t, 120, &format!("{SETUP}{scenario}"), &env);
    let log = std::fs::read_to_string(t.join("files/controller.log")).unwrap_or_default();
    Some(text + "\n--- controller log ---\n" + &log)
}

fn check_lifecycle(text: &str) {
    eprintln!("{text}"); // shown with --nocapture, and for a failure
    for (key, want) in [
        ("controller_up", "0"),
        ("start", "0"),
        ("status_started", "0"),
        ("env_seen", "yes"),
        ("svc_uid", "65534"),
        ("restarted", "0"),
        ("history_restart", "0"),
        ("audited", "yes"),
        ("respawns_counted", "0"),
        ("rc_status_uptime", "yes"),
        ("status_after_restart", "0"),
        ("buddy_gone", "0"),
        ("status_crashed", "32"),
        ("crashed_listed", "yes"),
        ("buddy_back", "0"),
        ("status_recovered", "0"),
        ("stop", "0"),
        ("status_stopped", "3"),
        ("svc_gone", "0"),
        ("start_again", "0"),
        ("env_changed", "yes"),
        ("stop_without_controller", "0"),
        ("status_stopped_again", "3"),
        ("svc_gone_again", "0"),
        ("kept_stopped", "0"),
        ("status_after_controller_back", "3"),
        ("still_no_svc", "yes"),
        ("stop_twice", "0"),
    ] {
        assert_eq!(value_of(text, key), want, "{key}:\n{text}");
    }
    // The service is the buddy's child, and OpenRC's daemon record names the buddy's pidfile.
    assert_eq!(
        value_of(text, "svc_ppid"),
        value_of(text, "buddy_pid"),
        "{text}"
    );
    let record = value_of(text, "record");
    assert!(
        record.contains("/usr/libexec/upkeeper/upk_buddy")
            && record.contains("pidfile=")
            && record.contains("openrc::demo/buddy.pid"),
        "{record}"
    );
    assert!(!text.contains("rc_env_leaked=yes"), "{text}");
}

#[test]
fn openrc_glue_supervisor_upkeeper_from_the_library() {
    if let Some(text) = run_scenario(Variant::Library, "respawn_max=0\n", LIFECYCLE) {
        check_lifecycle(&text);
    }
}

#[test]
fn openrc_glue_rc_supervise_module_from_rc_conf_d() {
    if let Some(text) = run_scenario(Variant::Global, "respawn_max=0\n", LIFECYCLE) {
        check_lifecycle(&text);
    }
}

#[test]
fn openrc_glue_runs_the_scripts_healthcheck_and_unhealthy() {
    let extra = "healthcheck_timer=1\n\
                 healthcheck() { [ -e /run/demo-healthy ]; }\n\
                 unhealthy() { touch /run/demo-unhealthy-ran; }\n";
    if let Some(text) = run_scenario(Variant::Library, extra, HEALTH) {
        eprintln!("{text}");
        for (key, want) in [
            ("controller_up", "0"),
            ("start", "0"),
            ("healthy", "0"),
            ("unhealthy_ran", "0"),
            ("restarted", "0"),
            ("history_unhealthy", "yes"),
            ("history_restart", "yes"),
            ("stop", "0"),
        ] {
            assert_eq!(value_of(&text, key), want, "{key}:\n{text}");
        }
    }
}

#[test]
fn openrc_glue_reload_runs_the_reload_action_through_the_controller() {
    let extra = "extra_started_commands=reload\n";
    if let Some(text) = run_scenario(Variant::Global, extra, RELOAD) {
        eprintln!("{text}");
        for (key, want) in [
            ("controller_up", "0"),
            ("start", "0"),
            ("reload", "0"),
            ("hup_delivered", "0"),
            ("reload_audited", "yes"),
            ("stop", "0"),
        ] {
            assert_eq!(value_of(&text, key), want, "{key}:\n{text}");
        }
    }
}

#[test]
fn openrc_glue_gives_up_stopped_and_failed() {
    if let Some(text) = run_scenario(Variant::Library, "respawn_max=2\n", EXHAUSTION) {
        eprintln!("{text}");
        for (key, want) in [
            ("controller_up", "0"),
            ("start", "0"),
            ("marked_failed", "0"),
            ("status_after_giving_up", "3"),
            ("rc_status_failed", "yes"),
            ("start_after_failed", "0"),
            ("status_restarted", "0"),
            ("failed_cleared", "yes"),
            ("stop", "0"),
        ] {
            assert_eq!(value_of(&text, key), want, "{key}:\n{text}");
        }
    }
}
