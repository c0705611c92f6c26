//! Under HA, which member takes a scheduled backup (`PGWARDEN_BACKUP_TARGET`,
//! CloudNativePG's `prefer-standby`/`primary`): decided from the member keys every
//! member reads, so that they agree on one without talking to each other.
//!
//! With `prefer-standby`, the healthy replica with the lowest name takes it; the
//! primary when no replica is healthy. A replica is healthy when it runs as one,
//! streams now, has followed the current leader's term, is on the leader's timeline,
//! and has replayed the WAL it received to within `PGWARDEN_MAX_LAG_ON_FAILOVER`.
//! How far a streaming replica is behind the primary does not matter to the backup's
//! worth: a restore replays the archive's WAL from wherever the backup ends. A member
//! that is not chosen does not take it; the primary takes over when the chosen replica
//! has not taken the cluster's backup key within a grace period (the loop in [`super::scheduler`] decides when, and the key ensures one
//! backup at a time).

use crate::ha::store::{ClusterView, MemberRole, MemberState};
use crate::settings::Role;

/// Where scheduled backups run under HA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// On a healthy replica, else on the primary.
    #[default]
    PreferStandby,
    /// On the primary only.
    Primary,
}

impl Target {
    /// Parses the setting's value; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Target, String> {
        match text.trim() {
            "prefer-standby" => Ok(Target::PreferStandby),
            "primary" => Ok(Target::Primary),
            other => Err(format!("{other:?} is not prefer-standby or primary")),
        }
    }
}

/// What one member does with a due scheduled backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// This member takes it, running as this role.
    Take(Role),
    /// This member is the primary and replica `0` is chosen: it takes the backup
    /// only if that replica has not within the grace period.
    Fallback(String),
    /// Member `0` takes it, not this one.
    Other(String),
    /// Nobody can now: the cluster has no leader.
    Wait(String),
}

/// Whether `m` may take the backup instead of the leader. Its lag is the WAL it
/// has received and not replayed yet, both published at one instant: two members'
/// positions are published up to a loop apart, and a busy primary writes more than
/// the bound between two publications, so comparing them would make a streaming
/// replica look behind (and the choice flap) exactly when the primary is busiest.
fn healthy(m: &MemberState, view: &ClusterView, max_lag: u64) -> bool {
    let Some(leader) = &view.leader else {
        return false;
    };
    let leader_timeline = view
        .member(&leader.name)
        .and_then(|l| l.timeline)
        .or(view.optime.map(|o| o.timeline));
    let on_timeline = match (leader_timeline, m.timeline) {
        (Some(l), Some(t)) => l == t,
        // A leader that published no timeline yet: its term says enough.
        (None, _) => true,
        (Some(_), None) => false,
    };
    let within_lag = match (m.received_lsn, m.replayed_lsn) {
        (Some(r), Some(p)) => r.saturating_sub(p) <= max_lag,
        _ => false,
    };
    m.name != leader.name
        && m.role == MemberRole::Replica
        && m.streaming
        && m.term == leader.term
        && on_timeline
        && within_lag
}

/// Which member takes the scheduled backup, seen from member `me`: with
/// [`Target::PreferStandby`], the healthy replica with the lowest name (members are
/// sorted by name), else the leader; with [`Target::Primary`], the leader.
pub fn backup_member(view: &ClusterView, me: &str, target: Target, max_lag: u64) -> Choice {
    let Some(leader) = &view.leader else {
        return Choice::Wait("the cluster has no leader".into());
    };
    let standby = match target {
        Target::Primary => None,
        Target::PreferStandby => view
            .members
            .iter()
            .filter(|m| healthy(m, view, max_lag))
            .map(|m| m.name.as_str())
            .min(),
    };
    match standby {
        Some(s) if s == me => Choice::Take(Role::Replica),
        Some(s) if leader.name == me => Choice::Fallback(s.to_owned()),
        Some(s) => Choice::Other(s.to_owned()),
        None if leader.name == me => Choice::Take(Role::Primary),
        None => Choice::Other(leader.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::store::{Leader, Optime, Tags};

    fn member(name: &str, role: MemberRole, lsn: u64) -> MemberState {
        MemberState {
            name: name.into(),
            host: "h".into(),
            port: 5432,
            api_url: String::new(),
            role,
            timeline: Some(2),
            received_lsn: Some(lsn),
            replayed_lsn: Some(lsn),
            term: 7,
            streaming: role == MemberRole::Replica,
            tags: Tags::default(),
        }
    }

    /// Leader `a` at 10 000, replicas `b` and `c` streaming close behind.
    fn view() -> ClusterView {
        ClusterView {
            leader: Some(Leader {
                name: "a".into(),
                term: 7,
                lease: 1,
            }),
            members: vec![
                member("a", MemberRole::Primary, 10_000),
                member("b", MemberRole::Replica, 9_990),
                member("c", MemberRole::Replica, 10_000),
            ],
            optime: Some(Optime {
                term: 7,
                timeline: 2,
                lsn: 9_000,
            }),
            ..ClusterView::default()
        }
    }

    fn with(name: &str, f: impl Fn(&mut MemberState)) -> ClusterView {
        let mut v = view();
        v.members.iter_mut().filter(|m| m.name == name).for_each(f);
        v
    }

    fn take(role: Role) -> Choice {
        Choice::Take(role)
    }
    fn fallback(s: &str) -> Choice {
        Choice::Fallback(s.into())
    }
    fn other(s: &str) -> Choice {
        Choice::Other(s.into())
    }

    #[test]
    fn the_healthy_replica_with_the_lowest_name_else_the_primary() {
        use MemberRole::*;
        let pf = Target::PreferStandby;
        let lag = 100;
        let cases: Vec<(&str, ClusterView, &str, Target, Choice)> = vec![
            (
                "both healthy: b, the lowest name",
                view(),
                "b",
                pf,
                take(Role::Replica),
            ),
            ("c defers to b", view(), "c", pf, other("b")),
            (
                "the primary falls back to b",
                view(),
                "a",
                pf,
                fallback("b"),
            ),
            (
                "target primary: the leader",
                view(),
                "a",
                Target::Primary,
                take(Role::Primary),
            ),
            (
                "target primary: a replica leaves it",
                view(),
                "b",
                Target::Primary,
                other("a"),
            ),
            (
                "b has more WAL to replay than the bound: c",
                with("b", |m| m.replayed_lsn = Some(9_000)),
                "c",
                pf,
                take(Role::Replica),
            ),
            (
                "exactly the bound behind is within it",
                with("b", |m| m.replayed_lsn = Some(9_890)),
                "b",
                pf,
                take(Role::Replica),
            ),
            (
                "b published an older position than the leader's: it streams, it is fine",
                with("b", |m| {
                    m.received_lsn = Some(1_000);
                    m.replayed_lsn = Some(1_000);
                }),
                "b",
                pf,
                take(Role::Replica),
            ),
            (
                "b does not stream (replays the archive): c",
                with("b", |m| m.streaming = false),
                "b",
                pf,
                other("c"),
            ),
            (
                "b is stopped (fenced, being cloned): c",
                with("b", |m| m.role = Stopped),
                "a",
                pf,
                fallback("c"),
            ),
            (
                "b missed the current term: c",
                with("b", |m| m.term = 6),
                "c",
                pf,
                take(Role::Replica),
            ),
            (
                "b is on another timeline: c",
                with("b", |m| m.timeline = Some(1)),
                "c",
                pf,
                take(Role::Replica),
            ),
            (
                "b's position is unknown: c",
                with("b", |m| m.received_lsn = None),
                "c",
                pf,
                take(Role::Replica),
            ),
            (
                "a nofailover replica backs up all the same",
                with("b", |m| m.tags.nofailover = true),
                "b",
                pf,
                take(Role::Replica),
            ),
            (
                "a primary member key that says primary is never a standby",
                with("b", |m| m.role = Primary),
                "b",
                pf,
                other("c"),
            ),
        ];
        for (what, v, me, target, want) in cases {
            assert_eq!(backup_member(&v, me, target, lag), want, "{what}");
        }
    }

    #[test]
    fn no_healthy_replica_leaves_it_to_the_primary() {
        // A single member.
        let mut v = view();
        v.members.truncate(1);
        assert_eq!(
            backup_member(&v, "a", Target::PreferStandby, 100),
            take(Role::Primary)
        );
        // Both replicas stuck replaying.
        let mut v = view();
        for m in v.members.iter_mut().skip(1) {
            m.replayed_lsn = Some(1_000);
        }
        assert_eq!(
            backup_member(&v, "a", Target::PreferStandby, 100),
            take(Role::Primary)
        );
        assert_eq!(
            backup_member(&v, "b", Target::PreferStandby, 100),
            other("a")
        );
        // The leader's member key is gone: its recorded optime gives the timeline.
        let mut v = view();
        v.members.remove(0);
        assert_eq!(
            backup_member(&v, "b", Target::PreferStandby, 100),
            take(Role::Replica)
        );
        assert_eq!(
            backup_member(&v, "c", Target::PreferStandby, 100),
            other("b")
        );
        // No leader: nobody.
        let mut v = view();
        v.leader = None;
        assert!(matches!(
            backup_member(&v, "b", Target::PreferStandby, 100),
            Choice::Wait(_)
        ));
    }

    #[test]
    fn parses_the_setting() {
        assert_eq!(Target::parse("primary"), Ok(Target::Primary));
        assert_eq!(Target::parse("prefer-standby"), Ok(Target::PreferStandby));
        assert!(Target::parse("standby")
            .unwrap_err()
            .contains("prefer-standby"));
    }
}
