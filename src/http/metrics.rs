//! `GET /metrics`: Prometheus text format, built from the supervisor's status and the
//! monitor's snapshot at each scrape. A scrape never queries postgres.

use super::{effective_role, AppState};
use crate::settings::Role;
use crate::state::State as PgState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

pub(super) fn gauge(r: &Registry, name: &str, help: &str, v: f64) {
    if let Ok(g) = Gauge::new(name, help) {
        g.set(v);
        let _ = r.register(Box::new(g));
    }
}

pub(super) fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, f64)],
) {
    if let Ok(g) = GaugeVec::new(Opts::new(name, help), &[label]) {
        for (l, v) in values {
            g.with_label_values(&[l.as_str()]).set(*v);
        }
        let _ = r.register(Box::new(g));
    }
}

pub(super) fn counter(r: &Registry, name: &str, help: &str, v: u64) {
    if let Ok(c) = IntCounter::new(name, help) {
        c.inc_by(v);
        let _ = r.register(Box::new(c));
    }
}

/// A gauge with several labels, one series per row of label values.
pub(super) fn gauge_rows(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    rows: &[(Vec<&str>, f64)],
) {
    if let Ok(g) = GaugeVec::new(Opts::new(name, help), labels) {
        for (l, v) in rows {
            g.with_label_values(l).set(*v);
        }
        let _ = r.register(Box::new(g));
    }
}

/// A counter read from postgres, one series per label value. postgres's statistics
/// only grow until they are reset, which Prometheus's `rate()` handles as a restart.
pub(super) fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) {
    if let Ok(c) = IntCounterVec::new(Opts::new(name, help), &[label]) {
        for (l, v) in values {
            c.with_label_values(&[l.as_str()]).inc_by(*v);
        }
        let _ = r.register(Box::new(c));
    }
}

/// A counter of seconds (a float), without labels.
pub(super) fn counter_seconds(r: &Registry, name: &str, help: &str, v: f64) {
    if let Ok(c) = CounterVec::new(Opts::new(name, help), &[]) {
        c.with_label_values(&[] as &[&str]).inc_by(v.max(0.0));
        let _ = r.register(Box::new(c));
    }
}

/// Builds the registry for one scrape.
pub fn registry(app: &AppState) -> Registry {
    let (sup, snap) = app.view();
    let r = Registry::new();
    let facts = snap.facts.clone().unwrap_or_default();
    let connected = snap.connected_pid.is_some() && snap.connected_pid == sup.pid;

    gauge_vec(
        &r,
        "pgwarden_build_info",
        "pgwarden version",
        "version",
        &[(env!("CARGO_PKG_VERSION").to_owned(), 1.0)],
    );
    gauge(
        &r,
        "pgwarden_postgres_up",
        "1 when postgres runs and the monitor is connected to it",
        if connected { 1.0 } else { 0.0 },
    );
    let role = effective_role(&snap, &app.instance);
    gauge_vec(
        &r,
        "pgwarden_role",
        "1 for the role this instance has now",
        "role",
        &[
            ("primary".into(), (role == Role::Primary) as u8 as f64),
            ("replica".into(), (role == Role::Replica) as u8 as f64),
        ],
    );
    let states = [
        PgState::Bootstrapping,
        PgState::Starting,
        PgState::Running,
        PgState::Stopping,
        PgState::Stopped,
        PgState::Crashed,
        PgState::Fenced,
    ];
    let state_values: Vec<(String, f64)> = states
        .iter()
        .map(|s| (s.as_str().to_owned(), (*s == sup.state) as u8 as f64))
        .collect();
    gauge_vec(
        &r,
        "pgwarden_state",
        "1 for the supervisor's current state",
        "state",
        &state_values,
    );
    counter(
        &r,
        "pgwarden_postgres_restarts_total",
        "Restarts of postgres after a crash",
        sup.restarts as u64,
    );
    counter(
        &r,
        "pgwarden_auto_conf_overrides_total",
        "Parameters pgwarden owns that ALTER SYSTEM had set, found in postgresql.auto.conf and reset",
        sup.auto_conf_overrides,
    );
    gauge(
        &r,
        "pgwarden_config_error",
        "1 while /status shows a config_error (a refused change or a reset ALTER SYSTEM)",
        sup.config_error.is_some() as u8 as f64,
    );
    gauge(
        &r,
        "pgwarden_rewind_failed",
        "1 while pg_rewind could not rejoin this replica and its data was kept (PGWARDEN_REWIND_FAILED=keep); pgwarden reinit rebuilds it",
        sup.rewind_failed.is_some() as u8 as f64,
    );
    if connected {
        gauge(
            &r,
            "pgwarden_in_recovery",
            "1 on a standby",
            facts.in_recovery as u8 as f64,
        );
        gauge(
            &r,
            "pgwarden_pending_restart",
            "1 when a changed parameter needs a restart",
            (!facts.pending_restart.is_empty()) as u8 as f64,
        );
        if let Some(t) = facts.timeline {
            gauge(&r, "pgwarden_timeline", "Current timeline", t as f64);
        }
        if let Some(b) = facts.lag_bytes {
            gauge(
                &r,
                "pgwarden_standby_lag_bytes",
                "Replay lag of this standby, in bytes",
                b as f64,
            );
        }
        if let Some(s) = facts.lag_seconds {
            gauge(
                &r,
                "pgwarden_standby_lag_seconds",
                "Replay lag of this standby, in seconds",
                s,
            );
        }
        let streaming =
            facts.receiver.as_ref().and_then(|w| w.status.as_deref()) == Some("streaming");
        if facts.in_recovery {
            gauge(
                &r,
                "pgwarden_wal_receiver_streaming",
                "1 while this standby streams from its primary",
                streaming as u8 as f64,
            );
        }
        gauge(
            &r,
            "pgwarden_replicas_connected",
            "Standbys connected to this instance",
            facts.replication.len() as f64,
        );
        let lag_b: Vec<(String, f64)> = facts
            .replication
            .iter()
            .filter_map(|x| Some((x.application_name.clone(), x.lag_bytes? as f64)))
            .collect();
        let lag_s: Vec<(String, f64)> = facts
            .replication
            .iter()
            .map(|x| (x.application_name.clone(), x.lag_seconds.unwrap_or(0.0)))
            .collect();
        gauge_vec(
            &r,
            "pgwarden_replication_lag_bytes",
            "Replay lag of each standby, in bytes",
            "application_name",
            &lag_b,
        );
        gauge_vec(
            &r,
            "pgwarden_replication_lag_seconds",
            "Replay lag of each standby, in seconds",
            "application_name",
            &lag_s,
        );
        let active: Vec<(String, f64)> = facts
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.active as u8 as f64))
            .collect();
        let retained: Vec<(String, f64)> = facts
            .slots
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.retained_bytes? as f64)))
            .collect();
        gauge_vec(
            &r,
            "pgwarden_slot_active",
            "1 while a client streams from the slot",
            "slot_name",
            &active,
        );
        gauge_vec(
            &r,
            "pgwarden_slot_retained_wal_bytes",
            "WAL the slot holds back, in bytes",
            "slot_name",
            &retained,
        );
        let a = &facts.archiver;
        counter(
            &r,
            "pgwarden_archived_total",
            "Files archived (pg_stat_archiver)",
            a.archived_count.unwrap_or(0).max(0) as u64,
        );
        counter(
            &r,
            "pgwarden_archive_failed_total",
            "Failed archive attempts (pg_stat_archiver)",
            a.failed_count.unwrap_or(0).max(0) as u64,
        );
        if let Some(age) = a.last_archived_age_seconds {
            gauge(
                &r,
                "pgwarden_seconds_since_last_archive",
                "Seconds since the last file was archived",
                age,
            );
        }
        super::dashboard::register(&r, &facts, &snap.database_sizes);
    }
    super::dashboard::register_process(&r);
    if let Some(n) = snap.ready_files {
        gauge(
            &r,
            "pgwarden_archive_ready_files",
            ".ready files waiting to be archived",
            n as f64,
        );
    }
    let restore = app.restore.now();
    gauge(
        &r,
        "pgwarden_restore_running",
        "1 while a restore from an archive runs (a bootstrap, a replica rebuilt from it)",
        f64::from(u8::from(restore.is_some())),
    );
    if let Some(run) = &restore {
        gauge(
            &r,
            "pgwarden_restore_read_bytes",
            "Bytes of the restored backup's objects read from the archive so far",
            run.progress.bytes as f64,
        );
        gauge(
            &r,
            "pgwarden_restore_total_bytes",
            "Bytes of the restored backup's objects the restore reads in all",
            run.progress.total_bytes as f64,
        );
    }
    let backup = app.backup.lock().map(|b| b.clone()).unwrap_or_default();
    gauge(
        &r,
        "pgwarden_backup_running",
        "1 while a base backup is being taken",
        f64::from(u8::from(backup.running.is_some())),
    );
    if let Some(run) = &backup.running {
        gauge(
            &r,
            "pgwarden_backup_streamed_bytes",
            "Bytes of the running base backup read from PGDATA so far",
            run.progress.bytes as f64,
        );
        gauge(
            &r,
            "pgwarden_backup_total_bytes",
            "Bytes the running base backup reads in all",
            run.progress.total_bytes as f64,
        );
    }
    if let Some(last) = &backup.last {
        gauge(
            &r,
            "pgwarden_backup_last_end_timestamp_seconds",
            "When the last base backup ended, well or not",
            last.ended_at,
        );
        gauge(
            &r,
            "pgwarden_backup_last_duration_seconds",
            "How long the last base backup took",
            last.duration_seconds,
        );
        gauge(
            &r,
            "pgwarden_backup_last_size_bytes",
            "Bytes stored by the last base backup",
            last.size_bytes as f64,
        );
        gauge(
            &r,
            "pgwarden_backup_last_failed",
            "1 when the last base backup failed",
            f64::from(u8::from(last.error.is_some())),
        );
    }
    if let Some(run) = &backup.retention {
        gauge(
            &r,
            "pgwarden_backup_retention_failed",
            "1 when the last run of PGWARDEN_BACKUP_RETENTION stopped on an error",
            f64::from(u8::from(run.error.is_some())),
        );
        gauge(
            &r,
            "pgwarden_backup_retention_last_deleted_backups",
            "Backups the last run of PGWARDEN_BACKUP_RETENTION deleted",
            run.deleted_backups.len() as f64,
        );
    }
    if let Some(next) = backup
        .next_scheduled
        .as_deref()
        .and_then(crate::civil::parse_barman_time)
    {
        gauge(
            &r,
            "pgwarden_backup_next_scheduled_timestamp_seconds",
            "When PGWARDEN_BACKUP_SCHEDULE takes the next backup (in the past while it waits for a ready primary)",
            crate::civil::unix_seconds(next) as f64,
        );
    }
    if let Some(drill) = app.drill.status() {
        drill_metrics(&r, &drill);
    }
    if let Some(d) = app.daemon.borrow().as_ref() {
        let s = d.stats();
        gauge(
            &r,
            "pgwarden_archive_daemon_queue",
            "Files the WAL daemon has yet to upload",
            s.queue as f64,
        );
        counter(
            &r,
            "pgwarden_archive_daemon_uploaded_total",
            "Files the WAL daemon uploaded ahead of archive_command",
            s.uploaded,
        );
        counter(
            &r,
            "pgwarden_archive_daemon_failures_total",
            "Failed uploads by the WAL daemon",
            s.failures,
        );
        counter(
            &r,
            "pgwarden_archive_uploads_total",
            "Objects created in the archive, by the uploader or an archive_command call: one per archived file when nothing is pushed twice",
            s.uploads,
        );
        counter(
            &r,
            "pgwarden_archive_calls_succeeded_total",
            "archive_command calls that succeeded through the WAL daemon",
            s.archived,
        );
        counter(
            &r,
            "pgwarden_archive_calls_answered_from_upload_total",
            "archive_command calls answered at once because the file was already uploaded",
            s.answered_from_upload,
        );
        counter(
            &r,
            "pgwarden_restore_spool_hits_total",
            "restore_command calls served from the prefetch spool",
            s.spool_hits,
        );
        counter(
            &r,
            "pgwarden_restore_prefetch_failures_total",
            "Segments the prefetcher failed to fetch (restore_command then fetched them itself)",
            s.prefetch_failures,
        );
        if let Some(t) = s.last_restored_unix {
            gauge(
                &r,
                "pgwarden_restore_last_segment_timestamp_seconds",
                "When restore_command last got a WAL segment from the archive (a standby following an archive: its replay progress)",
                t,
            );
        }
        if let Some(age) = s.last_restored_age_seconds {
            gauge(
                &r,
                "pgwarden_restore_last_segment_age_seconds",
                "Seconds since restore_command last got a WAL segment from the archive",
                age,
            );
        }
        for h in d.histograms() {
            let _ = r.register(Box::new(h));
        }
    }
    if let Some(ha) = app.ha.borrow().as_ref() {
        ha_metrics(&r, ha);
    }
    r
}

/// The handler.
pub async fn get(State(app): State<AppState>) -> impl IntoResponse {
    let r = registry(&app);
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    let _ = encoder.encode(&r.gather(), &mut buf);
    ([(CONTENT_TYPE, encoder.format_type().to_owned())], buf)
}

/// Restore drills, once scheduled or run here. The last success's time is 0 until one
/// succeeds, so that `NoRecentRestoreDrill` fires for a schedule that never succeeds.
fn drill_metrics(r: &Registry, d: &crate::drill::DrillStatus) {
    gauge(
        r,
        "pgwarden_drill_running",
        "1 while a restore drill runs (the schedule's or a pgwarden restore-drill)",
        f64::from(u8::from(d.running.is_some())),
    );
    if let Some(p) = d.running.as_ref().and_then(|r| r.restore.as_ref()) {
        gauge(
            r,
            "pgwarden_drill_restore_read_bytes",
            "Bytes of the drilled backup's objects read from the archive so far",
            p.bytes as f64,
        );
        gauge(
            r,
            "pgwarden_drill_restore_total_bytes",
            "Bytes of the drilled backup's objects the drill's restore reads in all",
            p.total_bytes as f64,
        );
    }
    let success = d.record.last_success.as_ref();
    gauge(
        r,
        "pgwarden_drill_last_success_timestamp_seconds",
        "When the last successful restore drill ended (0: none yet)",
        success.map_or(0.0, |s| s.ended_unix),
    );
    if let Some(s) = success {
        if let Some(secs) = s.duration_seconds {
            gauge(
                r,
                "pgwarden_drill_last_duration_seconds",
                "How long the last successful drill took to restore and recover the backup until it accepted connections: the measured recovery time",
                secs,
            );
        }
        if let Some(t) = s.recovered_to_unix {
            gauge(
                r,
                "pgwarden_drill_recovered_to_timestamp_seconds",
                "The commit time of the last transaction the last successful drill recovered (the backup's end when none followed it)",
                t,
            );
        }
    }
    if let Some(last) = &d.record.last {
        gauge(
            r,
            "pgwarden_drill_last_failed",
            "1 when the last restore drill failed",
            f64::from(u8::from(!last.ok)),
        );
        gauge(
            r,
            "pgwarden_drill_last_end_timestamp_seconds",
            "When the last restore drill ended, well or not",
            last.ended_unix,
        );
    }
    counter(
        r,
        "pgwarden_drill_failures_total",
        "Restore drills that failed",
        d.record.failures,
    );
    if let Some(next) = d
        .next_scheduled
        .as_deref()
        .and_then(crate::civil::parse_barman_time)
    {
        gauge(
            r,
            "pgwarden_drill_next_scheduled_timestamp_seconds",
            "When PGWARDEN_DRILL_SCHEDULE runs the next drill",
            crate::civil::unix_seconds(next) as f64,
        );
    }
}

/// The HA loop's last round, with PGWARDEN_HA on: summing `pgwarden_ha_is_leader`
/// over a cluster's members must never exceed 1.
fn ha_metrics(r: &Registry, ha: &crate::ha::status::HaStatus) {
    gauge(
        r,
        "pgwarden_ha_is_leader",
        "1 while this member holds the leader key",
        ha.is_leader as u8 as f64,
    );
    gauge(
        r,
        "pgwarden_ha_term",
        "Term of the current leader key (its etcd creation revision), 0 when none",
        ha.term.unwrap_or(0) as f64,
    );
    gauge(
        r,
        "pgwarden_ha_last_renew_ok",
        "1 when the last renewal of the session lease succeeded",
        ha.last_renew_ok as u8 as f64,
    );
    counter(
        r,
        "pgwarden_ha_store_errors_total",
        "etcd calls that failed after their retries",
        ha.store_errors,
    );
    gauge(
        r,
        "pgwarden_ha_members",
        "Member keys in the store at the last read",
        ha.members.len() as f64,
    );
    if let Some(ms) = ha.fence_deadline_in_ms {
        gauge(
            r,
            "pgwarden_ha_fence_deadline_seconds",
            "On the leader: seconds left before postgres must accept no more writes without a renewal",
            ms as f64 / 1000.0,
        );
    }
}
