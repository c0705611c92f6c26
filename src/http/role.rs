//! Role checks for load balancers and Services, with Patroni's names so that an
//! HAProxy configuration written for Patroni works unchanged:
//!
//! - `/primary`, `/master`, `/read-write`: ready, and a primary;
//! - `/leader`: the same with HA off; with HA on, this member holds the leader key
//!   (Patroni's meaning: the key, whatever postgres is doing at the moment);
//! - `/sync`, `/synchronous`: a synchronous standby of the leader; none until
//!   synchronous mode exists, so always 503;
//! - `/async`, `/asynchronous`: ready, a standby, and (with HA) following a leader;
//! - `/replica`, `/standby`: ready, and a standby;
//! - `/read-only`: ready, either role;
//! - `/health`: postgres is up and running, whatever its role or lag.
//!
//! `/replica`, `/standby` and `/read-only` take `?lag=` (bytes, or `16MB`): a standby
//! further behind, or not streaming, fails.

use super::lag::parse_lag;
use super::readiness::{running, within_lag};
use super::{effective_role, probe, readiness, AppState};
use crate::settings::Role;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

/// Which roles a check accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Primary,
    Replica,
    Either,
}

/// The query string of a role check.
#[derive(Debug, Default, Deserialize)]
pub struct CheckQuery {
    /// Largest replay lag a standby may have, in bytes or with a unit.
    lag: Option<String>,
}

fn check(app: &AppState, want: Want, max_lag: Option<u64>) -> Result<(), String> {
    let (sup, snap) = app.view();
    readiness(&sup, &snap, &app.instance)?;
    let role = effective_role(&snap, &app.instance);
    let role_ok = match want {
        Want::Primary => role == Role::Primary,
        Want::Replica => role == Role::Replica,
        Want::Either => true,
    };
    if !role_ok {
        return Err(format!("this instance is a {role}"));
    }
    match (max_lag, &snap.facts) {
        (Some(max), Some(facts)) => within_lag(facts, max, "lag"),
        _ => Ok(()),
    }
}

fn answer(app: &AppState, want: Want, q: &CheckQuery) -> (StatusCode, String) {
    let max_lag = match q.lag.as_deref().map(parse_lag).transpose() {
        Ok(max) => max,
        // A typo in a load balancer's check must not look like a healthy backend.
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    probe(check(app, want, max_lag))
}

/// `/primary` and its aliases.
pub async fn primary(State(app): State<AppState>) -> impl IntoResponse {
    probe(check(&app, Want::Primary, None))
}

/// `/leader`: the leader key's holder with HA on, else `/primary`.
pub async fn leader(State(app): State<AppState>) -> impl IntoResponse {
    if !app.instance.ha {
        return probe(check(&app, Want::Primary, None));
    }
    let ha = app.ha.borrow().clone();
    probe(match ha {
        Some(h) if h.is_leader => Ok(()),
        Some(h) => Err(format!(
            "this member does not hold the leader key (the leader is {})",
            h.leader.as_deref().unwrap_or("nobody")
        )),
        None => Err("the HA loop has not read the cluster yet".to_owned()),
    })
}

/// `/sync`: no member is a synchronous standby until synchronous mode is built.
pub async fn sync(State(_app): State<AppState>) -> impl IntoResponse {
    probe(Err(
        "this member is not a synchronous standby (synchronous mode is not available)".to_owned(),
    ))
}

/// `/async`: a standby, streaming from the leader when HA is on.
pub async fn asynchronous(
    State(app): State<AppState>,
    Query(q): Query<CheckQuery>,
) -> impl IntoResponse {
    let (code, body) = answer(&app, Want::Replica, &q);
    if code != StatusCode::OK || !app.instance.ha {
        return (code, body);
    }
    let ha = app.ha.borrow().clone();
    probe(match ha {
        Some(h) if h.leader.is_some() && !h.is_leader => Ok(()),
        Some(_) => Err("no leader to be a standby of".to_owned()),
        None => Err("the HA loop has not read the cluster yet".to_owned()),
    })
}

/// `/replica` and `/standby`.
pub async fn replica(
    State(app): State<AppState>,
    Query(q): Query<CheckQuery>,
) -> impl IntoResponse {
    answer(&app, Want::Replica, &q)
}

/// `/read-only`.
pub async fn read_only(
    State(app): State<AppState>,
    Query(q): Query<CheckQuery>,
) -> impl IntoResponse {
    answer(&app, Want::Either, &q)
}

/// `/health`: postgres is up and running.
pub async fn health(State(app): State<AppState>) -> impl IntoResponse {
    let (sup, snap) = app.view();
    probe(running(&sup, &snap).map(|_| ()))
}
