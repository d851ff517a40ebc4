//! `install.sh` into a DESTDIR, then the installed layout at work: the installed controller
//! with the installed buddy runs a service, the installed `upkctl` shows it, and the installed
//! package hooks add a service (it runs within a bounded wait) and take it away again.
//!
//! The installer takes the binaries already built in `target/debug` (`BINDIR`) so the test
//! builds nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use upk_testkit::{bin, wait_until, Sandbox, MARKER};

mod apk;
mod deb;
mod man;
mod openrc;
mod openrc_glue;

/// The repository root (install.sh lives there).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The shell function the OpenRC scenarios wait with: `wait_for CONDITION` polls every 50 ms
/// and gives up after 10 s (status 1).
const WAIT_FOR: &str = r#"
wait_for() {
	n=0
	while ! sh -c "$1" >/dev/null 2>&1; do
		n=$((n + 1))
		[ "$n" -ge 200 ] && return 1
		sleep 0.05
	done
}
"#;

/// The value of `key=` in a scenario's output (the OpenRC and dpkg scenarios print
/// `key=value` lines).
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the scenario's output:\n{text}"))
        .trim()
        .to_owned()
}

/// Runs `WAIT_FOR` and `script` with `sh` as pid 1 of a new mount and pid namespace (so every
/// process dies with it), with `T` the sandbox and `env`, within `timeout` seconds; returns
/// what it printed, stdout then stderr.
fn in_namespace(t: &Path, timeout: u32, script: &str, env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args([
        &timeout.to_string(),
        "unshare",
        "--mount",
        "--propagation",
        "private",
    ])
    .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
    .args(["sh", "-c", &format!("{WAIT_FOR}{script}")])
    .env("T", t)
    .env(MARKER, t)
    .stdin(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().expect("unshare");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// An OpenRC service `dep` in `etc/init.d` that needs upkeeper and, when it starts, records
/// whether the controller answered (`files/dep-saw-ready`).
fn write_dependant(etc: &Path, t: &Path) {
    upk_testkit::write_script(
        &etc.join("init.d/dep"),
        &format!(
            "#!/sbin/openrc-run\n\
             depend() {{ need upkeeper; }}\n\
             start() {{ {t}/usr/bin/upkctl --config {t}/etc/upkeeper/upkeeper.conf --timeout 2 \
             ping >/dev/null && touch {t}/files/dep-saw-ready; }}\n\
             stop() {{ return 0; }}\n",
            t = t.display()
        ),
    );
}

/// True when real OpenRC can run here (root, `openrc-run`); otherwise says why the test is
/// skipped.
fn openrc_available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let have = |p: &str| Path::new(p).exists();
    let ok = root && (have("/sbin/openrc-run") || have("/usr/sbin/openrc-run"));
    if !ok {
        eprintln!("skipped: needs root and openrc (apt-get install openrc; .ci/run does)");
    }
    ok
}

/// For the OpenRC tests: `etc/` of the sandbox with `init.d`, `conf.d` and a controller file
/// whose state is in the sandbox, then install.sh with PREFIX `<sandbox>/usr` and that `etc`
/// (the controller file first: install.sh keeps an existing one), with every init's files
/// (`INIT=all`). Returns `etc`.
fn install_for_openrc(sb: &Sandbox) -> PathBuf {
    install_for_init(sb, "all")
}

/// As [`install_for_openrc`], with install.sh's `INIT` set to `init`.
fn install_for_init(sb: &Sandbox, init: &str) -> PathBuf {
    let t = sb.path();
    let etc = t.join("etc");
    for d in ["upkeeper/upkeeper.d", "init.d", "conf.d"] {
        std::fs::create_dir_all(etc.join(d)).expect("mkdir");
    }
    std::fs::write(
        etc.join("upkeeper/upkeeper.conf"),
        format!(
            "{{ StateDir: {:?}, SvcConfigPath: {:?}, SvcRunPath: {:?}, UpkBuddyPath: {:?} }}",
            t.join("state"),
            etc.join("upkeeper/upkeeper.d"),
            sb.run_path(),
            t.join("usr/libexec/upkeeper/upk_buddy"),
        ),
    )
    .expect("controller file");
    let bindir = bin("upkeeper").parent().expect("bindir").to_path_buf();
    let out = Command::new("sh")
        .arg(repo().join("install.sh"))
        .env("PREFIX", t.join("usr"))
        .env("SYSCONFDIR", &etc)
        .env("BINDIR", bindir)
        .env("INIT", init)
        .env(MARKER, t)
        .output()
        .expect("sh install.sh");
    assert!(out.status.success(), "{out:?}");
    etc
}

/// Runs `install.sh` with PREFIX=/usr into `dest`, taking the built binaries.
fn install(sb: &Sandbox, dest: &Path) -> Output {
    let bindir = bin("upkeeper").parent().expect("bindir").to_path_buf();
    let out = Command::new("sh")
        .arg(repo().join("install.sh"))
        .env("PREFIX", "/usr")
        .env("DESTDIR", dest)
        .env("BINDIR", bindir)
        .env(MARKER, sb.path())
        .output()
        .expect("sh install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The installed controller, killed (SIGKILL) when dropped.
struct Installed(Child);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an installed program with the sandbox's marker; returns (exit code, stdout, stderr).
fn run(sb: &Sandbox, prog: &Path, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut cmd = Command::new(prog);
    cmd.args(args).env(MARKER, sb.path()).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run installed program");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The state `upkctl status --json SERVICE` reports, or what it said instead.
fn state(sb: &Sandbox, upkctl: &Path, ctl: &Path, id: &str) -> Result<String, String> {
    let (code, out, err) = run(
        sb,
        upkctl,
        &[
            "--config",
            ctl.to_str().expect("utf8"),
            "--json",
            "status",
            id,
        ],
        &[],
    );
    if code != 0 {
        return Err(format!("exit {code}: {out}{err}"));
    }
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["services"][0]["state"].as_str().map(str::to_owned))
        .ok_or(out)
}

#[test]
fn install_lays_out_every_file_under_destdir() {
    let sb = Sandbox::new();
    let dest = sb.path().join("dest");
    install(&sb, &dest);
    for f in [
        "usr/sbin/upkeeper",
        "usr/bin/upkctl",
        "usr/bin/uptop",
        "usr/libexec/upkeeper/upk_buddy",
        "usr/share/upkeeper/templates/script.tera",
        "usr/share/upkeeper/hooks/upkeeper-post-install",
        "usr/share/upkeeper/hooks/upkeeper-pre-remove",
        "usr/share/man/man1/upkctl.1",
        "usr/share/man/man1/upkctl-status.1",
        "usr/share/man/man1/uptop.1",
        "usr/share/man/man5/upkeeper.conf.5",
        "usr/share/man/man8/upkeeper.8",
        "usr/share/bash-completion/completions/upkctl",
        "usr/share/zsh/site-functions/_upkctl",
        "usr/share/fish/vendor_completions.d/upkctl.fish",
        "usr/share/doc/upkeeper/README.md",
        "usr/share/doc/upkeeper/controller.md",
        "etc/upkeeper/upkeeper.conf",
        "usr/lib/upkeeper/openrc.sh",
        "etc/rc.conf.d/upkeeper.conf",
    ] {
        assert!(dest.join(f).is_file(), "{f} is not installed");
    }
    assert!(dest.join("etc/upkeeper/upkeeper.d").is_dir());
    // PREFIX=/usr puts the buddy where the controller looks by default, and the installed
    // controller file says so and validates.
    let conf = std::fs::read_to_string(dest.join("etc/upkeeper/upkeeper.conf")).expect("conf");
    assert!(
        conf.contains("\"/usr/libexec/upkeeper/upk_buddy\""),
        "{conf}"
    );
    assert!(!conf.contains(dest.to_str().expect("utf8")), "{conf}");
    let upkctl = dest.join("usr/bin/upkctl");
    let conf_path = dest.join("etc/upkeeper/upkeeper.conf");
    let (code, out, err) = run(
        &sb,
        &upkctl,
        &["check", "--controller", conf_path.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // An existing controller file is the admin's: a second install keeps it.
    std::fs::write(&conf_path, "{ BuddyPollingInterval: 1 }").expect("edit");
    install(&sb, &dest);
    assert_eq!(
        std::fs::read_to_string(&conf_path).expect("conf"),
        "{ BuddyPollingInterval: 1 }"
    );
}

#[test]
fn installed_layout_runs_services_and_the_hooks_add_and_remove_one() {
    let sb = Sandbox::new();
    let dest = sb.path().join("dest");
    install(&sb, &dest);
    let upkeeper = dest.join("usr/sbin/upkeeper");
    let upkctl = dest.join("usr/bin/upkctl");
    let hooks = dest.join("usr/share/upkeeper/hooks");
    let conf_dir = sb.path().join("conf");

    // A controller file for the sandbox, with the installed buddy.
    let ctl = sb.path().join("upkeeper.conf");
    std::fs::write(
        &ctl,
        format!(
            "{{ StateDir: {:?}, SvcConfigPath: {:?}, SvcRunPath: {:?}, UpkBuddyPath: {:?} }}",
            sb.path().join("state"),
            conf_dir,
            sb.run_path(),
            dest.join("usr/libexec/upkeeper/upk_buddy"),
        ),
    )
    .expect("controller file");
    std::fs::write(
        conf_dir.join("base.conf"),
        r#"{ "base": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("service file");

    let controller = Installed(
        Command::new(&upkeeper)
            .args(["--config", ctl.to_str().expect("utf8"), "run"])
            .env(MARKER, sb.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("installed upkeeper"),
    );
    let wait = Duration::from_secs(20);
    wait_until(wait, "base running under the installed layout", || {
        state(&sb, &upkctl, &ctl, "base").and_then(|s| (s == "running").then_some(()).ok_or(s))
    });
    // Its buddy is the installed one.
    let buddies = sb.buddies();
    assert!(!buddies.is_empty());
    for pid in &buddies {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert_eq!(exe, dest.join("usr/libexec/upkeeper/upk_buddy"));
    }

    let env: [(&str, &Path); 3] = [
        ("UPKCTL", &upkctl),
        ("UPKEEPER_CONFIG", &ctl),
        ("UPKEEPER_SERVICE_DIR", &conf_dir),
    ];

    // post-install refuses an invalid file and installs nothing.
    let bad = sb.file("bad.conf");
    std::fs::write(&bad, r#"{ "bad": { ExecStart: 5 } }"#).expect("bad file");
    let (code, _, err) = run(
        &sb,
        &hooks.join("upkeeper-post-install"),
        &[bad.to_str().expect("utf8")],
        &env,
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("not installed"), "{err}");
    assert!(!conf_dir.join("bad.conf").exists());

    // post-install of a valid file: the controller picks it up and starts it.
    let pkg = sb.file("pkg-web.conf");
    std::fs::write(
        &pkg,
        r#"{ "pkg-web": { ExecStart: "sleep 1000", InitialState: "running" } }"#,
    )
    .expect("package file");
    let (code, out, err) = run(
        &sb,
        &hooks.join("upkeeper-post-install"),
        &[pkg.to_str().expect("utf8"), "pkg-web.conf"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(conf_dir.join("pkg-web.conf").is_file());
    wait_until(
        Duration::from_secs(10),
        "the dropped-in service running",
        || {
            state(&sb, &upkctl, &ctl, "pkg-web")
                .and_then(|s| (s == "running").then_some(()).ok_or(s))
        },
    );

    // pre-remove stops it, unconfigures it and removes the file; base is untouched.
    let (code, out, err) = run(
        &sb,
        &hooks.join("upkeeper-pre-remove"),
        &["pkg-web.conf", "pkg-web"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!conf_dir.join("pkg-web.conf").exists());
    wait_until(Duration::from_secs(10), "pkg-web gone", || {
        match state(&sb, &upkctl, &ctl, "pkg-web") {
            Err(e) if e.starts_with("exit 2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(sb.processes("sleep 1000").len() == 1, "only base's service");
    assert_eq!(state(&sb, &upkctl, &ctl, "base").expect("base"), "running");
    // A second pre-remove of the same package is harmless.
    let (code, out, err) = run(
        &sb,
        &hooks.join("upkeeper-pre-remove"),
        &["pkg-web.conf", "pkg-web"],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    drop(controller);
}

/// The init scripts as installed: the systemd unit passes `systemd-analyze verify` (skipped,
/// and said so, where systemd-analyze is missing), and the OpenRC scripts and glue parse.
#[test]
fn installed_init_scripts_verify() {
    let sb = Sandbox::new();
    // No DESTDIR: the unit then names binaries that exist, which verify checks.
    let prefix = sb.path().join("p/usr");
    let bindir = bin("upkeeper").parent().expect("bindir").to_path_buf();
    let out = Command::new("sh")
        .arg(repo().join("install.sh"))
        .env("PREFIX", &prefix)
        .env("SYSCONFDIR", sb.path().join("p/etc"))
        .env("BINDIR", bindir)
        .env(MARKER, sb.path())
        .output()
        .expect("sh install.sh");
    assert!(out.status.success(), "{out:?}");
    let unit = prefix.join("lib/systemd/system/upkeeper.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    assert!(text.contains(&format!("ExecStart={}/sbin/upkeeper", prefix.display())));
    assert!(text.contains("KillMode=process"));
    for script in [
        "etc/init.d/upkeeper",
        "etc/conf.d/upkeeper",
        "etc/rc.conf.d/upkeeper.conf",
        "usr/lib/upkeeper/openrc.sh",
    ] {
        let path = sb.path().join("p").join(script);
        let status = Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("sh -n");
        assert!(status.success(), "{} does not parse", path.display());
    }
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("skipped systemd-analyze verify: {e}"),
    }
}
