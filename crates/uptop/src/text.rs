//! How uptop writes times, exits and restart counts into a cell: short, fixed in shape, and
//! without a time zone (every time is an age: "3m05s", "12s ago"), so a column never jumps
//! and nothing depends on the machine's locale. Pure functions, unit-tested.

use libupkeeper::Exit;

/// A duration in microseconds as at most two units: `45s`, `3m05s`, `2h03m`, `4d02h`.
pub fn duration(us: i64) -> String {
    let s = us.max(0) / 1_000_000;
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{m}m{:02}s", s % 60),
        3_600..86_400 => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// How a run ended, in a word or two: `exit 0`, `SIGKILL`, `SIGSEGV core`, `unknown`.
pub fn exit(exit: &Exit) -> String {
    match exit {
        Exit::Exited { code } => format!("exit {code}"),
        Exit::Killed { signal, core } => {
            let name = nix::sys::signal::Signal::try_from(*signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {signal}"));
            if *core {
                format!("{name} core")
            } else {
                name
            }
        }
        Exit::Unknown => "unknown".into(),
    }
}

/// Counts as a one-line bar chart, one character each: `▁` for none, then `▂` to `█`
/// scaled to the largest count.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 7] = ['▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let last = BARS.len() as u64 - 1;
    // 1 maps to the lowest bar and the largest count to the highest.
    let span = counts.iter().copied().max().unwrap_or(0).max(2) - 1;
    counts
        .iter()
        .map(|&n| match n {
            0 => '▁',
            n => BARS[((n - 1) * last / span).min(last) as usize],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_two_units() {
        let s = 1_000_000;
        assert_eq!(duration(-5), "0s");
        assert_eq!(duration(59 * s + 999_999), "59s");
        assert_eq!(duration(185 * s), "3m05s");
        assert_eq!(duration((2 * 3600 + 3 * 60 + 59) * s), "2h03m");
        assert_eq!(duration((4 * 86_400 + 2 * 3600) * s), "4d02h");
    }

    #[test]
    fn exits_in_a_word_or_two() {
        assert_eq!(exit(&Exit::Exited { code: 3 }), "exit 3");
        let kill = Exit::Killed {
            signal: 9,
            core: false,
        };
        assert_eq!(exit(&kill), "SIGKILL");
        let segv = Exit::Killed {
            signal: 11,
            core: true,
        };
        assert_eq!(exit(&segv), "SIGSEGV core");
        assert_eq!(exit(&Exit::Unknown), "unknown");
    }

    #[test]
    fn sparklines_scale_to_the_largest_count() {
        assert_eq!(sparkline(&[0, 0, 0]), "▁▁▁");
        assert_eq!(sparkline(&[0, 1, 0]), "▁▂▁");
        assert_eq!(sparkline(&[1, 4, 7]), "▂▅█");
        assert_eq!(sparkline(&[1, 2]), "▂█");
        assert_eq!(sparkline(&[]), "");
    }
}
