//! A whole configuration text through the dialect, validation, layering and substitution, as
//! a service file and as a controller file. It must never panic, and what it accepts must
//! keep the documented bounds (docs/configuration.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use upk_core::config::{
    parse_controller, parse_services, ConfigErrors, ServiceLayer, MAX_ERRORS, MAX_SCRIPT_SIZE,
    MAX_SECONDS,
};

fn check_errors(e: &ConfigErrors, file: &Path) {
    assert!(!e.0.is_empty(), "an Err holds at least one error");
    assert!(
        e.0.len() <= MAX_ERRORS + 1,
        "at most MAX_ERRORS errors and one count line"
    );
    for err in &e.0 {
        assert_eq!(err.file, file);
        assert!(!err.message.is_empty());
    }
    let _ = e.to_string();
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.conf");
    let defaults = match parse_controller(text, file) {
        Ok(c) => {
            assert!(c.buddy_polling_interval > 0.0 && c.buddy_polling_interval <= MAX_SECONDS);
            c.service_defaults
        }
        Err(e) => {
            check_errors(&e, file);
            ServiceLayer::default()
        }
    };
    for layer in [ServiceLayer::default(), defaults] {
        match parse_services(text, file, &layer) {
            Ok(services) => {
                for s in services {
                    let secs = [
                        Some(s.kill_timeout),
                        s.user_restart_window,
                        s.user_rate_limit,
                        Some(s.health_interval),
                        Some(s.health_timeout),
                        Some(s.health_start_period),
                        s.ready_timeout,
                        Some(s.restart_delay_max),
                        s.failed_retry_after,
                    ];
                    for v in secs.into_iter().flatten() {
                        assert!(v.is_finite() && v <= MAX_SECONDS, "{v} seconds accepted");
                    }
                    for h in &s.notify {
                        assert!(h.timeout > 0.0 && h.timeout <= MAX_SECONDS);
                    }
                    let scripts = [&s.start_script, &s.stop_script, &s.reload_script]
                        .into_iter()
                        .chain(s.custom_actions.iter().map(|a| &a.script))
                        .chain(s.notify.iter().filter_map(|h| h.run.as_ref()));
                    for script in scripts {
                        assert!(script.len() <= MAX_SCRIPT_SIZE, "a script passed the bound");
                    }
                    // What the renderer writes into settings.json must serialise.
                    serde_json::to_vec(&s).expect("a service serialises");
                }
            }
            Err(e) => check_errors(&e, file),
        }
    }
});
