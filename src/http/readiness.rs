//! Readiness, shared by `/readyz` and `/status`.

use super::Instance;
use crate::monitor::{Snapshot, REFRESH};
use crate::settings::Role;
use crate::state::{State, SupervisorStatus};

/// Ready means: postgres is running, the monitor's connection to this very postmaster
/// works and is fresh, and on a standby with a lag bound, the WAL receiver streams
/// within it. Connecting at all proves hot standby accepts read-only sessions.
pub fn readiness(sup: &SupervisorStatus, snap: &Snapshot, inst: &Instance) -> Result<(), String> {
    if sup.state != State::Running {
        return Err(format!("postgres is {}", sup.state.as_str()));
    }
    if sup.pid.is_none() || snap.connected_pid != sup.pid {
        return Err(match &snap.error {
            Some(e) => format!("no connection to postgres: {e}"),
            None => "no connection to postgres yet".to_owned(),
        });
    }
    let fresh = snap
        .updated
        .map(|t| t.elapsed() < REFRESH * 5)
        .unwrap_or(false);
    if !fresh {
        return Err("the status of postgres is stale".to_owned());
    }
    let Some(facts) = &snap.facts else {
        return Err("no status read from postgres yet".to_owned());
    };
    if facts.in_recovery {
        if let Some(max) = inst.ready_max_lag {
            let streaming =
                facts.receiver.as_ref().and_then(|r| r.status.as_deref()) == Some("streaming");
            if !streaming {
                return Err("the standby is not streaming from its primary".to_owned());
            }
            let lag = facts.lag_bytes.unwrap_or(i64::MAX);
            if lag > max as i64 {
                return Err(format!(
                    "replay lag {lag} bytes exceeds PGWARDEN_READY_MAX_LAG={max}"
                ));
            }
        }
    }
    Ok(())
}

/// The role postgres actually has: what the connection sees, else what was configured.
pub fn effective_role(snap: &Snapshot, inst: &Instance) -> Role {
    match &snap.facts {
        Some(f) if snap.connected_pid.is_some() => {
            if f.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            }
        }
        _ => inst.configured_role,
    }
}
