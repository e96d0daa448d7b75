//! Parses the duration strings Istio resources carry (`timeout: 1.5s`, `interval: 1h30m`).
//! Kubernetes validates these as Go durations, so the grammar is Go's `time.ParseDuration`
//! without negative values. Used by validation and by anything reading raw durations.

use std::time::Duration;

const NANOS_PER: [(&str, u128); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 0), // placeholder so a day suffix gets a precise message below
];

/// The largest duration Go can represent (`math.MaxInt64` nanoseconds).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration: a sequence of decimal numbers, each with an optional fraction and
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `7s`, `0.5s`, `100ms` or `1h30m`.
/// A bare `0` is allowed. Negative durations are rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {s:?}: empty"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, tail) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "invalid duration {s:?}: missing unit (one of ns, us, ms, s, m, h)"
            ));
        }
        let Some(&(_, scale)) = NANOS_PER.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)"
            ));
        };
        if scale == 0 {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)"
            ));
        }
        let too_big = || format!("invalid duration {s:?}: out of range");
        let mut value: u128 = 0;
        for b in int_part.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(b - b'0')))
                .filter(|v| *v <= MAX_NANOS)
                .ok_or_else(too_big)?;
        }
        let mut nanos = value.checked_mul(scale).ok_or_else(too_big)?;
        // Fractions are truncated to whole nanoseconds, as Go does.
        let mut place = scale;
        for b in frac_part.bytes() {
            if place < 10 {
                break;
            }
            place /= 10;
            nanos += u128::from(b - b'0') * place;
        }
        total = total.checked_add(nanos).ok_or_else(too_big)?;
        if total > MAX_NANOS {
            return Err(too_big());
        }
        rest = tail;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("invalid duration {s:?}"))?;
    // The remainder is below 10^9, so it always fits.
    let sub = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(ok("7s"), Duration::from_secs(7));
        assert_eq!(ok("0.5s"), Duration::from_millis(500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("2us"), Duration::from_micros(2));
        assert_eq!(ok("2µs"), Duration::from_micros(2));
        assert_eq!(ok("5ns"), Duration::from_nanos(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert_eq!(ok("1h1m1s1ms"), Duration::from_millis(3_661_001));
        assert_eq!(ok("300s"), Duration::from_secs(300));
        assert_eq!(ok("1.0000000009s"), Duration::from_secs(1));
    }

    #[test]
    fn rejects_negatives_and_garbage() {
        for bad in [
            "",
            "-1s",
            "-0",
            "s",
            "5",
            "1.5",
            "abc",
            "5 s",
            "5sec",
            "1d",
            "1h-5m",
            ".s",
            "1e3s",
            "99999999999999999999h",
            "3000000h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse_duration("-1s").err().unwrap_or_default();
        assert!(msg.contains("negative"), "{msg}");
    }
}
