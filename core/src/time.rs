//! RFC 3339 formatting and parsing, and UTC hours, without a calendar dependency.

/// Formats milliseconds since the Unix epoch as an RFC 3339 UTC timestamp with
/// millisecond precision, e.g. `2026-11-22T00:18:12.345Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// The wall clock, in milliseconds since the Unix epoch, for whoever stamps
/// a record's `at` (ingest, the analyzer) or a log entry's append time. The
/// fold never calls it: it reads time only from the records.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the UTC hour holding `ms` (milliseconds since the epoch).
pub fn hour_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

pub const DAY_MS: i64 = 24 * HOUR_MS;

/// The start of the UTC day holding `ms` (milliseconds since the epoch).
pub fn day_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(DAY_MS)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with whole seconds,
/// e.g. `2026-11-22T10:00:00Z` (hours of activity).
pub fn rfc3339_seconds(ms: i64) -> String {
    let mut s = rfc3339_millis(ms.div_euclid(1000) * 1000);
    s.truncate(s.len() - 5);
    s.push('Z');
    s
}

/// Parses an RFC 3339 timestamp (`2026-11-22T10:00:00Z`, optional fraction,
/// `Z` or a `±HH:MM` offset, `t`/`z`/space accepted as RFC 3339 allows) into
/// milliseconds since the epoch; `None` for anything else. Fractions beyond
/// milliseconds are truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0, 4)?,
        num(5, 2)?,
        num(8, 2)?,
        num(11, 2)?,
        num(14, 2)?,
        num(17, 2)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if sep(i, b".") {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for k in 0..3 {
            millis = millis * 10 + if k < digits { i64::from(b[i + 1 + k] - b'0') } else { 0 };
        }
        i += 1 + digits;
    }
    let offset_min = match b.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_millis(1_795_306_692_345), "2026-11-22T00:18:12.345Z");
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn hours_round_down_and_print_whole_seconds() {
        assert_eq!(hour_start(1_795_306_692_345), 1_795_305_600_000);
        assert_eq!(rfc3339_seconds(hour_start(1_795_306_692_345)), "2026-11-22T00:00:00Z");
        assert_eq!(hour_start(-1), -HOUR_MS);
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        for ms in [0, 951_782_400_001, 1_795_306_692_345, -1, 253_402_300_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339_millis(ms)), Some(ms), "{ms}");
        }
        assert_eq!(parse_rfc3339("2026-11-22T00:00:00Z"), Some(1_795_305_600_000));
        assert_eq!(parse_rfc3339("2026-11-22T09:00:00+09:00"), Some(1_795_305_600_000));
        assert_eq!(parse_rfc3339("2026-11-21t19:30:00.5-04:30"), Some(1_795_305_600_500));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.123456Z"), Some(951_782_400_123));
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:00:00.Z",
            "2026-11-22T00:00:00+0900",
            "2026-11-22T00:00:00Zjunk",
            "+026-11-22T00:00:00Z",
            "１２３４-11-22T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
