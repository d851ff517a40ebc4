//! The Alpine package (packaging/alpine): its APKBUILD's `package()` run as abuild would (with
//! `builddir`, `srcdir` and `pkgdir` set) over the binaries already built, and its maintainer
//! scripts under real OpenRC. abuild itself needs Alpine; what it would call is tested here.

use super::*;

/// A build directory as abuild's would be after `build()`: the tree's files, and the builds
/// where package() looks for them (target/release, target/static/release).
fn builddir(sb: &Sandbox) -> PathBuf {
    let b = sb.path().join("build");
    std::fs::create_dir_all(b.join("target/static")).expect("mkdir");
    for entry in std::fs::read_dir(repo()).expect("repo") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name != "target" && name != ".git" {
            std::os::unix::fs::symlink(entry.path(), b.join(&name)).expect("symlink");
        }
    }
    let debug = bin("upkeeper").parent().expect("bindir").to_path_buf();
    std::os::unix::fs::symlink(&debug, b.join("target/release")).expect("symlink");
    std::os::unix::fs::symlink(&debug, b.join("target/static/release")).expect("symlink");
    b
}

#[test]
fn apkbuild_package_lays_out_the_openrc_files_under_their_alpine_names() {
    let sb = Sandbox::new();
    let build = builddir(&sb);
    let pkg = sb.path().join("pkg");
    let srcdir = repo().join("packaging/alpine");
    let out = Command::new("sh")
        .args(["-c", ". ./APKBUILD && set -e && package"])
        .current_dir(&srcdir)
        .env("builddir", &build)
        .env("srcdir", &srcdir)
        .env("pkgdir", &pkg)
        .env(MARKER, sb.path())
        .output()
        .expect("sh");
    assert!(out.status.success(), "package() failed: {out:?}");
    for f in [
        "usr/sbin/upkeeper",
        "usr/bin/upkctl",
        "usr/bin/uptop",
        "usr/libexec/upkeeper/upk_buddy",
        "usr/lib/upkeeper/openrc.sh",
        "etc/rc.conf.d/upkeeper.conf",
        "etc/conf.d/upkeeper",
        "usr/share/man/man8/upkeeper.8",
        "usr/share/man/man5/upkeeper.conf.5",
    ] {
        assert!(pkg.join(f).is_file(), "{f} is not packaged");
    }
    let initd = pkg.join("etc/init.d/upkeeper");
    let mode = std::fs::metadata(&initd)
        .expect("init.d/upkeeper")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o755
    );
    let script = std::fs::read(&initd).expect("read");
    assert_eq!(
        script,
        std::fs::read(repo().join("init-scripts/upkeeper.initd")).expect("src")
    );
    // OpenRC only: no gate (busybox init), no systemd unit; the conffile is the admin's.
    assert!(!pkg.join("etc/init.d/upkeeper-ready").exists());
    assert!(!pkg.join("usr/lib/systemd").exists());
    assert!(pkg.join("etc/upkeeper/upkeeper.conf").is_file());
}

/// post-upgrade and pre-deinstall as apk runs them, as pid 1 of a namespace with real OpenRC
/// (the layout of openrc.rs). Prints `key=value` lines; every wait is bounded.
const SCENARIO: &str = r#"
set -u
export UPKEEPER_SOCKET="$T/state/upkeeper.sock"
U="$T/usr/bin/upkctl --timeout 2"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/openrc
mount --bind "$T/etc" /usr/local/etc
rc-update -u >/dev/null 2>&1 || true
echo default > /run/openrc/softlevel
for s in post-upgrade pre-deinstall; do
	sed "s|/usr/bin/upkctl|$T/usr/bin/upkctl|g" "$A/upkeeper.$s" > "$T/files/$s"
done

rc-service upkeeper start >/dev/null 2>&1; echo "start=$?"
wait_for "$U status svc | grep -q ' running '"; echo "svc_running=$?"
svc=$(pgrep -f 'sleep 100[0]'); echo "svc_pid=$svc"
ctl=$(cat /run/openrc/options/upkeeper/child_pid); echo "ctl_pid=$ctl"

sh "$T/files/post-upgrade" 0.1.1-r0 0.1.0-r0; echo "post_upgrade=$?"
rc-service upkeeper status >/dev/null; echo "status_upgraded=$?"
wait_for "[ \"\$(cat /run/openrc/options/upkeeper/child_pid)\" != $ctl ] && $U ping"
echo "restarted=$?"
wait_for "$U status svc | grep -q ' running '"; echo "svc_running_after=$?"
echo "svc_pid_after=$(pgrep -f 'sleep 100[0]')"

sh "$T/files/pre-deinstall" 0.1.1-r0 2> "$T/files/pre-deinstall.err"; echo "pre_deinstall=$?"
rc-service upkeeper status >/dev/null 2>&1; echo "status_after=$?"
wait_for "! pgrep -f usr/sbin/upkeepe[r]"; echo "controller_gone=$?"
echo "svc_pid_removed=$(pgrep -f 'sleep 100[0]')"
echo "said=$(cat "$T/files/pre-deinstall.err")"
"#;

#[test]
fn apk_upgrade_restarts_the_controller_alone_and_deinstall_leaves_services_running() {
    if !openrc_available() {
        return;
    }
    let sb = Sandbox::new();
    let t = sb.path();
    let etc = install_for_init(&sb, "openrc");
    std::fs::write(
        etc.join("upkeeper/upkeeper.d/svc.conf"),
        r#"{ "svc": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("service file");
    let text = in_namespace(t, 120, SCENARIO, &[("A", &repo().join("packaging/alpine"))]);
    let get = |key: &str| value_of(&text, key);
    for (key, want) in [
        ("start", "0"),
        ("svc_running", "0"),
        ("post_upgrade", "0"),
        ("status_upgraded", "0"),
        ("restarted", "0"),
        ("svc_running_after", "0"),
        ("pre_deinstall", "0"),
        ("status_after", "3"),
        ("controller_gone", "0"),
    ] {
        assert_eq!(get(key), want, "{key}:\n{text}");
    }
    let svc = get("svc_pid");
    assert!(svc.parse::<i32>().is_ok(), "one service process:\n{text}");
    assert_eq!(
        get("svc_pid_after"),
        svc,
        "the upgrade kept the service:\n{text}"
    );
    assert_eq!(
        get("svc_pid_removed"),
        svc,
        "removal left the service running:\n{text}"
    );
    assert!(get("said").contains("1 services keep running"), "{text}");
}
