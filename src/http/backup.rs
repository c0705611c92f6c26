//! `POST /backup`: a base backup of this instance into the archive, one at a time.
//! On the control socket as it is (`pgwarden backup`), over TCP behind the token.

use crate::backup::take::Job;
use crate::backup::BackupStatus;
use crate::process::Runner;
use crate::settings::Settings;
use crate::wal::daemon::Daemon;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the backup route needs.
#[derive(Clone)]
pub struct BackupState {
    /// The running settings.
    pub settings: Arc<Settings>,
    /// Spawns pg_basebackup through the reaper.
    pub runner: Runner,
    /// The WAL daemon (its storage client), once it runs.
    pub daemon: watch::Receiver<Option<Arc<Daemon>>>,
    /// Progress and the last result, shared with /status and /metrics.
    pub status: Arc<Mutex<BackupStatus>>,
    /// Held while a backup runs.
    pub one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// The route.
pub fn router(state: BackupState) -> Router {
    Router::new()
        .route("/backup", post(backup))
        .with_state(state)
}

async fn backup(State(b): State<BackupState>) -> (StatusCode, Json<Value>) {
    // A daemon that only restores has no archive of its own to take backups into.
    let Some(daemon) = b.daemon.borrow().clone().filter(|d| d.archives()) else {
        return (
            StatusCode::CONFLICT,
            Json(
                json!({"error": "backups go to the archive, and none is set: set PGWARDEN_ARCHIVE_URL"}),
            ),
        );
    };
    let Ok(_guard) = b.one_at_a_time.try_lock() else {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": "a backup is already running"})),
        );
    };
    let job = Job {
        settings: &b.settings,
        archive: daemon.config(),
        storage: daemon.storage(),
        compression: b.settings.backup_compression,
        runner: &b.runner,
        status: b.status.clone(),
    };
    match job.run().await {
        Ok(info) => (StatusCode::OK, Json(json!(info))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": format!("{e:#}")})),
        ),
    }
}
