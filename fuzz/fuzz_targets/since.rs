//! upkctl's `--since`/`--until`/`--at` reader and the printers of its results, against any
//! `now`, in UTC and in a zone with daylight saving time. upkctl is a binary's library with
//! the controller behind it; the one module is compiled in here as it is, so the target builds
//! in seconds.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/upkctl/src/when.rs"]
mod when;

fuzz_target!(|data: &[u8]| {
    let Some((now, text)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let zones = [when::Zone::utc(), when::Zone::new(false)];
    for zone in &zones {
        for now in [
            i64::from_le_bytes(*now),
            1_795_263_845_123_456,
            0,
            i64::MIN,
            i64::MAX,
        ] {
            if let Ok(t) = zone.parse(text, now) {
                let _ = zone.show(t);
                let _ = when::ago(t, now);
                let _ = when::duration(now.saturating_sub(t));
            }
            let _ = zone.show(now);
        }
    }
});
