//! `PGWARDEN_BACKUP_SCHEDULE`: an interval (`6h`, `30m`, `1d`, `1h30m`, `90s`) or a
//! five-field cron expression in UTC (`0 3 * * *`, `@daily`).
//!
//! An interval counts from the start of the last backup (the newest in the archive
//! when pgwarden starts, then each one taken), so that a restart does not reset it
//! and an archive without a backup gets one as soon as the instance is ready. A cron
//! expression fires at its next minute after the last backup's start: a time missed
//! while pgwarden was down is made up once at start; with no backup yet, it waits
//! for its next minute.

use super::cron::Cron;
use crate::civil::{from_unix_seconds, unix_seconds};
use std::time::{Duration, SystemTime};

/// When backups are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed interval.
    Every(Duration),
    /// A cron expression, in UTC.
    Cron(Cron),
}

/// The units of an interval.
const UNITS: [(char, u64); 4] = [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400)];

fn parse_interval(text: &str) -> Option<Result<Duration, String>> {
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (_, secs) = UNITS.iter().find(|(u, _)| *u == c.to_ascii_lowercase())?;
        if digits.is_empty() {
            return None;
        }
        let n: u64 = match digits.parse() {
            Ok(n) => n,
            Err(_) => return Some(Err(format!("{text:?}: the number is too large"))),
        };
        total = match n.checked_mul(*secs).and_then(|s| total.checked_add(s)) {
            Some(t) if t <= 366 * 86_400 => t,
            _ => return Some(Err(format!("{text:?} is longer than a year"))),
        };
        digits.clear();
    }
    if !digits.is_empty() {
        return Some(Err(format!(
            "{text:?} has a number without a unit; write s, m, h or d after it (6h, 30m, 1d)"
        )));
    }
    if total == 0 {
        return Some(Err(format!("{text:?} is no time at all")));
    }
    Some(Ok(Duration::from_secs(total)))
}

/// `PGWARDEN_BACKUP_SCHEDULE` whole: when backups are due, and, with `; full every
/// <interval>` after it (`6h; full every 7d`), that the scheduled backups are
/// incremental, with a full one whenever the chain's full backup is older than the
/// interval.
pub fn parse_with_fulls(text: &str) -> Result<(Schedule, Option<Duration>), String> {
    let Some((when, fulls)) = text.split_once(';') else {
        return Ok((Schedule::parse(text)?, None));
    };
    let schedule = Schedule::parse(when)?;
    let every = fulls
        .trim()
        .strip_prefix("full every")
        .map(str::trim)
        .and_then(parse_interval)
        .ok_or_else(|| {
            format!(
                "{:?} after the ';' is not \"full every <interval>\" (6h; full every 7d: incremental backups every 6 hours, a full one every 7 days)",
                fulls.trim()
            )
        })??;
    Ok((schedule, Some(every)))
}

impl Schedule {
    /// Parses the setting's value; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(interval) = parse_interval(text) {
            return interval.map(Schedule::Every);
        }
        if text.starts_with('@') || text.split_whitespace().count() > 1 {
            return Cron::parse(text).map(Schedule::Cron);
        }
        Err(format!(
            "{text:?} is neither an interval (6h, 30m, 1d, 1h30m) nor a cron expression in UTC (0 3 * * *, @daily)"
        ))
    }

    /// When the next run is due, given the start of the last one, and `since`, when
    /// the scheduler started: with no run yet an interval is due at once, and a cron
    /// expression at its first time after `since` (counted from `now`, that time would
    /// move on with every wake-up and never come). The answer may be in the past: the
    /// run is due now.
    pub fn next(
        &self,
        now: SystemTime,
        last_start: Option<SystemTime>,
        since: SystemTime,
    ) -> SystemTime {
        match (self, last_start) {
            (Schedule::Every(d), Some(last)) => last + *d,
            (Schedule::Every(_), None) => now,
            (Schedule::Cron(c), last) => {
                let after = unix_seconds(last.unwrap_or(since));
                // `parse` refused the expressions that never fire.
                c.next_after(after)
                    .map(from_unix_seconds)
                    .unwrap_or(now + Duration::from_secs(366 * 86_400))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::cron::at;

    #[test]
    fn a_schedule_may_make_incrementals_with_a_full_cadence() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            parse_with_fulls("6h; full every 7d"),
            Ok((
                Schedule::Every(Duration::from_secs(6 * 3600)),
                Some(7 * day)
            ))
        );
        assert_eq!(
            parse_with_fulls("1d").map(|(_, f)| f),
            Ok(None),
            "fulls only, as before"
        );
        assert!(matches!(
            parse_with_fulls("0 3 * * *;full every 1d"),
            Ok((Schedule::Cron(_), Some(d))) if d == day
        ));
        for bad in [
            "6h; weekly",
            "6h; full every",
            "6h; full every 7",
            "x; full every 1d",
        ] {
            assert!(parse_with_fulls(bad).is_err(), "{bad}");
        }
        assert!(parse_with_fulls("6h; weekly")
            .unwrap_err()
            .contains("full every <interval>"));
    }

    #[test]
    fn parses_intervals_and_cron() {
        let every = |s| Ok(Schedule::Every(Duration::from_secs(s)));
        let cases: &[(&str, Result<Schedule, ()>)] = &[
            ("6h", every(6 * 3600)),
            ("30m", every(1800)),
            ("1d", every(86_400)),
            ("90s", every(90)),
            ("1h30m", every(5400)),
            ("2H", every(7200)),
            (" 12h ", every(43_200)),
        ];
        for (text, want) in cases {
            assert_eq!(Schedule::parse(text).map_err(|_| ()), *want, "{text}");
        }
        for cron in ["0 3 * * *", "@daily", "*/30 * * * *", "0 2 * * sun"] {
            assert!(
                matches!(Schedule::parse(cron), Ok(Schedule::Cron(_))),
                "{cron}"
            );
        }
        let bad = [
            "",
            "6",
            "h",
            "6x",
            "6 h",
            "0h",
            "-1h",
            "1.5h",
            "400d",
            "every day",
            "daily",
            "0 3 * *",
            "0 25 * * *",
            "@reboot",
            "99999999999999999999s",
        ];
        for text in bad {
            assert!(Schedule::parse(text).is_err(), "{text:?}");
        }
        assert!(Schedule::parse("6").unwrap_err().contains("unit"));
    }

    #[test]
    fn next_times() {
        let t = |s: i64| from_unix_seconds(s);
        let now = t(at(2026, 11, 24, 10, 17) + 30);
        let six = Schedule::parse("6h").unwrap();
        // No backup yet: due now.
        assert_eq!(six.next(now, None, now), now);
        // Six hours after the last one began, even if that is already past.
        let last = t(at(2026, 11, 24, 1, 0));
        assert_eq!(six.next(now, Some(last), now), t(at(2026, 11, 24, 7, 0)));
        let daily = Schedule::parse("0 3 * * *").unwrap();
        // No backup yet: the next 03:00.
        assert_eq!(daily.next(now, None, now), t(at(2026, 11, 25, 3, 0)));
        // No backup yet: woken at the due time, the due time is still the same one
        // (it used to move on a day with every wake-up).
        let due = daily.next(now, None, now);
        assert_eq!(daily.next(due, None, now), due);
        // Last backup yesterday at 03:00: today's 03:00 was missed, so due now.
        let last = t(at(2026, 11, 23, 3, 0) + 5);
        assert_eq!(daily.next(now, Some(last), now), t(at(2026, 11, 24, 3, 0)));
        // Last backup today at 03:00: tomorrow.
        let last = t(at(2026, 11, 24, 3, 0) + 5);
        assert_eq!(daily.next(now, Some(last), now), t(at(2026, 11, 25, 3, 0)));
    }
}
