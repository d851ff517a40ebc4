//! The Debian package, with real dpkg: `packaging/deb/build.sh` builds it (two versions), and a
//! scenario installs, upgrades and removes it, and a package whose maintainer scripts call the
//! hooks, with the controller running and with it stopped.
//!
//! dpkg works on the real root: the scenario runs in its own mount and pid namespace, chrooted
//! into an overlay of `/` whose upper layer is a tmpfs, so every file dpkg writes (its database
//! too) vanishes with the namespace and every process dies with it. Needs root, dpkg-deb,
//! unshare and overlayfs; skipped (and said so) without them. The packaged buddy is the one
//! bench/ measures: static musl, non-PIE (`.ci/test` builds it for the musl target).

use super::*;

/// The packaged `upkweb`: a daemon and its service file, handed over by the hooks. Its prerm
/// calls pre-remove on every action, upgrade included, as a careless packager would: the
/// reinstall within the settle window must still leave the service configured and running.
const WEB_POSTINST: &str = "#!/bin/sh\nset -e\n\
    [ \"$1\" = configure ] || exit 0\n\
    /usr/share/upkeeper/hooks/upkeeper-post-install /usr/share/upkweb/upkweb.conf\n";
const WEB_PRERM: &str = "#!/bin/sh\nset -e\n\
    /usr/share/upkeeper/hooks/upkeeper-pre-remove upkweb.conf upkweb\n";

/// The scenario, run as pid 1 of the namespace; `key=value` lines for the test to check.
const SCENARIO: &str = r#"
set -u
O=$T/ovl
mount -t tmpfs tmpfs "$O"
mkdir -p "$O/upper" "$O/work" "$O/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$O/upper,workdir=$O/work" "$O/root"
mount -t proc proc "$O/root/proc"
mount --rbind /dev "$O/root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$O/root/run"
mkdir -p "$O/root/pkgs" "$O/root/out"
mount --bind "$T/pkgs" "$O/root/pkgs"
mount --bind "$T/out" "$O/root/out"
exec chroot "$O/root" /bin/sh -c "$WAIT_FOR$INNER"
"#;

/// Inside the chroot: every wait bounded (10 s, `wait_for`).
const INNER: &str = r#"
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# man-db's trigger would rebuild the whole man database at every dpkg run: minutes.
rm -f /var/lib/man-db/auto-update
U="upkctl --timeout 5"
web() { pgrep -f 'sleep 100[1]'; }
start_controller() {
	upkeeper run >>/out/controller.log 2>&1 &
	wait_for "$U ping"
}
stop_controller() {
	pid=$($U ping) && kill -TERM "$pid" && wait "$pid"
	! $U ping >/dev/null 2>&1
}

dpkg -i /pkgs/upkeeper_1.deb >/out/dpkg.log 2>&1; echo "install=$?"
cp /usr/libexec/upkeeper/upk_buddy /out/installed_buddy
printf '{ "base": { ExecStart: "sleep 1002", InitialState: "running" } }' \
	> /etc/upkeeper/upkeeper.d/base.conf
start_controller; echo "controller=$?"
wait_for "$U is-active base"; echo "base_running=$?"
base=$(pgrep -f 'sleep 100[2]')

# A package hands a service over; an upgrade of it (pre-remove, then post-install in the
# settle window) leaves it configured and running.
dpkg -i /pkgs/upkweb_1.deb >>/out/dpkg.log 2>&1; echo "web_install=$?"
wait_for "$U is-active upkweb"; echo "web_running=$?"
dpkg -i /pkgs/upkweb_2.deb >>/out/dpkg.log 2>&1; echo "web_upgrade=$?"
wait_for "$U is-active upkweb"; echo "web_running_after_upgrade=$?"

# upkeeper upgraded with the controller running: nothing stops; the new controller adopts.
web1=$(web)
dpkg -i /pkgs/upkeeper_2.deb >>/out/dpkg.log 2>&1; echo "upgrade_running=$?"
stop_controller; echo "controller_stopped=$?"
start_controller; echo "controller_again=$?"
wait_for "$U is-active upkweb base"; echo "adopted=$?"
[ "$(web)" = "$web1" ] && [ "$(pgrep -f 'sleep 100[2]')" = "$base" ]; echo "same_pids=$?"

# Removed and installed again: InitialState applies to the new service.
dpkg -r upkweb >>/out/dpkg.log 2>&1; echo "web_remove=$?"
wait_for "! web"; echo "web_gone=$?"
$U status upkweb >/dev/null 2>&1; echo "web_status=$?"
dpkg -i /pkgs/upkweb_1.deb >>/out/dpkg.log 2>&1; echo "web_reinstall=$?"
wait_for "$U is-active upkweb"; echo "web_running_reinstalled=$?"

# A file whose service id another package's file defines is refused, and nothing installed.
printf '{ "upkweb": { ExecStart: "sleep 1003" } }' > /tmp/thief.conf
/usr/share/upkeeper/hooks/upkeeper-post-install /tmp/thief.conf >/out/thief.log 2>&1
echo "collision=$?"
[ -e /etc/upkeeper/upkeeper.d/thief.conf ]; echo "thief_installed=$?"

# With the controller stopped: upkeeper upgraded, then the package removed. Its service stops
# at once (its program is about to go), and the controller, started again, does not list it.
stop_controller; echo "controller_stopped_2=$?"
dpkg -i /pkgs/upkeeper_2.deb >>/out/dpkg.log 2>&1; echo "upgrade_stopped=$?"
[ "$(pgrep -f 'sleep 100[2]')" = "$base" ]; echo "base_survives=$?"
dpkg -r upkweb >>/out/dpkg.log 2>&1; echo "web_remove_down=$?"
wait_for "! web"; echo "web_gone_down=$?"
start_controller; echo "controller_3=$?"
$U status upkweb >/dev/null 2>&1; echo "web_status_down=$?"
web >/dev/null; echo "web_back=$?"

# Removed with the controller running: the controller stops, services keep running; then
# installed and removed again with the controller stopped.
dpkg -r upkeeper >>/out/dpkg.log 2>&1; echo "remove_running=$?"
live=$(for p in /proc/[0-9]*; do
	tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q '^upkeeper run' &&
		! grep -q '^State:.*Z' "$p/status" 2>/dev/null && echo "$p"
done)
[ ! -e /usr/sbin/upkeeper ] && [ -z "$live" ]; echo "controller_gone=$?"
[ "$(pgrep -f 'sleep 100[2]')" = "$base" ]; echo "base_after_remove=$?"
dpkg -i /pkgs/upkeeper_2.deb >>/out/dpkg.log 2>&1; echo "reinstall=$?"
dpkg -r upkeeper >>/out/dpkg.log 2>&1; echo "remove_stopped=$?"
[ ! -e /usr/libexec/upkeeper/upk_buddy ] && [ -e /etc/upkeeper/upkeeper.conf ]; echo "conffile_kept=$?"
dpkg --purge upkeeper >>/out/dpkg.log 2>&1; echo "purge=$?"
[ ! -e /etc/upkeeper/upkeeper.conf ] && [ -e /var/lib/upkeeper/upkeeper.db ]; echo "store_kept=$?"
"#;

/// True when the scenario can run here; otherwise says why the test is skipped.
fn dpkg_available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let have = |p: &str| Path::new(p).exists();
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let ok =
        root && have("/usr/bin/dpkg-deb") && have("/usr/bin/unshare") && fs.contains("overlay");
    if !ok {
        eprintln!("skipped: needs root, dpkg-deb, unshare and overlayfs (a Debian host as root)");
    }
    ok
}

/// The musl builds of the buddy and upkctl, which the package ships (as install.sh does).
fn musl_dir() -> PathBuf {
    let debug = bin("upkeeper").parent().expect("bindir").to_path_buf();
    let dir = debug.join("../x86_64-unknown-linux-musl/debug");
    assert!(
        dir.join("upk_buddy").is_file() && dir.join("upkctl").is_file(),
        "no musl build in {}: cargo build -p upk-buddy -p upkctl --target x86_64-unknown-linux-musl \
         (.ci/test does; rustup target add x86_64-unknown-linux-musl)",
        dir.display()
    );
    dir
}

/// `packaging/deb/build.sh` with the binaries already built, as version `version`.
fn build_upkeeper(sb: &Sandbox, out: &Path, version: &str, musl: &Path) -> PathBuf {
    let bindir = bin("upkeeper").parent().expect("bindir").to_path_buf();
    let res = Command::new("sh")
        .arg(repo().join("packaging/deb/build.sh"))
        .arg(out)
        .env("VERSION", version)
        // Debug binaries are large: xz would take minutes.
        .env("COMPRESS", "none")
        .env("BINDIR", bindir)
        .env("MUSLDIR", musl)
        .env(MARKER, sb.path())
        .output()
        .expect("build.sh");
    assert!(res.status.success(), "build.sh: {res:?}");
    PathBuf::from(String::from_utf8_lossy(&res.stdout).trim())
}

/// The `upkweb` package at `version`, built with dpkg-deb.
fn build_web(sb: &Sandbox, out: &Path, version: &str) -> PathBuf {
    let root = sb.path().join(format!("web-{version}"));
    for d in ["DEBIAN", "usr/share/upkweb", "usr/lib/upkweb"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: upkweb\nVersion: {version}\nArchitecture: all\nDepends: upkeeper\n\
             Maintainer: test <test@localhost>\nDescription: a web service for the test\n"
        ),
    )
    .expect("control");
    upk_testkit::write_script(&root.join("DEBIAN/postinst"), WEB_POSTINST);
    upk_testkit::write_script(&root.join("DEBIAN/prerm"), WEB_PRERM);
    upk_testkit::write_script(
        &root.join("usr/lib/upkweb/daemon"),
        &format!("#!/bin/sh\n# version {version}\nexec sleep 1001\n"),
    );
    std::fs::write(
        root.join("usr/share/upkweb/upkweb.conf"),
        r#"{ "upkweb": { ExecStart: "/usr/lib/upkweb/daemon", InitialState: "running" } }"#,
    )
    .expect("service file");
    let deb = out.join(format!("upkweb_{version}_all.deb"));
    let res = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(res.status.success(), "dpkg-deb: {res:?}");
    deb
}

/// Whether the ELF file at `path` is a static, non-PIE executable: type `ET_EXEC` and no
/// `PT_INTERP` program header (no dynamic loader).
fn static_non_pie(path: &Path) -> Result<(), String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    if u16_at(16) != 2 {
        return Err(format!("ELF type {} (3 is a PIE), not ET_EXEC", u16_at(16)));
    }
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    for i in 0..phnum as usize {
        let at = phoff + i * phentsize;
        if at + 4 > b.len() {
            return Err("program headers past the end".into());
        }
        if u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) == 3 {
            return Err("has PT_INTERP: dynamically linked".into());
        }
    }
    Ok(())
}

#[test]
fn the_deb_installs_upgrades_and_removes_with_services_running_and_the_controller_up_or_down() {
    if !dpkg_available() {
        return;
    }
    let musl = musl_dir();
    let sb = Sandbox::new();
    let t = sb.path();
    let pkgs = t.join("pkgs");
    std::fs::create_dir_all(&pkgs).expect("pkgs");
    std::fs::create_dir_all(t.join("out")).expect("out");
    std::fs::create_dir_all(t.join("ovl")).expect("ovl");
    for (v, name) in [("0.1.0-1", "upkeeper_1.deb"), ("0.1.0-2", "upkeeper_2.deb")] {
        let deb = build_upkeeper(&sb, &pkgs, v, &musl);
        std::fs::rename(&deb, pkgs.join(name)).expect("rename");
    }
    for (v, name) in [("1", "upkweb_1.deb"), ("2", "upkweb_2.deb")] {
        let deb = build_web(&sb, &pkgs, v);
        std::fs::rename(&deb, pkgs.join(name)).expect("rename");
    }
    let out = Command::new("timeout")
        .args(["300", "unshare", "--mount", "--propagation", "private"])
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(["sh", "-c", SCENARIO])
        .env("T", t)
        .env("WAIT_FOR", WAIT_FOR)
        .env("INNER", INNER)
        .env(MARKER, t)
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let read = |f: &str| std::fs::read_to_string(t.join("out").join(f)).unwrap_or_default();
    let text = format!(
        "{}{}\n--- dpkg.log\n{}\n--- controller.log\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        read("dpkg.log"),
        read("controller.log"),
    );
    let get = |key: &str| value_of(&text, key);
    for (key, want) in [
        ("install", "0"),
        ("controller", "0"),
        ("base_running", "0"),
        ("web_install", "0"),
        ("web_running", "0"),
        ("web_upgrade", "0"),
        ("web_running_after_upgrade", "0"),
        ("upgrade_running", "0"),
        ("controller_stopped", "0"),
        ("controller_again", "0"),
        ("adopted", "0"),
        ("same_pids", "0"),
        ("web_remove", "0"),
        ("web_gone", "0"),
        ("web_status", "2"),
        ("web_reinstall", "0"),
        ("web_running_reinstalled", "0"),
        ("collision", "6"),
        ("thief_installed", "1"),
        ("controller_stopped_2", "0"),
        ("upgrade_stopped", "0"),
        ("base_survives", "0"),
        ("web_remove_down", "0"),
        ("web_gone_down", "0"),
        ("controller_3", "0"),
        ("web_status_down", "2"),
        ("web_back", "1"),
        ("remove_running", "0"),
        ("controller_gone", "0"),
        ("base_after_remove", "0"),
        ("reinstall", "0"),
        ("remove_stopped", "0"),
        ("conffile_kept", "0"),
        ("purge", "0"),
        ("store_kept", "0"),
    ] {
        assert_eq!(get(key), want, "{key}:\n{text}");
    }
    let thief = read("thief.log");
    assert!(
        thief.contains("service upkweb is already defined in /etc/upkeeper/upkeeper.d/upkweb.conf"),
        "{thief}"
    );
    // What the package installed is the buddy bench/ measures.
    static_non_pie(&t.join("out/installed_buddy")).expect("the packaged buddy");
}
