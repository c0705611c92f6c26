//! Readiness, shared by `/readyz`, the role checks and `/status`.

use super::Instance;
use crate::monitor::{PgFacts, Snapshot, REFRESH};
use crate::settings::Role;
use crate::state::{State, SupervisorStatus};

/// Running means: postgres is running and the monitor's connection to this very
/// postmaster works and is fresh. Connecting at all proves that hot standby accepts
/// read-only sessions. Returns what the monitor last read.
pub fn running<'a>(sup: &SupervisorStatus, snap: &'a Snapshot) -> Result<&'a PgFacts, String> {
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
    snap.facts
        .as_ref()
        .ok_or_else(|| "no status read from postgres yet".to_owned())
}

/// A standby within `max` bytes of replay lag. The lag is only known while the WAL
/// receiver streams (it is measured against the end of WAL the primary last reported),
/// so a standby that does not stream fails any bound. A primary has no lag.
pub fn within_lag(facts: &PgFacts, max: u64, setting: &str) -> Result<(), String> {
    if !facts.in_recovery {
        return Ok(());
    }
    let streaming = facts.receiver.as_ref().and_then(|r| r.status.as_deref()) == Some("streaming");
    if !streaming {
        return Err("the standby is not streaming from its primary".to_owned());
    }
    let lag = facts.lag_bytes.unwrap_or(i64::MAX);
    if lag > max as i64 {
        return Err(format!("replay lag {lag} bytes exceeds {setting}={max}"));
    }
    Ok(())
}

/// Ready means: `running`, and on a standby with `PGWARDEN_READY_MAX_LAG`, streaming
/// within it.
pub fn readiness(sup: &SupervisorStatus, snap: &Snapshot, inst: &Instance) -> Result<(), String> {
    let facts = running(sup, snap)?;
    match inst.ready_max_lag {
        Some(max) => within_lag(facts, max, "PGWARDEN_READY_MAX_LAG"),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::ReceiverInfo;

    fn standby(status: Option<&str>, lag: Option<i64>) -> PgFacts {
        PgFacts {
            in_recovery: true,
            lag_bytes: lag,
            receiver: status.map(|s| ReceiverInfo {
                status: Some(s.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn lag_bounds() {
        let primary = PgFacts::default();
        let cases = [
            (primary, 0, true),
            (standby(Some("streaming"), Some(0)), 0, true),
            (standby(Some("streaming"), Some(100)), 100, true),
            (standby(Some("streaming"), Some(101)), 100, false),
            (standby(Some("streaming"), None), 1 << 40, false),
            (standby(Some("waiting"), Some(0)), 1 << 40, false),
            (standby(None, Some(0)), 1 << 40, false),
        ];
        for (facts, max, ok) in cases {
            assert_eq!(
                within_lag(&facts, max, "lag").is_ok(),
                ok,
                "{facts:?} {max}"
            );
        }
    }
}
