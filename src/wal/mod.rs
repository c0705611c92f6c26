//! WAL archiving and restore: postgres's `archive_command` and `restore_command`.
//!
//! [`archive::push`] and [`restore::fetch`] do one file each against any
//! [`storage::Storage`], for the daemon ([`daemon`]) and the one-shot commands alike,
//! through one retry policy ([`storage::Retrying`]). Files are streamed: checked page
//! by page ([`header`]), hashed and compressed on blocking threads. Every object
//! verifies itself (zstd frame checksum, gzip CRC) and also carries the SHA-256 of
//! its content; it is created once and never overwritten. A restore establishes the
//! integrity of what it fetched, by those checksums or by the WAL records' own CRCs
//! ([`records`]), before renaming it into place. Local files are reached only
//! through [`local::LocalDir`], confined to one directory.

pub mod archive;
pub mod capability;
pub mod compress;
pub mod config;
pub mod daemon;
pub mod header;
pub mod identity;
pub mod local;
pub mod lsn;
pub mod names;
pub mod present;
pub mod records;
pub mod restore;
pub mod storage;

pub use config::{ArchiveArgs, ArchiveConfig};
pub use lsn::Lsn;

use storage::StorageError;

/// Why a WAL operation failed, sorted so that the command can pick its exit code.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The archive does not have the file (restore): a routine answer.
    #[error("{0} is not in the archive")]
    NotFound(String),
    /// The storage failed, after retries if it was transient; or timed out, or the
    /// operation was cancelled because pgwarden is stopping.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The archive holds different content under the same name, or another
    /// cluster's WAL: never overwritten.
    #[error("{0}")]
    Conflict(String),
    /// The file is not what it should be (a corrupt object, a bad name, a bad
    /// segment, a path outside the instance).
    #[error("{0}")]
    Invalid(String),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Exit code of `wal-restore` for a storage failure outside standby mode. Above
/// 125, postgres aborts recovery instead of taking the failure for "no more WAL",
/// which would end a point-in-time recovery early, short of its target.
pub const RESTORE_ABORT: i32 = 255;

/// Which command an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `archive_command`.
    Archive,
    /// `restore_command`; `standby` when standby.signal is there (postgres then
    /// falls back to streaming on a failure, so exit 1 is safe).
    Restore {
        /// In standby mode.
        standby: bool,
    },
}

impl WalError {
    /// The HTTP status the daemon answers with; [`WalError::from_http`] reverses it.
    pub fn http_status(&self) -> u16 {
        match self {
            WalError::NotFound(_) => 404,
            WalError::Conflict(_) => 409,
            WalError::Invalid(_) => 422,
            WalError::Storage(StorageError::Cancelled(_)) => 503,
            WalError::Storage(StorageError::Timeout { .. }) => 504,
            WalError::Storage(_) => 502,
            WalError::Io(_) => 500,
        }
    }

    /// The error a daemon answer stands for (`body` is its message).
    pub fn from_http(status: u16, body: String) -> WalError {
        match status {
            404 => WalError::NotFound(body),
            409 => WalError::Conflict(body),
            422 => WalError::Invalid(body),
            503 => WalError::Storage(StorageError::Cancelled(body)),
            502 | 504 => WalError::Storage(StorageError::Transient(body)),
            _ => WalError::Io(std::io::Error::other(body)),
        }
    }
}

/// The one mapping from an outcome to the exit code postgres sees, for the daemon
/// and the in-process paths alike.
pub fn exit_code(command: Command, result: &Result<(), WalError>) -> i32 {
    match (command, result) {
        (_, Ok(())) => 0,
        (Command::Archive, Err(_)) => 1,
        (Command::Restore { .. }, Err(WalError::NotFound(_))) => 1,
        (Command::Restore { standby: true }, Err(_)) => 1,
        (Command::Restore { standby: false }, Err(_)) => RESTORE_ABORT,
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_to_exit_codes_survives_the_daemon_round_trip() {
        let cases: Vec<(WalError, i32, i32, i32)> = vec![
            // error, archive, restore on a standby, restore in archive recovery
            (WalError::NotFound("x".into()), 1, 1, 1),
            (WalError::Conflict("x".into()), 1, 1, RESTORE_ABORT),
            (WalError::Invalid("corrupt".into()), 1, 1, RESTORE_ABORT),
            (
                StorageError::Transient("503".into()).into(),
                1,
                1,
                RESTORE_ABORT,
            ),
            (
                StorageError::Fatal("403".into()).into(),
                1,
                1,
                RESTORE_ABORT,
            ),
            (
                StorageError::Timeout {
                    what: "x".into(),
                    secs: 3,
                }
                .into(),
                1,
                1,
                RESTORE_ABORT,
            ),
            (
                StorageError::Cancelled("x".into()).into(),
                1,
                1,
                RESTORE_ABORT,
            ),
        ];
        for (e, archive, standby, recovery) in cases {
            let via_daemon = WalError::from_http(e.http_status(), e.to_string());
            for err in [e, via_daemon] {
                let shown = format!("{err:?}");
                let r = Err(err);
                assert_eq!(exit_code(Command::Archive, &r), archive, "{shown}");
                assert_eq!(
                    exit_code(Command::Restore { standby: true }, &r),
                    standby,
                    "{shown}"
                );
                assert_eq!(
                    exit_code(Command::Restore { standby: false }, &r),
                    recovery,
                    "{shown}"
                );
            }
        }
        assert_eq!(exit_code(Command::Archive, &Ok(())), 0);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
