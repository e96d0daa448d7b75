//! Calendar dates from Unix time, for the few places the gateway prints one (access log
//! timestamps, certificate validity in error messages) without a date library.

/// (year, month, day, hour, minute, second) of `secs` seconds since the Unix epoch, in
/// UTC (proleptic Gregorian; Howard Hinnant's civil-from-days).
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, (rem / 60) % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(super::civil(1_795_995_521), (2026, 11, 29, 23, 38, 41));
        assert_eq!(super::civil(-1), (1969, 12, 31, 23, 59, 59));
    }
}
