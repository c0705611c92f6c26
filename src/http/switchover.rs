//! `POST /switchover[?candidate=NAME][&leader=NAME]`, or with Patroni's JSON body
//! (`{"leader": ..., "candidate": ...}`), so that its tooling works unchanged: hands
//! the leadership over.
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

/// The query string, or the JSON body.
#[derive(Debug, Default, Deserialize)]
pub struct SwitchoverQuery {
    /// The member to hand over to; the best replica when absent.
    candidate: Option<String>,
    /// The leader the caller expects; refused when another member leads.
    leader: Option<String>,
    /// Patroni's scheduled switchover: not supported, refused rather than done now.
    scheduled_at: Option<String>,
}

/// The request's names: the JSON body's where given, else the query string's.
fn request(q: SwitchoverQuery, body: &[u8]) -> Result<SwitchoverQuery, String> {
    let b: SwitchoverQuery = match body.iter().all(u8::is_ascii_whitespace) {
        true => SwitchoverQuery::default(),
        false => serde_json::from_slice(body)
            .map_err(|e| format!("the body is not a switchover request: {e}"))?,
    };
    if q.scheduled_at.is_some() || b.scheduled_at.is_some() {
        return Err("scheduled switchovers (scheduled_at) are not supported".into());
    }
    Ok(SwitchoverQuery {
        candidate: b.candidate.or(q.candidate),
        leader: b.leader.or(q.leader),
        scheduled_at: None,
    })
}

/// `POST /switchover`.
pub async fn post(
    State(ctl): State<ControlState>,
    Query(q): Query<SwitchoverQuery>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let Some(sw) = ctl.switchover.get() else {
        return off();
    };
    let q = match request(q, &body) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"ok": false, "error": e})),
            )
        }
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

/// `POST /failover?candidate=NAME&force=true` (or Patroni's JSON body): promote NAME,
/// without the eligibility checks when no member leads. `force` is required: the
/// candidate may lack acknowledged commits, and the caller must say it knows.
pub async fn failover(
    State(ctl): State<ControlState>,
    Query(q): Query<FailoverQuery>,
) -> (StatusCode, Json<Value>) {
    let Some(sw) = ctl.switchover.get() else {
        return off();
    };
    let Some(candidate) = q.candidate.filter(|c| !c.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "a failover names its candidate (candidate=NAME)"})),
        );
    };
    if !q.force {
        return (
            StatusCode::PRECONDITION_FAILED,
            Json(json!({"ok": false, "error": format!(
                "a failover promotes {candidate} even if it lacks acknowledged commits; confirm with force=true (pgwarden failover --to {candidate} --force)"
            )})),
        );
    }
    answer(sw.failover(&candidate).await)
}

/// The query of `POST /failover`.
#[derive(Debug, Default, Deserialize)]
pub struct FailoverQuery {
    /// The member to promote.
    candidate: Option<String>,
    /// The confirmation.
    #[serde(default)]
    force: bool,
}

/// `POST /pause` and `POST /resume`: no automatic failover while paused.
pub async fn pause(ctl: ControlState, paused: bool) -> (StatusCode, Json<Value>) {
    let Some(sw) = ctl.switchover.get() else {
        return off();
    };
    match sw.pause(paused).await {
        Ok(()) => (StatusCode::OK, Json(json!({"ok": true, "paused": paused}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "error": e.to_string()})),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q(candidate: Option<&str>, leader: Option<&str>) -> SwitchoverQuery {
        SwitchoverQuery {
            candidate: candidate.map(str::to_owned),
            leader: leader.map(str::to_owned),
            scheduled_at: None,
        }
    }

    #[test]
    fn the_names_come_from_patronis_json_body_or_the_query_string() {
        let r = request(q(Some("n3"), None), b"").unwrap();
        assert_eq!(
            (r.candidate.as_deref(), r.leader.as_deref()),
            (Some("n3"), None)
        );
        let r = request(q(None, None), br#"{"leader": "n1", "candidate": "n2"}"#).unwrap();
        assert_eq!(
            (r.candidate.as_deref(), r.leader.as_deref()),
            (Some("n2"), Some("n1"))
        );
        let r = request(q(Some("n3"), Some("n1")), br#"{"candidate": "n2"}"#).unwrap();
        assert_eq!(
            (r.candidate.as_deref(), r.leader.as_deref()),
            (Some("n2"), Some("n1"))
        );
        let e = request(q(None, None), b"candidate=n2").unwrap_err();
        assert!(e.contains("not a switchover request"), "{e}");
        let e = request(
            q(None, None),
            br#"{"scheduled_at": "2026-11-25T01:00+00:00"}"#,
        )
        .unwrap_err();
        assert!(e.contains("scheduled_at"), "{e}");
    }
}
