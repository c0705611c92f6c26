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
    backup_id, barman_time, info::BackupInfo, BackupCompression, BackupStatus, Finished, Lsn,
    Running,
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
}

async fn server_facts(s: &Settings) -> Result<ServerFacts> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num'), \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await
        .context("read the server's version and system identifier")?;
    Ok(ServerFacts {
        version: row.get::<_, String>(0).parse().unwrap_or(0),
        systemid: row.get(1),
        seg_size: row.get::<_, i64>(2) as u64,
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
        let id = self.free_id(begin).await?;
        self.progress(|st| {
            st.running = Some(Running {
                backup_id: id.clone(),
                bytes: 0,
            })
        });
        let result = self.take(&id, begin).await;
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

    /// A backup id no backup has yet (barman's ids have a one-second resolution).
    async fn free_id(&self, t: SystemTime) -> Result<String> {
        let base = super::base_prefix(&self.archive.base());
        for step in 0..30 {
            let id = backup_id(t + Duration::from_secs(step));
            if self
                .storage
                .list(&format!("{base}{id}/"), 1)
                .await?
                .is_empty()
            {
                return Ok(id);
            }
        }
        bail!("no free backup id near {}", backup_id(t))
    }

    async fn take(&self, id: &str, begin: SystemTime) -> Result<BackupInfo> {
        let s = self.settings;
        let facts = server_facts(s).await?;
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
        let end = streamed
            .manifest_end
            .as_deref()
            .and_then(manifest_end_lsn)
            .context("pg_basebackup's backup_manifest gives no WAL end position")?;
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
            systemid: facts.systemid,
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
                (
                    "pgwarden_version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ]
            .into(),
        };
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

/// The last `"End-LSN": "X/X"` in the end of a backup manifest.
fn manifest_end_lsn(tail: &[u8]) -> Option<Lsn> {
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind("\"End-LSN\"")?;
    let rest = &text[at + "\"End-LSN\"".len()..];
    let value = rest.split('"').nth(1)?;
    Lsn::parse(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_from_the_label_and_the_end_from_the_manifest() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nCHECKPOINT LOCATION: 0/9000060\nSTART TIMELINE: 1\n";
        assert_eq!(parse_start(label), Some((Lsn(0x9000028), 1)));
        let tail = br#"...}],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/9000028", "End-LSN": "0/9000100" }
],
"Manifest-Checksum": "abc"}
"#;
        assert_eq!(manifest_end_lsn(tail), Some(Lsn(0x9000100)));
        assert_eq!(manifest_end_lsn(b"{}"), None);
    }
}
