//! Restore drills: `pgwarden restore-drill`, and `PGWARDEN_DRILL_SCHEDULE` under
//! `pgwarden run`. A drill proves that a backup restores: it restores one into a
//! scratch directory beside PGDATA through the restore bootstrap's own path
//! ([`crate::bootstrap::restore::plan`] and [`crate::bootstrap::restore::build`]),
//! recovers it with a postgres of its own ([`server`]), checks it, measures how long
//! that took, removes everything it made, and records the result ([`record`]).
//!
//! One drill at a time uses a scratch directory (a lock on it); the schedule's
//! drills run one at a time across an HA cluster ([`scheduler`]).

pub mod config;
pub mod record;
pub mod room;
pub mod scheduler;
mod server;

pub use config::{DrillArgs, DrillConfig};
pub use record::{DrillResult, DrillStatus, Tracker};

use crate::bootstrap::restore;
use crate::civil;
use crate::process::Runner;
use crate::settings::restore::{RecoveryTarget, RestoreConfig, SettingNames, Tablespaces, Then};
use crate::settings::Settings;
use crate::wal::ArchiveConfig;
use record::{Check, Running};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the drill's messages call its settings.
pub const NAMES: SettingNames = SettingNames {
    source: "PGWARDEN_ARCHIVE_URL",
    server: "PGWARDEN_ARCHIVE_NAME",
    backup_id: "--backup-id",
    target: Some("--target-time"),
    tablespaces: "PGWARDEN_DRILL_DIR",
};

/// What started a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `PGWARDEN_DRILL_SCHEDULE` under `pgwarden run`.
    Schedule,
    /// `pgwarden restore-drill`.
    Command,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Command => "command",
        }
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct Request {
    /// The backup; the latest that ends before the target when absent.
    pub backup_id: Option<String>,
    /// The end of the archive, or a time.
    pub target: RecoveryTarget,
    /// Who asked.
    pub trigger: Trigger,
}

/// Why no drill ran (nothing is recorded then).
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    /// Another drill holds the scratch directory.
    #[error("PGWARDEN_DRILL_DIR: {0} is in use by another drill; try again once it ended")]
    Busy(String),
    /// No archive to drill from.
    #[error(
        "a drill restores a backup from the archive, and none is set: set PGWARDEN_ARCHIVE_URL"
    )]
    NoArchive,
    /// The scratch directory cannot be prepared.
    #[error("PGWARDEN_DRILL_DIR: {0}")]
    Dir(String),
    /// Stopped before it ended (pgwarden stopping, a signal); what it made is removed.
    #[error("the drill was interrupted")]
    Interrupted,
}

/// The archive a drill reads: the instance's own, else the one it was restored from.
pub fn source(s: &Settings) -> Option<ArchiveConfig> {
    s.archive
        .clone()
        .or_else(|| s.restore.as_ref().map(|r| r.source.clone()))
}

/// Whether another open of `dir` (another process, or another drill in this one)
/// holds the drill lock now.
pub fn locked_elsewhere(dir: &Path) -> bool {
    match std::fs::File::open(dir) {
        Ok(f) => matches!(lock(f), Err((_, nix::errno::Errno::EWOULDBLOCK))),
        Err(_) => false,
    }
}

/// Takes the drill lock on the scratch directory `dir` (opened), without waiting; it
/// is released when the returned value is dropped, or the process ends.
fn lock(
    dir: std::fs::File,
) -> Result<nix::fcntl::Flock<std::fs::File>, (std::fs::File, nix::errno::Errno)> {
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
}

/// A failed step and why.
struct Failed {
    step: &'static str,
    error: String,
}

fn failed(step: &'static str, error: impl std::fmt::Display) -> Failed {
    Failed {
        step,
        error: error.to_string(),
    }
}

/// Runs one drill and records its result in the scratch directory. `tracker`, under
/// `pgwarden run`, shows its progress in `/status`; `cancel` stops it (what it made is
/// removed, nothing is recorded).
pub async fn drill(
    s: &Settings,
    req: &Request,
    runner: &Runner,
    cancel: &CancellationToken,
    tracker: Option<&Tracker>,
) -> Result<DrillResult, NotRun> {
    let source = source(s).ok_or(NotRun::NoArchive)?;
    let dir = s.drill.dir.clone();
    let owner = s.run_as.as_ref().map(|u| u.owner());
    crate::fsutil::ensure_dir(&dir, 0o700, owner).map_err(|e| NotRun::Dir(e.to_string()))?;
    let mut opened =
        std::fs::File::open(&dir).map_err(|e| NotRun::Dir(format!("{}: {e}", dir.display())))?;
    // A `/status` or a scrape probes the lock for an instant ([`locked_elsewhere`]):
    // only a lock held for a second is another drill's.
    let mut tries = 0;
    let lock = loop {
        match lock(opened) {
            Ok(l) => break l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if tries < 10 => {
                opened = f;
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(NotRun::Busy(dir.display().to_string()))
            }
            Err((_, e)) => return Err(NotRun::Dir(format!("lock {}: {e}", dir.display()))),
        }
    };
    // Holding the lock: whatever is in the scratch directory is an interrupted drill's.
    remove_scratch(&dir).await.map_err(NotRun::Dir)?;

    let started = SystemTime::now();
    let clock = Instant::now();
    let show = |step: &str| {
        if let Some(t) = tracker {
            t.set_running(Some(Running {
                started_at: Some(civil::rfc3339(started)),
                step: Some(step.to_owned()),
                restore: None,
            }));
        }
    };
    let mut out = DrillResult {
        ok: false,
        backup_id: req.backup_id.clone(),
        target: match &req.target {
            RecoveryTarget::Time(t) => crate::civil::format_utc(*t),
            _ => "end of archive".to_owned(),
        },
        trigger: req.trigger.as_str().to_owned(),
        started_at: civil::rfc3339(started),
        started_unix: unix(started),
        ended_unix: 0.0,
        duration_seconds: None,
        total_seconds: 0.0,
        recovered_to: None,
        recovered_to_unix: None,
        recovered_to_source: None,
        recovered_lsn: None,
        checks: Vec::new(),
        failed_step: None,
        error: None,
    };
    info!(backup_id = ?req.backup_id, target = %out.target, trigger = %out.trigger, dir = %dir.display(), "restore drill starting");
    let mut server = None;
    let mut workers = None;
    let steps = steps(
        s,
        req,
        &source,
        runner,
        &mut out,
        clock,
        (&mut server, &mut workers),
        &show,
        tracker,
    );
    let outcome = tokio::select! {
        r = steps => Some(r),
        _ = cancel.cancelled() => None,
        why = watch_room(&dir) => Some(Err(failed("room", why))),
    };
    show("cleanup");
    if let Some(srv) = server.take() {
        srv.stop().await;
    }
    // A restore stopped midway leaves threads that would write into the directory
    // after it is removed: they stop at their next read, and are waited for.
    if let Some(w) = workers.take() {
        if !w.ended(Duration::from_secs(60)).await {
            warn!(dir = %dir.display(), "the restore's threads did not end within a minute; removing the scratch directory anyway");
        }
    }
    let cleaned = remove_scratch(&dir).await;
    if let Some(t) = tracker {
        t.set_running(None);
    }
    drop(lock);
    let Some(outcome) = outcome else {
        warn!(dir = %dir.display(), "restore drill interrupted; what it made is removed");
        return Err(NotRun::Interrupted);
    };
    let outcome = outcome.and_then(|()| cleaned.map_err(|e| failed("cleanup", e)));
    let ended = SystemTime::now();
    out.ended_unix = unix(ended);
    out.total_seconds = clock.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            out.ok = true;
            info!(backup_id = ?out.backup_id, duration_seconds = out.duration_seconds, recovered_to = ?out.recovered_to, "restore drill succeeded");
        }
        Err(f) => {
            out.failed_step = Some(f.step.to_owned());
            out.error = Some(f.error.clone());
            tracing::error!(backup_id = ?out.backup_id, step = f.step, error = %f.error, "restore drill failed");
        }
    }
    if let Err(e) = record::append(&dir, out.clone(), owner) {
        tracing::error!(error = %e, "cannot record the drill's result; /status and /metrics do not show it");
    }
    Ok(out)
}

/// The drill's steps, up to its checks; `server` holds the drill's server once it
/// runs, for the caller to stop whatever happens, and `workers` the restore's
/// threads, for the caller to wait for before it removes what they write.
#[allow(clippy::too_many_arguments)]
async fn steps(
    s: &Settings,
    req: &Request,
    source: &ArchiveConfig,
    runner: &Runner,
    out: &mut DrillResult,
    clock: Instant,
    (server, workers): (
        &mut Option<server::Server>,
        &mut Option<restore::extract::Workers>,
    ),
    show: &(dyn Fn(&str) + Sync),
    tracker: Option<&Tracker>,
) -> Result<(), Failed> {
    let dir = &s.drill.dir;
    let owner = s.run_as.as_ref().map(|u| u.owner());
    show("plan");
    let rc = RestoreConfig {
        source: source.clone(),
        backup_id: req.backup_id.clone(),
        target: req.target.clone(),
        // Into the scratch directory: the backup's tablespaces' original locations
        // are the live cluster's.
        tablespaces: Tablespaces::Under(config::tablespaces_dir(dir)),
        names: NAMES,
    };
    let plan = restore::plan(s, &rc, Then::Promote, &config::data_dir(dir))
        .await
        .map_err(|e| failed("plan", format!("{e:#}")))?;
    let backup = plan.backup().clone();
    *workers = Some(plan.workers());
    out.backup_id = Some(backup.backup_id.clone());

    show("room");
    let pgdata = s.pgdata.clone();
    let local = tokio::task::spawn_blocking(move || room::local_cluster(&pgdata))
        .await
        .unwrap_or(None);
    let need = room::estimate(backup.size.unwrap_or(0), plan.compressed(), local);
    let space =
        room::space(dir).map_err(|e| failed("room", format!("statvfs {}: {e}", dir.display())))?;
    room::check(dir, &backup.backup_id, &need, &space).map_err(|e| failed("room", e))?;

    show("restore");
    if let Some(t) = tracker {
        t.set_restore(plan.progress());
    }
    let data = config::data_dir(dir);
    crate::fsutil::ensure_dir(&data, 0o700, owner).map_err(|e| failed("restore", e))?;
    restore::build(s, plan, runner, &data)
        .await
        .map_err(|e| failed("restore", format!("{e:#}")))?;
    // The data directory's mode, as postgres demands it, whatever the tar said.
    crate::fsutil::ensure_dir(&data, 0o700, owner).map_err(|e| failed("restore", e))?;

    show("recover");
    let run = config::run_dir(dir);
    let srv = server::Server::start(s, runner, source, &data, &run, &req.target)
        .await
        .map_err(|e| failed("recover", format!("{e:#}")))?;
    let srv = server.insert(srv);
    srv.wait_recovered(s)
        .await
        .map_err(|e| failed("recover", e))?;
    out.duration_seconds = Some(clock.elapsed().as_secs_f64());
    let (last_commit, lsn) = srv
        .recovered_to(s)
        .await
        .map_err(|e| failed("recover", format!("{e:#}")))?;
    out.recovered_lsn = Some(lsn).filter(|l| !l.is_empty());
    let (micros, from) = match last_commit {
        Some(m) => (Some(m), "last_transaction"),
        None => (
            civil::parse_timestamp(&backup.end_time).map(|t| t.micros),
            "backup_end",
        ),
    };
    out.recovered_to = micros.map(crate::civil::format_utc);
    out.recovered_to_unix = micros.map(|m| m as f64 / 1e6);
    out.recovered_to_source = Some(from.to_owned());
    info!(backup_id = %backup.backup_id, seconds = out.duration_seconds, recovered_to = ?out.recovered_to, lsn = ?out.recovered_lsn, "the restored backup is recovered");

    show("amcheck");
    let check = srv.amcheck(s, runner).await;
    let amcheck = outcome(out, check, "amcheck");
    // The SQL check runs whatever pg_amcheck found: the result shows both.
    let sql = match &s.drill.sql {
        Some(sql) => {
            show("sql");
            let check = srv.sql(s, sql).await;
            outcome(out, check, "sql")
        }
        None => Ok(()),
    };
    amcheck.and(sql)
}

/// Adds `check` to the result; a failed one fails `step`.
fn outcome(out: &mut DrillResult, check: Check, step: &'static str) -> Result<(), Failed> {
    let r = match (&check.ok, &check.detail) {
        (true, _) => Ok(()),
        (false, d) => Err(failed(
            step,
            d.clone()
                .unwrap_or_else(|| format!("{} failed", check.name)),
        )),
    };
    out.checks.push(check);
    r
}

/// Resolves when the scratch directory's file system falls below the reserve, with
/// the reason.
async fn watch_room(dir: &Path) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(why) = room::space(dir)
            .ok()
            .and_then(|sp| room::exhausted(dir, &sp))
        {
            return why;
        }
    }
}

/// Removes what a drill killed half-way (a `pgwarden restore-drill` whose terminal
/// went, a pgwarden killed with SIGKILL) left in `dir`, its server too, unless a drill
/// runs there now. `pgwarden run` calls it at start, so that a leftover server does
/// not hold memory until the next drill.
pub async fn clear_stale(dir: &Path) {
    if !config::data_dir(dir).exists() && !config::run_dir(dir).exists() {
        return;
    }
    let Ok(opened) = std::fs::File::open(dir) else {
        return;
    };
    let Ok(_held) = lock(opened) else {
        return;
    };
    warn!(dir = %dir.display(), "removing what an interrupted restore drill left");
    if let Err(e) = remove_scratch(dir).await {
        warn!(error = %e, "cannot remove what an interrupted restore drill left; the next drill tries again");
    }
}

/// Removes what a drill makes in `dir` (its cluster and its socket directory), after
/// stopping a server an interrupted drill left running there.
async fn remove_scratch(dir: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let data = config::data_dir(&dir);
        crate::bootstrap::stop_stale_postmaster(&data);
        for p in [data, config::run_dir(&dir), config::tablespaces_dir(&dir)] {
            // A prefetch cancelled a moment ago may still close its file.
            let mut last = Ok(());
            for _ in 0..20 {
                last = match std::fs::remove_dir_all(&p) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("remove {}: {e}", p.display())),
                };
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            last?;
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("the clean-up failed: {e}"))?
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A drill's result for people, one fact a line.
pub fn render(r: &DrillResult) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<15}{v}\n"));
    line(
        "restore drill:",
        match (&r.ok, &r.failed_step) {
            (true, _) => "ok".to_owned(),
            (false, Some(step)) => format!("FAILED at {step}"),
            (false, None) => "FAILED".to_owned(),
        },
    );
    line(
        "backup:",
        r.backup_id.clone().unwrap_or_else(|| "none chosen".into()),
    );
    line("target:", r.target.clone());
    if let Some(t) = &r.recovered_to {
        let from = match r.recovered_to_source.as_deref() {
            Some("backup_end") => "the backup's end: no transaction followed it",
            _ => "the last transaction replayed",
        };
        let lsn = r
            .recovered_lsn
            .as_deref()
            .map(|l| format!(", WAL {l}"))
            .unwrap_or_default();
        line("recovered to:", format!("{t} ({from}{lsn})"));
    }
    if let Some(d) = r.duration_seconds {
        line(
            "recovery time:",
            format!("{d:.1} s (restore and recovery, until it accepted connections)"),
        );
    }
    for c in &r.checks {
        line(
            "check:",
            match (&c.ok, &c.detail) {
                (true, _) => format!("{} ok", c.name),
                (false, Some(d)) => format!("{} FAILED: {d}", c.name),
                (false, None) => format!("{} FAILED", c.name),
            },
        );
    }
    line("total:", format!("{:.1} s", r.total_seconds));
    if let Some(e) = &r.error {
        line("error:", e.clone());
    }
    out
}
