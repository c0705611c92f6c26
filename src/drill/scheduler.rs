//! `PGWARDEN_DRILL_SCHEDULE` under `pgwarden run`: a drill when one is due, with the
//! syntax and the counting of `PGWARDEN_BACKUP_SCHEDULE` (from the start of the last
//! drill, this instance's or, under HA, the cluster's).
//!
//! Without HA a drill runs where it is due. With `PGWARDEN_HA=etcd` it runs on a
//! replica (a drill reads the archive and fills a disk: the primary serves the
//! writes), and on the primary only when the cluster has no replica; one member at a
//! time, through the `jobs/drill` key. A member that finds another drilling counts
//! that drill as its own.

use super::{NotRun, Request, Tracker, Trigger};
use crate::backup::schedule::Schedule;
use crate::civil;
use crate::ha::etcd::EtcdStore;
use crate::ha::job;
use crate::ha::store::{MemberRole, Store};
use crate::process::Runner;
use crate::settings::restore::RecoveryTarget;
use crate::settings::{Role, Settings};
use crate::state::SupervisorStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The role this instance runs as now, when postgres is ready in it.
pub type Local = Arc<dyn Fn() -> Option<Role> + Send + Sync>;

/// How often a due drill that waits checks again.
const RECHECK: Duration = Duration::from_secs(5);
/// The longest single sleep: the clock and the cluster's record are read again after.
const LONGEST_SLEEP: Duration = Duration::from_secs(30);
/// The job's name in the store.
const JOB: &str = "drill";

/// What a member does with a due drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Drill now.
    Run,
    /// Not now: check again shortly.
    Wait(String),
    /// Another member drills: this due drill counts as done.
    Skip(String),
}

/// Whether this member drills now: without HA, always; with it, a ready replica, or
/// the ready primary of a cluster with no replica (`other_replicas`: the other
/// members running as replicas).
pub fn turn(ha: bool, local: Option<Role>, other_replicas: usize) -> Turn {
    match (ha, local) {
        (false, _) => Turn::Run,
        (true, None) => Turn::Wait("postgres is not ready here".into()),
        (true, Some(Role::Replica)) => Turn::Run,
        (true, Some(Role::Primary)) if other_replicas > 0 => Turn::Skip(format!(
            "this member is the primary; one of the {other_replicas} replicas drills"
        )),
        (true, Some(Role::Primary)) => Turn::Run,
    }
}

/// The scheduling task.
pub struct Scheduler {
    /// When drills are due.
    pub schedule: Schedule,
    /// The running settings.
    pub settings: Arc<Settings>,
    /// Spawns the drill's processes through the reaper.
    pub runner: Runner,
    /// Shared with `/status` and `/metrics`.
    pub tracker: Arc<Tracker>,
    /// This instance's role, when ready.
    pub local: Local,
    /// The supervisor's status: a drill under way stops when pgwarden exits.
    pub supervisor: watch::Receiver<SupervisorStatus>,
}

impl Scheduler {
    /// Runs for as long as pgwarden does.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(self) {
        let cancel = CancellationToken::new();
        let mut sup = self.supervisor.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                if sup.borrow_and_update().exiting {
                    stop.cancel();
                    return;
                }
                if sup.changed().await.is_err() {
                    return;
                }
            }
        });
        let store = match &self.settings.ha {
            Some(h) => match EtcdStore::connect(&h.endpoints, &h.cluster, h.retry_timeout).await {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "scheduled drills: cannot reach etcd; no drill runs until pgwarden restarts");
                    return;
                }
            },
            None => None,
        };
        let started = SystemTime::now();
        let mut skipped: Option<SystemTime> = None;
        // Why the last due drill did not run here, shown until one does.
        let mut note: Option<String> = None;
        while !cancel.is_cancelled() {
            let now = SystemTime::now();
            let own = self
                .tracker
                .record()
                .ok()
                .and_then(|r| r.last)
                .map(|l| from_unix(l.started_unix));
            let cluster = match &store {
                Some(st) => job::last(st, JOB).await.map(|l| l.started()),
                None => None,
            };
            let last = own.max(cluster).max(skipped);
            let due = self.schedule.next(now, last, started);
            let next = Some(civil::rfc3339(due));
            if let Ok(wait) = due.duration_since(now) {
                if !wait.is_zero() {
                    self.tracker.set_schedule(next, note.clone());
                    tokio::select! {
                        _ = tokio::time::sleep(wait.min(LONGEST_SLEEP)) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            }
            let others = match &store {
                Some(st) => match st.read().await {
                    Ok(view) => view
                        .members
                        .iter()
                        .filter(|m| m.name != self.settings.name && m.role == MemberRole::Replica)
                        .count(),
                    Err(e) => {
                        self.wait(next, format!("etcd: {e}"), &cancel).await;
                        continue;
                    }
                },
                None => 0,
            };
            match turn(store.is_some(), (self.local)(), others) {
                Turn::Run => {}
                Turn::Wait(why) => {
                    self.wait(next, why, &cancel).await;
                    continue;
                }
                Turn::Skip(why) => {
                    info!(reason = %why, "a scheduled drill is due; another member runs it");
                    note = Some(why);
                    skipped = Some(now);
                    continue;
                }
            }
            let held = match &store {
                Some(st) => {
                    match job::hold(st, JOB, &self.settings.name, ttl(&self.settings)).await {
                        Ok(Ok(held)) => Some(held),
                        Ok(Err(holder)) => {
                            let why = format!("member {holder} is running the cluster's drill");
                            info!(reason = %why, "a scheduled drill is due; skipped");
                            note = Some(why);
                            skipped = Some(now);
                            continue;
                        }
                        Err(e) => {
                            self.wait(next, format!("etcd: {e}"), &cancel).await;
                            continue;
                        }
                    }
                }
                None => None,
            };
            note = None;
            self.tracker.set_schedule(next, None);
            let req = Request {
                backup_id: None,
                target: RecoveryTarget::End,
                trigger: Trigger::Schedule,
            };
            let result = super::drill(
                &self.settings,
                &req,
                &self.runner,
                &cancel,
                Some(&self.tracker),
            )
            .await;
            if let (Some(st), Some(held)) = (&store, held) {
                if let Ok(r) = &result {
                    let last = job::LastRun {
                        member: self.settings.name.clone(),
                        started_unix: r.started_unix,
                        ok: r.ok,
                    };
                    if let Err(e) = job::record(st, JOB, &last).await {
                        warn!(error = %e, "cannot record the drill in etcd; other members may drill again");
                    }
                }
                held.release().await;
            }
            match result {
                Ok(_) => {}
                Err(NotRun::Busy(d)) => {
                    // A `pgwarden restore-drill` holds the directory: it counts.
                    info!(dir = %d, "a scheduled drill is due but one is already running here; skipped");
                    note = Some(format!("a drill was already running in {d}"));
                    skipped = Some(now);
                }
                Err(NotRun::Interrupted) => return,
                Err(e) => {
                    tracing::error!(error = %e, "a scheduled drill could not run");
                    note = Some(e.to_string());
                    skipped = Some(now);
                }
            }
        }
    }

    async fn wait(&self, next: Option<String>, why: String, cancel: &CancellationToken) {
        self.tracker.set_schedule(next, Some(why));
        tokio::select! {
            _ = tokio::time::sleep(RECHECK) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// The lease of the drill key: the HA session's TTL.
fn ttl(s: &Settings) -> Duration {
    s.ha.as_ref()
        .map(|h| h.ttl)
        .unwrap_or(Duration::from_secs(30))
}

fn from_unix(secs: f64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_drills() {
        let cases = [
            (false, None, 0, "run"),
            (false, Some(Role::Primary), 3, "run"),
            (true, None, 2, "wait"),
            (true, Some(Role::Replica), 2, "run"),
            (true, Some(Role::Primary), 1, "skip"),
            (true, Some(Role::Primary), 0, "run"),
        ];
        for (ha, local, others, want) in cases {
            let got = match turn(ha, local, others) {
                Turn::Run => "run",
                Turn::Wait(_) => "wait",
                Turn::Skip(_) => "skip",
            };
            assert_eq!(got, want, "{ha} {local:?} {others}");
        }
    }
}
