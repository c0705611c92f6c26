//! What one refresh of the monitor learns, and the single query that learns it.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One connected standby, from `pg_stat_replication` on a primary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// The standby's `application_name` (its PGWARDEN_NAME).
    pub application_name: String,
    /// Its address.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, ...
    pub state: Option<String>,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: Option<String>,
    /// Last WAL location it replayed.
    pub replay_lsn: Option<String>,
    /// Bytes between our current WAL position and its replay position.
    pub lag_bytes: Option<i64>,
    /// Its replay lag in seconds, as postgres measures it.
    pub lag_seconds: Option<f64>,
}

/// One replication slot, from `pg_replication_slots`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// `physical` or `logical`.
    pub slot_type: Option<String>,
    /// A client is streaming from it.
    pub active: bool,
    /// Bytes of WAL the slot holds back.
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot loses WAL it needs (none when
    /// `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_size: Option<i64>,
    /// Since when no client has used it (PostgreSQL 17 and later; none while in use).
    #[serde(default)]
    pub inactive_since: Option<String>,
    /// Why postgres invalidated it, such as `wal_removed` (PostgreSQL 17 and later).
    #[serde(default)]
    pub invalidation_reason: Option<String>,
}

/// Client connections in one database and state, from `pg_stat_activity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionCount {
    /// Database (empty for a connection to none, such as a walsender).
    pub datname: String,
    /// `active`, `idle`, `idle in transaction`, ...
    pub state: String,
    /// How many.
    pub count: i64,
}

/// One database, from `pg_database` and `pg_stat_database`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStats {
    /// Database name.
    pub datname: String,
    /// Committed transactions (since the statistics were reset).
    pub xact_commit: Option<i64>,
    /// Rolled back transactions.
    pub xact_rollback: Option<i64>,
    /// Deadlocks detected.
    pub deadlocks: Option<i64>,
    /// Bytes written to temporary files.
    pub temp_bytes: Option<i64>,
    /// Queries cancelled by recovery conflicts (standby).
    pub conflicts: Option<i64>,
    /// `age(datfrozenxid)`: transactions until wraparound is 2^31 minus this.
    pub xid_age: Option<i64>,
}

/// Checkpointer and background writer statistics under the names of PostgreSQL 15's
/// `pg_stat_bgwriter`. PostgreSQL 17 moved the checkpoint figures to
/// `pg_stat_checkpointer` and dropped `buffers_backend`: [`query`] reads them from there,
/// and `buffers_backend` from `pg_stat_io`, so that every figure exists on every major.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BgwriterStats {
    /// Checkpoints started by `checkpoint_timeout`.
    pub checkpoints_timed: Option<i64>,
    /// Checkpoints requested (WAL volume, CHECKPOINT, shutdown).
    pub checkpoints_req: Option<i64>,
    /// Milliseconds spent writing checkpoint buffers.
    pub checkpoint_write_time: Option<f64>,
    /// Milliseconds spent syncing checkpoint files.
    pub checkpoint_sync_time: Option<f64>,
    /// Buffers written by checkpoints.
    pub buffers_checkpoint: Option<i64>,
    /// Buffers written by the background writer.
    pub buffers_clean: Option<i64>,
    /// Background writer rounds stopped at `bgwriter_lru_maxpages`.
    pub maxwritten_clean: Option<i64>,
    /// Buffers written by backends themselves.
    pub buffers_backend: Option<i64>,
    /// Buffers allocated.
    pub buffers_alloc: Option<i64>,
}

/// The WAL receiver of a standby, from `pg_stat_wal_receiver`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverInfo {
    /// `streaming`, `waiting`, ...
    pub status: Option<String>,
    /// The primary it streams from.
    pub sender_host: Option<String>,
    /// Its port.
    pub sender_port: Option<i64>,
    /// The slot it uses.
    pub slot_name: Option<String>,
    /// Seconds since the last message from the primary.
    pub last_msg_age_seconds: Option<f64>,
}

/// `pg_stat_archiver`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiverInfo {
    /// Files archived since the stats were reset.
    pub archived_count: Option<i64>,
    /// The last one.
    pub last_archived_wal: Option<String>,
    /// When.
    pub last_archived_time: Option<String>,
    /// Seconds since then.
    pub last_archived_age_seconds: Option<f64>,
    /// Failed attempts.
    pub failed_count: Option<i64>,
    /// The last file that failed.
    pub last_failed_wal: Option<String>,
    /// When.
    pub last_failed_time: Option<String>,
}

/// Facts read from postgres in one round trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgFacts {
    /// `server_version`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: i64,
    /// Running as a standby.
    pub in_recovery: bool,
    /// Current timeline.
    pub timeline: Option<i64>,
    /// Current WAL insert position (primary).
    pub current_lsn: Option<String>,
    /// Last WAL received (standby).
    pub received_lsn: Option<String>,
    /// Last WAL replayed (standby).
    pub replayed_lsn: Option<String>,
    /// Bytes between what the primary last reported and what we replayed (standby).
    pub lag_bytes: Option<i64>,
    /// Seconds since the last replayed transaction, 0 when caught up (standby).
    pub lag_seconds: Option<f64>,
    /// Parameters changed in the configuration that need a restart.
    pub pending_restart: Vec<String>,
    /// The WAL receiver, on a standby.
    pub receiver: Option<ReceiverInfo>,
    /// Connected standbys.
    pub replication: Vec<ReplicaInfo>,
    /// Replication slots.
    pub slots: Vec<SlotInfo>,
    /// WAL archiver statistics.
    pub archiver: ArchiverInfo,
    /// Client connections by database and state.
    #[serde(default)]
    pub connections: Vec<ConnectionCount>,
    /// `max_connections`.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Per-database statistics.
    #[serde(default)]
    pub databases: Vec<DatabaseStats>,
    /// Age of the oldest open transaction of a client, in seconds.
    #[serde(default)]
    pub oldest_xact_age_seconds: Option<f64>,
    /// Checkpointer and background writer statistics.
    #[serde(default)]
    pub bgwriter: BgwriterStats,
    /// `pg_postmaster_start_time()`, in seconds since the epoch.
    #[serde(default)]
    pub start_time: Option<f64>,
}

/// The monitor's latest view, published through `tokio::sync::watch`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The monitor holds a working connection to this postmaster.
    pub connected_pid: Option<i32>,
    /// When `facts` was read.
    pub updated: Option<Instant>,
    /// The last facts read (kept, marked stale, when the connection drops).
    pub facts: Option<PgFacts>,
    /// `.ready` files waiting in pg_wal/archive_status.
    pub ready_files: Option<u64>,
    /// Why the last connection attempt or query failed.
    pub error: Option<String>,
    /// Database sizes in bytes, read at most every [`super::SIZES_EVERY`] because
    /// `pg_database_size` walks every file of a database.
    pub database_sizes: Vec<(String, i64)>,
}

/// The monitor's statement for a server of PostgreSQL `major`: one statement, one row,
/// one JSON document, so a refresh costs a single round trip and the same backend
/// every time. The views it reads differ by major (docs/versions.md).
pub fn query(major: u32) -> String {
    let (slot_columns, bgwriter) = if major >= 17 {
        (SLOT_COLUMNS_17, BGWRITER_17)
    } else {
        ("", BGWRITER_15)
    };
    QUERY
        .replace("{slot_columns}", slot_columns)
        .replace("{bgwriter}", bgwriter)
}

/// `pg_replication_slots` columns new in PostgreSQL 17.
const SLOT_COLUMNS_17: &str = "inactive_since::text, invalidation_reason,";

/// PostgreSQL 15 and 16: everything is in `pg_stat_bgwriter`.
const BGWRITER_15: &str = "SELECT checkpoints_timed, checkpoints_req, checkpoint_write_time, \
    checkpoint_sync_time, buffers_checkpoint, buffers_clean, maxwritten_clean, buffers_backend, \
    buffers_alloc FROM pg_stat_bgwriter";

/// PostgreSQL 17 and later: checkpoints in `pg_stat_checkpointer`; the shared buffers
/// that processes other than the checkpointer and background writer wrote themselves
/// in `pg_stat_io` (`writes` counts blocks for relations on 17 and 18).
const BGWRITER_17: &str = "SELECT c.num_timed AS checkpoints_timed, \
    c.num_requested AS checkpoints_req, c.write_time AS checkpoint_write_time, \
    c.sync_time AS checkpoint_sync_time, c.buffers_written AS buffers_checkpoint, \
    w.buffers_clean, w.maxwritten_clean, \
    (SELECT sum(writes) FROM pg_stat_io WHERE object = 'relation' \
       AND backend_type NOT IN ('checkpointer', 'background writer'))::bigint AS buffers_backend, \
    w.buffers_alloc FROM pg_stat_checkpointer c, pg_stat_bgwriter w";

/// The statement, with `{slot_columns}` and `{bgwriter}` filled in by [`query`].
const QUERY: &str = r#"
SELECT json_build_object(
  'version', current_setting('server_version'),
  'version_num', current_setting('server_version_num')::int,
  'in_recovery', r.rec,
  'timeline', CASE WHEN r.rec
      THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
  'current_lsn', CASE WHEN r.rec THEN NULL ELSE pg_current_wal_lsn()::text END,
  'received_lsn', pg_last_wal_receive_lsn()::text,
  'replayed_lsn', pg_last_wal_replay_lsn()::text,
  'lag_bytes', CASE WHEN r.rec THEN greatest(0, pg_wal_lsn_diff(
      coalesce((SELECT latest_end_lsn FROM pg_stat_wal_receiver), pg_last_wal_receive_lsn()),
      pg_last_wal_replay_lsn()))::bigint END,
  'lag_seconds', CASE WHEN r.rec THEN
      CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END END,
  'pending_restart', (SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM pg_settings WHERE pending_restart),
  'receiver', (SELECT row_to_json(w) FROM (
      SELECT status, sender_host, sender_port, slot_name,
             extract(epoch FROM now() - last_msg_receipt_time) AS last_msg_age_seconds
      FROM pg_stat_wal_receiver) w),
  'replication', CASE WHEN r.rec THEN '[]'::json ELSE (SELECT coalesce(json_agg(x ORDER BY x.application_name), '[]') FROM (
      SELECT application_name, host(client_addr) AS client_addr, state, sync_state, replay_lsn::text,
             pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,
             extract(epoch FROM replay_lag) AS lag_seconds
      FROM pg_stat_replication) x) END,
  'slots', (SELECT coalesce(json_agg(s ORDER BY s.name), '[]') FROM (
      SELECT slot_name AS name, slot_type, active, wal_status, safe_wal_size, {slot_columns}
             CASE WHEN r.rec THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END AS retained_bytes
      FROM pg_replication_slots) s),
  'archiver', (SELECT row_to_json(a) FROM (
      SELECT archived_count, last_archived_wal, last_archived_time::text,
             extract(epoch FROM now() - last_archived_time) AS last_archived_age_seconds,
             failed_count, last_failed_wal, last_failed_time::text
      FROM pg_stat_archiver) a),
  'connections', (SELECT coalesce(json_agg(c ORDER BY c.datname, c.state), '[]') FROM (
      SELECT coalesce(datname, '') AS datname, coalesce(state, 'unknown') AS state, count(*) AS count
      FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2) c),
  'max_connections', current_setting('max_connections')::int,
  'oldest_xact_age_seconds', (SELECT extract(epoch FROM max(now() - xact_start))
      FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
  'databases', (SELECT coalesce(json_agg(d ORDER BY d.datname), '[]') FROM (
      SELECT d.datname, s.xact_commit, s.xact_rollback, s.deadlocks, s.temp_bytes, s.conflicts,
             age(d.datfrozenxid) AS xid_age
      FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid) d),
  'bgwriter', (SELECT row_to_json(b) FROM ({bgwriter}) b),
  'start_time', extract(epoch FROM pg_postmaster_start_time())
)::text
FROM (SELECT pg_is_in_recovery() AS rec) r
"#;

/// Database sizes, on the same connection but less often than [`query`].
pub const SIZES_QUERY: &str = r#"
SELECT coalesce(json_agg(json_build_array(datname, pg_database_size(oid)) ORDER BY datname), '[]')::text
FROM pg_database WHERE datallowconn
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_reads_each_major_s_views() {
        let q15 = query(15);
        assert!(q15.contains("FROM pg_stat_bgwriter"), "{q15}");
        assert!(!q15.contains("pg_stat_checkpointer") && !q15.contains("inactive_since"));
        for major in [17, 18] {
            let q = query(major);
            assert!(
                q.contains("FROM pg_stat_checkpointer c, pg_stat_bgwriter w"),
                "{q}"
            );
            assert!(
                q.contains("inactive_since::text, invalidation_reason,"),
                "{q}"
            );
        }
        for major in [15, 16, 17, 18] {
            assert!(
                !query(major).contains('{'),
                "a placeholder left in {major}'s"
            );
        }
    }
}
