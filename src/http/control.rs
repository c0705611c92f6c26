//! Control routes served on the local unix socket (file permissions are the
//! authentication): `POST /promote`.

use crate::process::Runner;
use crate::replica::promote::{promote, PromoteError};
use crate::settings::Settings;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// What the control routes need.
#[derive(Clone)]
pub struct ControlState {
    /// The running settings.
    pub settings: Arc<Settings>,
    /// Spawns children through the reaper.
    pub runner: Runner,
}

/// The control routes.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/promote", post(promote_route))
        .with_state(state)
}

async fn promote_route(State(ctl): State<ControlState>) -> (StatusCode, Json<Value>) {
    match promote(&ctl.settings).await {
        Ok(timeline) => {
            tokio::spawn(async move {
                crate::supervisor::after_start(&ctl.settings, &ctl.runner).await
            });
            (
                StatusCode::OK,
                Json(json!({"promoted": true, "timeline": timeline})),
            )
        }
        Err(PromoteError::NotStandby) => (
            StatusCode::CONFLICT,
            Json(json!({"promoted": false, "error": PromoteError::NotStandby.to_string()})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"promoted": false, "error": format!("{e:#}")})),
        ),
    }
}
