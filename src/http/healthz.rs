//! `GET /healthz`: liveness. Fails only when pgwarden is exiting or has given up, so
//! the kubelet does not kill a pod that is starting, recovering, fenced, or stopping
//! postgres for a planned restart or a fence.

use super::{probe, AppState};
use crate::state::{State, SupervisorStatus};
use axum::extract::State as Extract;
use axum::response::IntoResponse;

/// The liveness decision: only pgwarden's own end fails it.
pub fn liveness(sup: &SupervisorStatus) -> Result<(), String> {
    if sup.gave_up {
        Err("postgres crashed too often; pgwarden is exiting".to_owned())
    } else if sup.exiting || sup.state == State::Stopped {
        Err("pgwarden is shutting down".to_owned())
    } else {
        Ok(())
    }
}

pub async fn get(Extract(app): Extract<AppState>) -> impl IntoResponse {
    probe(liveness(&app.sup.borrow()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pgwardens_end_fails_liveness() {
        let status = |state, exiting, gave_up| SupervisorStatus {
            state,
            exiting,
            gave_up,
            ..SupervisorStatus::bootstrapping()
        };
        let cases = [
            (status(State::Bootstrapping, false, false), true),
            (status(State::Starting, false, false), true),
            (status(State::Running, false, false), true),
            // A planned restart or a fence stops postgres while pgwarden stays.
            (status(State::Stopping, false, false), true),
            (status(State::Fenced, false, false), true),
            (status(State::Crashed, false, false), true),
            (status(State::Stopping, true, false), false),
            (status(State::Stopped, true, false), false),
            (status(State::Crashed, false, true), false),
        ];
        for (sup, alive) in cases {
            assert_eq!(liveness(&sup).is_ok(), alive, "{sup:?}");
        }
    }
}
