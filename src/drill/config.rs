//! The restore drill settings: when `pgwarden run` drills, where it restores, and the
//! SQL that must hold on the recovered cluster.

use crate::backup::schedule::Schedule;
use clap::Args;
use std::path::{Path, PathBuf};

/// The settings as flags and environment variables.
#[derive(Args, Debug, Clone, Default)]
pub struct DrillArgs {
    /// How often `run` runs a restore drill: an interval (`1d`, `12h`) or a cron
    /// expression in UTC (`0 4 * * *`), as PGWARDEN_BACKUP_SCHEDULE.
    #[arg(long, env = "PGWARDEN_DRILL_SCHEDULE")]
    pub drill_schedule: Option<String>,
    /// Scratch directory a drill restores into (default: `pgwarden-drill` beside PGDATA).
    #[arg(long, env = "PGWARDEN_DRILL_DIR")]
    pub drill_dir: Option<PathBuf>,
    /// SQL a drill runs in POSTGRES_DB on the recovered cluster; it must return one
    /// row holding `true`.
    #[arg(long, env = "PGWARDEN_DRILL_SQL")]
    pub drill_sql: Option<String>,
}

/// Validated drill settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillConfig {
    /// When drills are due under `pgwarden run`, if they are scheduled.
    pub schedule: Option<Schedule>,
    /// The schedule as written, for `/status`.
    pub schedule_text: Option<String>,
    /// The scratch directory.
    pub dir: PathBuf,
    /// The SQL check.
    pub sql: Option<String>,
}

/// The default scratch directory: `pgwarden-drill` beside PGDATA, on the same volume
/// when PGDATA is a directory of it (the official image's
/// `/var/lib/postgresql/data/pgdata` layout).
pub fn default_dir(pgdata: &Path) -> PathBuf {
    pgdata
        .parent()
        .unwrap_or(Path::new("/"))
        .join("pgwarden-drill")
}

/// The unix socket directory of a drill's server, in the scratch directory.
pub fn run_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

/// The cluster a drill restores, in the scratch directory.
pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Where a drill restores the backup's tablespaces (`<oid>` each), in the scratch
/// directory.
pub fn tablespaces_dir(dir: &Path) -> PathBuf {
    dir.join("tablespaces")
}

impl DrillConfig {
    /// Validates the arguments. `source` says whether an archive to drill from is set
    /// (`PGWARDEN_ARCHIVE_URL`, or `PGWARDEN_RESTORE_URL`), which a schedule needs.
    /// Errors name the setting.
    pub fn from_args(
        a: &DrillArgs,
        pgdata: &Path,
        port: u16,
        source: bool,
    ) -> Result<DrillConfig, (&'static str, String)> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let schedule_text = set(&a.drill_schedule).map(|s| s.trim().to_owned());
        let schedule = schedule_text
            .as_deref()
            .map(Schedule::parse)
            .transpose()
            .map_err(|m| ("PGWARDEN_DRILL_SCHEDULE", m))?;
        if schedule.is_some() && !source {
            return Err((
                "PGWARDEN_DRILL_SCHEDULE",
                "a drill restores a backup from the archive, and none is set: set PGWARDEN_ARCHIVE_URL"
                    .into(),
            ));
        }
        let dir = match &a.drill_dir {
            Some(d) if !d.as_os_str().is_empty() => d.clone(),
            _ => default_dir(pgdata),
        };
        let text = dir.to_string_lossy();
        if text.contains(['\n', '\r', '\0']) {
            return Err(("PGWARDEN_DRILL_DIR", "must be one line".into()));
        }
        if !dir.is_absolute() {
            return Err((
                "PGWARDEN_DRILL_DIR",
                format!("{} is not an absolute path", dir.display()),
            ));
        }
        // Inside PGDATA it would travel with every base backup; around PGDATA a
        // drill's clean-up would reach the live cluster.
        if dir.starts_with(pgdata) || pgdata.starts_with(&dir) {
            return Err((
                "PGWARDEN_DRILL_DIR",
                format!(
                    "{} must be beside PGDATA ({}), neither in it nor around it",
                    dir.display(),
                    pgdata.display()
                ),
            ));
        }
        let socket = run_dir(&dir).join(format!(".s.PGSQL.{port}"));
        if socket.as_os_str().len() > 107 {
            return Err((
                "PGWARDEN_DRILL_DIR",
                format!(
                    "{} is too long: the drill's server puts its unix socket at {}, longer than 107 bytes",
                    dir.display(),
                    socket.display()
                ),
            ));
        }
        let sql = set(&a.drill_sql);
        Ok(DrillConfig {
            schedule,
            schedule_text,
            dir,
            sql,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schedule: Option<&str>, dir: Option<&str>, sql: Option<&str>) -> DrillArgs {
        DrillArgs {
            drill_schedule: schedule.map(Into::into),
            drill_dir: dir.map(Into::into),
            drill_sql: sql.map(Into::into),
        }
    }

    /// Schedule, directory, whether an archive is set, and the setting an error names.
    type Case<'a> = (Option<&'a str>, Option<&'a str>, bool, Option<&'a str>);

    #[test]
    fn errors_name_the_setting() {
        let long = format!("/{}", "d".repeat(100));
        let cases: &[Case] = &[
            (None, None, false, None),
            (Some(" "), None, false, None),
            (Some("1d"), None, true, None),
            (Some("0 4 * * *"), Some("/scratch/drill"), true, None),
            (Some("daily"), None, true, Some("PGWARDEN_DRILL_SCHEDULE")),
            (Some("1d"), None, false, Some("PGWARDEN_DRILL_SCHEDULE")),
            (None, Some("scratch"), true, Some("PGWARDEN_DRILL_DIR")),
            (
                None,
                Some("/var/lib/postgresql/data/drill"),
                true,
                Some("PGWARDEN_DRILL_DIR"),
            ),
            (None, Some("/var/lib"), true, Some("PGWARDEN_DRILL_DIR")),
            (None, Some(&long), true, Some("PGWARDEN_DRILL_DIR")),
        ];
        let pgdata = Path::new("/var/lib/postgresql/data");
        for (schedule, dir, source, want) in cases {
            let got = DrillConfig::from_args(&args(*schedule, *dir, None), pgdata, 5432, *source);
            assert_eq!(
                got.as_ref().err().map(|e| e.0),
                *want,
                "{schedule:?} {dir:?} {got:?}"
            );
        }
        let c = DrillConfig::from_args(&args(Some(" 1d "), None, Some(" ")), pgdata, 5432, true)
            .unwrap();
        assert_eq!(c.schedule_text.as_deref(), Some("1d"));
        assert_eq!(c.dir, Path::new("/var/lib/postgresql/pgwarden-drill"));
        assert_eq!(c.sql, None);
        assert_eq!(
            run_dir(&c.dir),
            Path::new("/var/lib/postgresql/pgwarden-drill/run")
        );
    }
}
