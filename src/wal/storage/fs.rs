//! `file:///path`: a mounted volume (NFS, a PVC). Objects are files; each is written to
//! a temp file, fsynced, and linked into place, which fails if the name exists, so an
//! object is never overwritten and never seen half-written. The SHA-256 goes into a
//! `<object>.sha256` file written before the object itself.

use super::{ObjectInfo, PutOutcome, Storage, StorageError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A directory tree used as the object store.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
}

const META_SUFFIX: &str = ".sha256";

fn classify(what: &str, path: &Path, e: io::Error) -> StorageError {
    let msg = format!("{what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::StorageFull => StorageError::Fatal(msg),
        _ => StorageError::Transient(msg),
    }
}

impl FsStorage {
    /// Uses `root` as the store; it must exist (a mounted volume).
    pub fn new(root: PathBuf) -> Result<FsStorage, StorageError> {
        if !root.is_dir() {
            return Err(StorageError::Fatal(format!(
                "{} is not a directory (is the volume mounted?)",
                root.display()
            )));
        }
        Ok(FsStorage { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn info(&self, key: &str, size: u64) -> ObjectInfo {
        let sha256 = std::fs::read_to_string(self.path(&format!("{key}{META_SUFFIX}")))
            .ok()
            .map(|s| s.trim().to_owned());
        ObjectInfo {
            key: key.to_owned(),
            size,
            sha256,
        }
    }

    /// Every object whose key starts with `prefix`, as S3 lists them: the directory that
    /// holds the prefix's last component is walked, recursively.
    fn list_blocking(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        let dir_key = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut out = Vec::new();
        let mut stack = vec![dir_key.to_owned()];
        while let Some(key_dir) = stack.pop() {
            let dir = self.path(&key_dir);
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(classify("list", &dir, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| classify("list", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(META_SUFFIX) || name.starts_with(".pgwarden-") {
                    continue;
                }
                let key = if key_dir.is_empty() {
                    name
                } else {
                    format!("{key_dir}/{name}")
                };
                let meta = entry
                    .metadata()
                    .map_err(|e| classify("stat", &entry.path(), e))?;
                if meta.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push(key);
                    }
                } else if key.starts_with(prefix) {
                    out.push(self.info(&key, meta.len()));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }

    fn put_blocking(
        &self,
        key: &str,
        body: &[u8],
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        let path = self.path(key);
        if let Ok(meta) = std::fs::metadata(&path) {
            return Ok(PutOutcome::Exists(self.info(key, meta.len())));
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| classify("create", &dir, e))?;
        write_synced(
            &dir,
            &self.path(&format!("{key}{META_SUFFIX}")),
            sha256.as_bytes(),
            true,
        )?;
        write_synced(&dir, &path, body, false)?;
        Ok(PutOutcome::Created)
    }
}

/// Writes `data` to a temp file in `dir`, fsyncs it, then puts it at `dest`: by
/// rename when `replace`, else by link, which refuses an existing name. Then fsyncs
/// the directory.
fn write_synced(dir: &Path, dest: &Path, data: &[u8], replace: bool) -> Result<(), StorageError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgwarden-")
        .tempfile_in(dir)
        .map_err(|e| classify("create a temp file in", dir, e))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| classify("write", tmp.path(), e))?;
    if replace {
        tmp.persist(dest)
            .map_err(|e| classify("rename into", dest, e.error))?;
    } else {
        match std::fs::hard_link(tmp.path(), dest) {
            Ok(()) => {}
            // A concurrent writer won; the caller compares contents.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(classify("link", dest, e)),
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| classify("fsync", dir, e))
}

impl Storage for FsStorage {
    async fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        let (this, key, sha) = (self.clone(), key.to_owned(), sha256.to_owned());
        tokio::task::spawn_blocking(move || this.put_blocking(&key, &body, &sha))
            .await
            .map_err(|e| StorageError::Transient(e.to_string()))?
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(self.info(key, meta.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(classify("stat", &path, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ObjectInfo)>, StorageError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(data) => {
                let info = self.info(key, data.len() as u64);
                Ok(Some((data, info)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(classify("read", &path, e)),
        }
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix, limit))
            .await
            .map_err(|e| StorageError::Transient(e.to_string()))?
    }
}
