//! Where archived files go: a trait with an S3 and a file-system backend.
//!
//! Every object is created once and never overwritten: [`Storage::put_new`] reports
//! an existing object instead of replacing it, and the caller decides whether that is
//! the same content (success) or a conflict (refused).

pub mod fs;
pub mod retry;
pub mod s3;

pub use bytes::Bytes;
pub use retry::Retrying;
use std::future::Future;

/// Metadata key holding the SHA-256 of the uncompressed content.
pub const SHA256_META: &str = "pgwarden-sha256";

/// What the storage knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key.
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the uncompressed content, when the writer recorded one
    /// (pgwarden always does; barman-cloud does not).
    pub sha256: Option<String>,
}

/// The result of [`Storage::put_new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An object already had that key; it was left alone.
    Exists(ObjectInfo),
}

/// A storage failure, classified so that callers can retry what is worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Network trouble, throttling, a 5xx, a timeout: worth another try.
    #[error("{0}")]
    Transient(String),
    /// Access denied, no such bucket, bad configuration: retrying will not help.
    #[error("{0}")]
    Fatal(String),
    /// The retry budget ran out before the storage answered.
    #[error("{what}: no answer within {secs}s (PGWARDEN_ARCHIVE_TIMEOUT)")]
    Timeout {
        /// The operation.
        what: String,
        /// The budget.
        secs: u64,
    },
    /// Given up on purpose: pgwarden is stopping. postgres keeps the file and asks
    /// again after the restart.
    #[error("{0}: pgwarden is stopping; postgres will ask again after the restart")]
    Cancelled(String),
}

impl StorageError {
    /// True when a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient(_))
    }
}

/// An object store for archived WAL.
pub trait Storage: Send + Sync {
    /// Creates `key` with `body` unless it exists, recording `sha256` with it.
    /// Exactly one of several concurrent creations of one key wins; the others get
    /// [`PutOutcome::Exists`].
    fn put_new(
        &self,
        key: &str,
        body: Bytes,
        sha256: &str,
    ) -> impl Future<Output = Result<PutOutcome, StorageError>> + Send;
    /// Reads an object's metadata; `None` when it does not exist.
    fn head(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectInfo>, StorageError>> + Send;
    /// Reads an object (as stored, compressed); `None` when it does not exist.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Bytes, ObjectInfo)>, StorageError>> + Send;
    /// Lists up to `limit` objects whose key starts with `prefix`, in key order.
    fn list(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, StorageError>> + Send;
    /// What identifies the archive's root right now, cheaply: on a volume, the root
    /// directory's device and inode, which change when the volume is not mounted.
    fn root_identity(&self) -> String {
        "-".to_owned()
    }
    /// Deletes `key` if it is there.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// A large object (a base backup) written in parts: nothing is visible under its key
/// until [`Upload::finish`], and an upload that is dropped or aborted leaves nothing
/// a reader could take for the object.
pub enum Upload {
    /// An S3 multipart upload.
    S3(s3::S3Upload),
    /// A temp file beside the object on a volume.
    Fs(fs::FsUpload),
}

impl Upload {
    /// Appends a part (S3 wants at least 5 MiB for every part but the last).
    pub async fn part(&mut self, data: Bytes) -> Result<(), StorageError> {
        match self {
            Upload::S3(u) => u.part(data).await,
            Upload::Fs(u) => u.part(data).await,
        }
    }
    /// Makes the object visible, whole. Fails if the key exists.
    pub async fn finish(self) -> Result<u64, StorageError> {
        match self {
            Upload::S3(u) => u.finish().await,
            Upload::Fs(u) => u.finish().await,
        }
    }
    /// Gives up and removes what was written.
    pub async fn abort(self) {
        match self {
            Upload::S3(u) => u.abort().await,
            Upload::Fs(u) => u.abort().await,
        }
    }
}

impl Backend {
    /// Opens `key` for reading in chunks; `None` when it does not exist.
    pub async fn download(&self, key: &str) -> Result<Option<Download>, StorageError> {
        match self {
            Backend::S3(s) => Ok(s.download(key).await?.map(Download::S3)),
            Backend::Fs(f) => Ok(f
                .download(key)
                .await?
                .map(|f| Download::Fs(tokio::io::AsyncReadExt::take(f, u64::MAX)))),
        }
    }

    /// Opens `key` for reading from byte `from` on, up to byte `until` (exclusive;
    /// `None`: its end), with what identifies this version of it; given `version`
    /// (from an earlier call), only if the object is still that version, so that a
    /// download resumed after a failure never splices two objects
    /// ([`StorageError::Fatal`] when it changed). `None` when it does not exist.
    pub async fn download_range(
        &self,
        key: &str,
        from: u64,
        until: Option<u64>,
        version: Option<&str>,
    ) -> Result<Option<(Download, String)>, StorageError> {
        match self {
            Backend::S3(s) => Ok(s
                .download_range(key, from, until, version)
                .await?
                .map(|(b, v)| (Download::S3(b), v))),
            Backend::Fs(f) => Ok(f
                .download_range(key, from, until, version)
                .await?
                .map(|(b, v)| (Download::Fs(b), v))),
        }
    }

    /// Starts a multipart upload of `key`.
    pub async fn begin_upload(&self, key: &str) -> Result<Upload, StorageError> {
        match self {
            Backend::S3(s) => s.begin_upload(key).await.map(Upload::S3),
            Backend::Fs(f) => f.begin_upload(key).map(Upload::Fs),
        }
    }
}

/// A large object (a base backup) read in chunks, never whole in memory.
pub enum Download {
    /// An S3 object's body.
    S3(aws_sdk_s3::primitives::ByteStream),
    /// A file on a volume (as much of it as is asked for).
    Fs(tokio::io::Take<tokio::fs::File>),
}

impl Download {
    /// The next chunk; `None` at the end of the object.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        match self {
            Download::S3(body) => match body.next().await {
                None => Ok(None),
                Some(Ok(b)) => Ok(Some(b)),
                Some(Err(e)) => Err(StorageError::Transient(format!(
                    "S3 GET: reading the body: {e}"
                ))),
            },
            Download::Fs(f) => {
                use tokio::io::AsyncReadExt;
                let mut buf = bytes::BytesMut::with_capacity(1 << 20);
                match f.read_buf(&mut buf).await {
                    Ok(0) => Ok(None),
                    Ok(_) => Ok(Some(buf.freeze())),
                    Err(e) => Err(StorageError::Transient(format!("read: {e}"))),
                }
            }
        }
    }
}

/// The configured backend, dispatching statically to the concrete store.
#[derive(Clone)]
pub enum Backend {
    /// `s3://`.
    S3(s3::S3Storage),
    /// `file://`.
    Fs(fs::FsStorage),
}

impl Storage for Backend {
    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        match self {
            Backend::S3(s) => s.put_new(key, body, sha256).await,
            Backend::Fs(f) => f.put_new(key, body, sha256).await,
        }
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self {
            Backend::S3(s) => s.head(key).await,
            Backend::Fs(f) => f.head(key).await,
        }
    }
    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectInfo)>, StorageError> {
        match self {
            Backend::S3(s) => s.get(key).await,
            Backend::Fs(f) => f.get(key).await,
        }
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        match self {
            Backend::S3(s) => s.list(prefix, limit).await,
            Backend::Fs(f) => f.list(prefix, limit).await,
        }
    }
    fn root_identity(&self) -> String {
        match self {
            Backend::S3(s) => s.root_identity(),
            Backend::Fs(f) => f.root_identity(),
        }
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            Backend::S3(s) => s.delete(key).await,
            Backend::Fs(f) => f.delete(key).await,
        }
    }
}
