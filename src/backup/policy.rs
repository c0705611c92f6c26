//! Retention policies in barman's syntax: `REDUNDANCY n` and
//! `RECOVERY WINDOW OF n {DAYS|WEEKS|MONTHS}`, case-insensitive, parsed as barman's
//! `RedundancyRetentionPolicy` and `RecoveryWindowRetentionPolicy` do (the unit may be
//! singular; a month is 31 days).

use std::time::Duration;

/// A parsed retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The newest `n` DONE backups are kept.
    Redundancy(u32),
    /// Every backup needed to recover to any point of the last `n` units.
    RecoveryWindow {
        /// How many units.
        n: u32,
        /// Which unit.
        unit: WindowUnit,
    },
}

/// The unit of a recovery window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowUnit {
    /// 24 hours.
    Days,
    /// 7 days.
    Weeks,
    /// 31 days, as barman counts a month.
    Months,
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not barman's syntax.
    #[error("{0:?} is not a retention policy; expected REDUNDANCY n or RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS")]
    Syntax(String),
    /// `REDUNDANCY 0` would delete every backup.
    #[error("REDUNDANCY 0 would delete every backup; keep at least one (delete a single backup with --backup-id)")]
    KeepsNothing,
    /// A number too large to mean anything.
    #[error("{0:?}: the number is too large")]
    TooLarge(String),
}

impl Policy {
    /// Parses a policy as barman does: `^\s*redundancy\s+(\d+)\s*$` and
    /// `^\s*recovery\s+window\s+of\s+(\d+)\s+(day|month|week)s?\s*$`, ignoring case.
    /// Unlike barman, `REDUNDANCY 0` is refused: it would leave no backup at all.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let syntax = || PolicyError::Syntax(text.to_owned());
        let lower = text.to_ascii_lowercase();
        let words: Vec<&str> = lower.split_ascii_whitespace().collect();
        let number = |w: &str| -> Result<u32, PolicyError> {
            if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            w.parse()
                .map_err(|_| PolicyError::TooLarge(text.to_owned()))
        };
        match words.as_slice() {
            ["redundancy", n] => match number(n)? {
                0 => Err(PolicyError::KeepsNothing),
                n => Ok(Policy::Redundancy(n)),
            },
            ["recovery", "window", "of", n, unit] => {
                let n = number(n)?;
                let unit = match unit.strip_suffix('s').unwrap_or(unit) {
                    "day" => WindowUnit::Days,
                    "week" => WindowUnit::Weeks,
                    "month" => WindowUnit::Months,
                    _ => return Err(syntax()),
                };
                // Far beyond any archive's age, and beyond what barman's timedelta takes.
                if u64::from(n) * unit.days() > 3_650_000 {
                    return Err(PolicyError::TooLarge(text.to_owned()));
                }
                Ok(Policy::RecoveryWindow { n, unit })
            }
            _ => Err(syntax()),
        }
    }

    /// The length of a recovery window.
    pub fn window(&self) -> Option<Duration> {
        match self {
            Policy::Redundancy(_) => None,
            Policy::RecoveryWindow { n, unit } => {
                Some(Duration::from_secs(u64::from(*n) * unit.days() * 86_400))
            }
        }
    }
}

impl WindowUnit {
    fn days(self) -> u64 {
        match self {
            WindowUnit::Days => 1,
            WindowUnit::Weeks => 7,
            WindowUnit::Months => 31,
        }
    }
}

impl std::fmt::Display for Policy {
    /// barman's own spelling (`RetentionPolicy.__str__`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Redundancy(n) => write!(f, "REDUNDANCY {n}"),
            Policy::RecoveryWindow { n, unit } => {
                let unit = match unit {
                    WindowUnit::Days => "DAYS",
                    WindowUnit::Weeks => "WEEKS",
                    WindowUnit::Months => "MONTHS",
                };
                write!(f, "RECOVERY WINDOW OF {n} {unit}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_barman_parses() {
        use Policy::*;
        use WindowUnit::*;
        let ok: &[(&str, Policy)] = &[
            ("REDUNDANCY 3", Redundancy(3)),
            ("redundancy 1", Redundancy(1)),
            ("  Redundancy\t12  ", Redundancy(12)),
            ("REDUNDANCY 007", Redundancy(7)),
            (
                "RECOVERY WINDOW OF 7 DAYS",
                RecoveryWindow { n: 7, unit: Days },
            ),
            (
                "recovery window of 1 day",
                RecoveryWindow { n: 1, unit: Days },
            ),
            (
                "Recovery  Window Of 2 Weeks\n",
                RecoveryWindow { n: 2, unit: Weeks },
            ),
            (
                "RECOVERY WINDOW OF 3 MONTH",
                RecoveryWindow { n: 3, unit: Months },
            ),
            (
                "RECOVERY WINDOW OF 0 DAYS",
                RecoveryWindow { n: 0, unit: Days },
            ),
        ];
        for (text, want) in ok {
            assert_eq!(Policy::parse(text).as_ref(), Ok(want), "{text}");
        }
        let bad = [
            "",
            "REDUNDANCY",
            "REDUNDANCY -1",
            "REDUNDANCY 1.5",
            "REDUNDANCY 3 DAYS",
            "RECOVERY WINDOW 7 DAYS",
            "RECOVERY WINDOW OF 7",
            "RECOVERY WINDOW OF 7 HOURS",
            "RECOVERY WINDOW OF 7 DAYSS",
            "RECOVERY WINDOW OF seven DAYS",
            "MAIN",
            "7d",
        ];
        for text in bad {
            assert!(
                matches!(Policy::parse(text), Err(PolicyError::Syntax(_))),
                "{text:?}"
            );
        }
        assert_eq!(
            Policy::parse("REDUNDANCY 0"),
            Err(PolicyError::KeepsNothing)
        );
        assert!(matches!(
            Policy::parse("REDUNDANCY 99999999999"),
            Err(PolicyError::TooLarge(_))
        ));
        assert!(matches!(
            Policy::parse("RECOVERY WINDOW OF 4000000 MONTHS"),
            Err(PolicyError::TooLarge(_))
        ));
    }

    #[test]
    fn windows_and_spelling() {
        let p = Policy::parse("recovery window of 2 months").unwrap();
        assert_eq!(p.window(), Some(Duration::from_secs(62 * 86_400)));
        assert_eq!(p.to_string(), "RECOVERY WINDOW OF 2 MONTHS");
        let p = Policy::parse("recovery window of 1 week").unwrap();
        assert_eq!(p.window(), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(Policy::Redundancy(2).to_string(), "REDUNDANCY 2");
        assert_eq!(Policy::Redundancy(2).window(), None);
    }
}
