//! Times on the command line (`--since`, `--until`, `--at`) and on the screen.
//!
//! Times are read and printed in the local time zone (`TZ`, else `/etc/localtime`), or in UTC
//! with `--utc`: a [`Zone`] carries the choice. What is read is what journalctl reads, through
//! jiff (docs/upkctl.md):
//! - `now`, `today`, `yesterday`, `tomorrow` (midnight), `@EPOCH` (seconds, may be fractional);
//! - a span relative to now: `10 min ago`, `-1h`, `+30m` (later), and, as upkctl always took
//!   them, a bare span meaning that long ago (`90s`, `15m`, `1h30m`, `2d`, `1w`, `30`);
//! - a date and time: `2026-11-21`, `2026-11-21 12:00`, `2026-11-21T12:00:05`, in the zone,
//!   or at the offset it names (`2026-11-21T12:00:05Z`, `...+01:00`); a time alone
//!   (`12:00`) is today at that time.
//!
//! Arithmetic is jiff's, checked: a time outside years -9999 to 9999 is refused with one
//! sentence, never wrapped. Printed times are cut to milliseconds (`2026-11-21T12:24:05.123Z`,
//! or with the local offset), as fine as a person reads.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use std::sync::OnceLock;

/// Microseconds per second.
const SEC: i64 = 1_000_000;

/// Where times are read and shown. The local zone is looked up the first time a time is read
/// or shown, not when upkctl starts: finding the system's zone by name walks the whole
/// zoneinfo tree (about 5 ms), which a `stop` or `start` never needs.
#[derive(Debug, Clone)]
pub struct Zone {
    utc: bool,
    tz: OnceLock<TimeZone>,
}

impl Zone {
    /// The local zone (`TZ`, `/etc/localtime`; UTC when neither says), or UTC.
    pub fn new(utc: bool) -> Zone {
        Zone {
            utc,
            tz: OnceLock::new(),
        }
    }

    /// UTC.
    pub fn utc() -> Zone {
        Zone::new(true)
    }

    /// The zone, looked up once. Without `TZ`, `/etc/localtime` is read as it is: only its
    /// offsets are shown, so its name (what jiff's lookup searches zoneinfo for) is not needed.
    fn tz(&self) -> &TimeZone {
        self.tz.get_or_init(|| {
            if self.utc {
                return TimeZone::UTC;
            }
            if std::env::var_os("TZ").is_none() {
                let local = std::fs::read("/etc/localtime").ok();
                if let Some(tz) = local.and_then(|b| TimeZone::tzif("localtime", &b).ok()) {
                    return tz;
                }
            }
            TimeZone::try_system().unwrap_or(TimeZone::UTC)
        })
    }

    /// `wall_us` to the millisecond, with its offset (`Z` for UTC):
    /// `2026-11-21T12:24:05.123Z`, `2026-11-21T13:24:05.123+01:00`.
    pub fn show(&self, wall_us: i64) -> String {
        let Ok(ts) = Timestamp::from_microsecond(wall_us) else {
            return format!("@{}", wall_us / SEC);
        };
        let z = ts.to_zoned(self.tz().clone());
        let offset = z.offset();
        let stamp = z.strftime("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        if offset.seconds() == 0 {
            format!("{stamp}Z")
        } else {
            format!("{stamp}{}", z.strftime("%:z"))
        }
    }

    /// Reads a `--since`/`--until`/`--at` value into wall microseconds, `now_us` being now.
    pub fn parse(&self, text: &str, now_us: i64) -> Result<i64, String> {
        let t = text.trim();
        let now = Timestamp::from_microsecond(now_us)
            .map_err(|e| format!("the clock reads an impossible time: {e}"))?
            .to_zoned(self.tz().clone());
        let out_of_range =
            |e: jiff::Error| format!("{text:?} is outside the years -9999 to 9999 ({e})");
        let at = |z: Zoned| z.timestamp().as_microsecond();
        let midnight = |days: i64| -> Result<i64, String> {
            let day = now
                .date()
                .checked_add(Span::new().days(days))
                .map_err(out_of_range)?;
            day.to_zoned(self.tz().clone())
                .map(at)
                .map_err(out_of_range)
        };
        match t.to_ascii_lowercase().as_str() {
            "now" => return Ok(now_us),
            "today" => return midnight(0),
            "yesterday" => return midnight(-1),
            "tomorrow" => return midnight(1),
            _ => {}
        }
        if let Some(epoch) = t.strip_prefix('@') {
            return epoch
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .and_then(|s| Timestamp::from_microsecond((s * 1e6) as i64).ok())
                .map(|ts| ts.as_microsecond())
                .ok_or_else(|| format!("{text:?} is not @ and a number of seconds since 1970"));
        }
        if let Ok(ts) = t.parse::<Timestamp>() {
            return Ok(ts.as_microsecond());
        }
        let local = |dt: DateTime| dt.to_zoned(self.tz().clone()).map(at).map_err(out_of_range);
        if let Ok(dt) = t.parse::<DateTime>() {
            return local(dt);
        }
        if let Ok(d) = t.parse::<Date>() {
            return local(d.to_datetime(Time::midnight()));
        }
        if let Ok(tm) = t.parse::<Time>() {
            return local(now.date().to_datetime(tm));
        }
        // After the times: `12:00` is today at noon, not a span of twelve hours.
        if let Some(span) = relative(t) {
            return now.checked_add(span).map(at).map_err(out_of_range);
        }
        Err(format!(
            "{text:?} is not a time: try now, today, yesterday, \"10 min ago\", -1h, 90s, \
             2026-11-21, \"2026-11-21 12:00\", 12:00 or @1795263845"
        ))
    }
}

/// A span relative to now: `-1h` and `10 min ago` are back, `+1h` is ahead, and a bare span
/// (`90s`, `1h30m`, a bare number of seconds) is that long ago, as upkctl always read it.
fn relative(t: &str) -> Option<Span> {
    let (sign, body) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => (-1, t),
    };
    let body = body.trim();
    if let Some(stripped) = body.strip_suffix("ago") {
        // `10 min ago` is back whatever the sign: jiff reads it as a negative span.
        let span: Span = format!("{} ago", stripped.trim()).parse().ok()?;
        return (sign == -1).then_some(span);
    }
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = body.parse().ok()?;
        return Span::new().try_seconds(n.checked_mul(sign)?).ok();
    }
    let span: Span = body.parse().ok()?;
    Some(if sign < 0 { span.negate() } else { span })
}

/// `at_us` relative to `now_us` for people: `3m12s ago`, `in 45s`.
pub fn ago(at_us: i64, now_us: i64) -> String {
    let d = now_us.saturating_sub(at_us);
    if d >= 0 {
        format!("{} ago", duration(d))
    } else {
        format!("in {}", duration(d.saturating_neg()))
    }
}

/// A duration for a column: `4ms`, `0.4s`, `45s`, `12m03s`, `4h12m`, `3d04h`.
pub fn duration(us: i64) -> String {
    let us = us.max(0);
    let s = us / SEC;
    match s {
        0 if us < 100_000 => format!("{}ms", us / 1000),
        0 => format!("{:.1}s", us as f64 / SEC as f64),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_263_845_123_456; // 2026-11-21T12:24:05.123456Z

    #[test]
    fn the_local_zone_is_looked_up_when_first_used_and_shows_what_jiff_would() {
        let z = Zone::new(false);
        assert!(z.tz.get().is_none(), "nothing looked up at start");
        let jiff = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        let ts = Timestamp::from_microsecond(NOW).expect("ts");
        assert_eq!(z.tz().to_offset(ts), jiff.to_offset(ts));
        assert!(z.tz.get().is_some());
    }

    fn utc(t: &str) -> Result<i64, String> {
        Zone::utc().parse(t, NOW)
    }

    #[test]
    fn spans_count_back_from_now_and_forward_with_a_plus() {
        assert_eq!(utc("90s"), Ok(NOW - 90 * SEC));
        assert_eq!(utc("1h30m"), Ok(NOW - 5400 * SEC));
        assert_eq!(utc("2d"), Ok(NOW - 2 * 86_400 * SEC));
        assert_eq!(utc("1w"), Ok(NOW - 7 * 86_400 * SEC));
        assert_eq!(utc("30"), Ok(NOW - 30 * SEC));
        assert_eq!(utc("-1h"), Ok(NOW - 3600 * SEC));
        assert_eq!(utc("+1h"), Ok(NOW + 3600 * SEC));
        assert_eq!(utc("10 min ago"), Ok(NOW - 600 * SEC));
        assert_eq!(utc("2 hours ago"), Ok(NOW - 7200 * SEC));
        assert_eq!(utc("now"), Ok(NOW));
    }

    #[test]
    fn days_and_dates_are_in_the_zone() {
        assert_eq!(
            Zone::utc().show(utc("today").expect("today")),
            "2026-11-21T00:00:00.000Z"
        );
        assert_eq!(
            utc("yesterday").expect("yesterday"),
            utc("2026-11-20").expect("date")
        );
        for t in [
            "2026-11-21T12:24:05Z",
            "2026-11-21 12:24:05",
            "2026-11-21T12:24:05",
            "12:24:05",
            "@1795263845",
        ] {
            assert_eq!(utc(t), Ok(NOW - 123_456), "{t}");
        }
        assert_eq!(utc("2026-11-21T12:24"), Ok(NOW - 5_123_456));
        assert_eq!(utc("2000-02-29"), Ok(951_782_400 * SEC));
        // A POSIX rule, so that the test needs no tzdata: Central European Time.
        let paris = Zone {
            utc: false,
            tz: OnceLock::from(TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a POSIX TZ")),
        };
        assert_eq!(paris.parse("2026-11-21 13:24:05", NOW), Ok(NOW - 123_456));
        assert_eq!(paris.show(NOW), "2026-11-21T13:24:05.123+01:00");
        assert_eq!(Zone::utc().show(NOW), "2026-11-21T12:24:05.123Z");
    }

    #[test]
    fn nonsense_is_one_sentence() {
        for bad in [
            "",
            "soon",
            "1x",
            "2026-13-01",
            "2026-11-21T25:00",
            "h",
            "1hm",
            "@lunch",
        ] {
            let e = utc(bad).expect_err(bad);
            assert!(e.contains("not"), "{bad}: {e}");
        }
    }

    /// `--since 408212-1-1` overflowed the microsecond arithmetic (a panic in a debug build,
    /// a wrapped time in a release build): out-of-range times are refused.
    #[test]
    fn times_out_of_range_are_refused_not_wrapped() {
        for bad in [
            "408212-1-1",
            "99999-12-31",
            "9999999999-01-01",
            "9223372036854775807s",
            "99999999999999999999w",
            "100000000w",
            "@1e30",
        ] {
            assert!(utc(bad).is_err(), "{bad}");
        }
        assert!(utc("9999-12-30T00:00:00Z").is_ok_and(|t| t > NOW));
        assert!(utc("0000-01-01").is_ok_and(|t| t < 0));
    }

    #[test]
    fn printed_durations_are_short() {
        assert_eq!(duration(400_000), "0.4s");
        assert_eq!(duration(4_200), "4ms");
        assert_eq!(duration(45 * SEC), "45s");
        assert_eq!(duration(723 * SEC), "12m03s");
        assert_eq!(duration(4 * 3600 * SEC + 720 * SEC), "4h12m");
        assert_eq!(duration(3 * 86_400 * SEC + 4 * 3600 * SEC), "3d04h");
        assert_eq!(ago(NOW - 90 * SEC, NOW), "1m30s ago");
        assert_eq!(ago(NOW + 5 * SEC, NOW), "in 5s");
    }
}
