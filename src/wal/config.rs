//! Archive settings, shared by `run`, `wal-archive` and `wal-restore`.

use super::compress::Codec;
use super::storage::{fs::FsStorage, s3, Backend, StorageError};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// The archive settings as flags and environment variables.
#[derive(Args, Debug, Clone, Default)]
pub struct ArchiveArgs {
    /// `s3://bucket/prefix` or `file:///path`; setting it turns archiving on.
    #[arg(long, env = "PGWARDEN_ARCHIVE_URL")]
    pub archive_url: Option<String>,
    /// `zstd`, `gzip` or `none`.
    #[arg(long, env = "PGWARDEN_ARCHIVE_COMPRESSION", default_value = "zstd")]
    pub archive_compression: String,
    /// Server name in the archive (default: PGWARDEN_NAME); share it across a cluster.
    #[arg(long, env = "PGWARDEN_ARCHIVE_NAME")]
    pub archive_name: Option<String>,
    /// Seconds a push or fetch may spend retrying before it fails.
    #[arg(long, env = "PGWARDEN_ARCHIVE_TIMEOUT", default_value_t = 60)]
    pub archive_timeout: u64,
    /// S3 server-side encryption: `AES256` or `aws:kms`.
    #[arg(long, env = "PGWARDEN_ARCHIVE_SSE")]
    pub archive_sse: Option<String>,
    /// KMS key id for `aws:kms`.
    #[arg(long, env = "PGWARDEN_ARCHIVE_SSE_KMS_KEY_ID")]
    pub archive_sse_kms_key_id: Option<String>,
    /// Uploads the daemon runs at once (default: the number of CPUs).
    #[arg(long, env = "PGWARDEN_ARCHIVE_PARALLEL")]
    pub archive_parallel: Option<usize>,
    /// Segments the daemon fetches ahead of restore_command (0 turns prefetch off).
    #[arg(long, env = "PGWARDEN_RESTORE_PREFETCH", default_value_t = 8)]
    pub restore_prefetch: usize,
}

/// Where the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A bucket and a key prefix.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix, without slashes at the ends.
        prefix: String,
    },
    /// A directory.
    Fs {
        /// Root directory.
        root: PathBuf,
    },
}

/// Validated archive settings.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// The URL as given.
    pub url: String,
    /// Parsed location.
    pub location: Location,
    /// Codec for new objects.
    pub codec: Codec,
    /// Server name in the archive.
    pub server: String,
    /// The server name as configured (`PGWARDEN_ARCHIVE_NAME`, else the instance
    /// name): `server` is this with `-pg<major>` once the cluster was upgraded.
    pub configured_server: String,
    /// Retry budget.
    pub timeout: Duration,
    /// S3 SSE.
    pub sse: s3::Sse,
    /// Parallel uploads in the daemon.
    pub parallel: usize,
    /// Segments prefetched on restore.
    pub prefetch: usize,
}

impl ArchiveConfig {
    /// Validates the arguments; `Ok(None)` when archiving is off. Errors name the setting.
    pub fn from_args(
        a: &ArchiveArgs,
        instance_name: &str,
    ) -> Result<Option<ArchiveConfig>, (&'static str, String)> {
        let Some(url) = a.archive_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let location = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err((
                    "PGWARDEN_ARCHIVE_URL",
                    format!("{url:?} names no bucket; expected s3://bucket/prefix"),
                ));
            }
            Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            }
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err((
                    "PGWARDEN_ARCHIVE_URL",
                    format!("{url:?} is not an absolute path; expected file:///path"),
                ));
            }
            Location::Fs {
                root: PathBuf::from(path),
            }
        } else {
            return Err((
                "PGWARDEN_ARCHIVE_URL",
                format!("{url:?} is neither s3://bucket/prefix nor file:///path"),
            ));
        };
        let codec = Codec::parse(&a.archive_compression).ok_or((
            "PGWARDEN_ARCHIVE_COMPRESSION",
            format!("{:?} is not zstd, gzip or none", a.archive_compression),
        ))?;
        let server = a
            .archive_name
            .clone()
            .unwrap_or_else(|| instance_name.to_owned());
        if server.is_empty()
            || server.contains(['/', '\n', '\r', '\0'])
            || server == "."
            || server == ".."
        {
            return Err((
                "PGWARDEN_ARCHIVE_NAME",
                format!("{server:?} cannot name a directory in the archive"),
            ));
        }
        if let Some(alg) = &a.archive_sse {
            if !matches!(alg.as_str(), "AES256" | "aws:kms") {
                return Err((
                    "PGWARDEN_ARCHIVE_SSE",
                    format!("{alg:?} is not AES256 or aws:kms"),
                ));
            }
        }
        Ok(Some(ArchiveConfig {
            url,
            location,
            codec,
            configured_server: server.clone(),
            server,
            timeout: Duration::from_secs(a.archive_timeout.max(1)),
            sse: s3::Sse {
                algorithm: a.archive_sse.clone(),
                kms_key_id: a.archive_sse_kms_key_id.clone(),
            },
            parallel: a.archive_parallel.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
            prefetch: a.restore_prefetch,
        }))
    }

    /// The key prefix of this server: `<prefix>/<server>`.
    pub fn base(&self) -> String {
        match &self.location {
            Location::S3 { prefix, .. } if !prefix.is_empty() => {
                format!("{prefix}/{}", self.server)
            }
            _ => self.server.clone(),
        }
    }

    /// Opens the storage. Files a volume archive creates as root go to `owner`.
    pub async fn open(&self, owner: Option<crate::fsutil::Owner>) -> Result<Backend, StorageError> {
        match &self.location {
            Location::S3 { bucket, .. } => {
                let per_request = self.timeout.min(Duration::from_secs(20));
                Ok(Backend::S3(
                    s3::S3Storage::new(bucket, self.sse.clone(), per_request).await,
                ))
            }
            Location::Fs { root } => Ok(Backend::Fs(FsStorage::new(root.clone(), owner)?)),
        }
    }

    /// Environment that hands these settings to `wal-archive`/`wal-restore` children.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGWARDEN_ARCHIVE_URL", self.url.clone()),
            (
                "PGWARDEN_ARCHIVE_COMPRESSION",
                self.codec.as_str().to_owned(),
            ),
            ("PGWARDEN_ARCHIVE_NAME", self.server.clone()),
            (
                "PGWARDEN_ARCHIVE_TIMEOUT",
                self.timeout.as_secs().to_string(),
            ),
        ];
        if let Some(a) = &self.sse.algorithm {
            env.push(("PGWARDEN_ARCHIVE_SSE", a.clone()));
        }
        if let Some(k) = &self.sse.kms_key_id {
            env.push(("PGWARDEN_ARCHIVE_SSE_KMS_KEY_ID", k.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> ArchiveArgs {
        ArchiveArgs {
            archive_url: Some(url.into()),
            archive_compression: "zstd".into(),
            archive_timeout: 60,
            ..Default::default()
        }
    }

    #[test]
    fn parses_urls() {
        let c = ArchiveConfig::from_args(&args("s3://bkt/a/b/"), "pg-0")
            .unwrap()
            .unwrap();
        assert_eq!(
            c.location,
            Location::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(c.base(), "a/b/pg-0");
        let c = ArchiveConfig::from_args(&args("file:///mnt/wal"), "pg-0")
            .unwrap()
            .unwrap();
        assert_eq!(c.base(), "pg-0");
        assert_eq!(
            ArchiveConfig::from_args(&args("s3://"), "x").unwrap_err().0,
            "PGWARDEN_ARCHIVE_URL"
        );
        assert_eq!(
            ArchiveConfig::from_args(&args("file://rel"), "x")
                .unwrap_err()
                .0,
            "PGWARDEN_ARCHIVE_URL"
        );
        assert_eq!(
            ArchiveConfig::from_args(&args("http://x"), "x")
                .unwrap_err()
                .0,
            "PGWARDEN_ARCHIVE_URL"
        );
        let mut a = args("s3://b");
        a.archive_compression = "lz4".into();
        assert_eq!(
            ArchiveConfig::from_args(&a, "x").unwrap_err().0,
            "PGWARDEN_ARCHIVE_COMPRESSION"
        );
        assert!(ArchiveConfig::from_args(&ArchiveArgs::default(), "x")
            .unwrap()
            .is_none());
    }
}
