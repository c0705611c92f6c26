//! Small objects beside a backup's data that say what is happening to it, so that
//! every member, and every later run, sees the same thing in the archive:
//!
//! ```text
//! <server>/base/<id>/backup.running    a backup is being taken under this id
//! <server>/base/<id>/backup.deleting   this backup is being deleted
//! ```
//!
//! `backup.running` claims the id (two backups started in the same second on two
//! members would otherwise write one directory) and names the first WAL segment the
//! backup may need, so that retention on another member keeps it. It goes once
//! `backup.info` is written, or when the backup fails. A backup killed outright
//! leaves it behind: it counts as running for [`RUNNING_LEASE`] after the id's
//! time, after which the directory is an orphan that retention removes.
//!
//! `backup.deleting` is written before anything of a backup is deleted: a backup
//! marked so is never listed or restored, whatever is left of it, and the next
//! retention run finishes the deletion. barman-cloud does not know the markers; it
//! lists a directory without `backup.info` as nothing, and `backup.info` is the first
//! object a deletion removes.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The name of the marker of a backup being taken.
pub const RUNNING: &str = "backup.running";
/// The name of the marker of a backup being deleted.
pub const DELETING: &str = "backup.deleting";

/// How long after its id's time a backup without `backup.info` counts as still
/// running. Past it the directory is an orphan (a backup killed before it finished,
/// or whose `backup.info` could not be written) and retention deletes it. Long, on
/// purpose: deleting a backup that is still running would be far worse than keeping
/// an orphan (and the WAL it protects) for a week.
pub const RUNNING_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `backup.running` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// A random token: whoever reads its own token back owns the id.
    pub token: String,
    /// The oldest WAL segment the backup may need (the last checkpoint's redo
    /// segment before it started; the backup's own start is at or after it).
    pub begin_wal: String,
    /// The member that takes it.
    pub host: String,
    /// For an incremental backup, the backup it builds on: retention keeps it while
    /// this one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Running {
    /// The marker's content.
    pub fn render(&self) -> String {
        // Serializing three strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a marker; `None` when it is not one (then the directory's age alone
    /// decides whether it is an orphan).
    pub fn parse(text: &[u8]) -> Option<Running> {
        serde_json::from_slice(text).ok()
    }
}

/// The time a barman backup id (`YYYYMMDDTHHMMSS`, UTC) names; `None` when `id` is
/// not one.
pub fn id_time(id: &str) -> Option<SystemTime> {
    let b = id.as_bytes();
    if b.len() != 15
        || b[8] != b'T'
        || !id[..8]
            .bytes()
            .chain(id[9..].bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| id[r].parse::<u32>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = crate::civil::days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    Some(crate::civil::from_unix_seconds(secs))
}

/// What a directory without `backup.info` is, `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlisted {
    /// A backup still being taken (or killed less than [`RUNNING_LEASE`] ago); its
    /// marker's `begin_wal`, when it has a readable one.
    Running(Option<String>),
    /// Left behind: delete it.
    Orphan,
}

/// Decides what a directory without `backup.info` is, from its id and its
/// `backup.running` marker (if any). A directory whose id is not a time is never an
/// orphan: it is not ours or barman's to delete.
pub fn classify_unlisted(id: &str, running: Option<&Running>, now: SystemTime) -> Unlisted {
    let begin = running.map(|r| r.begin_wal.clone());
    match id_time(id) {
        // A clock behind the one that named the id gives a negative age: running.
        Some(t) if now.duration_since(t).is_ok_and(|age| age > RUNNING_LEASE) => Unlisted::Orphan,
        _ => Unlisted::Running(begin),
    }
}

/// A fresh random token (16 bytes, hex).
pub fn token() -> String {
    crate::fsutil::random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_backup_ids_as_times() {
        let t = id_time("20261206T140102").unwrap();
        assert_eq!(super::super::backup_id(t), "20261206T140102");
        for bad in [
            "",
            "20261206",
            "20261306T140102",
            "2026120xT140102",
            "20261206 140102",
            "20261206T250102",
        ] {
            assert_eq!(id_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn directories_without_backup_info_are_running_until_the_lease_ends() {
        let id = "20261206T140102";
        let t = id_time(id).unwrap();
        let m = Running {
            token: "t".into(),
            begin_wal: "000000010000000000000009".into(),
            host: "n1".into(),
            parent: None,
        };
        let day = Duration::from_secs(86_400);
        let cases = [
            (
                Some(&m),
                t + day,
                Unlisted::Running(Some(m.begin_wal.clone())),
            ),
            (None, t + day, Unlisted::Running(None)),
            (Some(&m), t + RUNNING_LEASE + day, Unlisted::Orphan),
            (None, t + RUNNING_LEASE + day, Unlisted::Orphan),
            // This member's clock is behind the one that named the id.
            (
                Some(&m),
                t - day,
                Unlisted::Running(Some(m.begin_wal.clone())),
            ),
        ];
        for (marker, now, want) in cases {
            assert_eq!(classify_unlisted(id, marker, now), want, "{marker:?}");
        }
        // Not a backup id: never ours to delete.
        assert_eq!(
            classify_unlisted("notes", None, t + RUNNING_LEASE * 10),
            Unlisted::Running(None)
        );
        assert_eq!(Running::parse(m.render().as_bytes()), Some(m));
        assert_eq!(Running::parse(b"not json"), None);
    }
}
