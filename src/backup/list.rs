//! The catalogue: every `base/<id>/backup.info` under a server name, pgwarden's and
//! barman-cloud's alike. A backup without its `backup.info` (one interrupted before
//! it was written) is not a backup and is not listed.

use super::info::BackupInfo;
use crate::wal::storage::Storage;
use crate::wal::WalError;

/// The backups of the server at `server_base` (`<prefix>/<server>`), oldest first.
pub async fn list<S: Storage>(storage: &S, server_base: &str) -> Result<Vec<BackupInfo>, WalError> {
    let prefix = super::base_prefix(server_base);
    let mut out = Vec::new();
    for obj in storage.list(&prefix, 1_000_000).await? {
        let Some(id) = obj
            .key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix("/backup.info"))
            .filter(|id| !id.contains('/'))
        else {
            continue;
        };
        let Some((body, _)) = storage.get(&obj.key).await? else {
            continue;
        };
        match BackupInfo::parse(id, &String::from_utf8_lossy(&body)) {
            Ok(info) => out.push(info),
            Err(e) => {
                tracing::warn!(key = %obj.key, error = %e, "skipping an unreadable backup.info")
            }
        }
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}

/// A table for people: one backup a line.
pub fn render_table(backups: &[BackupInfo]) -> String {
    let mut out = format!(
        "{:<16} {:<26} {:<26} {:>12} {:<24} {:<24} {:<8} {}\n",
        "BACKUP ID", "BEGIN", "END", "SIZE", "BEGIN WAL", "END WAL", "STATUS", "MADE BY"
    );
    for b in backups {
        out.push_str(&format!(
            "{:<16} {:<26} {:<26} {:>12} {:<24} {:<24} {:<8} {}\n",
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
