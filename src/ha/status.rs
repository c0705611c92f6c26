//! What the HA loop shows: the `ha` section of `/status`, `GET /cluster` and
//! `GET /history`. Published by the loop after every round; handlers only read it.

use super::store::{FailoverRequest, HistoryEntry, MemberState, Optime, SyncState, Term};
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
    /// etcd calls that failed after their retries since pgwarden started.
    #[serde(default)]
    pub store_errors: u64,
    /// The last decision, for humans ("Follow { leader: .. }").
    pub action: String,
    /// Every member key, sorted by name.
    pub members: Vec<MemberState>,
    /// The switchover under way, if any.
    #[serde(default)]
    pub failover: Option<FailoverRequest>,
    /// The synchronous standbys recorded, with synchronous mode.
    #[serde(default)]
    pub sync: Option<SyncState>,
    /// The last recorded leader position.
    pub optime: Option<Optime>,
    /// Promotions, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The cluster is paused (`pgwarden pause`).
    #[serde(default)]
    pub paused: bool,
}

/// `GET /cluster`: the members as the store lists them, with the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDoc {
    /// PGWARDEN_CLUSTER.
    pub cluster: String,
    /// The leader key's holder.
    pub leader: Option<String>,
    /// Its term.
    pub term: Option<Term>,
    /// Every member key.
    pub members: Vec<MemberState>,
    /// The last recorded leader position.
    pub optime: Option<Optime>,
    /// The cluster is paused (`pgwarden pause`): no automatic action.
    #[serde(default)]
    pub paused: bool,
}

impl HaStatus {
    /// The `/cluster` document.
    pub fn cluster_doc(&self) -> ClusterDoc {
        ClusterDoc {
            cluster: self.cluster.clone(),
            leader: self.leader.clone(),
            term: self.term,
            members: self.members.clone(),
            optime: self.optime,
            paused: self.paused,
        }
    }
}

/// A WAL position as postgres prints it.
fn lsn(v: Option<u64>) -> String {
    v.map_or_else(
        || "-".to_owned(),
        |v| format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff),
    )
}

/// A member's tags that differ from the defaults, for `pgwarden list`.
fn tags(t: &crate::ha::store::Tags) -> String {
    let mut out = Vec::new();
    if t.nofailover {
        out.push("nofailover".to_owned());
    }
    if t.failover_priority != 1 {
        out.push(format!("priority={}", t.failover_priority));
    }
    if t.nosync {
        out.push("nosync".to_owned());
    }
    match out.is_empty() {
        true => "-".to_owned(),
        false => out.join(","),
    }
}

impl ClusterDoc {
    /// `pgwarden list`: one line per member, Patroni's `list` in spirit.
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "member".to_owned(),
            "host".to_owned(),
            "role".to_owned(),
            "timeline".to_owned(),
            "received".to_owned(),
            "lag".to_owned(),
            "term seen".to_owned(),
            "tags".to_owned(),
        ]];
        for m in &self.members {
            let leader = self.leader.as_deref() == Some(m.name.as_str());
            let lag = match (self.optime, m.received_lsn) {
                (Some(o), Some(r)) => o.lsn.saturating_sub(r).to_string(),
                _ => "-".to_owned(),
            };
            rows.push([
                format!("{}{}", m.name, if leader { " *" } else { "" }),
                format!("{}:{}", m.host, m.port),
                format!("{:?}", m.role).to_lowercase(),
                m.timeline.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                lsn(m.received_lsn),
                lag,
                m.term.to_string(),
                tags(&m.tags),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "cluster {}, leader {} (term {}){}\n",
            self.cluster,
            self.leader.as_deref().unwrap_or("none"),
            self.term.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            if self.paused {
                ", PAUSED: no automatic failover"
            } else {
                ""
            }
        );
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::store::MemberRole;

    #[test]
    fn lists_members_with_the_leader_marked() {
        let m = |name: &str, role, lsn| MemberState {
            name: name.into(),
            host: "10.0.0.1".into(),
            port: 5432,
            api_url: String::new(),
            role,
            timeline: Some(2),
            received_lsn: Some(lsn),
            replayed_lsn: Some(lsn),
            term: 7,
            streaming: false,
            tags: Default::default(),
        };
        let mut doc = ClusterDoc {
            cluster: "c".into(),
            leader: Some("a".into()),
            term: Some(7),
            members: vec![
                m("a", MemberRole::Primary, 0x1_0000_0100),
                m("b", MemberRole::Replica, 0x1_0000_0000),
            ],
            optime: Some(Optime {
                term: 7,
                timeline: 2,
                lsn: 0x1_0000_0100,
            }),
            paused: false,
        };
        assert_eq!(
            doc.table(),
            "cluster c, leader a (term 7)\n\
             member  host           role     timeline  received  lag  term seen  tags\n\
             a *     10.0.0.1:5432  primary  2         1/100     0    7          -\n\
             b       10.0.0.1:5432  replica  2         1/0       256  7          -\n"
        );
        doc.paused = true;
        doc.members[1].tags.nofailover = true;
        doc.members[1].tags.failover_priority = 3;
        let table = doc.table();
        assert!(
            table.starts_with("cluster c, leader a (term 7), PAUSED"),
            "{table}"
        );
        assert!(table.contains("nofailover,priority=3"), "{table}");
    }
}
