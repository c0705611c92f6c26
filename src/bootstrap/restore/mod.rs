//! Restoring a base backup from an archive, to a point in time or to the end of the
//! archive: the bootstrap of an empty PGDATA (`PGWARDEN_RESTORE_URL`), and the scratch
//! copy of a restore drill ([`crate::drill`]), through the same [`plan`] and [`build`].
//!
//! 1. Choose the backup ([`choose`]) and check, before anything is written, that it is
//!    of this PostgreSQL major version, of the cluster whose WAL the archive holds, and
//!    that every WAL segment it needs to become consistent is archived.
//!    Its tablespaces' locations must be free ([`tablespaces`]).
//! 2. Stream its data objects into the staging directory ([`extract`]), and its
//!    tablespaces' into their locations, checking the SHA-256 pgwarden recorded and,
//!    for pgwarden's backups, every file against the backup manifest with
//!    `pg_verifybackup`. Over a copy of the cluster, a delta restore ([`delta`]) reads
//!    and writes only the windows that differ, and checks them as it goes.
//! 3. Write `recovery.signal` (recover, then promote) or `standby.signal` (a standby
//!    that follows the archive). The caller moves the staging directory into place,
//!    `PG_VERSION` last; postgres then fetches WAL through pgwarden's restore path,
//!    from the source archive, and stops at the target (see `pgconf::render`).

pub mod chain;
pub mod choose;
pub mod delta;
pub mod extract;
pub mod tablespaces;

pub use crate::settings::restore::{
    RecoveryTarget, RestoreArgs, RestoreConfig, SettingNames, Tablespaces, Then, RECOVERY_SIGNAL,
};

use crate::backup::list;
use crate::backup::parts::Holds;
use crate::backup::BackupInfo;
use crate::process::Runner;
use crate::settings::Settings;
use crate::wal::names::WalName;
use crate::wal::storage::{Backend, Retrying, Storage};
use crate::wal::ArchiveConfig;
use anyhow::{bail, Context, Result};
use extract::TarCompression;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// One of a backup's data objects.
#[derive(Debug, Clone)]
struct Object {
    key: String,
    compression: TarCompression,
    /// PGDATA's files, or a tablespace's.
    holds: Holds,
    /// Bytes stored: what the restore reads.
    size: u64,
}

/// A backup's data objects, in part order.
type Objects = Vec<Object>;

/// What a restore will do, decided and checked before anything is written.
pub struct Plan {
    storage: Backend,
    /// How long a read of the archive is retried (the source's PGWARDEN_ARCHIVE_TIMEOUT).
    timeout: std::time::Duration,
    backup: BackupInfo,
    objects: Objects,
    /// For an incremental backup, the backups it builds on, newest first, back to
    /// the full one, each with its objects.
    older: Vec<(BackupInfo, Objects)>,
    spaces: Vec<tablespaces::Placed>,
    then: Then,
    names: SettingNames,
    delta: bool,
    progress: std::sync::Arc<crate::progress::Progress>,
    /// Its extraction threads.
    workers: extract::Workers,
}

impl Plan {
    /// Lets [`build`] restore over what its directory already holds when that is a
    /// copy of the backup's cluster, keeping the files that match (see [`delta`]);
    /// anything else there is removed first and the backup restored whole.
    pub fn allow_delta(&mut self) {
        self.delta = true;
    }

    /// How far [`build`] is: bytes of the objects read from the archive, of all it
    /// reads (known once it starts, after a delta restore has left out what it keeps).
    pub fn progress(&self) -> std::sync::Arc<crate::progress::Progress> {
        self.progress.clone()
    }

    /// Its extraction threads: a caller that drops [`build`] midway waits for them
    /// before removing what they write.
    pub fn workers(&self) -> extract::Workers {
        self.workers.clone()
    }

    /// The backup chosen.
    pub fn backup(&self) -> &BackupInfo {
        &self.backup
    }

    /// Whether any of its data objects is compressed: then the restored files take
    /// more room than the objects' size in the archive.
    pub fn compressed(&self) -> bool {
        self.objects
            .iter()
            .any(|o| o.compression != TarCompression::None)
    }
}

/// Chooses the backup and checks everything that can be checked before PGDATA is
/// touched: the catalogue, the backup's version and cluster, its WAL, its objects,
/// where its tablespaces go. The restore bootstrap and `pgwarden restore-drill` both
/// start here; `pgdata` is where the cluster is restored to.
pub async fn plan(s: &Settings, r: &RestoreConfig, then: Then, pgdata: &Path) -> Result<Plan> {
    let names = r.names;
    let storage = r
        .source
        .open(None)
        .await
        .with_context(|| format!("{}: open the archive", names.source))?;
    let policy = Retrying::new(&storage, r.source.timeout, CancellationToken::new());
    let base = r.source.base();
    let backups = list::list(&policy, &base)
        .await
        .with_context(|| format!("{}: list the backups of {base}", names.source))?;
    let target = match then {
        Then::Promote => &r.target,
        Then::FollowArchive | Then::FollowPrimary => &RecoveryTarget::End,
    };
    let b = choose::choose(&backups, r.backup_id.as_deref(), target, &names)
        .map_err(anyhow::Error::msg)?;
    info!(backup_id = %b.backup_id, made_by = %b.made_by, end_time = %b.end_time, end_lsn = %b.end_xlog, target = ?target, "restoring a base backup");
    check_version(b, s.major_version, &names)?;
    check_cluster(&policy, &r.source, b, &names).await?;
    check_wal(&policy, &base, b, &names).await?;
    let chain = list::chain(&backups, b, names.backup_id).map_err(anyhow::Error::msg)?;
    let objects = data_objects(&policy, &base, b).await?;
    let mut older = Vec::new();
    for p in chain.iter().skip(1) {
        older.push(((*p).clone(), data_objects(&policy, &base, p).await?));
    }
    if !older.is_empty() {
        let ids: Vec<&str> = chain.iter().map(|c| c.backup_id.as_str()).collect();
        info!(chain = ?ids, "an incremental backup: restoring its chain, newest first");
    }
    let spaces = tablespaces::place(&b.tablespaces, &r.tablespaces, pgdata, &names)
        .map_err(anyhow::Error::msg)?;
    // The live PGDATA too: a drill restores elsewhere, and must not write into it.
    for p in &spaces {
        if p.location.starts_with(&s.pgdata) {
            bail!(
                "{}: tablespace {:?} would be restored into {}, inside the instance's PGDATA; map it elsewhere",
                names.tablespaces,
                p.name,
                p.location.display()
            );
        }
    }
    let placed = spaces.clone();
    let check_names = names;
    tokio::task::spawn_blocking(move || tablespaces::check_free(&placed, &check_names))
        .await
        .context("the checking thread")??;
    let backup = b.clone();
    Ok(Plan {
        storage,
        timeout: r.source.timeout,
        backup,
        objects,
        older,
        spaces,
        then,
        names,
        delta: false,
        progress: Default::default(),
        workers: Default::default(),
    })
}

/// Plans a replica's copy from the cluster's own archive (`PGWARDEN_CLONE_FROM=archive`):
/// its latest backup, checked as a restore's, and of the very cluster the primary runs
/// (its system identifier): a backup of the cluster before an upgrade, or of another
/// cluster archived under the same name, cannot follow this primary. `Err` says why
/// the archive cannot seed this replica.
pub async fn plan_seed(s: &Settings, runner: &Runner) -> Result<Plan> {
    let Some(archive) = &s.archive else {
        bail!("PGWARDEN_ARCHIVE_URL is not set");
    };
    let r = RestoreConfig {
        source: archive.clone(),
        backup_id: None,
        target: RecoveryTarget::End,
        // At their original locations, as pg_basebackup puts them.
        tablespaces: Default::default(),
        names: SettingNames::CLONE,
    };
    let plan = plan(s, &r, Then::FollowPrimary, &s.pgdata).await?;
    let primary = crate::replica::remote::identify(s, runner)
        .await
        .context("ask the primary for its system identifier")?;
    if primary.system_id != plan.backup.systemid {
        bail!(
            "backup {} is of the cluster with system identifier {}, but the primary's is {}",
            plan.backup.backup_id,
            plan.backup.systemid,
            primary.system_id
        );
    }
    Ok(plan)
}

/// Builds the cluster in `staging` from the planned backup, and its tablespaces where
/// the plan puts them. When it fails, what it wrote into the tablespaces' locations is
/// removed again (the caller discards `staging`).
pub async fn build(s: &Settings, plan: Plan, runner: &Runner, staging: &Path) -> Result<()> {
    let mut made = tablespaces::Made::default();
    let r = build_in(s, plan, runner, staging, &mut made).await;
    if r.is_err() {
        tokio::task::spawn_blocking(move || made.undo())
            .await
            .context("the clean-up thread")?;
    }
    r
}

async fn build_in(
    s: &Settings,
    plan: Plan,
    runner: &Runner,
    staging: &Path,
    made: &mut tablespaces::Made,
) -> Result<()> {
    let Plan {
        storage,
        timeout,
        backup: b,
        objects,
        older,
        spaces,
        then,
        names,
        delta,
        progress,
        workers,
    } = plan;
    std::fs::create_dir_all(staging).with_context(|| format!("create {}", staging.display()))?;
    // A delta restore (see delta.rs): what the directory keeps, what to read.
    let chained = !older.is_empty();
    let delta = if delta && chained {
        // Blocks of a chain are written where they belong, over whatever is there:
        // only a directory emptied first gives a faithful reconstruction.
        tracing::warn!(dir = %staging.display(), "a delta restore of an incremental backup's chain is not supported; restoring it whole");
        empty(staging).await?;
        None
    } else if delta {
        delta_over(&storage, timeout, &b, staging, s, &objects).await?
    } else {
        None
    };
    let owner = s.run_as.as_ref().map(|u| u.owner());
    tablespaces::create(&spaces, owner, made)?;
    // Linked before they are filled: an interrupted bootstrap finds them (see
    // tablespaces::empty_interrupted).
    tablespaces::link(staging, &spaces)?;
    let started = std::time::Instant::now();
    let _log =
        crate::progress::log_every("restore progress", b.backup_id.clone(), progress.clone());
    let checked = if let Some((d, parts)) = delta {
        let (read, written) = fetch_delta(
            &storage,
            d,
            parts,
            staging,
            s.backups.jobs,
            &progress,
            &workers,
        )
        .await?;
        info!(backup_id = %b.backup_id, bytes = read, written, seconds = started.elapsed().as_secs_f64(), "backup extracted");
        // Every window of every file was kept for its XXH3-128 (the backup's bytes)
        // or fetched and checked by its XXH3-128 and CRC-32C, and the windows' CRC-32Cs
        // put together are the manifest's (delta::locate): each file's CRC-32C is the
        // manifest's, as pg_verifybackup would check it again by reading the whole
        // cluster once more. Nothing but the manifest's files is left (delta::prepare).
        info!(
            checked = "every window of every file, by its XXH3-128 and CRC-32C",
            "every restored file matches the backup manifest"
        );
        true
    } else {
        let members: Vec<(BackupInfo, Objects)> =
            std::iter::once((b.clone(), objects)).chain(older).collect();
        let stored = extract_whole(
            &storage,
            members,
            staging,
            &spaces,
            names.backup_id,
            s.backups.jobs,
            &progress,
            &workers,
        )
        .await?;
        info!(backup_id = %b.backup_id, bytes = stored, seconds = started.elapsed().as_secs_f64(), "backup extracted");
        false
    };
    // Before the manifest check: pg_verifybackup follows the links to the
    // tablespaces' files.
    tablespaces::settle(staging, &spaces)?;
    // Before prepare(), which removes files the manifest lists.
    if !checked {
        verify_manifest(s, runner, staging).await?;
    }
    let signal = match then {
        Then::Promote => RECOVERY_SIGNAL,
        // A seeded replica gets what a pg_basebackup clone gets: standby.signal, and
        // primary_conninfo from the usual rendering.
        Then::FollowArchive | Then::FollowPrimary => crate::replica::STANDBY_SIGNAL,
    };
    let (dir, major) = (staging.to_path_buf(), s.major_version);
    let locations: Vec<std::path::PathBuf> = spaces.iter().map(|p| p.location.clone()).collect();
    // A walk of the whole tree and a sync of its file system: not on the async workers.
    tokio::task::spawn_blocking(move || finish(&dir, &locations, major, signal, owner))
        .await
        .context("the restore's last step failed")?
}

/// Restores whole the backups `members` (the backup, then for an incremental the
/// backups of its chain, newest first) into `staging` and the tablespaces' locations;
/// returns the bytes read. The parts of a backup hold disjoint files (a file never
/// spans parts): they are fetched, decompressed and written concurrently, `jobs` at a
/// time. The backups of a chain follow one another (see [`chain`]).
#[allow(clippy::too_many_arguments)]
async fn extract_whole(
    storage: &Backend,
    members: Vec<(BackupInfo, Objects)>,
    staging: &Path,
    spaces: &[tablespaces::Placed],
    backup_id_setting: &'static str,
    jobs: usize,
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &extract::Workers,
) -> Result<u64> {
    let mut stored = 0u64;
    let newest = members
        .first()
        .map(|(b, _)| b.backup_id.clone())
        .unwrap_or_default();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let files = std::sync::Arc::new(chain::Files::default());
    let chained = members.len() > 1;
    progress.set_total(members.iter().flat_map(|(_, o)| o).map(|o| o.size).sum());
    for (i, (member, objects)) in members.into_iter().enumerate() {
        let recorded = std::sync::Arc::new(recorded_sha256(&member));
        let incremental = list::is_incremental(&member);
        let mut tasks = tokio::task::JoinSet::new();
        for Object {
            key,
            compression,
            holds,
            ..
        } in objects
        {
            let (storage, recorded, limit, files, progress, workers) = (
                storage.clone(),
                recorded.clone(),
                limit.clone(),
                files.clone(),
                progress.clone(),
                workers.clone(),
            );
            let dest = match holds {
                Holds::Data => staging.to_path_buf(),
                Holds::Tablespace(oid) => spaces
                    .iter()
                    .find(|p| p.oid == oid)
                    .map(|p| p.location.clone())
                    .with_context(|| {
                        format!("{key}: tablespace {oid} is not in the backup's backup.info")
                    })?,
            };
            tasks.spawn(async move {
                let _slot = limit.acquire_owned().await?;
                let (sha, size) = if chained {
                    extract::extract_with(&storage, &key, compression, &progress, &workers, move |tar| {
                        chain::apply(tar, &dest, i == 0, incremental, &files)
                    })
                    .await?
                } else {
                    extract::extract(&storage, &key, compression, &progress, &workers, &dest).await?
                };
                let name = key.rsplit('/').next().unwrap_or(&key);
                if recorded.get(name).is_some_and(|want| *want != sha) {
                    bail!("{key} does not match the SHA-256 recorded in its backup.info: the backup is damaged; restore another one with {backup_id_setting}");
                }
                anyhow::Ok(size)
            });
        }
        while let Some(done) = tasks.join_next().await {
            // The first failure stops the others (dropping the set aborts them); the
            // staging directory is discarded by the caller.
            stored += done.context("an extraction task")??;
        }
    }
    if chained {
        files.check_complete().map_err(|e| {
            anyhow::anyhow!("backup {newest}: {e}; restore another backup with {backup_id_setting}")
        })?;
    }
    Ok(stored)
}

/// Prepares a delta restore over `dir` when it holds anything: with the backup's
/// manifest and its data parts' indexes, a checked copy of its cluster is compared
/// with the backup (see [`delta`]); returns what to read. A directory that is no copy
/// of the backup's cluster, or that postgres runs on, is refused untouched, first.
/// Without a manifest or indexes (a backup taken by barman-cloud, or by a pgwarden
/// that did not store them), with tablespaces, or over a directory that holds what a
/// delta does not handle, `dir` is emptied and the backup restored whole (`None`),
/// said in the log. A read of the archive that fails (retried for `timeout`) fails
/// the restore: it is no reason to throw the copy away.
async fn delta_over(
    storage: &Backend,
    timeout: std::time::Duration,
    b: &BackupInfo,
    dir: &Path,
    s: &Settings,
    objects: &Objects,
) -> Result<Option<(delta::Delta, Vec<delta::Part>)>> {
    let holds_something = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .next()
        .is_some();
    if !holds_something {
        return Ok(None);
    }
    let whole = |why: String| async move {
        tracing::warn!(dir = %dir.display(), reason = %why, "a delta restore is not possible; restoring the whole backup");
        empty(dir).await.map(|()| None)
    };
    let Ok(system_id) = b.systemid.parse::<u64>() else {
        return whole(format!("backup {} has no system identifier", b.backup_id)).await;
    };
    let (checked, major) = (dir.to_path_buf(), s.major_version);
    let copy = tokio::task::spawn_blocking(move || delta::check_copy(&checked, system_id, major))
        .await
        .context("the checking thread")?;
    match copy {
        Ok(()) => {}
        // Never over another cluster, nor under a running postgres: refused with
        // the directory as it was.
        Err(refused @ (delta::Refused::Running(..) | delta::Refused::NotACopy(..))) => {
            return Err(refused.into())
        }
        Err(refused @ delta::Refused::Unsupported(..)) => return whole(refused.to_string()).await,
    }
    if !b.tablespaces.is_empty() {
        return whole("the backup has tablespaces".to_owned()).await;
    }
    let Some(first) = objects.first() else {
        return whole("the backup has no data part".to_owned()).await;
    };
    // The manifest and the parts' indexes; parsed and checked against each other and
    // against backup.info on a blocking thread (a large backup's are megabytes).
    let policy = Retrying::new(storage, timeout, CancellationToken::new());
    let prefix = first.key.rsplit_once('/').map_or("", |(p, _)| p);
    let mut texts = Vec::new();
    let names = std::iter::once(crate::backup::engine::manifest::OBJECT.to_owned()).chain(
        objects.iter().map(|o| {
            crate::backup::engine::index::object_name(o.key.rsplit('/').next().unwrap_or(&o.key))
        }),
    );
    for name in names {
        let key = format!("{prefix}/{name}");
        match policy.get(&key).await.with_context(|| format!("read {key}"))? {
            Some((body, _)) => texts.push((key, String::from_utf8_lossy(&body).into_owned())),
            None => {
                return whole(format!("backup {} has no {key} (taken by barman-cloud, or by a pgwarden that did not store one)", b.backup_id)).await
            }
        }
    }
    let parts: Vec<(String, bool, u64)> = objects
        .iter()
        .map(|o| (o.key.clone(), o.compression == TarCompression::Gzip, o.size))
        .collect();
    let recorded = recorded_list(b, "indexes_sha256");
    let inputs = tokio::task::spawn_blocking(move || delta_inputs(texts, parts, &recorded))
        .await
        .context("the parsing thread")?;
    let (manifest, parts, located) = match inputs {
        Ok(m) => m,
        Err(why) => return whole(why).await,
    };
    let started = std::time::Instant::now();
    let (at, jobs) = (dir.to_path_buf(), s.backups.jobs);
    let (d, parts) = tokio::task::spawn_blocking(move || -> Result<_> {
        let d = delta::prepare(&at, &manifest.1.files, &parts, &located, jobs)?;
        // The manifest is no file of its own list: written here, as the parts would
        // (with their mode).
        crate::fsutil::write_atomic(
            &at.join("backup_manifest"),
            manifest.0.as_bytes(),
            None,
            0o600,
        )
        .context("write backup_manifest")?;
        Ok((d, parts))
    })
    .await
    .context("the delta thread")??;
    info!(
        backup_id = %b.backup_id,
        kept_files = d.kept_files,
        kept_bytes = d.kept_bytes,
        fetched_files = d.fetch_files,
        fetched_bytes = d.fetch_bytes,
        removed_files = d.removed,
        read_bytes = d.fetches.iter().map(|f| f.stored(&parts)).sum::<u64>(),
        stored_bytes = parts.iter().map(|p| p.size).sum::<u64>(),
        reads = d.fetches.len(),
        seconds = started.elapsed().as_secs_f64(),
        "delta restore: keeping the files that match the backup's manifest, fetching the rest"
    );
    Ok(Some((d, parts)))
}

/// What a delta restore needs, from the texts read (the manifest's, then each part's
/// index, with their keys): the manifest (its text and its content), the data parts
/// with their indexes, and where each file of the manifest is. Each index must have
/// the SHA-256 `recorded` in backup.info for it. `Err` says why a delta is not
/// possible.
#[allow(clippy::type_complexity)]
fn delta_inputs(
    texts: Vec<(String, String)>,
    parts: Vec<(String, bool, u64)>,
    recorded: &std::collections::BTreeMap<String, String>,
) -> Result<
    (
        (String, crate::backup::engine::manifest::Parsed),
        Vec<delta::Part>,
        delta::Located,
    ),
    String,
> {
    let mut texts = texts.into_iter();
    let Some((key, text)) = texts.next() else {
        return Err("no manifest".to_owned());
    };
    let manifest =
        crate::backup::engine::manifest::parse(&text).map_err(|e| format!("{key}: {e}"))?;
    if texts.len() != parts.len() {
        return Err(format!("{} indexes for {} parts", texts.len(), parts.len()));
    }
    let mut out = Vec::new();
    for ((key, gzip, size), (index_key, index)) in parts.into_iter().zip(texts) {
        let name = index_key.rsplit('/').next().unwrap_or(&index_key);
        let sha = crate::wal::sha256_hex(index.as_bytes());
        match recorded.get(name) {
            Some(want) if *want == sha => {}
            Some(_) => {
                return Err(format!(
                    "{index_key} does not match the SHA-256 recorded in backup.info: it is damaged"
                ))
            }
            None => return Err(format!("backup.info records no SHA-256 for {index_key}")),
        }
        let index =
            crate::backup::engine::index::parse(&index).map_err(|e| format!("{index_key}: {e}"))?;
        out.push(delta::Part {
            key,
            gzip,
            size,
            index,
        });
    }
    let located = delta::locate(&manifest.files, &out)?;
    Ok(((text, manifest), out, located))
}

/// Reads what a delta restore fetches, `jobs` ranged reads at a time, and writes it
/// into `dir`; returns the bytes read and written.
async fn fetch_delta(
    storage: &Backend,
    d: delta::Delta,
    parts: Vec<delta::Part>,
    dir: &Path,
    jobs: usize,
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &extract::Workers,
) -> Result<(u64, u64)> {
    let read: u64 = d.fetches.iter().map(|f| f.stored(&parts)).sum();
    progress.set_total(read);
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for f in d.fetches {
        let part = &parts[f.part];
        let (storage, limit, progress, key, gzip, dir, workers) = (
            storage.clone(),
            limit.clone(),
            progress.clone(),
            part.key.clone(),
            part.gzip,
            dir.to_path_buf(),
            workers.clone(),
        );
        tasks.spawn(async move {
            let _slot = limit.acquire_owned().await?;
            let (start, needs) = (f.start.tar, f.needs);
            extract::read_range(
                &storage,
                &key,
                (f.start.stored, f.until),
                &progress,
                &workers,
                move |r| {
                    if gzip {
                        delta::apply(
                            &mut flate2::read::DeflateDecoder::new(r),
                            &dir,
                            start,
                            &needs,
                        )
                    } else {
                        delta::apply(r, &dir, start, &needs)
                    }
                },
            )
            .await
        });
    }
    let mut written = 0;
    while let Some(done) = tasks.join_next().await {
        // The first failure stops the others (dropping the set aborts them).
        written += done.context("a delta read")??;
    }
    let (dir, touched) = (dir.to_path_buf(), d.touched);
    tokio::task::spawn_blocking(move || delta::restore_times(&dir, &touched))
        .await
        .context("the delta thread")??;
    Ok((read, written))
}

/// Removes everything in `dir`, for a whole restore into it.
async fn empty(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            crate::fsutil::remove_entry(&path)
                .with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    })
    .await
    .context("the clean-up thread")?
}

/// The SHA-256 pgwarden recorded for each data object of `b`, by name (none for
/// barman-cloud's backups).
fn recorded_sha256(b: &BackupInfo) -> std::collections::BTreeMap<String, String> {
    let mut out = recorded_list(b, "parts_sha256");
    if let Some(sha) = b.extra.get("data_sha256") {
        let name = b
            .extra
            .get("data_object")
            .cloned()
            .unwrap_or_else(|| "data.tar.gz".to_owned());
        out.entry(name).or_insert_with(|| sha.clone());
    }
    out
}

/// A `name:sha256,...` list pgwarden recorded in `backup.info` under `key`, by name.
fn recorded_list(b: &BackupInfo, key: &str) -> std::collections::BTreeMap<String, String> {
    b.extra
        .get(key)
        .map(|list| {
            list.split(',')
                .filter_map(|p| p.split_once(':'))
                .map(|(n, s)| (n.to_owned(), s.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Tidies the extracted backup, writes `signal`, gives the files (and the
/// tablespaces' in `locations`) to `owner` and makes them durable before the commit
/// mark (PG_VERSION) goes into place: the tar's files were written without fsync.
fn finish(
    dir: &Path,
    locations: &[std::path::PathBuf],
    major: u32,
    signal: &str,
    owner: Option<crate::fsutil::Owner>,
) -> Result<()> {
    extract::prepare(dir, major)?;
    std::fs::write(dir.join(signal), b"").with_context(|| format!("write {signal}"))?;
    if let Some(owner) = owner {
        for d in std::iter::once(dir).chain(locations.iter().map(|l| l.as_path())) {
            crate::fsutil::chown_tree(d, owner).with_context(|| {
                format!(
                    "give the restored files in {} to the run-as user",
                    d.display()
                )
            })?;
        }
    }
    // A tablespace may be on a file system of its own.
    for d in locations
        .iter()
        .map(|l| l.as_path())
        .chain(std::iter::once(dir))
    {
        let handle = std::fs::File::open(d).with_context(|| format!("open {}", d.display()))?;
        nix::unistd::syncfs(&handle)
            .with_context(|| format!("sync the restored files in {}", d.display()))?;
    }
    Ok(())
}

fn check_version(b: &BackupInfo, major: u32, names: &SettingNames) -> Result<()> {
    let theirs = b.version / 10_000;
    if theirs != major {
        bail!(
            "{}: backup {} is of PostgreSQL {theirs} (version {}), but the binaries are PostgreSQL {major}; \
             restore it with PostgreSQL {theirs} binaries (PGWARDEN_PG_BINDIR), then upgrade",
            names.backup_id,
            b.backup_id,
            b.version
        );
    }
    Ok(())
}

/// The archive's WAL must be this backup's cluster's: a backup copied in from another
/// cluster would replay WAL that is not its own.
async fn check_cluster<S: Storage>(
    storage: &S,
    source: &ArchiveConfig,
    b: &BackupInfo,
    names: &SettingNames,
) -> Result<()> {
    let key = format!("{}/{}", source.base(), crate::wal::identity::SYSTEM_MARKER);
    if let Some((body, _)) = storage
        .get(&key)
        .await
        .with_context(|| format!("{}: read the archive's system identifier", names.source))?
    {
        let archive = String::from_utf8_lossy(&body).trim().to_owned();
        if archive != b.systemid {
            bail!(
                "{}: backup {} is of another cluster (system identifier {}) than the WAL archived under {} ({archive}); \
                 check {}",
                names.backup_id,
                b.backup_id,
                b.systemid,
                source.base(),
                names.server
            );
        }
    }
    Ok(())
}

/// Every segment from the backup's start to its end must be archived, or recovery
/// cannot reach a consistent state.
async fn check_wal<S: Storage>(
    storage: &S,
    base: &str,
    b: &BackupInfo,
    names: &SettingNames,
) -> Result<()> {
    let (Some(first), Some(last)) = (WalName::parse(&b.begin_wal), WalName::parse(&b.end_wal))
    else {
        bail!(
            "backup {}: begin_wal {:?} or end_wal {:?} is not a WAL file name",
            b.backup_id,
            b.begin_wal,
            b.end_wal
        );
    };
    let mut wal = first;
    for _ in 0..=1_000_000u32 {
        let presence = crate::wal::present::lookup(storage, base, &wal)
            .await
            .with_context(|| format!("{}: list the archived WAL", names.source))?;
        if let crate::wal::present::Presence::Unreadable { why, .. } = presence {
            bail!(
                "{}: backup {} needs WAL segment {}: {why}",
                names.source,
                b.backup_id,
                wal.name
            );
        }
        if presence == crate::wal::present::Presence::Missing {
            bail!(
                "{}: WAL segment {} is missing from the archive, and backup {} needs it to become consistent; \
                 restore another backup ({}) or put the segment back",
                names.source,
                wal.name,
                b.backup_id,
                names.backup_id
            );
        }
        if wal.name == last.name {
            return Ok(());
        }
        wal = wal
            .next_segment(1, b.xlog_segment_size)
            .with_context(|| format!("backup {}: no segment after {}", b.backup_id, wal.name))?;
    }
    bail!(
        "backup {}: {} does not follow {}",
        b.backup_id,
        b.end_wal,
        b.begin_wal
    )
}

/// The backup's data objects in part order, `data.tar[.gz]` first (barman splits
/// large ones into `data_0001.tar.gz`, ...), then each tablespace's (`<oid>.tar[.gz]`,
/// ...), refused when a part is missing or a tablespace's objects are not those of a
/// tablespace its `backup.info` lists.
async fn data_objects<S: Storage>(storage: &S, base: &str, b: &BackupInfo) -> Result<Objects> {
    let prefix = format!("{}{}/", crate::backup::base_prefix(base), b.backup_id);
    let mut found: std::collections::BTreeMap<Holds, Vec<(String, TarCompression, u64)>> =
        Default::default();
    for o in storage
        .list(&prefix, 10_000)
        .await
        .context("list the backup's objects")?
    {
        let name = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        let Some((holds, _, _)) = crate::backup::parts::part_of(name) else {
            continue;
        };
        if let Holds::Tablespace(oid) = holds {
            if !b.tablespaces.iter().any(|t| t.oid == oid) {
                bail!(
                    "backup {} holds {name}, the data of tablespace {oid}, but its backup.info lists no such tablespace; \
                     restore another one with PGWARDEN_RESTORE_BACKUP_ID",
                    b.backup_id
                );
            }
        }
        let c =
            TarCompression::of(name).map_err(|e| anyhow::anyhow!("backup {}: {e}", b.backup_id))?;
        found
            .entry(holds)
            .or_default()
            .push((name.to_owned(), c, o.size));
    }
    if !found.contains_key(&Holds::Data) {
        bail!("backup {} has no data object under {prefix}", b.backup_id);
    }
    let counts = tablespace_parts(b);
    let mut out = Vec::new();
    let wanted =
        std::iter::once(Holds::Data).chain(b.tablespaces.iter().map(|t| Holds::Tablespace(t.oid)));
    for holds in wanted {
        let objects = found.get(&holds).map(Vec::as_slice).unwrap_or_default();
        let names: Vec<String> = objects.iter().map(|(n, _, _)| n.clone()).collect();
        let expected = match holds {
            Holds::Data => b.extra.get("data_parts").and_then(|n| n.parse().ok()),
            Holds::Tablespace(oid) => counts.get(&oid).copied(),
        };
        let ordered = if names.is_empty() {
            Err(format!("the data of tablespace {} ({}.tar*) is missing", holds.stem(), holds.stem()))
        } else {
            crate::backup::parts::in_order(holds, &names, expected)
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "backup {} cannot be restored whole: {e}; restore another one with PGWARDEN_RESTORE_BACKUP_ID",
                b.backup_id
            )
        })?;
        for n in ordered {
            if let Some((_, c, size)) = objects.iter().find(|(m, _, _)| *m == n) {
                out.push(Object {
                    key: format!("{prefix}{n}"),
                    compression: *c,
                    holds,
                    size: *size,
                });
            }
        }
    }
    Ok(out)
}

/// The part count pgwarden recorded for each tablespace (`# tablespace_parts:
/// oid:count,...`; none in barman-cloud's backups).
fn tablespace_parts(b: &BackupInfo) -> std::collections::BTreeMap<u32, u32> {
    b.extra
        .get("tablespace_parts")
        .map(|list| {
            list.split(',')
                .filter_map(|p| p.split_once(':'))
                .filter_map(|(oid, n)| Some((oid.parse().ok()?, n.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// pgwarden's backups carry pg_basebackup's manifest: check every restored file
/// against it (barman's backups have none).
async fn verify_manifest(s: &Settings, runner: &Runner, dir: &Path) -> Result<()> {
    if !dir.join("backup_manifest").is_file() {
        return Ok(());
    }
    let mut cmd = Command::new(s.bin("pg_verifybackup"));
    cmd.args(["--no-parse-wal", "--exit-on-error", "--quiet"])
        .arg(dir)
        .env("LC_MESSAGES", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = runner
        .output(&mut cmd, None)
        .await
        .context("run pg_verifybackup")?;
    if !out.status.success() {
        bail!(
            "the restored files do not match the backup's manifest: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    info!("every restored file matches the backup manifest");
    Ok(())
}

/// A clear account of postgres's `fatal` message when it means that recovery from the
/// backup cannot succeed as configured; `None` for anything else.
pub fn explain_failure(fatal: &str, target: &RecoveryTarget) -> Option<String> {
    let setting = target.setting();
    if fatal.contains("recovery ended before configured recovery target was reached") {
        return Some(format!(
            "{setting}: the archive ends before the recovery target: recovery replayed every archived segment without reaching it. \
             Nothing was promoted and PGDATA stays in recovery: set an earlier target (and empty PGDATA), or restart once the WAL up to the target is archived"
        ));
    }
    if fatal.contains("before consistent recovery point") && fatal.contains("stop point") {
        return Some(format!(
            "{setting}: the target is before the end of the backup, where the restored cluster first becomes consistent; \
             restore an older backup (PGWARDEN_RESTORE_BACKUP_ID) after emptying PGDATA"
        ));
    }
    if fatal.contains("WAL ends before") {
        return Some(format!(
            "PGWARDEN_RESTORE_URL: WAL the backup needs is missing from the archive ({fatal}); \
             nothing was promoted: restore another backup, or put the missing segments back and restart"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_unrecorded_index_is_no_delta() {
        use crate::backup::engine::{index, manifest};
        let body = b"18\n";
        let manifest = manifest::render(
            &[manifest::File {
                path: "PG_VERSION".into(),
                size: 3,
                mtime: 0,
                crc32c: crc32c::crc32c(body),
            }],
            &manifest::Range {
                system_id: 7,
                major: 18,
                timeline: 1,
                start: crate::backup::Lsn(0x100),
                end: crate::backup::Lsn(0x200),
            },
        );
        let index = index::render(&index::PartIndex {
            seeks: vec![index::Seek { stored: 10, tar: 0 }],
            dirs: vec![],
            files: vec![index::File {
                path: "PG_VERSION".into(),
                mode: 0o600,
                mtime: 0,
                size: 3,
                windows: vec![index::Window {
                    tar: 512,
                    crc32c: crc32c::crc32c(body),
                    xxh3: xxhash_rust::xxh3::xxh3_128(body),
                }],
            }],
        });
        let texts = || {
            vec![
                ("b/backup_manifest".to_owned(), manifest.clone()),
                ("b/index-data.tar.gz".to_owned(), index.clone()),
            ]
        };
        let parts = || vec![("b/data.tar.gz".to_owned(), true, 100)];
        let recorded = |sha: &str| {
            std::collections::BTreeMap::from([("index-data.tar.gz".to_owned(), sha.to_owned())])
        };
        let sha = crate::wal::sha256_hex(index.as_bytes());
        let (_, got, located) = delta_inputs(texts(), parts(), &recorded(&sha)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(located["PG_VERSION"], (0, 0));
        let e = delta_inputs(texts(), parts(), &recorded(&"0".repeat(64))).unwrap_err();
        assert!(
            e.contains("does not match the SHA-256 recorded in backup.info"),
            "{e}"
        );
        let e = delta_inputs(texts(), parts(), &Default::default()).unwrap_err();
        assert!(
            e.contains("backup.info records no SHA-256 for b/index-data.tar.gz"),
            "{e}"
        );
        let e = delta_inputs(texts(), vec![], &recorded(&sha)).unwrap_err();
        assert!(e.contains("1 indexes for 0 parts"), "{e}");
    }

    #[test]
    fn postgres_recovery_failures_are_explained() {
        let t = RecoveryTarget::Time(0);
        let cases = [
            (
                "recovery ended before configured recovery target was reached",
                Some("PGWARDEN_RECOVERY_TARGET_TIME: the archive ends before"),
            ),
            (
                "requested recovery stop point is before consistent recovery point",
                Some("PGWARDEN_RECOVERY_TARGET_TIME: the target is before the end of the backup"),
            ),
            (
                "WAL ends before end of online backup",
                Some("PGWARDEN_RESTORE_URL: WAL the backup needs is missing"),
            ),
            (
                "WAL ends before consistent recovery point",
                Some("PGWARDEN_RESTORE_URL: WAL the backup needs is missing"),
            ),
            ("the database system is shutting down", None),
        ];
        for (fatal, want) in cases {
            let got = explain_failure(fatal, &t);
            match want {
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(w)),
                    "{fatal}: {got:?}"
                ),
                None => assert_eq!(got, None, "{fatal}"),
            }
        }
    }
}
