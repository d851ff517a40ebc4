//! The little HTTP/1.x the metrics endpoint speaks: reading one request's head, and writing an
//! answer's head. Pure (bytes in, a decision out, no I/O), so that it is fuzzed
//! (`fuzz/fuzz_targets/http.rs`) and unit-tested.
//!
//! A request is a request line (`METHOD SP /path SP HTTP/1.0|1.1`) and header lines, each ended
//! by CRLF (a bare LF is taken too), then an empty line; the whole head is at most
//! [`MAX_REQUEST`] bytes and [`MAX_HEADERS`] lines, past which it is refused with 431. A request
//! with a body (`Content-Length` other than 0, or `Transfer-Encoding`), a header folded onto a
//! second line, a byte outside visible ASCII in the request line or a header name, or another
//! protocol version is refused with 400: a GET of `/metrics` carries nothing of the kind, and
//! an endpoint that reads no body cannot be smuggled one. Only `Accept-Encoding` (is `gzip`
//! acceptable?) and `Connection` (keep the connection?) are read from the headers.

/// The longest request head read; a longer one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;

/// The most header lines a request may have; more are answered 431.
pub const MAX_HEADERS: usize = 64;

/// The path served.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: the metrics.
    Ok,
    /// 400: not a request this endpoint reads.
    BadRequest,
    /// 404: another path.
    NotFound,
    /// 405: another method than GET or HEAD.
    MethodNotAllowed,
    /// 431: a head longer than [`MAX_REQUEST`] or with more than [`MAX_HEADERS`] lines.
    HeadersTooLarge,
}

impl Status {
    /// The code and reason phrase.
    pub fn line(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::HeadersTooLarge => (431, "Request Header Fields Too Large"),
        }
    }
}

/// A request head that was read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The client accepts a gzip-encoded answer.
    pub gzip: bool,
    /// The client keeps the connection for another request (HTTP/1.1 unless `Connection:
    /// close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// Bytes of input the head took, the empty line included.
    pub len: usize,
}

/// What the bytes read so far make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet (and not too long yet): read more.
    Incomplete,
    /// A whole head.
    Request(Request),
    /// Not acceptable: answer this and close the connection.
    Refused(Status),
}

/// What to answer a request: serve the metrics (`head_only` for HEAD), or an error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of [`METRICS_PATH`].
    Metrics {
        /// HEAD: the answer's head only.
        head_only: bool,
    },
    /// Anything else.
    Error(Status),
}

/// Where the head ends in `buf`: the index just past its empty line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => {}
        }
        i = next;
    }
    None
}

/// A token character (RFC 9110 `tchar`).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads a request head from the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = head_end(buf) else {
        return if buf.len() >= MAX_REQUEST {
            Parsed::Refused(Status::HeadersTooLarge)
        } else {
            Parsed::Incomplete
        };
    };
    if end > MAX_REQUEST {
        return Parsed::Refused(Status::HeadersTooLarge);
    }
    match parse_head(&buf[..end]) {
        Ok(mut r) => {
            r.len = end;
            Parsed::Request(r)
        }
        Err(status) => Parsed::Refused(status),
    }
}

fn parse_head(head: &[u8]) -> Result<Request, Status> {
    let text = std::str::from_utf8(head).map_err(|_| Status::BadRequest)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(Status::BadRequest)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(Status::BadRequest);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::BadRequest);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Status::BadRequest),
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_owned();
    let mut req = Request {
        method: method.to_owned(),
        path,
        gzip: false,
        keep_alive: http11,
        len: 0,
    };
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Status::HeadersTooLarge);
        }
        // Folded continuation lines are obsolete and refused (RFC 9112 5.2).
        if line.starts_with([' ', '\t']) {
            return Err(Status::BadRequest);
        }
        let (name, value) = line.split_once(':').ok_or(Status::BadRequest)?;
        if name.is_empty() || !name.bytes().all(tchar) {
            return Err(Status::BadRequest);
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(Status::BadRequest);
        }
        if name.eq_ignore_ascii_case("accept-encoding") {
            req.gzip |= accepts_gzip(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    req.keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") && !http11 {
                    req.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Err(Status::BadRequest);
        }
    }
    Ok(req)
}

/// True when an `Accept-Encoding` value takes gzip (`gzip`, `x-gzip` or `*`, with a q-value
/// other than 0).
fn accepts_gzip(value: &str) -> bool {
    value.split(',').any(|item| {
        let mut params = item.split(';').map(str::trim);
        let coding = params.next().unwrap_or("");
        let named = ["gzip", "x-gzip", "*"]
            .iter()
            .any(|c| coding.eq_ignore_ascii_case(c));
        let refused = params.any(|p| {
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        named && !refused
    })
}

/// What to answer `req`.
pub fn route(req: &Request) -> Route {
    if req.path != METRICS_PATH {
        return Route::Error(Status::NotFound);
    }
    match req.method.as_str() {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::Error(Status::MethodNotAllowed),
    }
}

/// An answer's head: the status line and headers, for a body of `len` bytes (`gzip`: the
/// body is gzip-encoded).
pub fn head(status: Status, len: usize, gzip: bool, keep_alive: bool) -> Vec<u8> {
    let (code, reason) = status.line();
    let mut h = format!("HTTP/1.1 {code} {reason}\r\n");
    if status == Status::Ok {
        h.push_str("Content-Type: ");
        h.push_str(CONTENT_TYPE);
        h.push_str("\r\nVary: Accept-Encoding\r\n");
    } else {
        h.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    if gzip {
        h.push_str("Content-Encoding: gzip\r\n");
    }
    if status == Status::MethodNotAllowed {
        h.push_str("Allow: GET, HEAD\r\n");
    }
    h.push_str(&format!("Content-Length: {len}\r\n"));
    h.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

/// The one-line body of an error answer.
pub fn error_body(status: Status) -> &'static str {
    match status {
        Status::Ok => "",
        Status::BadRequest => "upkeeper: not an HTTP/1.x request this endpoint reads\n",
        Status::NotFound => "upkeeper: not found; the metrics are at /metrics\n",
        Status::MethodNotAllowed => "upkeeper: only GET and HEAD are served\n",
        Status::HeadersTooLarge => "upkeeper: the request head is too large\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Parsed::Request(r) => r,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refused(text: &[u8]) -> Status {
        match parse(text) {
            Parsed::Refused(s) => s,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn a_prometheus_scrape_is_read_with_its_encoding_and_connection() {
        let text = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9477\r\nUser-Agent: Prometheus/2.42.0\r\n\
                    Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
                    Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
        let r = req(text);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        assert!(r.gzip && r.keep_alive);
        assert_eq!(r.len, text.len());
        assert_eq!(route(&r), Route::Metrics { head_only: false });
    }

    #[test]
    fn heads_split_anywhere_are_incomplete_until_the_empty_line() {
        let text = b"GET /metrics?x=1 HTTP/1.0\nConnection: keep-alive\n\nGET";
        for cut in 0..text.len() - 4 {
            assert_eq!(parse(&text[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let r = req("GET /metrics?x=1 HTTP/1.0\nConnection: keep-alive\n\nGET");
        assert_eq!(
            (r.path.as_str(), r.keep_alive, r.gzip, r.len),
            ("/metrics", true, false, 50)
        );
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!req("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn gzip_is_taken_unless_its_q_is_zero() {
        for (value, gzip) in [
            ("gzip", true),
            ("deflate, GZIP;q=0.5", true),
            ("*", true),
            ("x-gzip", true),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("identity", false),
            ("", false),
            ("gzipped", false),
        ] {
            let r = req(&format!(
                "GET /metrics HTTP/1.1\r\nAccept-Encoding: {value}\r\n\r\n"
            ));
            assert_eq!(r.gzip, gzip, "{value:?}");
        }
    }

    #[test]
    fn other_paths_and_methods_are_404_and_405() {
        assert_eq!(
            route(&req("GET / HTTP/1.1\r\n\r\n")),
            Route::Error(Status::NotFound)
        );
        assert_eq!(
            route(&req("GET /metrics/ HTTP/1.1\r\n\r\n")),
            Route::Error(Status::NotFound)
        );
        assert_eq!(
            route(&req("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
            Route::Error(Status::MethodNotAllowed)
        );
        assert_eq!(
            route(&req("HEAD /metrics HTTP/1.1\r\n\r\n")),
            Route::Metrics { head_only: true }
        );
        assert_eq!(
            route(&req("get /metrics HTTP/1.1\r\n\r\n")),
            Route::Error(Status::MethodNotAllowed)
        );
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET http://x/metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\x7fetrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad name: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nA: b\x01c\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nA: \xff\xfe\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
        ] {
            assert_eq!(
                refused(bad),
                Status::BadRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_heads_and_many_headers_are_431() {
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(refused(long.as_bytes()), Status::HeadersTooLarge);
        let whole = format!("{long}\r\n\r\n");
        assert_eq!(refused(whole.as_bytes()), Status::HeadersTooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET /metrics HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(text.as_bytes()), Status::HeadersTooLarge);
        let enough: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        req(&format!("GET /metrics HTTP/1.1\r\n{enough}\r\n"));
    }

    #[test]
    fn answer_heads_carry_length_encoding_and_connection() {
        let h = String::from_utf8(head(Status::Ok, 12, true, true)).expect("utf8");
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(h.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(
            h.contains("Content-Encoding: gzip\r\nVary")
                || h.contains("Content-Encoding: gzip\r\n")
        );
        assert!(h.contains("Content-Length: 12\r\n") && h.ends_with("keep-alive\r\n\r\n"));
        let h = String::from_utf8(head(Status::MethodNotAllowed, 3, false, false)).expect("utf8");
        assert!(h.contains("Allow: GET, HEAD\r\n") && h.ends_with("Connection: close\r\n\r\n"));
        assert!(!h.contains("gzip"));
    }
}
