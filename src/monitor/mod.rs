//! One long-lived connection to postgres that refreshes a snapshot every second.
//!
//! Probes and `/status` read the snapshot and never connect themselves, so hammering
//! `/readyz` adds no backend and no query.

mod snapshot;

pub use snapshot::{
    query, ArchiverInfo, BgwriterStats, ConnectionCount, DatabaseStats, PgFacts, ReceiverInfo,
    ReplicaInfo, SlotInfo, Snapshot, SIZES_QUERY,
};

use crate::settings::Settings;
use crate::state::{State, SupervisorStatus};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the snapshot is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How often while recovering from a backup (`recovery.signal`): postgres promotes
/// itself at the end, and `/primary`, read from the snapshot, should say so at once
/// rather than up to a second later. A cheap query; recovery is a passing state.
pub const RECOVERING_REFRESH: Duration = Duration::from_millis(100);

/// Database sizes are read at most this often: `pg_database_size` walks every file.
pub const SIZES_EVERY: Duration = Duration::from_secs(15);

/// Starts the monitor task; its snapshots arrive on the returned receiver.
pub fn spawn(
    settings: Arc<Settings>,
    sup: watch::Receiver<SupervisorStatus>,
) -> watch::Receiver<Snapshot> {
    let (tx, rx) = watch::channel(Snapshot::default());
    tokio::spawn(run(settings, sup, tx));
    rx
}

/// The postmaster pid to monitor, once the supervisor says postgres is running.
fn running_pid(s: &SupervisorStatus) -> Option<i32> {
    (s.state == State::Running).then_some(s.pid).flatten()
}

async fn run(
    settings: Arc<Settings>,
    mut sup: watch::Receiver<SupervisorStatus>,
    tx: watch::Sender<Snapshot>,
) {
    loop {
        let pid = match sup.wait_for(|s| running_pid(s).is_some()).await {
            Ok(s) => running_pid(&s),
            Err(_) => return, // the supervisor is gone
        };
        let Some(pid) = pid else { continue };
        let client =
            match crate::db::connect_local(&settings, &settings.socket_dir, "postgres").await {
                Ok(c) => c,
                Err(e) => {
                    tx.send_modify(|s| {
                        s.connected_pid = None;
                        s.error = Some(format!("cannot connect: {e}"));
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        let prepared = match client.prepare(&query(settings.major_version)).await {
            Ok(st) => client.prepare(SIZES_QUERY).await.map(|sizes| (st, sizes)),
            Err(e) => Err(e),
        };
        let (stmt, sizes_stmt) = match prepared {
            Ok(both) => both,
            Err(e) => {
                tx.send_modify(|s| s.error = Some(format!("cannot prepare the status query: {e}")));
                tokio::time::sleep(REFRESH).await;
                continue;
            }
        };
        let mut sizes_read: Option<Instant> = None;
        loop {
            // Looked at before the query: postgres removes the file as it promotes, and
            // the round that saw it in recovery must be followed quickly.
            let recovering = settings
                .pgdata
                .join(crate::settings::restore::RECOVERY_SIGNAL)
                .exists();
            if sizes_read.is_none_or(|at| at.elapsed() >= SIZES_EVERY) {
                sizes_read = Some(Instant::now());
                // Best effort: a failure here leaves the last sizes in place, and the
                // main query below notices a broken connection.
                if let Ok(Ok(row)) =
                    tokio::time::timeout(Duration::from_secs(5), client.query_one(&sizes_stmt, &[]))
                        .await
                {
                    if let Ok(sizes) = row
                        .try_get::<_, String>(0)
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            serde_json::from_str::<Vec<(String, i64)>>(&t)
                                .map_err(|e| e.to_string())
                        })
                    {
                        tx.send_modify(|s| s.database_sizes = sizes);
                    }
                }
            }
            let result =
                tokio::time::timeout(Duration::from_secs(5), client.query_one(&stmt, &[])).await;
            let facts = match result {
                Ok(Ok(row)) => row
                    .try_get::<_, String>(0)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        serde_json::from_str::<PgFacts>(&text).map_err(|e| e.to_string())
                    }),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the status query timed out".to_owned()),
            };
            match facts {
                Ok(facts) => {
                    let ready_files = count_ready_files(&settings.pgdata);
                    tx.send_modify(|s| {
                        s.connected_pid = Some(pid);
                        s.updated = Some(Instant::now());
                        s.facts = Some(facts);
                        s.ready_files = ready_files;
                        s.error = None;
                    });
                }
                Err(e) => {
                    tx.send_modify(|s| {
                        s.connected_pid = None;
                        s.error = Some(e);
                    });
                    break;
                }
            }
            let pause = if recovering {
                RECOVERING_REFRESH
            } else {
                REFRESH
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = sup.wait_for(|s| running_pid(s) != Some(pid)) => {
                    tx.send_modify(|s| s.connected_pid = None);
                    if changed.is_err() { return; }
                    break;
                }
            }
        }
    }
}

/// Counts `.ready` files: WAL that postgres has finished but not yet archived.
pub fn count_ready_files(pgdata: &Path) -> Option<u64> {
    let dir = std::fs::read_dir(pgdata.join("pg_wal/archive_status")).ok()?;
    Some(
        dir.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            .count() as u64,
    )
}
