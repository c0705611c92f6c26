//! The supervisor's published state. Only the supervisor writes it, through a
//! `tokio::sync::watch` channel; probes, the monitor and `/status` read it.

use serde::{Deserialize, Serialize};

/// Lifecycle of the postgres instance, as shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// initdb or pg_basebackup is filling PGDATA.
    Bootstrapping,
    /// postgres was spawned and is not accepting connections yet (includes crash recovery).
    Starting,
    /// postmaster.pid says ready (primary) or standby (hot standby).
    Running,
    /// A shutdown was requested and postgres has not exited yet.
    Stopping,
    /// postgres has exited after a shutdown.
    Stopped,
    /// postgres crashed; pgwarden restarts it after a backoff or gives up.
    Crashed,
    /// postgres is stopped on purpose while pgwarden stays up.
    Fenced,
}

impl State {
    /// The name used in /status and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Bootstrapping => "bootstrapping",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
            State::Fenced => "fenced",
        }
    }
}

/// What the supervisor knows, published on every change.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorStatus {
    /// Current state.
    pub state: State,
    /// The postmaster's pid while one is running.
    pub pid: Option<i32>,
    /// The first start has finished (bootstrap done, postgres spawned).
    pub started: bool,
    /// Restarts after a crash since pgwarden started.
    pub restarts: u32,
    /// How the last postgres process ended, if one did.
    pub last_exit: Option<String>,
    /// Crashed too often: pgwarden is exiting so the kubelet takes over.
    pub gave_up: bool,
    /// A shutdown signal arrived: pgwarden exits once postgres has stopped. A restart
    /// or a fence stops postgres too, but pgwarden stays, so they leave this false.
    pub exiting: bool,
    /// Why the last configuration change was refused (cleared by a good one), or
    /// which owned parameters `ALTER SYSTEM` had set and pgwarden reset.
    pub config_error: Option<String>,
    /// Owned parameters found in postgresql.auto.conf and reset, since pgwarden started.
    pub auto_conf_overrides: u64,
    /// pg_rewind could not rejoin this replica to its primary and the data was kept
    /// (`PGWARDEN_REWIND_FAILED=keep`): why. Cleared by a rejoin or a `reinit`.
    pub rewind_failed: Option<String>,
}

impl SupervisorStatus {
    /// The status before anything has happened.
    pub fn bootstrapping() -> SupervisorStatus {
        SupervisorStatus {
            state: State::Bootstrapping,
            pid: None,
            started: false,
            restarts: 0,
            last_exit: None,
            gave_up: false,
            exiting: false,
            config_error: None,
            auto_conf_overrides: 0,
            rewind_failed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_status_json() {
        for s in [
            State::Bootstrapping,
            State::Starting,
            State::Running,
            State::Stopping,
            State::Stopped,
            State::Crashed,
            State::Fenced,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
