//! `POST /wal/archive` and `POST /wal/restore` on the control socket: what the thin
//! `wal-archive` and `wal-restore` clients call when `pgwarden run` is there.

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

/// The HTTP status the client turns back into the same error, and so the same exit
/// code, as the in-process path ([`WalError::from_http`]).
fn status_of(e: &WalError) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
        Ok(pushed) => (StatusCode::OK, pushed.as_str().into()),
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
