//! Which backups a retention policy keeps: barman's `_backup_report` of
//! `RedundancyRetentionPolicy` and `RecoveryWindowRetentionPolicy`, as
//! `barman-cloud-backup-delete` runs them (no minimum redundancy), over the catalogue
//! and a given "now", so that it is a pure function.

use super::catalogue::{Entry, Keep};
use super::policy::Policy;
use std::time::SystemTime;

/// barman's verdict on one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Needed by the policy.
    Valid,
    /// Not needed: deleted.
    Obsolete,
    /// Kept by a `full` keep annotation.
    KeepFull,
    /// Kept by a `standalone` keep annotation.
    KeepStandalone,
    /// Not DONE: the policy does not look at it, and it stays.
    NotDone,
}

impl Verdict {
    /// barman's spelling (`BackupInfo.VALID`, ...), as `barman-cloud-backup-list`
    /// and `barman check` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "VALID",
            Verdict::Obsolete => "OBSOLETE",
            Verdict::KeepFull => "KEEP:FULL",
            Verdict::KeepStandalone => "KEEP:STANDALONE",
            Verdict::NotDone => "-",
        }
    }
}

/// Why a policy cannot be applied to this catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// A recovery window needs the end time of a DONE backup that has none.
    #[error("backup {0} is DONE but its backup.info has no end_time; a recovery window cannot be applied")]
    NoEndTime(String),
}

fn keep_verdict(keep: Option<Keep>) -> Option<Verdict> {
    keep.map(|k| match k {
        Keep::Full => Verdict::KeepFull,
        Keep::Standalone => Verdict::KeepStandalone,
    })
}

/// The verdict on every backup of `backups` (any order), newest first.
///
/// `REDUNDANCY n`: walking DONE backups newest first, the first `n` are VALID, the
/// rest OBSOLETE; a kept backup is reported as kept, and counts among the `n`.
/// `RECOVERY WINDOW`: walking newest first, DONE backups are VALID up to and
/// including the first whose `end_time` is before `now - window` (recovery to the
/// window's start begins from it); older ones are OBSOLETE unless kept.
pub fn classify(
    backups: &[Entry],
    policy: &Policy,
    now: SystemTime,
) -> Result<Vec<(String, Verdict)>, RetentionError> {
    let mut sorted: Vec<&Entry> = backups.iter().collect();
    sorted.sort_by(|a, b| b.backup_id.cmp(&a.backup_id));
    let mut out = Vec::with_capacity(sorted.len());
    match policy {
        Policy::Redundancy(n) => {
            let mut counted = 0u32;
            for b in sorted {
                let v = if !b.done() {
                    Verdict::NotDone
                } else {
                    let v = keep_verdict(b.keep).unwrap_or(if counted < *n {
                        Verdict::Valid
                    } else {
                        Verdict::Obsolete
                    });
                    counted += 1;
                    v
                };
                out.push((b.backup_id.clone(), v));
            }
        }
        Policy::RecoveryWindow { .. } => {
            let window = policy.window().unwrap_or_default();
            let point = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
            let mut found = false;
            for b in sorted {
                let v = if !b.done() {
                    Verdict::NotDone
                } else if found {
                    keep_verdict(b.keep).unwrap_or(Verdict::Obsolete)
                } else {
                    let end = b
                        .end_time
                        .ok_or_else(|| RetentionError::NoEndTime(b.backup_id.clone()))?;
                    if end < point {
                        found = true;
                    }
                    keep_verdict(b.keep).unwrap_or(Verdict::Valid)
                };
                out.push((b.backup_id.clone(), v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::policy::WindowUnit;
    use std::time::Duration;

    const DAY: u64 = 86_400;

    /// A backup that ended `age_days` before [`now`].
    fn b(id: &str, status: &str, age_days: u64, keep: Option<Keep>) -> Entry {
        Entry {
            backup_id: id.into(),
            status: status.into(),
            timeline: Some(1),
            begin_wal: Some("000000010000000000000001".into()),
            end_wal: Some("000000010000000000000001".into()),
            end_time: Some(now() - Duration::from_secs(age_days * DAY)),
            keep,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * DAY)
    }

    fn verdicts(backups: &[Entry], policy: Policy) -> Vec<(String, &'static str)> {
        classify(backups, &policy, now())
            .unwrap()
            .into_iter()
            .map(|(id, v)| (id, v.as_str()))
            .collect()
    }

    fn owned(want: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
        want.iter().map(|(id, v)| (id.to_string(), *v)).collect()
    }

    #[test]
    fn redundancy_keeps_the_newest_done_backups() {
        let cat = vec![
            b("1", "DONE", 40, None),
            b("2", "DONE", 30, None),
            b("3", "FAILED", 20, None),
            b("4", "DONE", 10, None),
            b("5", "DONE", 1, None),
        ];
        let cases: &[(u32, &[(&str, &str)])] = &[
            (
                1,
                &[
                    ("5", "VALID"),
                    ("4", "OBSOLETE"),
                    ("3", "-"),
                    ("2", "OBSOLETE"),
                    ("1", "OBSOLETE"),
                ],
            ),
            (
                2,
                &[
                    ("5", "VALID"),
                    ("4", "VALID"),
                    ("3", "-"),
                    ("2", "OBSOLETE"),
                    ("1", "OBSOLETE"),
                ],
            ),
            (
                4,
                &[
                    ("5", "VALID"),
                    ("4", "VALID"),
                    ("3", "-"),
                    ("2", "VALID"),
                    ("1", "VALID"),
                ],
            ),
            (
                9,
                &[
                    ("5", "VALID"),
                    ("4", "VALID"),
                    ("3", "-"),
                    ("2", "VALID"),
                    ("1", "VALID"),
                ],
            ),
        ];
        for (n, want) in cases {
            assert_eq!(
                verdicts(&cat, Policy::Redundancy(*n)),
                owned(want),
                "REDUNDANCY {n}"
            );
        }
    }

    #[test]
    fn kept_backups_stay_and_count_toward_redundancy() {
        // barman counts a kept backup among the n newest (its counter runs over every
        // DONE backup), so a keep on a recent backup pushes an older one out.
        let cat = vec![
            b("1", "DONE", 40, Some(Keep::Standalone)),
            b("2", "DONE", 30, None),
            b("3", "DONE", 10, Some(Keep::Full)),
            b("4", "DONE", 1, None),
        ];
        assert_eq!(
            verdicts(&cat, Policy::Redundancy(2)),
            owned(&[
                ("4", "VALID"),
                ("3", "KEEP:FULL"),
                ("2", "OBSOLETE"),
                ("1", "KEEP:STANDALONE")
            ])
        );
        assert_eq!(
            verdicts(&cat, Policy::Redundancy(3)),
            owned(&[
                ("4", "VALID"),
                ("3", "KEEP:FULL"),
                ("2", "VALID"),
                ("1", "KEEP:STANDALONE")
            ])
        );
    }

    #[test]
    fn a_recovery_window_keeps_the_backup_it_starts_from() {
        let window = |n| Policy::RecoveryWindow {
            n,
            unit: WindowUnit::Days,
        };
        let cat = vec![
            b("1", "DONE", 40, None),
            b("2", "DONE", 30, Some(Keep::Full)),
            b("3", "DONE", 20, None),
            b("4", "WAITING_FOR_WALS", 15, None),
            b("5", "DONE", 10, None),
            b("6", "DONE", 1, None),
        ];
        let cases: &[(u32, &[(&str, &str)])] = &[
            // Recovery to 7 days ago starts from 5 (ended 10 days ago).
            (
                7,
                &[
                    ("6", "VALID"),
                    ("5", "VALID"),
                    ("4", "-"),
                    ("3", "OBSOLETE"),
                    ("2", "KEEP:FULL"),
                    ("1", "OBSOLETE"),
                ],
            ),
            // A zero window keeps the newest backup only.
            (
                0,
                &[
                    ("6", "VALID"),
                    ("5", "OBSOLETE"),
                    ("4", "-"),
                    ("3", "OBSOLETE"),
                    ("2", "KEEP:FULL"),
                    ("1", "OBSOLETE"),
                ],
            ),
            (
                25,
                &[
                    ("6", "VALID"),
                    ("5", "VALID"),
                    ("4", "-"),
                    ("3", "VALID"),
                    ("2", "KEEP:FULL"),
                    ("1", "OBSOLETE"),
                ],
            ),
            (
                100,
                &[
                    ("6", "VALID"),
                    ("5", "VALID"),
                    ("4", "-"),
                    ("3", "VALID"),
                    ("2", "KEEP:FULL"),
                    ("1", "VALID"),
                ],
            ),
        ];
        for (n, want) in cases {
            assert_eq!(verdicts(&cat, window(*n)), owned(want), "{n} days");
        }
        // A month is 31 days.
        let m = Policy::RecoveryWindow {
            n: 1,
            unit: WindowUnit::Months,
        };
        let cat = vec![
            b("1", "DONE", 32, None),
            b("2", "DONE", 30, None),
            b("3", "DONE", 1, None),
        ];
        assert_eq!(
            verdicts(&cat, m),
            owned(&[("3", "VALID"), ("2", "VALID"), ("1", "VALID")])
        );
        let w = Policy::RecoveryWindow {
            n: 1,
            unit: WindowUnit::Weeks,
        };
        assert_eq!(
            verdicts(&cat, w),
            owned(&[("3", "VALID"), ("2", "VALID"), ("1", "OBSOLETE")])
        );
    }

    #[test]
    fn a_window_needs_the_end_times_it_looks_at() {
        let mut cat = vec![b("1", "DONE", 40, None), b("2", "DONE", 1, None)];
        cat[1].end_time = None;
        let p = Policy::RecoveryWindow {
            n: 7,
            unit: WindowUnit::Days,
        };
        assert_eq!(
            classify(&cat, &p, now()),
            Err(RetentionError::NoEndTime("2".into()))
        );
        // Past the window's start the end time is not needed (nor read by barman).
        cat[1].end_time = Some(now() - Duration::from_secs(10 * DAY));
        cat[0].end_time = None;
        assert!(classify(&cat, &p, now()).is_ok());
        assert!(classify(&cat, &Policy::Redundancy(1), now()).is_ok());
    }
}
