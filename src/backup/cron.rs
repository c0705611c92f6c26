//! Five-field cron expressions, in UTC, as Vixie cron reads them: `minute hour
//! day-of-month month day-of-week`, each a `*`, a number, a range `a-b`, a step
//! (`*/n`, `a-b/n`, `a/n`) or a comma list of those; month and weekday names
//! (`jan`, `mon`); weekday 0 or 7 is Sunday; the `@hourly`, `@daily`, `@weekly`,
//! `@monthly` and `@yearly` shorthands. When both day fields are restricted, a day
//! matches if either does (cron's rule); a field starting with `*` does not restrict.

use crate::civil::{civil_from_days, weekday};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's bounds and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The number of `names[0]`.
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    // 7 is Sunday too; folded into 0 below.
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl Field {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.names_from);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{}: {s:?} is not a number", self.name))?;
        if n < self.min || n > self.max {
            return Err(format!(
                "{}: {n} is outside {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(n)
    }

    /// The set of values `text` selects, as bits.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s
                        .parse()
                        .map_err(|_| format!("{}: step {s:?} is not a number", self.name))?;
                    if step == 0 {
                        return Err(format!("{}: a step of 0", self.name));
                    }
                    (r, step)
                }
                None => (item, 1),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let a = self.value(range)?;
                // `a/n` runs from a to the end, as in Vixie cron.
                (a, if item.contains('/') { self.max } else { a })
            };
            if lo > hi {
                return Err(format!("{}: range {range:?} runs backwards", self.name));
            }
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok(bits)
    }
}

impl Cron {
    /// Parses an expression; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 1 * *".to_owned(),
            "@weekly" => "0 0 * * 0".to_owned(),
            "@daily" | "@midnight" => "0 0 * * *".to_owned(),
            "@hourly" => "0 * * * *".to_owned(),
            other if other.starts_with('@') => {
                return Err(format!(
                    "{text:?} is not @hourly, @daily, @weekly, @monthly or @yearly"
                ))
            }
            _ => text.to_owned(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; a cron expression has 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        }
        let mut sets = [0u64; 5];
        for (i, f) in fields.iter().enumerate() {
            sets[i] = FIELDS[i].parse(f)?;
        }
        let mut weekdays = sets[4];
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        let cron = Cron {
            minutes: sets[0],
            hours: sets[1] as u32,
            days: sets[2] as u32,
            months: sets[3] as u16,
            weekdays: weekdays as u8,
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        };
        if !cron.ever_fires() {
            return Err(format!(
                "{text:?} names no day that exists (such as February 30)"
            ));
        }
        Ok(cron)
    }

    /// Whether some month has a day this expression picks. With both day fields
    /// restricted either matches, and every weekday comes round; otherwise the days
    /// of month must exist in one of the months: 1-29 in every month, 30 in all but
    /// February, 31 in seven.
    fn ever_fires(&self) -> bool {
        if !self.days_star && !self.weekdays_star {
            return true;
        }
        let longest = (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .map(|m| match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            })
            .max()
            .unwrap_or(0);
        (1..=longest).any(|d| self.days & (1 << d) != 0)
    }

    fn day_matches(&self, days: i64) -> bool {
        let (_, month, day) = civil_from_days(days);
        if self.months & (1 << month) == 0 {
            return false;
        }
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday(days)) != 0;
        // Vixie cron: a field written from `*` (`*`, `*/2`) makes the two an AND.
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first minute strictly after `after` (seconds since the epoch, UTC) that
    /// matches, as seconds since the epoch; `None` if none within nine years (only an
    /// expression that never fires, refused by [`Cron::parse`], has none).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = after.div_euclid(60) * 60 + 60;
        let first_day = start.div_euclid(86_400);
        // February 29 can be eight years away (2096 to 2104).
        for day in first_day..first_day + 9 * 366 {
            if !self.day_matches(day) {
                continue;
            }
            for hour in 0..24i64 {
                if self.hours & (1 << hour) == 0 {
                    continue;
                }
                for minute in 0..60i64 {
                    if self.minutes & (1 << minute) == 0 {
                        continue;
                    }
                    let t = day * 86_400 + hour * 3600 + minute * 60;
                    if t >= start {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

/// Seconds since the epoch of a UTC civil time.
#[cfg(test)]
pub(crate) fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
    crate::civil::days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_times() {
        // 2026-11-24 is a Tuesday.
        let now = at(2026, 11, 24, 10, 17) + 30;
        let cases: &[(&str, i64)] = &[
            ("* * * * *", at(2026, 11, 24, 10, 18)),
            ("*/15 * * * *", at(2026, 11, 24, 10, 30)),
            ("0 */6 * * *", at(2026, 11, 24, 12, 0)),
            ("0 3 * * *", at(2026, 11, 25, 3, 0)),
            ("@daily", at(2026, 11, 25, 0, 0)),
            ("@hourly", at(2026, 11, 24, 11, 0)),
            ("@weekly", at(2026, 11, 29, 0, 0)),
            ("@monthly", at(2026, 12, 1, 0, 0)),
            ("@yearly", at(2027, 1, 1, 0, 0)),
            ("30 2 * * 1-5", at(2026, 11, 25, 2, 30)),
            ("30 2 * * sat,sun", at(2026, 11, 28, 2, 30)),
            ("0 0 * * 7", at(2026, 11, 29, 0, 0)),
            ("0 0 1,15 * *", at(2026, 12, 1, 0, 0)),
            // Both day fields restricted: either matches (the 1st, or a Friday).
            ("0 0 1 * fri", at(2026, 11, 27, 0, 0)),
            // A day of month from `*` with a step: still an AND with the weekday.
            ("0 0 */10 * *", at(2026, 12, 1, 0, 0)),
            ("0 0 */10 * mon", at(2026, 12, 21, 0, 0)),
            ("0 0 29 feb *", at(2028, 2, 29, 0, 0)),
            ("5-10/5 10 * * *", at(2026, 11, 25, 10, 5)),
            ("20/20 10 * * *", at(2026, 11, 24, 10, 20)),
            ("17 10 24 11 *", at(2027, 11, 24, 10, 17)),
            ("0 0 31 * *", at(2026, 12, 31, 0, 0)),
        ];
        for (expr, want) in cases {
            let c = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(c.next_after(now), Some(*want), "{expr}");
        }
        // Exactly on a matching minute: the next one, not this one.
        let c = Cron::parse("0 * * * *").unwrap();
        assert_eq!(
            c.next_after(at(2026, 11, 24, 10, 0)),
            Some(at(2026, 11, 24, 11, 0))
        );
    }

    #[test]
    fn refuses_what_cron_refuses() {
        let bad = [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "* * * foo *",
            "@reboot",
            "0 0 30 2 *",
            "0 0 31 4,6 *",
        ];
        for expr in bad {
            assert!(Cron::parse(expr).is_err(), "{expr:?}");
        }
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        // February 30 with a weekday as well fires on that weekday.
        assert!(Cron::parse("0 0 30 2 mon").is_ok());
    }
}
