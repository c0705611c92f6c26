//! `file:///path`: a mounted volume (NFS, a PVC). Objects are files; each is written to
//! a temp file, fsynced, and published with link(2), which fails if the name exists:
//! of several writers of one name exactly one wins, atomically, and an object is
//! never overwritten and never seen half-written. Only the winner then records the
//! SHA-256 in `<object>.sha256` (temp file and rename), so the two can never
//! disagree; an object whose record is missing (a crash in between) still verifies
//! itself through its codec's checksum.
//!
//! Objects are 0640 and belong to the run-as user when one is given (else to the
//! archive root's owner), so `wal-restore` run as postgres outside `pgwarden run`
//! reads what the daemon, running as root, wrote.

use super::{Bytes, ObjectInfo, PutOutcome, Storage, StorageError};
use crate::fsutil::Owner;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of archived objects and their checksum records.
const OBJECT_MODE: u32 = 0o640;
/// Mode of directories created in the archive.
const DIR_MODE: u32 = 0o750;

/// A directory tree used as the object store.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
    owner: Option<Owner>,
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
    /// Uses `root` as the store; it must exist (a mounted volume). Files created as
    /// root go to `owner`, or to the owner of `root` when none is given.
    pub fn new(root: PathBuf, owner: Option<Owner>) -> Result<FsStorage, StorageError> {
        let meta = std::fs::metadata(&root).map_err(|e| {
            StorageError::Fatal(format!("{}: {e} (is the volume mounted?)", root.display()))
        })?;
        if !meta.is_dir() {
            return Err(StorageError::Fatal(format!(
                "{} is not a directory (is the volume mounted?)",
                root.display()
            )));
        }
        let owner = nix::unistd::geteuid().is_root().then(|| {
            owner.unwrap_or(Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            })
        });
        Ok(FsStorage { root, owner })
    }

    /// Gives a new file or directory its owner (when running as root) and mode.
    fn settle(&self, file: &std::fs::File, path: &Path, mode: u32) -> Result<(), StorageError> {
        if let Some(o) = self.owner {
            nix::unistd::fchown(file, Some(o.uid.into()), Some(o.gid.into()))
                .map_err(|e| classify("chown", path, e.into()))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| classify("chmod", path, e))
    }

    /// Creates the directories down to `dir`, each with the archive's owner.
    fn make_dirs(&self, dir: &Path) -> Result<(), StorageError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent().filter(|p| p.starts_with(&self.root)) {
            self.make_dirs(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {
                let f = std::fs::File::open(dir).map_err(|e| classify("open", dir, e))?;
                self.settle(&f, dir, DIR_MODE)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(classify("create", dir, e)),
        }
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
        self.make_dirs(&dir)?;
        let tmp = self.write_temp(&dir, body)?;
        match std::fs::hard_link(tmp.path(), &path) {
            Ok(()) => {}
            // Another writer won the race: theirs stands, the caller compares.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(&path).map_err(|e| classify("stat", &path, e))?;
                return Ok(PutOutcome::Exists(self.info(key, meta.len())));
            }
            Err(e) => return Err(classify("link", &path, e)),
        }
        drop(tmp);
        // Only the winner writes the checksum record, so it always matches the object.
        let meta_tmp = self.write_temp(&dir, sha256.as_bytes())?;
        let meta_path = self.path(&format!("{key}{META_SUFFIX}"));
        meta_tmp
            .persist(&meta_path)
            .map_err(|e| classify("rename into", &meta_path, e.error))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| classify("fsync", &dir, e))?;
        Ok(PutOutcome::Created)
    }

    /// A fsynced temp file in `dir` holding `data`, with the object's owner and mode.
    fn write_temp(&self, dir: &Path, data: &[u8]) -> Result<tempfile::NamedTempFile, StorageError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".pgwarden-")
            .tempfile_in(dir)
            .map_err(|e| classify("create a temp file in", dir, e))?;
        tmp.write_all(data)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| classify("write", tmp.path(), e))?;
        self.settle(tmp.as_file(), tmp.path(), OBJECT_MODE)?;
        Ok(tmp)
    }
}

/// A large object being written to a temp file beside its key.
pub struct FsUpload {
    storage: FsStorage,
    key: String,
    tmp: Option<tempfile::NamedTempFile>,
}

impl FsStorage {
    /// Opens `key` for reading in chunks; `None` when it does not exist.
    pub async fn download(&self, key: &str) -> Result<Option<tokio::fs::File>, StorageError> {
        let path = self.path(key);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(classify("read", &path, e)),
        }
    }

    /// Reads `key` from byte `from` on, up to `until` (exclusive), and what identifies
    /// this version of it (inode,
    /// size, modification time: a file is replaced by a rename, never rewritten). With
    /// `version`, only if the file is still that one: a changed file is
    /// [`StorageError::Fatal`]; `None` when it no longer exists.
    pub async fn download_range(
        &self,
        key: &str,
        from: u64,
        until: Option<u64>,
        version: Option<&str>,
    ) -> Result<Option<(tokio::io::Take<tokio::fs::File>, String)>, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(key);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(classify("read", &path, e)),
        };
        let meta = f.metadata().await.map_err(|e| classify("stat", &path, e))?;
        let now = {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{}",
                meta.ino(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec()
            )
        };
        if let Some(v) = version {
            if v != now {
                return Err(StorageError::Fatal(format!(
                    "{}: the file changed since its download began",
                    path.display()
                )));
            }
        }
        if from > 0 {
            f.seek(io::SeekFrom::Start(from))
                .await
                .map_err(|e| classify("seek", &path, e))?;
        }
        let limit = until.map_or(u64::MAX, |end| end.saturating_sub(from));
        Ok(Some((f.take(limit), now)))
    }

    /// Starts writing `key` in parts.
    pub fn begin_upload(&self, key: &str) -> Result<FsUpload, StorageError> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.make_dirs(&dir)?;
        let tmp = self.write_temp(&dir, b"")?;
        Ok(FsUpload {
            storage: self.clone(),
            key: key.to_owned(),
            tmp: Some(tmp),
        })
    }
}

impl FsUpload {
    /// Appends `data`, on a blocking thread.
    pub async fn part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let Some(mut tmp) = self.tmp.take() else {
            return Err(StorageError::Fatal("the upload was finished".into()));
        };
        let (tmp, result) = tokio::task::spawn_blocking(move || {
            let r = tmp.write_all(&data);
            (tmp, r)
        })
        .await
        .map_err(|e| StorageError::Transient(e.to_string()))?;
        let path = tmp.path().to_path_buf();
        self.tmp = Some(tmp);
        result.map_err(|e| classify("write", &path, e))
    }

    /// fsyncs the temp file and links it into place; fails if the key exists.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        let Some(tmp) = self.tmp.take() else {
            return Err(StorageError::Fatal("the upload was finished".into()));
        };
        let (storage, key) = (self.storage.clone(), self.key.clone());
        tokio::task::spawn_blocking(move || {
            let path = storage.path(&key);
            tmp.as_file()
                .sync_all()
                .map_err(|e| classify("fsync", tmp.path(), e))?;
            let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::hard_link(tmp.path(), &path).map_err(|e| classify("link", &path, e))?;
            let dir = path.parent().unwrap_or(&storage.root).to_path_buf();
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| classify("fsync", &dir, e))?;
            Ok(size)
        })
        .await
        .map_err(|e| StorageError::Transient(e.to_string()))?
    }

    /// Removes the temp file.
    pub async fn abort(mut self) {
        self.tmp.take();
    }
}

impl Storage for FsStorage {
    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
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

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectInfo)>, StorageError> {
        let path = self.path(key);
        match tokio::fs::read(&path).await {
            Ok(data) => {
                let info = self.info(key, data.len() as u64);
                Ok(Some((data.into(), info)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(classify("read", &path, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        for p in [
            format!("{}{META_SUFFIX}", path.display()),
            path.display().to_string(),
        ] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify("delete", Path::new(&p), e)),
            }
        }
        // A deleted backup or WAL directory left empty goes too (rmdir removes only an
        // empty one): listings would otherwise walk ever more empty directories. A
        // writer that loses the race to this finds its directory gone and retries.
        if let Some(dir) = path.parent().filter(|d| *d != self.root.as_path()) {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    fn root_identity(&self) -> String {
        std::fs::metadata(&self.root)
            .map(|m| format!("{}:{}", m.dev(), m.ino()))
            .unwrap_or_else(|_| "missing".to_owned())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix, limit))
            .await
            .map_err(|e| StorageError::Transient(e.to_string()))?
    }
}
