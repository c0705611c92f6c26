//! The HA loop: one pgwarden's store session, what it has seen, and the actions it
//! performs on its postgres.

use super::config::SyncMode;
mod logical;
mod peers;
mod rejoin;
mod switching;
mod sync_leader;
mod upgrade;

use super::decide::{decide, Action, Me, Postgres, Rules};
use super::etcd::EtcdStore;
use super::store::{
    ClusterView, HistoryEntry, LeaseId, MemberRole, MemberState, Optime, Store, StoreError, Term,
};
use super::upstream::Target;
use super::watchdog::{watchdog, Deadline};
use super::{clock, deadman, handover, local, status, sync, HaConfig};
use crate::pgdata::DataDirState;
use crate::settings::{Role, Settings};
use crate::state::{State, SupervisorStatus};
use crate::supervisor::{Command, Commands};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// File in PGDATA that keeps the last term this member saw, across restarts: without
/// it a whole-cluster restart would leave nobody eligible.
const TERM_FILE: &str = "pgwarden.ha-term";

/// How long a member may be gone from the cluster before the leader drops its slot
/// (Patroni's `member_slots_ttl`, 30 minutes by default).
const MEMBER_SLOTS_TTL: Duration = Duration::from_secs(30 * 60);

/// The HA side of one pgwarden: its store session and what it has seen.
pub struct Ha {
    cfg: HaConfig,
    store: EtcdStore,
    name: String,
    lease: Option<LeaseId>,
    /// Boot-clock time at which the last successful keep-alive (or grant) was sent.
    renewed_at: Option<Duration>,
    term_seen: Term,
    /// The term last written to [`TERM_FILE`].
    term_written: Term,
    view: ClusterView,
    last_action: Option<Action>,
    /// The current lease, for [`Running::retire`].
    lease_tx: watch::Sender<Option<LeaseId>>,
    /// What `/status`, `/cluster` and `/history` show.
    status_tx: Option<watch::Sender<Option<status::HaStatus>>>,
    last_renew_ok: bool,
    /// Whether this round's action may leave postgres writable on this member's lease
    /// (the watchdog is armed for it): then, after a failed renewal, the next round
    /// comes in time to fence by its own decision.
    armed: bool,
    /// The HTTP API of every member ever seen, by name: a former leader whose key
    /// expired is asked too before racing.
    known_apis: std::collections::BTreeMap<String, String>,
    /// Spawns pg_controldata during a switchover; set by [`Ha::spawn`].
    runner: Option<crate::process::Runner>,
    /// Synchronous mode, on the leader: the end of WAL when each standby was first
    /// seen synchronous (see [`sync::record`]).
    sync_since: std::collections::BTreeMap<String, u64>,
    /// Rounds in a row that found this standby past the leader's fork.
    divergent_rounds: u32,
    /// postgres's last answer, for the member key when it does not answer once.
    last_facts: Option<local::Facts>,
    /// Before the bootstrap: the initialize winner seen holding no leader key in a
    /// cluster that never had a leader, and since when (boot clock).
    initialize_stall: Option<(String, Duration)>,
    /// Since when (boot clock) this member has held the leader key while postgres did
    /// not answer as writable.
    unwritable_since: Option<Duration>,
    /// Failsafe mode, on the leader: when the last check that every member confirms
    /// it started (boot clock); it counts as a renewal.
    failsafe_at: Option<Duration>,
    /// Failsafe mode, on a member: the leader that asked to be kept, and when.
    failsafe_accepted: super::failsafe::Accepted,
    /// On the leader: when each other member was last seen in the cluster (boot clock),
    /// for dropping the slots of members gone for good.
    member_seen: std::collections::BTreeMap<String, Duration>,
    /// The postmaster (pid) whose leftover failover slots were dropped, as a standby.
    failover_slots_tidied: Option<i32>,
}

impl Ha {
    /// Opens the store client. etcd being down is not an error here: the loop waits.
    pub async fn connect(s: &Settings, cfg: &HaConfig) -> Result<Ha> {
        let store = EtcdStore::connect(&cfg.endpoints, &cfg.cluster, cfg.retry_timeout)
            .await
            .context("PGWARDEN_ETCD_ENDPOINTS")?;
        let term_seen = std::fs::read_to_string(s.pgdata.join(TERM_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok(Ha {
            cfg: cfg.clone(),
            store,
            name: s.name.clone(),
            lease: None,
            renewed_at: None,
            term_seen,
            term_written: term_seen,
            view: ClusterView::default(),
            last_action: None,
            lease_tx: watch::channel(None).0,
            status_tx: None,
            last_renew_ok: false,
            armed: false,
            known_apis: Default::default(),
            runner: None,
            sync_since: Default::default(),
            divergent_rounds: 0,
            last_facts: None,
            initialize_stall: None,
            unwritable_since: None,
            failsafe_at: None,
            failsafe_accepted: Default::default(),
            member_seen: Default::default(),
            failover_slots_tidied: None,
        })
    }

    /// Before the bootstrap: decides what this member starts as. An existing PGDATA
    /// always starts as a standby (following the leader if one is known); an empty one
    /// races for the initialize key, and either runs initdb holding the leader key or
    /// waits for a leader and clones it. Returns the settings to bootstrap with.
    pub async fn prepare(&mut self, s: &Settings) -> Result<Settings> {
        local::write_passfile(s)?;
        let state = crate::pgdata::inspect(&s.pgdata).context("PGDATA")?;
        // A PGDATA to upgrade, or whose upgrade has not started the new cluster yet:
        // only the last leader upgrades, the others clone it again.
        let older = s.upgrade.on && state.version().is_some_and(|v| v < s.major_version);
        let under_way = matches!(
            crate::upgrade::find(&s.pgdata).context("PGDATA")?,
            (Some(_), crate::upgrade::Work::Marked(m)) if m.phase <= crate::upgrade::state::Phase::Ready
        );
        if older || under_way {
            return self.prepare_upgrade(s, under_way).await;
        }
        let mut next = s.clone();
        if matches!(state, DataDirState::Initialized { .. }) && restoring(s) {
            // pgwarden stopped while the backup it restored as the initialize winner
            // was still recovering: while the claim is still this member's, recovery
            // goes on (as the leader, below); otherwise nothing in PGDATA is the
            // cluster's, and it is rebuilt (Patroni moves a failed bootstrap aside).
            while !self.refresh().await {
                tokio::time::sleep(self.cfg.loop_wait).await;
            }
            if self.view.initialize.as_deref() == Some(self.name.as_str()) {
                info!("HA: resuming the recovery of the backup this member restored as the initialize winner");
            } else {
                warn!(initialize = ?self.view.initialize, "HA: the backup this member was restoring lost its claim to the cluster; discarding it");
                crate::bootstrap::discard(&s.pgdata)?;
            }
        } else if matches!(state, DataDirState::Initialized { .. }) {
            crate::replica::write_standby_signal(s, &s.pgdata)?;
            // A hand-over this member did not finish left postgres held: it starts
            // again as a standby, as the hand-over would have ended.
            if crate::supervisor::lift_interrupted_hold(&s.pgdata).context("PGDATA")? {
                warn!("HA: a switchover's hand-over was interrupted by a restart; starting as a standby");
            }
            self.renew().await;
            self.refresh().await;
            // Never itself: the key may still be bound to an earlier run's lease.
            let target = self
                .view
                .leader
                .as_ref()
                .filter(|l| l.name != self.name)
                .and_then(|l| self.target(&l.name));
            info!(leader = ?target.as_ref().map(|t| &t.name), "HA: existing PGDATA starts as a standby");
            s.upstream.set(target);
            next.role = Role::Replica;
            return Ok(next);
        }
        loop {
            self.renew().await;
            if !self.refresh().await {
                tokio::time::sleep(self.cfg.loop_wait).await;
                continue;
            }
            self.note_initialize_stall();
            let me = self.me(false, Postgres::Stopped, None);
            let action = decide(&self.view, &me, self.rules());
            self.note(&action);
            match action {
                Action::RaceInitialize => {
                    match self.store.initialize(&self.name).await {
                        Ok(won) => info!(won, "HA: raced for the initialize key"),
                        Err(e) => warn!(error = %e, "HA: cannot race for the initialize key"),
                    }
                    continue;
                }
                Action::AbandonInitialize { winner } => {
                    warn!(winner = %winner, "HA: the initialize winner has held no leader key for a TTL and the cluster never had a leader; abandoning its claim");
                    if let Err(e) = self.store.clear_initialize(&winner).await {
                        warn!(error = %e, "HA: cannot delete the initialize key");
                    }
                    self.initialize_stall = None;
                    continue;
                }
                Action::Initdb => {
                    if let Some(lease) = self.lease {
                        if let Ok(Some(term)) = self.store.acquire_leader(&self.name, lease).await {
                            match &s.restore {
                                Some(r) => {
                                    info!(term, source = %r.source.url, server = %r.source.server, "HA: restoring the cluster from a backup as its first leader")
                                }
                                None => {
                                    info!(term, "HA: initializing the cluster as its first leader")
                                }
                            }
                            self.saw_term(s, term);
                            next.role = Role::Primary;
                            return Ok(next);
                        }
                    }
                }
                Action::Clone { from } => {
                    if let Some(t) = self.target(&from) {
                        info!(leader = %from, "HA: cloning the leader");
                        // A copy of the leader has what the leader had: its term is seen
                        // (from the clone on, streaming keeps it so).
                        if let Some(term) = self.view.leader.as_ref().map(|l| l.term) {
                            self.saw_term(s, term);
                        }
                        s.upstream.set(Some(t));
                        next.role = Role::Replica;
                        return Ok(next);
                    }
                }
                _ => {}
            }
            self.wait().await;
        }
    }

    /// The initialize winner's bootstrap failed (initdb, or the restore of a backup):
    /// the cluster was never initialized. As Patroni's `cancel_initialization`, the
    /// claim is given up so that another member may try: the lease is revoked first
    /// (the leader key goes, which no member may clone while it names this one), then
    /// the initialize key is deleted if it still names this member.
    pub async fn cancel_initialization(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.lease_tx.send_replace(None);
            if let Err(e) = self.store.revoke(lease).await {
                warn!(error = %e, "HA: cannot revoke the lease; the leader key expires with its TTL");
            }
        }
        cancel_initialize_key(&self.store, &self.name).await;
    }

    /// Keeps the session lease alive while the bootstrap runs (initdb or pg_basebackup
    /// may outlast the TTL); abort it when the loop takes over.
    pub fn hold_lease(&self) -> Option<tokio::task::JoinHandle<()>> {
        let (store, lease, every) = (self.store.clone(), self.lease?, self.cfg.loop_wait);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.keep_alive(lease).await {
                    warn!(error = %e, "HA: cannot renew the session lease during the bootstrap");
                }
            }
        }))
    }

    /// What `POST /switchover` needs to ask this cluster for a new leader.
    pub fn switchover(
        &self,
        status: watch::Receiver<Option<status::HaStatus>>,
    ) -> super::Switchover {
        super::Switchover {
            store: self.store.clone(),
            status,
            name: self.name.clone(),
            max_lag: self.cfg.max_lag_on_failover,
            sync: self.cfg.sync_mode != SyncMode::Off,
            within: self.cfg.ttl * 4,
        }
    }

    /// Where `POST /failsafe` records the leaders it accepted.
    pub fn accept_failsafe_on(&mut self, accepted: super::failsafe::Accepted) {
        self.failsafe_accepted = accepted;
    }

    /// Publishes the HA state on `tx` after every round.
    pub fn publish_to(&mut self, tx: watch::Sender<Option<status::HaStatus>>) {
        self.status_tx = Some(tx);
    }

    /// Runs the loop for the life of pgwarden, acting on the supervised postgres, and
    /// beside it a watchdog that fences postgres at the lease deadline even when the
    /// loop is stuck in a slow store call.
    pub fn spawn(
        mut self,
        s: Arc<Settings>,
        status: watch::Receiver<SupervisorStatus>,
        commands: Commands,
        runner: &crate::process::Runner,
    ) -> Running {
        let mut deadman = match deadman::DeadMan::start(&s, runner) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "HA: cannot start the dead-man switch; a stalled pgwarden would not be fenced");
                None
            }
        };
        self.runner = Some(runner.clone());
        let deadline = Deadline::default();
        let watchdog_task = tokio::spawn(watchdog(deadline.clone(), s.clone(), status.clone()));
        let s_name = self.name.clone();
        let (store, lease, retry_timeout) = (
            self.store.clone(),
            self.lease_tx.subscribe(),
            self.cfg.retry_timeout,
        );
        let loop_task = tokio::spawn(async move {
            loop {
                let again = self
                    .round(&s, &status, &commands, &deadline, &mut deadman)
                    .await;
                if !again {
                    self.wait().await;
                }
            }
        });
        Running {
            loop_task,
            watchdog_task,
            name: s_name,
            store,
            lease,
            retry_timeout,
        }
    }

    /// One round; true when the next one should follow at once.
    async fn round(
        &mut self,
        s: &Settings,
        status: &watch::Receiver<SupervisorStatus>,
        commands: &Commands,
        deadline: &Deadline,
        deadman: &mut Option<deadman::DeadMan>,
    ) -> bool {
        // When the renewal fails the store is likely down: reading and publishing would
        // each spend another retry_timeout before the decision to fence.
        let renewed = self.renew().await;
        self.last_renew_ok = renewed;
        self.armed = false;
        if renewed {
            self.refresh().await;
        }
        let sup = status.borrow().clone();
        if sup.exiting || sup.state == State::Bootstrapping {
            return false;
        }
        let facts = match sup.state {
            State::Running => tokio::time::timeout(self.cfg.retry_timeout, self.local_facts(s))
                .await
                .ok()
                .flatten(),
            _ => None,
        };
        let upstream = || s.upstream.get().map(|t| t.name);
        let postgres = match (facts, sup.pid) {
            (Some(f), _) if !f.in_recovery => Postgres::Primary,
            (Some(_), _) => Postgres::Replica {
                upstream: upstream(),
            },
            (None, None) => Postgres::Stopped,
            // Running or starting, but it did not answer: without standby.signal it is
            // or is about to be writable, and is treated so (it may have to be fenced).
            (None, Some(_)) if crate::replica::is_standby(&s.pgdata) || restoring(s) => {
                Postgres::Replica {
                    upstream: upstream(),
                }
            }
            (None, Some(_)) => Postgres::Primary,
        };
        if let Some(l) = self.view.leader.clone() {
            // A term is seen by streaming from its leader, not by naming it in
            // primary_conninfo: a former primary pointed at the new leader but not yet
            // rewound streams nothing, and must stay ineligible for the term it missed.
            let following = matches!(&postgres, Postgres::Replica { upstream: Some(u) } if *u == l.name)
                && facts.is_some_and(|f| f.streaming);
            if following || self.holds_key() {
                self.saw_term(s, l.term);
            }
        }
        if facts.is_some() {
            self.last_facts = facts;
        }
        if !renewed && postgres == Postgres::Primary {
            self.failsafe_check(s).await;
        }
        let holds = self.holds_key();
        let writable = facts.is_some_and(|f| !f.in_recovery);
        self.unwritable_since = match (holds && !writable, self.unwritable_since) {
            (true, since) => since.or(Some(clock::now())),
            (false, _) => None,
        };
        if renewed {
            // A running postgres that did not answer this once (a busy moment) keeps
            // its last known position in its member key rather than none, which would
            // make it ineligible to anyone reading the key now (a switchover to it was
            // dropped so under a write load). Positions only grow: an old one can only
            // understate a member. Never used for this member's own decisions.
            let published = match postgres {
                Postgres::Stopped => facts,
                _ => facts.or(self.last_facts),
            };
            self.publish(s, &postgres, published).await;
        }
        let diverged = self.diverged(s, &postgres, facts).await;
        let mut me = self.me(true, postgres, facts);
        me.diverged = diverged;
        me.rewind_failed = sup.rewind_failed.is_some();
        me.restoring = restoring(s);
        let action = decide(&self.view, &me, self.rules());
        self.note(&action);
        self.show(&action);
        // Armed while postgres may be writable on our lease's behalf; never while the
        // cluster is paused, as Patroni disables its watchdog then (an operator at work
        // decides, and a fence is what pause promises not to do).
        let fence_at = match action {
            _ if self.view.paused => None,
            Action::Lead | Action::Promote | Action::StartPrimary | Action::HandOver { .. } => self
                .renewed_or_confirmed()
                .map(|t| t + self.cfg.fence_deadline()),
            _ => None,
        };
        let mut guards = Guards {
            deadline,
            deadman,
            status,
            deadman_grace: self.cfg.deadman_grace(),
        };
        guards.arm(fence_at);
        self.armed = fence_at.is_some();
        if let Action::HandOver { candidate } = action {
            self.hand_over(candidate, s, status, commands, &mut guards)
                .await;
            return true;
        }
        self.act(action, s, &sup, &me, facts, commands, &mut guards)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn act(
        &mut self,
        action: Action,
        s: &Settings,
        sup: &SupervisorStatus,
        me: &Me,
        facts: Option<local::Facts>,
        commands: &Commands,
        guards: &mut Guards<'_>,
    ) -> bool {
        match action {
            Action::Lead => {
                let (Some(l), Some(f)) = (self.view.leader.clone(), facts) else {
                    return false;
                };
                // Kept by failsafe mode while etcd does not answer: every store call
                // would only spend retry_timeout before the next confirmation is due.
                if !self.last_renew_ok {
                    self.ensure_slots(s).await;
                    return false;
                }
                if self.cfg.failsafe {
                    self.record_failsafe_members(s).await;
                }
                // Never a made-up position: an optime of 0/0 would make every member
                // pass the lag and timeline checks.
                if let (Some(timeline), Some(lsn)) = (f.timeline, f.received) {
                    let optime = Optime {
                        term: l.term,
                        timeline,
                        lsn,
                    };
                    if let Err(e) = self.store.put_optime(&self.name, optime).await {
                        warn!(error = %e, "HA: cannot record the leader position");
                    }
                }
                // A cluster adopted from an existing PGDATA has no initialize key: claim
                // it, so that an empty member never runs initdb beside this one.
                if self.view.initialize.is_none() {
                    if let Err(e) = self.store.initialize(&self.name).await {
                        warn!(error = %e, "HA: cannot record the initialize key");
                    }
                }
                self.ensure_slots(s).await;
                self.manage_sync(s, commands, l.term).await;
            }
            Action::Fence { why } => {
                error!(reason = %why, "HA: fencing: stopping postgres at once, to start again as a standby");
                self.fence(s, sup.pid, commands).await;
            }
            Action::Promote => self.promote(s, commands, guards).await,
            Action::Release { why } => {
                error!(reason = %why, "HA: giving up the leader key: fencing postgres, then releasing the key");
                self.fence(s, sup.pid, commands).await;
                guards.arm(None);
                match self.store.release_leader(&self.name).await {
                    Ok(_) => self.unwritable_since = None,
                    Err(e) => warn!(error = %e, "HA: cannot release the leader key"),
                }
            }
            Action::Follow { leader, repoint } => {
                if repoint {
                    if let Some(t) = self.target(&leader) {
                        info!(leader = %leader, host = %t.host, port = t.port, "HA: following the leader");
                        s.upstream.set(Some(t));
                        reload_later(commands);
                    }
                }
                self.tidy_failover_slots(s, sup.pid, facts).await;
            }
            Action::Acquire => {
                let Some(lease) = self.lease else {
                    return false;
                };
                // The store says nobody leads; a member that still answers as a
                // primary says otherwise, and wins the argument (Patroni #2070).
                if let Some(other) = self.a_primary_answers().await {
                    warn!(member = %other, "HA: not racing: this member still answers as a primary");
                    return false;
                }
                if let Some((other, lsn)) = self.a_rival_is_ahead(me).await {
                    info!(member = %other, received = lsn, "HA: not racing: another member has received more WAL, or as much and is the switchover's candidate");
                    return false;
                }
                match self.store.acquire_leader(&self.name, lease).await {
                    Ok(Some(term)) => {
                        info!(term, "HA: acquired the leader key");
                        self.saw_term(s, term);
                        return true;
                    }
                    Ok(None) => info!("HA: another member acquired the leader key first"),
                    Err(e) => warn!(error = %e, "HA: cannot race for the leader key"),
                }
            }
            Action::ClearFailover { why } => {
                info!(reason = %why, "HA: dropping the switchover request");
                match self.store.clear_failover().await {
                    // At once, so that /status (which a new request is checked
                    // against) stops showing it a loop_wait early.
                    Ok(()) => return true,
                    Err(e) => warn!(error = %e, "HA: cannot drop the switchover request"),
                }
            }
            Action::Rejoin { leader } => {
                warn!(leader = %leader, "HA: this member replayed past the point where the leader's timeline forked from it; rewinding to rejoin");
                self.divergent_rounds = 0;
                match tokio::time::timeout(self.cfg.retry_timeout, commands.send(Command::Rejoin))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "HA: the supervisor refused the rejoin"),
                    Err(_) => warn!("HA: the supervisor did not answer the rejoin request"),
                }
            }
            // The supervisor restarts a stopped postgres by itself; the bootstrap
            // actions belong to `prepare`.
            Action::StartPrimary
            | Action::StartStandby { .. }
            | Action::Wait { .. }
            | Action::RaceInitialize
            | Action::Initdb
            | Action::AbandonInitialize { .. }
            | Action::Clone { .. }
            | Action::HandOver { .. } => {}
        }
        false
    }

    /// Promotes the local standby now that this member holds the key.
    ///
    /// A promotion is a long action (replay may have a backlog, or be held by a query
    /// conflict): the lease is renewed while it runs and the watchdog and dead-man
    /// switch follow each renewal, as Patroni refreshes its lock during long actions.
    /// When it cannot finish (the lease is lost, postgres fails it, or it outlasts
    /// its bound), postgres may still come up writable on its own: it is fenced first,
    /// and only then is the key released, so that no member is ever writable without it.
    async fn promote(&mut self, s: &Settings, commands: &Commands, guards: &mut Guards<'_>) {
        let Some(l) = self.view.leader.clone() else {
            return;
        };
        // Where this member is, exactly: the new term's claim must carry it, or every
        // member would pass the lag and timeline checks against a claim of 0/0.
        let Some((timeline, lsn)) = self
            .local_facts(s)
            .await
            .and_then(|f| f.timeline.zip(f.received))
        else {
            warn!("HA: postgres does not say where it is; not promoting this round");
            return;
        };
        // The new term is on record before the first write it may accept: postgres
        // accepts writes as soon as it is promoted, before the history entry below, and
        // a member that stops in between (or fails the checkpoint) must still make any
        // member that missed this term ineligible (Patroni #2175). Unrecorded, no promotion.
        self.saw_term(s, l.term);
        if self.cfg.sync_mode != SyncMode::Off
            && !self.record_sync_before_promoting(s, commands, l.term).await
        {
            return;
        }
        let claim = Optime {
            term: l.term,
            timeline,
            lsn,
        };
        match self.store.put_optime(&self.name, claim).await {
            Ok(true) => {}
            Ok(false) => {
                warn!("HA: the leader key is no longer ours; not promoting");
                return;
            }
            Err(e) => {
                error!(error = %e, "HA: cannot record the new term; releasing the leader key");
                if let Err(e) = self.store.release_leader(&self.name).await {
                    warn!(error = %e, "HA: cannot release the leader key");
                }
                return;
            }
        }
        // Slots first (a standby can create them): members re-pointed here the moment
        // the key changed find theirs as soon as this member accepts connections.
        self.ensure_slots(s).await;
        let within = self.cfg.promote_timeout();
        let promoting = crate::replica::promote::promote(s, within);
        let failed = match self.while_holding(promoting, guards, "promote").await {
            Some(Ok(timeline)) => {
                self.promoted(s, commands, &l, timeline, lsn).await;
                return;
            }
            // Writable already (promoted by a round that gave up waiting, or by
            // hand): the next round leads.
            Some(Err(crate::replica::promote::PromoteError::NotStandby)) => return,
            Some(Err(e)) => format!("the promotion failed: {e:#}"),
            None => "the leader lease could not be renewed during the promotion".to_owned(),
        };
        error!(reason = %failed, "HA: giving up the promotion: fencing postgres, then releasing the leader key");
        let pid = guards.status.borrow().pid;
        self.fence(s, pid, commands).await;
        guards.arm(None);
        if let Err(e) = self.store.release_leader(&self.name).await {
            warn!(error = %e, "HA: cannot release the leader key");
        }
    }

    /// What follows a promotion: the history entry, the switchover request done.
    async fn promoted(
        &mut self,
        s: &Settings,
        commands: &Commands,
        l: &crate::ha::store::Leader,
        timeline: u32,
        lsn: u64,
    ) {
        // primary_conninfo still names the old leader: a later fence must not
        // bring this member back streaming from it.
        s.upstream.set(None);
        reload_later(commands);
        let entry = HistoryEntry {
            term: l.term,
            timeline,
            lsn,
            leader: self.name.clone(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        info!(term = l.term, timeline, "HA: promoted");
        if let Err(e) = self.store.append_history(&entry).await {
            warn!(error = %e, "HA: cannot record the promotion in the history");
        }
        // A switchover that brought this member here is done now that it is
        // writable (a request it cannot honour is dropped by a later round).
        if self.view.failover.is_some() {
            match self.store.clear_failover().await {
                Ok(()) => self.view.failover = None,
                Err(e) => warn!(error = %e, "HA: cannot drop the switchover request"),
            }
        }
        self.ensure_slots(s).await;
    }

    /// Synchronous mode, before promoting: the `sync` record names this member as its
    /// leader, in this term, before postgres can acknowledge its first commit, so that
    /// no member named by the previous leader's record can be promoted without the
    /// commits this one acknowledges. `on`: no standby (commits are acknowledged
    /// standalone until one is confirmed). `strict`: the previous record's standbys
    /// but this member, and postgres waits for every one of them, so that the record
    /// stays true from the first commit. False (no promotion this round) when the
    /// compare-and-set fails: the key may be lost.
    async fn record_sync_before_promoting(
        &mut self,
        s: &Settings,
        commands: &Commands,
        term: Term,
    ) -> bool {
        let previous = self.view.sync.clone();
        // How many of the named must confirm a commit (all, but in quorum mode).
        let (kept, quorum, confirm) = match self.cfg.sync_mode {
            SyncMode::Strict => {
                let kept: Vec<String> = previous
                    .map(|r| r.members.into_iter().filter(|m| *m != self.name).collect())
                    .unwrap_or_default();
                let n = kept.len();
                (kept, None, n)
            }
            // Quorum: the previous voters and leader, less this member, with the same
            // quorum; the setting asks for as many of them as keeps every set that can
            // acknowledge meeting every set that can promote (see sync::quorum_step).
            SyncMode::Quorum => {
                let q = previous.as_ref().and_then(|r| r.quorum).unwrap_or(0);
                let mut voters: Vec<String> = previous
                    .map(|r| {
                        let mut v = r.members;
                        v.push(r.leader);
                        v
                    })
                    .unwrap_or_default();
                voters.retain(|m| *m != self.name);
                voters.sort();
                voters.dedup();
                let k = voters.len().saturating_sub(q as usize);
                (voters, Some(q), k)
            }
            _ => (Vec::new(), None, 0),
        };
        let record = crate::ha::store::SyncState {
            leader: self.name.clone(),
            members: kept.clone(),
            term,
            quorum,
        };
        match self.store.put_sync(&record).await {
            Ok(true) => {}
            Ok(false) => {
                warn!("HA: the leader key is no longer ours; not promoting");
                return false;
            }
            Err(e) => {
                warn!(error = %e, "HA: cannot record the synchronous standbys before promoting; trying again next round");
                return false;
            }
        }
        self.view.sync = Some(record);
        // From its first commit the new primary waits for the standbys the record
        // names (`*`, any standby, in strict mode with none), or for none in `on` mode.
        self.sync_since.clear();
        s.sync_named.set_with_count(Some((kept, confirm)));
        if let Err(e) = commands.send(Command::Reload).await {
            warn!(error = %e, "HA: cannot apply synchronous_standby_names before promoting");
        }
        true
    }

    /// Runs `work`, a long action on postgres this member performs as the key holder,
    /// renewing the lease about every second meanwhile and moving the fence deadline
    /// with each renewal. `None` when the lease could not be renewed within
    /// `demote_after` (or is gone): `work` is dropped, and the caller must fence.
    async fn while_holding<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        guards: &mut Guards<'_>,
        what: &'static str,
    ) -> Option<T> {
        tokio::pin!(work);
        let every = self.cfg.loop_wait.min(Duration::from_secs(1));
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tokio::time::sleep(every) => {}
            }
            if self.renew().await {
                debug!(
                    action = what,
                    "HA: renewed the leader lease during a long action"
                );
                guards.arm(self.renewed_at.map(|t| t + self.cfg.fence_deadline()));
                continue;
            }
            let fresh = self
                .renewed_at
                .is_some_and(|t| clock::now().saturating_sub(t) < self.cfg.demote_after());
            if !fresh {
                return None;
            }
        }
    }

    /// Stops postgres at once so that it accepts no more writes, to come back as a
    /// standby streaming from nobody until a leader is known.
    async fn fence(&mut self, s: &Settings, pid: Option<i32>, commands: &Commands) {
        if let Err(e) = crate::replica::write_standby_signal(s, &s.pgdata) {
            error!(error = format!("{e:#}"), "HA: cannot write standby.signal");
        }
        s.upstream.set(None);
        if let Some(pid) = pid {
            let budget = self.stop_budget();
            local::stop_now(pid, budget).await;
        }
        // The reload is served once postgres runs again.
        reload_later(commands);
    }

    /// postgres's position for this round's decisions and member key. A standby that
    /// does not stream (its leader is gone, or it diverged from the one it names) is
    /// asked with `IDENTIFY_SYSTEM` which timeline it replays and how far it has WAL
    /// on it: the timeline of a history file in pg_wal (fetched before streaming on
    /// a new timeline) or of a WAL receiver that gave up is not where it is, and a
    /// former primary that wrote WAL nobody received must not look ahead of a clean
    /// replica. Unknown (`None`) rather than guessed when it does not answer.
    async fn local_facts(&self, s: &Settings) -> Option<local::Facts> {
        let mut f = local::facts(s).await?;
        if f.in_recovery && !f.streaming {
            let runner = self
                .runner
                .clone()
                .unwrap_or(crate::process::Runner::Direct);
            match crate::replica::remote::identify_local(s, &runner).await {
                Ok(at) => {
                    f.timeline = Some(at.timeline);
                    f.received = crate::backup::info::Lsn::parse(&at.lsn).map(|l| l.0);
                }
                Err(e) => {
                    debug!(
                        error = format!("{e:#}"),
                        "HA: the local standby does not say which timeline it replays"
                    );
                    f.timeline = None;
                }
            }
        }
        Some(f)
    }

    /// The names of the other members in the last read of the cluster.
    fn other_members(&self) -> Vec<String> {
        self.view
            .members
            .iter()
            .filter(|m| m.name != self.name)
            .map(|m| m.name.clone())
            .collect()
    }

    async fn ensure_slots(&mut self, s: &Settings) {
        let others = self.other_members();
        let now = clock::now();
        for m in &others {
            self.member_seen.insert(m.clone(), now);
        }
        // Members gone for MEMBER_SLOTS_TTL: their slots would hold WAL back for nobody
        // (up to max_slot_wal_keep_size each). A member that comes back after that
        // gets a new slot, and a base backup if the WAL it needs is gone.
        let gone: Vec<String> = self
            .member_seen
            .iter()
            .filter(|(name, at)| {
                !others.contains(name)
                    && **name != self.name
                    && now.saturating_sub(**at) >= MEMBER_SLOTS_TTL
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Bounded: a round that overstays delays the next renewal.
        let work = async {
            local::ensure_slots(s, &others).await?;
            local::drop_inactive_slots(s, &gone).await
        };
        match tokio::time::timeout(self.cfg.retry_timeout, work).await {
            Ok(Ok(())) => {
                for name in gone {
                    self.member_seen.remove(&name);
                }
            }
            Ok(Err(e)) => warn!(
                error = format!("{e:#}"),
                "HA: cannot create or drop the members' replication slots"
            ),
            Err(_) => warn!("HA: creating the members' replication slots takes too long"),
        }
    }

    /// Renews the session lease, or grants one; true on success. The renewal counts
    /// from when it was sent: etcd cannot expire the lease earlier than that plus its TTL.
    async fn renew(&mut self) -> bool {
        let sent = clock::now();
        let result = match self.lease {
            Some(lease) => {
                let within = match (self.holds_key(), self.renewed_or_confirmed()) {
                    (true, Some(t)) => self.cfg.renew_within(sent.saturating_sub(t)),
                    _ => self.cfg.retry_timeout,
                };
                self.store
                    .keep_alive_within(lease, within)
                    .await
                    .map(|()| lease)
            }
            None => self.store.grant(self.cfg.ttl).await,
        };
        match result {
            Ok(lease) => {
                self.lease = Some(lease);
                self.renewed_at = Some(sent);
                self.lease_tx.send_replace(self.lease);
                true
            }
            Err(StoreError::LeaseGone(lease)) => {
                warn!(
                    lease = format!("{lease:x}"),
                    "HA: the session lease expired; granting a new one"
                );
                self.lease = None;
                self.renewed_at = None;
                self.lease_tx.send_replace(None);
                false
            }
            Err(e) => {
                warn!(error = %e, "HA: cannot renew the session lease");
                false
            }
        }
    }

    /// Reads the cluster; on failure the previous view stays (decisions then rest on
    /// the age of the last renewal, which keeps growing).
    async fn refresh(&mut self) -> bool {
        match self.store.read().await {
            Ok(v) => {
                for m in &v.members {
                    self.known_apis.insert(m.name.clone(), m.api_url.clone());
                }
                self.view = v;
                true
            }
            Err(e) => {
                warn!(error = %e, "HA: cannot read the cluster state");
                false
            }
        }
    }

    /// Sleeps until the next round: `loop_wait`, or sooner when the leader key or a
    /// switchover request changes (a switchover then starts at once, not a round later).
    /// After a round that kept postgres possibly writable although its renewal failed,
    /// the next comes in time to fence by its own decision
    /// ([`HaConfig::next_round_in`]).
    async fn wait(&self) {
        let revision = self.view.revision;
        let started = tokio::time::Instant::now();
        let pause = match (self.last_renew_ok, self.armed, self.renewed_or_confirmed()) {
            (false, true, Some(t)) => self.cfg.next_round_in(clock::now().saturating_sub(t)),
            _ => self.cfg.loop_wait,
        };
        match self.store.wait_change(revision, pause).await {
            Ok(_) => {}
            Err(_) => tokio::time::sleep_until(started + pause).await,
        }
    }

    /// Whether the last view read shows this member's current lease holding the
    /// leader key.
    fn holds_key(&self) -> bool {
        self.view
            .leader
            .as_ref()
            .is_some_and(|l| l.name == self.name && Some(l.lease) == self.lease)
    }

    async fn publish(&self, s: &Settings, postgres: &Postgres, facts: Option<local::Facts>) {
        let Some(lease) = self.lease else {
            return;
        };
        let state = MemberState {
            name: self.name.clone(),
            host: self.cfg.advertise_host.clone(),
            port: s.port,
            api_url: format!("http://{}:{}", self.cfg.advertise_host, s.http_addr.port()),
            role: match postgres {
                Postgres::Primary => MemberRole::Primary,
                Postgres::Replica { .. } => MemberRole::Replica,
                Postgres::Stopped => MemberRole::Stopped,
            },
            timeline: facts.and_then(|f| f.timeline),
            received_lsn: facts.and_then(|f| f.received),
            replayed_lsn: facts.and_then(|f| f.replayed),
            term: self.term_seen,
            streaming: facts.is_some_and(|f| f.in_recovery && f.streaming),
            tags: self.cfg.tags,
        };
        if let Err(e) = self.store.put_member(&state, lease).await {
            warn!(error = %e, "HA: cannot publish this member's state");
        }
    }

    fn me(&self, has_data: bool, postgres: Postgres, facts: Option<local::Facts>) -> Me {
        Me {
            name: self.name.clone(),
            lease: self.lease,
            since_renewal: self
                .renewed_or_confirmed()
                .map(|t| clock::now().saturating_sub(t)),
            has_data,
            postgres,
            timeline: facts.and_then(|f| f.timeline),
            received_lsn: facts.and_then(|f| f.received),
            term_seen: self.term_seen,
            // Set by the round, which asks postgres and the leader (see `diverged`).
            diverged: false,
            initialize_stalled_for: match &self.initialize_stall {
                Some((winner, since)) if self.view.initialize.as_ref() == Some(winner) => {
                    clock::now().saturating_sub(*since)
                }
                _ => Duration::ZERO,
            },
            restoring: false,
            unwritable_for: self
                .unwritable_since
                .map_or(Duration::ZERO, |t| clock::now().saturating_sub(t)),
            tags: self.cfg.tags,
            rewind_failed: false,
            failsafe: self
                .failsafe_at
                .is_some_and(|t| clock::now().saturating_sub(t) < self.cfg.demote_after()),
            failsafe_leader: match self.cfg.failsafe {
                true => self.failsafe_accepted.leader_within(self.cfg.ttl),
                false => None,
            },
        }
    }

    /// The later of the last renewal and the last failsafe confirmation: what the
    /// fence deadline counts from.
    fn renewed_or_confirmed(&self) -> Option<Duration> {
        match (self.renewed_at, self.failsafe_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Failsafe mode, on a primary whose renewal failed: asks every member the leader
    /// recorded under `failsafe` to keep it; when all accept, the round counts as a
    /// renewal (see [`super::failsafe`]).
    async fn failsafe_check(&mut self, s: &Settings) {
        let leads = self
            .view
            .leader
            .as_ref()
            .is_some_and(|l| l.name == self.name);
        if !self.cfg.failsafe || self.view.paused || !(leads || self.failsafe_at.is_some()) {
            return;
        }
        let Some(members) = self.view.failsafe.clone() else {
            warn!("HA: failsafe: no member list recorded yet; fencing as usual");
            return;
        };
        if !members.contains_key(&self.name) {
            warn!("HA: failsafe: this member is not in the recorded member list; fencing as usual");
            return;
        }
        let started = clock::now();
        let others = members
            .into_iter()
            .filter(|(name, _)| *name != self.name)
            .collect::<Vec<_>>();
        let token = s
            .api_token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()));
        let path = format!("/failsafe?leader={}", self.name);
        let answers = peers::post(others.clone().into_iter(), &path, token.as_deref()).await;
        for (name, _) in &others {
            let status = answers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, code)| *code);
            if let Some(why) = super::failsafe::refused(status) {
                warn!(member = %name, reason = %why, "HA: failsafe: a member does not keep this leader; fencing as usual");
                return;
            }
        }
        if self.failsafe_at.is_none() {
            warn!(members = others.len(), "HA: failsafe: etcd cannot be reached, but every member keeps this leader: running on");
        }
        self.failsafe_at = Some(started);
    }

    /// Failsafe mode, on the leader while etcd answers: records who the members are,
    /// when that changed.
    async fn record_failsafe_members(&mut self, s: &Settings) {
        self.failsafe_at = None;
        let mut members: super::failsafe::Members = self
            .view
            .members
            .iter()
            .map(|m| (m.name.clone(), m.api_url.clone()))
            .collect();
        members.insert(
            self.name.clone(),
            format!("http://{}:{}", self.cfg.advertise_host, s.http_addr.port()),
        );
        if self.view.failsafe.as_ref() != Some(&members) {
            match self.store.put_failsafe(&members).await {
                Ok(()) => self.view.failsafe = Some(members),
                Err(e) => warn!(error = %e, "HA: cannot record the members for failsafe mode"),
            }
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            demote_after: self.cfg.demote_after(),
            max_lag: self.cfg.max_lag_on_failover,
            sync: self.cfg.sync_mode != SyncMode::Off,
            initialize_abandoned_after: self.cfg.ttl,
            primary_start_timeout: self.cfg.primary_start_timeout,
        }
    }

    /// What is left of the fence deadline for postgres to stop in, at least a moment.
    fn stop_budget(&self) -> Duration {
        let deadline = self.renewed_at.map(|t| t + self.cfg.fence_deadline());
        deadline
            .map(|d| d.saturating_sub(clock::now()))
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(100))
    }

    fn target(&self, name: &str) -> Option<Target> {
        self.view.member(name).map(|m| Target {
            name: m.name.clone(),
            host: m.host.clone(),
            port: m.port,
        })
    }

    /// Remembers a term this member followed or led, on disk too.
    fn saw_term(&mut self, s: &Settings, term: Term) {
        self.term_seen = self.term_seen.max(term);
        // Before the bootstrap PGDATA does not exist yet; a later round writes it.
        if self.term_written >= self.term_seen || !s.pgdata.join("PG_VERSION").exists() {
            return;
        }
        match crate::fsutil::write_atomic(
            &s.pgdata.join(TERM_FILE),
            format!("{}\n", self.term_seen).as_bytes(),
            s.run_as.as_ref().map(|u| u.owner()),
            0o600,
        ) {
            Ok(_) => self.term_written = self.term_seen,
            Err(e) => warn!(error = %e, "HA: cannot record the term seen"),
        }
    }

    /// Publishes what this round saw and decided.
    fn show(&self, action: &Action) {
        let Some(tx) = &self.status_tx else {
            return;
        };
        let leader = self.view.leader.as_ref();
        let is_leader = self.holds_key();
        let fence_deadline_in_ms = match (is_leader, self.renewed_at) {
            (true, Some(t)) => Some(
                (t + self.cfg.fence_deadline())
                    .saturating_sub(clock::now())
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
            _ => None,
        };
        tx.send_replace(Some(status::HaStatus {
            cluster: self.cfg.cluster.clone(),
            leader: leader.map(|l| l.name.clone()),
            term: leader.map(|l| l.term),
            is_leader,
            fence_deadline_in_ms,
            last_renew_ok: self.last_renew_ok,
            store_errors: self.store.errors(),
            action: format!("{action:?}"),
            members: self.view.members.clone(),
            failover: self.view.failover.clone(),
            sync: self.view.sync.clone(),
            optime: self.view.optime,
            history: self.view.history.clone(),
            paused: self.view.paused,
        }));
    }

    /// Logs an action when it differs from the last one, so a steady state is quiet.
    fn note(&mut self, action: &Action) {
        if self.last_action.as_ref() != Some(action) {
            info!(action = ?action, "HA: next action");
            self.last_action = Some(action.clone());
        }
    }
}

/// Whether PGDATA holds a backup restored with PGWARDEN_RESTORE_URL that is still
/// recovering to its target (recovery.signal, and no standby.signal, which would make
/// it a standby instead).
pub fn restoring(s: &Settings) -> bool {
    s.restore.is_some()
        && s.pgdata
            .join(crate::settings::restore::RECOVERY_SIGNAL)
            .exists()
        && !crate::replica::is_standby(&s.pgdata)
}

/// Deletes the initialize key if it still names `name`, logged.
async fn cancel_initialize_key(store: &EtcdStore, name: &str) {
    match store.clear_initialize(name).await {
        Ok(_) => info!("HA: removed the initialize key after a failed bootstrap of the cluster; another member may try"),
        Err(e) => warn!(error = %e, "HA: cannot remove the initialize key; the other members abandon it after a TTL"),
    }
}

/// Asks the supervisor to re-render the configuration (primary_conninfo follows the
/// shared upstream) and reload. Not awaited: the supervisor serves requests only while
/// postgres runs, and the loop must not wait for that.
fn reload_later(commands: &Commands) {
    let commands = commands.clone();
    tokio::spawn(async move {
        if let Err(e) = commands.send(Command::Reload).await {
            warn!(error = %e, "HA: cannot reload the configuration");
        }
    });
}

/// What keeps a postgres that may be writable on this member's lease in check: the
/// in-process watchdog's deadline and the dead-man switch, armed with the postmaster
/// that runs now (not the one a round read at its start: a fence restarts it).
struct Guards<'a> {
    deadline: &'a Deadline,
    deadman: &'a mut Option<deadman::DeadMan>,
    status: &'a watch::Receiver<SupervisorStatus>,
    /// How much later than the watchdog the dead-man switch fires
    /// ([`HaConfig::deadman_grace`]).
    deadman_grace: Duration,
}

impl Guards<'_> {
    /// Arms both at `at` (boot clock; the dead-man switch a grace later), or disarms
    /// them.
    fn arm(&mut self, at: Option<Duration>) {
        self.deadline.set(at);
        let pid = self.status.borrow().pid;
        let grace = self.deadman_grace;
        if let Some(d) = self.deadman.as_mut() {
            d.set(at.zip(pid).map(|(at, pid)| (pid, at + grace)));
        }
    }
}

/// The HA loop once spawned.
pub struct Running {
    loop_task: tokio::task::JoinHandle<()>,
    watchdog_task: tokio::task::JoinHandle<()>,
    name: String,
    store: EtcdStore,
    lease: watch::Receiver<Option<LeaseId>>,
    retry_timeout: Duration,
}

impl Running {
    /// Leaves the cluster once postgres has stopped (pgwarden is exiting): the loop
    /// stops and the lease is revoked, dropping the leader and member keys at once, so
    /// that a planned stop of the leader hands over without waiting for the TTL.
    pub async fn retire(self) {
        self.leave().await;
    }

    /// [`Running::retire`] after the restored backup failed to recover (postgres gave
    /// up, as when the archive ends before the target): the cluster was never
    /// initialized, so, as [`Ha::cancel_initialization`], the claim goes too, once the
    /// leader key has.
    pub async fn cancel_initialization(self) {
        let (store, name) = (self.store.clone(), self.name.clone());
        self.leave().await;
        cancel_initialize_key(&store, &name).await;
    }

    async fn leave(self) {
        self.loop_task.abort();
        self.watchdog_task.abort();
        let lease = *self.lease.borrow();
        let Some(lease) = lease else {
            return;
        };
        match tokio::time::timeout(self.retry_timeout, self.store.revoke(lease)).await {
            Ok(Ok(())) => info!("HA: left the cluster: lease revoked, keys released"),
            Ok(Err(e)) => {
                warn!(error = %e, "HA: cannot revoke the lease; its keys expire with its TTL")
            }
            Err(_) => warn!("HA: no answer revoking the lease; its keys expire with its TTL"),
        }
    }
}
