//! Promoting the local standby.

use crate::db;
use crate::settings::Settings;
use anyhow::{anyhow, Result};
use std::time::Duration;

/// Why a promotion did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The instance is not a standby.
    #[error("this instance is not a standby; nothing to promote")]
    NotStandby,
    /// Anything else.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// How long `pgwarden promote` outside HA waits for the end of recovery.
pub const WAIT: Duration = Duration::from_secs(60);

/// Promotes the local standby and waits, up to `within`, until it accepts writes.
/// Returns the new timeline.
///
/// The promotion is requested without waiting (`pg_promote(wait => false)`) and its end
/// is polled, one short query at a time: a `pg_promote(wait => true)` runs under the
/// local connection's statement timeout, and a promotion held up by replay (a backlog,
/// a standby query conflict with `max_standby_*_delay = -1`) would be cancelled on the
/// client side while postgres goes on promoting. Whoever calls this must treat an
/// error as "postgres may still become writable" (the HA loop fences it).
///
/// Once writable it is promoted: the checkpoint that follows (without which pg_rewind
/// run against this server would see the old timeline in pg_control) is best effort
/// and never turns a done promotion into a failure.
pub async fn promote(s: &Settings, within: Duration) -> Result<u32, PromoteError> {
    let client = db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .map_err(anyhow::Error::from)?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(anyhow::Error::from)?
        .get(0);
    if !in_recovery {
        return Err(PromoteError::NotStandby);
    }
    tracing::info!("promoting");
    let asked: bool = client
        .query_one("SELECT pg_promote(wait => false)", &[])
        .await
        .map_err(anyhow::Error::from)?
        .get(0);
    if !asked {
        return Err(anyhow!("postgres refused the promotion request").into());
    }
    let deadline = tokio::time::Instant::now() + within;
    let timeline = loop {
        if let Some(tli) = writable_timeline(&client).await? {
            break tli;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "the promotion did not finish within {within:?} (replay still running or held by a query conflict)"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tracing::info!(timeline, "promoted: the instance accepts writes");
    // Its history is its own now: a note that it could not follow a former primary
    // (it would pin a later demotion to this timeline) no longer holds.
    if let Err(e) = crate::pgdata::forget_rewind_kept(&s.pgdata) {
        tracing::warn!(error = %e, "promoted, but the note of an earlier failed rewind could not be removed");
    }
    // The statement timeout of the local connection would cancel a long checkpoint.
    let checkpoint = client
        .batch_execute("SET statement_timeout = 0; CHECKPOINT")
        .await;
    if let Err(e) = checkpoint {
        tracing::warn!(error = %e, "promoted, but the checkpoint after the promotion failed; the next one records the new timeline");
    }
    Ok(timeline)
}

/// The timeline a read-write server writes on, or `None` while it is still in recovery
/// or cannot assign a transaction id yet (only a read-write server can).
async fn writable_timeline(client: &tokio_postgres::Client) -> Result<Option<u32>> {
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if in_recovery
        || client
            .batch_execute("SELECT pg_current_xact_id()")
            .await
            .is_err()
    {
        return Ok(None);
    }
    let tli: i32 = client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await?
        .get(0);
    Ok(u32::try_from(tli).ok())
}
