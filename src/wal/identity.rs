//! Which cluster's WAL an archive server name holds, and whether this is still the
//! archive this cluster has been writing to.
//!
//! A marker object, `<server>/pgwarden-system-identifier`, records the system
//! identifier of the cluster archiving there. A note in PGDATA,
//! `pgwarden.archive-checked`, remembers that the marker was found for this URL, server
//! name and archive root, so that later pushes skip the round trip. The check is made
//! again when the daemon starts and whenever the archive's root looks new (on a
//! volume: another directory inode, as when the volume is not mounted). An archive
//! without the marker, where the note says this cluster archived before, is refused:
//! that is an unmounted volume or a wrong bucket, not a fresh start.

use super::compress::split_codec;
use super::names::WalKind;
use super::storage::{Bytes, PutOutcome, Storage};
use super::{header, sha256_hex, ArchiveConfig, WalError};
use std::path::Path;

/// Marker object recording which cluster's WAL a server name holds.
pub const SYSTEM_MARKER: &str = "pgwarden-system-identifier";
/// Local note, in PGDATA, that the marker was checked for this archive.
pub const CHECKED_NOTE: &str = "pgwarden.archive-checked";

/// What the note says: `<url> <server> <system id> <root identity>`.
fn note_line(cfg: &ArchiveConfig, sysid: u64, root: &str) -> String {
    format!("{} {} {sysid} {root}\n", cfg.url, cfg.server)
}

/// The system identifier this PGDATA recorded for this archive, if it archived there.
pub fn archived_before(cfg: &ArchiveConfig, pgdata: &Path) -> Option<u64> {
    let note = std::fs::read_to_string(pgdata.join(CHECKED_NOTE)).ok()?;
    let mut f = note.split_whitespace();
    (f.next()? == cfg.url && f.next()? == cfg.server)
        .then(|| f.next()?.parse().ok())
        .flatten()
}

/// Ensures the archive holds this cluster's WAL (or nothing yet), skipping the round
/// trip when the note in PGDATA says so and `force` is off.
pub async fn ensure<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    pgdata: &Path,
    sysid: u64,
    force: bool,
) -> Result<(), WalError> {
    let note_path = pgdata.join(CHECKED_NOTE);
    let root = storage.root_identity();
    let note = note_line(cfg, sysid, &root);
    if !force && tokio::fs::read_to_string(&note_path).await.ok().as_deref() == Some(note.as_str())
    {
        return Ok(());
    }
    let marker_key = format!("{}/{SYSTEM_MARKER}", cfg.base());
    let ours = sysid.to_string();
    let recorded = match storage.get(&marker_key).await? {
        Some((body, _)) => Some(String::from_utf8_lossy(&body).trim().to_owned()),
        None => {
            if archived_before(cfg, pgdata) == Some(sysid) {
                return Err(WalError::Conflict(format!(
                    "{} in {} holds no {SYSTEM_MARKER}, although this cluster archived there before \
                     ({}); is the archive volume mounted, is it the right bucket? Refusing to archive into it. \
                     If the archive was emptied on purpose, remove {}",
                    cfg.base(),
                    cfg.url,
                    note_path.display(),
                    note_path.display()
                )));
            }
            existing_system(cfg, storage).await?.map(|s| s.to_string())
        }
    };
    match recorded {
        Some(theirs) if theirs != ours => {
            return Err(WalError::Conflict(format!(
                "{} already holds WAL of database system {theirs}, and this cluster is {ours}; refusing to mix them. \
                 Use another PGWARDEN_ARCHIVE_NAME or prefix",
                cfg.base()
            )))
        }
        Some(_) => {}
        None => {
            let created = storage
                .put_new(&marker_key, Bytes::from(ours.clone()), &sha256_hex(ours.as_bytes()))
                .await?;
            if let PutOutcome::Exists(_) = created {
                // Another writer made it first: it must be ours too.
                if let Some((body, _)) = storage.get(&marker_key).await? {
                    let theirs = String::from_utf8_lossy(&body).trim().to_owned();
                    if theirs != ours {
                        return Err(WalError::Conflict(format!(
                            "{} was just claimed by database system {theirs}; this cluster is {ours}",
                            cfg.base()
                        )));
                    }
                }
            }
        }
    }
    // Best effort: without the note, the next push checks again.
    let _ = crate::fsutil::write_atomic(&note_path, note.as_bytes(), None, 0o644);
    Ok(())
}

/// The system identifier in the first segment already archived, if any.
async fn existing_system<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
) -> Result<Option<u64>, WalError> {
    let listed = storage.list(&format!("{}/wals/0", cfg.base()), 20).await?;
    for obj in listed {
        let Some((name, codec)) = obj.key.rsplit('/').next().and_then(split_codec) else {
            continue;
        };
        if name.kind != WalKind::Segment {
            continue;
        }
        if let Some((body, _)) = storage.get(&obj.key).await? {
            // The long header is in the first page: decode no more than that.
            let mut first = Vec::new();
            let _ = codec.decode(&mut &body[..], 1 << 30, &mut |c| {
                first.extend_from_slice(c);
                if first.len() >= 64 {
                    Err(std::io::Error::other("enough"))
                } else {
                    Ok(())
                }
            });
            if let Some(h) = header::parse(&first) {
                return Ok(Some(h.system_id));
            }
        }
    }
    Ok(None)
}
