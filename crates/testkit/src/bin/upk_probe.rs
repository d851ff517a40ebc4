//! `upk_probe SOCKET LINE...`: sends each LINE to a unix socket and prints the reply line to
//! each, for tests that need a client running as another user (`setpriv ... upk_probe`).
//! A LINE starting with `!` is sent without waiting for a reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let socket = args.next().expect("usage: upk_probe SOCKET LINE...");
    let stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            println!("connect failed: {e}");
            std::process::exit(1);
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for line in args {
        let (quiet, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.to_owned()),
            None => (false, line),
        };
        if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
            println!("write failed");
            return;
        }
        if quiet {
            continue;
        }
        let mut reply = String::new();
        match reader.read_line(&mut reply) {
            Ok(0) => println!("closed"),
            Ok(_) => print!("{reply}"),
            Err(e) => println!("read failed: {e}"),
        }
    }
}
