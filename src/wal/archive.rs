//! Pushing one file to the archive (`archive_command`), for the daemon and the
//! one-shot command alike.
//!
//! The file is read once, in chunks, on a blocking thread: each chunk is hashed,
//! checked (every page header of a segment), and compressed; only the compressed
//! object is held in memory. Meanwhile one LIST asks whether this name is archived
//! under any codec; then one conditional PUT, and a HEAD only when the PUT finds the
//! object already there.
//!
//! The object goes up in one PUT once compressed, not streamed while compressing: S3
//! wants the length (and pgwarden's SHA-256 metadata) in the request's headers, both
//! known only at the end, and a multipart upload (three requests, 5 MiB parts) costs
//! more round trips than a segment's compression takes (docs/wal-archiving.md,
//! Performance).

use super::compress::{split_codec, Codec};
use super::names::{WalKind, WalName};
use super::storage::{Bytes, PutOutcome, Storage};
use super::{header, identity, ArchiveConfig, WalError};
use sha2::Digest;
use std::fs::File;
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

impl Pushed {
    /// The word the daemon answers with and the logs show.
    pub fn as_str(self) -> &'static str {
        match self {
            Pushed::Uploaded => "Uploaded",
            Pushed::AlreadyArchived => "AlreadyArchived",
        }
    }
}

/// A local file, read and compressed, ready to upload.
struct Prepared {
    body: Bytes,
    sha: String,
    system_id: Option<u64>,
}

/// A file being read, checked, hashed and compressed on a blocking thread, started
/// as early as possible: the CPU work then overlaps whatever the push waits for
/// meanwhile (the storage client's set-up, the LIST that looks for the name).
pub struct Preparing(tokio::task::JoinHandle<Result<Prepared, WalError>>);

impl Preparing {
    /// Starts reading and compressing `file` (named `name`) with `codec`.
    pub fn start(codec: Codec, name: &WalName, file: File) -> Preparing {
        let name = name.clone();
        Preparing(tokio::task::spawn_blocking(move || {
            prepare(codec, &name, file)
        }))
    }

    async fn finish(self) -> Result<Prepared, WalError> {
        self.0
            .await
            .map_err(|e| WalError::Io(std::io::Error::other(e)))?
    }
}

/// Reads, checks, hashes and compresses `file` (named `name`), in one pass.
fn prepare(codec: Codec, name: &WalName, file: File) -> Result<Prepared, WalError> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut hasher = sha2::Sha256::new();
    let mut pages = (name.kind == WalKind::Segment).then(|| header::PageCheck::new(name));
    let mut reader = std::io::BufReader::with_capacity(super::compress::CHUNK, file);
    let body = codec
        .encode(&mut reader, len, &mut |chunk| {
            hasher.update(chunk);
            if let Some(p) = pages.as_mut() {
                p.feed(chunk)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            }
            Ok(())
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                WalError::Invalid(format!("{}: {e}; not archiving it", name.name))
            }
            _ => WalError::Io(e),
        })?;
    let system_id = match pages {
        Some(p) => Some(
            p.finish()
                .map_err(|e| WalError::Invalid(format!("{}: {e}; not archiving it", name.name)))?
                .system_id,
        ),
        None => None,
    };
    Ok(Prepared {
        body: Bytes::from(body),
        sha: super::hex(&hasher.finalize()),
        system_id,
    })
}

/// Pushes `file`, postgres's `name`, through `storage` (a [`super::storage::Retrying`]
/// wrapper gives the whole push one deadline). `pgdata` holds the note that the
/// archive's identity was checked.
pub async fn push<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    name: &WalName,
    file: File,
    pgdata: &Path,
) -> Result<Pushed, WalError> {
    let preparing = Preparing::start(cfg.codec, name, file);
    push_prepared(cfg, storage, name, preparing, pgdata).await
}

/// [`push`] of a file whose compression was started already (before the storage
/// client was built, by the one-shot command).
pub async fn push_prepared<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    name: &WalName,
    preparing: Preparing,
    pgdata: &Path,
) -> Result<Pushed, WalError> {
    let base = name.key(&cfg.base());
    // Under any codec: a name is archived once, whatever the setting was then. The
    // LIST goes out while the file is still being compressed; nothing is written
    // before both are done and the identity is checked, so the order costs nothing.
    let (prepared, listed) = tokio::join!(preparing.finish(), storage.list(&base, 8));
    let prepared = prepared?;
    if let Some(sysid) = prepared.system_id {
        identity::ensure(cfg, storage, pgdata, sysid, false).await?;
    }
    let existing = listed?.into_iter().map(|o| o.key).find(|k| {
        k.strip_prefix(base.as_str())
            .and_then(Codec::from_extension)
            .is_some()
    });
    if let Some(key) = existing {
        return same_content(storage, name, &key, &prepared.sha).await;
    }
    let key = format!("{base}{}", cfg.codec.extension());
    match storage.put_new(&key, prepared.body, &prepared.sha).await? {
        PutOutcome::Created => Ok(Pushed::Uploaded),
        PutOutcome::Exists(info) => match info.sha256 {
            Some(theirs) => compare(name, &theirs, &prepared.sha),
            None => same_content(storage, name, &key, &prepared.sha).await,
        },
    }
}

/// Decides whether the archived object at `key` holds the content hashed as `sha`:
/// by its recorded checksum, or (an object another tool wrote, or whose record is
/// missing) by downloading and hashing it.
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
        None => {
            let (body, _) = storage.get(key).await?.ok_or_else(vanished)?;
            let codec = key
                .rsplit('/')
                .next()
                .and_then(split_codec)
                .map(|(_, c)| c)
                .unwrap_or(Codec::None);
            tokio::task::spawn_blocking(move || {
                let mut hasher = sha2::Sha256::new();
                codec.decode(&mut &body[..], 1 << 30, &mut |c| {
                    hasher.update(c);
                    Ok(())
                })?;
                Ok::<_, std::io::Error>(super::hex(&hasher.finalize()))
            })
            .await
            .map_err(|e| WalError::Io(std::io::Error::other(e)))?
            .map_err(|e| {
                WalError::Invalid(format!(
                    "{key} does not decompress ({e}); the object is corrupt"
                ))
            })?
        }
    };
    compare(name, &archived_sha, sha)
}

fn compare(name: &WalName, archived: &str, ours: &str) -> Result<Pushed, WalError> {
    if archived == ours {
        Ok(Pushed::AlreadyArchived)
    } else {
        Err(WalError::Conflict(format!(
            "the archive already holds {} with different content (sha256 {archived}, this file {ours}); refusing to overwrite it. \
             Is another cluster archiving under the same PGWARDEN_ARCHIVE_NAME?",
            name.name
        )))
    }
}
