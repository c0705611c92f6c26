//! A cluster-wide job one member at a time (a scheduled restore drill, a scheduled
//! backup): the member that runs it holds `jobs/<job>` (see [`EtcdStore::acquire_job`])
//! on a lease of the job's own, renewed while the job runs, so that the key goes
//! with a member that dies mid-job and another may run the next one.

use super::etcd::EtcdStore;
use super::store::{LeaseId, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// The cluster's last run of a job, as the member that ran it recorded it under
/// `jobs/<job>/last`: every member counts the job's next due time from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    /// The member (empty for a run outside the schedule that the record adopted).
    pub member: String,
    /// When it started, in seconds since the epoch.
    pub started_unix: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

impl LastRun {
    /// A run of `member` that started at `started`.
    pub fn new(member: &str, started: SystemTime, ok: bool) -> LastRun {
        LastRun {
            member: member.to_owned(),
            started_unix: started
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            ok,
        }
    }

    /// When it started.
    pub fn started(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(self.started_unix.max(0.0))
    }
}

/// The last run of `job` recorded in the store; `None` when there is none or it cannot
/// be read (the caller counts from what it knows otherwise).
pub async fn last(store: &EtcdStore, job: &'static str) -> Option<LastRun> {
    match store.job_last(job).await {
        Ok(Some(v)) => serde_json::from_slice(&v).ok(),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(job, error = %e, "cannot read the job's last run");
            None
        }
    }
}

/// Records the last run of `job`, before its key is released.
pub async fn record(store: &EtcdStore, job: &'static str, run: &LastRun) -> Result<(), StoreError> {
    // A Value prints whatever it holds (a non-finite number as null).
    let v =
        serde_json::json!({"member": run.member, "started_unix": run.started_unix, "ok": run.ok});
    store.put_job_last(job, v.to_string().as_bytes()).await
}

/// The job's key, held by this member until [`Held::release`] (or its lease expires).
pub struct Held {
    store: EtcdStore,
    job: &'static str,
    lease: LeaseId,
    renewer: tokio::task::JoinHandle<()>,
}

/// Takes `jobs/<job>` for `holder` on a new lease `ttl` long, renewed every third of
/// it until released. `Ok(Err(name))` names the member that holds it instead.
pub async fn hold(
    store: &EtcdStore,
    job: &'static str,
    holder: &str,
    ttl: Duration,
) -> Result<Result<Held, String>, StoreError> {
    let lease = store.grant(ttl).await?;
    match store.acquire_job(job, holder, lease).await {
        Ok(Some(h)) if h == holder => {
            let renewer = tokio::spawn(renew(
                store.clone(),
                job,
                lease,
                (ttl / 3).max(Duration::from_secs(1)),
            ));
            Ok(Ok(Held {
                store: store.clone(),
                job,
                lease,
                renewer,
            }))
        }
        other => {
            let _ = store.revoke(lease).await;
            match other? {
                Some(h) => Ok(Err(h)),
                None => Ok(Err("another member".into())),
            }
        }
    }
}

impl Held {
    /// Stops renewing and deletes the key (it goes when its lease expires if the
    /// store does not answer now).
    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.store.revoke(self.lease).await {
            warn!(job = self.job, error = %e, "cannot release the job's key; it goes when its lease expires");
        }
    }
}

async fn renew(store: EtcdStore, job: &'static str, lease: LeaseId, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = store.keep_alive(lease).await {
            warn!(job, error = %e, "cannot renew the job's key; another member may start the job meanwhile");
            if matches!(e, StoreError::LeaseGone(_)) {
                return;
            }
        }
    }
}
