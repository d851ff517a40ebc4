//! `upkctl -H [USER@]HOST[:PORT]`: every command against another host's controller, over ssh
//! (docs/remote.md).
//!
//! As `systemctl -H` does, upkctl starts `ssh` running `upkctl bridge` on the host
//! ([`crate::bridge`]), which connects its stdin and stdout to that host's controller socket;
//! libupkeeper's [`Client::spawn`] speaks the protocol through it. So the remote controller sees
//! the ssh user's credentials (SO_PEERCRED), decides their access and audits their commands as
//! it does for a local caller; there is no new listening port and no new credential. What runs
//! is `SSH -T -o BatchMode=yes -o ConnectTimeout=SECS [-p PORT] -- DEST 'UPKCTL' [--config
//! 'PATH'] [--socket 'PATH'] bridge`: `--config` and `--socket` given with `-H` name the
//! remote host's files and are passed on, quoted for its shell.
//!
//! The destination is checked here so that it cannot be taken for an ssh option (it must not
//! begin with `-`, and it goes after `--`). ssh failing (no route, host key, authentication, no
//! upkctl there, the controller there not running) is one sentence with ssh's exit status and
//! its last line on stderr, and the code of an unreachable controller.

use crate::exit::{self, Failure, Result};
use libupkeeper::{Client, Error};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The environment variable naming the ssh program (`--ssh` wins).
pub const SSH_ENV: &str = "UPKCTL_SSH";

/// The environment variable naming upkctl on the remote host (`--remote-upkctl` wins).
pub const REMOTE_ENV: &str = "UPKCTL_REMOTE";

/// Where commands go when `-H` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The host as given, for messages.
    pub given: String,
    /// `USER@HOST` or `HOST`, as ssh takes it (an IPv6 address without its brackets).
    pub destination: String,
    /// `:PORT`, if given.
    pub port: Option<u16>,
    /// The ssh program.
    pub ssh: OsString,
    /// upkctl on the remote host.
    pub upkctl: String,
    /// `--config` and `--socket` for the remote bridge.
    pub config: Option<PathBuf>,
    /// See `config`.
    pub socket: Option<PathBuf>,
}

impl Remote {
    /// The remote of `-H host`, with `--ssh` and `--remote-upkctl` (or their environment
    /// variables, or `ssh` and `upkctl`).
    pub fn new(
        host: &str,
        ssh: Option<OsString>,
        upkctl: Option<String>,
        config: Option<PathBuf>,
        socket: Option<PathBuf>,
    ) -> Result<Remote> {
        let (destination, port) = parse_host(host).map_err(|e| Failure::new(exit::USAGE, e))?;
        let ssh = ssh
            .or_else(|| std::env::var_os(SSH_ENV))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ssh".into());
        let upkctl = upkctl
            .or_else(|| std::env::var(REMOTE_ENV).ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "upkctl".into());
        Ok(Remote {
            given: host.to_owned(),
            destination,
            port,
            ssh,
            upkctl,
            config,
            socket,
        })
    }

    /// The ssh command line that runs the bridge (`timeout` becomes ssh's ConnectTimeout).
    pub fn command(&self, timeout: Duration) -> Command {
        let mut cmd = Command::new(&self.ssh);
        let secs = timeout.as_secs_f64().ceil().clamp(1.0, 1e9) as u64;
        cmd.args(["-T", "-o", "BatchMode=yes", "-o"])
            .arg(format!("ConnectTimeout={secs}"));
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        cmd.arg("--")
            .arg(&self.destination)
            .arg(self.remote_command());
        cmd
    }

    /// What the remote shell runs: one string, each word quoted for it.
    pub fn remote_command(&self) -> String {
        let mut words = vec![quote(&self.upkctl)];
        for (flag, path) in [("--config", &self.config), ("--socket", &self.socket)] {
            if let Some(p) = path {
                words.push(flag.to_owned());
                words.push(quote(&p.to_string_lossy()));
            }
        }
        words.push("bridge".to_owned());
        words.join(" ")
    }

    /// A connection to the remote controller, `hello` bounded by `timeout`.
    pub fn connect(&self, timeout: Duration) -> Result<Client> {
        let mut client = Client::spawn(self.command(timeout), timeout).map_err(|e| match e {
            Error::TimedOut(_) => Failure::new(
                exit::TIMED_OUT,
                format!(
                    "the controller on {} did not answer through ssh within {:.1}s (see --timeout)",
                    self.given,
                    timeout.as_secs_f64()
                ),
            ),
            e => self.failure(e),
        })?;
        client.set_timeout(Some(timeout))?;
        Ok(client)
    }

    /// An error of a connection through ssh, as upkctl says it.
    pub fn failure(&self, e: Error) -> Failure {
        match e {
            // ssh (or what `--ssh` names) ended with success and said nothing of the controller.
            e @ (Error::Program { .. } | Error::Io(_)) => Failure::new(
                exit::UNREACHABLE,
                format!(
                    "cannot reach the controller on {} over ssh: {e}",
                    self.given
                ),
            ),
            e => Failure::from(e),
        }
    }

    /// The failure of a command that cannot run with `-H`: it reads this host's files.
    pub fn local_only(&self, command: &str) -> Failure {
        let port = self.port.map(|p| format!("-p {p} ")).unwrap_or_default();
        Failure::new(
            exit::USAGE,
            format!(
                "`upkctl {command}` reads files of the host it runs on and does not work with -H; \
                 run it there: ssh {port}{} upkctl {command} ...",
                self.destination
            ),
        )
    }
}

/// `[USER@]HOST[:PORT]` (HOST may be `[IPv6]`, or a bare IPv6 address without a port) as ssh's
/// destination and port.
pub fn parse_host(given: &str) -> std::result::Result<(String, Option<u16>), String> {
    let bad = |why: &str| Err(format!("-H {given:?}: {why}"));
    if given.is_empty() {
        return bad("the host is empty");
    }
    if given.starts_with('-') {
        return bad("a host cannot begin with '-'");
    }
    if let Some(c) = given
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\'))
    {
        return bad(&format!("a host cannot hold {c:?}"));
    }
    let (user, rest) = match given.rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, given),
    };
    if let Some(user) = user {
        if user.is_empty() || user.starts_with('-') || user.contains('@') {
            return bad("the user must be a name that does not begin with '-'");
        }
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return bad("'[' without ']'");
        };
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return bad("only :PORT may follow ']'"),
            },
        }
    } else if rest.matches(':').count() == 1 {
        let (host, port) = rest.split_once(':').unwrap_or((rest, ""));
        (host, Some(port))
    } else {
        // No colon, or an IPv6 address without brackets (and so without a port).
        (rest, None)
    };
    if host.is_empty() || host.starts_with('-') || host.contains(['[', ']', '/']) {
        return bad("the host must be a name or an address that does not begin with '-'");
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return bad(&format!("{p:?} is not a port (1 to 65535)")),
        },
    };
    let destination = match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_owned(),
    };
    Ok((destination, port))
}

/// `word` quoted for a POSIX shell: in single quotes, each `'` as `'\''`.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_user_host_and_port() {
        let ok = |s: &str| parse_host(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("web1"), ("web1".into(), None));
        assert_eq!(ok("alice@web1"), ("alice@web1".into(), None));
        assert_eq!(ok("alice@web1:2222"), ("alice@web1".into(), Some(2222)));
        assert_eq!(ok("127.0.0.1:22"), ("127.0.0.1".into(), Some(22)));
        assert_eq!(ok("[::1]:2222"), ("::1".into(), Some(2222)));
        assert_eq!(ok("bob@[fe80::1]"), ("bob@fe80::1".into(), None));
        assert_eq!(ok("::1"), ("::1".into(), None));
    }

    #[test]
    fn a_host_is_never_an_option_or_a_shell_word() {
        for bad in [
            "",
            "-oProxyCommand=sh",
            "alice@-oProxyCommand=sh",
            "-@web",
            "@web",
            "web:0",
            "web:65536",
            "web:ssh",
            "[::1",
            "[::1]x",
            "a b",
            "web\n",
            "web';x",
            "alice@:22",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} was taken");
        }
        let e = parse_host("-oProxyCommand=sh").expect_err("an option");
        assert!(e.contains("cannot begin with '-'"), "{e}");
    }

    #[test]
    fn the_command_is_ssh_with_the_destination_after_double_dash() {
        let remote = Remote {
            given: "alice@web1:2222".into(),
            destination: "alice@web1".into(),
            port: Some(2222),
            ssh: "ssh".into(),
            upkctl: "/opt/up kctl".into(),
            config: Some("/etc/it's.conf".into()),
            socket: None,
        };
        let cmd = remote.command(Duration::from_millis(2500));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "ssh");
        assert_eq!(
            args,
            [
                "-T",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=3",
                "-p",
                "2222",
                "--",
                "alice@web1",
                r"'/opt/up kctl' --config '/etc/it'\''s.conf' bridge",
            ]
        );
    }
}
