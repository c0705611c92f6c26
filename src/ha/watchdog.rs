//! The in-process watchdog: fences postgres at the lease deadline whatever the loop is
//! doing (see also the dead-man switch, [`super::deadman`], for when pgwarden itself
//! stalls).

use super::{clock, local};
use crate::settings::Settings;
use crate::state::SupervisorStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::error;

/// The boot-clock time by which postgres must accept no more writes, while it may be
/// writable on this member's lease; `None` otherwise.
#[derive(Debug, Clone, Default)]
pub(super) struct Deadline(Arc<std::sync::Mutex<Option<Duration>>>);

impl Deadline {
    pub(super) fn set(&self, at: Option<Duration>) {
        match self.0.lock() {
            Ok(mut g) => *g = at,
            Err(p) => *p.into_inner() = at,
        }
    }

    pub(super) fn get(&self) -> Option<Duration> {
        match self.0.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// Fences postgres when the deadline passes without the loop having moved it: the
/// loop decides at `demote_after`, but a store call stuck until its timeout could make
/// it late. A stalled pgwarden process is out of its reach.
pub(super) async fn watchdog(
    deadline: Deadline,
    s: Arc<Settings>,
    status: watch::Receiver<SupervisorStatus>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(at) = deadline.get() else {
            continue;
        };
        if clock::now() < at {
            continue;
        }
        deadline.set(None);
        let pid = status.borrow().pid;
        error!("HA: the lease deadline passed without a renewal; fencing postgres now");
        if let Err(e) = crate::replica::write_standby_signal(&s, &s.pgdata) {
            error!(error = format!("{e:#}"), "HA: cannot write standby.signal");
        }
        s.upstream.set(None);
        if let Some(pid) = pid {
            local::stop_now(pid, Duration::ZERO).await;
        }
    }
}
