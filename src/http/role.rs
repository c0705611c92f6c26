//! `GET /primary` and `GET /replica`: for Services that select by role.

use super::{effective_role, probe, readiness, AppState};
use crate::settings::Role;
use axum::extract::State;
use axum::response::IntoResponse;

fn check(app: &AppState, want: Role) -> Result<(), String> {
    let (sup, snap) = app.view();
    readiness(&sup, &snap, &app.instance)?;
    let role = effective_role(&snap, &app.instance);
    if role == want {
        Ok(())
    } else {
        Err(format!("this instance is a {role}"))
    }
}

pub async fn primary(State(app): State<AppState>) -> impl IntoResponse {
    probe(check(&app, Role::Primary))
}

pub async fn replica(State(app): State<AppState>) -> impl IntoResponse {
    probe(check(&app, Role::Replica))
}
