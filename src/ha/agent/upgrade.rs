//! A major upgrade under HA (`PGWARDEN_UPGRADE=on`, docs/upgrades.md), before the
//! bootstrap: with the cluster paused, the member that was the last primary takes the
//! vacant leader key and upgrades its PGDATA (the upgrade itself is
//! [`crate::upgrade`]'s); every other member follows it and, once it runs the new
//! major, clones it again.

use super::Ha;
use crate::ha::store::{Store, Term};
use crate::settings::{Role, Settings};
use anyhow::{bail, Result};
use tracing::{info, warn};

/// What this member does about an upgrade, from one view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upgrading {
    /// Take the vacant leader key, then upgrade.
    Acquire,
    /// The key is this member's, with its current lease: upgrade.
    Lead,
    /// Follow this leader: clone it again once it runs the new major.
    Follow(String),
    /// Not yet, for this reason.
    Wait(String),
    /// Never, for this reason (it names what to do).
    Refuse(String),
}

/// What this member knows about itself and the cluster, for [`upgrading`].
#[derive(Debug, Clone)]
pub(crate) struct Seen<'a> {
    /// This member's name.
    pub me: &'a str,
    /// The cluster is paused.
    pub paused: bool,
    /// Who holds the leader key, and whether it is bound to this run's lease.
    pub leader: Option<(&'a str, bool)>,
    /// PGDATA was a primary when it stopped (no standby.signal).
    pub was_primary: bool,
    /// The last term this member followed or led, and the last leader's.
    pub term: Term,
    /// The term of the last leader position recorded.
    pub last_leader_term: Option<Term>,
    /// This member's upgrade is under way already (its marker is there).
    pub under_way: bool,
}

/// Decides this member's part in an upgrade. Only the last leader upgrades: a member
/// that was a primary but missed a later term (a former leader that failed) would
/// upgrade data that lacks the last leader's commits.
pub(crate) fn upgrading(v: &Seen) -> Upgrading {
    if !v.paused {
        return Upgrading::Refuse(
            "PGWARDEN_UPGRADE: with PGWARDEN_HA=etcd a major upgrade runs with the cluster paused, so that nothing \
             fails over while the leader is down for it: run `pgwarden pause`, then start the members with the new \
             binaries, and `pgwarden resume` once the leader runs them (docs/upgrades.md)"
                .into(),
        );
    }
    let last_leader = v.was_primary && v.last_leader_term.is_none_or(|t| v.term >= t);
    match v.leader {
        Some((name, true)) if name == v.me => Upgrading::Lead,
        Some((name, false)) if name == v.me => Upgrading::Wait(
            "the leader key still names this member, bound to its previous run's lease; waiting for it to expire".into(),
        ),
        Some((name, _)) if v.under_way => Upgrading::Refuse(format!(
            "this member's upgrade is under way, but {name} holds the leader key; stop {name}, or see docs/upgrades.md"
        )),
        Some((name, _)) => Upgrading::Follow(name.to_owned()),
        None if v.under_way || last_leader => Upgrading::Acquire,
        None => Upgrading::Wait(
            "no leader yet: the last primary upgrades first, then this member clones it".into(),
        ),
    }
}

impl Ha {
    /// [`Ha::prepare`] for a PGDATA to be upgraded (or whose upgrade is under way):
    /// returns the settings to start with, as the leader that upgrades or as a member
    /// that follows it.
    pub(super) async fn prepare_upgrade(
        &mut self,
        s: &Settings,
        under_way: bool,
    ) -> Result<Settings> {
        let mut next = s.clone();
        let was_primary = !crate::replica::is_standby(&s.pgdata);
        let mut said = String::new();
        loop {
            self.renew().await;
            if !self.refresh().await {
                self.wait().await;
                continue;
            }
            let leader = self
                .view
                .leader
                .as_ref()
                .map(|l| (l.name.as_str(), Some(l.lease) == self.lease));
            let todo = upgrading(&Seen {
                me: &self.name,
                paused: self.view.paused,
                leader,
                was_primary,
                term: self.term_seen,
                last_leader_term: self.view.optime.map(|o| o.term),
                under_way,
            });
            match todo {
                Upgrading::Refuse(why) => bail!("{why}"),
                Upgrading::Wait(why) => {
                    if why != said {
                        info!(why, "HA: waiting before the upgrade");
                        said = why;
                    }
                }
                Upgrading::Lead => {
                    info!("HA: this member leads and upgrades the cluster");
                    next.role = Role::Primary;
                    return Ok(next);
                }
                Upgrading::Acquire => {
                    if let Some(lease) = self.lease {
                        match self.store.acquire_leader(&self.name, lease).await {
                            Ok(Some(term)) => {
                                info!(term, "HA: the last primary took the leader key to upgrade the cluster");
                                self.saw_term(s, term);
                                next.role = Role::Primary;
                                return Ok(next);
                            }
                            Ok(None) => {}
                            Err(e) => warn!(error = %e, "HA: cannot take the leader key"),
                        }
                    }
                }
                Upgrading::Follow(leader) => {
                    if let Some(t) = self.target(&leader) {
                        info!(leader, "HA: following the leader, to clone it again once it runs the new major");
                        s.upstream.set(Some(t));
                        next.role = Role::Replica;
                        return Ok(next);
                    }
                    let why =
                        format!("{leader} leads but has published no address yet (upgrading)");
                    if why != said {
                        info!(why, "HA: waiting before the upgrade");
                        said = why;
                    }
                }
            }
            self.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_leader_upgrades_and_only_paused() {
        let base = Seen {
            me: "n1",
            paused: true,
            leader: None,
            was_primary: true,
            term: 7,
            last_leader_term: Some(7),
            under_way: false,
        };
        let refused =
            |u: Upgrading, needle: &str| matches!(u, Upgrading::Refuse(m) if m.contains(needle));
        let waits = |u: Upgrading| matches!(u, Upgrading::Wait(_));
        // (case, view, expected)
        type Expect = Box<dyn Fn(Upgrading) -> bool>;
        let cases: Vec<(&str, Seen, Expect)> = vec![
            (
                "not paused: refused",
                Seen {
                    paused: false,
                    ..base.clone()
                },
                Box::new(move |u| refused(u, "pgwarden pause")),
            ),
            (
                "the last primary takes the vacant key",
                base.clone(),
                Box::new(|u| u == Upgrading::Acquire),
            ),
            (
                "no leader position on record: a primary may",
                Seen {
                    last_leader_term: None,
                    ..base.clone()
                },
                Box::new(|u| u == Upgrading::Acquire),
            ),
            (
                "a primary that missed a term waits",
                Seen {
                    term: 6,
                    ..base.clone()
                },
                Box::new(waits),
            ),
            (
                "a standby waits for the leader",
                Seen {
                    was_primary: false,
                    ..base.clone()
                },
                Box::new(waits),
            ),
            (
                "the key is ours: lead",
                Seen {
                    leader: Some(("n1", true)),
                    ..base.clone()
                },
                Box::new(|u| u == Upgrading::Lead),
            ),
            (
                "the key from our last run: wait for it to expire",
                Seen {
                    leader: Some(("n1", false)),
                    ..base.clone()
                },
                Box::new(waits),
            ),
            (
                "another leads: follow it",
                Seen {
                    leader: Some(("n2", true)),
                    ..base.clone()
                },
                Box::new(|u| u == Upgrading::Follow("n2".into())),
            ),
            (
                "a standby follows the leader",
                Seen {
                    leader: Some(("n2", false)),
                    was_primary: false,
                    ..base.clone()
                },
                Box::new(|u| u == Upgrading::Follow("n2".into())),
            ),
            (
                "under way: takes the key back",
                Seen {
                    under_way: true,
                    was_primary: false,
                    term: 1,
                    ..base.clone()
                },
                Box::new(|u| u == Upgrading::Acquire),
            ),
            (
                "under way while another leads: refused",
                Seen {
                    under_way: true,
                    leader: Some(("n2", false)),
                    ..base.clone()
                },
                Box::new(move |u| refused(u, "n2 holds the leader key")),
            ),
        ];
        for (case, seen, expected) in cases {
            let got = upgrading(&seen);
            assert!(expected(got.clone()), "{case}: {got:?}");
        }
    }
}
