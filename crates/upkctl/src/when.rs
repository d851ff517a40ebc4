//! Times on the command line (`--since`, `--until`) and on the screen.
//!
//! Every time upkctl reads or prints is UTC: a duration ago (`90s`, `15m`, `1h30m`, `2d`, `1w`)
//! or a date with an optional time (`2026-11-21`, `2026-11-21T12:00`, `2026-11-21 12:00:05Z`).
//! Printed times are `upk_core::time::format_utc` cut to milliseconds, which is as fine as a
//! person reads and keeps a history line inside a terminal.
//!
//! Arithmetic on what the operator typed is checked: a year is four digits (0000-9999), and a
//! duration reaching back past the representable range is refused with one sentence, never
//! wrapped.

/// Microseconds per second.
const SEC: i64 = 1_000_000;

/// Parses a `--since`/`--until` value into wall microseconds, relative to `now_us`.
pub fn parse(text: &str, now_us: i64) -> Result<i64, String> {
    let t = text.trim();
    let too_far = || format!("{text:?} reaches too far back: durations are at most 100,000 weeks");
    match parse_duration(t) {
        Some(Some(ago)) => return now_us.checked_sub(ago).ok_or_else(too_far),
        Some(None) => return Err(too_far()),
        None => {}
    }
    parse_date(t).ok_or_else(|| {
        format!(
            "{text:?} is neither a duration (90s, 15m, 1h30m, 2d, 1w) nor a UTC date \
             (2026-11-21, 2026-11-21T12:00:00Z, years 0000 to 9999)"
        )
    })
}

/// The longest duration accepted: about 1,900 years, far from any overflow.
const MAX_AGO: i64 = 100_000 * 7 * 86_400 * SEC;

/// `1h30m` and friends, in microseconds; `None` if it is not a duration, `Some(None)` if it
/// is one longer than [`MAX_AGO`].
fn parse_duration(t: &str) -> Option<Option<i64>> {
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || "smhdw".contains(c)) {
        return None;
    }
    let (mut total, mut digits) = (Some(0i64), String::new());
    let mut add = |digits: &str, unit: i64| {
        // Digits were checked above: a parse failure is an overflow.
        let n = digits.parse::<i64>().ok();
        total = total
            .zip(n)
            .and_then(|(t, n)| t.checked_add(n.checked_mul(unit * SEC)?))
            .filter(|t| *t <= MAX_AGO);
    };
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => 7 * 86_400,
        };
        if digits.is_empty() {
            return None; // `h`, `1hm`
        }
        add(&digits, unit);
        digits.clear();
    }
    // A bare number is seconds.
    if !digits.is_empty() {
        add(&digits, 1);
    }
    Some(total)
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS]][Z]`, UTC, years 0000 to 9999.
fn parse_date(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let digits = |s: &str, n: usize| -> Option<i64> {
        (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let mut d = date.splitn(3, '-');
    let year = digits(d.next()?, 4)?;
    let month = digits(d.next()?, 2)?;
    let day = digits(d.next()?, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    if let Some(tm) = time {
        let parts: Vec<&str> = tm.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return None;
        }
        let field = |i: usize, max: i64| -> Option<i64> {
            let v = parts.get(i).map_or(Some(0), |p| digits(p, 2))?;
            (0..max).contains(&v).then_some(v)
        };
        secs += field(0, 24)? * 3600 + field(1, 60)? * 60 + field(2, 61)?;
    }
    // Years 0000-9999 are within +-2.6e17 microseconds: no overflow is possible.
    Some(secs * SEC)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, the
/// inverse of the one in `upk_core::time`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC time to the millisecond: `2026-11-21T12:24:05.123Z`.
pub fn utc(wall_us: i64) -> String {
    let full = upk_core::time::format_utc(wall_us);
    // format_utc ends in `.uuuuuuZ`: keep three of the six digits.
    match full.len().checked_sub(4) {
        Some(cut) => format!("{}Z", &full[..cut]),
        None => full,
    }
}

/// A duration for a column: `0.4s`, `45s`, `12m03s`, `4h12m`, `3d04h`.
pub fn duration(us: i64) -> String {
    let us = us.max(0);
    let s = us / SEC;
    match s {
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
    fn durations_count_back_from_now() {
        assert_eq!(parse("90s", NOW), Ok(NOW - 90 * SEC));
        assert_eq!(parse("1h30m", NOW), Ok(NOW - 5400 * SEC));
        assert_eq!(parse("2d", NOW), Ok(NOW - 2 * 86_400 * SEC));
        assert_eq!(parse("1w", NOW), Ok(NOW - 7 * 86_400 * SEC));
        assert_eq!(parse("30", NOW), Ok(NOW - 30 * SEC));
    }

    #[test]
    fn dates_are_utc() {
        let midnight = parse("2026-11-21", NOW).expect("date");
        assert_eq!(
            upk_core::time::format_utc(midnight),
            "2026-11-21T00:00:00.000000Z"
        );
        for t in [
            "2026-11-21T12:24:05Z",
            "2026-11-21 12:24:05",
            "2026-11-21T12:24:05",
        ] {
            assert_eq!(parse(t, NOW), Ok(NOW - 123_456), "{t}");
        }
        assert_eq!(parse("2026-11-21T12:24", NOW), Ok(NOW - 5_123_456));
        assert_eq!(parse("2000-02-29", NOW), Ok(951_782_400 * SEC));
    }

    #[test]
    fn nonsense_is_one_sentence() {
        for bad in [
            "",
            "yesterday",
            "1x",
            "2026-13-01",
            "2026-11-21T25:00",
            "2026-1-1",
            "2026-11-1",
            "+026-11-21",
            "2026-11-21T1:00",
            "h",
            "1hm",
            "-5s",
        ] {
            let e = parse(bad, NOW).expect_err(bad);
            assert!(e.contains("neither a duration"), "{e}");
        }
    }

    /// `--since 408212-1-1` overflowed the microsecond arithmetic (a panic in a debug build,
    /// a wrapped time in a release build).
    #[test]
    fn since_408212_1_1_is_refused_not_wrapped() {
        for bad in [
            "408212-1-1",
            "408212-01-01",
            "99999-12-31",
            "9999999999-01-01",
        ] {
            let e = parse(bad, NOW).expect_err(bad);
            assert!(e.contains("years 0000 to 9999"), "{bad}: {e}");
        }
        assert!(parse("9999-12-31T23:59:59Z", NOW).is_ok_and(|t| t > NOW));
        assert!(parse("0000-01-01", NOW).is_ok_and(|t| t < 0));
        for bad in [
            "9223372036854775807s",
            "99999999999999999999w",
            "100001w",
            &format!("{}s", i64::MAX / SEC + 1),
        ] {
            let e = parse(bad, NOW).expect_err(bad);
            assert!(e.contains("too far back"), "{bad}: {e}");
        }
        assert_eq!(parse("100000w", 0), Ok(-MAX_AGO));
        assert!(
            parse("100000w", i64::MIN + 1).is_err(),
            "now - ago would wrap"
        );
    }

    #[test]
    fn printed_times_and_durations_are_short() {
        assert_eq!(utc(NOW), "2026-11-21T12:24:05.123Z");
        assert_eq!(duration(400_000), "0.4s");
        assert_eq!(duration(45 * SEC), "45s");
        assert_eq!(duration(723 * SEC), "12m03s");
        assert_eq!(duration(4 * 3600 * SEC + 720 * SEC), "4h12m");
        assert_eq!(duration(3 * 86_400 * SEC + 4 * 3600 * SEC), "3d04h");
    }
}
