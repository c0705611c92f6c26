//! Fetching one file from the archive (`restore_command`).

use super::compress::Codec;
use super::names::{WalKind, WalName};
use super::storage::Storage;
use super::{header, sha256_hex, with_retries, ArchiveConfig, WalError};
use std::io::Write;
use std::path::Path;

/// The largest file a restore will produce (the largest WAL segment size).
const MAX_FILE: usize = 1 << 30;

/// Fetches `name` into `dest`, verified, through a temp file renamed into place: `dest`
/// never holds a partial or unverified file. `NotFound` when the archive lacks it.
pub async fn fetch<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    name: &str,
    dest: &Path,
) -> Result<(), WalError> {
    let wal = WalName::parse(name)
        .ok_or_else(|| WalError::Invalid(format!("{name} is not a WAL file name")))?;
    let data = with_retries(cfg.timeout, &format!("restore {name}"), || {
        download(cfg, storage, &wal)
    })
    .await?;
    write_into_place(dest, &data, None)?;
    Ok(())
}

/// Downloads, decompresses and verifies one file.
pub async fn download<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    wal: &WalName,
) -> Result<Vec<u8>, WalError> {
    let base = wal.key(&cfg.base());
    let candidates = storage.list(&base, 8).await?;
    // Prefer pgwarden's own codec order; any of them restores.
    let found = [Codec::Zstd, Codec::Gzip, Codec::None]
        .into_iter()
        .find_map(|c| {
            let key = format!("{base}{}", c.extension());
            candidates.iter().any(|o| o.key == key).then_some((key, c))
        });
    let Some((key, codec)) = found else {
        return Err(WalError::NotFound(wal.name.clone()));
    };
    let Some((body, info)) = storage.get(&key).await? else {
        return Err(WalError::NotFound(wal.name.clone()));
    };
    let data = codec.decompress(&body, MAX_FILE).map_err(|e| {
        WalError::Invalid(format!(
            "{key} does not decompress ({e}); the object is corrupt"
        ))
    })?;
    if let Some(expected) = &info.sha256 {
        let got = sha256_hex(&data);
        if &got != expected {
            return Err(WalError::Invalid(format!("{key} fails its checksum (sha256 {got}, recorded {expected}); the object is corrupt")));
        }
    }
    if wal.kind == WalKind::Segment {
        header::verify(wal, &data).map_err(|e| {
            WalError::Invalid(format!("{key}: {e}; the object is not that WAL segment"))
        })?;
    }
    Ok(data)
}

/// Writes `data` to a temp file beside `dest`, fsyncs it, gives it to `owner` (the
/// daemon runs as root and postgres must read the file), and renames it onto `dest`.
pub fn write_into_place(
    dest: &Path,
    data: &[u8],
    owner: Option<crate::fsutil::Owner>,
) -> std::io::Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgwarden-restore-")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    if let Some(o) = owner {
        nix::unistd::fchown(tmp.as_file(), Some(o.uid.into()), Some(o.gid.into()))
            .map_err(std::io::Error::from)?;
    }
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}
