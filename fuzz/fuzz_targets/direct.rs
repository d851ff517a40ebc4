//! The buddy's fast path: which scripts run without a shell (`crates/core/src/direct.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use upk_core::direct::{plan, Direct};

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else {
        return;
    };
    match plan(script) {
        // Only a `#!/bin/sh` script, and only words the shell would take as they are.
        Some(Direct::Exec(argv)) => {
            assert!(script.starts_with("#!/bin/sh\n"));
            assert!(!argv.is_empty() && !argv[0].starts_with('-') && !argv[0].contains('='));
            for w in &argv {
                assert!(!w.is_empty());
                assert!(w
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./,:@%+=".contains(&b)));
            }
        }
        Some(Direct::Signal(sig)) => {
            assert!(script.starts_with("#!/bin/sh\n"));
            assert!(nix_signal_exists(sig));
        }
        None => {}
    }
});

fn nix_signal_exists(sig: i32) -> bool {
    (1..=64).contains(&sig)
}
