//! A cluster-wide job one member at a time (a scheduled restore drill, a scheduled
//! backup): the member that runs it holds `jobs/<job>` (see [`EtcdStore::acquire_job`])
//! on a lease of the job's own, renewed while the job runs, so that the key goes
//! with a member that dies mid-job and another may run the next one.

use super::etcd::EtcdStore;
use super::store::{LeaseId, Store, StoreError};
use std::time::Duration;
use tracing::warn;

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
