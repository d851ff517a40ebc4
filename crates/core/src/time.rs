//! The two clocks an event record carries.
//!
//! Wall time says *when* something happened for humans and for correlation with other logs;
//! monotonic time orders events and measures intervals even across wall-clock jumps. Both are
//! microseconds: fine enough for restart gaps, small enough for an `i64` column.

use nix::time::{clock_gettime, ClockId};

/// Microseconds since the Unix epoch (CLOCK_REALTIME).
pub fn wall_us() -> i64 {
    read(ClockId::CLOCK_REALTIME)
}

/// Microseconds on CLOCK_MONOTONIC, comparable between processes of one boot.
pub fn mono_us() -> i64 {
    read(ClockId::CLOCK_MONOTONIC)
}

fn read(clock: ClockId) -> i64 {
    // clock_gettime cannot fail for these two clocks on Linux.
    let ts = clock_gettime(clock).unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() * 1_000_000 + ts.tv_nsec() / 1_000
}

/// Formats wall microseconds as UTC ISO 8601 with microseconds (`2026-11-21T12:00:00.000000Z`).
pub fn format_utc(wall_us: i64) -> String {
    let secs = wall_us.div_euclid(1_000_000);
    let micros = wall_us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), valid for the whole proleptic calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds from a file (settings, configuration) as a duration that cannot panic or overflow
/// an `Instant`: negative, NaN and infinite values, and values beyond the configuration's
/// bound ([`crate::config::MAX_SECONDS`], 365 days), are clamped into `0 ..= MAX_SECONDS`.
pub fn bounded_secs(s: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(s.clamp(0.0, crate::config::MAX_SECONDS))
        .unwrap_or(std::time::Duration::ZERO)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::format_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::format_utc(1_795_263_845_123_456),
            "2026-11-21T12:24:05.123456Z"
        );
        assert_eq!(
            super::format_utc(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
