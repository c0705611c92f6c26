//! Synchronous mode on the leader, as actions of the loop (the choices are in
//! `ha/sync.rs`).

use super::{local, sync, Ha};
use crate::ha::config::SyncMode;
use crate::ha::store::{Store, SyncState, Term};
use crate::settings::Settings;
use crate::supervisor::{Command, Commands};
use tracing::{info, warn};

impl Ha {
    /// Synchronous mode, on the leader, in the safe order of [`sync`]: shrink the record,
    /// then name the standbys; record a named one once postgres confirms it.
    pub(super) async fn manage_sync(&mut self, s: &Settings, commands: &Commands, term: Term) {
        if self.cfg.sync_mode == SyncMode::Off {
            return;
        }
        let (streaming, end) =
            match tokio::time::timeout(self.cfg.retry_timeout, local::standbys(s)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    warn!(
                        error = format!("{e:#}"),
                        "HA: cannot read the synchronous standbys"
                    );
                    return;
                }
                Err(_) => return,
            };
        if self.cfg.sync_mode == SyncMode::Quorum {
            self.manage_quorum(s, commands, term, &streaming).await;
            return;
        }
        // A record of this member's from an earlier term is rewritten: the term is what
        // tells the others it is current.
        let ours = self
            .view
            .sync
            .as_ref()
            .filter(|k| k.leader == self.name && k.term == term);
        let recorded = ours.map(|k| k.members.clone()).unwrap_or_default();
        // Members tagged nosync are never named.
        let members: Vec<String> = self
            .other_members()
            .into_iter()
            .filter(|n| self.view.member(n).is_none_or(|m| !m.tags.nosync))
            .collect();
        let named = sync::choose(self.cfg.sync_node_count, &recorded, &streaming, &members);
        let kept: Vec<String> = recorded
            .iter()
            .filter(|r| named.contains(r))
            .cloned()
            .collect();
        // Shrunk in the store before a standby leaves the setting.
        let stale = ours.is_none() || kept != recorded;
        if stale && !self.put_sync(kept.clone(), term).await {
            return;
        }
        self.sync_since
            .retain(|n, _| named.contains(n) && streaming.iter().any(|s| s.name == *n && s.sync));
        for st in streaming
            .iter()
            .filter(|st| st.sync && named.contains(&st.name))
        {
            self.sync_since.entry(st.name.clone()).or_insert(end);
        }
        if s.sync_named.set(Some(named.clone())) {
            info!(standbys = ?named, "HA: naming the synchronous standbys");
            if let Err(e) = commands.send(Command::Reload).await {
                warn!(error = %e, "HA: cannot apply synchronous_standby_names");
            }
            return;
        }
        let next = sync::record(&kept, &named, &streaming, &self.sync_since);
        if next != kept {
            info!(standbys = ?next, "HA: recording the synchronous standbys");
            self.put_sync(next, term).await;
        }
    }

    async fn put_sync(&self, members: Vec<String>, term: Term) -> bool {
        let state = SyncState {
            leader: self.name.clone(),
            members,
            term,
            quorum: None,
        };
        match self.store.put_sync(&state).await {
            Ok(true) => true,
            Ok(false) => false,
            Err(e) => {
                warn!(error = %e, "HA: cannot record the synchronous standbys");
                false
            }
        }
    }

    /// Quorum mode, on the leader: one step of [`sync::quorum_step`] a round, the
    /// setting compared with what postgres runs with, not with what was asked.
    async fn manage_quorum(
        &mut self,
        s: &Settings,
        commands: &Commands,
        term: Term,
        streaming: &[sync::Standby],
    ) {
        let applied =
            match tokio::time::timeout(self.cfg.retry_timeout, local::sync_setting(s)).await {
                Ok(Ok(text)) => sync::parse_any(&text).unwrap_or_default(),
                Ok(Err(e)) => {
                    warn!(
                        error = format!("{e:#}"),
                        "HA: cannot read synchronous_standby_names"
                    );
                    return;
                }
                Err(_) => return,
            };
        let ours = self
            .view
            .sync
            .as_ref()
            .filter(|k| k.leader == self.name && k.term == term && k.quorum.is_some());
        let (voters, q) = ours
            .map(|k| (k.members.clone(), k.quorum.unwrap_or(0)))
            .unwrap_or_default();
        let mut wanted: Vec<String> = streaming
            .iter()
            .map(|st| st.name.clone())
            .filter(|n| {
                self.view
                    .member(n)
                    .is_some_and(|m| !m.tags.nosync && m.name != self.name)
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        match sync::quorum_step(
            (&voters, q),
            (&applied.0, applied.1),
            &wanted,
            self.cfg.sync_node_count,
        ) {
            sync::QuorumStep::Record(members, quorum) => {
                info!(voters = ?members, quorum, "HA: recording the quorum voters");
                let state = SyncState {
                    leader: self.name.clone(),
                    members,
                    term,
                    quorum: Some(quorum),
                };
                match self.store.put_sync(&state).await {
                    Ok(true) => self.view.sync = Some(state),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "HA: cannot record the quorum voters"),
                }
            }
            sync::QuorumStep::Setting(names, k) => {
                info!(standbys = ?names, k, "HA: naming the quorum standbys (ANY k)");
                s.sync_named.set_with_count(Some((names, k)));
                if let Err(e) = commands.send(Command::Reload).await {
                    warn!(error = %e, "HA: cannot apply synchronous_standby_names");
                }
            }
            sync::QuorumStep::Steady => {}
        }
    }
}
