//! Failover slots on a member that runs as a standby (what is synchronized and why:
//! `pgconf/failover_slots.rs`).

use super::Ha;
use crate::ha::local;
use crate::settings::Settings;
use tracing::{debug, warn};

impl Ha {
    /// Once per postmaster running as a standby, with failover slots on: drops the
    /// failover slots left from when this member was the primary (a switchover, or a
    /// failover it needed no rewind after), so that its slot synchronization worker
    /// can copy the leader's. The worker fails on such a slot and tries again 10 s
    /// later; a former primary starts as a standby, so the first round of each
    /// postmaster is enough.
    pub(super) async fn tidy_failover_slots(
        &mut self,
        s: &Settings,
        pid: Option<i32>,
        facts: Option<local::Facts>,
    ) {
        let standby = facts.is_some_and(|f| f.in_recovery);
        if !standby || pid.is_none() || pid == self.failover_slots_tidied {
            return;
        }
        if !s.failover_slots().enabled {
            return;
        }
        let work = local::drop_leftover_failover_slots(s);
        match tokio::time::timeout(self.cfg.retry_timeout, work).await {
            Ok(Ok(dropped)) => {
                for slot in dropped {
                    warn!(slot = %slot, "HA: dropped a logical failover slot left from when this member was the primary; the leader's is synchronized here instead");
                }
                self.failover_slots_tidied = pid;
            }
            // Tried again next round.
            Ok(Err(e)) => warn!(
                error = format!("{e:#}"),
                "HA: cannot drop the failover slots left from when this member was the primary"
            ),
            Err(_) => debug!("HA: dropping leftover failover slots takes too long"),
        }
    }
}
