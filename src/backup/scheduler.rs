//! `PGWARDEN_BACKUP_SCHEDULE` under `pgwarden run`: takes a backup when one is due,
//! through the same path as `POST /backup` (retention included). A backup already
//! under way (a `POST /backup`) counts as this one: it is skipped, not queued.
//!
//! Without HA, only while the instance is ready as a primary (replicas share the
//! archive: one backup a schedule). With `PGWARDEN_HA=etcd` every member runs the
//! schedule and one takes each due backup: the member [`super::target`] chooses (a
//! healthy replica by default), or the primary when the chosen replica has not
//! started it within [`grace`]. The taker holds the cluster's `jobs/backup` key
//! while it runs and records the backup's start under `jobs/backup/last`, from
//! which every member counts the next one. With the key held, the taker counts the
//! due time again from what is recorded and listed in the archive then: a backup
//! another member began meanwhile moves it on, so one due time makes one backup
//! cluster-wide.

use super::schedule::Schedule;
use super::service::{BackupError, Backups};
use super::target::{backup_member, Choice};
use crate::civil::{self, from_unix_seconds};
use crate::ha::etcd::EtcdStore;
use crate::ha::job;
use crate::ha::store::Store;
use crate::ha::HaConfig;
use crate::settings::Role;
use crate::wal::storage::Retrying;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Says why a backup cannot be taken now, if it cannot (`pgwarden upgrade`'s backup
/// after the upgrade).
pub type Gate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The role this instance runs as while postgres is ready in it, or why it is not.
pub type Local = Arc<dyn Fn() -> Result<Role, String> + Send + Sync>;

/// The cluster-wide job's name in the store (`jobs/backup`).
const JOB: &str = "backup";

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
    /// This instance's role, when ready.
    pub local: Local,
}

/// How long the primary leaves a due backup to the replica chosen for it before it
/// takes it itself: a TTL (by then a replica that died has lost its member key and
/// is no longer chosen), and at least two rechecks.
pub fn grace(ha: &HaConfig) -> Duration {
    ha.ttl.max(RECHECK * 2)
}

impl Scheduler {
    /// The kind of the scheduled backups (`; full every` makes them incremental).
    fn kind(&self) -> crate::backup::Kind {
        match self.backups.settings.backups.full_every {
            Some(every) => crate::backup::Kind::Incremental(Some(every)),
            None => crate::backup::Kind::Full,
        }
    }

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

    fn publish_chosen(&self, member: &str) {
        self.backups
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .scheduled_on = Some(member.to_owned());
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
                tracing::warn!(error = %e, "cannot read the backups in the archive; the schedule counts from the backups it knows of otherwise");
                None
            }
        }
    }

    async fn run(self) {
        if let Some(ha) = self.backups.settings.ha.clone() {
            return self.run_ha(&ha).await;
        }
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
            let ready = match (self.local)() {
                Ok(Role::Primary) => Ok(()),
                Ok(Role::Replica) => Err(
                    "this instance is a replica; the primary takes the scheduled backups"
                        .to_owned(),
                ),
                Err(why) => Err(why),
            };
            if let Err(why) = ready {
                if waiting_since.is_none() {
                    tracing::info!(reason = %why, "a scheduled backup is due; waiting until the instance is ready as a primary");
                    waiting_since = Some(now);
                }
                tokio::time::sleep(RECHECK).await;
                continue;
            }
            waiting_since = None;
            match self.backups.take("schedule", self.kind()).await {
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

    /// The schedule under HA: see the module's documentation.
    async fn run_ha(self, ha: &HaConfig) {
        self.publish(None);
        let me = self.backups.settings.name.clone();
        let target = self.backups.settings.backups.target;
        let store = match EtcdStore::connect(&ha.endpoints, &ha.cluster, ha.retry_timeout).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "scheduled backups: cannot reach etcd; no scheduled backup is taken until pgwarden restarts");
                return;
            }
        };
        let started = SystemTime::now();
        let in_archive = self.newest_in_archive().await;
        // When this member first found the current due time past, and what it last
        // said about it (logged once a due time, not every recheck).
        let mut due_since: Option<SystemTime> = None;
        let mut said = String::new();
        loop {
            let now = SystemTime::now();
            let recorded = job::last(&store, JOB).await.map(|l| l.started());
            let last = in_archive.max(self.last_attempt()).max(recorded);
            let due = self.schedule.next(now, last, started);
            self.publish(Some(due));
            if let Ok(wait) = due.duration_since(now) {
                if !wait.is_zero() {
                    due_since = None;
                    said.clear();
                    tokio::time::sleep(wait.min(LONGEST_SLEEP)).await;
                    continue;
                }
            }
            let since = *due_since.get_or_insert(now);
            let mut say = |what: String| {
                if what != said {
                    info!(reason = %what, "a scheduled backup is due; not taken here now");
                    said = what;
                }
            };
            let view = match store.read().await {
                Ok(v) => v,
                Err(e) => {
                    say(format!("etcd: {e}"));
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            };
            let role = match backup_member(&view, &me, target, ha.max_lag_on_failover) {
                Choice::Take(role) => role,
                Choice::Fallback(chosen) => {
                    self.publish_chosen(&chosen);
                    let waited = now.duration_since(since).unwrap_or_default();
                    if waited < grace(ha) {
                        say(format!("replica {chosen} takes it; this primary takes it if {chosen} has not started it within {:?}", grace(ha)));
                        tokio::time::sleep(RECHECK).await;
                        continue;
                    }
                    say(format!(
                        "replica {chosen} was given {:?}; this primary takes it unless a backup is under way",
                        grace(ha)
                    ));
                    Role::Primary
                }
                Choice::Other(member) => {
                    self.publish_chosen(&member);
                    say(format!("member {member} takes it"));
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
                Choice::Wait(why) => {
                    say(why);
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            };
            match (self.local)() {
                Ok(r) if r == role => {}
                Ok(r) => {
                    say(format!(
                        "chosen as a {role:?}, this instance runs as a {r:?}"
                    ));
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
                Err(why) => {
                    say(why);
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            }
            let held = match job::hold(&store, JOB, &me, ha.ttl).await {
                Ok(Ok(h)) => h,
                Ok(Err(holder)) => {
                    // Its record moves the schedule on once it is done.
                    self.publish_chosen(&holder);
                    say(format!("member {holder} is taking the cluster's backup"));
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
                Err(e) => {
                    say(format!("etcd: {e}"));
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            };
            // With the key held nobody else starts one: the due time again, from what
            // is recorded and listed now, says whether a backup another member took
            // meanwhile was this one (with no backup yet, an interval is due at every
            // look: only a fresh look tells that one has just been taken).
            let recorded = job::last(&store, JOB).await;
            let listed = self.newest_in_archive().await;
            let recorded_at = recorded.as_ref().map(job::LastRun::started);
            let now = SystemTime::now();
            let last = in_archive
                .max(self.last_attempt())
                .max(recorded_at)
                .max(listed);
            if self.schedule.next(now, last, started) > now {
                info!(
                    due = civil::rfc3339(due),
                    "a scheduled backup was due and another began since; it counts"
                );
                if let Some(t) = listed.filter(|t| Some(*t) > recorded_at) {
                    // A backup taken outside the schedule: every member counts from it.
                    record(&store, &job::LastRun::new("", t, true)).await;
                }
                held.release().await;
                continue;
            }
            self.publish_chosen(&me);
            said.clear();
            let begin = SystemTime::now();
            let result = self.backups.take("schedule", self.kind()).await;
            let ok = match result {
                Ok(_) => Some(true),
                // Logged by the job; the next one is due an interval after this one.
                Err(BackupError::Failed(_)) => Some(false),
                Err(BackupError::Busy) => {
                    info!("a scheduled backup is due but one is already running here; it counts if it began after the due time");
                    let _wait = self.backups.one_at_a_time.lock().await;
                    None
                }
                Err(BackupError::NoArchive) => None,
            };
            if let Some(ok) = ok {
                record(&store, &job::LastRun::new(&me, begin, ok)).await;
            }
            held.release().await;
            if ok.is_none() {
                tokio::time::sleep(RECHECK).await;
            }
        }
    }
}

/// Records the cluster's last scheduled backup, before the key is released.
async fn record(store: &EtcdStore, last: &job::LastRun) {
    if let Err(e) = job::record(store, JOB, last).await {
        warn!(error = %e, "cannot record the scheduled backup in etcd; another member may take one again for this due time, unless it lists this one first");
    }
}
