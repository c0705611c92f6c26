//! One round of the HA loop as a pure function: the published cluster state plus what
//! this member knows about its own postgres, in; one action, out. Everything that can
//! make two primaries is decided here, so it is tested here, case by case.
//!
//! The rules, in the order they apply:
//! 1. An empty PGDATA races for the initialize key; the winner runs initdb (or restores
//!    a backup), the others clone the leader once it runs as a primary. A winner that
//!    restored holds the key and never promotes: postgres promotes itself at the
//!    recovery target.
//! 2. A writable postgres must hold the leader key with this process's lease and have
//!    renewed it within `demote_after`; otherwise it is fenced at once.
//! 3. The key holder leads (promoting or starting postgres writable first).
//! 4. With a leader elsewhere, follow it (re-point, or rejoin through pg_rewind).
//! 5. With no leader, race only if eligible (timeline, term and WAL position against the
//!    last recorded optime), no primary is running, and no eligible peer is ahead.
//!
//! A switchover request (the `failover` key) changes rules 3 and 5: the leader hands
//! over to an eligible candidate (or drops a request it cannot honour), and with no
//! leader only the candidate races, whatever its peers received, while it can.

use super::store::{
    ClusterView, FailoverRequest, LeaseId, MemberRole, MemberState, Optime, Tags, Term,
};
use std::time::Duration;

/// What postgres is doing on this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postgres {
    /// Not running (starting up, crashed, being cloned, stopped by a fence).
    Stopped,
    /// Running and accepting writes.
    Primary,
    /// Running in recovery, streaming from `upstream` (a member name) if set.
    Replica {
        /// The member whose address is in primary_conninfo.
        upstream: Option<String>,
    },
}

/// This member's own facts for one round.
#[derive(Debug, Clone)]
pub struct Me {
    /// Instance name.
    pub name: String,
    /// The session lease, when one is granted and not known to be gone.
    pub lease: Option<LeaseId>,
    /// Time since the keep-alive that last succeeded was sent; `None` when none has.
    pub since_renewal: Option<Duration>,
    /// Whether PGDATA holds a cluster.
    pub has_data: bool,
    /// postgres's state.
    pub postgres: Postgres,
    /// postgres's timeline, when known.
    pub timeline: Option<u32>,
    /// WAL received (or written, on a primary), when known.
    pub received_lsn: Option<u64>,
    /// The latest term whose leader this member followed or was.
    pub term_seen: Term,
    /// This member's WAL went past where the leader's timeline forked from it, so
    /// streaming cannot resume without pg_rewind.
    pub diverged: bool,
    /// How long this member, with an empty PGDATA, has seen the same initialize winner
    /// hold no leader key in a cluster that never had a leader.
    pub initialize_stalled_for: Duration,
    /// This member's tags.
    pub tags: Tags,
    /// Failsafe mode, on a primary: every member confirmed it since etcd stopped
    /// answering, within `demote_after` (it also counts in `since_renewal`).
    pub failsafe: bool,
    /// Failsafe mode, on a member: a leader that cannot reach etcd asked, within the
    /// TTL, to be kept; this member does not race.
    pub failsafe_leader: Option<String>,
    /// pg_rewind failed and the data was kept (`PGWARDEN_REWIND_FAILED=keep`): a
    /// diverged member waits for `pgwarden reinit` rather than rewinding again.
    pub rewind_failed: bool,
    /// How long this member has held the leader key while its postgres did not answer
    /// as writable (fenced, starting, in crash recovery, promoting); zero otherwise.
    pub unwritable_for: Duration,
    /// PGDATA holds a backup this member restored as the initialize winner, still
    /// recovering to its target (recovery.signal): postgres promotes itself there.
    pub restoring: bool,
}

/// The settings decisions depend on.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A primary that has not renewed for this long stops accepting writes.
    pub demote_after: Duration,
    /// A replica further behind the last optime never promotes itself.
    pub max_lag: u64,
    /// Synchronous mode is on: with a `sync` key, only the members it names may be
    /// promoted.
    pub sync: bool,
    /// An initialize winner that has held no leader key for this long (the TTL: it
    /// takes the key right after winning and keeps it through initdb) is gone.
    pub initialize_abandoned_after: Duration,
    /// A key holder whose postgres has not run writable for this long gives the key up.
    pub primary_start_timeout: Duration,
}

/// What to do this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Empty PGDATA, nobody initialized the cluster: race for the initialize key.
    RaceInitialize,
    /// This member won the initialize key: run initdb.
    Initdb,
    /// The initialize key names a member that died before the cluster ever had a
    /// leader: delete it (if it still names `winner`) so that the race starts again.
    AbandonInitialize {
        /// The member it names.
        winner: String,
    },
    /// Empty PGDATA: clone the leader with pg_basebackup.
    Clone {
        /// The leader to copy.
        from: String,
    },
    /// Stop accepting writes now: immediate shutdown, start again as a standby.
    Fence {
        /// Why, for the log.
        why: String,
    },
    /// Hold the key: postgres is writable, keep renewing and publishing the optime.
    Lead,
    /// Give the key up: postgres has not run writable for `primary_start_timeout`
    /// (fenced, or a crash recovery or start that does not end). postgres is fenced
    /// first, so that it cannot come up writable once the key is gone.
    Release {
        /// Why, for the log.
        why: String,
    },
    /// The key is ours but postgres is in recovery: promote it.
    Promote,
    /// The key is ours and postgres is down: start it writable.
    StartPrimary,
    /// postgres is down: start it as a standby, following `leader` if one is known.
    StartStandby {
        /// The member to stream from.
        leader: Option<String>,
    },
    /// Stream from `leader`; `repoint` when primary_conninfo names someone else.
    Follow {
        /// The leader.
        leader: String,
        /// primary_conninfo must be rewritten and reloaded.
        repoint: bool,
    },
    /// This member diverged from `leader`: stop, pg_rewind, start as its standby.
    Rejoin {
        /// The leader to rewind from.
        leader: String,
    },
    /// Try to take the leader key; promote on success.
    Acquire,
    /// Switchover: stop postgres cleanly, wait until `candidate` has received its
    /// shutdown checkpoint, release the key and come back as `candidate`'s standby.
    HandOver {
        /// The member that is to lead.
        candidate: String,
    },
    /// Drop the switchover request: done (this member leads now), stale, or one this
    /// leader cannot honour (`why`).
    ClearFailover {
        /// Why, for the log.
        why: String,
    },
    /// Nothing to do but wait; `why` says what for.
    Wait {
        /// Why, for the log and /status.
        why: String,
    },
}

fn wait(why: impl Into<String>) -> Action {
    Action::Wait { why: why.into() }
}

/// Decides this round's action.
pub fn decide(view: &ClusterView, me: &Me, rules: Rules) -> Action {
    let action = decide_active(view, me, rules);
    match view.paused {
        true => paused(view, me, action),
        false => action,
    }
}

/// While the cluster is paused for maintenance (Patroni's pause): nothing automatic
/// stops, demotes or rebuilds postgres, and nobody races (the race checks the pause
/// itself; a manual failover or a switchover to a named member still runs). The key
/// holder keeps leading, and a running primary takes a vacant key.
fn paused(view: &ClusterView, me: &Me, action: Action) -> Action {
    match action {
        Action::Fence { .. } if view.leader.is_none() && me.postgres == Postgres::Primary => {
            Action::Acquire
        }
        Action::Fence { why } => wait(format!("the cluster is paused: not fencing ({why})")),
        Action::Rejoin { leader } => wait(format!(
            "the cluster is paused: not rewinding to rejoin {leader}"
        )),
        Action::Release { why } => wait(format!(
            "the cluster is paused: keeping the leader key ({why})"
        )),
        other => other,
    }
}

fn decide_active(view: &ClusterView, me: &Me, rules: Rules) -> Action {
    if !me.has_data {
        return bootstrap(view, me, rules);
    }
    let holds_key = match (&view.leader, me.lease) {
        (Some(l), Some(lease)) => l.name == me.name && l.lease == lease,
        _ => false,
    };
    let renewed = me.since_renewal.is_some_and(|d| d < rules.demote_after);
    if me.postgres == Postgres::Primary {
        // Failsafe: the key expired while etcd was out of reach, but every member has
        // confirmed this leader since: it takes the key back rather than fencing.
        if !holds_key && me.failsafe && view.leader.as_ref().is_none_or(|l| l.name == me.name) {
            return match (&view.leader, me.lease) {
                (None, Some(_)) => Action::Acquire,
                _ => wait("failsafe: every member keeps this leader; waiting to take its key back"),
            };
        }
        if !holds_key {
            return Action::Fence {
                why: match &view.leader {
                    Some(l) if l.name != me.name => format!("{} holds the leader key", l.name),
                    Some(_) => "the leader key is bound to another lease of this member".into(),
                    None => "this member does not hold the leader key".into(),
                },
            };
        }
        if !renewed {
            return Action::Fence {
                why: "the leader lease was not renewed in time".into(),
            };
        }
        if let Some(release) = stuck(me, rules) {
            return release;
        }
        if let Some(req) = &view.failover {
            return switchover(view, me, req, rules);
        }
        return Action::Lead;
    }
    if me.restoring {
        return restoring(view, me, holds_key, renewed);
    }
    if holds_key {
        // Not writable yet. Without a fresh renewal the lease may be about to expire:
        // promoting now could outlive it.
        if !renewed {
            return wait("the leader lease was not renewed in time");
        }
        if let Some(release) = stuck(me, rules) {
            return release;
        }
        return match me.postgres {
            Postgres::Stopped => Action::StartPrimary,
            _ => Action::Promote,
        };
    }
    match &view.leader {
        Some(l) if l.name == me.name => {
            // A lease of an earlier run of this member: it expires by itself.
            stopped_or(me, None, || {
                wait("an earlier run of this member still holds the leader key")
            })
        }
        Some(l) => match view.member(&l.name) {
            None => stopped_or(me, None, || {
                wait(format!("leader {} has not published its address", l.name))
            }),
            Some(_) if me.diverged && me.rewind_failed => wait(format!(
                "this member diverged from {} and pg_rewind failed; `pgwarden reinit` rebuilds it",
                l.name
            )),
            Some(_) if me.diverged => Action::Rejoin {
                leader: l.name.clone(),
            },
            Some(_) => stopped_or(me, Some(&l.name), || Action::Follow {
                leader: l.name.clone(),
                repoint: !matches!(&me.postgres, Postgres::Replica { upstream: Some(u) } if *u == l.name),
            }),
        },
        None => stopped_or(me, None, || race(view, me, rules)),
    }
}

/// The initialize winner recovering the backup it restored. It holds the key however
/// long recovery takes (no `primary_start_timeout`: replaying a large archive is not a
/// start that hangs) and never promotes: the recovery target is postgres's to reach,
/// and a promotion before it would lose what the user asked for. A restore that lost
/// its claim to another member is stopped before it can promote itself.
fn restoring(view: &ClusterView, me: &Me, holds_key: bool, renewed: bool) -> Action {
    match &view.leader {
        _ if holds_key && renewed => {
            wait("recovering the restored backup to its target; postgres promotes itself there")
        }
        _ if holds_key => wait("the leader lease was not renewed in time"),
        Some(l) if l.name != me.name => Action::Fence {
            why: format!(
                "{} leads: this member's restore lost its claim to the cluster",
                l.name
            ),
        },
        // A lease of an earlier run of this member: it expires by itself.
        Some(_) => wait("an earlier run of this member still holds the leader key"),
        None if view.initialize.as_deref() == Some(me.name.as_str())
            && view.optime.is_none()
            && view.history.is_empty() =>
        {
            Action::Acquire
        }
        None => Action::Fence {
            why: "this member's restore lost its claim to the cluster (the initialize key)".into(),
        },
    }
}

/// The key holder whose postgres has not answered as writable for
/// `primary_start_timeout` (a running postgres that does not answer counts as
/// possibly writable, and is fenced all the same) hands the cluster to a member that can.
fn stuck(me: &Me, rules: Rules) -> Option<Action> {
    (me.unwritable_for >= rules.primary_start_timeout).then(|| Action::Release {
        why: format!(
            "postgres has not run writable for {} s (PGWARDEN_PRIMARY_START_TIMEOUT)",
            me.unwritable_for.as_secs()
        ),
    })
}

/// Rules 3 with a switchover request, on the writable key holder.
fn switchover(view: &ClusterView, me: &Me, req: &FailoverRequest, rules: Rules) -> Action {
    if req.leader != me.name {
        return Action::ClearFailover {
            why: match req.leader.as_str() {
                "" => "done: a manual failover made this member the leader".to_owned(),
                l => format!("done or stale: it was made against {l}"),
            },
        };
    }
    if view.paused && req.candidate.is_none() {
        return Action::ClearFailover {
            why: "the cluster is paused: a switchover must name its candidate".into(),
        };
    }
    // A named replica that has not published its position yet (just started, or its
    // key read a moment before it did: the request wakes every member at once) is not
    // refused for it: the leader goes on leading and looks again next round.
    let unpublished = req
        .candidate
        .as_deref()
        .and_then(|c| view.member(c))
        .is_some_and(|m| {
            m.role == MemberRole::Replica && (m.timeline.is_none() || m.received_lsn.is_none())
        });
    if unpublished {
        return Action::Lead;
    }
    match candidate(
        &me.name,
        &view.members,
        view.optime.as_ref(),
        req.candidate.as_deref(),
        rules.max_lag,
        sync_only(view, rules).as_deref(),
    ) {
        Ok(candidate) => Action::HandOver { candidate },
        Err(why) => Action::ClearFailover { why },
    }
}

/// With synchronous mode and a `sync` key: the only members that may be promoted, the
/// recorded standbys and the leader that recorded them (it holds every commit it
/// acknowledged: a leader that restarts before it records a standby must still be able
/// to lead again, Patroni's `sync.matches(name, check_leader=True)`). A record older
/// than the last leader's term names nobody: that leader wrote its own before it
/// promoted, so an older one can only be a leftover, and trusting it could promote a
/// member without the commits acknowledged since.
pub fn sync_only(view: &ClusterView, rules: Rules) -> Option<Vec<String>> {
    let record = view.sync.as_ref().filter(|_| rules.sync)?;
    if view.optime.is_some_and(|o| record.term < o.term) {
        return Some(Vec::new());
    }
    let mut names = record.members.clone();
    names.push(record.leader.clone());
    Some(names)
}

/// The member a switchover from `leader` hands over to: `wanted` if it is an eligible
/// replica, else (when no member was named) the eligible replica with the most WAL.
/// With `sync` (synchronous mode), only those members are eligible. `Err` says why
/// there is none. The HTTP handler checks a request with it too, so a request the
/// leader would refuse is refused at once.
pub fn candidate(
    leader: &str,
    members: &[MemberState],
    optime: Option<&Optime>,
    wanted: Option<&str>,
    max_lag: u64,
    sync: Option<&[String]>,
) -> Result<String, String> {
    // A named replica whose key does not show its position yet (just started, or a
    // query of its postgres that timed out on a loaded machine) is not refused for
    // it: the leader waits until it publishes one, then checks (see `switchover`).
    let eligible = |m: &MemberState, named: bool| -> Result<(), String> {
        if m.role != MemberRole::Replica {
            return Err(format!("{} is not running as a replica", m.name));
        }
        if !m.tags.promotable() {
            return Err(format!(
                "{} is tagged nofailover (PGWARDEN_NOFAILOVER or PGWARDEN_FAILOVER_PRIORITY ≤ 0)",
                m.name
            ));
        }
        if sync.is_some_and(|s| !s.contains(&m.name)) {
            return Err(format!("{} is not a synchronous standby", m.name));
        }
        if named && (m.timeline.is_none() || m.received_lsn.is_none()) {
            return Ok(());
        }
        match ineligible(m.timeline, m.received_lsn, m.term, optime, max_lag) {
            Some(why) => Err(format!("{} is not eligible: {why}", m.name)),
            None => Ok(()),
        }
    };
    if let Some(name) = wanted {
        if name == leader {
            return Err(format!("{name} already is the leader"));
        }
        let m = members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("{name} is not a member of the cluster"))?;
        eligible(m, true)?;
        return Ok(name.to_owned());
    }
    members
        .iter()
        .filter(|m| m.name != leader && eligible(m, false).is_ok())
        .max_by(|a, b| {
            // Most WAL first; on a tie the higher priority, then the lower name, as in
            // the race.
            let key = |m: &MemberState| {
                (
                    m.received_lsn.unwrap_or(0),
                    m.tags.failover_priority,
                    std::cmp::Reverse(m.name.clone()),
                )
            };
            key(a).cmp(&key(b))
        })
        .map(|m| m.name.clone())
        .ok_or_else(|| "no replica is eligible to take over".to_owned())
}

/// A stopped postgres is started as a standby first, whatever else would follow.
fn stopped_or(me: &Me, leader: Option<&String>, otherwise: impl FnOnce() -> Action) -> Action {
    match me.postgres {
        Postgres::Stopped => Action::StartStandby {
            leader: leader.cloned(),
        },
        _ => otherwise(),
    }
}

/// Rule 1: an empty PGDATA.
fn bootstrap(view: &ClusterView, me: &Me, rules: Rules) -> Action {
    // A leader that is not this member is cloned whatever the initialize key says: a
    // cluster adopted from an existing PGDATA may never have written one.
    // Only a leader that runs as a primary: one still recovering a restored backup (or
    // starting after initdb) may yet fail, and its copy with it.
    if let Some(l) = &view.leader {
        if l.name != me.name {
            match view.member(&l.name) {
                Some(m) if m.role == MemberRole::Primary => {
                    return Action::Clone {
                        from: l.name.clone(),
                    }
                }
                Some(_) => {
                    return wait(format!(
                        "{} leads but does not run as a primary yet (starting, or recovering a restored backup); waiting to clone it",
                        l.name
                    ))
                }
                None => {}
            }
        }
    }
    match &view.initialize {
        None => Action::RaceInitialize,
        Some(winner) if *winner == me.name => Action::Initdb,
        Some(winner)
            if never_led(view) && me.initialize_stalled_for >= rules.initialize_abandoned_after =>
        {
            Action::AbandonInitialize {
                winner: winner.clone(),
            }
        }
        Some(winner) => wait(format!(
            "{winner} initializes the cluster; waiting for a leader to clone"
        )),
    }
}

/// No leader now and no trace of one ever (no optime, no promotion in the history):
/// the only state in which an initialize winner's data can be given up, as nobody can
/// have written to it. A cluster whose members are all down keeps its key.
pub fn never_led(view: &ClusterView) -> bool {
    view.leader.is_none() && view.optime.is_none() && view.history.is_empty()
}

/// Why a member may not promote itself, if it may not.
fn ineligible(
    timeline: Option<u32>,
    lsn: Option<u64>,
    term: Term,
    optime: Option<&Optime>,
    max_lag: u64,
) -> Option<String> {
    // No position recorded yet: a new cluster, where anyone with data may race.
    let o = optime?;
    let (Some(tl), Some(lsn)) = (timeline, lsn) else {
        return Some("its timeline and WAL position are unknown".into());
    };
    if term < o.term {
        return Some(format!("it missed term {} (last saw {term})", o.term));
    }
    if tl < o.timeline {
        return Some(format!(
            "it is on timeline {tl}, behind the leader's {}",
            o.timeline
        ));
    }
    if lsn.saturating_add(max_lag) < o.lsn {
        return Some(format!(
            "it is {} bytes behind the last leader position",
            o.lsn - lsn
        ));
    }
    None
}

/// Rule 5: nobody holds the key.
fn race(view: &ClusterView, me: &Me, rules: Rules) -> Action {
    let optime = view.optime.as_ref();
    let primary = view
        .members
        .iter()
        .find(|m| m.name != me.name && m.role == MemberRole::Primary);
    // A manual failover (no leader; `pgwarden failover --to NAME --force`): the named
    // member promotes without the eligibility checks, as the operator accepted that it
    // may lack commits; the others stand aside while it runs as a replica.
    if let Some(c) = manual_failover(view) {
        if c == me.name {
            return match primary {
                Some(p) => wait(format!("{} still runs as a primary", p.name)),
                None => Action::Acquire,
            };
        }
        if view
            .member(c)
            .is_some_and(|m| m.role == MemberRole::Replica)
        {
            return wait(format!("a manual failover names {c}"));
        }
    }
    if !me.tags.promotable() {
        return wait("not eligible for promotion: tagged nofailover");
    }
    if let Some(l) = &me.failsafe_leader {
        return wait(format!(
            "failsafe: {l} cannot reach etcd and asked within the TTL to be kept as the leader"
        ));
    }
    if view.paused {
        return wait("the cluster is paused: no automatic promotion");
    }
    if let Some(why) = ineligible(
        me.timeline,
        me.received_lsn,
        me.term_seen,
        optime,
        rules.max_lag,
    ) {
        return wait(format!("not eligible for promotion: {why}"));
    }
    let sync = sync_only(view, rules);
    if sync.as_ref().is_some_and(|s| !s.contains(&me.name)) {
        return wait("not eligible for promotion: not a synchronous standby nor the leader that recorded them");
    }
    if let Some(why) = short_of_quorum(view, me, rules) {
        return wait(format!("not eligible for promotion: {why}"));
    }
    let peers = view.members.iter().filter(|m| m.name != me.name);
    // A switchover names who takes over: on a tie the others stand aside for it. Not
    // when they are ahead of it: a hand-over cut short (the old leader killed or
    // stopped before the candidate had its shutdown checkpoint) must not promote a
    // candidate that misses WAL another member has.
    let handed_to = view
        .failover
        .as_ref()
        .and_then(|f| f.candidate.as_deref())
        .filter(|c| *c != me.name)
        .and_then(|c| view.member(c))
        .filter(|c| {
            sync.as_ref().is_none_or(|s| s.contains(&c.name))
                && c.role == MemberRole::Replica
                && c.tags.promotable()
                && ineligible(c.timeline, c.received_lsn, c.term, optime, rules.max_lag).is_none()
        });
    let candidate_is_me = view
        .failover
        .as_ref()
        .and_then(|f| f.candidate.as_deref())
        .is_some_and(|c| c == me.name);
    if candidate_is_me {
        if let Some(p) = peers.clone().find(|p| p.role == MemberRole::Primary) {
            return wait(format!("{} still runs as a primary", p.name));
        }
        return match rivals(view, me, rules)
            .into_iter()
            .find(|p| ahead(p.timeline, p.received_lsn, me))
        {
            Some(p) => wait(format!(
                "the switchover names this member, but {} has received more WAL",
                p.name
            )),
            None => Action::Acquire,
        };
    }
    if let Some(c) = handed_to {
        if !ahead(me.timeline, me.received_lsn, &position_of(c)) {
            return wait(format!("a switchover hands over to {}", c.name));
        }
    }
    if let Some(p) = peers.clone().find(|p| p.role == MemberRole::Primary) {
        return wait(format!("{} still runs as a primary", p.name));
    }
    if let Some(p) = rivals(view, me, rules).into_iter().find(|p| {
        beats(
            &p.name,
            p.tags.failover_priority,
            p.timeline,
            p.received_lsn,
            me,
        )
    }) {
        return wait(format!("{} has received more WAL", p.name));
    }
    Action::Acquire
}

/// Quorum mode: why this member, a voter, may not know that it holds every
/// acknowledged commit. It must see `quorum` other voters (the recording leader
/// counts), published as running replicas and not ahead of it: with the setting
/// `ANY k` of the voters and `quorum ≥ voters − k`, that set meets every set that can
/// have acknowledged a commit (and a voter ahead of it makes it wait, in the race).
fn short_of_quorum(view: &ClusterView, me: &Me, rules: Rules) -> Option<String> {
    let record = view.sync.as_ref().filter(|_| rules.sync)?;
    let quorum = record.quorum? as usize;
    let seen = record
        .members
        .iter()
        .chain(std::iter::once(&record.leader))
        .filter(|n| **n != me.name)
        .filter_map(|n| view.member(n))
        .filter(|m| m.role == MemberRole::Replica && !ahead(m.timeline, m.received_lsn, me))
        .count();
    (seen < quorum)
        .then(|| format!("quorum: it sees {seen} other voters not ahead of it, {quorum} needed"))
}

/// The member a manual failover names (a `failover` request made with no leader).
pub fn manual_failover(view: &ClusterView) -> Option<&str> {
    view.failover
        .as_ref()
        .filter(|f| f.leader.is_empty())
        .and_then(|f| f.candidate.as_deref())
}

/// The other members a candidate must not overtake: the published replicas eligible
/// for promotion (and synchronous, with synchronous mode). The race compares their
/// member keys; just before racing the loop asks each for its current position too,
/// as a key can be a round old (a clean stop of the leader starts the race at once).
pub fn rivals<'v>(view: &'v ClusterView, me: &Me, rules: Rules) -> Vec<&'v MemberState> {
    let optime = view.optime.as_ref();
    let sync = sync_only(view, rules);
    view.members
        .iter()
        .filter(|p| {
            p.name != me.name
                && p.role == MemberRole::Replica
                && p.tags.promotable()
                && sync.as_ref().is_none_or(|s| s.contains(&p.name))
                && ineligible(p.timeline, p.received_lsn, p.term, optime, rules.max_lag).is_none()
        })
        .collect()
}

/// Whether a member at `lsn` on `timeline` is strictly ahead of `me`: on a later
/// timeline (it followed a later leader), or further on the same one. Positions on
/// different timelines are never compared as numbers: the same LSN on two branches is
/// not the same WAL.
pub fn ahead(timeline: Option<u32>, lsn: Option<u64>, me: &Me) -> bool {
    (timeline.unwrap_or(0), lsn.unwrap_or(0))
        > (me.timeline.unwrap_or(0), me.received_lsn.unwrap_or(0))
}

/// Whether member `name` (tagged `priority`), at `lsn` on `timeline`, beats `me` in the
/// race: ahead of it, or level and of a higher failover priority, or level, as high and
/// with a lower name, so that members with equal positions agree on one candidate.
pub fn beats(name: &str, priority: i32, timeline: Option<u32>, lsn: Option<u64>, me: &Me) -> bool {
    let level = (timeline.unwrap_or(0), lsn.unwrap_or(0))
        == (me.timeline.unwrap_or(0), me.received_lsn.unwrap_or(0));
    let mine = me.tags.failover_priority;
    ahead(timeline, lsn, me)
        || (level && (priority > mine || (priority == mine && name < me.name.as_str())))
}

/// Whether `me`, about to race, yields to `rival` (failover `priority`), which says it
/// has received WAL up to `lsn` on `timeline`. A switchover names its `candidate`: the
/// candidate yields only to a rival strictly ahead of it, and every other member yields
/// to the candidate unless strictly ahead of it (a member key can be a round old, so a
/// member ahead of the candidate's published position may only be level with it now);
/// otherwise the rival must beat `me` (see [`beats`]).
pub fn yields_to(
    rival: &str,
    priority: i32,
    timeline: Option<u32>,
    lsn: Option<u64>,
    me: &Me,
    candidate: Option<&str>,
) -> bool {
    if candidate == Some(me.name.as_str()) {
        return ahead(timeline, lsn, me);
    }
    if candidate == Some(rival) {
        return (timeline.unwrap_or(0), lsn.unwrap_or(0))
            >= (me.timeline.unwrap_or(0), me.received_lsn.unwrap_or(0));
    }
    beats(rival, priority, timeline, lsn, me)
}

/// A published member's position, as a [`Me`] to compare against.
fn position_of(m: &MemberState) -> Me {
    Me {
        name: m.name.clone(),
        lease: None,
        since_renewal: None,
        has_data: true,
        postgres: Postgres::Stopped,
        timeline: m.timeline,
        received_lsn: m.received_lsn,
        term_seen: m.term,
        diverged: false,
        initialize_stalled_for: Duration::ZERO,
        unwritable_for: Duration::ZERO,
        restoring: false,
        tags: m.tags,
        rewind_failed: false,
        failsafe: false,
        failsafe_leader: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::store::{Leader, SyncState};

    const LEASE: LeaseId = 42;
    const RULES: Rules = Rules {
        demote_after: Duration::from_secs(20),
        max_lag: 1000,
        sync: false,
        initialize_abandoned_after: Duration::from_secs(30),
        primary_start_timeout: Duration::from_secs(300),
    };

    fn me(postgres: Postgres) -> Me {
        Me {
            name: "b".into(),
            lease: Some(LEASE),
            since_renewal: Some(Duration::from_secs(1)),
            has_data: true,
            postgres,
            timeline: Some(2),
            received_lsn: Some(10_000),
            term_seen: 7,
            diverged: false,
            initialize_stalled_for: Duration::ZERO,
            unwritable_for: Duration::ZERO,
            restoring: false,
            tags: Tags::default(),
            rewind_failed: false,
            failsafe: false,
            failsafe_leader: None,
        }
    }

    fn replica(upstream: Option<&str>) -> Postgres {
        Postgres::Replica {
            upstream: upstream.map(str::to_owned),
        }
    }

    fn member(name: &str, role: MemberRole, lsn: u64) -> MemberState {
        MemberState {
            name: name.into(),
            host: format!("{name}.local"),
            port: 5432,
            api_url: format!("http://{name}.local:8008"),
            role,
            timeline: Some(2),
            received_lsn: Some(lsn),
            replayed_lsn: Some(lsn),
            term: 7,
            streaming: role == MemberRole::Replica,
            tags: Tags::default(),
        }
    }

    fn leader(name: &str, lease: LeaseId) -> Option<Leader> {
        Some(Leader {
            name: name.into(),
            term: 7,
            lease,
        })
    }

    /// a, b and c published; a leads in term 7 at 10 000 on timeline 2.
    fn view() -> ClusterView {
        ClusterView {
            revision: 100,
            leader: leader("a", 1),
            members: vec![
                member("a", MemberRole::Primary, 10_000),
                member("b", MemberRole::Replica, 10_000),
                member("c", MemberRole::Replica, 9_500),
            ],
            optime: Some(Optime {
                term: 7,
                timeline: 2,
                lsn: 10_000,
            }),
            initialize: Some("a".into()),
            history: vec![],
            failover: None,
            sync: None,
            paused: false,
            failsafe: None,
        }
    }

    /// The view once a's key expired and a is gone.
    fn leaderless() -> ClusterView {
        let mut v = view();
        v.leader = None;
        v.members.retain(|m| m.name != "a");
        v
    }

    /// The view with b leading (lease LEASE) and a, c replicas.
    fn view_led_by_b() -> ClusterView {
        ClusterView {
            leader: leader("b", LEASE),
            members: vec![
                member("a", MemberRole::Replica, 10_000),
                member("b", MemberRole::Primary, 10_000),
                member("c", MemberRole::Replica, 9_500),
            ],
            ..view()
        }
    }

    /// `v` with a switchover request from its leader to `to`.
    fn switching(to: Option<&str>, v: ClusterView) -> ClusterView {
        let from = v
            .leader
            .as_ref()
            .map_or("a", |l| l.name.as_str())
            .to_owned();
        ClusterView {
            failover: Some(FailoverRequest {
                leader: from,
                candidate: to.map(str::to_owned),
            }),
            ..v
        }
    }

    fn fence() -> Action {
        Action::Fence { why: String::new() }
    }

    /// Compares actions, ignoring the `why` texts.
    fn same(a: &Action, b: &Action) -> bool {
        match (a, b) {
            (Action::Fence { .. }, Action::Fence { .. })
            | (Action::Wait { .. }, Action::Wait { .. })
            | (Action::ClearFailover { .. }, Action::ClearFailover { .. })
            | (Action::Release { .. }, Action::Release { .. }) => true,
            _ => a == b,
        }
    }

    #[test]
    fn table() {
        let w = || wait("");
        type Case = (&'static str, ClusterView, Me, Action);
        let cases: Vec<Case> = vec![
            // Rule 1: empty PGDATA.
            (
                "empty cluster: race for initialize",
                ClusterView::default(),
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                Action::RaceInitialize,
            ),
            (
                "won initialize: initdb",
                ClusterView {
                    initialize: Some("b".into()),
                    ..ClusterView::default()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                Action::Initdb,
            ),
            (
                "a switchover to a replica whose position is not published yet: lead on, keep it",
                switching(
                    Some("c"),
                    ClusterView {
                        members: vec![
                            member("a", MemberRole::Replica, 10_000),
                            member("b", MemberRole::Primary, 10_000),
                            MemberState {
                                timeline: None,
                                received_lsn: None,
                                ..member("c", MemberRole::Replica, 0)
                            },
                        ],
                        ..view_led_by_b()
                    },
                ),
                me(Postgres::Primary),
                Action::Lead,
            ),
            (
                "the initialize winner held no leader key for a TTL: abandon its claim",
                ClusterView {
                    initialize: Some("a".into()),
                    ..ClusterView::default()
                },
                Me {
                    has_data: false,
                    initialize_stalled_for: Duration::from_secs(30),
                    ..me(Postgres::Stopped)
                },
                Action::AbandonInitialize { winner: "a".into() },
            ),
            (
                "a cluster that once had a leader keeps its initialize key",
                ClusterView {
                    leader: None,
                    members: vec![],
                    ..view()
                },
                Me {
                    has_data: false,
                    initialize_stalled_for: Duration::from_secs(300),
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            (
                "lost initialize, no leader yet: wait",
                ClusterView {
                    initialize: Some("a".into()),
                    ..ClusterView::default()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            (
                "lost initialize, leader up: clone it",
                view(),
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                Action::Clone { from: "a".into() },
            ),
            (
                "leader still recovering its restored backup: wait to clone it",
                ClusterView {
                    members: vec![member("a", MemberRole::Replica, 10_000)],
                    ..view()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            (
                "leader not running yet (after initdb): wait to clone it",
                ClusterView {
                    members: vec![member("a", MemberRole::Stopped, 10_000)],
                    ..view()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            // Rule 1, the winner that restored a backup: it holds the key, and postgres
            // promotes itself at the target.
            (
                "restoring with the key: hold it, never promote, however long",
                ClusterView {
                    initialize: Some("b".into()),
                    ..ClusterView {
                        leader: leader("b", LEASE),
                        members: vec![member("b", MemberRole::Replica, 0)],
                        ..ClusterView::default()
                    }
                },
                Me {
                    restoring: true,
                    unwritable_for: Duration::from_secs(3600),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "restoring, not answering yet (before consistency): hold the key",
                ClusterView {
                    initialize: Some("b".into()),
                    leader: leader("b", LEASE),
                    ..ClusterView::default()
                },
                Me {
                    restoring: true,
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            (
                "restoring, lease not renewed: wait, do not promote",
                ClusterView {
                    initialize: Some("b".into()),
                    leader: leader("b", LEASE),
                    ..ClusterView::default()
                },
                Me {
                    restoring: true,
                    since_renewal: Some(Duration::from_secs(25)),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "restoring, key lost (etcd was out): take it back",
                ClusterView {
                    initialize: Some("b".into()),
                    ..ClusterView::default()
                },
                Me {
                    restoring: true,
                    ..me(replica(None))
                },
                Action::Acquire,
            ),
            (
                "restoring, another member leads: stop before promoting",
                ClusterView {
                    initialize: Some("a".into()),
                    ..view()
                },
                Me {
                    restoring: true,
                    ..me(replica(None))
                },
                Action::Fence { why: String::new() },
            ),
            (
                "restoring, the claim went to another member: stop before promoting",
                ClusterView {
                    initialize: Some("a".into()),
                    ..ClusterView::default()
                },
                Me {
                    restoring: true,
                    ..me(replica(None))
                },
                Action::Fence { why: String::new() },
            ),
            (
                "restored and promoted itself: lead",
                ClusterView {
                    initialize: Some("b".into()),
                    leader: leader("b", LEASE),
                    members: vec![member("b", MemberRole::Primary, 0)],
                    ..ClusterView::default()
                },
                me(Postgres::Primary),
                Action::Lead,
            ),
            (
                "leader up, no initialize key (an adopted cluster): clone it",
                ClusterView {
                    initialize: None,
                    ..view()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                Action::Clone { from: "a".into() },
            ),
            (
                "leader without an address: wait",
                ClusterView {
                    members: vec![],
                    ..view()
                },
                Me {
                    has_data: false,
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            // Rules 2-3: the leader.
            (
                "leader renews",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                me(Postgres::Primary),
                Action::Lead,
            ),
            (
                "leader past its deadline fences",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                Me {
                    since_renewal: Some(Duration::from_secs(20)),
                    ..me(Postgres::Primary)
                },
                fence(),
            ),
            (
                "leader never renewed fences",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                Me {
                    since_renewal: None,
                    ..me(Postgres::Primary)
                },
                fence(),
            ),
            (
                "lost lease fences",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                Me {
                    lease: None,
                    ..me(Postgres::Primary)
                },
                fence(),
            ),
            (
                "primary while another holds the key fences",
                view(),
                me(Postgres::Primary),
                fence(),
            ),
            (
                "primary with no key at all fences",
                leaderless(),
                me(Postgres::Primary),
                fence(),
            ),
            (
                "primary whose key is on an old lease fences",
                ClusterView {
                    leader: leader("b", 1),
                    ..view()
                },
                me(Postgres::Primary),
                fence(),
            ),
            (
                "key won, in recovery: promote",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                me(replica(None)),
                Action::Promote,
            ),
            (
                "key won, postgres down: start writable",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                me(Postgres::Stopped),
                Action::StartPrimary,
            ),
            (
                "key won but renewal stale: no promotion",
                ClusterView {
                    leader: leader("b", LEASE),
                    ..view()
                },
                Me {
                    since_renewal: Some(Duration::from_secs(30)),
                    ..me(replica(None))
                },
                w(),
            ),
            // Rule 4: a leader elsewhere.
            (
                "replica already follows the leader",
                view(),
                me(replica(Some("a"))),
                Action::Follow {
                    leader: "a".into(),
                    repoint: false,
                },
            ),
            (
                "replica of the old leader re-points",
                view(),
                me(replica(Some("x"))),
                Action::Follow {
                    leader: "a".into(),
                    repoint: true,
                },
            ),
            (
                "standby with no upstream re-points",
                view(),
                me(replica(None)),
                Action::Follow {
                    leader: "a".into(),
                    repoint: true,
                },
            ),
            (
                "diverged replica rejoins",
                view(),
                Me {
                    diverged: true,
                    ..me(replica(None))
                },
                Action::Rejoin { leader: "a".into() },
            ),
            (
                "a diverged replica whose rewind failed waits for a reinit",
                view(),
                Me {
                    diverged: true,
                    rewind_failed: true,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "existing PGDATA starts as a standby of the leader",
                view(),
                me(Postgres::Stopped),
                Action::StartStandby {
                    leader: Some("a".into()),
                },
            ),
            (
                "existing PGDATA with no leader starts with no upstream",
                leaderless(),
                me(Postgres::Stopped),
                Action::StartStandby { leader: None },
            ),
            (
                "my earlier run's key: wait for it to expire",
                ClusterView {
                    leader: leader("b", 1),
                    ..view()
                },
                me(replica(None)),
                w(),
            ),
            // Rule 5: no leader.
            (
                "best eligible replica acquires",
                leaderless(),
                me(replica(Some("a"))),
                Action::Acquire,
            ),
            (
                "within max lag acquires",
                ClusterView {
                    members: vec![member("c", MemberRole::Replica, 8_000)],
                    ..leaderless()
                },
                Me {
                    received_lsn: Some(9_000),
                    ..me(replica(None))
                },
                Action::Acquire,
            ),
            (
                "beyond max lag waits",
                leaderless(),
                Me {
                    received_lsn: Some(8_999),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "a peer with more WAL wins",
                leaderless(),
                Me {
                    received_lsn: Some(9_400),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "equal WAL: the lower name wins",
                ClusterView {
                    members: vec![member("a2", MemberRole::Replica, 10_000)],
                    ..leaderless()
                },
                me(replica(None)),
                w(),
            ),
            (
                "equal WAL: a higher name loses to me",
                ClusterView {
                    members: vec![member("c", MemberRole::Replica, 10_000)],
                    ..leaderless()
                },
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "an ineligible peer ahead does not block",
                ClusterView {
                    members: vec![MemberState {
                        term: 6,
                        ..member("a2", MemberRole::Replica, 20_000)
                    }],
                    ..leaderless()
                },
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "missed a term: never promotes",
                leaderless(),
                Me {
                    term_seen: 6,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "older timeline: never promotes",
                leaderless(),
                Me {
                    timeline: Some(1),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "unknown position: never promotes",
                leaderless(),
                Me {
                    received_lsn: None,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "a running primary blocks the race",
                ClusterView {
                    leader: None,
                    ..view()
                },
                me(replica(None)),
                w(),
            ),
            (
                "a stopped peer does not block",
                ClusterView {
                    members: vec![MemberState {
                        role: MemberRole::Stopped,
                        ..member("a", MemberRole::Replica, 20_000)
                    }],
                    ..leaderless()
                },
                me(replica(None)),
                Action::Acquire,
            ),
            // Switchover.
            (
                "leader hands over to the named candidate",
                switching(Some("c"), view_led_by_b()),
                me(Postgres::Primary),
                Action::HandOver {
                    candidate: "c".into(),
                },
            ),
            (
                "leader picks the replica with the most WAL",
                switching(None, view_led_by_b()),
                me(Postgres::Primary),
                Action::HandOver {
                    candidate: "a".into(),
                },
            ),
            (
                "leader drops a request for an unknown member",
                switching(Some("zz"), view_led_by_b()),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "leader drops a request for a lagging member",
                switching(
                    Some("c"),
                    ClusterView {
                        members: vec![
                            member("b", MemberRole::Primary, 10_000),
                            member("c", MemberRole::Replica, 1_000),
                        ],
                        ..view_led_by_b()
                    },
                ),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "leader drops a request for a stopped member",
                switching(
                    Some("c"),
                    ClusterView {
                        members: vec![MemberState {
                            role: MemberRole::Stopped,
                            ..member("c", MemberRole::Replica, 10_000)
                        }],
                        ..view_led_by_b()
                    },
                ),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "the new leader drops the request it fulfilled",
                ClusterView {
                    failover: Some(FailoverRequest {
                        leader: "a".into(),
                        candidate: Some("b".into()),
                    }),
                    ..view_led_by_b()
                },
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "a key holder fenced past the start timeout releases the key",
                view_led_by_b(),
                Me {
                    unwritable_for: Duration::from_secs(300),
                    ..me(Postgres::Stopped)
                },
                Action::Release { why: String::new() },
            ),
            (
                "a key holder in a crash recovery past the start timeout releases the key",
                view_led_by_b(),
                Me {
                    unwritable_for: Duration::from_secs(301),
                    ..me(Postgres::Primary)
                },
                Action::Release { why: String::new() },
            ),
            (
                "a key holder still within the start timeout starts postgres",
                view_led_by_b(),
                Me {
                    unwritable_for: Duration::from_secs(299),
                    ..me(Postgres::Stopped)
                },
                Action::StartPrimary,
            ),
            (
                "a leader that lost its lease fences, switchover or not",
                switching(Some("c"), view_led_by_b()),
                Me {
                    since_renewal: None,
                    ..me(Postgres::Primary)
                },
                fence(),
            ),
            (
                "the candidate yields to a peer with more WAL (a hand-over cut short)",
                switching(Some("b"), leaderless()),
                Me {
                    received_lsn: Some(9_400),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "the candidate wins a tie against a lower name",
                switching(
                    Some("b"),
                    ClusterView {
                        members: vec![member("a2", MemberRole::Replica, 10_000)],
                        ..leaderless()
                    },
                ),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "the candidate waits while a primary still runs",
                ClusterView {
                    leader: None,
                    ..switching(Some("b"), view())
                },
                me(replica(None)),
                w(),
            ),
            (
                "the others stand aside for the candidate when level with it",
                switching(
                    Some("c"),
                    ClusterView {
                        members: vec![member("c", MemberRole::Replica, 10_000)],
                        ..leaderless()
                    },
                ),
                me(replica(None)),
                w(),
            ),
            (
                "a member ahead of the candidate races as usual",
                switching(Some("c"), leaderless()),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "a candidate that is gone no longer holds the others back",
                switching(Some("zz"), leaderless()),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "an ineligible candidate does not acquire",
                switching(Some("b"), leaderless()),
                Me {
                    term_seen: 6,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "a replica follows the leader while a switchover is pending",
                switching(Some("c"), view()),
                me(replica(Some("a"))),
                Action::Follow {
                    leader: "a".into(),
                    repoint: false,
                },
            ),
            (
                "bootstrapper without optime acquires",
                ClusterView {
                    initialize: Some("b".into()),
                    ..ClusterView::default()
                },
                Me {
                    timeline: Some(1),
                    received_lsn: Some(100),
                    term_seen: 0,
                    ..me(replica(None))
                },
                Action::Acquire,
            ),
        ];
        for (what, view, me, want) in cases {
            let got = decide(&view, &me, RULES);
            assert!(same(&got, &want), "{what}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn failsafe_keeps_a_confirmed_leader_and_holds_the_others_back() {
        let confirmed = |postgres| Me {
            failsafe: true,
            ..me(postgres)
        };
        let expired = || ClusterView {
            leader: None,
            ..view_led_by_b()
        };
        type Case = (&'static str, ClusterView, Me, Action);
        let cases: Vec<Case> = vec![
            (
                "a confirmed leader whose key expired takes it back",
                expired(),
                confirmed(Postgres::Primary),
                Action::Acquire,
            ),
            (
                "a confirmed leader with no lease yet waits for one",
                expired(),
                Me {
                    lease: None,
                    ..confirmed(Postgres::Primary)
                },
                wait(""),
            ),
            (
                "a confirmed leader whose old key still stands waits for it to go",
                ClusterView {
                    leader: leader("b", 999),
                    ..view_led_by_b()
                },
                confirmed(Postgres::Primary),
                wait(""),
            ),
            (
                "a confirmed leader is fenced when another member holds the key",
                view(),
                confirmed(Postgres::Primary),
                Action::Fence { why: String::new() },
            ),
            (
                "an unconfirmed leader whose key expired is fenced",
                expired(),
                me(Postgres::Primary),
                Action::Fence { why: String::new() },
            ),
            (
                "a member that accepted a leader's failsafe request does not race",
                leaderless(),
                Me {
                    failsafe_leader: Some("a".into()),
                    ..me(replica(None))
                },
                wait(""),
            ),
        ];
        for (what, view, me, want) in cases {
            let got = decide(&view, &me, RULES);
            assert!(same(&got, &want), "{what}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn manual_failover_tags_and_pause() {
        let w = || wait("");
        let manual = |to: &str, v: ClusterView| ClusterView {
            failover: Some(FailoverRequest {
                leader: String::new(),
                candidate: Some(to.into()),
            }),
            ..v
        };
        let tagged = |name: &str, tags: Tags, mut v: ClusterView| {
            for m in v.members.iter_mut().filter(|m| m.name == name) {
                m.tags = tags;
            }
            v
        };
        let nofailover = Tags {
            nofailover: true,
            ..Tags::default()
        };
        let paused = |v: ClusterView| ClusterView { paused: true, ..v };
        type Case = (&'static str, ClusterView, Me, Action);
        let cases: Vec<Case> = vec![
            (
                "the manual candidate acquires although it missed a term",
                manual("b", leaderless()),
                Me {
                    term_seen: 3,
                    received_lsn: Some(10),
                    ..me(replica(None))
                },
                Action::Acquire,
            ),
            (
                "the manual candidate waits while a primary runs",
                ClusterView {
                    leader: None,
                    ..manual("b", view())
                },
                me(replica(None)),
                w(),
            ),
            (
                "the others stand aside for a running manual candidate, even ahead of it",
                manual("c", leaderless()),
                Me {
                    received_lsn: Some(99_999),
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "a manual candidate that is not running holds nobody back",
                manual("zz", leaderless()),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "the new leader drops the manual request it fulfilled",
                manual("b", view_led_by_b()),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "a nofailover member never races",
                leaderless(),
                Me {
                    tags: nofailover,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "priority 0 is nofailover",
                leaderless(),
                Me {
                    tags: Tags {
                        failover_priority: 0,
                        ..Tags::default()
                    },
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "a nofailover peer ahead does not hold a member back",
                tagged("c", nofailover, {
                    let mut v = leaderless();
                    v.members[1].received_lsn = Some(20_000);
                    v
                }),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "at the same position a higher priority wins over a lower name",
                tagged(
                    "c",
                    Tags {
                        failover_priority: 5,
                        ..Tags::default()
                    },
                    {
                        let mut v = leaderless();
                        v.members[1].received_lsn = Some(10_000);
                        v
                    },
                ),
                me(replica(None)),
                w(),
            ),
            (
                "a switchover never picks a nofailover member",
                tagged("a", nofailover, switching(None, view_led_by_b())),
                me(Postgres::Primary),
                Action::HandOver {
                    candidate: "c".into(),
                },
            ),
            (
                "a switchover to a nofailover member is dropped",
                tagged("c", nofailover, switching(Some("c"), view_led_by_b())),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "paused: nobody races",
                paused(leaderless()),
                me(replica(None)),
                w(),
            ),
            (
                "paused: a leader whose lease lapsed is not fenced",
                paused(view_led_by_b()),
                Me {
                    since_renewal: None,
                    ..me(Postgres::Primary)
                },
                w(),
            ),
            (
                "paused: a running primary takes a vacant key",
                paused(leaderless()),
                me(Postgres::Primary),
                Action::Acquire,
            ),
            (
                "paused: a primary beside another leader is not fenced",
                paused(view()),
                me(Postgres::Primary),
                w(),
            ),
            (
                "paused: a diverged member is not rewound",
                paused(view()),
                Me {
                    diverged: true,
                    ..me(replica(None))
                },
                w(),
            ),
            (
                "paused: a stuck key holder keeps the key",
                paused(view_led_by_b()),
                Me {
                    unwritable_for: Duration::from_secs(999),
                    ..me(Postgres::Stopped)
                },
                w(),
            ),
            (
                "paused: a switchover without a candidate is dropped",
                paused(switching(None, view_led_by_b())),
                me(Postgres::Primary),
                Action::ClearFailover { why: String::new() },
            ),
            (
                "paused: a switchover to a named member goes on",
                paused(switching(Some("c"), view_led_by_b())),
                me(Postgres::Primary),
                Action::HandOver {
                    candidate: "c".into(),
                },
            ),
            (
                "paused: a manual failover goes on",
                paused(manual("b", leaderless())),
                me(replica(None)),
                Action::Acquire,
            ),
        ];
        for (what, view, me, want) in cases {
            let got = decide(&view, &me, RULES);
            assert!(same(&got, &want), "{what}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn quorum_mode_promotes_a_voter_that_sees_a_quorum_not_ahead_of_it() {
        let rules = Rules {
            sync: true,
            ..RULES
        };
        let voters = |names: &[&str], quorum: u32, v: ClusterView| ClusterView {
            sync: Some(SyncState {
                leader: "a".into(),
                members: names.iter().map(|n| n.to_string()).collect(),
                term: 7,
                quorum: Some(quorum),
            }),
            ..v
        };
        let with_c = |role: MemberRole, lsn: u64| {
            let mut v = leaderless();
            v.members[1] = member("c", role, lsn);
            v
        };
        type Case = (&'static str, ClusterView, Me, Action);
        let cases: Vec<Case> = vec![
            (
                "a voter that sees the quorum behind it acquires",
                voters(&["b", "c"], 1, leaderless()),
                me(replica(None)),
                Action::Acquire,
            ),
            (
                "a voter that sees fewer voters than the quorum waits",
                voters(&["b", "c"], 2, leaderless()),
                me(replica(None)),
                wait(""),
            ),
            (
                "a voter that is not running does not count",
                voters(&["b", "c"], 1, with_c(MemberRole::Stopped, 9_000)),
                me(replica(None)),
                wait(""),
            ),
            (
                "a voter ahead makes it wait",
                voters(&["b", "c"], 1, with_c(MemberRole::Replica, 20_000)),
                me(replica(None)),
                wait(""),
            ),
            (
                "a member outside the voters never promotes",
                voters(&["c"], 0, leaderless()),
                me(replica(None)),
                wait(""),
            ),
            (
                "quorum 0 (every voter acknowledges): any voter alone may",
                voters(&["b", "c"], 0, with_c(MemberRole::Stopped, 9_000)),
                me(replica(None)),
                Action::Acquire,
            ),
        ];
        for (what, view, me, want) in cases {
            let got = decide(&view, &me, rules);
            assert!(same(&got, &want), "{what}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn synchronous_mode_promotes_only_a_recorded_standby() {
        let rules = Rules {
            sync: true,
            ..RULES
        };
        let recorded_by = |leader: &str, term: Term, names: &[&str], v: ClusterView| ClusterView {
            sync: Some(crate::ha::store::SyncState {
                leader: leader.into(),
                members: names.iter().map(|n| n.to_string()).collect(),
                term,
                quorum: None,
            }),
            ..v
        };
        let with_sync = |names: &[&str], v: ClusterView| recorded_by("a", 7, names, v);
        type Case = (&'static str, ClusterView, Me, Rules, Action);
        let cases: Vec<Case> = vec![
            (
                "the recorded standby acquires",
                with_sync(&["b"], leaderless()),
                me(replica(None)),
                rules,
                Action::Acquire,
            ),
            (
                "an unrecorded standby never promotes, even the best",
                with_sync(&["c"], leaderless()),
                Me {
                    received_lsn: Some(20_000),
                    ..me(replica(None))
                },
                rules,
                wait(""),
            ),
            (
                "nobody recorded: nobody promotes",
                with_sync(&[], leaderless()),
                me(replica(None)),
                rules,
                wait(""),
            ),
            (
                "an unrecorded peer with more WAL does not hold the recorded one back",
                with_sync(&["b"], leaderless()),
                Me {
                    received_lsn: Some(9_600),
                    ..me(replica(None))
                },
                rules,
                Action::Acquire,
            ),
            (
                "the leader that wrote the record, restarted before naming a standby, acquires",
                recorded_by("b", 7, &[], leaderless()),
                me(replica(None)),
                rules,
                Action::Acquire,
            ),
            (
                "the recording leader beats a recorded standby with as much WAL only by name",
                recorded_by("b", 7, &["c"], {
                    let mut v = leaderless();
                    v.members[1].received_lsn = Some(10_000);
                    v
                }),
                me(replica(None)),
                rules,
                Action::Acquire,
            ),
            (
                "a record older than the last leader's term names nobody",
                recorded_by("a", 6, &["b"], leaderless()),
                me(replica(None)),
                rules,
                wait(""),
            ),
            (
                "no sync key yet: the usual race",
                leaderless(),
                me(replica(None)),
                rules,
                Action::Acquire,
            ),
            (
                "sync mode off: the key is ignored",
                with_sync(&["c"], leaderless()),
                me(replica(None)),
                RULES,
                Action::Acquire,
            ),
            (
                "a switchover to an unrecorded standby is dropped",
                recorded_by("b", 7, &["a"], switching(Some("c"), view_led_by_b())),
                me(Postgres::Primary),
                rules,
                Action::ClearFailover { why: String::new() },
            ),
            (
                "a switchover picks the recorded standby",
                recorded_by("b", 7, &["c"], switching(None, view_led_by_b())),
                me(Postgres::Primary),
                rules,
                Action::HandOver {
                    candidate: "c".into(),
                },
            ),
        ];
        for (what, view, me, rules, want) in cases {
            let got = decide(&view, &me, rules);
            assert!(same(&got, &want), "{what}: want {want:?}, got {got:?}");
        }
    }

    #[test]
    fn rivals_are_the_eligible_replicas_and_beating_one_takes_more_wal_or_a_lower_name() {
        let mut v = leaderless();
        v.members.push(MemberState {
            term: 6,
            ..member("d", MemberRole::Replica, 20_000)
        });
        v.members.push(member("e", MemberRole::Stopped, 20_000));
        let me = me(replica(None));
        let names: Vec<&str> = rivals(&v, &me, RULES)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        // b is me, d missed a term, e is not a running replica.
        assert_eq!(names, ["c"]);
        let with_sync = Rules {
            sync: true,
            ..RULES
        };
        v.sync = Some(SyncState {
            leader: "a".into(),
            members: vec!["b".into()],
            term: 7,
            quorum: None,
        });
        assert!(rivals(&v, &me, with_sync).is_empty());
        for (name, tl, lsn, want) in [
            ("c", Some(2), Some(10_001), true),
            ("c", Some(2), Some(10_000), false),
            ("a", Some(2), Some(10_000), true),
            ("c", Some(2), Some(9_999), false),
            ("a", Some(2), None, false),
            // A later timeline followed a later leader, whatever the numbers.
            ("c", Some(3), Some(9_000), true),
            // An earlier one is behind, however far its old branch went.
            ("c", Some(1), Some(90_000), false),
            ("c", None, Some(90_000), false),
        ] {
            assert_eq!(
                beats(name, 1, tl, lsn, &me),
                want,
                "{name} at {tl:?}/{lsn:?}"
            );
        }
    }

    #[test]
    fn a_named_replica_not_yet_showing_its_position_is_left_to_the_leader() {
        let mut members = vec![
            member("a", MemberRole::Primary, 10_000),
            member("b", MemberRole::Replica, 10_000),
            member("c", MemberRole::Replica, 10_000),
        ];
        members[1].received_lsn = None;
        let optime = view().optime;
        // Named: recorded, and the leader waits for its position before handing over.
        assert_eq!(
            candidate("a", &members, optime.as_ref(), Some("b"), 1 << 20, None),
            Ok("b".to_owned())
        );
        // Not named: never chosen while its position is unknown.
        assert_eq!(
            candidate("a", &members, optime.as_ref(), None, 1 << 20, None),
            Ok("c".to_owned())
        );
        // A known position that is ineligible is still refused at once.
        members[1].received_lsn = Some(10_000);
        members[1].term = 1;
        let e = candidate("a", &members, optime.as_ref(), Some("b"), 1 << 20, None).unwrap_err();
        assert!(e.contains("b is not eligible"), "{e}");
    }

    #[test]
    fn a_switchovers_candidate_wins_ties_on_fresh_positions() {
        // me is b at 2/10_000 (priority 1).
        let me = me(replica(None));
        for (rival, tl, lsn, candidate, want, why) in [
            (
                "c",
                Some(2),
                Some(10_000),
                Some("c"),
                true,
                "level with the candidate: it takes over",
            ),
            (
                "c",
                Some(2),
                Some(10_001),
                Some("c"),
                true,
                "the candidate ahead",
            ),
            (
                "c",
                Some(2),
                Some(9_999),
                Some("c"),
                false,
                "the candidate behind: a hand-over cut short",
            ),
            (
                "c",
                Some(1),
                Some(90_000),
                Some("c"),
                false,
                "the candidate on an earlier timeline",
            ),
            (
                "a",
                Some(2),
                Some(10_000),
                Some("c"),
                true,
                "not the candidate: a lower name on a tie",
            ),
            (
                "c",
                Some(2),
                Some(10_000),
                Some("b"),
                false,
                "me the candidate: level does not beat me",
            ),
            (
                "a",
                Some(2),
                Some(10_000),
                Some("b"),
                false,
                "me the candidate: even a lower name",
            ),
            (
                "c",
                Some(2),
                Some(10_001),
                Some("b"),
                true,
                "me the candidate: yields only to more WAL",
            ),
            (
                "c",
                Some(2),
                Some(10_000),
                None,
                false,
                "no switchover: a higher name on a tie",
            ),
            (
                "a",
                Some(2),
                Some(10_000),
                None,
                true,
                "no switchover: a lower name on a tie",
            ),
        ] {
            assert_eq!(yields_to(rival, 1, tl, lsn, &me, candidate), want, "{why}");
        }
    }

    #[test]
    fn every_fence_and_wait_says_why() {
        for (view, me) in [
            (view(), me(Postgres::Primary)),
            (
                leaderless(),
                Me {
                    term_seen: 6,
                    ..me(replica(None))
                },
            ),
            (
                leaderless(),
                Me {
                    received_lsn: Some(1),
                    ..me(replica(None))
                },
            ),
        ] {
            match decide(&view, &me, RULES) {
                Action::Fence { why } | Action::Wait { why } => assert!(!why.is_empty()),
                other => panic!("{other:?}"),
            }
        }
    }
}
