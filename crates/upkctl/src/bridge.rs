//! `upkctl bridge` (hidden): the remote half of `upkctl -H` (docs/remote.md). ssh runs it on
//! the host; it connects its stdin and stdout to the controller's socket (found as upkctl
//! finds it: `--socket`, or the controller file's StateDir) and copies bytes both ways until
//! either side closes.
//!
//! It runs as the ssh user, so the controller's peer credentials are that user's: access and
//! audit are decided there, as for any local client. The one thing it adds is where the
//! caller came from: the first line, when it is a `hello`, gets `origin: "ssh ADDRESS:PORT"`
//! from `SSH_CONNECTION` (replacing any the caller sent). The controller records it beside
//! the uid; it is what the bridge reported, not a credential. Everything after the first line
//! is copied untouched.
//!
//! Exit codes: 0 when the connection ended, [`exit::UNREACHABLE`] when the controller cannot
//! be reached (its one sentence on stderr, which the local upkctl quotes), [`exit::TEMPORARY`]
//! when stdin or stdout fail.

use crate::exit::{self, Failure, Result};
use crate::Ctx;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use upk_core::proto::MAX_LINE;

/// `upkctl bridge`.
pub fn bridge(ctx: &Ctx) -> Result<i32> {
    let socket = ctx.socket()?;
    // Bounded: a controller whose backlog is full would hold the connect for ever, and this
    // end has no terminal to hang up on it.
    let controller = libupkeeper::dial(&socket, ctx.timeout).map_err(|e| {
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the controller at {}: {e} (is `upkeeper run` running?)",
                socket.display()
            ),
        )
    })?;
    let io = |what: &str, e: std::io::Error| Failure::new(exit::TEMPORARY, format!("{what}: {e}"));
    // Our own descriptors, unbuffered: std's stdout buffers lines, and what is relayed must go
    // out as it comes.
    let stdin = std::fs::File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| io("stdin", e))?,
    );
    let mut stdout = std::fs::File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| io("stdout", e))?,
    );
    let mut to_controller = controller.try_clone().map_err(|e| io("socket", e))?;
    let mut from_controller = controller;
    let origin = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| origin_of(&c));

    // Client to controller on a thread of its own: the first line (with the origin), then
    // bytes as they come; at the end of stdin, the controller is told there is no more (it
    // answers what it owes, then closes).
    std::thread::spawn(move || {
        let mut input = BufReader::new(stdin);
        let mut first = Vec::new();
        let read = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut first);
        if read.is_ok() && !first.is_empty() {
            let line = with_origin(&first, origin.as_deref()).unwrap_or(first);
            if to_controller.write_all(&line).is_err() {
                return;
            }
        }
        if read.is_ok() {
            let _ = relay(&mut input, &mut to_controller);
        }
        let _ = to_controller.shutdown(Shutdown::Write);
    });

    // Controller to client here: its end is the bridge's end.
    match relay(&mut from_controller, &mut stdout) {
        Ok(()) => Ok(exit::OK),
        // ssh went away: nobody is left to tell.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(io("relaying the controller's answers", e)),
    }
}

/// Copies `from` to `to` until the end of `from`, each read written at once.
///
/// Not `std::io::copy`: between a socket and a pipe (sshd gives the session pipes) it splices,
/// and a splice from a socket into a pipe holds the pipe's lock while it waits for the
/// socket, so sshd cannot read what was already spliced until the controller says more: the
/// answer to `hello` never left.
fn relay(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// The origin of a session from `SSH_CONNECTION` (`CLIENT_ADDR CLIENT_PORT SERVER_ADDR
/// SERVER_PORT`): `ssh ADDR:PORT` (`ssh [ADDR]:PORT` for IPv6); `None` when it does not read
/// as that or would not pass the controller's check.
pub fn origin_of(ssh_connection: &str) -> Option<String> {
    let mut words = ssh_connection.split_ascii_whitespace();
    let addr: std::net::IpAddr = words.next()?.parse().ok()?;
    let port: u16 = words.next()?.parse().ok()?;
    let origin = std::net::SocketAddr::new(addr, port).to_string();
    let origin = format!("ssh {origin}");
    upk_core::client::check_origin(&origin).ok()?;
    Some(origin)
}

/// `line` with its `origin` set, when it is a `hello` (a JSON object whose `type` is `hello`)
/// and there is an origin to set; `None` to pass it on as it is.
fn with_origin(line: &[u8], origin: Option<&str>) -> Option<Vec<u8>> {
    let origin = origin?;
    let mut msg: serde_json::Value = serde_json::from_slice(line.trim_ascii()).ok()?;
    let obj = msg.as_object_mut().filter(|o| o["type"] == "hello")?;
    obj.insert("origin".into(), origin.into());
    let mut out = serde_json::to_vec(&msg).ok()?;
    out.push(b'\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_the_client_address_and_port() {
        assert_eq!(
            origin_of("127.0.0.1 40404 127.0.0.1 22"),
            Some("ssh 127.0.0.1:40404".into())
        );
        assert_eq!(
            origin_of("2001:db8::7 51000 2001:db8::1 22"),
            Some("ssh [2001:db8::7]:51000".into())
        );
        for bad in [
            "",
            "host 1 2 3",
            "127.0.0.1",
            "127.0.0.1 99999 x 22",
            "1.2.3.4 x",
        ] {
            assert_eq!(origin_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_hello_gets_the_origin_and_it_replaces_the_callers() {
        let hello = br#"{"type":"hello","version":1,"id":1,"origin":"claimed"}
"#;
        let got = with_origin(hello, Some("ssh 10.0.0.1:5")).expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&got).expect("json");
        assert_eq!(v["origin"], "ssh 10.0.0.1:5");
        assert_eq!(
            (v["type"].as_str(), v["id"].as_i64()),
            (Some("hello"), Some(1))
        );
        assert!(got.ends_with(b"}\n"));
        assert_eq!(with_origin(hello, None), None);
        assert_eq!(with_origin(br#"{"type":"list","id":2}"#, Some("x")), None);
        assert_eq!(with_origin(b"not json\n", Some("x")), None);
        assert_eq!(with_origin(b"[1]\n", Some("x")), None);
    }
}
