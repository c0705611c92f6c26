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
    let micros = parse_timestamp(s)?.micros;
    let secs = micros.div_euclid(1_000_000);
    Some(from_unix_seconds(secs) + Duration::from_micros(micros.rem_euclid(1_000_000) as u64))
}

/// A parsed timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Microseconds since the epoch, UTC (local times are read as UTC).
    pub micros: i64,
    /// Whether a time zone was given.
    pub zoned: bool,
}

/// Parses `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH[:MM]]`, the forms people and
/// barman's `backup.info` write.
pub fn parse_timestamp(s: &str) -> Option<Stamp> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = s.split_at_checked(10)?;
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let rest = rest.strip_prefix([' ', 'T'])?;
    // The zone starts at the first Z, + or - after the time.
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let mut t = time.trim().split(':');
    let (h, mi) = (num(t.next()?)?, num(t.next()?)?);
    let (sec, frac) = match t.next() {
        None => (0, 0),
        Some(sf) => {
            let (sec, frac) = sf.split_once('.').unwrap_or((sf, ""));
            if frac.is_empty() && sf.contains('.') {
                return None;
            }
            let frac = if frac.is_empty() {
                0
            } else {
                if frac.is_empty() && sf.contains('.') {
                    return None;
                }
                let digits = frac.get(..frac.len().min(6))?;
                num(digits)? * 10i64.pow(6 - digits.len() as u32)
            };
            (num(sec)?, frac)
        }
    };
    if t.next().is_some()
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let (offset, zoned) = match zone.trim() {
        "" => (0, false),
        "Z" | "z" => (0, true),
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let z = &z[1..];
            let (zh, zm) = match z.split_once(':') {
                Some((h, m)) if h.len() == 2 && m.len() == 2 => (num(h)?, num(m)?),
                None if z.len() == 4 => (num(&z[..2])?, num(&z[2..])?),
                None if z.len() == 2 => (num(z)?, 0),
                _ => return None,
            };
            if zh > 15 || zm > 59 {
                return None;
            }
            (sign * (zh * 3600 + zm * 60), true)
        }
    };
    let days = days_from_civil(y, mo as u32, day as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(Stamp {
        micros: secs * 1_000_000 + frac,
        zoned,
    })
}

/// Year, month, day, hour, minute, second and microsecond of `t`, in UTC.
pub fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        d.subsec_micros(),
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00`, which postgres reads the same in any time zone.
pub fn format_utc(micros: i64) -> String {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    let (y, mo, d, h, mi, s, us) = utc(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}+00")
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
