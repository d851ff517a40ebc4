//! When a rendered script needs no shell: the buddy's fast path.
//!
//! The default scripts are one `exec` line under `#!/bin/sh`: `exec PROGRAM ARGS` to start,
//! `exec kill $1` to stop, `exec kill -HUP $1` to reload. Running `/bin/sh` only to `exec`
//! costs a restart about a millisecond (two execs instead of one), and a stop or reload two
//! processes where a signal would do. [`plan`] reads a script's text and says what the shell
//! would do when that is certain without a shell: exec these words ([`Direct::Exec`]), or
//! send this signal to `$1` ([`Direct::Signal`]). It says so only for one exact shape:
//!
//! * the first line is `#!/bin/sh`;
//! * every other line is blank, a comment (`#` first), or the one command line;
//! * the command line is `exec` and words separated by spaces or tabs, each made only of
//!   ASCII letters, digits and `_ - . / , : @ % + =` (so no quoting, expansion, globbing,
//!   redirection, assignment or second command can be in it), the program name not starting
//!   with `-` and holding no `=`;
//! * for a signal: `exec kill $1`, `exec kill -SIG $1` or `exec kill -s SIG $1`, SIG a name
//!   (with or without `SIG`) or a number of a signal this system has.
//!
//! Anything else is `None`: the script runs as written. The script on disk stays the
//! contract; the caller reads it at each use, so an edited script is honoured at once.
//! `docs/servicedir.md` says when the shell is skipped. Pure text in, plan out.

use std::str::FromStr;

/// What a shell-free script does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// `exec argv...`: argv\[0\] is looked up in `PATH` as the shell's `exec` does (no slash)
    /// or used as a path (a slash), and is the new program's argv\[0\] as written.
    Exec(Vec<String>),
    /// `exec kill [-SIG] $1`: send this signal number to the pid given as `$1`.
    Signal(i32),
}

/// What `script` does when that needs no shell; `None` when the script must run.
pub fn plan(script: &str) -> Option<Direct> {
    let mut lines = script.split('\n');
    if lines.next()? != "#!/bin/sh" {
        return None;
    }
    let mut command = None;
    for line in lines {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if command.replace(line).is_some() {
            return None;
        }
    }
    let mut words = command?.split([' ', '\t']).filter(|w| !w.is_empty());
    if words.next()? != "exec" {
        return None;
    }
    let words: Vec<&str> = words.collect();
    if let Some(signal) = kill(&words) {
        return Some(Direct::Signal(signal));
    }
    let program = words.first()?;
    if program.starts_with('-') || program.contains('=') || !words.iter().all(|w| plain(w)) {
        return None;
    }
    Some(Direct::Exec(
        words.iter().map(|w| (*w).to_owned()).collect(),
    ))
}

/// A word the shell takes as it is: no character it would interpret.
fn plain(word: &str) -> bool {
    word.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./,:@%+=".contains(&b))
}

/// The signal of `kill $1`, `kill -SIG $1` or `kill -s SIG $1`.
fn kill(words: &[&str]) -> Option<i32> {
    match words {
        ["kill", "$1"] => Some(libc::SIGTERM),
        ["kill", "-s", sig, "$1"] => signal(sig),
        ["kill", flag, "$1"] => signal(flag.strip_prefix('-')?),
        _ => None,
    }
}

/// A signal named as `kill` takes it: `HUP`, `SIGHUP` or `1`.
fn signal(name: &str) -> Option<i32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = name.parse().ok()?;
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&full)
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renderer's shape: shebang, its comment line, the body.
    fn rendered(body: &str) -> String {
        format!("#!/bin/sh\n# web: the start script, rendered by upkeeper; edit the configuration, not this file.\n{body}\n")
    }

    fn exec(words: &[&str]) -> Option<Direct> {
        Some(Direct::Exec(words.iter().map(|w| w.to_string()).collect()))
    }

    #[test]
    fn the_default_start_script_execs_its_words() {
        assert_eq!(
            plan(&rendered("exec /usr/bin/web")),
            exec(&["/usr/bin/web"])
        );
        assert_eq!(
            plan(&rendered("exec  sleep\t1000 --port=80 a,b:c@d%e+f")),
            exec(&["sleep", "1000", "--port=80", "a,b:c@d%e+f"])
        );
        assert_eq!(plan("#!/bin/sh\nexec web\n"), exec(&["web"]));
    }

    #[test]
    fn anything_the_shell_would_interpret_keeps_the_shell() {
        for body in [
            "exec web $PORT",
            "exec web \"a b\"",
            "exec web 'a'",
            "exec web a\\ b",
            "exec web > log",
            "exec web 2>&1",
            "exec web | tee",
            "exec web; echo",
            "exec web &",
            "exec web *",
            "exec web ?",
            "exec web [a]",
            "exec web ~/x",
            "exec web `id`",
            "exec web $(id)",
            "exec web {a,b}",
            "exec web # note",
            "exec web !",
            "exec FOO=1 web",
            "exec -a name web",
            "exec",
            "web",
            "exec wéb",
            "exec web\r",
            "cd /tmp\nexec web",
            "exec web\nexec other",
        ] {
            assert_eq!(plan(&rendered(body)), None, "{body:?}");
        }
    }

    #[test]
    fn only_bin_sh_scripts_are_read() {
        assert_eq!(plan("#!/bin/bash\nexec web\n"), None);
        assert_eq!(plan("#!/bin/sh -e\nexec web\n"), None);
        assert_eq!(plan("exec web\n"), None);
        assert_eq!(plan(""), None);
    }

    #[test]
    fn the_default_stop_and_reload_scripts_are_signals() {
        assert_eq!(
            plan(&rendered("exec kill $1")),
            Some(Direct::Signal(libc::SIGTERM))
        );
        assert_eq!(
            plan(&rendered("exec kill -HUP $1")),
            Some(Direct::Signal(libc::SIGHUP))
        );
        assert_eq!(
            plan(&rendered("exec kill -SIGUSR1 $1")),
            Some(Direct::Signal(libc::SIGUSR1))
        );
        assert_eq!(
            plan(&rendered("exec kill -s int $1")),
            Some(Direct::Signal(libc::SIGINT))
        );
        assert_eq!(
            plan(&rendered("exec kill -9 $1")),
            Some(Direct::Signal(libc::SIGKILL))
        );
    }

    #[test]
    fn a_kill_that_is_not_exactly_a_signal_to_its_argument_is_not_one() {
        assert_eq!(plan(&rendered("exec kill -NOPE $1")), None);
        assert_eq!(plan(&rendered("exec kill -99 $1")), None);
        assert_eq!(plan(&rendered("exec kill \"$1\"")), None);
        assert_eq!(plan(&rendered("exec kill $2")), None);
        assert_eq!(plan(&rendered("exec kill -HUP $1 $1")), None);
        // Not a signal, and `$1` keeps the shell.
        assert_eq!(plan(&rendered("exec my-stop $1")), None);
        // A plain `kill` with plain words is a program like any other.
        assert_eq!(plan(&rendered("exec kill 1")), exec(&["kill", "1"]));
    }
}
