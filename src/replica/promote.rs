//! Promoting the local standby.

use crate::db;
use crate::settings::Settings;
use anyhow::{bail, Result};
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

/// Promotes the local standby and waits until it accepts writes. Returns the new timeline.
pub async fn promote(s: &Settings) -> Result<u32, PromoteError> {
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
    let done: bool = client
        .query_one("SELECT pg_promote(wait => true, wait_seconds => 60)", &[])
        .await
        .map_err(anyhow::Error::from)?
        .get(0);
    if !done {
        return Err(anyhow::anyhow!("the promotion did not finish within 60 seconds").into());
    }
    let timeline = wait_writable(&client).await?;
    // Until a checkpoint, pg_control still names the old timeline, and pg_rewind run
    // against this server would see "the same timeline" and rewind nothing.
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(anyhow::Error::from)?;
    Ok(timeline)
}

/// Waits until a transaction id can be assigned, which only a read-write server does.
async fn wait_writable(client: &tokio_postgres::Client) -> Result<u32> {
    for _ in 0..100 {
        if client
            .batch_execute("SELECT pg_current_xact_id()")
            .await
            .is_ok()
        {
            let tli: i32 = client
                .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", &[])
                .await?
                .get(0);
            tracing::info!(timeline = tli, "promoted: the instance accepts writes");
            return Ok(tli as u32);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("promoted, but still not writable after 10 seconds")
}
