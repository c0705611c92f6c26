//! `PGWARDEN_BACKUP_SCHEDULE` under `pgwarden run`: takes a backup when one is due,
//! through the same path as `POST /backup` (retention included), only while the
//! instance is ready as a primary (replicas share the archive: one backup a
//! schedule). A backup already under way (a `POST /backup`) counts as this one:
//! it is skipped, not queued.

use super::schedule::Schedule;
use super::service::{BackupError, Backups};
use crate::civil::{self, from_unix_seconds};
use crate::wal::storage::Retrying;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Says why a scheduled backup cannot be taken now, if it cannot.
pub type Gate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How often a due backup checks again whether the instance is ready.
const RECHECK: Duration = Duration::from_secs(5);
/// The longest single sleep: the wall clock is read again after it (a clock that
/// jumps, a backup taken meanwhile through `POST /backup`).
const LONGEST_SLEEP: Duration = Duration::from_secs(30);

/// The scheduling task.
pub struct Scheduler {
    /// When backups are due.
    pub schedule: Schedule,
    /// The backup path.
    pub backups: Backups,
    /// Whether a backup may be taken now.
    pub gate: Gate,
}

impl Scheduler {
    /// Runs for as long as pgwarden does.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    fn publish(&self, next: Option<SystemTime>) {
        let mut st = self
            .backups
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.schedule = self.backups.settings.backups.schedule_text.clone();
        st.next_scheduled = next.map(civil::rfc3339);
    }

    /// The start of the last backup attempt this pgwarden made, scheduled or not.
    fn last_attempt(&self) -> Option<SystemTime> {
        let st = self
            .backups
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.last.as_ref().map(|f| {
            let start = f.ended_at - f.duration_seconds;
            from_unix_seconds(start.floor() as i64)
        })
    }

    /// The start of the newest DONE backup in the archive, read once the WAL daemon
    /// (its storage client) runs.
    async fn newest_in_archive(&self) -> Option<SystemTime> {
        let daemon = loop {
            if let Some(d) = self
                .backups
                .daemon
                .borrow()
                .clone()
                .filter(|d| d.archives())
            {
                break d;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let cfg = daemon.config();
        let storage = Retrying::new(daemon.storage(), cfg.timeout, CancellationToken::new());
        match super::list::list(&storage, &cfg.base()).await {
            Ok(backups) => backups
                .iter()
                .filter(|b| b.status == "DONE")
                .filter_map(|b| civil::parse_barman_time(&b.begin_time))
                .max(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the backups in the archive; the schedule counts from now");
                None
            }
        }
    }

    async fn run(self) {
        self.publish(None);
        let started = SystemTime::now();
        let in_archive = self.newest_in_archive().await;
        let mut waiting_since: Option<SystemTime> = None;
        loop {
            let now = SystemTime::now();
            let last = in_archive.max(self.last_attempt());
            let due = self.schedule.next(now, last, started);
            self.publish(Some(due));
            if let Ok(wait) = due.duration_since(now) {
                if !wait.is_zero() {
                    tokio::time::sleep(wait.min(LONGEST_SLEEP)).await;
                    continue;
                }
            }
            if let Err(why) = (self.gate)() {
                if waiting_since.is_none() {
                    tracing::info!(reason = %why, "a scheduled backup is due; waiting until the instance is ready as a primary");
                    waiting_since = Some(now);
                }
                tokio::time::sleep(RECHECK).await;
                continue;
            }
            waiting_since = None;
            match self.backups.take("schedule").await {
                Ok(_) => {}
                Err(BackupError::Busy) => {
                    tracing::info!("a scheduled backup is due but one is already running; skipped");
                    // That backup counts: wait for it to end, then count from it.
                    let _wait = self.backups.one_at_a_time.lock().await;
                }
                Err(BackupError::NoArchive) => tokio::time::sleep(RECHECK).await,
                // Logged by the job; the next one is due an interval after this one.
                Err(BackupError::Failed(_)) => {}
            }
        }
    }
}
