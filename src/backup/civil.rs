//! Calendar arithmetic in UTC, without a date crate: days since the epoch to a civil
//! date and back (Howard Hinnant's algorithms), and barman's time stamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Year, month (1-12) and day (1-31) of the day `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days from 1970-01-01 to the given civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Day of the week of the day `days` after the epoch: 0 is Sunday (1970-01-01 was a
/// Thursday).
pub fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Seconds since the epoch, negative before it.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// The time `secs` seconds after the epoch.
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `2026-11-24T03:50:40Z`, for people and JSON.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads a time as barman writes it in `backup.info` (Python's `isoformat`):
/// `2026-11-24 03:50:40.455712+00:00`, with or without the fraction, a `T` or a space,
/// an offset or `Z`. A time without an offset is taken as UTC (barman reads it in its
/// local zone, which in a container is UTC).
pub fn parse_barman_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let scaled: String = frac[..digits]
            .chars()
            .chain("000000".chars())
            .take(6)
            .collect();
        micros = scaled.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = rest[1..].replace(':', "");
            if hm.len() != 4 || !hm.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let (h, m): (i64, i64) = (hm[..2].parse().ok()?, hm[2..].parse().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(from_unix_seconds(secs) + Duration::from_micros(micros as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_weekdays() {
        for days in [-800_000, -1, 0, 1, 59, 11_016, 20_000, 47_541, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2026, 11, 24), 20_781);
        // 2026-11-24 is a Tuesday, 1970-01-04 a Sunday.
        assert_eq!(weekday(20_781), 2);
        assert_eq!(weekday(3), 0);
    }

    #[test]
    fn reads_barmans_time_stamps() {
        let t = |s: &str| parse_barman_time(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        let base = 1_795_924_240; // 2026-11-29 03:50:40 UTC
        let cases: &[(&str, Option<Duration>)] = &[
            (
                "2026-11-29 03:50:40.455712+00:00",
                Some(Duration::from_micros(base * 1_000_000 + 455_712)),
            ),
            ("2026-11-29 03:50:40+00:00", Some(Duration::from_secs(base))),
            ("2026-11-29T03:50:40Z", Some(Duration::from_secs(base))),
            ("2026-11-29 03:50:40", Some(Duration::from_secs(base))),
            (
                "2026-11-29 05:50:40.5+02:00",
                Some(Duration::from_millis(base * 1000 + 500)),
            ),
            ("2026-11-28 22:50:40-0500", Some(Duration::from_secs(base))),
            ("None", None),
            ("2026-13-29 03:50:40", None),
            ("2026-11-29 03:50:40+0", None),
            ("2026-11-29 03:50:40.", None),
        ];
        for (s, want) in cases {
            assert_eq!(t(s), *want, "{s}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(base)),
            "2026-11-29T03:50:40Z"
        );
    }
}
