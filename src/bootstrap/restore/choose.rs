//! Which backup a restore starts from: a pure choice over the catalogue.

use crate::backup::{BackupInfo, Lsn};
use crate::civil::parse_timestamp;
use crate::settings::restore::{RecoveryTarget, SettingNames};

/// Whether `b` ends before `target`, so that recovery from it can reach the target.
/// `None` when the catalogue does not say (an unreadable time or position).
fn ends_before(b: &BackupInfo, target: &RecoveryTarget) -> Option<bool> {
    match target {
        RecoveryTarget::Time(t) => parse_timestamp(&b.end_time).map(|e| e.micros < *t),
        RecoveryTarget::Lsn(l) => Lsn::parse(&b.end_xlog).map(|e| e <= *l),
        _ => Some(true),
    }
}

/// Picks the backup to restore: `id` when given (it must be complete and end before
/// the target), else the latest complete backup that ends before the target. The
/// error says why none fits, naming the setting to change as `names` call it.
pub fn choose<'a>(
    backups: &'a [BackupInfo],
    id: Option<&str>,
    target: &RecoveryTarget,
    names: &SettingNames,
) -> Result<&'a BackupInfo, String> {
    let done = |b: &&BackupInfo| b.status == "DONE";
    if let Some(id) = id {
        let Some(b) = backups.iter().find(|b| b.backup_id == id) else {
            let known: Vec<&str> = backups.iter().map(|b| b.backup_id.as_str()).collect();
            return Err(format!(
                "{}: there is no backup {id} in the archive (it holds {})",
                names.backup_id,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        if !done(&b) {
            return Err(format!(
                "{}: backup {id} is not complete (status {})",
                names.backup_id, b.status
            ));
        }
        if ends_before(b, target) == Some(false) {
            return Err(format!(
                "{}: backup {id} ends after the target (at {} / {}); recovery cannot go back in time: choose an older backup",
                names.target(target),
                b.end_time,
                b.end_xlog
            ));
        }
        return Ok(b);
    }
    let complete: Vec<&BackupInfo> = backups.iter().filter(done).collect();
    if complete.is_empty() {
        return Err(format!(
            "{}: the archive holds no complete backup of this server (check {})",
            names.source, names.server
        ));
    }
    complete
        .iter()
        .rev()
        .find(|b| ends_before(b, target) == Some(true))
        .copied()
        .ok_or_else(|| {
            let oldest = complete[0];
            format!(
                "{}: no backup ends before the target; the oldest, {}, ends at {} / {}",
                names.target(target),
                oldest.backup_id,
                oldest.end_time,
                oldest.end_xlog
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str, status: &str, end_time: &str, end_xlog: &str) -> BackupInfo {
        BackupInfo {
            backup_id: id.into(),
            status: status.into(),
            timeline: 1,
            begin_wal: "000000010000000000000002".into(),
            begin_xlog: "0/2000028".into(),
            end_wal: "000000010000000000000002".into(),
            end_xlog: end_xlog.into(),
            begin_time: String::new(),
            end_time: end_time.into(),
            version: 150018,
            systemid: "1".into(),
            xlog_segment_size: 16 << 20,
            size: None,
            backup_label: None,
            tablespaces: vec![],
            made_by: "pgwarden".into(),
            extra: Default::default(),
        }
    }

    fn time(s: &str) -> RecoveryTarget {
        RecoveryTarget::Time(parse_timestamp(s).unwrap().micros)
    }

    #[test]
    fn choices() {
        let cat = vec![
            backup(
                "20261124T010000",
                "DONE",
                "2026-11-24 01:00:05.000000+00:00",
                "0/3000100",
            ),
            backup(
                "20261124T020000",
                "DONE",
                "2026-11-24 02:00:05.000000+00:00",
                "0/5000100",
            ),
            backup(
                "20261124T030000",
                "FAILED",
                "2026-11-24 03:00:05.000000+00:00",
                "0/7000100",
            ),
            backup(
                "20261124T040000",
                "DONE",
                "2026-11-24 04:00:05.000000+00:00",
                "0/9000100",
            ),
        ];
        // (id, target, chosen or the start of the error)
        let cases: Vec<(Option<&str>, RecoveryTarget, Result<&str, &str>)> = vec![
            (None, RecoveryTarget::End, Ok("20261124T040000")),
            (None, RecoveryTarget::Immediate, Ok("20261124T040000")),
            (None, time("2026-11-24 03:30:00+00"), Ok("20261124T020000")),
            (None, time("2026-11-24 04:30:00+00"), Ok("20261124T040000")),
            (None, time("2026-11-24 04:00:05+00"), Ok("20261124T020000")),
            (
                None,
                time("2026-11-24 00:30:00+00"),
                Err("PGWARDEN_RECOVERY_TARGET_TIME: no backup ends before"),
            ),
            (
                None,
                RecoveryTarget::Lsn(Lsn(0x5000100)),
                Ok("20261124T020000"),
            ),
            (
                None,
                RecoveryTarget::Lsn(Lsn(0x8000000)),
                Ok("20261124T020000"),
            ),
            (
                None,
                RecoveryTarget::Lsn(Lsn(0x100)),
                Err("PGWARDEN_RECOVERY_TARGET_LSN: no backup"),
            ),
            (
                Some("20261124T010000"),
                time("2026-11-24 03:30:00+00"),
                Ok("20261124T010000"),
            ),
            (
                Some("20261124T040000"),
                time("2026-11-24 03:30:00+00"),
                Err("PGWARDEN_RECOVERY_TARGET_TIME: backup 20261124T040000 ends after"),
            ),
            (
                Some("20261124T030000"),
                RecoveryTarget::End,
                Err("PGWARDEN_RESTORE_BACKUP_ID: backup 20261124T030000 is not complete"),
            ),
            (
                Some("20991124T010000"),
                RecoveryTarget::End,
                Err("PGWARDEN_RESTORE_BACKUP_ID: there is no backup"),
            ),
            (
                Some("20261124T020000"),
                RecoveryTarget::Xid(1000),
                Ok("20261124T020000"),
            ),
        ];
        for (id, target, want) in cases {
            let got =
                choose(&cat, id, &target, &SettingNames::BOOTSTRAP).map(|b| b.backup_id.as_str());
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "{id:?} {target:?}"),
                (Err(e), Err(w)) => assert!(e.starts_with(w), "{id:?} {target:?}: {e}"),
                _ => panic!("{id:?} {target:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            choose(&[], None, &RecoveryTarget::End, &SettingNames::BOOTSTRAP)
                .unwrap_err()
                .contains("no complete backup")
        );
        // The drill's names: its flags, and the archive it reads.
        let drill = SettingNames {
            source: "PGWARDEN_ARCHIVE_URL",
            server: "PGWARDEN_ARCHIVE_NAME",
            backup_id: "--backup-id",
            target: Some("--target-time"),
            tablespaces: "PGWARDEN_DRILL_DIR",
        };
        let e = choose(&cat, Some("20991124T010000"), &RecoveryTarget::End, &drill).unwrap_err();
        assert!(e.starts_with("--backup-id: there is no backup"), "{e}");
        let e = choose(&cat, None, &time("2026-11-24 00:30:00+00"), &drill).unwrap_err();
        assert!(e.starts_with("--target-time: no backup ends before"), "{e}");
        let e = choose(&[], None, &RecoveryTarget::End, &drill).unwrap_err();
        assert!(e.contains("(check PGWARDEN_ARCHIVE_NAME)"), "{e}");
    }
}
