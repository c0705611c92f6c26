//! What a replica does when pg_rewind cannot rejoin it to its primary
//! (`PGWARDEN_REWIND_FAILED`), at start-up and while running, and `pgwarden reinit`.
//!
//! Exiting at every start (what pgwarden did) is no answer: the kubelet restarts the
//! pod into the same failure forever. `keep` (the default) never deletes anything: a
//! rewind that changed nothing leaves a standby that serves reads and says why it
//! does not follow; one that had begun to copy files leaves PGDATA possibly
//! inconsistent, so postgres is held stopped (the fence marker says why) until a person
//! runs `pgwarden reinit` or unfences it. `reclone` discards the data and clones the
//! primary again, as Patroni's `remove_data_directory_on_rewind_failure`.

use super::commands::FENCE_MARKER;
use crate::process::Runner;
use crate::replica::RewindError;
use crate::settings::{RewindFailed, Settings};
use anyhow::{Context, Result};
use tracing::{error, warn};

/// The first line of a fence marker left by a rewind that failed half-way.
pub const REWIND_HOLD_TEXT: &str = "held: pg_rewind failed after it began to copy files";

/// Applies `PGWARDEN_REWIND_FAILED` to a failed rejoin. Errors other than pg_rewind's
/// own come back as they are. `Ok(Some(why))`: the data was kept, and why it does not
/// follow its primary; `Ok(None)`: it was cloned again.
pub async fn after_failed_rewind(
    s: &Settings,
    runner: &Runner,
    restoring: &crate::progress::Restoring,
    error: anyhow::Error,
) -> Result<Option<String>> {
    let Some(rewind) = error.downcast_ref::<RewindError>() else {
        return Err(error);
    };
    let why = rewind.to_string();
    match s.rewind_failed {
        RewindFailed::Reclone => {
            warn!(error = %why, "pg_rewind failed; PGWARDEN_REWIND_FAILED=reclone: discarding the data and cloning the primary again");
            reclone(s, runner, restoring).await?;
            Ok(None)
        }
        RewindFailed::Keep => {
            let held = rewind.touched;
            crate::fsutil::write_atomic(
                &s.pgdata.join(crate::pgdata::REWIND_KEPT),
                format!("{why}\n").as_bytes(),
                s.run_as.as_ref().map(|u| u.owner()),
                0o600,
            )
            .context("write the note that the rewind failed")?;
            keep(s, why, held)
        }
    }
}

/// Keeps the data of a standby pg_rewind could not rejoin (the note is written): held
/// stopped when the rewind `held` had begun to copy files, else a standby on its own
/// timeline.
fn keep(s: &Settings, why: String, held: bool) -> Result<Option<String>> {
    match held {
        true => {
            error!(error = %why, "pg_rewind failed after it began to copy files; keeping the data (PGWARDEN_REWIND_FAILED=keep) and postgres stopped: `pgwarden reinit` rebuilds this replica from its primary");
            crate::fsutil::write_atomic(
                &s.pgdata.join(FENCE_MARKER),
                format!("{REWIND_HOLD_TEXT}: {why}\n").as_bytes(),
                s.run_as.as_ref().map(|u| u.owner()),
                0o600,
            )
            .context("write the fence marker")?;
            Ok(Some(why))
        }
        false => {
            error!(error = %why, "pg_rewind failed before it changed anything; keeping the data (PGWARDEN_REWIND_FAILED=keep): postgres runs as a standby that cannot follow its primary; `pgwarden reinit` rebuilds it");
            crate::replica::write_standby_signal(s, &s.pgdata)?;
            Ok(Some(why))
        }
    }
}

/// Rebuilds this replica from its primary: discards the cluster in PGDATA (crash-safe,
/// see [`crate::bootstrap::discard`]), clones the primary into it, and writes the
/// configuration again.
pub async fn reclone(
    s: &Settings,
    runner: &Runner,
    restoring: &crate::progress::Restoring,
) -> Result<()> {
    // Whatever this member bootstrapped as: a clone, never an initdb.
    let clone = Settings {
        role: crate::settings::Role::Replica,
        restore: None,
        ..s.clone()
    };
    if clone.primary_conninfo("replication").is_none() {
        anyhow::bail!("no primary to clone: this member follows nobody (with HA, there is no leader, or this member is it)");
    }
    crate::bootstrap::discard(&s.pgdata).context("PGDATA: discard the cluster")?;
    crate::bootstrap::ensure(&clone, runner, restoring)
        .await
        .context("clone the primary again")?;
    Ok(())
}
