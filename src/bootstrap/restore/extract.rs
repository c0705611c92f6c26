//! Streaming a base backup's data objects out of the archive and into a directory:
//! download, decompress and untar in one pass, a bounded number of chunks in flight,
//! so that memory stays flat whatever the size of the backup.

use crate::wal::storage::{Backend, Bytes, StorageError};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Chunks between the download and the extraction (about 1 MiB each).
const IN_FLIGHT: usize = 8;

/// How a data object is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarCompression {
    /// `.tar.gz`.
    Gzip,
    /// `.tar`.
    None,
}

impl TarCompression {
    /// From the object's file name; `Err` names a compression pgwarden cannot read.
    pub fn of(name: &str) -> Result<TarCompression, String> {
        if name.ends_with(".tar.gz") {
            Ok(TarCompression::Gzip)
        } else if name.ends_with(".tar") {
            Ok(TarCompression::None)
        } else {
            Err(format!(
                "{name}: pgwarden restores gzip or uncompressed tars (take backups with barman-cloud-backup --gzip, or without compression)"
            ))
        }
    }
}

/// The extraction threads of one restore. They run on blocking threads, which go on
/// after the restore's future is dropped (a drill interrupted): a caller that removes
/// what they write waits for them first ([`Workers::ended`]). A thread whose restore
/// was dropped stops at its next read instead of writing the chunks still queued.
#[derive(Debug, Clone, Default)]
pub struct Workers(std::sync::Arc<()>);

impl Workers {
    /// Waits until no extraction thread of this restore runs, at most `limit`;
    /// whether they all ended.
    pub async fn ended(&self, limit: std::time::Duration) -> bool {
        let began = std::time::Instant::now();
        while std::sync::Arc::strong_count(&self.0) > 1 {
            if began.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

/// Sets its flag when dropped: held by a download feeding a thread, it tells the thread
/// that nobody waits for it any more.
struct Abandoned(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What flows from the download to the extraction.
enum Msg {
    Data(Bytes),
    End,
}

/// Reads the chunks the download sends; a download that stops without saying it
/// ended is an error, never a short file.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
    sha: Option<sha2::Sha256>,
    total: u64,
    /// The restore's, counting the bytes taken from the download.
    progress: std::sync::Arc<crate::progress::Progress>,
    /// Set when the restore stopped waiting: nothing more is read, so nothing more
    /// is written.
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            if self.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(io::Error::other("the restore was stopped"));
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.ended = true,
                None => return Err(io::Error::other("the download stopped")),
            }
        }
        let n = out.len().min(self.cur.len());
        let chunk = self.cur.split_to(n);
        if let Some(sha) = &mut self.sha {
            sha.update(&chunk);
        }
        self.total += n as u64;
        self.progress.add(n as u64);
        out[..n].copy_from_slice(&chunk);
        Ok(n)
    }
}

/// How many times in a row a part's download is resumed after a transient failure
/// (a connection reset, a 5xx) without receiving a byte in between.
pub const RESUMES: u32 = 5;

/// Extracts the object `key` into `dest`; returns the SHA-256 (hex) and size of the
/// object as stored. The bytes read from the object are added to `progress` as they
/// are taken. A download that fails midway is resumed from the byte received (see
/// [`RESUMES`]), only if the object is still the one it began reading.
pub async fn extract(
    storage: &Backend,
    key: &str,
    compression: TarCompression,
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &Workers,
    dest: &Path,
) -> Result<(String, u64)> {
    let dest = dest.to_path_buf();
    extract_with(storage, key, compression, progress, workers, move |tar| {
        archive(tar).unpack(&dest)
    })
    .await
}

/// Streams the object `key` through `handle`, which reads the tar from the reader it
/// is given and writes it (a restore of an incremental backup's chain writes block by
/// block); returns the SHA-256 (hex) and size of the object as stored. A download that
/// fails midway is resumed as [`extract`]'s is.
pub async fn extract_with<F>(
    storage: &Backend,
    key: &str,
    compression: TarCompression,
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &Workers,
    handle: F,
) -> Result<(String, u64)>
where
    F: FnOnce(&mut dyn Read) -> io::Result<()> + Send + 'static,
{
    let key_owned = key.to_owned();
    stream(
        storage,
        key,
        (0, None),
        true,
        progress,
        workers,
        move |chunks| {
            untar(chunks, compression, handle).with_context(|| format!("extract {key_owned}"))
        },
    )
    .await
}

/// Streams bytes `from..until` (`None`: to the end) of the object `key` through
/// `handle`, on a blocking thread, and returns what it returned; `handle` may stop
/// reading once it has what it needs. The bytes read are added to `progress`. A
/// download that fails midway is resumed as [`extract`]'s is.
pub async fn read_range<T, F>(
    storage: &Backend,
    key: &str,
    (from, until): (u64, Option<u64>),
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &Workers,
    handle: F,
) -> Result<T>
where
    F: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let key_owned = key.to_owned();
    stream(
        storage,
        key,
        (from, until),
        false,
        progress,
        workers,
        move |mut chunks| {
            handle(&mut chunks).with_context(|| format!("read {key_owned} from byte {from}"))
        },
    )
    .await
}

/// Downloads the bytes `range` of `key` into the chunks `work` reads on a blocking
/// thread (hashing them with SHA-256 when `sha`), and returns what `work` returned.
async fn stream<T, F>(
    storage: &Backend,
    key: &str,
    range: (u64, Option<u64>),
    sha: bool,
    progress: &std::sync::Arc<crate::progress::Progress>,
    workers: &Workers,
    work: F,
) -> Result<T>
where
    F: FnOnce(Chunks) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (download, version) = storage
        .download_range(key, range.0, range.1, None)
        .await
        .with_context(|| format!("read {key}"))?
        .with_context(|| format!("{key} is not in the archive"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let abandoned = Abandoned(Default::default());
    let chunks = Chunks {
        rx,
        cur: Bytes::new(),
        ended: false,
        sha: sha.then(sha2::Sha256::new),
        total: 0,
        progress: progress.clone(),
        abandoned: abandoned.0.clone(),
    };
    let alive = workers.0.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let _alive = alive;
        work(chunks)
    });
    let fed = feed(storage, key, download, range, &version, tx).await;
    let done = worker.await.context("the extraction thread failed")?;
    drop(abandoned);
    // A failed download cuts the work short: its own error says more.
    fed.with_context(|| format!("read {key}"))?;
    done
}

/// Sends the download's chunks (of the bytes `range` of the object) until its end, or
/// until the extraction stops reading; resumes a download that fails midway with a
/// ranged read of the same version.
async fn feed(
    storage: &Backend,
    key: &str,
    mut download: crate::wal::storage::Download,
    range: (u64, Option<u64>),
    version: &str,
    tx: tokio::sync::mpsc::Sender<Msg>,
) -> Result<(), StorageError> {
    let mut received = 0u64;
    let mut failures = 0u32;
    let wanted = range.1.map(|until| until.saturating_sub(range.0));
    loop {
        // A bounded read that has its bytes is done, even if the stream then failed.
        if wanted.is_some_and(|w| received >= w) {
            let _ = tx.send(Msg::End).await;
            return Ok(());
        }
        let msg = match download.chunk().await {
            Ok(Some(b)) => {
                received += b.len() as u64;
                failures = 0;
                Msg::Data(b)
            }
            Ok(None) => Msg::End,
            Err(e) => {
                let from = range.0 + received;
                download = resume(storage, key, (from, range.1), version, &mut failures, e).await?;
                continue;
            }
        };
        let end = matches!(msg, Msg::End);
        if tx.send(msg).await.is_err() || end {
            return Ok(());
        }
    }
}

/// Opens `key` again from byte `range.0` (up to `range.1`), after `failed`; gives up
/// after [`RESUMES`] failures in a row, on an error that is not transient, or when the
/// object changed.
async fn resume(
    storage: &Backend,
    key: &str,
    range: (u64, Option<u64>),
    version: &str,
    failures: &mut u32,
    mut failed: StorageError,
) -> Result<crate::wal::storage::Download, StorageError> {
    loop {
        if !failed.is_transient() || *failures >= RESUMES {
            return Err(failed);
        }
        *failures += 1;
        tracing::warn!(key, received = range.0, attempt = *failures, error = %failed, "a part's download failed midway; resuming it from the byte received");
        tokio::time::sleep(std::time::Duration::from_millis(200 << (*failures).min(5))).await;
        match storage
            .download_range(key, range.0, range.1, Some(version))
            .await
        {
            Ok(Some((d, _))) => return Ok(d),
            Ok(None) => {
                return Err(StorageError::Fatal(format!(
                    "{key} was removed while it was being downloaded"
                )))
            }
            Err(e) => failed = e,
        }
    }
}

/// Feeds `input`, decompressed, to `handle` (which untars it), then reads it to its
/// end so that the gzip trailer's CRC and the whole object's SHA-256 are checked;
/// returns the SHA-256 and the object's size. A
/// gzip object is inflated on a thread of its own, a few chunks ahead of the untarring
/// (file creation and writes): each is about half the work, and one thread doing both
/// left a core idle.
fn untar<F>(input: Chunks, compression: TarCompression, handle: F) -> Result<(String, u64)>
where
    F: FnOnce(&mut dyn Read) -> io::Result<()>,
{
    match compression {
        TarCompression::Gzip => {
            let (tx, rx) = std::sync::mpsc::sync_channel(INFLATED_IN_FLIGHT);
            let inflater = std::thread::Builder::new()
                .name("pgwarden-inflate".into())
                .spawn(move || inflate(input, tx))
                .context("start the inflating thread")?;
            let mut inflated = Inflated {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            let unpacked = handle(&mut inflated);
            // The rest (the tar's end blocks), so that the inflater reaches the trailer.
            let drained =
                unpacked.and_then(|()| io::copy(&mut inflated, &mut io::sink()).map(|_| ()));
            // Closed before the join: after a failed untarring the inflater may be
            // waiting to send into the full channel, and only its closing ends it.
            drop(inflated);
            let inflated = inflater
                .join()
                .map_err(|_| anyhow::anyhow!("the inflating thread panicked"))?;
            // The inflater's error says more (a damaged gzip stream, a cut download)
            // than what the untarring saw of it.
            let (sha, total) = inflated.context("the gzip stream is damaged")?;
            drained?;
            Ok((sha, total))
        }
        TarCompression::None => {
            let mut input = input;
            handle(&mut input)?;
            io::copy(&mut input, &mut io::sink())?;
            Ok(finish(input))
        }
    }
}

/// Inflated chunks between the inflating thread and the untarring one (1 MiB each).
const INFLATED_IN_FLIGHT: usize = 4;
const INFLATED_CHUNK: usize = 1 << 20;

/// The SHA-256 (hex) and size of what `c` read.
fn finish(mut c: Chunks) -> (String, u64) {
    let sha = c.sha.take().unwrap_or_default();
    (crate::wal::hex(&sha.finalize()), c.total)
}

/// Inflates `input` to its end into `tx`; stops early, without error, when the
/// untarring stops reading. An error is sent on too, so that the reader fails rather
/// than see a short stream.
fn inflate(
    input: Chunks,
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
) -> io::Result<(String, u64)> {
    let mut gz = flate2::read::MultiGzDecoder::new(input);
    loop {
        let mut buf = vec![0u8; INFLATED_CHUNK];
        let mut n = 0;
        while n < buf.len() {
            match gz.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            }
        }
        if n == 0 {
            return Ok(finish(gz.into_inner()));
        }
        buf.truncate(n);
        if tx.send(Ok(buf)).is_err() {
            // The untarring failed and said why; the object's checks no longer matter.
            return Ok(finish(gz.into_inner()));
        }
    }
}

/// Reads what the inflating thread sends.
struct Inflated {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Inflated {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk?;
                    self.pos = 0;
                }
                // The inflater ended: after its last chunk, or on an error it sent.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A tar reader set as every restore reads: modes and times kept, nothing
/// overwritten, no extended attributes.
pub fn archive<R: Read>(r: R) -> ::tar::Archive<R> {
    let mut ar = ::tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(false);
    ar
}

/// Files of the source instance that must not carry over into a restored one: its
/// signal files (the restore writes its own), and pgwarden's notes about the source's
/// own archive, its fencing and a rewind that failed there.
pub const NOT_RESTORED: &[&str] = &[
    "standby.signal",
    "recovery.signal",
    "postmaster.pid",
    "postmaster.opts",
    crate::wal::identity::CHECKED_NOTE,
    crate::wal::capability::NOTE,
    crate::supervisor::commands::FENCE_MARKER,
    crate::pgdata::REWIND_KEPT,
    crate::pgdata::INCARNATION,
];

/// Checks that `dir` holds a base backup of PostgreSQL `major` and tidies it for
/// recovery: the source's signal files and notes removed, `pg_wal/archive_status` there.
pub fn prepare(dir: &Path, major: u32) -> Result<()> {
    let version = std::fs::read_to_string(dir.join("PG_VERSION"))
        .context("the backup has no PG_VERSION: is it a base backup?")?;
    let version = version.trim();
    if version != major.to_string() {
        bail!("the backup is of PostgreSQL {version} but the binaries are PostgreSQL {major}; point PGWARDEN_PG_BINDIR at PostgreSQL {version} binaries");
    }
    for needed in ["global/pg_control", "backup_label"] {
        if !dir.join(needed).is_file() {
            bail!("the backup has no {needed}; it cannot be recovered");
        }
    }
    for name in NOT_RESTORED {
        let p: PathBuf = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::info!(
                file = name,
                "not restored: it belongs to the source instance"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
    let _ = std::fs::remove_dir_all(dir.join(crate::wal::daemon::SPOOL_DIR));
    std::fs::create_dir_all(dir.join("pg_wal/archive_status")).context("create pg_wal")?;
    Ok(())
}

#[cfg(test)]
mod untar_tests {
    use super::*;
    use std::io::Write;

    /// A gzip stream of `n` MiB of zeros, in 64 KiB chunks for a [`Chunks`] reader.
    fn feed_gzip(n: usize) -> tokio::sync::mpsc::Receiver<Msg> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for _ in 0..n {
            gz.write_all(&vec![0u8; 1 << 20]).unwrap();
        }
        let body = gz.finish().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        std::thread::spawn(move || {
            for c in body.chunks(64 << 10) {
                if tx
                    .blocking_send(Msg::Data(Bytes::copy_from_slice(c)))
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx.blocking_send(Msg::End);
        });
        rx
    }

    #[test]
    fn a_failed_untarring_of_a_gzip_part_fails_instead_of_hanging() {
        // Far more inflated data than the channel between the threads holds, and an
        // untarring that fails at once (a full disk, a damaged tar).
        let rx = feed_gzip(4 * INFLATED_IN_FLIGHT);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let input = Chunks {
                rx,
                cur: Bytes::new(),
                ended: false,
                sha: Some(sha2::Sha256::new()),
                total: 0,
                progress: Default::default(),
                abandoned: Default::default(),
            };
            let r = untar(input, TarCompression::Gzip, |_| {
                Err(io::Error::other("no space left on device"))
            });
            let _ = done_tx.send(r.map(|_| ()).map_err(|e| format!("{e:#}")));
        });
        let r = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("untar returned");
        assert!(r.unwrap_err().contains("no space left"));
    }

    #[test]
    fn an_abandoned_extraction_reads_nothing_more() {
        let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        tx.try_send(Msg::Data(Bytes::from_static(b"queued")))
            .unwrap();
        let abandoned = Abandoned(Default::default());
        let mut input = Chunks {
            rx,
            cur: Bytes::new(),
            ended: false,
            sha: None,
            total: 0,
            progress: Default::default(),
            abandoned: abandoned.0.clone(),
        };
        drop(abandoned);
        let mut buf = [0u8; 16];
        let e = input.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("the restore was stopped"), "{e}");
        assert_eq!(input.total, 0, "the queued chunk was not taken");
    }

    #[tokio::test]
    async fn workers_end_when_their_threads_do() {
        let w = Workers::default();
        assert!(w.ended(std::time::Duration::ZERO).await);
        let held = w.0.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(held);
        });
        assert!(w.ended(std::time::Duration::from_secs(10)).await);
        t.join().unwrap();
        let held = w.0.clone();
        assert!(!w.ended(std::time::Duration::from_millis(20)).await);
        drop(held);
    }
}
