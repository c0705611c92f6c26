//! WAL archiving and restore: postgres's `archive_command` and `restore_command`.
//!
//! [`archive::push`] and [`restore::fetch`] do one file each, in-process, against any
//! [`storage::Storage`]. Every object carries the SHA-256 of its uncompressed content,
//! is never overwritten, and is verified (checksum, decompression, page header) before
//! postgres sees it.

pub mod archive;
pub mod compress;
pub mod config;
pub mod daemon;
pub mod header;
pub mod names;
pub mod restore;
pub mod storage;

pub use config::{ArchiveArgs, ArchiveConfig};

use std::time::{Duration, Instant};
use storage::StorageError;

/// Why a WAL operation failed, sorted so that the command can pick its exit code.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The archive does not have the file (restore): a routine answer.
    #[error("{0} is not in the archive")]
    NotFound(String),
    /// The storage failed, after retries if it was transient.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The archive holds different content under the same name: never overwritten.
    #[error("{0}")]
    Conflict(String),
    /// The file is not what it should be (a corrupt object, a bad name, a bad segment).
    #[error("{0}")]
    Invalid(String),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs `op` until it succeeds, fails for good, or `budget` runs out; only transient
/// storage errors are retried, with jittered exponential backoff.
pub async fn with_retries<T, F, Fut>(budget: Duration, what: &str, mut op: F) -> Result<T, WalError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, WalError>>,
{
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(100);
    for attempt in 1u32.. {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout(left, op()).await {
            Ok(r) => r,
            Err(_) => Err(WalError::Storage(StorageError::Transient(format!(
                "{what}: no answer within {}s (PGWARDEN_ARCHIVE_TIMEOUT)",
                budget.as_secs()
            )))),
        };
        match result {
            Err(WalError::Storage(e)) if e.is_transient() && Instant::now() + delay < deadline => {
                tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "{what}: retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// Spreads retries of many processes apart: 50% to 100% of `d`.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d / 2 + d.mul_f64((nanos % 1000) as f64 / 2000.0)
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
