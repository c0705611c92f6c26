//! `GET /startupz`: the bootstrap is done and postgres was started. Crash recovery and
//! WAL replay count as started, so a long recovery does not get the pod killed.

use super::{probe, AppState};
use axum::extract::State;
use axum::response::IntoResponse;

pub async fn get(State(app): State<AppState>) -> impl IntoResponse {
    let sup = app.sup.borrow().clone();
    probe(if sup.started {
        Ok(())
    } else {
        Err("the first start has not finished".to_owned())
    })
}
