//! The metrics endpoint's request reader (`crates/controller/src/metrics/http.rs`, compiled
//! into the target as it is, so the target does not build the controller and SQLite):
//! arbitrary bytes as what a connection has read so far. Nothing may panic; a whole head is
//! within the input and `MAX_REQUEST`, its path is a path without a query, it reads the same
//! from exactly its own bytes, and the answer's head is well formed; more input is asked for
//! only below `MAX_REQUEST`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/controller/src/metrics/http.rs"]
#[allow(dead_code)]
mod http;

use http::{Parsed, Route, Status};

fuzz_target!(|data: &[u8]| {
    match http::parse(data) {
        Parsed::Incomplete => assert!(data.len() < http::MAX_REQUEST),
        Parsed::Refused(status) => {
            assert!(matches!(status, Status::BadRequest | Status::HeadersTooLarge));
            assert!(!http::error_body(status).is_empty());
        }
        Parsed::Request(req) => {
            assert!(req.len <= data.len() && req.len <= http::MAX_REQUEST);
            assert!(req.path.starts_with('/') && !req.path.contains('?'));
            assert!(!req.method.is_empty());
            assert_eq!(http::parse(&data[..req.len]), Parsed::Request(req.clone()));
            let status = match http::route(&req) {
                Route::Metrics { .. } => Status::Ok,
                Route::Error(s) => s,
            };
            let len = data.len();
            let head = http::head(status, len, req.gzip, req.keep_alive);
            let text = std::str::from_utf8(&head).expect("an answer head is text");
            assert!(text.starts_with("HTTP/1.1 ") && text.ends_with("\r\n\r\n"));
            assert!(text.contains(&format!("\r\nContent-Length: {len}\r\n")));
        }
    }
});
