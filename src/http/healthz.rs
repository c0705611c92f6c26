//! `GET /healthz`: liveness. Fails only when pgwarden is stopping or has given up, so
//! the kubelet does not kill a pod that is starting, recovering or restarting postgres.

use super::{probe, AppState};
use crate::state::State;
use axum::extract::State as Extract;
use axum::response::IntoResponse;

pub async fn get(Extract(app): Extract<AppState>) -> impl IntoResponse {
    let sup = app.sup.borrow().clone();
    probe(match sup.state {
        _ if sup.gave_up => Err("postgres crashed too often; pgwarden is exiting".to_owned()),
        State::Stopping | State::Stopped => Err("postgres is shutting down".to_owned()),
        _ => Ok(()),
    })
}
