//! What the HA loop shows: the `ha` section of `/status`, `GET /cluster` and
//! `GET /history`. Published by the loop after every round; handlers only read it.

use super::store::{HistoryEntry, MemberState, Optime, Term};
use serde::{Deserialize, Serialize};

/// The HA state of this member and the cluster as it last read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// PGWARDEN_CLUSTER.
    pub cluster: String,
    /// The leader key's holder.
    pub leader: Option<String>,
    /// Its term (the key's creation revision).
    pub term: Option<Term>,
    /// This member holds the leader key with its current lease.
    pub is_leader: bool,
    /// Milliseconds left before postgres must accept no more writes on this member's
    /// lease, when it holds the key; 0 once passed.
    pub fence_deadline_in_ms: Option<u64>,
    /// The last renewal of the session lease succeeded.
    pub last_renew_ok: bool,
    /// The last decision, for humans ("Follow { leader: .. }").
    pub action: String,
    /// Every member key, sorted by name.
    pub members: Vec<MemberState>,
    /// The last recorded leader position.
    pub optime: Option<Optime>,
    /// Promotions, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// `GET /cluster`: the members as the store lists them, with the leader.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterDoc<'a> {
    /// PGWARDEN_CLUSTER.
    pub cluster: &'a str,
    /// The leader key's holder.
    pub leader: Option<&'a str>,
    /// Its term.
    pub term: Option<Term>,
    /// Every member key.
    pub members: &'a [MemberState],
    /// The last recorded leader position.
    pub optime: Option<Optime>,
}

impl HaStatus {
    /// The `/cluster` document.
    pub fn cluster_doc(&self) -> ClusterDoc<'_> {
        ClusterDoc {
            cluster: &self.cluster,
            leader: self.leader.as_deref(),
            term: self.term,
            members: &self.members,
            optime: self.optime,
        }
    }
}
