//! Role checks for load balancers and Services, with Patroni's names so that an
//! HAProxy configuration written for Patroni works unchanged:
//!
//! - `/primary`, `/master`, `/leader`, `/read-write`: ready, and a primary;
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
