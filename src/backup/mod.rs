//! Base backups in the archive, in barman-cloud's layout, so that either tool
//! restores the other's:
//!
//! ```text
//! <prefix>/<server>/base/<backup_id>/data.tar[.gz]
//! <prefix>/<server>/base/<backup_id>/backup.info      written last
//! ```
//!
//! [`take`] streams a backup of the local instance, [`list`] reads the catalogue,
//! [`verify`] checks that the WAL the backups need is all there, [`delete`] applies
//! a retention [`policy`] (or deletes one backup) with barman's rules.

pub mod catalogue;
pub mod config;
pub mod cron;
pub mod delete;
pub mod engine;
pub mod info;
pub mod list;
pub mod marker;
pub mod parts;
pub mod policy;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod service;
pub mod take;
pub mod target;
pub mod verify;
pub mod walclean;

pub use info::{BackupInfo, Lsn};

use serde::Serialize;
use std::time::SystemTime;

/// Which backup to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every file whole (barman-cloud restores it).
    Full,
    /// Only the blocks changed since the previous backup; a full one when the
    /// chain's full backup began longer ago than this (the schedule's `full every`).
    Incremental(Option<std::time::Duration>),
}

/// How base backups are compressed (barman-cloud restores gzip or plain tars, not
/// zstd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupCompression {
    /// `data.tar.gz`.
    Gzip,
    /// `data.tar`.
    None,
}

impl BackupCompression {
    /// Parses `PGWARDEN_BACKUP_COMPRESSION`; the error names the setting.
    pub fn from_setting(s: &str) -> Result<BackupCompression, (&'static str, String)> {
        match s {
            "gzip" => Ok(BackupCompression::Gzip),
            "none" => Ok(BackupCompression::None),
            other => Err((
                "PGWARDEN_BACKUP_COMPRESSION",
                format!(
                    "{other:?} is not gzip or none (barman-cloud restores no zstd base backups)"
                ),
            )),
        }
    }

    /// The data object's name.
    pub fn data_name(self) -> &'static str {
        match self {
            BackupCompression::Gzip => "data.tar.gz",
            BackupCompression::None => "data.tar",
        }
    }
}

/// The key prefix of a server's backups.
pub fn base_prefix(server_base: &str) -> String {
    format!("{server_base}/base/")
}

/// barman's backup id for `t`: `YYYYmmddTHHMMSS`, in UTC.
pub fn backup_id(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = crate::civil::utc(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}")
}

/// barman's time format: `2026-11-24 03:50:40.455712+00:00`.
pub fn barman_time(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, us) = crate::civil::utc(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}+00:00")
}

/// A backup under way, and the last one, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct BackupStatus {
    /// The backup under way.
    pub running: Option<Running>,
    /// The last backup that finished, well or not.
    pub last: Option<Finished>,
    /// `PGWARDEN_BACKUP_SCHEDULE`, when set.
    #[serde(default)]
    pub schedule: Option<String>,
    /// When the schedule takes the next backup (UTC, RFC 3339); in the past while
    /// it waits for the instance to be ready as a primary.
    #[serde(default)]
    pub next_scheduled: Option<String>,
    /// Under HA, the member the schedule chose for the due (or last) backup: this
    /// member's name, or another's when this one leaves it to that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_on: Option<String>,
    /// The last run of `PGWARDEN_BACKUP_RETENTION`.
    #[serde(default)]
    pub retention: Option<RetentionRun>,
}

/// One application of the retention policy, after a backup.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RetentionRun {
    /// The policy, in barman's spelling.
    pub policy: String,
    /// When it ran (UTC, RFC 3339).
    pub at: String,
    /// The backups it deleted.
    pub deleted_backups: Vec<String>,
    /// WAL objects it deleted.
    pub deleted_wal: usize,
    /// Why it stopped, if it did.
    pub error: Option<String>,
}

/// A backup under way.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Running {
    /// Its id.
    pub backup_id: String,
    /// Bytes read from PGDATA so far, of its files as listed when the backup began
    /// (0 until they are listed).
    #[serde(flatten)]
    pub progress: crate::progress::Figures,
}

/// A backup that ended.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Finished {
    /// Its id.
    pub backup_id: String,
    /// Unix time it ended.
    pub ended_at: f64,
    /// Seconds it took.
    pub duration_seconds: f64,
    /// Bytes stored.
    pub size_bytes: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_like_barman() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_924_240_455_712);
        assert_eq!(backup_id(t), "20261129T035040");
        assert_eq!(barman_time(t), "2026-11-29 03:50:40.455712+00:00");
        assert_eq!(
            backup_id(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000"
        );
        assert!(
            BackupCompression::from_setting("zstd").unwrap_err().0 == "PGWARDEN_BACKUP_COMPRESSION"
        );
    }
}
