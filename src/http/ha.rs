//! `GET /cluster` and `GET /history`: the cluster as this member last read it from the
//! store. 404 with HA off; 503 until the HA loop has completed a round.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

fn unavailable(app: &AppState) -> Option<Response> {
    if app.ha.borrow().is_some() {
        return None;
    }
    Some(match app.instance.ha {
        false => (StatusCode::NOT_FOUND, "PGWARDEN_HA is off\n").into_response(),
        true => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA loop has not read the cluster yet\n",
        )
            .into_response(),
    })
}

/// The members, the leader and its term, the last recorded position.
pub async fn cluster(State(app): State<AppState>) -> Response {
    if let Some(r) = unavailable(&app) {
        return r;
    }
    let ha = app.ha.borrow().clone().unwrap_or_default();
    Json(ha.cluster_doc()).into_response()
}

/// The promotions, oldest first.
pub async fn history(State(app): State<AppState>) -> Response {
    if let Some(r) = unavailable(&app) {
        return r;
    }
    let ha = app.ha.borrow().clone().unwrap_or_default();
    Json(ha.history).into_response()
}
