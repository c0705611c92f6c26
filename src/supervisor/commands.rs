//! Requests to the supervisor from the control API and the CLI.

use tokio::sync::{mpsc, oneshot};

/// What the supervisor can be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Re-render, validate and reload the configuration.
    Reload,
    /// Stop postgres (after a CHECKPOINT on a primary) and start it again.
    Restart,
    /// Stop postgres cleanly and keep it stopped, across pod restarts, until unfenced.
    Fence,
    /// [`Command::Fence`] for a switchover's hand-over. Its marker says so: the HA loop
    /// lifts it when pgwarden starts again (the hand-over it belonged to ended with
    /// the process that ran it), where an operator's fence stays until unfenced.
    Hold,
    /// Lift a fence and start postgres.
    Unfence,
    /// Rebuild this standby from its primary: stop postgres, discard the data, clone
    /// the primary again (`pgwarden reinit`).
    Reinit,
    /// Stop the standby, rewind it from the primary in primary_conninfo, and start it
    /// again as that primary's standby (the HA loop, when this member diverged).
    Rejoin,
}

/// A command with the channel its answer goes back on.
#[derive(Debug)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// `Ok(what happened)` or `Err(why not)`.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The sending side, for HTTP handlers.
#[derive(Clone)]
pub struct Commands(pub mpsc::Sender<Request>);

impl Commands {
    /// Sends `command` and waits for the supervisor's answer.
    pub async fn send(&self, command: Command) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Request { command, reply: tx })
            .await
            .map_err(|_| "the supervisor is not running".to_owned())?;
        rx.await
            .map_err(|_| "the supervisor dropped the request".to_owned())?
    }
}

/// Marker file in PGDATA that keeps an instance fenced across restarts.
pub const FENCE_MARKER: &str = "pgwarden.fenced";

/// The first line of a [`FENCE_MARKER`] written by [`Command::Hold`].
pub const HOLD_TEXT: &str = "held by a switchover's hand-over";

/// Lifts a fence left by a switchover's hand-over that pgwarden did not finish (it was
/// killed or stopped during it); an operator's fence stays. True when one was lifted.
pub fn lift_interrupted_hold(pgdata: &std::path::Path) -> std::io::Result<bool> {
    let marker = pgdata.join(FENCE_MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) if text.starts_with(HOLD_TEXT) => {
            std::fs::remove_file(&marker)?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
