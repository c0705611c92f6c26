//! What is left of an upgrade once the new cluster runs as a ready primary: the
//! extension updates pg_upgrade asked for, statistics, the first base backup, then
//! removing the old cluster. Each step moves the marker on when it is done, so a
//! restart does again only the step it interrupted; a step that fails is retried, and
//! the old cluster stays until the backup is taken.

use super::state::{self, Marker, Phase};
use super::{find, swap, tool, PausePoint, Work};
use crate::backup::scheduler::Gate;
use crate::backup::service::{BackupError, Backups};
use crate::process::Runner;
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The steps after the start, and what they need.
pub struct After {
    /// The running settings.
    pub settings: Arc<Settings>,
    /// Spawns psql and vacuumdb through the reaper.
    pub runner: Runner,
    /// The backup path (`POST /backup`'s).
    pub backups: Backups,
    /// Ok once postgres is a ready primary.
    pub gate: Gate,
}

/// How long a failed step waits before it is tried again.
const RETRY: Duration = Duration::from_secs(30);

impl After {
    /// Runs the steps in a task of their own, when an upgrade is under way.
    pub fn spawn(self) {
        if !matches!(find(&self.settings.pgdata), Ok((Some(_), Work::Marked(_)))) {
            return;
        }
        tokio::spawn(async move { self.run().await });
    }

    async fn run(self) {
        let s = &self.settings;
        let owner = s.run_as.as_ref().map(|u| u.owner());
        let mut paused = false;
        loop {
            let (layout, m) = match find(&s.pgdata) {
                Ok((Some(l), Work::Marked(m))) if m.phase >= Phase::Started => (l, m),
                Ok(_) => return,
                Err(e) => {
                    warn!(error = %e, "cannot read the upgrade's marker");
                    return;
                }
            };
            if let Err(why) = (self.gate)() {
                tracing::debug!(why, "the upgrade's last steps wait for a ready primary");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            if s.upgrade.pause_at == Some(PausePoint::Started) && !paused {
                paused = true;
                warn!(
                    point = "started",
                    "upgrade paused for a test; waiting to be killed"
                );
                std::future::pending::<()>().await;
            }
            let next = match m.phase {
                Phase::Started => self.extensions_and_statistics(&layout, &m).await,
                Phase::Analyzed => self.first_backup().await,
                _ => self.clean_up(&layout, &m).await,
            };
            match next {
                Ok(Some(phase)) => {
                    if let Err(e) = state::write(&layout, &Marker { phase, ..m }, owner) {
                        warn!(error = %e, "cannot move the upgrade's marker on; trying again");
                        tokio::time::sleep(RETRY).await;
                    }
                }
                Ok(None) => {
                    info!(
                        from = m.from,
                        to = m.to,
                        "upgrade complete: the old cluster is removed"
                    );
                    return;
                }
                Err(e) => {
                    warn!(phase = %m.phase, error = format!("{e:#}"), "a step after the upgrade failed; trying again in {} s", RETRY.as_secs());
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The extension updates pg_upgrade wrote (`update_extensions.sql`), then
    /// `vacuumdb --analyze-in-stages` (18 carries most statistics over, and then only
    /// the missing ones are made in stages, followed by a full analyze, as pg_upgrade
    /// 18 advises).
    async fn extensions_and_statistics(
        &self,
        layout: &state::Layout,
        m: &Marker,
    ) -> Result<Option<Phase>> {
        let s = &self.settings;
        let script = layout.update_extensions();
        if script.exists() {
            info!(script = %script.display(), "updating extensions, as pg_upgrade asks");
            let mut cmd = tool::command(s, s.bin("psql"));
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(self.connection())
                .args(["-d", "template1", "-f"])
                .arg(&script);
            self.execute(cmd, "update the extensions (update_extensions.sql)")
                .await?;
        }
        info!(
            from = m.from,
            to = m.to,
            "rebuilding optimizer statistics (vacuumdb --analyze-in-stages)"
        );
        let mut stages = vec![vec!["--all", "--analyze-in-stages"]];
        if m.to >= 18 {
            stages[0].push("--missing-stats-only");
            stages.push(vec!["--all", "--analyze-only"]);
        }
        for args in stages {
            let mut cmd = tool::command(s, s.bin("vacuumdb"));
            cmd.args(&args).args(self.connection());
            self.execute(cmd, &format!("vacuumdb {}", args.join(" ")))
                .await?;
        }
        Ok(Some(Phase::Analyzed))
    }

    fn connection(&self) -> Vec<String> {
        let s = &self.settings;
        vec![
            "-h".into(),
            s.socket_dir.to_string_lossy().into_owned(),
            "-p".into(),
            s.port.to_string(),
            "-U".into(),
            s.superuser.clone(),
        ]
    }

    async fn execute(&self, mut cmd: std::process::Command, what: &str) -> Result<()> {
        let out = self.runner.output(&mut cmd, None).await?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                tool::tail(&out.stderr_text(), 15)
            );
        }
        Ok(())
    }

    /// The new cluster's first base backup, into its own server name. Without an
    /// archive there is nothing to take it into, and nothing to wait for.
    async fn first_backup(&self) -> Result<Option<Phase>> {
        let Some(archive) = &self.settings.archive else {
            warn!("no archive (PGWARDEN_ARCHIVE_URL): the upgraded cluster has no base backup; the old cluster is removed now");
            return Ok(Some(Phase::Cleanup));
        };
        info!(server = %archive.server, "taking the upgraded cluster's first base backup");
        match self
            .backups
            .take("upgrade", crate::backup::Kind::Full)
            .await
        {
            Ok(b) => {
                info!(backup_id = %b.backup_id, server = %archive.server, "the upgraded cluster's first base backup is taken");
                Ok(Some(Phase::Cleanup))
            }
            Err(BackupError::Busy) => {
                // Another backup of the new cluster counts as well; wait for its end.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Some(Phase::Analyzed))
            }
            Err(e) => Err(e).context("the first base backup of the upgraded cluster"),
        }
    }

    /// Removes the old cluster (with its tablespace directories), then the work
    /// directory, marker first.
    async fn clean_up(&self, layout: &state::Layout, m: &Marker) -> Result<Option<Phase>> {
        let (layout, from) = (layout.clone(), m.from);
        info!(old = %layout.old_cluster().display(), "removing the old cluster");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            swap::remove_tree(&layout.old_cluster())?;
            swap::remove_tablespace_dirs(&layout.pgdata, from)?;
            swap::remove_work(&layout)
        })
        .await??;
        Ok(None)
    }
}
