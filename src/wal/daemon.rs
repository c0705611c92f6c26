//! The WAL daemon inside `pgwarden run`: one warm storage client behind the control
//! socket, an uploader that pushes `.ready` segments before postgres asks, and a
//! restore prefetcher.
//!
//! Crash safety comes from the archive, not from local state: the set of uploaded
//! files lives in memory only, and after a restart each `.ready` file is pushed again,
//! which finds the object, compares its checksum (a HEAD), and costs no upload. A
//! killed upload leaves no object (S3 creates it whole; the file backend links a
//! complete temp file), so nothing partial is ever taken as archived.

use super::names::{WalKind, WalName};
use super::restore::{download, write_into_place};
use super::storage::Backend;
use super::{archive, with_retries, ArchiveConfig, WalError};
use crate::fsutil::Owner;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// Retry budget of an archive_command call while pgwarden is stopping: postgres's
/// shutdown waits for its archiver, which tries each file three times, so an
/// unreachable archive must not stretch a SIGTERM past the pod's grace period.
const STOPPING_BUDGET: Duration = Duration::from_secs(3);

/// Directory in PGDATA, outside pg_wal and on its file system, where prefetched
/// segments wait to be renamed into place.
pub const SPOOL_DIR: &str = "pgwarden_spool";

/// What the daemon reports in `/status`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DaemonStats {
    /// `.ready` files not uploaded yet.
    pub queue: u64,
    /// Uploads under way.
    pub in_flight: u64,
    /// Files uploaded by the daemon.
    pub uploaded: u64,
    /// archive_command calls answered from an earlier upload.
    pub answered_from_upload: u64,
    /// archive_command calls the daemon pushed itself (nothing uploaded ahead).
    pub archived_direct: u64,
    /// Failed uploads (retried on the next scan).
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Segments fetched ahead of restore_command.
    pub prefetched: u64,
    /// restore_command calls served from the spool.
    pub spool_hits: u64,
}

/// Identity of a local file when it was hashed: if none of this changed, neither did
/// its content (postgres never rewrites a finished segment in place).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    ino: u64,
    mtime_ns: i128,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let m = std::fs::metadata(path)?;
    Ok(Fingerprint {
        size: m.len(),
        ino: m.ino(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

#[derive(Default)]
struct Inner {
    uploaded: HashMap<String, Fingerprint>,
    in_flight: HashSet<String>,
    prefetching: HashSet<String>,
    stats: DaemonStats,
}

/// The daemon.
pub struct Daemon {
    cfg: ArchiveConfig,
    storage: Backend,
    pgdata: PathBuf,
    owner: Option<Owner>,
    parallel: usize,
    prefetch: usize,
    inner: Mutex<Inner>,
    uploaded: Notify,
    prefetched: Notify,
    upload_seconds: Option<prometheus::Histogram>,
    download_seconds: Option<prometheus::Histogram>,
    supervisor: watch::Receiver<crate::state::SupervisorStatus>,
}

/// A latency histogram; `None` only if prometheus rejected the constant options.
fn histogram(name: &str, help: &str) -> Option<prometheus::Histogram> {
    let buckets = vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets))
        .ok()
}

/// Records the time since `start` in `h`.
fn observe(h: &Option<prometheus::Histogram>, start: std::time::Instant) {
    if let Some(h) = h {
        h.observe(start.elapsed().as_secs_f64());
    }
}

impl Daemon {
    /// Opens the storage once, cleans the spool, and starts the uploader.
    pub async fn start(
        cfg: ArchiveConfig,
        pgdata: PathBuf,
        owner: Option<Owner>,
        supervisor: watch::Receiver<crate::state::SupervisorStatus>,
    ) -> Result<Arc<Daemon>, WalError> {
        let storage = cfg.open().await?;
        let spool = pgdata.join(SPOOL_DIR);
        // Whatever a previous life prefetched may belong to a timeline since abandoned.
        let _ = std::fs::remove_dir_all(&spool);
        let d = Arc::new(Daemon {
            parallel: cfg.parallel.max(1),
            prefetch: cfg.prefetch,
            cfg,
            storage,
            pgdata,
            owner,
            inner: Mutex::new(Inner::default()),
            uploaded: Notify::new(),
            prefetched: Notify::new(),
            upload_seconds: histogram(
                "pgwarden_wal_upload_duration_seconds",
                "Time to push one file to the archive",
            ),
            supervisor,
            download_seconds: histogram(
                "pgwarden_wal_download_duration_seconds",
                "Time to fetch and verify one file from the archive",
            ),
        });
        tokio::spawn(d.clone().upload_loop());
        Ok(d)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current figures.
    pub fn stats(&self) -> DaemonStats {
        self.lock().stats.clone()
    }

    /// Upload and download latency histograms, for /metrics.
    pub fn histograms(&self) -> Vec<prometheus::Histogram> {
        [&self.upload_seconds, &self.download_seconds]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Scans `archive_status` and uploads what is ready, `parallel` at a time.
    async fn upload_loop(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.parallel));
        let status_dir = self.pgdata.join("pg_wal/archive_status");
        loop {
            let mut ready: Vec<String> = std::fs::read_dir(&status_dir)
                .map(|rd| {
                    rd.filter_map(|e| {
                        e.ok()?
                            .file_name()
                            .to_str()?
                            .strip_suffix(".ready")
                            .map(str::to_owned)
                    })
                    .collect()
                })
                .unwrap_or_default();
            ready.sort();
            let todo: Vec<String> = {
                let mut inner = self.lock();
                let ready_set: HashSet<&String> = ready.iter().collect();
                // postgres renamed these to .done: forget them.
                inner.uploaded.retain(|name, _| ready_set.contains(name));
                let todo: Vec<String> = ready
                    .iter()
                    .filter(|n| !inner.uploaded.contains_key(*n) && !inner.in_flight.contains(*n))
                    .cloned()
                    .collect();
                inner.stats.queue = todo.len() as u64 + inner.in_flight.len() as u64;
                todo
            };
            for name in todo {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                if !self.lock().in_flight.insert(name.clone()) {
                    continue;
                }
                let d = self.clone();
                tokio::spawn(async move {
                    d.upload(&name).await;
                    drop(permit);
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn upload(&self, name: &str) {
        let path = self.pgdata.join("pg_wal").join(name);
        let before = fingerprint(&path);
        self.lock().stats.in_flight += 1;
        let start = std::time::Instant::now();
        let result = archive::push(&self.cfg, &self.storage, &path).await;
        observe(&self.upload_seconds, start);
        let mut inner = self.lock();
        inner.in_flight.remove(name);
        inner.stats.in_flight = inner.stats.in_flight.saturating_sub(1);
        match (result, before) {
            (Ok(_), Ok(fp)) => {
                inner.uploaded.insert(name.to_owned(), fp);
                inner.stats.uploaded += 1;
            }
            (Ok(_), Err(_)) => {}
            (Err(e), _) => {
                inner.stats.failures += 1;
                inner.stats.last_error = Some(format!("{name}: {e}"));
                tracing::warn!(file = name, error = %e, "pre-upload failed; archive_command will try again");
            }
        }
        drop(inner);
        self.uploaded.notify_waiters();
    }

    /// archive_command through the daemon: answered at once when the file was already
    /// uploaded and has not changed since; otherwise pushed now.
    pub async fn archive(&self, path: &Path) -> Result<archive::Pushed, WalError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let stopping = self.supervisor.borrow().state == crate::state::State::Stopping;
        loop {
            let notified = self.uploaded.notified();
            {
                let mut inner = self.lock();
                if let (Some(fp), Ok(now)) = (inner.uploaded.get(&name), fingerprint(path)) {
                    if *fp == now {
                        inner.uploaded.remove(&name);
                        inner.stats.answered_from_upload += 1;
                        return Ok(archive::Pushed::AlreadyArchived);
                    }
                }
                // While stopping, do not wait out a pre-upload that may be retrying.
                if stopping || !inner.in_flight.contains(&name) {
                    break;
                }
            }
            // An upload of this very file is under way: wait for it rather than race it.
            notified.await;
        }
        let start = std::time::Instant::now();
        let pushed = if stopping {
            let mut quick = self.cfg.clone();
            quick.timeout = STOPPING_BUDGET;
            archive::push(&quick, &self.storage, path).await?
        } else {
            // A call under way when pgwarden starts stopping ends at once: the file stays
            // .ready and is archived after the restart.
            let mut supervisor = self.supervisor.clone();
            tokio::select! {
                pushed = archive::push(&self.cfg, &self.storage, path) => pushed?,
                _ = supervisor.wait_for(|s| s.state == crate::state::State::Stopping) => {
                    return Err(WalError::Storage(super::StorageError::Transient(
                        "pgwarden is stopping; postgres will archive this file after the restart".to_owned(),
                    )));
                }
            }
        };
        observe(&self.upload_seconds, start);
        self.lock().stats.archived_direct += 1;
        Ok(pushed)
    }

    /// restore_command through the daemon: from the spool when prefetched, else
    /// fetched now; then the next segments are prefetched (unless `prefetch` is off,
    /// as for pg_rewind).
    pub async fn restore(
        self: &Arc<Self>,
        name: &str,
        dest: &Path,
        prefetch: bool,
    ) -> Result<(), WalError> {
        let wal = WalName::parse(name)
            .ok_or_else(|| WalError::Invalid(format!("{name} is not a WAL file name")))?;
        // Only a segment request says where replay is: postgres also probes for newer
        // .history files while it still replays the old timeline.
        if wal.kind == WalKind::Segment {
            self.forget_other_timelines(&wal);
        }
        let spooled = self.pgdata.join(SPOOL_DIR).join(name);
        // A prefetch of this very file is under way: wait for it rather than fetch twice.
        loop {
            let notified = self.prefetched.notified();
            if !self.lock().prefetching.contains(name) {
                break;
            }
            notified.await;
        }
        if spooled.exists() && std::fs::rename(&spooled, dest).is_ok() {
            self.lock().stats.spool_hits += 1;
        } else {
            let start = std::time::Instant::now();
            let data = with_retries(self.cfg.timeout, &format!("restore {name}"), || {
                download(&self.cfg, &self.storage, &wal)
            })
            .await?;
            observe(&self.download_seconds, start);
            write_into_place(dest, &data, self.owner)?;
        }
        if prefetch && wal.kind == WalKind::Segment && self.prefetch > 0 {
            self.clone().prefetch_after(wal, data_seg_size(dest));
        }
        Ok(())
    }

    /// Drops spooled segments that can no longer be asked for.
    fn forget_other_timelines(&self, wal: &WalName) {
        let Ok(rd) = std::fs::read_dir(self.pgdata.join(SPOOL_DIR)) else {
            return;
        };
        for entry in rd.flatten() {
            if entry.file_name().to_str().is_some_and(|n| is_stale(n, wal)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn prefetch_after(self: Arc<Self>, wal: WalName, seg_size: u64) {
        for n in 1..=self.prefetch as u64 {
            let Some(next) = wal.next_segment(n, seg_size) else {
                return;
            };
            let spool = self.pgdata.join(SPOOL_DIR);
            if spool.join(&next.name).exists() || !self.lock().prefetching.insert(next.name.clone())
            {
                continue;
            }
            let d = self.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let result = download(&d.cfg, &d.storage, &next).await;
                observe(&d.download_seconds, start);
                if let Ok(data) = result {
                    let _ = std::fs::create_dir_all(&spool);
                    if let Some(o) = d.owner {
                        let _ = nix::unistd::chown(&spool, Some(o.uid.into()), Some(o.gid.into()));
                    }
                    if write_into_place(&spool.join(&next.name), &data, d.owner).is_ok() {
                        d.lock().stats.prefetched += 1;
                    }
                }
                d.lock().prefetching.remove(&next.name);
                d.prefetched.notify_waiters();
            });
        }
    }
}

/// The segment size of a restored segment (its file length), 16 MiB if unknown.
fn data_seg_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.len())
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(16 << 20)
}

/// A spooled file is stale once postgres asks for a segment of a newer timeline (after
/// a timeline switch the old timeline's segments past the fork are not the history
/// being replayed) or for a later segment of its own timeline (replay asks in order).
fn is_stale(spooled: &str, requested: &WalName) -> bool {
    WalName::parse(spooled).is_some_and(|n| {
        n.timeline < requested.timeline
            || (n.timeline == requested.timeline && n.name < requested.name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_entries_go_stale_on_a_timeline_switch_or_once_passed() {
        let req = WalName::parse("000000020000000000000005").unwrap();
        assert!(
            is_stale("000000010000000000000006", &req),
            "older timeline, even if ahead"
        );
        assert!(
            is_stale("000000020000000000000004", &req),
            "already replayed"
        );
        assert!(!is_stale("000000020000000000000006", &req));
        assert!(
            !is_stale("000000030000000000000001", &req),
            "a newer timeline may come next"
        );
        assert!(
            !is_stale(".pgwarden-restore-tmp", &req),
            "temp files are not ours to judge"
        );
    }
}
