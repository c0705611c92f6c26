//! Asking for a switchover (`POST /switchover`, `pgwarden switchover`, and
//! `pgwarden promote` in HA mode): the request is checked against the cluster as this
//! member last read it, recorded under the `failover` key, and answered once another
//! member holds the leader key. The leader performs it (see `Ha::hand_over`).

use super::decide::candidate;
use super::etcd::EtcdStore;
use super::status::HaStatus;
use super::store::{FailoverRequest, Store, StoreError};
use std::time::Duration;
use tokio::sync::watch;

/// Why a switchover was not done; each maps to its own HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// The HA loop has not read the cluster yet, or nobody holds the leader key.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The cluster is not in a state to hand over (an ineligible or unknown candidate,
    /// no eligible replica at all).
    #[error("{0}")]
    Refused(String),
    /// Another switchover is under way.
    #[error("a switchover is already under way")]
    UnderWay,
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The leader dropped the request, or it did not complete in time.
    #[error("{0}")]
    NotDone(String),
}

/// What a member needs to ask its cluster for a switchover.
#[derive(Clone)]
pub struct Switchover {
    pub(super) store: EtcdStore,
    pub(super) status: watch::Receiver<Option<HaStatus>>,
    pub(super) name: String,
    pub(super) max_lag: u64,
    pub(super) sync: bool,
    pub(super) within: Duration,
}

impl Switchover {
    /// This member's name (`pgwarden promote` asks for a switchover to it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The leader key's holder as this member last read it.
    pub fn leader(&self) -> Option<String> {
        self.status.borrow().as_ref().and_then(|h| h.leader.clone())
    }

    /// Hands the leadership over to `to` (or to the best replica) and returns the name
    /// of the new leader.
    pub async fn request(&self, to: Option<&str>) -> Result<String, SwitchoverError> {
        let ha = self.status.borrow().clone().ok_or_else(|| {
            SwitchoverError::NoLeader("the HA loop has not read the cluster yet".into())
        })?;
        let leader = ha
            .leader
            .clone()
            .ok_or_else(|| SwitchoverError::NoLeader("nobody holds the leader key".into()))?;
        // A request made against another leader is done (the new leader drops it
        // within a round) or stale: the store replaces it.
        if ha.failover.as_ref().is_some_and(|f| f.leader == leader) {
            return Err(SwitchoverError::UnderWay);
        }
        let sync = ha
            .sync
            .as_ref()
            .filter(|_| self.sync)
            .map(|s| s.members.as_slice());
        let chosen = candidate(
            &leader,
            &ha.members,
            ha.optime.as_ref(),
            to,
            self.max_lag,
            sync,
        )
        .map_err(SwitchoverError::Refused)?;
        let request = FailoverRequest {
            leader: leader.clone(),
            candidate: Some(chosen.clone()),
        };
        if !self.store.request_failover(&request).await? {
            return Err(SwitchoverError::UnderWay);
        }
        tracing::info!(leader = %leader, candidate = %chosen, "HA: switchover requested");
        let mut status = self.status.clone();
        let mut seen = false;
        // Answered only once the request is gone from the store too: the new leader
        // drops it once writable, and a caller that asks again at once (a script
        // switching back) must not find its own finished request "under way".
        let done = status.wait_for(|ha| {
            let Some(ha) = ha else { return false };
            let pending = ha.failover.as_ref() == Some(&request);
            seen |= pending;
            let moved = ha.leader.as_ref().is_some_and(|l| *l != leader);
            // Dropped by the leader: seen, then gone, with the leader unchanged.
            (moved && !pending) || (seen && ha.failover.is_none())
        });
        let outcome = match tokio::time::timeout(self.within, done).await {
            Ok(Ok(ha)) => (*ha).as_ref().and_then(|h| h.leader.clone()).filter(|l| *l != leader),
            _ => {
                return Err(SwitchoverError::NotDone(format!(
                    "no new leader after {:?}; the request stays in the store until {leader} takes it or drops it",
                    self.within
                )))
            }
        };
        let new = outcome.ok_or_else(|| {
            SwitchoverError::NotDone(format!(
                "{leader} dropped the request (see its log); it is still the leader"
            ))
        })?;
        // The candidate may have given way to a member with more WAL (a hand-over cut
        // short): the cluster is safe, but not as asked, and a script must know.
        match to {
            Some(to) if to != new => Err(SwitchoverError::NotDone(format!(
                "{new} took over instead of {to} (see their logs): {new} had received more WAL, or {to} could not promote"
            ))),
            _ => Ok(new),
        }
    }

    /// A manual failover to `to` (`pgwarden failover --to NAME --force`): with a
    /// leader, a switchover to `to`; with none, `to` is promoted without the
    /// eligibility checks (lag, timeline, term, synchronous record), at the risk of
    /// losing what it does not have, which the caller accepted. Returns the new leader.
    pub async fn failover(&self, to: &str) -> Result<String, SwitchoverError> {
        let ha = self.status.borrow().clone().ok_or_else(|| {
            SwitchoverError::NoLeader("the HA loop has not read the cluster yet".into())
        })?;
        if ha.leader.is_some() {
            return self.request(Some(to)).await;
        }
        let member = ha.members.iter().find(|m| m.name == to).ok_or_else(|| {
            SwitchoverError::Refused(format!("{to} is not a member of the cluster"))
        })?;
        if member.role != super::store::MemberRole::Replica {
            return Err(SwitchoverError::Refused(format!(
                "{to} is not running as a replica"
            )));
        }
        if !member.tags.promotable() {
            return Err(SwitchoverError::Refused(format!(
                "{to} is tagged nofailover"
            )));
        }
        let request = FailoverRequest {
            leader: String::new(),
            candidate: Some(to.to_owned()),
        };
        if !self.store.request_failover(&request).await? {
            return Err(SwitchoverError::UnderWay);
        }
        tracing::warn!(candidate = %to, "HA: manual failover requested: it is promoted without the eligibility checks");
        let mut status = self.status.clone();
        let done = status.wait_for(|ha| {
            ha.as_ref().is_some_and(|h| {
                h.leader.as_deref() == Some(to) && h.failover.as_ref() != Some(&request)
            })
        });
        let taken = matches!(tokio::time::timeout(self.within, done).await, Ok(Ok(_)));
        match taken {
            true => Ok(to.to_owned()),
            false => Err(SwitchoverError::NotDone(format!(
                "{to} did not take over within {:?}; the request stays in the store until it does or a leader drops it",
                self.within
            ))),
        }
    }

    /// Pauses (`true`) or resumes the cluster's automatic actions.
    pub async fn pause(&self, paused: bool) -> Result<(), SwitchoverError> {
        self.store.set_pause(paused).await?;
        tracing::warn!(
            paused,
            "HA: {}",
            if paused {
                "the cluster is paused: no automatic failover until resumed"
            } else {
                "the cluster resumes automatic failover"
            }
        );
        Ok(())
    }
}
