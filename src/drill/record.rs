//! What a drill found, kept in the scratch directory (`last-drill.json`, written
//! atomically) so that `/status` and `/metrics` show the last drill after a restart,
//! and whichever way it started: `pgwarden run`'s schedule, or `pgwarden
//! restore-drill` in another process.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The record's file name in the scratch directory.
pub const RECORD_FILE: &str = "last-drill.json";

/// One drill's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillResult {
    /// True when every step passed: restore, recovery, pg_amcheck, the SQL check and
    /// the clean-up.
    pub ok: bool,
    /// The backup restored (none when the drill failed before one was chosen).
    pub backup_id: Option<String>,
    /// Where recovery was to stop: `end of archive`, or the `--target-time`.
    pub target: String,
    /// `schedule` (`PGWARDEN_DRILL_SCHEDULE`) or `command` (`pgwarden restore-drill`).
    pub trigger: String,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// When it started, in seconds since the epoch.
    pub started_unix: f64,
    /// When it ended, in seconds since the epoch.
    pub ended_unix: f64,
    /// Seconds from the start until the recovered cluster accepted connections: the
    /// time a real restore of this backup takes, your recovery time, measured. None
    /// when recovery did not finish.
    pub duration_seconds: Option<f64>,
    /// Seconds the whole drill took, checks and clean-up included.
    pub total_seconds: f64,
    /// The commit time of the last transaction recovery replayed
    /// (`pg_last_xact_replay_timestamp()`), as `YYYY-MM-DD HH:MM:SS.ffffff+00`; the
    /// backup's end when no transaction followed it.
    pub recovered_to: Option<String>,
    /// The same, in seconds since the epoch.
    pub recovered_to_unix: Option<f64>,
    /// `last_transaction` or `backup_end`: where `recovered_to` comes from.
    pub recovered_to_source: Option<String>,
    /// The last WAL position replayed.
    pub recovered_lsn: Option<String>,
    /// The checks that ran on the recovered cluster, in order.
    pub checks: Vec<Check>,
    /// The step that failed: `plan`, `room`, `restore`, `recover`, `amcheck`, `sql`
    /// or `cleanup`.
    pub failed_step: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One check on the recovered cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// `pg_amcheck` or `PGWARDEN_DRILL_SQL`.
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What it said, when it failed.
    pub detail: Option<String>,
}

/// What the scratch directory keeps between drills.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The last drill that ended, well or not.
    pub last: Option<DrillResult>,
    /// The last drill that succeeded.
    pub last_success: Option<DrillResult>,
    /// Drills that failed, ever.
    pub failures: u64,
    /// Drills that succeeded, ever.
    pub successes: u64,
}

impl Record {
    /// The record with `r` added.
    pub fn with(mut self, r: DrillResult) -> Record {
        if r.ok {
            self.successes += 1;
            self.last_success = Some(r.clone());
        } else {
            self.failures += 1;
        }
        self.last = Some(r);
        self
    }
}

/// Reads the record in `dir`; an absent one is empty, an unreadable one is reported.
pub fn load(dir: &Path) -> Result<Record, String> {
    let path = dir.join(RECORD_FILE);
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Adds `r` to the record in `dir`, atomically.
pub fn append(
    dir: &Path,
    r: DrillResult,
    owner: Option<crate::fsutil::Owner>,
) -> Result<Record, String> {
    let record = load(dir)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the drill record is unreadable; starting a new one");
            Record::default()
        })
        .with(r);
    let text = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(&dir.join(RECORD_FILE), &text, owner, 0o644)
        .map_err(|e| format!("write {}: {e}", dir.join(RECORD_FILE).display()))?;
    Ok(record)
}

/// A drill under way, as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Running {
    /// When it started (UTC, RFC 3339), when this process runs it.
    pub started_at: Option<String>,
    /// The step it is at, when this process runs it.
    pub step: Option<String>,
    /// In the `restore` step: bytes of the backup's objects read from the archive, of
    /// all it reads, the rate and the time left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::progress::Figures>,
}

/// The `drill` section of `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillStatus {
    /// A drill under way: the schedule's, or a `pgwarden restore-drill` (the scratch
    /// directory is locked).
    pub running: Option<Running>,
    /// `PGWARDEN_DRILL_SCHEDULE`, when set.
    pub schedule: Option<String>,
    /// When the schedule runs the next drill (UTC, RFC 3339).
    pub next_scheduled: Option<String>,
    /// Why the schedule is not drilling here now, when it waits or another member does.
    pub waiting: Option<String>,
    /// The last drill, and the last successful one, with the counts.
    #[serde(flatten)]
    pub record: Record,
    /// Why the record could not be read, if it could not.
    pub record_error: Option<String>,
}

/// The identity of the record file when it was read: it is read again only once it
/// changed (another process drilled).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        ino: m.ino(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// Drill state shared by the schedule, `/status` and `/metrics` under `pgwarden run`.
#[derive(Debug)]
pub struct Tracker {
    dir: PathBuf,
    schedule: Option<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    read: Option<(Option<Stamp>, Result<Record, String>)>,
    running: Option<Running>,
    /// The running drill's restore, while it restores.
    restore: Option<std::sync::Arc<crate::progress::Progress>>,
    next_scheduled: Option<String>,
    waiting: Option<String>,
}

impl Tracker {
    /// The tracker of the drills in `dir`.
    pub fn new(dir: &Path, schedule: Option<String>) -> Tracker {
        Tracker {
            dir: dir.to_path_buf(),
            schedule,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's drill moved to `step` (None: it ended).
    pub fn set_running(&self, running: Option<Running>) {
        let mut inner = self.lock();
        inner.running = running;
        inner.restore = None;
    }

    /// This process's drill restores, `progress` saying how far (until its next step).
    pub fn set_restore(&self, progress: std::sync::Arc<crate::progress::Progress>) {
        self.lock().restore = Some(progress);
    }

    /// The schedule's next drill, and why it waits, if it does.
    pub fn set_schedule(&self, next: Option<String>, waiting: Option<String>) {
        let mut inner = self.lock();
        inner.next_scheduled = next;
        inner.waiting = waiting;
    }

    /// The record, read again when its file changed.
    pub fn record(&self) -> Result<Record, String> {
        let path = self.dir.join(RECORD_FILE);
        let now = stamp(&path);
        let mut inner = self.lock();
        if let Some((seen, record)) = &inner.read {
            if *seen == now {
                return record.clone();
            }
        }
        let record = load(&self.dir);
        inner.read = Some((now, record.clone()));
        record
    }

    /// The `/status` section; `None` when drills were never set up nor run here.
    pub fn status(&self) -> Option<DrillStatus> {
        let record = self.record();
        let inner = self.lock();
        let mut running = inner.running.clone();
        if let (Some(r), Some(p)) = (running.as_mut(), &inner.restore) {
            r.restore = Some(p.figures());
        }
        if running.is_none() && super::locked_elsewhere(&self.dir) {
            running = Some(Running {
                started_at: None,
                step: None,
                restore: None,
            });
        }
        let (record, record_error) = match record {
            Ok(r) => (r, None),
            Err(e) => (Record::default(), Some(e)),
        };
        let nothing = self.schedule.is_none()
            && running.is_none()
            && record.last.is_none()
            && record_error.is_none();
        (!nothing).then(|| DrillStatus {
            running,
            schedule: self.schedule.clone(),
            next_scheduled: inner.next_scheduled.clone(),
            waiting: inner.waiting.clone(),
            record,
            record_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool, started: f64) -> DrillResult {
        DrillResult {
            ok,
            backup_id: Some("20261124T030000".into()),
            target: "end of archive".into(),
            trigger: "command".into(),
            started_at: "2026-11-24T04:00:00Z".into(),
            started_unix: started,
            ended_unix: started + 60.0,
            duration_seconds: ok.then_some(42.0),
            total_seconds: 60.0,
            recovered_to: None,
            recovered_to_unix: None,
            recovered_to_source: None,
            recovered_lsn: None,
            checks: vec![],
            failed_step: (!ok).then(|| "amcheck".into()),
            error: None,
        }
    }

    #[test]
    fn the_record_counts_and_survives_a_reread() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::new(dir.path(), None);
        assert_eq!(t.status(), None, "nothing set up, nothing run");
        append(dir.path(), result(true, 1.0), None).unwrap();
        append(dir.path(), result(false, 2.0), None).unwrap();
        let r = t.record().unwrap();
        assert_eq!((r.successes, r.failures), (1, 1));
        assert_eq!(r.last.as_ref().map(|l| l.ok), Some(false));
        assert_eq!(r.last_success.as_ref().map(|l| l.started_unix), Some(1.0));
        // Another process drills: the change is seen.
        append(dir.path(), result(true, 3.0), None).unwrap();
        let s = t.status().unwrap();
        assert_eq!(s.record.successes, 2);
        assert_eq!(s.record.last_success.unwrap().started_unix, 3.0);
        // A damaged file is reported, not taken for an empty record.
        std::fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        assert!(t.status().unwrap().record_error.is_some());
        // Scheduled drills show before the first one ran.
        let fresh = tempfile::tempdir().unwrap();
        let t = Tracker::new(fresh.path(), Some("1d".into()));
        assert_eq!(t.status().unwrap().schedule.as_deref(), Some("1d"));
    }

    #[test]
    fn a_drill_shows_its_restore_progress_until_its_next_step() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::new(dir.path(), None);
        let step = |name: &str| Running {
            started_at: None,
            step: Some(name.into()),
            restore: None,
        };
        t.set_running(Some(step("restore")));
        let p = std::sync::Arc::new(crate::progress::Progress::default());
        p.set_total(300);
        t.set_restore(p.clone());
        p.add(100);
        let shown = t.status().unwrap().running.unwrap().restore.unwrap();
        assert_eq!((shown.bytes, shown.total_bytes), (100, 300));
        t.set_running(Some(step("recover")));
        assert_eq!(t.status().unwrap().running.unwrap().restore, None);
    }
}
