//! The catalogue: every `base/<id>/backup.info` under a server name, pgwarden's and
//! barman-cloud's alike. A backup without its `backup.info` (one interrupted before
//! it was written, or one being taken) is not a backup and is not listed, nor is one
//! marked for deletion (see [`super::marker`]).

use super::info::{BackupInfo, Lsn};
use crate::wal::storage::Storage;
use crate::wal::WalError;

/// The backups of the server at `server_base` (`<prefix>/<server>`), oldest first.
pub async fn list<S: Storage>(storage: &S, server_base: &str) -> Result<Vec<BackupInfo>, WalError> {
    let prefix = super::base_prefix(server_base);
    let objects = storage.list(&prefix, 1_000_000).await?;
    let dirs = super::catalogue::directories(&prefix, &objects);
    // A backup marked for deletion is gone, whatever is left of it.
    let infos: Vec<String> = dirs
        .iter()
        .filter(|(id, keys)| !keys.contains(&format!("{prefix}{id}/{}", super::marker::DELETING)))
        .map(|(id, keys)| (format!("{prefix}{id}/backup.info"), keys))
        .filter(|(info, keys)| keys.contains(info))
        .map(|(info, _)| info)
        .collect();
    let mut out = Vec::new();
    for (key, body) in super::catalogue::fetch_all(storage, infos).await? {
        let (Some(body), Some(id)) = (
            body,
            key.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("/backup.info")),
        ) else {
            continue;
        };
        match BackupInfo::parse(id, &String::from_utf8_lossy(&body)) {
            Ok(info) => out.push(info),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "skipping an unreadable backup.info")
            }
        }
    }
    out.sort_by(|a, b| wal_order(a).cmp(&wal_order(b)));
    Ok(out)
}

/// The order of backups: by where they begin in the WAL (timeline, then position),
/// never by their ids or times alone, which come from the clock of whichever member
/// took them. Ids break ties.
pub fn wal_order(b: &BackupInfo) -> (u32, Lsn, &str) {
    (
        b.timeline,
        Lsn::parse(&b.begin_xlog).unwrap_or(Lsn(0)),
        &b.backup_id,
    )
}

/// How far two members' clocks may disagree before a backup's times are taken to
/// contradict its WAL positions.
pub const CLOCK_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why `new`'s times contradict the WAL positions of the listed `existing` backups,
/// if they do: a backup that ended, in the WAL, before `new` began must have begun
/// before it in time too, and one that began after `new` ended, after it. Only
/// backups on one timeline are compared (their positions are comparable there).
/// Such a backup would be ordered wrongly by barman-cloud and by recovery windows,
/// which go by times: it is refused, and the clocks must be fixed.
pub fn clock_contradiction(existing: &[BackupInfo], new: &BackupInfo) -> Option<String> {
    use crate::civil::parse_barman_time;
    let (nb, ne) = (Lsn::parse(&new.begin_xlog)?, Lsn::parse(&new.end_xlog)?);
    let nt = parse_barman_time(&new.begin_time)?;
    for e in existing {
        if e.status != "DONE" || e.timeline != new.timeline || e.backup_id == new.backup_id {
            continue;
        }
        let (Some(eb), Some(ee), Some(et)) = (
            Lsn::parse(&e.begin_xlog),
            Lsn::parse(&e.end_xlog),
            parse_barman_time(&e.begin_time),
        ) else {
            continue;
        };
        if ee <= nb && et > nt + CLOCK_TOLERANCE {
            return Some(format!(
                "backup {} ended at WAL {ee} before this one began at {nb}, yet it began at {} and this one at {}: this member's clock is behind",
                e.backup_id, e.begin_time, new.begin_time
            ));
        }
        if ne <= eb && et + CLOCK_TOLERANCE < nt {
            return Some(format!(
                "backup {} began at WAL {eb} after this one ended at {ne}, yet it began at {} and this one at {}: this member's clock is ahead",
                e.backup_id, e.begin_time, new.begin_time
            ));
        }
    }
    None
}

/// An incremental backup's chain, newest first, from `chosen` back to the full backup it
/// builds on. `Err` names the backup missing from the archive, or why the chain is not
/// one (another cluster, a loop).
pub fn chain<'a>(
    backups: &'a [BackupInfo],
    chosen: &'a BackupInfo,
    setting: &str,
) -> Result<Vec<&'a BackupInfo>, String> {
    let mut chain = vec![chosen];
    let mut at = chosen;
    while let Some(parent) = at.extra.get(super::engine::incremental::PARENT_KEY) {
        let Some(p) = backups
            .iter()
            .find(|b| &b.backup_id == parent && b.status == "DONE")
        else {
            return Err(format!(
                "backup {} is incremental and builds on backup {parent}, which is not in the archive (deleted?): its chain cannot be restored; restore another backup with {setting}",
                at.backup_id
            ));
        };
        if p.systemid != chosen.systemid || chain.iter().any(|c| c.backup_id == p.backup_id) {
            return Err(format!(
                "backup {} builds on backup {parent}, which is not an earlier backup of the same cluster; restore another backup with {setting}",
                at.backup_id
            ));
        }
        chain.push(p);
        at = p;
    }
    Ok(chain)
}

/// Whether backup `b` holds changed blocks rather than whole files.
pub fn is_incremental(b: &BackupInfo) -> bool {
    b.extra.contains_key(super::engine::incremental::PARENT_KEY)
}

/// A table for people: one backup a line.
pub fn render_table(backups: &[BackupInfo]) -> String {
    let mut out = format!(
        "{:<16} {:<26} {:<26} {:>12} {:<24} {:<24} {:<8} {:<9} {}\n",
        "BACKUP ID", "BEGIN", "END", "SIZE", "BEGIN WAL", "END WAL", "STATUS", "MADE BY", "KIND"
    );
    for b in backups {
        // barman-cloud lists an incremental too, but cannot restore it: say so.
        let kind = match b.extra.get(super::engine::incremental::PARENT_KEY) {
            Some(parent) => format!("incremental on {parent} (pgwarden only)"),
            None => "full".to_owned(),
        };
        out.push_str(&format!(
            "{:<16} {:<26} {:<26} {:>12} {:<24} {:<24} {:<8} {:<9} {kind}\n",
            b.backup_id,
            b.begin_time.get(..26).unwrap_or(&b.begin_time),
            b.end_time.get(..26).unwrap_or(&b.end_time),
            b.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            b.begin_wal,
            b.end_wal,
            b.status,
            b.made_by
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, parent: Option<&str>) -> BackupInfo {
        let mut b = BackupInfo {
            backup_id: id.into(),
            status: "DONE".into(),
            systemid: "1".into(),
            ..Default::default()
        };
        if let Some(p) = parent {
            b.extra.insert(
                super::super::engine::incremental::PARENT_KEY.into(),
                p.into(),
            );
        }
        b
    }

    #[test]
    fn a_chain_runs_back_to_its_full_backup_or_names_what_is_missing() {
        let all = vec![
            info("F", None),
            info("I1", Some("F")),
            info("I2", Some("I1")),
            info("J", Some("GONE")),
        ];
        let ids = |c: Vec<&BackupInfo>| c.iter().map(|b| b.backup_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(chain(&all, &all[2], "S").unwrap()), ["I2", "I1", "F"]);
        assert_eq!(ids(chain(&all, &all[0], "S").unwrap()), ["F"]);
        let err = chain(&all, &all[3], "PGWARDEN_RESTORE_BACKUP_ID").unwrap_err();
        assert!(
            err.contains("builds on backup GONE, which is not in the archive"),
            "{err}"
        );
        assert!(err.contains("PGWARDEN_RESTORE_BACKUP_ID"), "{err}");
        let mut other = all.clone();
        other[0].systemid = "2".into();
        assert!(chain(&other, &other[1], "S")
            .unwrap_err()
            .contains("same cluster"));
        let looped = vec![info("A", Some("B")), info("B", Some("A"))];
        assert!(chain(&looped, &looped[0], "S").is_err());
    }

    fn backup(id: &str, tli: u32, begin: &str, end: &str, time: &str) -> BackupInfo {
        BackupInfo {
            backup_id: id.into(),
            status: "DONE".into(),
            timeline: tli,
            begin_wal: String::new(),
            begin_xlog: begin.into(),
            end_wal: String::new(),
            end_xlog: end.into(),
            begin_time: format!("2026-12-06 {time}.000000+00:00"),
            end_time: format!("2026-12-06 {time}.000000+00:00"),
            version: 180000,
            systemid: "1".into(),
            xlog_segment_size: 16 << 20,
            size: None,
            backup_label: None,
            tablespaces: vec![],
            made_by: "pgwarden".into(),
            extra: Default::default(),
        }
    }

    #[test]
    fn times_that_contradict_wal_positions_are_found() {
        let earlier = backup("A", 1, "0/2000028", "0/2000100", "10:00:00");
        let later = backup("C", 1, "0/9000028", "0/9000100", "12:00:00");
        let cases = [
            // In order: fine.
            (backup("B", 1, "0/5000028", "0/5000100", "11:00:00"), None),
            // Behind A's clock by two hours.
            (
                backup("B", 1, "0/5000028", "0/5000100", "08:00:00"),
                Some("backup A ended at WAL 0/2000100 before this one began at 0/5000028, yet it began at 2026-12-06 10:00:00.000000+00:00 and this one at 2026-12-06 08:00:00.000000+00:00: this member's clock is behind"),
            ),
            // Ahead of C's clock.
            (
                backup("B", 1, "0/5000028", "0/5000100", "13:00:00"),
                Some("backup C began at WAL 0/9000028 after this one ended at 0/5000100, yet it began at 2026-12-06 12:00:00.000000+00:00 and this one at 2026-12-06 13:00:00.000000+00:00: this member's clock is ahead"),
            ),
            // Within the tolerance.
            (backup("B", 1, "0/5000028", "0/5000100", "09:59:30"), None),
            // Overlapping in the WAL (a standby's backup begins at an older
            // restartpoint): nothing can be said.
            (backup("B", 1, "0/2000050", "0/5000100", "08:00:00"), None),
            // Another timeline: positions are not comparable.
            (backup("B", 2, "0/5000028", "0/5000100", "08:00:00"), None),
        ];
        for (new, want) in cases {
            assert_eq!(
                clock_contradiction(&[earlier.clone(), later.clone()], &new).as_deref(),
                want,
                "{} {}",
                new.begin_xlog,
                new.begin_time
            );
        }
        let mut all = [later.clone(), earlier.clone()];
        all.sort_by(|a, b| wal_order(a).cmp(&wal_order(b)));
        assert_eq!(all[0].backup_id, "A");
    }
}
