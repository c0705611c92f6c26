//! Taking a base backup of the local instance, streamed to the archive.
//!
//! `pg_basebackup -Ft -D - -X none -c fast` runs over the unix socket (the archive
//! holds the WAL); its tar stream is read on a blocking thread, where the
//! `backup_label` is picked out of it, and compressed; the compressed stream goes to
//! the archive as a multipart upload in 16 MiB parts, two in flight at most. Nothing
//! is held whole: memory stays at a few parts whatever the database size.
//! `backup.info` is written last, once the data object is complete and the backup's
//! last WAL segment is in the archive, so an interrupted backup (a kill, an outage,
//! the promotion of the standby it ran on) is never listed and leaves nothing a
//! restore could pick.

use super::{
    backup_id, barman_time, info::BackupInfo, marker, BackupCompression, BackupStatus, Finished,
    Lsn, Running,
};
use crate::process::{run_as, Runner};
use crate::settings::Settings;
use crate::wal::names::WalName;
use crate::wal::storage::{Backend, Bytes, PutOutcome, Storage};
use crate::wal::ArchiveConfig;
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a claimed id's marker is left before it is read back (see
/// [`Job::claim`]).
const CLAIM_SETTLE: Duration = Duration::from_secs(1);
/// Size of the first uploaded parts: small, so that the parts alive at once (one
/// filling, one queued, two uploading) stay well under the 100 MB a backup may use.
const PART: usize = 8 << 20;
/// S3 allows 10,000 parts: after this many, parts grow so that an object can reach
/// about 400 GB.
const SMALL_PARTS: usize = 4_000;
/// Size of the parts after [`SMALL_PARTS`].
const LARGE_PART: usize = 64 << 20;

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
    /// Spawns pg_basebackup.
    pub runner: &'a Runner,
    /// Progress and result, for /status.
    pub status: Arc<Mutex<BackupStatus>>,
}

/// What the server says about itself, for `backup.info`.
struct ServerFacts {
    version: u32,
    systemid: String,
    seg_size: u64,
    /// The last checkpoint's (restartpoint's, on a standby) redo segment: the backup
    /// starts there or later.
    redo_wal: String,
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
                    (SELECT redo_wal_file FROM pg_control_checkpoint())",
            &[],
        )
        .await
        .context("read the server's version and system identifier")?;
    Ok(ServerFacts {
        version: row.get::<_, String>(0).parse().unwrap_or(0),
        systemid: row.get(1),
        seg_size: row.get::<_, i64>(2) as u64,
        redo_wal: row.get(3),
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
        let (id, claim) = self.claim(begin, &facts).await?;
        self.progress(|st| {
            st.running = Some(Running {
                backup_id: id.clone(),
                bytes: 0,
            })
        });
        let result = self.take(&id, &claim, &facts, begin).await;
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
    /// On a store that refuses a second creation of one key (a volume, AWS S3) the
    /// marker's creation alone decides. Garage ignores `If-None-Match`: a rival that
    /// listed the id as free before our marker landed may overwrite it within the
    /// time between its listing and its write, so the marker is read back after
    /// [`CLAIM_SETTLE`], far longer than that, and the id is ours only if it holds
    /// our token. The token is checked again before `backup.info` is written.
    async fn claim(&self, t: SystemTime, facts: &ServerFacts) -> Result<(String, String)> {
        let base = super::base_prefix(&self.archive.base());
        let token = marker::token();
        let body = marker::Running {
            token: token.clone(),
            begin_wal: facts.redo_wal.clone(),
            host: self.settings.name.clone(),
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
            if matches!(self.storage, Backend::S3(_)) {
                tokio::time::sleep(CLAIM_SETTLE).await;
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
    ) -> Result<BackupInfo> {
        let s = self.settings;
        let dir = format!("{}{id}", super::base_prefix(&self.archive.base()));
        let data_key = format!("{dir}/{}", self.compression.data_name());

        let mut cmd = Command::new(s.bin("pg_basebackup"));
        cmd.args([
            "-D",
            "-",
            "-F",
            "t",
            "-X",
            "none",
            "-c",
            "fast",
            "--verbose",
            "--no-password",
        ])
        .arg("-l")
        .arg(format!("pgwarden {id}"))
        .arg("-h")
        .arg(&s.socket_dir)
        .arg("-p")
        .arg(s.port.to_string())
        .arg("-U")
        .arg(&s.superuser)
        .env("LC_MESSAGES", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        run_as(&mut cmd, s.run_as.as_ref());
        let mut child = self.runner.spawn(&mut cmd).context("start pg_basebackup")?;
        let stdout = child.stdout.take().context("pg_basebackup's output")?;
        let stderr = child.stderr.take().context("pg_basebackup's messages")?;
        let messages = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
            text
        });

        let mut upload = self.storage.begin_upload(&data_key).await?;
        // One part queued: the upload itself keeps two in flight (S3).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let compression = self.compression;
        let status = self.status.clone();
        let reader = tokio::task::spawn_blocking(move || compress(stdout, compression, tx, status));
        let mut uploaded = Ok(());
        while let Some(part) = rx.recv().await {
            if uploaded.is_ok() {
                uploaded = upload.part(part).await;
            }
        }
        let streamed = reader
            .await
            .map_err(|e| anyhow::anyhow!("the reader thread: {e}"))?;
        let exit = child.wait().await?;
        let messages = messages.join().unwrap_or_default();
        let outcome = (|| -> Result<Streamed> {
            if !exit.success() {
                bail!("pg_basebackup failed ({exit}): {}", messages.trim());
            }
            uploaded.context("upload the data")?;
            streamed
        })();
        let streamed = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let size = upload.finish().await.context("complete the data object")?;

        let label = String::from_utf8_lossy(
            streamed
                .label
                .as_deref()
                .context("pg_basebackup's tar holds no backup_label")?,
        )
        .into_owned();
        let data_sha = streamed.sha.clone();
        let (start, timeline) = parse_start(&label).context("read the backup_label")?;
        let ranges = streamed
            .manifest_end
            .as_deref()
            .map(wal_ranges)
            .unwrap_or_default();
        let end = backup_end(&ranges, timeline)?;
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
            size: Some(size),
            backup_label: Some(label),
            made_by: "pgwarden".to_owned(),
            extra: [
                ("data_sha256".to_owned(), data_sha),
                (
                    "data_object".to_owned(),
                    self.compression.data_name().to_owned(),
                ),
                // Lets a restore see that no part is missing, the last one included.
                ("data_parts".to_owned(), "1".to_owned()),
                (
                    "pgwarden_version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ]
            .into(),
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

    /// A backup is usable only with every segment from its start to its end archived
    /// (the daemon uploads out of order, and a standby's pg_basebackup waits for none):
    /// each is looked up, in order, waiting for those not there yet, before
    /// `backup.info` lists the backup.
    async fn wait_archived(&self, begin_wal: &str, end_wal: &str, seg_size: u64) -> Result<()> {
        let mut wal = WalName::parse(begin_wal).context("the start segment's name")?;
        let last = WalName::parse(end_wal).context("the end segment's name")?;
        let base = self.archive.base();
        let deadline = Instant::now() + self.archive.timeout.max(Duration::from_secs(60)) * 2;
        loop {
            match crate::wal::present::lookup(self.storage, &base, &wal).await? {
                crate::wal::present::Presence::Readable { .. } => {
                    if wal.name == last.name {
                        return Ok(());
                    }
                    wal = wal
                        .next_segment(1, seg_size)
                        .with_context(|| format!("no segment after {}", wal.name))?;
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
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `START WAL LOCATION: 0/2000028 (file …)` and `START TIMELINE: 1`.
fn parse_start(label: &str) -> Option<(Lsn, u32)> {
    let mut start = None;
    let mut timeline = None;
    for line in label.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            start = Lsn::parse(rest.split_whitespace().next()?);
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            timeline = rest.trim().parse().ok();
        }
    }
    Some((start?, timeline?))
}

/// Reads the tar stream, picks out the backup_label, compresses, and hands parts to
/// the uploader; returns the label and the SHA-256 of the stored object.
fn compress(
    mut tar: impl Read,
    compression: BackupCompression,
    parts: tokio::sync::mpsc::Sender<Bytes>,
    status: Arc<Mutex<BackupStatus>>,
) -> Result<Streamed> {
    /// Collects compressed output and ships it in parts.
    struct Parts {
        buf: Vec<u8>,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        sha: sha2::Sha256,
        shipped: usize,
    }
    impl Write for Parts {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(data);
            self.sha.update(data);
            if self.buf.len() >= self.part_size() {
                self.ship()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Parts {
        fn part_size(&self) -> usize {
            if self.shipped < SMALL_PARTS {
                PART
            } else {
                LARGE_PART
            }
        }
        fn ship(&mut self) -> std::io::Result<()> {
            self.shipped += 1;
            let next = Vec::with_capacity(self.part_size() + (1 << 20));
            let part = Bytes::from(std::mem::replace(&mut self.buf, next));
            self.tx
                .blocking_send(part)
                .map_err(|_| std::io::Error::other("the upload stopped"))
        }
    }
    let out = Parts {
        buf: Vec::with_capacity(PART + (1 << 20)),
        tx: parts,
        sha: sha2::Sha256::new(),
        shipped: 0,
    };
    enum Sink {
        Gzip(Box<super::pargz::ParGz<Parts>>),
        Plain(Parts),
    }
    let mut sink = match compression {
        // Level 1: a base backup is mostly table pages, where higher levels buy little
        // for much more CPU.
        BackupCompression::Gzip => Sink::Gzip(Box::new(
            super::pargz::ParGz::new(
                out,
                flate2::Compression::new(1),
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )
            .context("start the gzip workers")?,
        )),
        BackupCompression::None => Sink::Plain(out),
    };
    let mut label = super::tar::Capture::new("backup_label");
    // The manifest ends with the WAL range the backup needs: keep its end only.
    let mut manifest = super::tar::Capture::tail("backup_manifest", 4096);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read pg_basebackup's output"),
        };
        label.feed(&buf[..n]);
        manifest.feed(&buf[..n]);
        match &mut sink {
            Sink::Gzip(e) => e.write_all(&buf[..n]),
            Sink::Plain(p) => p.write_all(&buf[..n]),
        }
        .context("compress")?;
        total += n as u64;
        if let Some(r) = status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running
            .as_mut()
        {
            r.bytes = total;
        }
    }
    let mut out = match sink {
        Sink::Gzip(e) => e.finish().context("compress")?,
        Sink::Plain(p) => p,
    };
    if !out.buf.is_empty() {
        out.ship()?;
    }
    let sha = crate::wal::hex(&out.sha.finalize());
    Ok(Streamed {
        label: label.content().map(<[u8]>::to_vec),
        manifest_end: manifest.content().map(<[u8]>::to_vec),
        sha,
    })
}

/// What the reader learnt from the tar stream.
struct Streamed {
    label: Option<Vec<u8>>,
    manifest_end: Option<Vec<u8>>,
    sha: String,
}

/// One entry of a backup manifest's `WAL-Ranges`: the WAL of `timeline` from `start`
/// to `end` is needed to make the backup consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalRange {
    timeline: u32,
    start: Lsn,
    end: Lsn,
}

/// The `WAL-Ranges` in the end of a backup manifest, as PostgreSQL lists them: the
/// timeline the backup ended on first, the one it began on last. Empty when there
/// are none or they cannot be read.
fn wal_ranges(tail: &[u8]) -> Vec<WalRange> {
    let text = String::from_utf8_lossy(tail);
    let Some(at) = text.rfind("\"WAL-Ranges\"") else {
        return Vec::new();
    };
    let rest = &text[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    let Some(array) = rest.get(open..=close) else {
        return Vec::new();
    };
    let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(array) else {
        return Vec::new();
    };
    let lsn = |e: &serde_json::Value, k: &str| e.get(k)?.as_str().and_then(Lsn::parse);
    entries
        .iter()
        .map(|e| {
            Some(WalRange {
                timeline: u32::try_from(e.get("Timeline")?.as_u64()?).ok()?,
                start: lsn(e, "Start-LSN")?,
                end: lsn(e, "End-LSN")?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// The backup's end position, from the manifest's WAL ranges. A backup that ran on a
/// standby while its upstream was promoted ends on a later timeline than it began:
/// barman's `backup.info` holds one timeline, and a restore of it would need the
/// history in between, so such a backup is refused rather than listed with the end of
/// the wrong timeline.
fn backup_end(ranges: &[WalRange], start_timeline: u32) -> Result<Lsn> {
    match ranges {
        [] => bail!("pg_basebackup's backup_manifest gives no WAL range"),
        [only] if only.timeline == start_timeline => Ok(only.end),
        [last, ..] => bail!(
            "the timeline changed during the backup (it began on timeline {start_timeline} and \
             ended on timeline {}: the upstream was promoted); the backup is not listed, take \
             it again",
            last.timeline
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_from_the_label_and_the_end_from_the_manifest() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nCHECKPOINT LOCATION: 0/9000060\nSTART TIMELINE: 1\n";
        assert_eq!(parse_start(label), Some((Lsn(0x9000028), 1)));
        // As PostgreSQL writes it (backup_manifest.c): one range per timeline the
        // backup spans, the ending timeline first.
        let tail = br#"...}],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/9000028", "End-LSN": "0/9000100" }
],
"Manifest-Checksum": "abc"}
"#;
        let one = wal_ranges(tail);
        assert_eq!(
            one,
            vec![WalRange {
                timeline: 1,
                start: Lsn(0x9000028),
                end: Lsn(0x9000100)
            }]
        );
        assert_eq!(backup_end(&one, 1).unwrap(), Lsn(0x9000100));
        assert!(wal_ranges(b"{}").is_empty());
        let err = backup_end(&[], 1).unwrap_err().to_string();
        assert!(err.contains("no WAL range"), "{err}");

        // A standby's backup across its upstream's promotion at 0/A000000.
        let switched = br#"...}],
"WAL-Ranges": [
{ "Timeline": 2, "Start-LSN": "0/A000000", "End-LSN": "0/B000060" },
{ "Timeline": 1, "Start-LSN": "0/9000028", "End-LSN": "0/A000000" }
],
"Manifest-Checksum": "abc"}
"#;
        let ranges = wal_ranges(switched);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].timeline, 2);
        let err = backup_end(&ranges, 1).unwrap_err().to_string();
        assert!(
            err.contains("began on timeline 1 and ended on timeline 2"),
            "{err}"
        );
        // One range, but not the label's timeline: refused too.
        let err = backup_end(&ranges[..1], 1).unwrap_err().to_string();
        assert!(err.contains("ended on timeline 2"), "{err}");
    }
}
