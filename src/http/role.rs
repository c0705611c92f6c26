//! Role checks for load balancers and Services, with Patroni's names so that an
//! HAProxy configuration written for Patroni works unchanged:
//!
//! - `/primary`, `/master`, `/read-write`: ready, and a primary;
//! - `/leader`: the same with HA off; with HA on, this member holds the leader key
//!   (Patroni's meaning: the key, whatever postgres is doing at the moment);
//! - `/sync`, `/synchronous`: ready, a standby, and one the leader recorded as
//!   synchronous (`PGWARDEN_SYNC_MODE`); 503 everywhere else;
//! - `/async`, `/asynchronous`: ready, a standby, following a leader (with HA), and
//!   not recorded as synchronous;
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

/// Whether this member is a standby of the current leader, and a synchronous one.
fn standby_of_leader(app: &AppState) -> Result<bool, String> {
    let ha = app.ha.borrow().clone();
    let Some(h) = ha else {
        return Err("the HA loop has not read the cluster yet".to_owned());
    };
    let Some(leader) = h.leader.filter(|_| !h.is_leader) else {
        return Err("no leader to be a standby of".to_owned());
    };
    Ok(h.sync
        .is_some_and(|s| s.leader == leader && s.members.iter().any(|m| *m == app.instance.name)))
}

/// `/sync`: a standby the leader recorded as synchronous.
pub async fn sync(State(app): State<AppState>, Query(q): Query<CheckQuery>) -> impl IntoResponse {
    let (code, body) = answer(&app, Want::Replica, &q);
    if code != StatusCode::OK {
        return (code, body);
    }
    probe(match standby_of_leader(&app) {
        Ok(true) => Ok(()),
        Ok(false) => Err("this member is not a synchronous standby".to_owned()),
        Err(e) => Err(e),
    })
}

/// `/async`: a standby, of the leader when HA is on, and not a synchronous one.
pub async fn asynchronous(
    State(app): State<AppState>,
    Query(q): Query<CheckQuery>,
) -> impl IntoResponse {
    let (code, body) = answer(&app, Want::Replica, &q);
    if code != StatusCode::OK || !app.instance.ha {
        return (code, body);
    }
    probe(match standby_of_leader(&app) {
        Ok(false) => Ok(()),
        Ok(true) => Err("this member is a synchronous standby".to_owned()),
        Err(e) => Err(e),
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
