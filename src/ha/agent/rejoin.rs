//! Members that cannot simply follow: a standby that went past the leader's fork
//! (rewound while running), and, before the bootstrap, an initialize winner that died
//! before it ever led.

use super::Ha;
use crate::ha::clock;
use crate::ha::decide::Postgres;
use crate::ha::local;
use crate::settings::Settings;
use tracing::{debug, error};

impl Ha {
    /// Whether this standby replayed past the point where the timeline of the leader it
    /// follows forked from its own. Asked only while it does not stream (a streaming
    /// standby is on the leader's branch), and believed after two rounds in a row: a
    /// standby caught between two queries while it replays a timeline switch is not
    /// rewound for nothing.
    pub(super) async fn diverged(
        &mut self,
        s: &Settings,
        postgres: &Postgres,
        facts: Option<local::Facts>,
    ) -> bool {
        let following = match (postgres, &self.view.leader) {
            (Postgres::Replica { upstream: Some(u) }, Some(l)) => {
                *u == l.name && l.name != self.name
            }
            _ => false,
        };
        // This round's replay position, when postgres answered as a standby that does
        // not stream.
        let replayed = facts
            .filter(|f| f.in_recovery && !f.streaming)
            .and_then(|f| f.replayed);
        let asked = self.runner.clone().filter(|_| following).zip(replayed);
        let Some((runner, replayed)) = asked else {
            self.divergent_rounds = 0;
            return false;
        };
        let check = crate::replica::diverge::check(s, &runner, replayed);
        match tokio::time::timeout(self.cfg.retry_timeout, check).await {
            Ok(Ok(true)) => self.divergent_rounds += 1,
            Ok(Ok(false)) => self.divergent_rounds = 0,
            Ok(Err(e)) => {
                // A leader down or restarting is common and passes; another cluster's
                // leader is a mistake only a person can mend.
                match e.downcast_ref::<crate::replica::diverge::ForeignCluster>() {
                    Some(foreign) => error!(error = %foreign, "HA: cannot follow the leader"),
                    None => debug!(
                        error = format!("{e:#}"),
                        "HA: cannot tell whether this standby diverged from the leader"
                    ),
                }
                self.divergent_rounds = 0;
            }
            Err(_) => self.divergent_rounds = 0,
        }
        self.divergent_rounds >= 2
    }

    /// Starts (or stops) the clock on an initialize winner that holds no leader key in
    /// a cluster that never had a leader.
    pub(super) fn note_initialize_stall(&mut self) {
        let stalled = match &self.view.initialize {
            Some(w) if *w != self.name && crate::ha::decide::never_led(&self.view) => Some(w),
            _ => None,
        };
        match (stalled, &self.initialize_stall) {
            (Some(w), Some((seen, _))) if w == seen => {}
            (Some(w), _) => self.initialize_stall = Some((w.clone(), clock::now())),
            (None, _) => self.initialize_stall = None,
        }
    }
}
