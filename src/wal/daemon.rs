//! The WAL daemon inside `pgwarden run`: one warm storage client behind the control
//! socket, an uploader that pushes `.ready` files before postgres asks, and a
//! restore prefetcher.
//!
//! One table says, per file, whether it is being uploaded, was uploaded, or failed
//! and when to try again; the uploader and postgres's calls both go through it, so a
//! file is uploaded once: a call that arrives during an upload waits for it, and a
//! call that arrives first marks the file so the uploader leaves it alone. The
//! uploader wakes on inotify events in `archive_status`, not on a timer.
//!
//! Crash safety comes from the archive, not from local state: the table lives in
//! memory only, and after a restart each `.ready` file is pushed again, which finds
//! the object and costs no upload. A killed upload leaves no object (S3 creates it
//! whole; the file backend links a complete temp file).

use super::archive::{self, Pushed};
use super::local::{LocalDir, Recreate};
use super::names::{WalKind, WalName};
use super::storage::{retry::jitter, Backend, Retrying};
use super::{identity, restore, ArchiveConfig, WalError};
use crate::fsutil::Owner;
use crate::state::{State, SupervisorStatus};
use serde::Serialize;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// What all archive work together may spend once pgwarden is stopping, counted from
/// the first call made then. postgres's shutdown waits for its archiver, which tries
/// each remaining file three times with a pause between, so with an archive that
/// never answers, a budget per call would add up to most of a grace period; a
/// shared one bounds the whole shutdown. A healthy archive takes the last segments
/// well within it; what is left stays .ready for the next start.
pub const STOPPING_BUDGET: Duration = Duration::from_secs(4);
/// Longest pause before the uploader tries a failing file again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The uploader also rescans this often, in case an inotify event was missed.
const RESCAN: Duration = Duration::from_secs(2);
/// How often a blocked archive (not this cluster's, or not mounted) is checked again.
const RECHECK_BLOCKED: Duration = Duration::from_secs(30);

/// Directory in PGDATA, outside pg_wal and on its file system, where prefetched
/// segments wait to be renamed into place.
pub const SPOOL_DIR: &str = "pgwarden_spool";

/// What the daemon reports in `/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DaemonStats {
    /// `.ready` files not uploaded yet.
    pub queue: u64,
    /// Uploads under way.
    pub in_flight: u64,
    /// Files the uploader pushed ahead of postgres's call.
    pub uploaded: u64,
    /// Objects created in the archive (by the uploader or a call): one per archived
    /// file when all is well.
    #[serde(default)]
    pub uploads: u64,
    /// archive_command calls that succeeded.
    #[serde(default)]
    pub archived: u64,
    /// archive_command calls answered from an earlier upload.
    pub answered_from_upload: u64,
    /// archive_command calls the daemon pushed itself (nothing uploaded ahead).
    pub archived_direct: u64,
    /// Failed uploads (each is retried after a backoff).
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Segments fetched ahead of restore_command.
    pub prefetched: u64,
    /// Failed prefetches (restore_command then fetches the file itself).
    #[serde(default)]
    pub prefetch_failures: u64,
    /// restore_command calls served from the spool.
    pub spool_hits: u64,
    /// The last segment restore_command got (on a standby following an archive, the
    /// replay position to the segment).
    #[serde(default)]
    pub last_restored: Option<String>,
    /// When it got it (seconds since the epoch).
    #[serde(default)]
    pub last_restored_unix: Option<f64>,
    /// Seconds since then, as of this report.
    #[serde(default)]
    pub last_restored_age_seconds: Option<f64>,
}

/// Identity of a local file when it was hashed: if none of this changed, neither did
/// its content (postgres never rewrites a finished segment in place).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    ino: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    fn of(file: &std::fs::File) -> std::io::Result<Fingerprint> {
        let m = file.metadata()?;
        Ok(Fingerprint {
            size: m.len(),
            ino: m.ino(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }

    fn of_stat(st: &nix::sys::stat::FileStat) -> Fingerprint {
        Fingerprint {
            size: st.st_size as u64,
            ino: st.st_ino,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        }
    }
}

/// Where one `.ready` file stands.
#[derive(Debug, Clone)]
enum FileState {
    /// An upload (by the uploader or a call) is under way.
    Busy,
    /// In the archive, as it was when read.
    Done(Fingerprint),
    /// Failed; the uploader tries again at `retry_at`.
    Failing { retry_at: Instant },
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, FileState>,
    /// Files failing now: how many attempts in a row, and the last error. Kept apart
    /// from `files` so that a call pushing a failing file does not reset it.
    failing: HashMap<String, (u32, String)>,
    prefetching: std::collections::HashSet<String>,
    stats: DaemonStats,
}

/// The daemon.
pub struct Daemon {
    cfg: ArchiveConfig,
    storage: Backend,
    /// False when the daemon only restores: `cfg` is then the restore source, and
    /// nothing is ever written to it.
    archives: bool,
    /// The archive PGDATA was restored from, when it is not `cfg`.
    source: Option<OpenSource>,
    pgdata: PathBuf,
    wal_dir: LocalDir,
    spool: LocalDir,
    parallel: usize,
    prefetch: usize,
    inner: Mutex<Inner>,
    changed: Notify,
    prefetched: Notify,
    upload_seconds: Option<prometheus::Histogram>,
    download_seconds: Option<prometheus::Histogram>,
    supervisor: watch::Receiver<SupervisorStatus>,
    /// Cancelled when pgwarden starts stopping; replaced when postgres runs again.
    cancel: Mutex<CancellationToken>,
    /// While stopping: when the shared stopping budget ends (set by the first call).
    stopping_until: Mutex<Option<Instant>>,
    /// Why archiving is refused, when the archive is not this cluster's, and when
    /// that was last checked.
    blocked: Mutex<Option<(String, Instant)>>,
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
fn observe(h: &Option<prometheus::Histogram>, start: Instant) {
    if let Some(h) = h {
        h.observe(start.elapsed().as_secs_f64());
    }
}

/// The pause before the `attempts`-th retry of a failing file: 1 s doubling up to a
/// minute, jittered so that many files do not retry in step.
fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempts.min(6));
    jitter(base.min(MAX_BACKOFF))
}

/// The archive a restored instance recovers from (`PGWARDEN_RESTORE_URL`), read only.
pub struct Source {
    /// Its settings.
    pub cfg: ArchiveConfig,
    /// Restore from it always (a standby following it), or only while recovering
    /// from the backup (recovery.signal in PGDATA).
    pub always: bool,
}

struct OpenSource {
    cfg: ArchiveConfig,
    storage: Backend,
    always: bool,
}

impl Daemon {
    /// Opens the storage once, checks that the archive is this cluster's, cleans the
    /// spool, and starts the uploader. With no `archive`, the daemon only restores,
    /// from `source`.
    pub async fn start(
        archive: Option<ArchiveConfig>,
        source: Option<Source>,
        pgdata: PathBuf,
        owner: Option<Owner>,
        supervisor: watch::Receiver<SupervisorStatus>,
    ) -> Result<Arc<Daemon>, WalError> {
        let (cfg, archives, source) = match (archive, source) {
            (Some(a), src) => (a, true, src),
            (None, Some(src)) => (src.cfg, false, None),
            (None, None) => {
                return Err(WalError::Invalid(
                    "the WAL daemon needs PGWARDEN_ARCHIVE_URL or PGWARDEN_RESTORE_URL".into(),
                ))
            }
        };
        let source = match source {
            Some(src) => Some(OpenSource {
                storage: src.cfg.open(None).await?,
                cfg: src.cfg,
                always: src.always,
            }),
            None => None,
        };
        let storage = cfg.open(owner).await?;
        let wal_dir = LocalDir::open(&pgdata.join("pg_wal"), owner)?;
        // Temp files of restores a previous life was killed in the middle of.
        for name in wal_dir.names() {
            if name.starts_with(".pgwarden-restore-") {
                wal_dir.remove(&name);
            }
        }
        let spool_path = pgdata.join(SPOOL_DIR);
        // Whatever a previous life prefetched may belong to a timeline since abandoned.
        let _ = std::fs::remove_dir_all(&spool_path);
        // A rebuild of PGDATA (reinit, reclone) removes the spool: it is made again once
        // the new cluster is in place.
        let recreate = Recreate {
            mode: 0o700,
            owner,
            only_with: pgdata.join("PG_VERSION"),
        };
        let spool = LocalDir::create(&spool_path, owner, recreate)?;
        let d = Arc::new(Daemon {
            parallel: cfg.parallel.max(1),
            prefetch: cfg.prefetch,
            cfg,
            storage,
            archives,
            source,
            pgdata,
            wal_dir,
            spool,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            prefetched: Notify::new(),
            upload_seconds: histogram(
                "pgwarden_wal_upload_duration_seconds",
                "Time to push one file to the archive",
            ),
            download_seconds: histogram(
                "pgwarden_wal_download_duration_seconds",
                "Time to fetch and verify one file from the archive",
            ),
            supervisor,
            cancel: Mutex::new(CancellationToken::new()),
            stopping_until: Mutex::new(None),
            blocked: Mutex::new(None),
        });
        tokio::spawn(d.clone().follow_supervisor());
        if archives {
            d.check_identity().await;
            tokio::spawn(d.clone().upload_loop());
        }
        Ok(d)
    }

    /// Whether the daemon archives (it has an archive of its own, not only a restore
    /// source): base backups go there.
    pub fn archives(&self) -> bool {
        self.archives
    }

    /// Where restore_command reads now: the restore source while recovering from its
    /// backup (or always, for a standby that follows it), else the own archive.
    fn restore_from(&self) -> (&ArchiveConfig, &Backend) {
        match &self.source {
            Some(src)
                if src.always
                    || self
                        .pgdata
                        .join(crate::settings::restore::RECOVERY_SIGNAL)
                        .exists() =>
            {
                (&src.cfg, &src.storage)
            }
            _ => (&self.cfg, &self.storage),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The archive settings.
    pub fn config(&self) -> &ArchiveConfig {
        &self.cfg
    }

    /// The warm storage client, for base backups.
    pub fn storage(&self) -> &Backend {
        &self.storage
    }

    /// Current figures.
    pub fn stats(&self) -> DaemonStats {
        let mut st = self.lock().stats.clone();
        st.last_restored_age_seconds = st.last_restored_unix.map(|t| (unix_now() - t).max(0.0));
        st
    }

    /// Upload and download latency histograms, for /metrics.
    pub fn histograms(&self) -> Vec<prometheus::Histogram> {
        [&self.upload_seconds, &self.download_seconds]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Checks again, whatever PGDATA's note says, that an archive this cluster wrote
    /// to before still holds its marker: an unmounted volume or a wrong bucket blocks
    /// archiving (postgres keeps the files) instead of starting a second history.
    async fn check_identity(&self) {
        let Some(sysid) = identity::archived_before(&self.cfg, &self.pgdata) else {
            return;
        };
        let storage = Retrying::new(&self.storage, self.cfg.timeout, CancellationToken::new());
        match identity::ensure(&self.cfg, &storage, &self.pgdata, sysid, true).await {
            Err(e @ WalError::Conflict(_)) => {
                tracing::error!(error = %e, "archiving is blocked");
                *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((e.to_string(), Instant::now()));
            }
            // An unreachable archive now is not a verdict: pushes check again.
            Err(e) => tracing::warn!(error = %e, "could not check the archive's identity"),
            Ok(()) => {
                if self
                    .blocked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .is_some()
                {
                    tracing::info!("the archive is this cluster's again; archiving resumes");
                }
            }
        }
    }

    /// The reason archiving is blocked, if it is; checked again at most every
    /// [`RECHECK_BLOCKED`], so that a volume mounted back is noticed without a restart.
    async fn blocked(&self) -> Option<WalError> {
        let due = match &*self.blocked.lock().unwrap_or_else(|p| p.into_inner()) {
            None => return None,
            Some((_, at)) => at.elapsed() >= RECHECK_BLOCKED,
        };
        if due {
            self.check_identity().await;
        }
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(e, _)| WalError::Conflict(e.clone()))
    }

    /// Cancels storage calls under way when pgwarden starts stopping, and arms a
    /// fresh token once postgres runs again (after a planned restart).
    async fn follow_supervisor(self: Arc<Self>) {
        let mut rx = self.supervisor.clone();
        loop {
            let stopping = rx.borrow_and_update().state == State::Stopping;
            {
                let mut token = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
                if stopping && !token.is_cancelled() {
                    token.cancel();
                } else if !stopping && token.is_cancelled() {
                    *token = CancellationToken::new();
                    *self
                        .stopping_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The retry policy for one operation: the full budget, cancelled when pgwarden
    /// starts stopping; or, once it is stopping, what is left of the shared stopping
    /// budget, which nothing cancels (postgres's last archive calls during a shutdown
    /// still go through when the archive is healthy).
    fn policy(&self) -> Retrying<'_, Backend> {
        self.policy_on(&self.storage, self.cfg.timeout)
    }

    /// [`Daemon::policy`] over `storage`, with `timeout` as the full budget.
    fn policy_on<'a>(&'a self, storage: &'a Backend, timeout: Duration) -> Retrying<'a, Backend> {
        let token = self
            .cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if token.is_cancelled() {
            let until = *self
                .stopping_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| Instant::now() + STOPPING_BUDGET);
            let left = until.saturating_duration_since(Instant::now());
            Retrying::new(storage, left, CancellationToken::new())
        } else {
            Retrying::new(storage, timeout, token)
        }
    }

    /// Pushes `name` from pg_wal with `storage`; counts and times it.
    async fn push(
        &self,
        name: &WalName,
        storage: &Retrying<'_, Backend>,
    ) -> Result<(Pushed, Fingerprint), WalError> {
        if let Some(e) = self.blocked().await {
            return Err(e);
        }
        let (dir, file_name) = (self.wal_dir.clone(), name.name.clone());
        let file = tokio::task::spawn_blocking(move || dir.open_source(&file_name))
            .await
            .map_err(|e| WalError::Io(std::io::Error::other(e)))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => WalError::Invalid(e.to_string()),
                _ => WalError::Io(e),
            })?;
        let fp = Fingerprint::of(&file)?;
        let start = Instant::now();
        let pushed = archive::push(&self.cfg, storage, name, file, &self.pgdata).await?;
        observe(&self.upload_seconds, start);
        if pushed == Pushed::Uploaded {
            self.lock().stats.uploads += 1;
        }
        Ok((pushed, fp))
    }

    /// Records the end of an upload of `name` and wakes whoever waits for it. A file
    /// that starts failing, fails differently, or succeeds after failing is logged;
    /// a file that goes on failing the same way is only counted.
    fn settle(&self, name: &str, result: &Result<(Pushed, Fingerprint), WalError>) {
        let mut inner = self.lock();
        let next = match result {
            Ok((_, fp)) => {
                if let Some((attempts, _)) = inner.failing.remove(name) {
                    tracing::info!(file = name, attempts, "archived after failing");
                }
                FileState::Done(fp.clone())
            }
            Err(e) => {
                let error = e.to_string();
                let attempts = match inner.failing.get(name) {
                    Some((n, last)) => {
                        if *last != error {
                            tracing::warn!(file = name, error = %e, "archiving still fails, differently");
                        }
                        n + 1
                    }
                    None => {
                        tracing::warn!(file = name, error = %e, "archiving failed; retrying with backoff");
                        1
                    }
                };
                inner
                    .failing
                    .insert(name.to_owned(), (attempts, error.clone()));
                inner.stats.failures += 1;
                inner.stats.last_error = Some(format!("{name}: {error}"));
                FileState::Failing {
                    retry_at: Instant::now() + backoff(attempts),
                }
            }
        };
        inner.files.insert(name.to_owned(), next);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Wakes on changes in `archive_status` and uploads what is ready, `parallel` at
    /// a time, skipping files being uploaded, uploaded, or waiting out a backoff.
    async fn upload_loop(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.parallel));
        let status_dir = self.pgdata.join("pg_wal/archive_status");
        let mut events = StatusEvents::watch(&status_dir);
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
            let now = Instant::now();
            let (todo, next_retry) = {
                let mut inner = self.lock();
                // postgres renamed the others to .done: forget them.
                inner
                    .files
                    .retain(|name, _| ready.binary_search(name).is_ok());
                inner
                    .failing
                    .retain(|name, _| ready.binary_search(name).is_ok());
                let mut next_retry: Option<Instant> = None;
                let mut todo = Vec::new();
                for name in &ready {
                    match inner.files.get(name) {
                        None => todo.push(name.clone()),
                        Some(FileState::Failing { retry_at, .. }) if *retry_at <= now => {
                            todo.push(name.clone())
                        }
                        Some(FileState::Failing { retry_at, .. }) => {
                            next_retry = Some(next_retry.map_or(*retry_at, |t| t.min(*retry_at)));
                        }
                        Some(_) => {}
                    }
                }
                for name in &todo {
                    inner.files.insert(name.clone(), FileState::Busy);
                }
                let busy = inner
                    .files
                    .values()
                    .filter(|s| matches!(s, FileState::Busy))
                    .count();
                inner.stats.queue = ready.len() as u64
                    - inner
                        .files
                        .values()
                        .filter(|s| matches!(s, FileState::Done(_)))
                        .count() as u64;
                inner.stats.in_flight = busy as u64;
                (todo, next_retry)
            };
            for name in todo {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let d = self.clone();
                tokio::spawn(async move {
                    let result = match WalName::parse(&name) {
                        Some(wal) => d.push(&wal, &d.policy()).await,
                        None => Err(WalError::Invalid(format!("{name} is not a WAL file name"))),
                    };
                    if let Ok((pushed, _)) = &result {
                        d.lock().stats.uploaded += u64::from(*pushed == Pushed::Uploaded);
                    }
                    d.settle(&name, &result);
                    drop(permit);
                });
            }
            let wait = next_retry
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(RESCAN)
                .min(RESCAN);
            tokio::select! {
                _ = events.next() => {}
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// archive_command through the daemon: answered at once when the file was already
    /// uploaded and has not changed since; waits for an upload under way; otherwise
    /// pushes now, marking the file so the uploader does not push it too.
    pub async fn archive(&self, path: &Path) -> Result<Pushed, WalError> {
        if !self.archives {
            return Err(WalError::Invalid(
                "archiving is off (PGWARDEN_ARCHIVE_URL is not set); the restore archive is never written to".into(),
            ));
        }
        let name = self
            .wal_dir
            .name_in(path)
            .map_err(|e| WalError::Invalid(e.to_string()))?;
        let wal = WalName::parse(&name).ok_or_else(|| {
            WalError::Invalid(format!("{} is not a WAL file name", path.display()))
        })?;
        loop {
            let notified = self.changed.notified();
            {
                let mut inner = self.lock();
                match inner.files.get(&name) {
                    Some(FileState::Busy) => {}
                    Some(FileState::Done(fp)) => {
                        let unchanged = self
                            .wal_dir
                            .stat(&name)
                            .is_ok_and(|st| Fingerprint::of_stat(&st) == *fp);
                        if unchanged {
                            inner.stats.answered_from_upload += 1;
                            inner.stats.archived += 1;
                            return Ok(Pushed::AlreadyArchived);
                        }
                        inner.files.insert(name.clone(), FileState::Busy);
                        break;
                    }
                    _ => {
                        inner.files.insert(name.clone(), FileState::Busy);
                        break;
                    }
                }
            }
            // An upload of this very file is under way: wait for it rather than race it.
            notified.await;
        }
        let result = self.push(&wal, &self.policy()).await;
        self.settle(&name, &result);
        let (pushed, _) = result?;
        let mut inner = self.lock();
        inner.stats.archived_direct += 1;
        inner.stats.archived += 1;
        Ok(pushed)
    }

    /// restore_command through the daemon: from the spool when prefetched, else
    /// fetched now; then the next segments are prefetched (unless `prefetch` is off,
    /// as for pg_rewind). `dest` must be directly in pg_wal.
    pub async fn restore(
        self: &Arc<Self>,
        name: &str,
        dest: &Path,
        prefetch: bool,
    ) -> Result<(), WalError> {
        let wal = WalName::parse(name)
            .ok_or_else(|| WalError::Invalid(format!("{name} is not a WAL file name")))?;
        let dest_name = self
            .wal_dir
            .name_in(dest)
            .map_err(|e| WalError::Invalid(e.to_string()))?;
        // Only a segment request says where replay is: postgres also probes for newer
        // .history files while it still replays the old timeline.
        if wal.kind == WalKind::Segment {
            self.forget_other_timelines(&wal);
        }
        // A prefetch of this very file is under way: wait for it rather than fetch twice.
        loop {
            let notified = self.prefetched.notified();
            if !self.lock().prefetching.contains(name) {
                break;
            }
            notified.await;
        }
        // A spool on another file system than pg_wal (initdb --waldir) cannot hand
        // over by rename: fetch instead.
        let from_spool = self
            .spool
            .move_to(name, &self.wal_dir, &dest_name)
            .unwrap_or_else(|e| {
                tracing::debug!(file = name, error = %e, "the prefetched file cannot be moved into pg_wal; fetching it");
                false
            });
        if from_spool {
            self.lock().stats.spool_hits += 1;
        } else {
            let start = Instant::now();
            let (cfg, storage) = self.restore_from();
            let policy = self.policy_on(storage, cfg.timeout);
            restore::fetch(cfg, &policy, &wal, &self.wal_dir, &dest_name).await?;
            observe(&self.download_seconds, start);
        }
        if wal.kind == WalKind::Segment {
            let mut inner = self.lock();
            inner.stats.last_restored = Some(wal.name.clone());
            inner.stats.last_restored_unix = Some(unix_now());
        }
        if prefetch && wal.kind == WalKind::Segment && self.prefetch > 0 {
            let seg_size = std::fs::metadata(self.wal_dir.path().join(&dest_name))
                .map(|m| m.len())
                .ok()
                .filter(|s| s.is_power_of_two())
                .unwrap_or(16 << 20);
            self.clone().prefetch_after(wal, seg_size);
        }
        Ok(())
    }

    /// Drops spooled segments that can no longer be asked for.
    fn forget_other_timelines(&self, wal: &WalName) {
        for name in self.spool.names() {
            if is_stale(&name, wal) {
                self.spool.remove(&name);
            }
        }
    }

    fn prefetch_after(self: Arc<Self>, wal: WalName, seg_size: u64) {
        for n in 1..=self.prefetch as u64 {
            let Some(next) = wal.next_segment(n, seg_size) else {
                return;
            };
            if self.spool.contains(&next.name) || !self.lock().prefetching.insert(next.name.clone())
            {
                continue;
            }
            let d = self.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let (cfg, storage) = d.restore_from();
                let policy = d.policy_on(storage, cfg.timeout);
                let result = restore::fetch(cfg, &policy, &next, &d.spool, &next.name).await;
                observe(&d.download_seconds, start);
                {
                    let mut inner = d.lock();
                    match &result {
                        Ok(()) => inner.stats.prefetched += 1,
                        // Not archived yet: the usual end of a prefetch window.
                        Err(WalError::NotFound(_)) => {}
                        Err(e) => {
                            inner.stats.prefetch_failures += 1;
                            tracing::warn!(file = %next.name, error = %e, "prefetch failed; restore_command will fetch it itself");
                        }
                    }
                    inner.prefetching.remove(&next.name);
                }
                d.prefetched.notify_waiters();
            });
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

/// inotify on `archive_status`: postgres creates each `.ready` file there. A thread
/// of its own blocks on the inotify descriptor and wakes the uploader. Without
/// inotify (an exotic file system), the uploader falls back to its rescan timer.
struct StatusEvents {
    wake: Option<Arc<Notify>>,
}

impl StatusEvents {
    fn watch(dir: &Path) -> StatusEvents {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watched = Inotify::init(InitFlags::IN_CLOEXEC).and_then(|i| {
            i.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
            Ok(i)
        });
        let inotify = match watched {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no inotify; polling instead");
                return StatusEvents { wake: None };
            }
        };
        let wake = Arc::new(Notify::new());
        let w = wake.clone();
        let spawned = std::thread::Builder::new()
            .name("pgwarden-inotify".into())
            .spawn(move || {
                // notify_one keeps one permit: a burst of events wakes the uploader once.
                while inotify.read_events().is_ok() {
                    w.notify_one();
                }
            });
        StatusEvents {
            wake: spawned.is_ok().then_some(wake),
        }
    }

    /// Waits for the next batch of events (forever without inotify).
    async fn next(&mut self) {
        match &self.wake {
            Some(w) => w.notified().await,
            None => std::future::pending().await,
        }
    }
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

    #[test]
    fn backoff_grows_jittered_and_is_bounded() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) <= Duration::from_secs(2));
        assert!(backoff(3) >= Duration::from_secs(4));
        for n in [7, 20, u32::MAX] {
            assert!(backoff(n) <= MAX_BACKOFF && backoff(n) >= MAX_BACKOFF / 2);
        }
    }
}
