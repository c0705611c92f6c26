//! The metrics dashboards need beyond pgwarden's own: connections, database
//! statistics, wraparound, slots, checkpoints, start time and version, and
//! pgwarden's `process_*`. All from the monitor's snapshot; see docs/metrics.md.

use super::metrics::{counter_seconds, counter_vec, gauge, gauge_rows, gauge_vec};
use crate::monitor::{DatabaseStats, PgFacts};

/// Reads one statistic of a database.
type DbField = fn(&DatabaseStats) -> Option<i64>;
use prometheus::Registry;

fn non_negative(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

/// Registers the postgres series (only called while the monitor is connected).
pub fn register(r: &Registry, facts: &PgFacts, sizes: &[(String, i64)]) {
    let rows: Vec<(Vec<&str>, f64)> = facts
        .connections
        .iter()
        .map(|c| (vec![c.datname.as_str(), c.state.as_str()], c.count as f64))
        .collect();
    gauge_rows(
        r,
        "pgwarden_connections",
        "Client connections by database and state (pg_stat_activity)",
        &["datname", "state"],
        &rows,
    );
    if let Some(max) = facts.max_connections {
        gauge(r, "pgwarden_max_connections", "max_connections", max as f64);
    }
    if let Some(age) = facts.oldest_xact_age_seconds {
        gauge(
            r,
            "pgwarden_oldest_transaction_age_seconds",
            "Age of the oldest open client transaction",
            age,
        );
    }
    let per_db = |f: DbField| -> Vec<(String, u64)> {
        facts
            .databases
            .iter()
            .filter(|d| f(d).is_some())
            .map(|d| (d.datname.clone(), non_negative(f(d))))
            .collect()
    };
    let counters: [(&str, &str, DbField); 5] = [
        (
            "pgwarden_database_xact_commits_total",
            "Committed transactions",
            |d| d.xact_commit,
        ),
        (
            "pgwarden_database_xact_rollbacks_total",
            "Rolled back transactions",
            |d| d.xact_rollback,
        ),
        (
            "pgwarden_database_deadlocks_total",
            "Deadlocks detected",
            |d| d.deadlocks,
        ),
        (
            "pgwarden_database_temp_bytes_total",
            "Bytes written to temporary files",
            |d| d.temp_bytes,
        ),
        (
            "pgwarden_database_conflicts_total",
            "Queries cancelled by recovery conflicts",
            |d| d.conflicts,
        ),
    ];
    for (name, help, f) in counters {
        counter_vec(r, name, help, "datname", &per_db(f));
    }
    let xid_age: Vec<(String, f64)> = facts
        .databases
        .iter()
        .filter_map(|d| Some((d.datname.clone(), d.xid_age? as f64)))
        .collect();
    gauge_vec(
        r,
        "pgwarden_database_xid_age",
        "age(datfrozenxid): transactions since the oldest unfrozen one; wraparound comes at 2^31",
        "datname",
        &xid_age,
    );
    let sizes: Vec<(String, f64)> = sizes.iter().map(|(d, b)| (d.clone(), *b as f64)).collect();
    gauge_vec(
        r,
        "pgwarden_database_size_bytes",
        "Size of each database (read every 15 s)",
        "datname",
        &sizes,
    );

    let safe: Vec<(String, f64)> = facts
        .slots
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.safe_wal_size? as f64)))
        .collect();
    gauge_vec(
        r,
        "pgwarden_slot_safe_wal_size_bytes",
        "WAL that can still be written before the slot loses what it needs",
        "slot_name",
        &safe,
    );
    let info: Vec<(Vec<&str>, f64)> = facts
        .slots
        .iter()
        .map(|s| {
            (
                vec![
                    s.name.as_str(),
                    s.slot_type.as_deref().unwrap_or(""),
                    s.wal_status.as_deref().unwrap_or(""),
                ],
                1.0,
            )
        })
        .collect();
    gauge_rows(
        r,
        "pgwarden_slot_info",
        "Always 1: each slot's type and wal_status (reserved, extended, unreserved, lost)",
        &["slot_name", "slot_type", "wal_status"],
        &info,
    );

    let b = &facts.bgwriter;
    let ints: [(&str, &str, Option<i64>); 7] = [
        (
            "pgwarden_checkpoints_timed_total",
            "Checkpoints started by checkpoint_timeout",
            b.checkpoints_timed,
        ),
        (
            "pgwarden_checkpoints_requested_total",
            "Checkpoints requested (WAL volume, CHECKPOINT, shutdown)",
            b.checkpoints_req,
        ),
        (
            "pgwarden_checkpoint_buffers_written_total",
            "Buffers written by checkpoints",
            b.buffers_checkpoint,
        ),
        (
            "pgwarden_bgwriter_buffers_written_total",
            "Buffers written by the background writer",
            b.buffers_clean,
        ),
        (
            "pgwarden_bgwriter_maxwritten_clean_total",
            "Background writer rounds stopped at bgwriter_lru_maxpages",
            b.maxwritten_clean,
        ),
        (
            "pgwarden_backend_buffers_written_total",
            "Buffers written by backends themselves",
            b.buffers_backend,
        ),
        (
            "pgwarden_buffers_allocated_total",
            "Buffers allocated",
            b.buffers_alloc,
        ),
    ];
    for (name, help, v) in ints {
        if v.is_some() {
            super::metrics::counter(r, name, help, non_negative(v));
        }
    }
    if let Some(ms) = b.checkpoint_write_time {
        counter_seconds(
            r,
            "pgwarden_checkpoint_write_seconds_total",
            "Time checkpoints spent writing buffers",
            ms / 1000.0,
        );
    }
    if let Some(ms) = b.checkpoint_sync_time {
        counter_seconds(
            r,
            "pgwarden_checkpoint_sync_seconds_total",
            "Time checkpoints spent syncing files",
            ms / 1000.0,
        );
    }
    if let Some(t) = facts.start_time {
        gauge(
            r,
            "pgwarden_postgres_start_time_seconds",
            "When the postmaster started, in seconds since the epoch",
            t,
        );
    }
    gauge_vec(
        r,
        "pgwarden_postgres_info",
        "Always 1: the running server's version",
        "version",
        &[(facts.version.clone(), 1.0)],
    );
}

/// Registers pgwarden's own `process_*` series.
pub fn register_process(r: &Registry) {
    let Some(p) = super::process::read() else {
        return;
    };
    counter_seconds(
        r,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    gauge(
        r,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    gauge(
        r,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    gauge(
        r,
        "process_open_fds",
        "Number of open file descriptors.",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        gauge(
            r,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let Some(t) = p.start_time_seconds {
        gauge(
            r,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            t,
        );
    }
    gauge(
        r,
        "process_threads",
        "Number of OS threads in the process.",
        p.threads,
    );
}
