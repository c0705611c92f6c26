//! `POST /failsafe?leader=NAME`: a leader that cannot reach etcd asks this member to
//! keep it (see `ha::failsafe`). 200 "Accepted": this member will not race for the
//! leader key for a TTL. 500: this member runs as a primary itself. 502: failsafe mode
//! is off here. Behind the bearer token when one is configured (the leader sends its
//! own, the same on every member); open otherwise, as the read-only paths are.

use crate::ha::failsafe::Accepted;
use crate::ha::status::HaStatus;
use crate::ha::store::MemberRole;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

/// What the route needs.
#[derive(Clone)]
pub struct FailsafeState {
    /// This member's name.
    pub name: String,
    /// PGWARDEN_FAILSAFE is on.
    pub on: bool,
    /// The HA loop's last round.
    pub ha: watch::Receiver<Option<HaStatus>>,
    /// Where an accepted request is recorded for the HA loop.
    pub accepted: Accepted,
}

/// The query.
#[derive(Debug, Deserialize)]
pub struct FailsafeQuery {
    /// The leader asking.
    leader: String,
}

/// The route, behind `token` when one is set.
pub fn router(state: FailsafeState, token: Option<crate::settings::Secret>) -> Router {
    let routes = Router::new()
        .route("/failsafe", post(accept))
        .with_state(state);
    match token {
        Some(t) => super::control::protect(routes, Some(t)),
        None => routes,
    }
}

async fn accept(
    State(st): State<FailsafeState>,
    Query(q): Query<FailsafeQuery>,
) -> (StatusCode, Json<Value>) {
    if !st.on {
        return (
            StatusCode::BAD_GATEWAY,
            Json(
                json!({"ok": false, "error": "failsafe mode is off on this member (PGWARDEN_FAILSAFE)"}),
            ),
        );
    }
    let primary = st.ha.borrow().as_ref().is_some_and(|h| {
        h.is_leader
            || h.members
                .iter()
                .any(|m| m.name == st.name && m.role == MemberRole::Primary)
    });
    if primary || q.leader == st.name {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"ok": false, "error": "Running as a leader"})),
        );
    }
    st.accepted.accept(&q.leader);
    tracing::warn!(leader = %q.leader, "HA: failsafe: the leader cannot reach etcd and asked to be kept; not racing for a TTL");
    (
        StatusCode::OK,
        Json(json!({"ok": true, "message": "Accepted"})),
    )
}
