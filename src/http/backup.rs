//! `POST /backup`: a base backup of this instance into the archive, one at a time,
//! then the retention policy. On the control socket as it is (`pgwarden backup`),
//! over TCP behind the token. The schedule takes the same path.

use crate::backup::service::BackupError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the backup route needs: the backup service itself.
pub use crate::backup::service::Backups as BackupState;

/// The route.
pub fn router(state: BackupState) -> Router {
    Router::new()
        .route("/backup", post(backup))
        .with_state(state)
}

/// `?incremental=true`: only the blocks changed since the previous backup.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    #[serde(default)]
    incremental: bool,
}

async fn backup(
    State(b): State<BackupState>,
    Query(p): Query<Params>,
) -> (StatusCode, Json<Value>) {
    let kind = if p.incremental {
        crate::backup::Kind::Incremental(None)
    } else {
        crate::backup::Kind::Full
    };
    match b.take("request", kind).await {
        Ok(info) => (StatusCode::OK, Json(json!(info))),
        Err(e @ (BackupError::NoArchive | BackupError::Busy)) => {
            (StatusCode::CONFLICT, Json(json!({"error": e.to_string()})))
        }
        Err(e @ BackupError::Failed(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        ),
    }
}
