//! Service files the controller must refuse without harm (issue 11): a FIFO named `x.conf`,
//! symbolic links to a directory, to nowhere or in a loop, a file over 1 MiB, nesting 100,000
//! deep. Each is one error in the controller's log; the controller keeps answering and the
//! other files' services keep running.

use super::*;
use upk_testkit::Controller;

const GOOD: &str = r#"{ "good": { ExecStart: "sleep 1000", InitialState: "running" } }"#;

#[test]
fn a_fifo_named_x_conf_does_not_hang_the_controller() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "a.conf", GOOD);
    nix::unistd::mkfifo(
        &sb.path().join("conf/x.conf"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    // Opening the FIFO blocked the controller before it ever served its socket.
    let c = Controller::start(&sb, &ctl);
    c.said("x.conf: refusing to read: it is a FIFO, not a regular file");
    running(&sb, "good");
    assert_eq!(c.client().list().expect("list").len(), 1);
}

#[test]
fn bad_files_added_while_running_are_each_reported_and_the_rest_keep_running() {
    let sb = Sandbox::new();
    let ctl = sb.controller_file();
    service_file(&sb, "a.conf", GOOD);
    let c = Controller::start(&sb, &ctl);
    let pid = running(&sb, "good").pid;
    let conf = sb.path().join("conf");

    // Links are only ever created: the watcher must count their creation as a change.
    let target = sb.path().join("elsewhere");
    std::fs::create_dir(&target).expect("mkdir");
    std::os::unix::fs::symlink(&target, conf.join("dir.conf")).expect("symlink");
    c.said(&format!(
        "dir.conf: refusing to read: it is a symbolic link to {}, which is a directory, not a regular file",
        target.display()
    ));
    std::os::unix::fs::symlink("loop.conf", conf.join("loop.conf")).expect("symlink");
    c.said("loop.conf: refusing to read: it is a symbolic link to loop.conf, that loops");
    std::os::unix::fs::symlink("/nowhere/at/all", conf.join("gone.conf")).expect("symlink");
    c.said("gone.conf: refusing to read: it is a symbolic link to /nowhere/at/all, which does not exist");
    nix::unistd::mkfifo(
        &conf.join("x.conf"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    c.said("x.conf: refusing to read: it is a FIFO, not a regular file");

    let big = format!("{GOOD}{}", " ".repeat(2 << 20));
    service_file(&sb, "big.conf", &big);
    c.said(&format!(
        "big.conf: refusing to read: it is {} bytes",
        big.len()
    ));
    service_file(&sb, "deep.conf", &"[".repeat(100_000));
    c.said("deep.conf:1:65: syntax error: objects and arrays nest deeper than 64 levels here");

    // Through all of it: the controller answers and the good service was never touched.
    assert_eq!(c.client().list().expect("list").len(), 1);
    assert_eq!(running(&sb, "good").pid, pid);
}
