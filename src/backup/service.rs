//! Taking a backup under `pgwarden run`, one at a time, then applying
//! `PGWARDEN_BACKUP_RETENTION`: the one path behind `POST /backup` and the schedule.

use super::delete::{self, Selection};
use super::take::Job;
use super::{BackupStatus, RetentionRun};
use crate::civil;
use crate::process::Runner;
use crate::settings::Settings;
use crate::wal::daemon::Daemon;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// What taking backups needs.
#[derive(Clone)]
pub struct Backups {
    /// The running settings.
    pub settings: Arc<Settings>,
    /// Spawns pg_basebackup through the reaper.
    pub runner: Runner,
    /// The WAL daemon (its storage client), once it runs.
    pub daemon: watch::Receiver<Option<Arc<Daemon>>>,
    /// Progress and the last result, shared with /status and /metrics.
    pub status: Arc<Mutex<BackupStatus>>,
    /// Held while a backup (and the retention after it) runs.
    pub one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// Why no backup was taken, or why it failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No archive, or its daemon is not running yet.
    #[error("backups go to the archive, and none is set: set PGWARDEN_ARCHIVE_URL")]
    NoArchive,
    /// Another backup is under way; this one is skipped, not queued.
    #[error("a backup is already running")]
    Busy,
    /// The backup itself failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl Backups {
    /// Takes a backup now, then applies the retention policy if one is set. A
    /// retention failure does not fail the backup: it is logged and shown in
    /// `/status`, and the next backup's retention takes it up again.
    pub async fn take(
        &self,
        trigger: &'static str,
        kind: super::Kind,
    ) -> Result<super::BackupInfo, BackupError> {
        // A daemon that only restores has no archive of its own to take backups into.
        let Some(daemon) = self.daemon.borrow().clone().filter(|d| d.archives()) else {
            return Err(BackupError::NoArchive);
        };
        let Ok(_guard) = self.one_at_a_time.try_lock() else {
            return Err(BackupError::Busy);
        };
        tracing::info!(trigger, kind = ?kind, "taking a base backup");
        let job = Job {
            settings: &self.settings,
            archive: daemon.config(),
            storage: daemon.storage(),
            compression: self.settings.backup_compression,
            jobs: self.settings.backups.jobs,
            runner: &self.runner,
            status: self.status.clone(),
            incremental: match kind {
                super::Kind::Full => None,
                super::Kind::Incremental(full_every) => Some(full_every),
            },
        };
        let info = job.run().await.map_err(BackupError::Failed)?;
        if let Some(policy) = self.settings.backups.retention {
            let run = self.retain(&daemon, policy).await;
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retention = Some(run);
        }
        Ok(info)
    }

    async fn retain(&self, daemon: &Daemon, policy: super::policy::Policy) -> RetentionRun {
        let cfg = daemon.config();
        let storage = daemon.storage();
        let now = SystemTime::now();
        let selection = Selection::Policy(policy);
        let result = async {
            let (_, plan) =
                delete::prepare(storage, &cfg.base(), &selection, now, cfg.timeout).await?;
            let mut quiet = |key: &str| tracing::debug!(key, "deleted");
            delete::execute(storage, &plan, false, cfg.timeout, &mut quiet).await
        }
        .await;
        let mut run = RetentionRun {
            policy: policy.to_string(),
            at: civil::rfc3339(now),
            deleted_backups: Vec::new(),
            deleted_wal: 0,
            error: None,
        };
        match result {
            Ok(summary) => {
                tracing::info!(
                    policy = %policy,
                    deleted_backups = ?summary.backups,
                    deleted_wal = summary.wal,
                    "retention applied"
                );
                run.deleted_backups = summary.backups;
                run.deleted_wal = summary.wal;
            }
            Err(e) => {
                tracing::error!(policy = %policy, error = format!("{e:#}"), "retention failed; the next backup tries again");
                run.error = Some(format!("{e:#}"));
            }
        }
        run
    }
}
