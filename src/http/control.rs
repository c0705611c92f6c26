//! The control API: `POST /promote`, `/switchover`, `/restart`, `/reload`, `/checkpoint`, `/fence`,
//! `/unfence`.
//!
//! On the local unix socket, file permissions are the authentication, so
//! `kubectl exec … pgwarden promote` needs nothing more. Over TCP every call needs
//! `Authorization: Bearer <PGWARDEN_API_TOKEN>`, compared in constant time: 401 when
//! it is missing or wrong, 403 for every call when no token is configured. The probes
//! never need it.

use crate::process::Runner;
use crate::replica::promote::{promote, PromoteError};
use crate::settings::{Secret, Settings};
use crate::supervisor::{Command, Commands};
use axum::extract::{Request, State};
use axum::http::{header::AUTHORIZATION, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// The supervisor's command queue.
    pub commands: Commands,
    /// With PGWARDEN_HA, once the store client is up: switchovers, and what
    /// `POST /promote` becomes.
    pub switchover: Arc<std::sync::OnceLock<crate::ha::Switchover>>,
}

/// The control routes, without authentication (for the unix socket).
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/promote", post(promote_route))
        .route("/switchover", post(super::switchover::post))
        .route("/failover", post(super::switchover::failover))
        .route(
            "/pause",
            post(|State(s): State<ControlState>| super::switchover::pause(s, true)),
        )
        .route(
            "/resume",
            post(|State(s): State<ControlState>| super::switchover::pause(s, false)),
        )
        .route(
            "/restart",
            post(|s| supervisor_command(s, Command::Restart)),
        )
        .route("/reload", post(|s| supervisor_command(s, Command::Reload)))
        .route("/fence", post(|s| supervisor_command(s, Command::Fence)))
        .route(
            "/unfence",
            post(|s| supervisor_command(s, Command::Unfence)),
        )
        .route("/reinit", post(|s| supervisor_command(s, Command::Reinit)))
        .route("/checkpoint", post(checkpoint))
        .with_state(state)
}

/// The control routes behind the bearer token (for TCP). `route_layer`, not `layer`:
/// the token guards these routes only, so a mistyped path is a 404 rather than a
/// misleading "the control API is disabled".
pub fn tcp_router(state: ControlState, token: Option<Secret>) -> Router {
    protect(router(state), token)
}

/// `routes` behind the bearer token, as every control route over TCP.
pub fn protect(routes: Router, token: Option<Secret>) -> Router {
    routes.route_layer(middleware::from_fn_with_state(Arc::new(token), authorize))
}

/// Equal length and equal bytes, looking at every byte whatever the answer.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

async fn authorize(State(token): State<Arc<Option<Secret>>>, req: Request, next: Next) -> Response {
    let Some(token) = token.as_ref() else {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the control API is disabled: set PGWARDEN_API_TOKEN"})),
        )
            .into_response();
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        tracing::warn!("control API call refused: missing or wrong bearer token");
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    next.run(req).await
}

async fn supervisor_command(
    State(ctl): State<ControlState>,
    command: Command,
) -> (StatusCode, Json<Value>) {
    match ctl.commands.send(command).await {
        Ok(message) => (
            StatusCode::OK,
            Json(json!({"ok": true, "message": message})),
        ),
        Err(error) => (
            StatusCode::CONFLICT,
            Json(json!({"ok": false, "error": error})),
        ),
    }
}

async fn checkpoint(State(ctl): State<ControlState>) -> (StatusCode, Json<Value>) {
    let s = &ctl.settings;
    let result = match crate::db::connect_local(s, &s.socket_dir, "postgres").await {
        Ok(client) => client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot connect to postgres: {e}")),
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"ok": true, "message": "checkpoint done"})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "error": e})),
        ),
    }
}

async fn promote_route(State(ctl): State<ControlState>) -> (StatusCode, Json<Value>) {
    // In HA mode only the leader key's holder may be writable: a promotion is a
    // switchover to this member, never a local pg_ctl promote.
    if ctl.settings.ha.is_some() {
        return match ctl.switchover.get() {
            Some(sw) => super::switchover::promote(sw).await,
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"promoted": false, "error": "refused: in HA mode a promotion is a switchover to this member, and the HA loop is not connected to the store yet"}),
                ),
            ),
        };
    }
    match promote(&ctl.settings, crate::replica::promote::WAIT).await {
        Ok(timeline) => {
            tokio::spawn(async move { crate::supervisor::after_start(&ctl.settings).await });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_fully() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
