//! `POST /switchover[?candidate=NAME][&leader=NAME]`: hands the leadership over, in
//! Patroni's spirit (its `POST /switchover` takes the same two names in a JSON body).
//! Answers 200 with the new leader once it holds the key; 412 when the cluster cannot
//! hand over as asked, 409 when a switchover is already under way, 503 when there is
//! no leader or the store does not answer, 404 with HA off.

use super::control::ControlState;
use crate::ha::{Switchover, SwitchoverError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The query string.
#[derive(Debug, Default, Deserialize)]
pub struct SwitchoverQuery {
    /// The member to hand over to; the best replica when absent.
    candidate: Option<String>,
    /// The leader the caller expects; refused when another member leads.
    leader: Option<String>,
}

/// `POST /switchover`.
pub async fn post(
    State(ctl): State<ControlState>,
    Query(q): Query<SwitchoverQuery>,
) -> (StatusCode, Json<Value>) {
    let Some(sw) = ctl.switchover.get() else {
        return off();
    };
    if let Some(expected) = &q.leader {
        let leader = sw.leader();
        if leader.as_deref() != Some(expected.as_str()) {
            return answer(Err(SwitchoverError::Refused(format!(
                "{expected} is not the leader (the leader is {})",
                leader.as_deref().unwrap_or("nobody")
            ))));
        }
    }
    answer(sw.request(q.candidate.as_deref()).await)
}

/// `POST /promote` in HA mode: a switchover to this member.
pub async fn promote(sw: &Switchover) -> (StatusCode, Json<Value>) {
    if sw.leader().as_deref() == Some(sw.name()) {
        return (
            StatusCode::OK,
            Json(
                json!({"promoted": true, "leader": sw.name(), "message": "this member already is the leader"}),
            ),
        );
    }
    answer(sw.request(Some(sw.name())).await)
}

pub(super) fn off() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({"ok": false, "error": "PGWARDEN_HA is off: there is no cluster to switch over"}),
        ),
    )
}

fn answer(result: Result<String, SwitchoverError>) -> (StatusCode, Json<Value>) {
    match result {
        Ok(leader) => (
            StatusCode::OK,
            Json(
                json!({"ok": true, "leader": leader, "message": format!("{leader} is the new leader")}),
            ),
        ),
        Err(e) => {
            let code = match e {
                SwitchoverError::Refused(_) => StatusCode::PRECONDITION_FAILED,
                SwitchoverError::UnderWay => StatusCode::CONFLICT,
                SwitchoverError::NoLeader(_) | SwitchoverError::Store(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                SwitchoverError::NotDone(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({"ok": false, "error": e.to_string()})))
        }
    }
}
