//! Failsafe mode (`PGWARDEN_FAILSAFE=on`, Patroni's `failsafe_mode`): when etcd cannot
//! be reached, a leader that every other member confirms over HTTP keeps running
//! instead of fencing itself.
//!
//! The leader records who the members are under the `failsafe` key while etcd works.
//! When a renewal fails because etcd does not answer, it `POST`s `/failsafe` to every
//! member of that record; each member running with failsafe on and not itself a
//! primary accepts, and from then on, for a TTL, does not race for the leader key (it
//! treats the caller as the leader even once etcd answers without a leader key). Only
//! if every member accepts does the leader count the round as a renewal: all of them
//! are needed, not a majority, since a member that cannot be reached might be the one
//! that can reach etcd and take over. The first member that refuses or does not
//! answer, and the leader fences as usual.
//!
//! What it costs: an etcd outage no longer stops writes, but a leader is then kept by
//! its members alone; a member that cannot reach it in time ends it.

use super::clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// On a member: the last leader that asked to be kept, and when (boot clock).
#[derive(Debug, Clone, Default)]
pub struct Accepted(Arc<Mutex<Option<(String, Duration)>>>);

impl Accepted {
    /// Records that `leader` asked now.
    pub fn accept(&self, leader: &str) {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some((leader.to_owned(), clock::now()));
    }

    /// The leader that asked within `ttl`, if any.
    pub fn leader_within(&self, ttl: Duration) -> Option<String> {
        let g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.as_ref()
            .filter(|(_, at)| clock::now().saturating_sub(*at) < ttl)
            .map(|(name, _)| name.clone())
    }
}

/// The `failsafe` record: every member's HTTP API by name, the leader's included.
pub type Members = BTreeMap<String, String>;

/// Why a member's answer does not keep the leader: `None` when it accepted.
pub fn refused(status: Option<u16>) -> Option<String> {
    match status {
        Some(200) => None,
        Some(500) => Some("it runs as a primary".into()),
        Some(502) => Some("failsafe mode is off there".into()),
        Some(code) => Some(format!("it answered {code}")),
        None => Some("it did not answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acceptance_lasts_a_ttl() {
        let a = Accepted::default();
        assert_eq!(a.leader_within(Duration::from_secs(5)), None);
        a.accept("n1");
        assert_eq!(
            a.leader_within(Duration::from_secs(5)).as_deref(),
            Some("n1")
        );
        assert_eq!(a.leader_within(Duration::ZERO), None);
    }

    #[test]
    fn only_200_keeps_the_leader() {
        assert_eq!(refused(Some(200)), None);
        for s in [Some(500), Some(502), Some(401), None] {
            assert!(refused(s).is_some(), "{s:?}");
        }
    }
}
