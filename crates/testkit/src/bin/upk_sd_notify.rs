//! `upk_sd_notify MESSAGE`: sends MESSAGE (for example `READY=1`) as one datagram to the unix
//! socket named by `NOTIFY_SOCKET`, as `sd_notify(3)` does; for services in tests. Exits 1 with
//! a sentence when it cannot.

use std::os::unix::net::UnixDatagram;

fn main() {
    let message = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "READY=1".to_owned());
    let result = std::env::var("NOTIFY_SOCKET")
        .map_err(|_| "NOTIFY_SOCKET is not set".to_owned())
        .and_then(|path| {
            let sock = UnixDatagram::unbound().map_err(|e| e.to_string())?;
            sock.send_to(message.as_bytes(), &path)
                .map(drop)
                .map_err(|e| format!("cannot send to {path}: {e}"))
        });
    if let Err(e) = result {
        eprintln!("upk_sd_notify: {e}");
        std::process::exit(1);
    }
}
