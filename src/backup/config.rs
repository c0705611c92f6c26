//! The settings of scheduled backups and retention under `pgwarden run`.

use super::policy::Policy;
use super::schedule::Schedule;
use super::target::Target;
use clap::Args;

/// The settings as flags and environment variables.
#[derive(Args, Debug, Clone, Default)]
pub struct BackupArgs {
    /// How often `run` takes a base backup: an interval (`6h`, `30m`, `1d`) or a cron
    /// expression in UTC (`0 3 * * *`, `@daily`); followed by `; full every 7d`, the
    /// scheduled backups are incremental, with a full one every 7 days.
    #[arg(long, env = "PGWARDEN_BACKUP_SCHEDULE")]
    pub backup_schedule: Option<String>,
    /// barman retention policy applied after each backup `run` takes:
    /// `REDUNDANCY n` or `RECOVERY WINDOW OF n {DAYS|WEEKS|MONTHS}`.
    #[arg(long, env = "PGWARDEN_BACKUP_RETENTION")]
    pub backup_retention: Option<String>,
    /// Workers copying files in a base backup (default: the CPU limit).
    #[arg(long, env = "PGWARDEN_BACKUP_JOBS")]
    pub backup_jobs: Option<String>,
    /// Under HA, where scheduled backups run: `prefer-standby` (a streaming replica,
    /// else the primary) or `primary` (CloudNativePG's names). Ignored without HA.
    #[arg(long, env = "PGWARDEN_BACKUP_TARGET")]
    pub backup_target: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupConfig {
    /// When backups are due, if they are scheduled.
    pub schedule: Option<Schedule>,
    /// The schedule as written, for `/status`.
    pub schedule_text: Option<String>,
    /// With `; full every <interval>`: scheduled backups are incremental, and full
    /// once the chain's full backup is older than this.
    pub full_every: Option<std::time::Duration>,
    /// What to delete after each backup.
    pub retention: Option<Policy>,
    /// Workers copying files in a base backup.
    pub jobs: usize,
    /// Under HA, where scheduled backups run.
    pub target: Target,
}

impl BackupConfig {
    /// Validates the arguments; `archive` says whether `PGWARDEN_ARCHIVE_URL` is set,
    /// which both need. Errors name the setting.
    pub fn from_args(
        a: &BackupArgs,
        archive: bool,
    ) -> Result<BackupConfig, (&'static str, String)> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let schedule_text = set(&a.backup_schedule);
        let (schedule, full_every) = match schedule_text
            .as_deref()
            .map(super::schedule::parse_with_fulls)
            .transpose()
            .map_err(|m| ("PGWARDEN_BACKUP_SCHEDULE", m))?
        {
            Some((s, f)) => (Some(s), f),
            None => (None, None),
        };
        let retention = set(&a.backup_retention)
            .as_deref()
            .map(Policy::parse)
            .transpose()
            .map_err(|e| ("PGWARDEN_BACKUP_RETENTION", e.to_string()))?;
        let jobs = match set(&a.backup_jobs) {
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            Some(j) => match j.trim().parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => {
                    return Err((
                        "PGWARDEN_BACKUP_JOBS",
                        format!("{j:?} is not a number of workers from 1 to 64"),
                    ))
                }
            },
        };
        let target = match set(&a.backup_target) {
            None => Target::default(),
            Some(t) => Target::parse(&t).map_err(|m| ("PGWARDEN_BACKUP_TARGET", m))?,
        };
        if !archive {
            if schedule.is_some() {
                return Err((
                    "PGWARDEN_BACKUP_SCHEDULE",
                    "backups go to the archive, and none is set: set PGWARDEN_ARCHIVE_URL".into(),
                ));
            }
            if retention.is_some() {
                return Err((
                    "PGWARDEN_BACKUP_RETENTION",
                    "applies to the archive's backups, and no archive is set: set PGWARDEN_ARCHIVE_URL".into(),
                ));
            }
        }
        Ok(BackupConfig {
            schedule,
            schedule_text: schedule_text.map(|s| s.trim().to_owned()),
            full_every,
            retention,
            jobs,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schedule: Option<&str>, retention: Option<&str>) -> BackupArgs {
        BackupArgs {
            backup_schedule: schedule.map(Into::into),
            backup_retention: retention.map(Into::into),
            backup_jobs: None,
            backup_target: None,
        }
    }

    /// Schedule, retention, whether an archive is set, and the setting an error names.
    type Case<'a> = (Option<&'a str>, Option<&'a str>, bool, Option<&'a str>);

    #[test]
    fn errors_name_the_setting() {
        let cases: &[Case] = &[
            (None, None, false, None),
            (Some(""), Some(" "), false, None),
            (Some("6h"), Some("REDUNDANCY 2"), true, None),
            (Some("0 3 * * *"), None, true, None),
            (
                Some("every day"),
                None,
                true,
                Some("PGWARDEN_BACKUP_SCHEDULE"),
            ),
            (
                None,
                Some("KEEP 3"),
                true,
                Some("PGWARDEN_BACKUP_RETENTION"),
            ),
            (
                None,
                Some("REDUNDANCY 0"),
                true,
                Some("PGWARDEN_BACKUP_RETENTION"),
            ),
            (Some("6h"), None, false, Some("PGWARDEN_BACKUP_SCHEDULE")),
            (
                None,
                Some("REDUNDANCY 1"),
                false,
                Some("PGWARDEN_BACKUP_RETENTION"),
            ),
        ];
        for (schedule, retention, archive, want) in cases {
            let got = BackupConfig::from_args(&args(*schedule, *retention), *archive);
            assert_eq!(
                got.as_ref().err().map(|e| e.0),
                *want,
                "{schedule:?} {retention:?} {got:?}"
            );
        }
        let c = BackupConfig::from_args(&args(Some(" 6h "), Some("redundancy 2")), true).unwrap();
        assert_eq!(c.schedule_text.as_deref(), Some("6h"));
        assert_eq!(c.retention, Some(Policy::Redundancy(2)));
        assert_eq!(c.target, Target::PreferStandby);
        let with_target = |t: &str| {
            BackupConfig::from_args(
                &BackupArgs {
                    backup_target: Some(t.into()),
                    ..args(Some("6h"), None)
                },
                true,
            )
        };
        assert_eq!(with_target("primary").unwrap().target, Target::Primary);
        assert_eq!(
            with_target(" prefer-standby ").unwrap().target,
            Target::PreferStandby
        );
        assert_eq!(
            with_target("standby").unwrap_err().0,
            "PGWARDEN_BACKUP_TARGET"
        );
    }
}
