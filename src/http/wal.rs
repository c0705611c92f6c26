//! `POST /wal/archive` and `POST /wal/restore` on the control socket: what the thin
//! `wal-archive` and `wal-restore` clients call when `pgwarden run` is there.

use crate::wal::archive::Pushed;
use crate::wal::daemon::Daemon;
use crate::wal::WalError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The routes, served by `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/wal/archive", post(archive))
        .route("/wal/restore", post(restore))
        .with_state(daemon)
}

/// The HTTP status the client turns back into an exit code.
fn status_of(e: &WalError) -> StatusCode {
    match e {
        WalError::NotFound(_) => StatusCode::NOT_FOUND,
        WalError::Conflict(_) => StatusCode::CONFLICT,
        WalError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        WalError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        WalError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Deserialize)]
struct ArchiveQuery {
    path: PathBuf,
}

async fn archive(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<ArchiveQuery>,
) -> (StatusCode, String) {
    match d.archive(&q.path).await {
        Ok(Pushed::Uploaded) => (StatusCode::OK, "Uploaded".into()),
        Ok(Pushed::AlreadyArchived) => (StatusCode::OK, "AlreadyArchived".into()),
        Err(e) => (status_of(&e), e.to_string()),
    }
}

#[derive(Deserialize)]
struct RestoreQuery {
    name: String,
    dest: PathBuf,
    #[serde(default)]
    prefetch: bool,
}

async fn restore(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<RestoreQuery>,
) -> (StatusCode, String) {
    match d.restore(&q.name, &q.dest, q.prefetch).await {
        Ok(()) => (StatusCode::OK, "restored".into()),
        Err(e) => (status_of(&e), e.to_string()),
    }
}
