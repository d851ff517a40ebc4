//! The metrics endpoint (`MetricsListen`, docs/metrics.md) black-box: the real controller and
//! buddies, scraped over TCP on loopback, checked by the real `promtool`, scraped by a real
//! Prometheus the test starts in its sandbox; counters across buddy and controller deaths;
//! hostile clients; the example alert rules under `promtool test rules`.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use upk_testkit::{Controller, MARKER};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// `path` when it is installed. A missing tool fails the test as root on CI (`.ci/run`
/// installs it) and skips it elsewhere, saying why.
fn tool(path: &str) -> Option<PathBuf> {
    if Path::new(path).is_file() {
        return Some(path.into());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci && nix::unistd::geteuid().is_root() {
        panic!("{path} is missing: .ci/run installs it (apt-get install -y prometheus)");
    }
    eprintln!("SKIPPED: {path} is not installed (apt-get install prometheus)");
    None
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The sandbox's controller file with `MetricsListen` on a free loopback port.
fn metrics_controller_file(sb: &Sandbox) -> (PathBuf, SocketAddr) {
    let path = sb.controller_file();
    let port = free_port();
    let text = std::fs::read_to_string(&path).expect("controller file");
    let text = text.replacen('{', &format!("{{ MetricsListen: \":{port}\","), 1);
    std::fs::write(&path, text).expect("controller file");
    (path, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A controller serving metrics, with `services` (a service file's text) configured.
fn start(services: &str) -> (Sandbox, Controller, SocketAddr) {
    let sb = Sandbox::new();
    service_file(&sb, "svc.conf", services);
    let (ctl, addr) = metrics_controller_file(&sb);
    let c = Controller::start(&sb, &ctl);
    c.said("serving metrics on");
    (sb, c, addr)
}

/// One HTTP exchange: sends `request` as is, reads until the server closes (or 10 s).
fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// An answer's status code, headers (lowercase names) and body.
fn split(answer: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, answer[end + 4..].to_vec())
}

/// `GET /metrics`: the text.
fn scrape(addr: SocketAddr) -> String {
    let answer = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    let (code, headers, body) = split(&answer);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let ctype = headers.iter().find(|(n, _)| n == "content-type");
    assert_eq!(
        ctype.map(|(_, v)| v.as_str()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(body).expect("utf-8")
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the scrape's `series` satisfies `pred`, and returns the scrape.
fn wait_sample(addr: SocketAddr, series: &str, pred: impl Fn(f64) -> bool) -> String {
    wait_until(Duration::from_secs(20), series, || {
        let text = scrape(addr);
        match sample(&text, series) {
            Some(v) if pred(v) => Ok(text),
            other => Err(format!("{series} = {other:?}")),
        }
    })
}

/// `kill -9` of a service's main process (from its status file); returns the pid.
fn kill_service(sb: &Sandbox, id: &str) -> i32 {
    let pid = running(sb, id).pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    pid
}

/// Waits until `id` runs again under another pid than `old`.
fn restarted(sb: &Sandbox, id: &str, old: i32) {
    wait_until(
        Duration::from_secs(20),
        &format!("{id} restarted"),
        || match status(sb, id) {
            Some(s) if s.pid.is_some_and(|p| p != old) && s.state.is_up() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

const WEB: &str = r#"{ "web": { ExecStart: "sleep 1000", InitialState: "running" },
    "pkg::idle": { ExecStart: "sleep 1000" } }"#;
const WEB_RESTARTS: &str = r#"upkeeper_service_restarts_total{service="web",package=""}"#;

#[test]
fn metrics_follow_a_kill_and_pass_promtool() {
    let (sb, _c, addr) = start(WEB);
    running(&sb, "web");
    let text = wait_sample(
        addr,
        r#"upkeeper_service_up{service="web",package=""}"#,
        |v| v == 1.0,
    );
    assert_eq!(
        sample(
            &text,
            r#"upkeeper_service_state{service="pkg::idle",package="pkg",state="stopped"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, WEB_RESTARTS), Some(0.0), "{text}");
    let old = kill_service(&sb, "web");
    restarted(&sb, "web", old);
    let text = wait_sample(addr, WEB_RESTARTS, |v| v == 1.0);
    for (series, value) in [
        (
            r#"upkeeper_service_deaths_total{service="web",package="",reason="signal"}"#,
            1.0,
        ),
        (
            r#"upkeeper_service_last_exit_signal{service="web",package=""}"#,
            9.0,
        ),
        (
            r#"upkeeper_service_state{service="web",package="",state="running"}"#,
            1.0,
        ),
        (r#"upkeeper_service_linked{service="web",package=""}"#, 1.0),
        ("upkeeper_services", 2.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in {text}");
    }
    let start = sample(
        &text,
        r#"upkeeper_service_start_time_seconds{service="web",package=""}"#,
    )
    .expect("start time");
    let now = upk_core::time::wall_us() as f64 / 1e6;
    assert!(start > now - 60.0 && start <= now + 1.0, "{start} vs {now}");
    assert!(sample(&text, "upkeeper_events_stored_total").is_some_and(|v| v >= 4.0));

    // gzip when asked for, and the same series.
    let answer = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    let (code, headers, body) = split(&answer);
    assert_eq!(code, 200);
    assert!(
        headers.contains(&("content-encoding".into(), "gzip".into())),
        "{headers:?}"
    );
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    gunzip
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("write");
    let plain = gunzip.wait_with_output().expect("gzip -dc");
    assert!(plain.status.success());
    let plain = String::from_utf8(plain.stdout).expect("utf-8");
    assert_eq!(sample(&plain, WEB_RESTARTS), Some(1.0), "{plain}");

    let Some(promtool) = tool(PROMTOOL) else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .output_piped();
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// stdout and stderr piped.
trait Piped {
    fn output_piped(&mut self) -> Child;
}

impl Piped for Command {
    fn output_piped(&mut self) -> Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }
}

#[test]
fn counters_survive_buddy_and_controller_deaths() {
    let (sb, mut c, addr) = start(WEB);
    for _ in 0..2 {
        let old = kill_service(&sb, "web");
        restarted(&sb, "web", old);
    }
    wait_sample(addr, WEB_RESTARTS, |v| v == 2.0);
    // A buddy killed: the controller spawns another, which adopts the service.
    let buddy = running(&sb, "web").buddy_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(buddy),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill buddy");
    wait_until(Duration::from_secs(20), "another buddy", || {
        match status(&sb, "web") {
            Some(s) if s.buddy_pid != buddy && s.state.is_up() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let text = wait_sample(
        addr,
        r#"upkeeper_service_linked{service="web",package=""}"#,
        |v| v == 1.0,
    );
    assert_eq!(sample(&text, WEB_RESTARTS), Some(2.0), "{text}");
    let stored = sample(&text, "upkeeper_events_stored_total").expect("stored");
    // The controller killed and started again: the counters start where they were.
    c.kill();
    let c = Controller::start(&sb, &sb.path().join("upkeeper.conf"));
    c.said("serving metrics on");
    let text = scrape(addr);
    assert_eq!(sample(&text, WEB_RESTARTS), Some(2.0), "{text}");
    assert!(
        sample(&text, "upkeeper_events_stored_total").is_some_and(|v| v >= stored),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"upkeeper_service_deaths_total{service="web",package="",reason="signal"}"#
        ),
        Some(2.0),
        "{text}"
    );
    let old = kill_service(&sb, "web");
    restarted(&sb, "web", old);
    wait_sample(addr, WEB_RESTARTS, |v| v == 3.0);
}

/// `upkctl status` of the sandbox's controller answers, naming `web`.
fn upkctl_status(sb: &Sandbox) {
    let out = Command::new(upk_testkit::bin("upkctl"))
        .args([
            "--config",
            sb.path().join("upkeeper.conf").to_str().expect("utf8"),
        ])
        .arg("status")
        .output()
        .expect("upkctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("web"),
        "upkctl status: {text}"
    );
}

#[test]
fn hostile_scrapers_are_answered_or_dropped_and_supervision_goes_on() {
    let (sb, mut c, addr) = start(WEB);
    running(&sb, "web");
    for (request, code) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 404),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (
            b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (b"GET /metrics HTTP/1.1\r\nFolded: a\r\n b\r\n\r\n", 400),
    ] {
        let (got, _, _) = split(&exchange(addr, request));
        assert_eq!(got, code, "{:?}", String::from_utf8_lossy(request));
    }
    // A huge header: refused once the head passes 8 KiB, without waiting for the rest.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(&huge);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(
        split(&answer).0,
        431,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Many headers.
    let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let req = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
    assert_eq!(split(&exchange(addr, req.as_bytes())).0, 431);

    // Twice the connection cap held open, idle, and half a request on some.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    for s in idle.iter_mut().step_by(3) {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x");
    }
    // The operator is answered, a killed service is restarted, and a scrape still works.
    upkctl_status(&sb);
    let old = kill_service(&sb, "web");
    restarted(&sb, "web", old);
    wait_sample(addr, WEB_RESTARTS, |v| v == 1.0);
    // Keep-alive: two requests on one connection, the second after the first answer.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        b"HEAD /metrics HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    let mut both = Vec::new();
    let _ = s.read_to_end(&mut both);
    let text = String::from_utf8_lossy(&both);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("HTTP/1.1 404 Not Found\r\n"),
        "{text}"
    );
    drop(idle);
    assert!(
        c.child.try_wait().expect("try_wait").is_none(),
        "the controller died"
    );
    upkctl_status(&sb);
}

#[test]
fn a_request_trickling_in_is_cut_off_at_its_deadline() {
    let (sb, _c, addr) = start(WEB);
    running(&sb, "web");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .expect("timeout");
    let began = Instant::now();
    let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
    let mut sent = 0;
    // One byte every 400 ms never extends the connection's 10 s.
    let closed = loop {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "still open after 20 s"
        );
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            break began.elapsed();
        }
        sent += 1;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => break began.elapsed(),
            Ok(n) => panic!("answered {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break began.elapsed(),
        }
    };
    assert!(closed >= Duration::from_secs(9), "closed after {closed:?}");
    assert!(scrape(addr).contains("upkeeper_service_up"));
}

/// A Prometheus server in the sandbox, on a loopback port, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` scraping `target` every second.
    fn start(sb: &Sandbox, binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = sb.path().join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("mkdir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: upkeeper\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .env(MARKER, sb.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus");
        Prometheus { child, addr }
    }

    /// GET `path` on its HTTP API: the JSON body.
    fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let (code, _, body) = split(&answer);
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("{code}: {v}"));
        }
        Ok(v)
    }

    /// The value of the first series an instant query returns.
    fn query(&self, promql: &str) -> Result<f64, String> {
        let mut q = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                q.push(b as char);
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let v = self.get(&format!("/api/v1/query?query={q}"))?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{promql}: {v}"))
    }
}

#[test]
fn a_real_prometheus_scrapes_and_sees_a_killed_service_restart() {
    let (Some(prometheus), Some(_)) = (tool(PROMETHEUS), tool(PROMTOOL)) else {
        return;
    };
    let (sb, mut c, addr) = start(WEB);
    running(&sb, "web");
    let prom = Prometheus::start(&sb, &prometheus, addr);
    let log = sb.path().join("prometheus/log");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let up = Instant::now();
    wait_until(Duration::from_secs(60), "Prometheus's target up", || {
        let v = prom
            .get("/api/v1/targets")
            .map_err(|e| format!("{e}; log: {}", said()))?;
        let target = &v["data"]["activeTargets"][0];
        match target["health"].as_str() {
            Some("up") => Ok(()),
            _ => Err(target.to_string()),
        }
    });
    eprintln!("Prometheus scraped the controller after {:?}", up.elapsed());
    // Two samples at 0 before the kill, so that increase() has a base.
    let series = r#"upkeeper_service_restarts_total{service="web"}"#;
    wait_until(Duration::from_secs(30), "two samples", || {
        match prom.query(&format!("count_over_time({series}[1m])")) {
            Ok(n) if n >= 2.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(prom.query(series), Ok(0.0));
    let old = kill_service(&sb, "web");
    restarted(&sb, "web", old);
    let seen = wait_until(Duration::from_secs(30), "increase() > 0", || {
        match prom.query(&format!("increase({series}[1m])")) {
            Ok(v) if v > 0.0 => Ok(v),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("increase(upkeeper_service_restarts_total[1m]) = {seen}");
    let deaths = r#"upkeeper_service_deaths_total{service="web",reason="signal"}"#;
    wait_until(
        Duration::from_secs(30),
        "deaths in Prometheus",
        || match prom.query(deaths) {
            Ok(v) if v >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(prom.query("up{job=\"upkeeper\"}"), Ok(1.0));
    assert!(c.child.try_wait().expect("try_wait").is_none());
}

#[test]
fn the_example_alert_rules_pass_promtool_test_rules() {
    let Some(promtool) = tool(PROMTOOL) else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/prometheus");
    for args in [
        ["check", "rules", "upkeeper-alerts.yml"],
        ["test", "rules", "upkeeper-alerts.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// At the descriptor limit the metrics listener gives up a spare descriptor to accept and close
/// a scrape, as the client socket does: the loop never spins on a readable listener.
#[test]
fn a_scrape_at_the_descriptor_limit_does_not_spin_the_loop() {
    let (_sb, c, addr) =
        start(r#"{ "web": { ExecStart: "sleep 1000", InitialState: "running" } }"#);
    let pid = c.child.id();
    let held = super::hostile::exhaust_descriptors(&c);
    let scrapes: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let used = super::hostile::cpu_share(pid);
    assert!(
        used < 0.3,
        "the controller used {:.0}% of a core with scrapes waiting at its descriptor limit",
        used * 100.0
    );
    drop((held, scrapes));
    wait_until(Duration::from_secs(10), "a scrape after the limit", || {
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        match answer.starts_with(b"HTTP/1.1 200") {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&answer).into_owned()),
        }
    });
}
