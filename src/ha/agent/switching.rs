//! The leader's side of a switchover, as actions of the loop.

use super::{handover, reload_later, Guards, Ha};
use crate::ha::store::{FailoverRequest, Store};
use crate::settings::Settings;
use crate::state::SupervisorStatus;
use crate::supervisor::{Command, Commands};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

impl Ha {
    /// Switchover, on the leader: postgres stops cleanly (a checkpoint first, then a
    /// fast shutdown, during which the WAL senders send the shutdown checkpoint), the
    /// candidate is seen to have received it, and only then is the key released and
    /// postgres started again as the candidate's standby: its WAL ends where the
    /// candidate's new timeline starts, so it follows without pg_rewind. Anything
    /// that fails before the release gives up the switchover and starts postgres
    /// writable again under the key this member still holds.
    pub(super) async fn hand_over(
        &mut self,
        candidate: String,
        s: &Settings,
        status: &watch::Receiver<SupervisorStatus>,
        commands: &Commands,
        guards: &mut Guards<'_>,
    ) {
        // The others stand aside for a named candidate only.
        if self
            .view
            .failover
            .as_ref()
            .is_some_and(|f| f.candidate.is_none())
        {
            let named = FailoverRequest {
                leader: self.name.clone(),
                candidate: Some(candidate.clone()),
            };
            let renamed = match self.store.clear_failover().await {
                Ok(()) => self.store.request_failover(&named).await,
                Err(e) => Err(e),
            };
            if let Err(e) = renamed {
                warn!(error = %e, "HA: switchover: cannot name the candidate; giving up");
                return;
            }
        }
        info!(candidate = %candidate, "HA: switchover: stopping postgres cleanly");
        if let Err(e) = commands.send(Command::Hold).await {
            warn!(error = %e, "HA: switchover: cannot stop postgres; giving up");
            self.give_up_switchover(s, commands, None).await;
            return;
        }
        if !handover::wait_stopped(status, self.cfg.ttl).await {
            warn!("HA: switchover: postgres did not stop in time; giving up");
            self.give_up_switchover(s, commands, Some(status)).await;
            return;
        }
        let runner = self
            .runner
            .clone()
            .unwrap_or(crate::process::Runner::Direct);
        let checkpoint = match handover::shutdown_checkpoint(s, &runner).await {
            Ok(c) => c,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "HA: switchover: cannot read the shutdown checkpoint; giving up"
                );
                self.give_up_switchover(s, commands, Some(status)).await;
                return;
            }
        };
        let started = tokio::time::Instant::now();
        let caught_up = loop {
            // The lease must outlive the wait: the key is still ours to release. The
            // watchdog and the dead-man switch follow, should postgres come back
            // writable on giving up (the switch stays disarmed while postgres is down).
            if self.renew().await {
                guards.arm(self.renewed_at.map(|t| t + self.cfg.fence_deadline()));
            }
            self.refresh().await;
            // The member key is published once a round; the candidate's /status is at
            // most a second old, which keeps a switchover short whatever loop_wait.
            let member = self.view.member(&candidate);
            let published = member.and_then(|m| m.received_lsn);
            let asked = match member {
                Some(m) => super::peers::ask(
                    std::iter::once((m.name.clone(), m.api_url.clone())),
                    "/status",
                )
                .await
                .into_iter()
                .find_map(|(_, r)| super::peers::received_in_status(&r.body)),
                None => None,
            };
            let received = published.max(asked);
            if received.is_some_and(|r| r >= checkpoint) {
                break true;
            }
            if started.elapsed() >= self.cfg.ttl {
                warn!(candidate = %candidate, checkpoint, received, "HA: switchover: the candidate did not receive the shutdown checkpoint in time; giving up");
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if !caught_up {
            self.give_up_switchover(s, commands, Some(status)).await;
            return;
        }
        if let Err(e) = crate::replica::write_standby_signal(s, &s.pgdata) {
            error!(
                error = format!("{e:#}"),
                "HA: switchover: cannot write standby.signal; giving up"
            );
            self.give_up_switchover(s, commands, Some(status)).await;
            return;
        }
        s.upstream.set(self.target(&candidate));
        // The member key still says primary (it was published while leading): the
        // candidate, woken by the release, would wait a round for it to change.
        self.publish(s, &crate::ha::decide::Postgres::Stopped, None)
            .await;
        match self.store.release_leader(&self.name).await {
            Ok(true) => {
                info!(candidate = %candidate, checkpoint, "HA: switchover: the candidate has the shutdown checkpoint; leader key released")
            }
            Ok(false) => warn!("HA: switchover: the leader key was no longer this member's"),
            // Still ours, perhaps: postgres comes back a standby and, under the key,
            // is promoted again on a new timeline.
            Err(e) => warn!(error = %e, "HA: switchover: cannot release the leader key"),
        }
        if let Err(e) = commands.send(Command::Unfence).await {
            error!(error = %e, "HA: switchover: cannot start postgres again");
        }
        // postgresql.conf was rendered while this member led: primary_conninfo must
        // now name the candidate.
        reload_later(commands);
    }

    /// Drops the switchover request and, when postgres was stopped for it, starts it
    /// again: writable while this member still holds the key (standby.signal is
    /// written only once the handover is certain), as a standby if the key was lost
    /// meanwhile (another member may lead already).
    async fn give_up_switchover(
        &mut self,
        s: &Settings,
        commands: &Commands,
        status: Option<&watch::Receiver<SupervisorStatus>>,
    ) {
        if let Err(e) = self.store.clear_failover().await {
            warn!(error = %e, "HA: cannot drop the switchover request");
        }
        if let Some(status) = status {
            // A fence still under way can be lifted only once postgres is down.
            handover::wait_stopped(status, self.cfg.ttl).await;
            let renewed = self.renew().await && self.refresh().await;
            let holds = renewed && self.holds_key();
            if !holds {
                warn!(
                    "HA: switchover given up after the leader key was lost: starting as a standby"
                );
                if let Err(e) = crate::replica::write_standby_signal(s, &s.pgdata) {
                    error!(
                        error = format!("{e:#}"),
                        "HA: cannot write standby.signal; postgres stays stopped"
                    );
                    return;
                }
                s.upstream.set(None);
            }
            if let Err(e) = commands.send(Command::Unfence).await {
                error!(error = %e, "HA: switchover given up, but postgres cannot be started again");
            }
        }
    }
}
