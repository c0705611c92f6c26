//! The backup engine: a base backup taken by pgwarden itself, in parallel.
//!
//! pgwarden runs beside postgres and reads PGDATA directly: one connection holds a
//! non-exclusive backup open (`pg_backup_start` ... `pg_backup_stop`, as pgBackRest
//! and barman do, on a primary or a standby) while `jobs` workers copy the files.
//! Each worker writes its own tar part (`data.tar.gz`, `data_0001.tar.gz`, ..., as
//! barman-cloud names them, so `barman-cloud-restore` restores them), compressed and
//! uploaded as it goes; a part is closed past [`MAX_PART`] so that no object nears
//! S3's 10,000-part ceiling. Workers take the largest files first from one queue.
//! Page checksums are verified while reading; every file's size and CRC-32C go into
//! PostgreSQL's `backup_manifest`. The last part holds the directories,
//! `global/pg_control` (read after every other file, as pg_basebackup sends it last),
//! `backup_label` from `pg_backup_stop`, and the manifest.
//!
//! Tablespaces go into parts of their own, `<oid>.tar.gz`, `<oid>_0001.tar.gz`, ...,
//! holding their `PG_<major>_<catversion>` directory (barman-cloud's layout; the
//! manifest names their files `pg_tblspc/<oid>/PG_...`, as pg_basebackup's does).
//! Neither the `pg_tblspc/<oid>` symlinks nor the `tablespace_map` that
//! `pg_backup_stop` returns go into `data.tar`: barman-cloud stores neither, its
//! restore creates the symlinks where `--tablespace` puts each tablespace, and
//! PostgreSQL, finding a `tablespace_map` at recovery, would point the symlinks back
//! at the original locations (the live cluster's, for a copy restored beside it).
//! The tablespaces are recorded in `backup.info` instead, as barman records them.
//!
//! Each part of a full backup has an index beside it ([`index`]): where each 1 MiB
//! window of each file can be read from, and its hashes, for a delta restore; the
//! index's SHA-256 goes into `backup.info` beside the part's.
//!
//! Memory: per job, one part filling (5 MiB), one queued and two uploading, plus a
//! 1 MiB read buffer and gzip's state: about 25 MiB a job, whatever the size.

pub mod incremental;
pub mod index;
pub mod manifest;
pub mod pages;
pub mod summaries;
pub mod walk;

use super::info::Tablespace;
use super::parts::Holds;
use super::BackupCompression;
use crate::backup::Lsn;
use crate::settings::Settings;
use crate::wal::storage::{Backend, Bytes};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Size of the parts sent to the storage (S3's minimum for all but the last).
const CHUNK: usize = 5 << 20;
/// A part object is closed once this many compressed bytes are in it (a file never
/// spans parts, so it may exceed this by one file, 1 GiB at most): with [`CHUNK`]
/// parts, an object stays under S3's 10,000 parts.
pub const MAX_PART: u64 = 40 << 30;
/// Read size: a multiple of the block size.
const READ: usize = 1 << 20;
// The window checksums an incremental reuses are of the engine's reads.
const _: () = assert!(READ as u64 == incremental::WINDOW);
/// The gzip level of the parts: zlib-rs's 2, which compresses as zlib's level 1 does
/// (what pigz -1, pgBackRest and barman-cloud's peers call level 1). zlib-rs's level 1
/// is zlib-ng's "quick" strategy: twice as fast, but 46% larger on pgbench's tables
/// (262 MB against 179 MB for 3.1 GB). A backup is mostly table pages, where higher
/// levels buy little for much more CPU; the workers are the parallelism.
const GZIP_LEVEL: u32 = 2;
/// Bad pages named in the error; more are counted.
const BAD_PAGES_NAMED: usize = 20;

/// What the engine needs.
pub struct Job<'a> {
    /// The instance.
    pub settings: &'a Settings,
    /// Where the parts go.
    pub storage: &'a Backend,
    /// `<server>/base/<id>`: the parts' directory key.
    pub dir: String,
    /// The backup's label.
    pub label: String,
    /// gzip or none.
    pub compression: BackupCompression,
    /// Workers copying files.
    pub jobs: usize,
    /// The server's major version (it decides the manifest's version and the
    /// directories under `pg_wal`).
    pub major: u32,
    /// The cluster's system identifier, for the manifest.
    pub system_id: u64,
    /// Bytes read so far and bytes to read, for `/status`.
    pub progress: Arc<Progress>,
    /// Runs the processes the engine needs.
    pub runner: &'a crate::process::Runner,
    /// For an incremental backup, the backup it builds on.
    pub parent: Option<Arc<incremental::Parent>>,
}

/// How far a backup is: bytes of PGDATA read, of those listed when it began.
pub use crate::progress::Progress;

/// A data object written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its name in the backup's directory (`data.tar.gz`, `data_0001.tar.gz`, ...,
    /// `16384.tar.gz` for a tablespace's).
    pub name: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of what is stored.
    pub sha256: String,
    /// SHA-256 of its index (see [`index`]), when it has one.
    pub index_sha256: Option<String>,
}

/// What a finished backup is.
#[derive(Debug, Clone)]
pub struct Taken {
    /// `backup_label`'s content, from `pg_backup_stop`.
    pub label: String,
    /// Where replay starts.
    pub start: Lsn,
    /// Where the backup is consistent.
    pub end: Lsn,
    /// Its timeline.
    pub timeline: u32,
    /// The data objects, in order (PGDATA's, then each tablespace's).
    pub parts: Vec<Part>,
    /// The tablespaces backed up, by oid.
    pub tablespaces: Vec<Tablespace>,
    /// Bytes read from PGDATA.
    pub bytes: u64,
    /// Of an incremental: files, and their bytes, unchanged since its parent by length
    /// and modification time, and so not read (see [`incremental::Parent::unchanged`]).
    pub unchanged: (u64, u64),
    /// Of an incremental: bytes of changed files not read, in windows the WAL
    /// summaries leave untouched.
    pub skipped: u64,
    /// Why a full backup was taken instead of the incremental asked for.
    pub full_because: Option<String>,
}

/// The name of part `n` of what `holds` in `compression`, of an incremental backup
/// or a full one.
pub fn part_name(
    holds: Holds,
    n: u32,
    compression: BackupCompression,
    incremental: bool,
) -> String {
    let ext = match compression {
        BackupCompression::Gzip => ".tar.gz",
        BackupCompression::None => ".tar",
    };
    let name = super::parts::name(holds, n, ext);
    if incremental {
        format!("{}{name}", super::parts::INCREMENTAL_PREFIX)
    } else {
        name
    }
}

/// Whether a backup that began on timeline `start` and ended on `end` can be listed:
/// barman's `backup.info` holds one timeline, and a restore of a backup across a
/// promotion of its upstream would need the history in between.
pub fn check_timeline(start: u32, end: u32) -> Result<()> {
    if start != end {
        bail!(
            "the timeline changed during the backup (it began on timeline {start} and ended on \
             timeline {end}: the upstream was promoted); the backup is not listed, take it again"
        );
    }
    Ok(())
}

/// What every worker shares.
struct Shared {
    queue: Mutex<VecDeque<walk::Entry>>,
    /// The next part number of PGDATA's objects and of each tablespace's.
    next_part: Mutex<BTreeMap<Holds, u32>>,
    files: Mutex<Vec<manifest::File>>,
    bad_pages: Mutex<(usize, Vec<String>)>,
    failed: AtomicBool,
    progress: Arc<Progress>,
    /// Files, and their bytes, an incremental did not read (unchanged since its parent).
    unchanged: Mutex<(u64, u64)>,
    /// Bytes of changed files an incremental did not read (windows the WAL summaries
    /// leave untouched).
    skipped: std::sync::atomic::AtomicU64,
    /// Each block file's window checksums (path, size, CRCs), for the next
    /// incremental.
    windows: Mutex<Vec<(String, u64, Vec<u32>)>>,
    /// Page checksums are verified (the cluster has them).
    verify_pages: bool,
    start_lsn: u64,
    /// The backup an incremental builds on.
    parent: Option<Arc<incremental::Parent>>,
    /// The blocks changed since the parent's start, from the server's WAL summaries;
    /// `None` to compare page LSNs.
    changed: Option<summaries::Changed>,
    compression: BackupCompression,
    storage: Backend,
    dir: String,
    runtime: tokio::runtime::Handle,
}

/// Takes the backup.
pub async fn take(job: &Job<'_>) -> Result<Taken> {
    let s = job.settings;
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    // The backup's session stays open until pg_backup_stop; a fast checkpoint or the
    // wait for the last segment to be archived can take long.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .context("prepare the backup's session")?;
    let row = client
        .query_one(
            "SELECT current_setting('data_checksums') = 'on', pg_is_in_recovery()",
            &[],
        )
        .await
        .context("read the server's settings")?;
    let (verify_pages, standby): (bool, bool) = (row.get(0), row.get(1));
    let major = job.major;
    let start: String = client
        .query_one("SELECT pg_backup_start($1, true)::text", &[&job.label])
        .await
        .context("pg_backup_start")?
        .get(0);
    let start = Lsn::parse(&start).context("pg_backup_start's position")?;
    tracing::info!(start = %start, jobs = job.jobs, standby, "backup started");
    let (tablespaces, spaces) = read_tablespaces(&client, major).await?;
    let changed = match job.parent.as_deref() {
        Some(p) if major >= 17 => {
            let read = async {
                let stretches = summaries::since_parent(
                    &client,
                    &s.pgdata,
                    (p.timeline, p.start, p.end),
                    start,
                )
                .await?;
                summaries::changed(&client, &stretches).await
            };
            match read.await {
                Ok(c) => {
                    tracing::info!(
                        summaries = c.summaries,
                        blocks = c.blocks,
                        "incremental: the server's WAL summaries name the changed blocks"
                    );
                    Some(c)
                }
                Err(e) => {
                    // A foreign chain then gets a full (below), any other page LSNs.
                    let instead = if p.foreign {
                        "taking a full backup"
                    } else {
                        "comparing page LSNs"
                    };
                    tracing::warn!(
                        reason = %format!("{e:#}"),
                        instead,
                        "incremental: the server's WAL summaries cannot name the changed blocks"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    // On another data directory's chain, without the summaries every page of every
    // changed file would be sent (see `incremental::why_not_here`): a full instead.
    let (parent, full_because) = match job.parent.clone() {
        Some(p) if p.foreign && changed.is_none() => (
            None,
            Some(format!(
                "the previous backup, {}, or one of its chain, was taken of another data directory, and the WAL summaries cannot name the changed blocks",
                p.backup_id
            )),
        ),
        parent => (parent, None),
    };
    if let Some(why) = &full_because {
        tracing::warn!(reason = %why, "an incremental backup is not possible; taking a full one");
    }

    let pgdata = s.pgdata.clone();
    let entries = tokio::task::spawn_blocking(move || walk::list(&pgdata, major, &spaces))
        .await
        .context("the listing thread")?
        .context("list the data directory")?;
    let (dirs, mut files): (Vec<walk::Entry>, Vec<walk::Entry>) =
        entries.into_iter().partition(|e| e.dir);
    // Largest first, one destination after the other: a worker then has one part open
    // at a time, whatever the number of tablespaces.
    files.sort_by(|a, b| {
        (a.holds.cmp(&b.holds))
            .then_with(|| b.size.cmp(&a.size))
            .then_with(|| a.path.cmp(&b.path))
    });
    job.progress.set_total(files.iter().map(|f| f.size).sum());
    let shared = Arc::new(Shared {
        queue: Mutex::new(files.into()),
        next_part: Mutex::new(BTreeMap::new()),
        files: Mutex::new(Vec::new()),
        bad_pages: Mutex::new((0, Vec::new())),
        failed: AtomicBool::new(false),
        progress: job.progress.clone(),
        unchanged: Mutex::new((0, 0)),
        skipped: std::sync::atomic::AtomicU64::new(0),
        windows: Mutex::new(Vec::new()),
        verify_pages,
        start_lsn: start.0,
        parent,
        changed,
        compression: job.compression,
        storage: job.storage.clone(),
        dir: job.dir.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..job.jobs.max(1) {
        let shared = shared.clone();
        workers.spawn_blocking(move || {
            let (done, r) = worker(&shared);
            if r.is_err() {
                shared.failed.store(true, Ordering::Relaxed);
            }
            (done, r)
        });
    }
    let mut uploads = Vec::new();
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined.context("a backup worker") {
            Ok((parts, r)) => {
                uploads.extend(parts);
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let mut parts = Vec::new();
    for (n, handle) in uploads {
        match handle.await.context("an upload task") {
            Ok(Ok(p)) => parts.push((n, p)),
            // The upload's own error says more than the worker's "the upload stopped".
            Ok(Err(e)) | Err(e) => first_error = Some(e),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    {
        let (count, named) = &*shared.bad_pages.lock().unwrap_or_else(|p| p.into_inner());
        if *count > 0 {
            bail!(
                "{count} page{} failed checksum verification: {}{}; the data files are damaged (restore them from an earlier backup, or see pg_amcheck); the backup is not listed",
                if *count == 1 { "" } else { "s" },
                named.join("; "),
                if *count > named.len() { "; ..." } else { "" }
            );
        }
    }

    // pg_control after every other file; then the end of the backup.
    let control_path = s.pgdata.join("global/pg_control");
    let control = tokio::task::spawn_blocking(move || std::fs::read(control_path))
        .await
        .context("the reading thread")?
        .context("read global/pg_control")?;
    // Not waiting for the archive here: postgres checks for it once a second (a second
    // lost on every backup), and the caller waits for every segment from the start to
    // the end to be in the archive before it lists the backup. postgres switches to
    // a new segment either way, so that the last one is archived.
    let row = client
        .query_one(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .context("pg_backup_stop")?;
    let (end, label, spcmap): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    check_spcmap(spcmap.as_deref().unwrap_or(""), &tablespaces);
    let end = Lsn::parse(&end).context("pg_backup_stop's position")?;
    let timeline = label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .context("backup_label names no START TIMELINE")?;
    if standby {
        // A standby's backup ends on the timeline it replays by then.
        let now = crate::replica::remote::identify_local(s, job.runner)
            .await
            .context("read the timeline the standby replays")?;
        check_timeline(timeline, now.timeline)?;
    }

    let now = std::time::SystemTime::now();
    let mtime = crate::civil::unix_seconds(now);
    let mut manifest_files =
        std::mem::take(&mut *shared.files.lock().unwrap_or_else(|p| p.into_inner()));
    let last: Vec<(String, Vec<u8>, u32)> = vec![
        ("global/pg_control".to_owned(), control, 0o600),
        ("backup_label".to_owned(), label.clone().into_bytes(), 0o600),
    ];
    for (path, body, _) in &last {
        manifest_files.push(manifest::File {
            path: path.clone(),
            size: body.len() as u64,
            mtime,
            crc32c: crc32c::crc32c(body),
        });
    }
    manifest_files.sort_by(|a, b| a.path.cmp(&b.path));
    let system_id = job.system_id;
    let text = manifest::render(
        &manifest_files,
        &manifest::Range {
            system_id,
            major,
            timeline,
            start,
            end,
        },
    );
    // A copy beside the parts, for the next incremental backup and a delta restore;
    // and the block files' window checksums, for the next incremental.
    let manifest_key = format!("{}/{}", job.dir, manifest::OBJECT);
    put_whole(job.storage, &manifest_key, text.clone()).await?;
    let mut windows =
        std::mem::take(&mut *shared.windows.lock().unwrap_or_else(|p| p.into_inner()));
    let windows = tokio::task::spawn_blocking(move || {
        windows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        incremental::render_windows(&windows)
    })
    .await
    .context("the rendering thread")?;
    let windows_key = format!("{}/{}", job.dir, incremental::WINDOWS_OBJECT);
    put_whole(job.storage, &windows_key, windows).await?;
    let shared2 = shared.clone();
    let oids: Vec<u32> = tablespaces.iter().map(|t| t.oid).collect();
    let closed = tokio::task::spawn_blocking(move || -> Result<_> {
        // Each tablespace's directories, in a last part of its own: every tablespace
        // has a part 0, which barman-cloud-restore requires, even one without files.
        let mut closed = Vec::new();
        for oid in oids {
            let holds = Holds::Tablespace(oid);
            let mut part = PartWriter::open(&shared2, holds)?;
            for d in dirs.iter().filter(|d| d.holds == holds) {
                part.dir(d)?;
            }
            closed.push(part.close()?);
        }
        let mut part = PartWriter::open(&shared2, Holds::Data)?;
        for d in dirs.iter().filter(|d| d.holds == Holds::Data) {
            part.dir(d)?;
        }
        for (path, body, mode) in &last {
            part.small(path, body, *mode, mtime)?;
        }
        part.small("backup_manifest", text.as_bytes(), 0o600, mtime)?;
        closed.push(part.close()?);
        Ok(closed)
    })
    .await
    .context("the last parts' thread")??;
    for (n, handle) in closed {
        let p = handle.await.context("the last parts' upload")??;
        parts.push((n, p));
    }
    parts.sort_by_key(|(n, p)| (super::parts::part_of(&p.name).map(|(h, _, _)| h), *n));
    let unchanged = *shared.unchanged.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Taken {
        label,
        start,
        end,
        timeline,
        parts: parts.into_iter().map(|(_, p)| p).collect(),
        tablespaces,
        bytes: shared.progress.done(),
        unchanged,
        skipped: shared.skipped.load(Ordering::Relaxed),
        full_because,
    })
}

/// The cluster's tablespaces (those with a location of their own: not `pg_default`,
/// `pg_global`, nor an in-place one, which is a directory under `pg_tblspc` and goes
/// into PGDATA's parts as pg_basebackup sends it), as barman reads them, and where
/// each is read from.
async fn read_tablespaces(
    client: &tokio_postgres::Client,
    major: u32,
) -> Result<(Vec<Tablespace>, Vec<walk::Space>)> {
    let rows = client
        .query(
            "SELECT spcname::text, oid::bigint, pg_tablespace_location(oid), \
                    (SELECT catalog_version_no FROM pg_control_system())::bigint \
             FROM pg_tablespace WHERE pg_tablespace_location(oid) LIKE '/%' ORDER BY oid",
            &[],
        )
        .await
        .context("read the cluster's tablespaces")?;
    let mut ts = Vec::new();
    let mut spaces = Vec::new();
    for r in rows {
        let (name, oid, location, catversion): (String, i64, String, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let oid = u32::try_from(oid).context("a tablespace's oid")?;
        spaces.push(walk::Space {
            oid,
            location: std::path::PathBuf::from(&location),
            version_dir: format!("PG_{major}_{catversion}"),
        });
        tracing::info!(tablespace = %name, oid, location = %location, "backing up a tablespace");
        ts.push(Tablespace {
            name,
            oid,
            location,
        });
    }
    Ok((ts, spaces))
}

/// The `tablespace_map` `pg_backup_stop` returns (`<oid> <location>` lines) names the
/// tablespaces that existed when the backup started; one missing from the catalogue
/// read meanwhile was dropped during the backup (WAL replay drops it too): said, not
/// fatal.
fn check_spcmap(spcmap: &str, tablespaces: &[Tablespace]) {
    for line in spcmap.lines() {
        let Some((oid, location)) = line.split_once(' ') else {
            continue;
        };
        let known = oid
            .parse::<u32>()
            .is_ok_and(|oid| tablespaces.iter().any(|t| t.oid == oid));
        if !known {
            tracing::warn!(
                oid,
                location,
                "a tablespace was dropped during the backup; it is not in it"
            );
        }
    }
}

type Upload = tokio::task::JoinHandle<Result<Part>>;

/// Copies files from the queue until it is empty. Returns the uploads of the parts it
/// closed, also when it fails (so that the caller waits for them before the failed
/// backup's objects are removed), and how it ended.
fn worker(shared: &Shared) -> (Vec<(u32, Upload)>, Result<()>) {
    let mut done = Vec::new();
    let result = copy(shared, &mut done);
    (done, result)
}

fn copy(shared: &Shared, done: &mut Vec<(u32, Upload)>) -> Result<()> {
    let mut part: Option<PartWriter> = None;
    let mut buf = vec![0u8; READ];
    loop {
        if shared.failed.load(Ordering::Relaxed) {
            // Another worker failed: stop; the open part's upload aborts when it is
            // dropped.
            return Ok(());
        }
        let next = shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let Some(entry) = next else { break };
        // The queue moved on to another destination (PGDATA's files come first, then
        // each tablespace's): this part is complete.
        if part.as_ref().is_some_and(|p| p.holds != entry.holds) {
            if let Some(p) = part.take() {
                done.push(p.close()?);
            }
        }
        if part.is_none() {
            part = Some(PartWriter::open(shared, entry.holds)?);
        }
        let Some(p) = part.as_mut() else { break };
        p.file(shared, &entry, &mut buf)?;
        if p.stored() >= MAX_PART {
            if let Some(p) = part.take() {
                done.push(p.close()?);
            }
        }
    }
    if let Some(p) = part.take() {
        done.push(p.close()?);
    }
    Ok(())
}

/// What goes to an upload task.
enum Msg {
    Data(Bytes),
    /// The part is complete, with the SHA-256 of what was sent and its index: finish
    /// the object, then store the index beside it. A channel closed without it aborts
    /// the upload, so that a part cut short is never completed.
    Done(String, Option<String>),
}

/// Collects a part's stored bytes and sends them in [`CHUNK`]s.
struct Shipper {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Msg>,
    sha: sha2::Sha256,
    stored: u64,
}

impl Write for Shipper {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.sha.update(data);
        self.stored += data.len() as u64;
        if self.buf.len() >= CHUNK {
            self.ship()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shipper {
    fn ship(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + READ));
        self.tx
            .blocking_send(Msg::Data(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::other("the upload stopped"))
    }
}

/// One tar part being written and uploaded.
struct PartWriter {
    holds: Holds,
    n: u32,
    name: String,
    tar: tar::Builder<index::Sink<Shipper>>,
    upload: Upload,
}

impl PartWriter {
    fn open(shared: &Shared, holds: Holds) -> Result<PartWriter> {
        let n = {
            let mut next = shared.next_part.lock().unwrap_or_else(|p| p.into_inner());
            let slot = next.entry(holds).or_insert(0);
            *slot += 1;
            *slot - 1
        };
        let name = part_name(holds, n, shared.compression, shared.parent.is_some());
        let key = format!("{}/{name}", shared.dir);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let storage = shared.storage.clone();
        let index_key = format!("{}/{}", shared.dir, index::object_name(&name));
        let upload = shared
            .runtime
            .spawn(upload(storage, key, index_key, name.clone(), rx));
        let shipper = Shipper {
            buf: Vec::with_capacity(CHUNK + READ),
            tx,
            sha: sha2::Sha256::new(),
            stored: 0,
        };
        // An incremental's parts are restored whole, as a chain: no index.
        let recorder: Option<index::Shared> = shared.parent.is_none().then(Default::default);
        let out = match shared.compression {
            BackupCompression::Gzip => index::Compressor::Gzip(Box::new(
                index::SeekableGz::new(shipper, GZIP_LEVEL)
                    .with_context(|| format!("start {name}"))?,
            )),
            BackupCompression::None => index::Compressor::Plain(shipper),
        };
        let mut tar = tar::Builder::new(index::Sink::new(out, recorder));
        tar.mode(tar::HeaderMode::Complete);
        Ok(PartWriter {
            holds,
            n,
            name,
            tar,
            upload,
        })
    }

    /// Compressed bytes so far.
    fn stored(&mut self) -> u64 {
        match &self.tar.get_ref().out {
            index::Compressor::Gzip(g) => g.get_ref().stored,
            index::Compressor::Plain(p) => p.stored,
        }
    }

    fn dir(&mut self, d: &walk::Entry) -> Result<()> {
        if let Some(rec) = &self.tar.get_ref().recorder {
            rec.borrow_mut().dir(&d.tar_path, d.mode);
        }
        let mut h = index::tar_header(d.mode, d.mtime, 0, tar::EntryType::Directory);
        self.tar
            .append_data(&mut h, format!("{}/", d.tar_path), std::io::empty())
            .with_context(|| format!("write {}", d.path))
    }

    fn small(&mut self, path: &str, body: &[u8], mode: u32, mtime: i64) -> Result<()> {
        index::append_file(&mut self.tar, path, body, mode, mtime, body.len() as u64)
            .with_context(|| format!("write {path}"))
    }

    /// Copies one file and records it, with its CRC-32C, for the manifest. A file an
    /// incremental finds unchanged since its parent is not read (the parent's CRC is
    /// recorded); a file gone since the listing is left out.
    ///
    /// The modification time recorded lets the next incremental skip the file when it
    /// has not changed since (see [`incremental::Parent::unchanged`]), which holds only
    /// for a checksum of what was read. A file left unread by the WAL summaries, whole
    /// or in part, is recorded with none (0): on a standby the summaries end at the
    /// last restartpoint, and a write after it but before this backup began would
    /// otherwise be taken as already in the checksum.
    fn file(&mut self, shared: &Shared, e: &walk::Entry, buf: &mut [u8]) -> Result<()> {
        let parent = shared.parent.as_deref();
        let unchanged = parent.and_then(|p| {
            let by_time = p.unchanged(&e.path, e.size, e.mtime);
            by_time.map(|crc| (crc, e.mtime)).or_else(|| {
                let c = shared.changed.as_ref()?;
                c.untouched(p, &e.path, e.size).map(|crc| (crc, 0))
            })
        });
        let (crc, windows, mtime) = match unchanged {
            Some((crc, mtime)) => {
                self.unchanged(shared, e)?;
                let windows = parent.and_then(|p| p.windows.get(&e.path)).cloned();
                (crc, windows, mtime)
            }
            None => match self.copy(shared, e, buf)? {
                Some(read) => {
                    let mtime = if read.skipped { 0 } else { e.mtime };
                    (read.crc, Some(read.windows), mtime)
                }
                None => return Ok(()),
            },
        };
        if let Some(w) = windows.filter(|_| incremental::is_block_file(&e.path, e.size)) {
            shared
                .windows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((e.path.clone(), e.size, w));
        }
        shared
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(manifest::File {
                path: e.path.clone(),
                size: e.size,
                mtime,
                crc32c: crc,
            });
        Ok(())
    }

    /// Reads one file into the part: its size as listed (a file that shrank meanwhile
    /// is padded with zeros, growth is left to WAL replay, as pg_basebackup does), its
    /// pages checked; `None` when it is gone since the listing.
    fn copy(&mut self, shared: &Shared, e: &walk::Entry, buf: &mut [u8]) -> Result<Option<Copied>> {
        let f = match std::fs::File::open(&e.source) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("open {}", e.path)),
        };
        let name = e.path.rsplit('/').next().unwrap_or(&e.path);
        let first_block = if shared.verify_pages {
            pages::first_block(name).filter(|_| {
                ["base/", "global/", "pg_tblspc/"]
                    .iter()
                    .any(|dir| e.path.starts_with(dir))
            })
        } else {
            None
        };
        let mut reader = FileReader {
            file: f,
            path: &e.path,
            size: e.size,
            offset: 0,
            crc: 0,
            buf,
            have: 0,
            served: 0,
            first_block,
            shared,
            windows: Vec::new(),
            skipped: false,
        };
        // Of an incremental, which blocks of a relation file it sends (see
        // [`incremental`] and [`summaries`]); `None` sends the file whole.
        let select = match shared
            .parent
            .as_deref()
            .and_then(|p| Some((p, p.blocks_of(&e.path, e.size)?)))
        {
            None => None,
            Some((parent, before)) => {
                match shared.changed.as_ref().map(|c| c.pick(&e.path, before)) {
                    Some(Some(summaries::Pick::Whole)) => None,
                    Some(Some(summaries::Pick::Blocks { listed, from })) => Some((
                        parent,
                        incremental::Select::Summaries {
                            listed,
                            from,
                            start: shared.start_lsn,
                        },
                    )),
                    _ => Some((
                        parent,
                        incremental::Select::Lsn {
                            since: parent.start.0,
                            before,
                        },
                    )),
                }
            }
        };
        let crc = match select {
            Some((parent, select)) => {
                self.changed_blocks(shared, e, &mut reader, parent, &select)?
            }
            None => {
                index::append_file(
                    &mut self.tar,
                    &e.tar_path,
                    &mut reader,
                    e.mode,
                    e.mtime,
                    e.size,
                )
                .with_context(|| format!("copy {}", e.path))?;
                reader.crc
            }
        };
        Ok(Some(Copied {
            crc,
            skipped: reader.skipped,
            windows: reader.windows,
        }))
    }

    /// Writes a relation file unchanged since the parent without reading it: an
    /// `INCREMENTAL.<name>` entry of no blocks that keeps its length, so that the
    /// restore takes every block from the chain.
    fn unchanged(&mut self, shared: &Shared, e: &walk::Entry) -> Result<()> {
        let bs = pages::BLCKSZ as u64;
        let length = u32::try_from(e.size / bs)
            .with_context(|| format!("{} is longer than a relation segment", e.path))?;
        let body = incremental::header(&[], length);
        let mut h = index::tar_header(e.mode, e.mtime, body.len() as u64, tar::EntryType::Regular);
        self.tar
            .append_data(
                &mut h,
                incremental::entry_name(&e.tar_path),
                body.as_slice(),
            )
            .with_context(|| format!("copy {}", e.path))?;
        shared.progress.add(e.size);
        {
            let mut n = shared.unchanged.lock().unwrap_or_else(|p| p.into_inner());
            n.0 += 1;
            n.1 += e.size;
        }
        Ok(())
    }

    /// Copies the blocks of a relation file that `select` says changed since the
    /// parent, as `INCREMENTAL.<name>` entries, one per read window that has any (see
    /// [`incremental`]); a window `select` may skip, whose checksum the parent
    /// recorded, is not read. Returns the CRC-32C of the whole file.
    fn changed_blocks(
        &mut self,
        shared: &Shared,
        e: &walk::Entry,
        reader: &mut FileReader<'_>,
        parent: &incremental::Parent,
        select: &incremental::Select,
    ) -> Result<u32> {
        let bs = pages::BLCKSZ;
        let length = u32::try_from(e.size / bs as u64)
            .with_context(|| format!("{} is longer than a relation segment", e.path))?;
        let name = incremental::entry_name(&e.tar_path);
        let mut entries = 0;
        let mut body = Vec::new();
        let emit = |part: &mut Self, body: &[u8]| -> Result<()> {
            let mut h =
                index::tar_header(e.mode, e.mtime, body.len() as u64, tar::EntryType::Regular);
            part.tar
                .append_data(&mut h, &name, body)
                .with_context(|| format!("copy {}", e.path))
        };
        // A parent taken of another data directory (another member's, or this one's
        // before a rebuild or a rewind) may hold other hint bits in pages that neither
        // backup sends (a standby never writes hint bits to disk, a primary logs only
        // the first change after a checkpoint): then every page of a window read is
        // sent, so that the manifest's checksum is of what the restore writes.
        let foreign = parent.foreign;
        while reader.offset < e.size {
            let first = (reader.offset / bs as u64) as u32;
            let len = (e.size - reader.offset).min(READ as u64);
            let end = u64::from(first) + len / bs as u64;
            if select.may_skip(u64::from(first), end) {
                let w = reader.offset / incremental::WINDOW;
                if let Some(crc) = parent.window(&e.path, w, len) {
                    reader
                        .skip(len, crc)
                        .with_context(|| format!("read {}", e.path))?;
                    shared.skipped.fetch_add(len, Ordering::Relaxed);
                    continue;
                }
            }
            reader.fill().with_context(|| format!("read {}", e.path))?;
            let window = &reader.buf[..reader.have];
            let blocks: Vec<u32> = window
                .chunks_exact(bs)
                .enumerate()
                .filter(|(i, page)| foreign || select.keep(u64::from(first) + *i as u64, page))
                .map(|(i, _)| first + i as u32)
                .collect();
            if blocks.is_empty() {
                continue;
            }
            body.clear();
            body.extend_from_slice(&incremental::header(&blocks, length));
            for b in &blocks {
                let at = (b - first) as usize * bs;
                body.extend_from_slice(&window[at..at + bs]);
            }
            emit(self, &body)?;
            entries += 1;
        }
        // A file without a changed block still gets an entry: it exists, this long.
        if entries == 0 {
            emit(self, &incremental::header(&[], length))?;
        }
        Ok(reader.crc)
    }

    /// Ends the tar, the compression and the upload.
    fn close(self) -> Result<(u32, Upload)> {
        let sink = self
            .tar
            .into_inner()
            .with_context(|| format!("end {}", self.name))?;
        let mut shipper = match sink.out {
            index::Compressor::Gzip(g) => g
                .finish()
                .with_context(|| format!("compress {}", self.name))?,
            index::Compressor::Plain(p) => p,
        };
        let index = sink.recorder.as_ref().map(|r| r.borrow_mut().finish());
        if let Some(None) = index {
            tracing::warn!(part = %self.name, "a file of this part could not be indexed (a newline in its name); a delta restore of this backup restores it whole");
        }
        let index = index.flatten().map(|i| index::render(&i));
        if !shipper.buf.is_empty() {
            shipper.ship()?;
        }
        let sha = crate::wal::hex(&shipper.sha.clone().finalize());
        shipper
            .tx
            .blocking_send(Msg::Done(sha, index))
            .map_err(|_| anyhow::anyhow!("the upload of {} stopped", self.name))?;
        Ok((self.n, self.upload))
    }
}

/// Uploads one part from what its writer sends.
async fn upload(
    storage: Backend,
    key: String,
    index_key: String,
    name: String,
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
) -> Result<Part> {
    let mut up = storage
        .begin_upload(&key)
        .await
        .with_context(|| format!("start uploading {key}"))?;
    loop {
        match rx.recv().await {
            Some(Msg::Data(b)) => {
                if let Err(e) = up.part(b).await {
                    up.abort().await;
                    return Err(e).with_context(|| format!("upload {key}"));
                }
            }
            Some(Msg::Done(sha256, index)) => {
                let size = up
                    .finish()
                    .await
                    .with_context(|| format!("complete {key}"))?;
                let index_sha256 = match index {
                    Some(text) => {
                        let sha = crate::wal::sha256_hex(text.as_bytes());
                        put_whole(&storage, &index_key, text).await?;
                        Some(sha)
                    }
                    None => None,
                };
                return Ok(Part {
                    name,
                    size,
                    sha256,
                    index_sha256,
                });
            }
            None => {
                up.abort().await;
                bail!("the writer of {key} stopped before the end");
            }
        }
    }
}

/// Stores a small object (the manifest, a part's index) in one piece.
async fn put_whole(storage: &Backend, key: &str, text: String) -> Result<()> {
    let mut up = storage
        .begin_upload(key)
        .await
        .with_context(|| format!("start uploading {key}"))?;
    if let Err(e) = up.part(Bytes::from(text.into_bytes())).await {
        up.abort().await;
        return Err(e).with_context(|| format!("upload {key}"));
    }
    up.finish()
        .await
        .with_context(|| format!("complete {key}"))?;
    Ok(())
}

/// Reads a file for the tar in block-aligned reads, whatever sizes the tar asks for:
/// checks pages, sums the CRC-32C, pads a file that shrank.
struct FileReader<'a> {
    file: std::fs::File,
    path: &'a str,
    size: u64,
    /// Bytes of the file read into `buf` so far.
    offset: u64,
    crc: u32,
    buf: &'a mut [u8],
    have: usize,
    served: usize,
    first_block: Option<u64>,
    shared: &'a Shared,
    /// The CRC-32C of each window read or skipped, in order.
    windows: Vec<u32>,
    /// Whether a window was skipped (its CRC-32C is the parent's).
    skipped: bool,
}

/// What [`PartWriter::copy`] read of a file.
struct Copied {
    /// The whole file's CRC-32C.
    crc: u32,
    /// Each window's.
    windows: Vec<u32>,
    /// Some window's is the parent's, not read.
    skipped: bool,
}

impl FileReader<'_> {
    fn fill(&mut self) -> std::io::Result<()> {
        let want = (self.size - self.offset).min(self.buf.len() as u64) as usize;
        let mut got = 0;
        while got < want {
            match self.file.read(&mut self.buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Shrunk since the listing: zeros, as pg_basebackup sends.
        self.buf[got..want].fill(0);
        if let Some(first) = self.first_block {
            self.check_pages(first, got);
        }
        let window = crc32c::crc32c(&self.buf[..want]);
        self.crc = combine(self.crc, window, want);
        self.windows.push(window);
        self.offset += want as u64;
        self.shared.progress.add(want as u64);
        self.have = want;
        self.served = 0;
        Ok(())
    }

    /// Passes over the next `len` bytes without reading them, taking `crc` for
    /// their CRC-32C (the parent's, for a window that did not change).
    fn skip(&mut self, len: u64, crc: u32) -> std::io::Result<()> {
        self.offset += len;
        self.file.seek(std::io::SeekFrom::Start(self.offset))?;
        self.crc = combine(self.crc, crc, len as usize);
        self.windows.push(crc);
        self.skipped = true;
        self.shared.progress.add(len);
        self.have = 0;
        self.served = 0;
        Ok(())
    }

    /// Checks the whole pages among the `got` bytes just read; a page that fails is
    /// read again once (it may have been caught being written).
    fn check_pages(&mut self, first: u64, got: usize) {
        let bs = pages::BLCKSZ;
        for i in 0..got / bs {
            let at = i * bs;
            let blkno = first + (self.offset + at as u64) / bs as u64;
            let page = &self.buf[at..at + bs];
            let pages::Verdict::Bad { stored, computed } =
                pages::verify(page, blkno as u32, self.shared.start_lsn)
            else {
                continue;
            };
            let mut again = vec![0u8; bs];
            let reread = self
                .file
                .read_exact_at(&mut again, self.offset + at as u64)
                .is_ok();
            if reread
                && !matches!(
                    pages::verify(&again, blkno as u32, self.shared.start_lsn),
                    pages::Verdict::Bad { .. }
                )
            {
                self.buf[at..at + bs].copy_from_slice(&again);
                continue;
            }
            let mut bad = self
                .shared
                .bad_pages
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            bad.0 += 1;
            if bad.1.len() < BAD_PAGES_NAMED {
                bad.1.push(format!(
                    "{} block {} (stored checksum {stored}, computed {computed})",
                    self.path,
                    blkno % pages::RELSEG_BLOCKS
                ));
            }
            tracing::error!(
                file = self.path,
                block = blkno % pages::RELSEG_BLOCKS,
                stored,
                computed,
                "page checksum verification failed"
            );
        }
    }
}

/// `crc32c::crc32c_combine(crc, next, len)`: the CRC-32C of two spans from theirs.
/// The crate squares a 32×32 bit matrix some twenty times a call; for a whole read
/// ([`READ`] bytes, every window but a file's last) the shift by `len` zero bytes is
/// computed once instead. It is linear: the CRC shifted is the XOR of the shifted
/// columns of its set bits, each `crc32c_combine(1 << i, 0, READ)`.
fn combine(crc: u32, next: u32, len: usize) -> u32 {
    static SHIFT: std::sync::OnceLock<[u32; 32]> = std::sync::OnceLock::new();
    if len != READ {
        return crc32c::crc32c_combine(crc, next, len);
    }
    let shift =
        SHIFT.get_or_init(|| std::array::from_fn(|i| crc32c::crc32c_combine(1 << i, 0, READ)));
    (0..32)
        .filter(|i| crc >> i & 1 == 1)
        .fold(next, |out, i| out ^ shift[i])
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.served == self.have {
            if self.offset >= self.size {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = (self.have - self.served).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combining_a_whole_read_is_the_crates_combine() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200 {
            // xorshift: spread values over every bit.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let y = x.rotate_left(7) ^ 0x9e37_79b9;
            assert_eq!(combine(x, y, READ), crc32c::crc32c_combine(x, y, READ));
            assert_eq!(combine(x, y, 8192), crc32c::crc32c_combine(x, y, 8192));
        }
        let data: Vec<u8> = (0..2 * READ + 100).map(|i| (i % 253) as u8).collect();
        let whole = data
            .chunks(READ)
            .fold(0, |crc, c| combine(crc, crc32c::crc32c(c), c.len()));
        assert_eq!(whole, crc32c::crc32c(&data));
    }

    #[test]
    fn names_parts_as_barman_cloud_does() {
        let (d, gz) = (Holds::Data, BackupCompression::Gzip);
        assert_eq!(part_name(d, 0, gz, false), "data.tar.gz");
        assert_eq!(part_name(d, 1, gz, false), "data_0001.tar.gz");
        assert_eq!(
            part_name(d, 12, BackupCompression::None, false),
            "data_0012.tar"
        );
        assert_eq!(
            part_name(Holds::Tablespace(16384), 0, gz, false),
            "16384.tar.gz"
        );
        assert_eq!(
            part_name(Holds::Tablespace(16384), 2, BackupCompression::None, false),
            "16384_0002.tar"
        );
        assert_eq!(part_name(d, 0, gz, true), "incr-data.tar.gz");
        assert_eq!(
            part_name(Holds::Tablespace(16384), 1, gz, true),
            "incr-16384_0001.tar.gz"
        );
        for incr in [false, true] {
            for n in 0..3 {
                let name = part_name(d, n, gz, incr);
                assert_eq!(crate::backup::parts::part_of(&name).map(|p| p.1), Some(n));
            }
        }
    }

    #[test]
    fn a_backup_across_a_promotion_is_refused() {
        assert!(check_timeline(2, 2).is_ok());
        let err = check_timeline(1, 2).unwrap_err().to_string();
        assert!(
            err.contains("began on timeline 1 and ended on timeline 2"),
            "{err}"
        );
    }
}
