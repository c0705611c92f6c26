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
    /// Obsolete by the policy, but a kept incremental backup builds on it.
    Chain,
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
            Verdict::Chain => "VALID (an incremental builds on it)",
        }
    }
}

/// Why a policy cannot be applied to this catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// A recovery window needs the end time of a DONE backup that has none.
    #[error("backup {0} is DONE but its backup.info has no end_time; a recovery window cannot be applied")]
    NoEndTime(String),
    /// A backup ended after this member's `now`: the clocks disagree, and a window
    /// measured on this clock would keep or drop the wrong backups.
    #[error("backup {0} ended {1} s after this member's clock says it is now: the members' clocks disagree (check NTP); a recovery window is not applied")]
    ClockBehind(String, u64),
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
    // Newest first by where they begin in the WAL, not by id (a member's clock).
    let order = |e: &Entry| {
        (
            e.timeline.unwrap_or(0),
            e.begin_wal
                .as_deref()
                .and_then(|w| w.get(8..))
                .unwrap_or("")
                .to_owned(),
            e.backup_id.clone(),
        )
    };
    sorted.sort_by_key(|e| std::cmp::Reverse(order(e)));
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
            for b in sorted.iter().filter(|b| b.done()) {
                if let Some(ahead) = b
                    .end_time
                    .and_then(|end| end.duration_since(now).ok())
                    .filter(|ahead| *ahead > super::list::CLOCK_TOLERANCE)
                {
                    return Err(RetentionError::ClockBehind(
                        b.backup_id.clone(),
                        ahead.as_secs(),
                    ));
                }
            }
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
            parent: None,
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
    fn backups_are_ordered_by_wal_not_by_the_clock_that_named_them() {
        // "9" was named by a member whose clock runs ahead, but began first in the WAL.
        let at = |id: &str, seg: u32| Entry {
            begin_wal: Some(format!("0000000100000000{seg:08X}")),
            ..b(id, "DONE", 1, None)
        };
        let cat = vec![at("9", 2), at("5", 4), at("7", 6)];
        assert_eq!(
            verdicts(&cat, Policy::Redundancy(2)),
            owned(&[("7", "VALID"), ("5", "VALID"), ("9", "OBSOLETE")])
        );
        // A later timeline is newer whatever the positions.
        let mut later = at("1", 1);
        later.timeline = Some(2);
        let cat = vec![at("9", 2), later];
        assert_eq!(
            verdicts(&cat, Policy::Redundancy(1)),
            owned(&[("1", "VALID"), ("9", "OBSOLETE")])
        );
    }

    #[test]
    fn a_window_is_not_measured_on_a_clock_behind_a_backups_end() {
        let window = Policy::RecoveryWindow {
            n: 1,
            unit: WindowUnit::Days,
        };
        let mut ahead = b("2", "DONE", 0, None);
        ahead.end_time = Some(now() + Duration::from_secs(600));
        let err = classify(&[b("1", "DONE", 3, None), ahead.clone()], &window, now()).unwrap_err();
        assert_eq!(err, RetentionError::ClockBehind("2".into(), 600));
        assert!(err.to_string().contains("clocks disagree"), "{err}");
        // Within the tolerance: applied.
        ahead.end_time = Some(now() + Duration::from_secs(30));
        assert!(classify(&[b("1", "DONE", 3, None), ahead], &window, now()).is_ok());
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
