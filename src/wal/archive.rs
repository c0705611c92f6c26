//! Pushing one file to the archive (`archive_command`).

use super::compress::{split_codec, Codec};
use super::names::{WalKind, WalName};
use super::storage::{PutOutcome, Storage};
use super::{header, sha256_hex, with_retries, ArchiveConfig, WalError};
use std::path::Path;

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The file was uploaded.
    Uploaded,
    /// The archive already held the same content (a retry after a crash, or a
    /// pre-upload): nothing to do.
    AlreadyArchived,
}

/// Marker object recording which cluster's WAL a server name holds.
const SYSTEM_MARKER: &str = "pgwarden-system-identifier";
/// Local note, in PGDATA, that the marker was checked for this archive.
const CHECKED_NOTE: &str = "pgwarden.archive-checked";

/// Pushes `path` (as postgres's `%p`, relative to PGDATA, which is the working
/// directory of archive_command). Retries transient failures within the timeout.
pub async fn push<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    path: &Path,
) -> Result<Pushed, WalError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = WalName::parse(file_name)
        .ok_or_else(|| WalError::Invalid(format!("{} is not a WAL file name", path.display())))?;
    let data = tokio::fs::read(path).await?;
    let sha = sha256_hex(&data);
    if name.kind == WalKind::Segment {
        let h = header::verify(&name, &data)
            .map_err(|e| WalError::Invalid(format!("{}: {e}; not archiving it", path.display())))?;
        let pgdata = path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        with_retries(cfg.timeout, "check the archive's system identifier", || {
            check_system(cfg, storage, pgdata, h.system_id)
        })
        .await?;
    }
    let body = cfg.codec.compress(&data)?;
    let key = format!("{}{}", name.key(&cfg.base()), cfg.codec.extension());
    with_retries(cfg.timeout, &format!("archive {}", name.name), || async {
        if let Some(existing) = find_existing(cfg, storage, &name).await? {
            return same_content(storage, &name, &existing, &sha).await;
        }
        match storage.put_new(&key, body.clone(), &sha).await? {
            PutOutcome::Created => Ok(Pushed::Uploaded),
            PutOutcome::Exists(info) => same_content(storage, &name, &info.key, &sha).await,
        }
    })
    .await
}

/// The key of an object already archived under this name, with any codec.
async fn find_existing<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    name: &WalName,
) -> Result<Option<String>, WalError> {
    let base = name.key(&cfg.base());
    let found = storage.list(&base, 8).await?;
    Ok(found.into_iter().map(|o| o.key).find(|k| {
        k.strip_prefix(base.as_str())
            .and_then(Codec::from_extension)
            .is_some()
    }))
}

/// Decides whether the archived object at `key` holds `data`: by its recorded
/// checksum, or (an object another tool wrote) by downloading it.
async fn same_content<S: Storage>(
    storage: &S,
    name: &WalName,
    key: &str,
    sha: &str,
) -> Result<Pushed, WalError> {
    let vanished = || {
        WalError::Storage(super::StorageError::Transient(format!(
            "{key} vanished while being compared"
        )))
    };
    let info = storage.head(key).await?.ok_or_else(vanished)?;
    let archived_sha = match info.sha256 {
        Some(s) => s,
        // Written by another tool (barman-cloud records no checksum): compare contents.
        None => {
            let (body, _) = storage.get(key).await?.ok_or_else(vanished)?;
            let codec = key
                .rsplit('/')
                .next()
                .and_then(split_codec)
                .map(|(_, c)| c)
                .unwrap_or(Codec::None);
            sha256_hex(&codec.decompress(&body, 1 << 30)?)
        }
    };
    if archived_sha == sha {
        Ok(Pushed::AlreadyArchived)
    } else {
        Err(WalError::Conflict(format!(
            "the archive already holds {} with different content (sha256 {archived_sha}, this file {sha}); refusing to overwrite it. \
             Is another cluster archiving under the same PGWARDEN_ARCHIVE_NAME?",
            name.name
        )))
    }
}

/// Refuses an archive whose server name already holds another cluster's WAL. The
/// result is noted in PGDATA so that later pushes skip the round trip.
async fn check_system<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    pgdata: &Path,
    sysid: u64,
) -> Result<(), WalError> {
    let note_path = pgdata.join(CHECKED_NOTE);
    let note = format!("{} {} {sysid}\n", cfg.url, cfg.server);
    if tokio::fs::read_to_string(&note_path).await.ok().as_deref() == Some(note.as_str()) {
        return Ok(());
    }
    let marker_key = format!("{}/{SYSTEM_MARKER}", cfg.base());
    let ours = sysid.to_string();
    let recorded = match storage.get(&marker_key).await? {
        Some((body, _)) => Some(String::from_utf8_lossy(&body).trim().to_owned()),
        None => existing_system(cfg, storage).await?.map(|s| s.to_string()),
    };
    match recorded {
        Some(theirs) if theirs != ours => {
            return Err(WalError::Conflict(format!(
                "{} already holds WAL of database system {theirs}, and this cluster is {ours}; refusing to mix them. \
                 Use another PGWARDEN_ARCHIVE_NAME or prefix",
                cfg.base()
            )))
        }
        _ => {
            storage.put_new(&marker_key, ours.clone().into_bytes(), &sha256_hex(ours.as_bytes())).await?;
        }
    }
    // Best effort: without the note, the next push checks again.
    let _ = tokio::fs::write(&note_path, note).await;
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
            let data = codec.decompress(&body, 1 << 30)?;
            if let Ok(h) = header::verify(&name, &data) {
                return Ok(Some(h.system_id));
            }
        }
    }
    Ok(None)
}
