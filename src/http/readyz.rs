//! `GET /readyz`: postgres accepts connections in its role.

use super::{probe, readiness, AppState};
use axum::extract::State;
use axum::response::IntoResponse;

pub async fn get(State(app): State<AppState>) -> impl IntoResponse {
    let (sup, snap) = app.view();
    probe(readiness(&sup, &snap, &app.instance))
}
