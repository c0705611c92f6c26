//! What the HA loop needs from the distributed store, independent of etcd.
//!
//! Safety rests on the store's compare-and-set writes and lease keep-alives: a member
//! holds the leader key only while its lease lives, and a lease lasts at least its TTL
//! after the last keep-alive the store acknowledged. Reads are a view, never a promise.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// A lease id, as the store hands it out.
pub type LeaseId = i64;

/// A leadership term: the store revision at which the leader key was created. Every
/// acquisition gets a higher one, so it orders terms and serves as a fencing token.
pub type Term = i64;

/// Why a store call failed, as far as the caller needs to branch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or refused; the result of a write is unknown.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The lease expired (or was revoked): every key bound to it is gone.
    #[error("lease {0:x} is gone")]
    LeaseGone(LeaseId),
}

/// What a member is running as, from its own point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// postgres accepts writes.
    Primary,
    /// postgres is in recovery.
    Replica,
    /// postgres is not running (starting, stopped, being cloned or fenced).
    Stopped,
}

/// One member's state as it publishes it under `members/<name>`, bound to its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Instance name (`PGWARDEN_NAME`).
    pub name: String,
    /// Host other members connect to (`PGWARDEN_ADVERTISE_HOST`).
    pub host: String,
    /// postgres port.
    pub port: u16,
    /// Base URL of its HTTP API.
    pub api_url: String,
    /// What it runs as.
    pub role: MemberRole,
    /// postgres's timeline, when running.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// WAL received (a replica) or written (a primary), as a byte position.
    #[serde(default)]
    pub received_lsn: Option<u64>,
    /// WAL replayed (a replica), as a byte position.
    #[serde(default)]
    pub replayed_lsn: Option<u64>,
    /// The latest term whose leader this member followed or was.
    #[serde(default)]
    pub term: Term,
    /// A replica whose WAL receiver streams now (Patroni's `state: streaming`); false
    /// for a primary, and in member keys written before it was published.
    #[serde(default)]
    pub streaming: bool,
    /// Its tags (`PGWARDEN_NOFAILOVER`, `PGWARDEN_FAILOVER_PRIORITY`, `PGWARDEN_NOSYNC`).
    #[serde(default)]
    pub tags: Tags,
}

/// A member's tags, as Patroni's: what it may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Never promoted: it neither races nor is a switchover candidate.
    #[serde(default)]
    pub nofailover: bool,
    /// Breaks ties between members at the same position, higher first; 0 or less means
    /// `nofailover`.
    #[serde(default = "default_priority")]
    pub failover_priority: i32,
    /// Never named a synchronous standby.
    #[serde(default)]
    pub nosync: bool,
}

fn default_priority() -> i32 {
    1
}

impl Default for Tags {
    fn default() -> Tags {
        Tags {
            nofailover: false,
            failover_priority: 1,
            nosync: false,
        }
    }
}

impl Tags {
    /// Whether the member may be promoted at all.
    pub fn promotable(&self) -> bool {
        !self.nofailover && self.failover_priority > 0
    }
}

/// The leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The holder's name.
    pub name: String,
    /// The term: the key's creation revision.
    pub term: Term,
    /// The lease the key is bound to.
    pub lease: LeaseId,
}

/// The last position the leader recorded (Patroni's `status`/`optime`): a replica too
/// far behind it never promotes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Optime {
    /// Term of the leader that wrote it.
    pub term: Term,
    /// Its timeline.
    pub timeline: u32,
    /// Its WAL position.
    pub lsn: u64,
}

/// One promotion, as `GET /history` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The term that promoted.
    pub term: Term,
    /// The timeline the promotion started.
    pub timeline: u32,
    /// Where the previous timeline ended.
    pub lsn: u64,
    /// Who promoted.
    pub leader: String,
    /// When, in seconds since the epoch.
    pub time: u64,
}

/// A planned change of leader (`pgwarden switchover`, or `pgwarden promote` in HA mode),
/// as recorded under `failover` (Patroni's key of the same name). Created only when
/// absent, so two requests never race; the new leader deletes it once it leads. With
/// an empty `leader` it is a manual failover (`pgwarden failover --to NAME --force`),
/// made when no member leads: the candidate promotes without the eligibility checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The leader the request was made against; a request found under another leader
    /// is stale and dropped.
    pub leader: String,
    /// The member to hand over to; `None` lets the leader pick the best replica.
    #[serde(default)]
    pub candidate: Option<String>,
}

/// The synchronous standbys as the leader recorded them (the `sync` key, Patroni's):
/// with synchronous mode on, only these may be promoted. Written by the leader only
/// after postgres confirmed them synchronous, and shrunk before they are dropped from
/// `synchronous_standby_names`, so it never names fewer members than hold every commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The leader that wrote it.
    pub leader: String,
    /// The synchronous standbys.
    pub members: Vec<String>,
    /// The term of the leader that wrote it. A record older than the last leader's term
    /// says nothing about the commits acknowledged since: a new leader writes its own
    /// before it promotes, so an older one is never trusted (0: written before terms
    /// were recorded).
    #[serde(default)]
    pub term: Term,
    /// Quorum mode: how many voters (`members`, and the leader) a member must see, not
    /// ahead of it, besides itself, to be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

/// Everything under the cluster's prefix, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The store revision of the read.
    pub revision: i64,
    /// The leader key, when someone holds it.
    pub leader: Option<Leader>,
    /// Every member key, sorted by name. Unreadable entries are left out.
    pub members: Vec<MemberState>,
    /// The last leader position recorded.
    pub optime: Option<Optime>,
    /// Who won the bootstrap race, when someone did.
    pub initialize: Option<String>,
    /// Promotions, oldest first.
    pub history: Vec<HistoryEntry>,
    /// A switchover under way.
    pub failover: Option<FailoverRequest>,
    /// The synchronous standbys recorded, with synchronous mode on.
    pub sync: Option<SyncState>,
    /// The cluster is paused for maintenance (`pgwarden pause`): no automatic action.
    pub paused: bool,
    /// The members a leader in failsafe mode must all reach (the `failsafe` key).
    pub failsafe: Option<std::collections::BTreeMap<String, String>>,
}

impl ClusterView {
    /// The member key of `name`.
    pub fn member(&self, name: &str) -> Option<&MemberState> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// The store operations of the HA loop. Writes that may be retried after an unknown
/// result are idempotent, so a retry reports what actually happened.
pub trait Store: Send + Sync {
    /// Grants this process's session lease, `ttl` long.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;

    /// Renews the lease. [`StoreError::LeaseGone`] once it has expired: the caller must
    /// grant a new one, and has lost the leader key if it held it.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes the lease, dropping every key bound to it at once.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads the whole cluster state, linearizably.
    fn read(&self) -> impl Future<Output = Result<ClusterView, StoreError>> + Send;

    /// Creates the leader key for `name`, bound to `lease`, if nobody holds it. Returns
    /// the term when this call (or an earlier attempt of it) won.
    fn acquire_leader(
        &self,
        name: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<Option<Term>, StoreError>> + Send;

    /// Deletes the leader key if `name` holds it; true when it did (or nobody held it).
    fn release_leader(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Publishes `state` under `members/<name>`, bound to `lease`.
    fn put_member(
        &self,
        state: &MemberState,
        lease: LeaseId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the initialize key with `value` if absent; true when this caller's value
    /// is (now) the one there, so exactly one member runs initdb.
    fn initialize(&self, value: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the initialize key if it still names `winner`; true when it is gone.
    fn clear_initialize(
        &self,
        winner: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the leader's position, only while `name` holds the leader key with
    /// `term`; false otherwise.
    fn put_optime(
        &self,
        name: &str,
        optime: Optime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Appends a promotion to the history.
    fn append_history(
        &self,
        entry: &HistoryEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records the synchronous standbys, only while `state.leader` holds the leader key
    /// with `state.term`; false otherwise.
    fn put_sync(&self, state: &SyncState) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a switchover request if none is under way; false when one already is.
    /// A request made against another leader than `request.leader` is done or stale
    /// (the leader it named is gone) and is replaced, by compare-and-set.
    fn request_failover(
        &self,
        request: &FailoverRequest,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the switchover request, whatever it says.
    fn clear_failover(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records the members a leader in failsafe mode must all reach.
    fn put_failsafe(
        &self,
        members: &std::collections::BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Pauses (`true`) or resumes the cluster's automatic actions.
    fn set_pause(&self, paused: bool) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Waits until the leader key or the switchover request changes after `revision`,
    /// or `timeout` passes; true on a change (member keys, rewritten every round, do
    /// not count). A wake-up only: the caller reads the view again.
    fn wait_change(
        &self,
        revision: i64,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_state_round_trips_and_tolerates_missing_fields() {
        let m = MemberState {
            name: "pg-0".into(),
            host: "10.0.0.1".into(),
            port: 5432,
            api_url: "http://10.0.0.1:8008".into(),
            role: MemberRole::Replica,
            timeline: Some(2),
            received_lsn: Some(0x3000060),
            replayed_lsn: Some(0x3000000),
            term: 7,
            streaming: true,
            tags: Tags {
                nofailover: true,
                failover_priority: 0,
                nosync: true,
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MemberState>(&text).unwrap(), m);
        let old: MemberState = serde_json::from_str(
            r#"{"name":"a","host":"h","port":1,"api_url":"u","role":"stopped"}"#,
        )
        .unwrap();
        assert_eq!(
            (old.timeline, old.received_lsn, old.term, old.streaming),
            (None, None, 0, false)
        );
        // A member key written before tags existed: promotable, priority 1.
        assert_eq!(old.tags, Tags::default());
        assert!(old.tags.promotable() && !m.tags.promotable());
        let partial: Tags = serde_json::from_str(r#"{"nosync":true}"#).unwrap();
        assert_eq!((partial.failover_priority, partial.nosync), (1, true));
    }
}
