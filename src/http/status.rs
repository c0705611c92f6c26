//! `GET /status`: everything pgwarden knows, as JSON. Always 200.

use super::{effective_role, readiness, AppState, Instance};
use crate::monitor::{ArchiverInfo, ReceiverInfo, ReplicaInfo, SlotInfo, Snapshot};
use crate::settings::Role;
use crate::state::{State as PgState, SupervisorStatus};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

/// WAL positions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lsns {
    /// Current insert position (primary).
    pub current: Option<String>,
    /// Last received (standby).
    pub received: Option<String>,
    /// Last replayed (standby).
    pub replayed: Option<String>,
}

/// Replication lag of this standby.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lag {
    /// Bytes.
    pub bytes: Option<i64>,
    /// Seconds.
    pub seconds: Option<f64>,
}

/// The archiver section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Archiver {
    /// From pg_stat_archiver.
    #[serde(flatten)]
    pub stats: ArchiverInfo,
    /// `.ready` files waiting to be archived.
    pub ready_files: Option<u64>,
    /// The WAL daemon's figures, when archiving is on.
    pub daemon: Option<crate::wal::daemon::DaemonStats>,
}

/// The monitor's health.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// It holds a working connection.
    pub connected: bool,
    /// Seconds since the last refresh.
    pub age_seconds: Option<f64>,
    /// The last error.
    pub error: Option<String>,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    /// PGWARDEN_NAME.
    pub name: String,
    /// The role postgres has now.
    pub role: Role,
    /// PGWARDEN_ROLE.
    pub configured_role: Role,
    /// Lifecycle state.
    pub state: PgState,
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// Why not, when not.
    pub not_ready_reason: Option<String>,
    /// `/startupz` would answer 200.
    pub started: bool,
    /// The postmaster's pid.
    pub pid: Option<i32>,
    /// Server version.
    pub version: Option<String>,
    /// Restarts after a crash.
    pub restarts: u32,
    /// How the last postgres process ended.
    pub last_exit: Option<String>,
    /// Current timeline.
    pub timeline: Option<i64>,
    /// WAL positions.
    pub lsn: Lsns,
    /// Lag of this standby.
    pub lag: Lag,
    /// The WAL receiver of this standby.
    pub receiver: Option<ReceiverInfo>,
    /// Connected standbys.
    pub replication: Vec<ReplicaInfo>,
    /// Replication slots.
    pub slots: Vec<SlotInfo>,
    /// Archiving.
    pub archiver: Archiver,
    /// A parameter change waits for a restart.
    pub pending_restart: bool,
    /// Which ones.
    pub pending_restart_settings: Vec<String>,
    /// The monitor connection.
    pub monitor: MonitorInfo,
    /// Why the last configuration change was refused (the running one is kept), or
    /// which owned parameters `ALTER SYSTEM` had set and pgwarden reset.
    pub config_error: Option<String>,
    /// pg_rewind could not rejoin this replica to its primary and its data was kept
    /// (`PGWARDEN_REWIND_FAILED=keep`): why. `pgwarden reinit` rebuilds it.
    #[serde(default)]
    pub rewind_failed: Option<String>,
    /// The base backup under way, and the last one.
    #[serde(default)]
    pub backup: crate::backup::BackupStatus,
    /// A restore from an archive under way (a bootstrap, a replica rebuilt from its
    /// archive): the backup, bytes read of its objects, the total, the rate, the time
    /// left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::progress::RestoreRunning>,
    /// Automatic failover, when PGWARDEN_HA is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::status::HaStatus>,
    /// Restore drills, once scheduled or run here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::drill::DrillStatus>,
}

impl StatusDoc {
    /// Builds the document from the two published states.
    pub fn build(sup: &SupervisorStatus, snap: &Snapshot, inst: &Instance) -> StatusDoc {
        let ready = readiness(sup, snap, inst);
        let facts = snap.facts.clone().unwrap_or_default();
        let have_facts = snap.facts.is_some();
        StatusDoc {
            name: inst.name.clone(),
            role: effective_role(snap, inst),
            configured_role: inst.configured_role,
            state: sup.state,
            ready: ready.is_ok(),
            not_ready_reason: ready.err(),
            started: sup.started,
            pid: sup.pid,
            version: have_facts.then(|| facts.version.clone()),
            restarts: sup.restarts,
            last_exit: sup.last_exit.clone(),
            timeline: facts.timeline,
            lsn: Lsns {
                current: facts.current_lsn.clone(),
                received: facts.received_lsn.clone(),
                replayed: facts.replayed_lsn.clone(),
            },
            lag: Lag {
                bytes: facts.lag_bytes,
                seconds: facts.lag_seconds,
            },
            receiver: facts.receiver.clone(),
            replication: facts.replication.clone(),
            slots: facts.slots.clone(),
            archiver: Archiver {
                stats: facts.archiver.clone(),
                ready_files: snap.ready_files,
                daemon: None,
            },
            pending_restart: !facts.pending_restart.is_empty(),
            pending_restart_settings: facts.pending_restart.clone(),
            monitor: MonitorInfo {
                connected: snap.connected_pid.is_some(),
                age_seconds: snap.updated.map(|t| t.elapsed().as_secs_f64()),
                error: snap.error.clone(),
            },
            config_error: sup.config_error.clone(),
            rewind_failed: sup.rewind_failed.clone(),
            backup: Default::default(),
            restore: None,
            ha: None,
            drill: None,
        }
    }
}

pub async fn get(State(app): State<AppState>) -> Json<StatusDoc> {
    let (sup, snap) = app.view();
    let mut doc = StatusDoc::build(&sup, &snap, &app.instance);
    doc.archiver.daemon = app.daemon.borrow().as_ref().map(|d| d.stats());
    doc.backup = app.backup.lock().map(|b| b.clone()).unwrap_or_default();
    doc.restore = app.restore.now();
    doc.ha = app.ha.borrow().clone();
    doc.drill = app.drill.status();
    Json(doc)
}
