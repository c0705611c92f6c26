//! Taking a base backup of the local instance into the archive.
//!
//! The files are copied by the backup engine ([`super::engine`]): a backup held open
//! with `pg_backup_start`/`pg_backup_stop`, `PGWARDEN_BACKUP_JOBS` workers each
//! writing, compressing and uploading its own tar part. Around it, this module
//! claims the backup's id ([`super::marker`]), waits until every WAL segment the
//! backup needs is in the archive, and writes `backup.info` last, so that an
//! interrupted backup (a kill, an outage, the promotion of the standby it ran on)
//! is never listed and leaves nothing a restore could pick.

use super::engine::incremental::{Parent, PARENT_KEY};
use super::{
    backup_id, barman_time, info::BackupInfo, marker, BackupCompression, BackupStatus, Finished,
    Lsn, Running,
};
use crate::process::Runner;
use crate::settings::Settings;
use crate::wal::names::WalName;
use crate::wal::storage::{Backend, Bytes, PutOutcome, Storage};
use crate::wal::ArchiveConfig;
use anyhow::{bail, Context, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// `backup.info`'s comment key for the incarnation of the data directory a backup was
/// taken of.
const INCARNATION_KEY: &str = "pgdata_incarnation";

/// What a backup needs.
pub struct Job<'a> {
    /// The instance.
    pub settings: &'a Settings,
    /// Where the archive is.
    pub archive: &'a ArchiveConfig,
    /// The archive's storage.
    pub storage: &'a Backend,
    /// gzip or none.
    pub compression: BackupCompression,
    /// Workers copying files (`PGWARDEN_BACKUP_JOBS`).
    pub jobs: usize,
    /// Runs the processes a backup needs.
    pub runner: &'a Runner,
    /// Progress and result, for /status.
    pub status: Arc<Mutex<BackupStatus>>,
    /// `Some`: only the blocks changed since the previous backup (`--incremental`),
    /// when there is one this backup can build on, otherwise a full one, saying why;
    /// `Some(Some(d))`: a full one too when the chain's full began more than `d` ago.
    pub incremental: Option<Option<Duration>>,
}

/// What the server says about itself, for `backup.info`.
struct ServerFacts {
    version: u32,
    systemid: String,
    seg_size: u64,
    /// The last checkpoint's (restartpoint's, on a standby) redo segment: the backup
    /// starts there or later.
    redo_wal: String,
    /// The timeline of the last checkpoint (restartpoint).
    timeline: u32,
    /// Page checksums or `wal_log_hints` are on: every change of a page moves its LSN
    /// (what an incremental backup relies on).
    hints_move_lsn: bool,
    /// The data directory's incarnation (`pgdata::INCARNATION`), recorded in
    /// `backup.info`: an incremental trusts file times only within one.
    incarnation: String,
}

async fn server_facts(s: &Settings) -> Result<ServerFacts> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                    (SELECT redo_wal_file FROM pg_control_checkpoint()), \
                    (SELECT timeline_id::bigint FROM pg_control_checkpoint()), \
                    current_setting('data_checksums') = 'on' OR current_setting('wal_log_hints') = 'on'",
            &[],
        )
        .await
        .context("read the server's version and system identifier")?;
    let (dir, owner) = (s.pgdata.clone(), s.run_as.as_ref().map(|u| u.owner()));
    let incarnation = tokio::task::spawn_blocking(move || crate::pgdata::incarnation(&dir, owner))
        .await
        .context("the incarnation's thread")?
        .context("PGDATA: read or write its incarnation")?;
    Ok(ServerFacts {
        version: row.get::<_, String>(0).parse().unwrap_or(0),
        systemid: row.get(1),
        seg_size: row.get::<_, i64>(2) as u64,
        redo_wal: row.get(3),
        timeline: u32::try_from(row.get::<_, i64>(4)).unwrap_or(0),
        hints_move_lsn: row.get(5),
        incarnation,
    })
}

impl Job<'_> {
    fn progress(&self, f: impl FnOnce(&mut BackupStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Takes a backup; returns what `backup.info` says of it.
    pub async fn run(&self) -> Result<BackupInfo> {
        let started = Instant::now();
        let begin = SystemTime::now();
        let facts = server_facts(self.settings).await?;
        let parent = if let Some(full_every) = self.incremental {
            match self.parent(&facts, full_every).await? {
                Ok(p) => Ok(p),
                Err(why) => {
                    tracing::warn!(reason = %why, "an incremental backup is not possible; taking a full one");
                    Err(why)
                }
            }
        } else {
            Err(String::new())
        };
        let (id, claim) = self
            .claim(
                begin,
                &facts,
                parent.as_ref().ok().map(|p| p.backup_id.as_str()),
            )
            .await?;
        self.progress(|st| {
            st.running = Some(Running {
                backup_id: id.clone(),
                ..Default::default()
            })
        });
        let result = self.take(&id, &claim, &facts, begin, parent).await;
        // Listed, or discarded: the id is not running any more. Only what is ours
        // goes (a rival that took the id over keeps its marker and data).
        if self.holds(&id, &claim).await.unwrap_or(false) {
            if result.is_err() {
                self.discard(&id).await;
            }
            let dir = format!("{}{id}", super::base_prefix(&self.archive.base()));
            if let Err(e) = self
                .storage
                .delete(&format!("{dir}/{}", marker::RUNNING))
                .await
            {
                tracing::warn!(backup_id = %id, error = %e, "could not remove the backup's running marker; retention removes it once it is old");
            }
        }
        let finished = Finished {
            backup_id: id.clone(),
            ended_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            duration_seconds: started.elapsed().as_secs_f64(),
            size_bytes: result.as_ref().ok().and_then(|i| i.size).unwrap_or(0),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        };
        self.progress(|st| {
            st.running = None;
            st.last = Some(finished);
        });
        // The parts and gzip blocks are freed; give the memory back.
        crate::process::memory::trim();
        match &result {
            Ok(i) => {
                tracing::info!(backup_id = %id, size = i.size.unwrap_or(0), seconds = started.elapsed().as_secs_f64(), "backup done")
            }
            Err(e) => {
                tracing::error!(backup_id = %id, error = format!("{e:#}"), "backup failed; nothing was listed")
            }
        }
        result
    }

    /// Claims a backup id no backup has yet (barman's ids have a one-second
    /// resolution) by writing its `backup.running` marker, which also tells retention
    /// on any member the WAL from `facts.redo_wal` on is needed.
    ///
    /// The marker's creation decides: [`Storage::put_new`] creates a key once, on a
    /// store that refuses a second creation (a volume, AWS S3) and on one that ignores
    /// `If-None-Match` (Garage: writers claim the key first, see the S3 storage), and
    /// markers of two backups differ by their token. The marker is read back as a
    /// check, and again before `backup.info` is written.
    async fn claim(
        &self,
        t: SystemTime,
        facts: &ServerFacts,
        parent: Option<&str>,
    ) -> Result<(String, String)> {
        let base = super::base_prefix(&self.archive.base());
        let token = marker::token();
        let body = marker::Running {
            token: token.clone(),
            begin_wal: facts.redo_wal.clone(),
            host: self.settings.name.clone(),
            parent: parent.map(str::to_owned),
        }
        .render();
        for step in 0..30 {
            let id = backup_id(t + Duration::from_secs(step));
            if !self
                .storage
                .list(&format!("{base}{id}/"), 1)
                .await?
                .is_empty()
            {
                continue;
            }
            let key = format!("{base}{id}/{}", marker::RUNNING);
            let sha = crate::wal::sha256_hex(body.as_bytes());
            match self
                .storage
                .put_new(&key, Bytes::from(body.clone()), &sha)
                .await
                .with_context(|| format!("claim backup id {id}"))?
            {
                PutOutcome::Exists(_) => continue,
                PutOutcome::Created => {}
            }
            if self.holds(&id, &token).await? {
                return Ok((id, token));
            }
            tracing::info!(backup_id = %id, "another backup claimed this id at the same time; taking the next one");
        }
        bail!("no free backup id near {}", backup_id(t))
    }

    /// Whether the `backup.running` marker of `id` holds `token`.
    async fn holds(&self, id: &str, token: &str) -> Result<bool> {
        let key = format!(
            "{}{id}/{}",
            super::base_prefix(&self.archive.base()),
            marker::RUNNING
        );
        let found = self
            .storage
            .get(&key)
            .await
            .with_context(|| format!("read {key}"))?;
        Ok(found
            .and_then(|(b, _)| marker::Running::parse(&b))
            .is_some_and(|m| m.token == token))
    }

    /// Removes what a failed backup left under its id (a data object completed
    /// before a later step failed). What cannot be removed now is an orphan that
    /// retention removes later.
    async fn discard(&self, id: &str) {
        let dir = format!("{}{id}/", super::base_prefix(&self.archive.base()));
        let Ok(objects) = self.storage.list(&dir, 10_000).await else {
            return;
        };
        for o in objects {
            if o.key.ends_with(marker::RUNNING) || o.key.ends_with("/backup.info") {
                continue;
            }
            if let Err(e) = self.storage.delete(&o.key).await {
                tracing::warn!(key = %o.key, error = %e, "could not remove a failed backup's object; retention removes it once it is old");
            }
        }
    }

    async fn take(
        &self,
        id: &str,
        token: &str,
        facts: &ServerFacts,
        begin: SystemTime,
        parent: Result<Arc<Parent>, String>,
    ) -> Result<BackupInfo> {
        let s = self.settings;
        let dir = format!("{}{id}", super::base_prefix(&self.archive.base()));
        let progress = Arc::new(super::engine::Progress::default());
        let ticker = tokio::spawn(report_progress(
            id.to_owned(),
            progress.clone(),
            self.status.clone(),
        ));
        let taken = super::engine::take(&super::engine::Job {
            settings: s,
            storage: self.storage,
            dir: dir.clone(),
            label: format!("pgwarden {id}"),
            compression: self.compression,
            jobs: self.jobs,
            major: facts.version / 10000,
            system_id: facts.systemid.parse().unwrap_or(0),
            progress,
            runner: self.runner,
            parent: parent.as_ref().ok().cloned(),
        })
        .await;
        ticker.abort();
        let taken = taken?;
        let parent = match (&taken.full_because, parent) {
            (Some(why), Ok(_)) => Err(why.clone()),
            (_, parent) => parent,
        };
        if taken.unchanged.0 > 0 || taken.skipped > 0 {
            tracing::info!(
                backup_id = %id,
                files = taken.unchanged.0,
                bytes = taken.unchanged.1,
                window_bytes = taken.skipped,
                "incremental: files unchanged since the parent (by length and modification time, or by the WAL summaries) were not read, nor windows of changed files the summaries leave untouched (window_bytes)"
            );
        }
        let (start, timeline, end) = (taken.start, taken.timeline, taken.end);
        // The segment holding the last byte before the end: an end exactly on a segment
        // boundary is in the previous segment (postgres's XLByteToPrevSeg), and the
        // next one may never be written.
        let end_wal = Lsn(end.0.saturating_sub(1)).wal_name(timeline, facts.seg_size);
        let begin_wal = start.wal_name(timeline, facts.seg_size);
        self.wait_archived(&begin_wal, &end_wal, facts.seg_size)
            .await?;
        let info = BackupInfo {
            backup_id: id.to_owned(),
            status: "DONE".to_owned(),
            timeline,
            begin_wal,
            begin_xlog: start.to_string(),
            end_wal,
            end_xlog: end.to_string(),
            begin_time: barman_time(begin),
            end_time: barman_time(SystemTime::now()),
            version: facts.version,
            systemid: facts.systemid.clone(),
            xlog_segment_size: facts.seg_size,
            size: Some(taken.parts.iter().map(|p| p.size).sum()),
            backup_label: Some(taken.label.clone()),
            tablespaces: taken.tablespaces.clone(),
            made_by: "pgwarden".to_owned(),
            extra: {
                let mut e = extra(&taken.parts);
                // Which member took it: under HA, usually a standby (see
                // super::target); backup_label says whether it was one.
                e.insert("member".to_owned(), s.name.clone());
                e.insert(INCARNATION_KEY.to_owned(), facts.incarnation.clone());
                match &parent {
                    Ok(p) => {
                        e.insert(PARENT_KEY.to_owned(), p.backup_id.clone());
                    }
                    Err(why) if !why.is_empty() => {
                        e.insert("full_because".to_owned(), why.clone());
                    }
                    Err(_) => {}
                }
                e
            },
        };
        let listed = super::list::list(self.storage, &self.archive.base())
            .await
            .context("list the backups to compare clocks")?;
        if let Some(why) = super::list::clock_contradiction(&listed, &info) {
            bail!("this backup's times contradict the archive: {why}; fix the members' clocks (NTP); the backup is not listed");
        }
        if !self.holds(id, token).await? {
            bail!("another backup took over id {id} while this one ran (its backup.running marker is not ours); this backup is not listed");
        }
        let text = info.render(&s.pgdata.display().to_string());
        let sha = crate::wal::sha256_hex(text.as_bytes());
        match self
            .storage
            .put_new(&format!("{dir}/backup.info"), Bytes::from(text), &sha)
            .await?
        {
            PutOutcome::Created => Ok(info),
            PutOutcome::Exists(_) => {
                bail!("{dir}/backup.info appeared meanwhile; not overwriting it")
            }
        }
    }

    /// The backup an incremental backup builds on: the newest listed one, if it is
    /// pgwarden's, has its manifest copy, and is of this cluster's history. The inner
    /// `Err` says why there is none (then a full backup is taken).
    async fn parent(
        &self,
        facts: &ServerFacts,
        full_every: Option<Duration>,
    ) -> Result<Result<Arc<Parent>, String>> {
        let base = self.archive.base();
        let listed = super::list::list(self.storage, &base)
            .await
            .context("list the backups to find the one to build on")?;
        let Some(last) = listed
            .iter()
            .filter(|b| b.status == "DONE")
            .max_by(|a, b| super::list::wal_order(a).cmp(&super::list::wal_order(b)))
        else {
            return Ok(Err("there is no backup yet to build on".to_owned()));
        };
        let id = &last.backup_id;
        if let Some(why) = full_every.and_then(|d| full_due(&listed, last, SystemTime::now(), d)) {
            return Ok(Err(why));
        }
        // An incremental on a chain that cannot be restored could not be either.
        let chain = match super::list::chain(&listed, last, "PGWARDEN_RESTORE_BACKUP_ID") {
            Ok(chain) => chain,
            Err(why) => return Ok(Err(why)),
        };
        if last.made_by != "pgwarden" {
            return Ok(Err(format!(
                "the previous backup, {id}, was taken by {}",
                last.made_by
            )));
        }
        let key = format!(
            "{}{id}/{}",
            super::base_prefix(&base),
            super::engine::manifest::OBJECT
        );
        let Some((body, _)) = self
            .storage
            .get(&key)
            .await
            .with_context(|| format!("read {key}"))?
        else {
            return Ok(Err(format!(
                "the previous backup, {id}, has no copy of its manifest (an older pgwarden took it)"
            )));
        };
        // Its window checksums, when it stored them (a pgwarden before them did not):
        // without, every changed file is read whole.
        let windows_key = format!(
            "{}{id}/{}",
            super::base_prefix(&base),
            super::engine::incremental::WINDOWS_OBJECT
        );
        let windows = self
            .storage
            .get(&windows_key)
            .await
            .with_context(|| format!("read {windows_key}"))?
            .map(|(body, _)| body);
        let (files, windows) = tokio::task::spawn_blocking(move || {
            let parsed = super::engine::manifest::parse(&String::from_utf8_lossy(&body))
                .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            let sizes = parsed
                .files
                .iter()
                .map(|f| {
                    let was = super::engine::incremental::Was {
                        size: f.size,
                        mtime: f.mtime,
                        crc32c: f.crc32c,
                    };
                    (f.path.clone(), was)
                })
                .collect();
            let windows = match windows {
                Some(text) => super::engine::incremental::parse_windows(
                    &String::from_utf8_lossy(&text),
                    &sizes,
                )
                .unwrap_or_else(|e| {
                    tracing::warn!(key = %windows_key, error = %e, "ignoring damaged window checksums: changed files are read whole");
                    Default::default()
                }),
                None => Default::default(),
            };
            anyhow::Ok((sizes, windows))
        })
        .await
        .context("the manifest's thread")??;
        let (start, end) = (
            Lsn::parse(&last.begin_xlog)
                .with_context(|| format!("backup {id}: begin_xlog {:?}", last.begin_xlog))?,
            Lsn::parse(&last.end_xlog)
                .with_context(|| format!("backup {id}: end_xlog {:?}", last.end_xlog))?,
        );
        let history = if last.timeline == facts.timeline {
            String::new()
        } else {
            let path = self
                .settings
                .pgdata
                .join(format!("pg_wal/{:08X}.history", facts.timeline));
            tokio::fs::read_to_string(&path).await.unwrap_or_default()
        };
        let same_history = in_history(&history, facts.timeline, last.timeline, end);
        if let Some(why) = super::engine::incremental::why_not(
            facts.hints_move_lsn,
            &last.systemid,
            &facts.systemid,
            last.version / 10000,
            facts.version / 10000,
            same_history,
        ) {
            return Ok(Err(format!("{why} (previous backup {id})")));
        }
        // File times are compared only within one data directory's life: those of
        // another member, or of this one before a rebuild or a rewind, come from
        // another clock and another history of the files (see pgdata::INCARNATION).
        // Nor within a chain any backup of which was taken of another data directory:
        // what it did not read is another directory's bytes in every later restore.
        let same_pgdata = chain
            .iter()
            .all(|b| b.extra.get(INCARNATION_KEY) == Some(&facts.incarnation));
        let major = facts.version / 10000;
        if let Some(why) = super::engine::incremental::why_not_here(same_pgdata, major) {
            return Ok(Err(format!("{why} (previous backup {id})")));
        }
        let began = crate::civil::parse_barman_time(&last.begin_time)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .filter(|_| same_pgdata);
        Ok(Ok(Arc::new(Parent {
            backup_id: id.clone(),
            start,
            end,
            timeline: last.timeline,
            files,
            windows,
            began,
            foreign: !same_pgdata,
        })))
    }

    /// A backup is usable only with every segment from its start to its end archived
    /// (the daemon uploads out of order, and a standby's pg_basebackup waits for none):
    /// each is looked up, in order, waiting for those not there yet, before
    /// `backup.info` lists the backup.
    async fn wait_archived(&self, begin_wal: &str, end_wal: &str, seg_size: u64) -> Result<()> {
        let mut wal = WalName::parse(begin_wal).context("the start segment's name")?;
        let last = WalName::parse(end_wal).context("the end segment's name")?;
        let base = self.archive.base();
        let deadline = Instant::now() + self.archive.timeout.max(Duration::from_secs(60)) * 2;
        // The last segment is usually archived within moments of the backup's end:
        // looked up again soon, then less often.
        let mut pause = Duration::from_millis(50);
        loop {
            match crate::wal::present::lookup(self.storage, &base, &wal).await? {
                crate::wal::present::Presence::Readable { .. } => {
                    if wal.name == last.name {
                        return Ok(());
                    }
                    wal = wal
                        .next_segment(1, seg_size)
                        .with_context(|| format!("no segment after {}", wal.name))?;
                    pause = Duration::from_millis(50);
                    if wal.name > last.name {
                        bail!("the backup's end segment {end_wal} does not follow its start {begin_wal}");
                    }
                    continue;
                }
                crate::wal::present::Presence::Unreadable { why, .. } => bail!(
                    "the backup needs WAL segment {}: {why}; the backup is not listed",
                    wal.name
                ),
                crate::wal::present::Presence::Missing => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "WAL segment {} (the backup needs {begin_wal} to {end_wal}) did not reach the archive in time; the backup is not listed",
                    wal.name
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Whether a backup on timeline `parent_tli` that ended at `parent_end` is in the
/// history of timeline `tli` (`history` is that timeline's `.history` file): on it, or
/// on an ancestor that this timeline branched off at or after that end.
fn in_history(history: &str, tli: u32, parent_tli: u32, parent_end: Lsn) -> bool {
    parent_tli == tli
        || super::verify::parse_history(history)
            .iter()
            .any(|(t, switch)| *t == parent_tli && parent_end <= *switch)
}

/// Why the schedule's `full every` wants a full backup now: the full backup at the
/// root of `last`'s chain began more than `every` before `now`.
fn full_due(
    listed: &[BackupInfo],
    last: &BackupInfo,
    now: SystemTime,
    every: Duration,
) -> Option<String> {
    let mut root = last;
    for _ in 0..listed.len() {
        let Some(parent) = root.extra.get(PARENT_KEY) else {
            break;
        };
        match listed.iter().find(|b| &b.backup_id == parent) {
            Some(p) => root = p,
            None => break,
        }
    }
    let began = crate::civil::parse_barman_time(&root.begin_time)?;
    let age = now.duration_since(began).ok()?;
    (age >= every).then(|| {
        format!(
            "the last full backup, {}, began {} hours ago, and PGWARDEN_BACKUP_SCHEDULE wants a full one every {} hours",
            root.backup_id,
            age.as_secs() / 3600,
            every.as_secs() / 3600
        )
    })
}

/// Keeps `/status` up to date with the backup's progress, and logs it every
/// [`crate::progress::LOG_EVERY`]: bytes done, the total, the rate and the time left.
async fn report_progress(
    id: String,
    progress: Arc<super::engine::Progress>,
    status: Arc<Mutex<BackupStatus>>,
) {
    let _log = crate::progress::log_every("backup progress", id, progress.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .as_mut()
        {
            r.progress = progress.figures();
        }
    }
}

/// pgwarden's own facts in `backup.info` (comment lines, which barman skips): each
/// part's SHA-256, checked at restore, and how many parts there are (PGDATA's, and
/// each tablespace's as `oid:count,...`), so that a restore sees a missing last part
/// too.
fn extra(parts: &[super::engine::Part]) -> std::collections::BTreeMap<String, String> {
    use super::parts::{part_of, Holds};
    let mut counts: std::collections::BTreeMap<Holds, usize> = Default::default();
    for p in parts {
        if let Some((holds, _, _)) = part_of(&p.name) {
            *counts.entry(holds).or_default() += 1;
        }
    }
    let tablespace_parts: Vec<String> = counts
        .iter()
        .filter_map(|(h, n)| match h {
            Holds::Tablespace(oid) => Some(format!("{oid}:{n}")),
            Holds::Data => None,
        })
        .collect();
    let mut extra: std::collections::BTreeMap<String, String> = [
        (
            "data_parts".to_owned(),
            counts.get(&Holds::Data).copied().unwrap_or(0).to_string(),
        ),
        (
            "parts_sha256".to_owned(),
            parts
                .iter()
                .map(|p| format!("{}:{}", p.name, p.sha256))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "pgwarden_version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ]
    .into();
    if !tablespace_parts.is_empty() {
        extra.insert("tablespace_parts".to_owned(), tablespace_parts.join(","));
    }
    let indexes: Vec<String> = parts
        .iter()
        .filter_map(|p| {
            let sha = p.index_sha256.as_ref()?;
            Some(format!(
                "{}:{sha}",
                super::engine::index::object_name(&p.name)
            ))
        })
        .collect();
    if !indexes.is_empty() {
        extra.insert("indexes_sha256".to_owned(), indexes.join(","));
    }
    if let [only] = parts {
        extra.insert("data_sha256".to_owned(), only.sha256.clone());
        extra.insert("data_object".to_owned(), only.name.clone());
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_takes_a_full_when_the_chain_s_full_is_too_old() {
        let b = |id: &str, begin: &str, parent: Option<&str>| BackupInfo {
            backup_id: id.into(),
            begin_time: begin.into(),
            extra: parent
                .map(|p| [(PARENT_KEY.to_owned(), p.to_owned())].into())
                .unwrap_or_default(),
            ..Default::default()
        };
        let listed = vec![
            b("F", "2026-12-01 03:00:00.000000+00:00", None),
            b("I1", "2026-12-03 03:00:00.000000+00:00", Some("F")),
            b("I2", "2026-12-05 03:00:00.000000+00:00", Some("I1")),
        ];
        let now = crate::civil::parse_barman_time("2026-12-06 03:00:00.000000+00:00").unwrap();
        let day = Duration::from_secs(86_400);
        let cases = [
            (&listed[2], 7 * day, None),
            (&listed[2], 5 * day, Some("F, began 120 hours ago")),
            (&listed[1], 6 * day, None),
            (&listed[0], day, Some("F, began 120 hours ago")),
        ];
        for (last, every, want) in cases {
            let got = full_due(&listed, last, now, every);
            match want {
                None => assert_eq!(got, None, "{} {every:?}", last.backup_id),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{got:?}"),
            }
        }
    }

    #[test]
    fn a_parent_backup_must_be_in_this_timeline_history() {
        let history = "1\t0/5000000\tno recovery target specified\n2\t0/9000000\tafter failover\n";
        let cases = [
            (3, 3, 0xffff_ffff, "", true),
            (3, 1, 0x4ff_ffff, history, true),
            (3, 1, 0x500_0000, history, true),
            (3, 1, 0x500_0001, history, false),
            (3, 2, 0x800_0000, history, true),
            (3, 2, 0x900_0100, history, false),
            (3, 1, 0x100, "", false),
        ];
        for (tli, parent_tli, end, hist, want) in cases {
            assert_eq!(
                in_history(hist, tli, parent_tli, Lsn(end)),
                want,
                "{parent_tli} ending at {end:#x}"
            );
        }
    }

    #[test]
    fn records_each_parts_checksum_and_their_count() {
        let part = |name: &str, sha: &str| super::super::engine::Part {
            name: name.into(),
            size: 1,
            sha256: sha.into(),
            index_sha256: None,
        };
        let e = extra(&[part("data.tar.gz", "aa"), part("data_0001.tar.gz", "bb")]);
        assert_eq!(e["data_parts"], "2");
        assert_eq!(e["parts_sha256"], "data.tar.gz:aa,data_0001.tar.gz:bb");
        assert!(!e.contains_key("indexes_sha256"));
        let mut indexed = part("data.tar.gz", "aa");
        indexed.index_sha256 = Some("ii".into());
        let e = extra(&[indexed, part("data_0001.tar.gz", "bb")]);
        assert_eq!(e["indexes_sha256"], "index-data.tar.gz:ii");
        assert!(!e.contains_key("data_sha256"));
        assert!(!e.contains_key("tablespace_parts"));
        let e = extra(&[
            part("data.tar.gz", "aa"),
            part("16384.tar.gz", "bb"),
            part("16384_0001.tar.gz", "cc"),
            part("16390.tar.gz", "dd"),
        ]);
        assert_eq!(e["data_parts"], "1");
        assert_eq!(e["tablespace_parts"], "16384:2,16390:1");
        assert_eq!(
            e["parts_sha256"],
            "data.tar.gz:aa,16384.tar.gz:bb,16384_0001.tar.gz:cc,16390.tar.gz:dd"
        );
        let e = extra(&[part("data.tar", "cc")]);
        assert_eq!(e["data_sha256"], "cc");
        assert_eq!(e["data_object"], "data.tar");
    }
}
