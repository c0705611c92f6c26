//! Delta restore: restoring a backup over a directory that already holds a copy of the
//! same cluster (a replica being rebuilt, a diverged former primary), as pgBackRest's
//! `--delta` does, but finer: each file is compared with the backup 1 MiB window by
//! window, against the XXH3-128s in its part's index ([`crate::backup::engine::index`]),
//! and only the windows that differ are read from the archive, with ranged reads that
//! start at the part's seek points. Files the manifest does not list are removed.
//! Every window kept has the backup's XXH3-128 (the same bytes), every window written
//! its XXH3-128 and CRC-32C, and the windows' CRC-32Cs put together are the manifest's
//! for the file: every file is then checked against the manifest as pg_verifybackup
//! checks it, without reading the cluster once more.
//!
//! Only ever over a copy of this very cluster: the directory's `global/pg_control`
//! must carry the backup's system identifier and its `PG_VERSION` the same major
//! version, and no postmaster may be running on it. Otherwise it is refused before
//! anything in it is touched.
//!
//! `global/pg_control` and `backup_label` are always written from the backup, and the
//! old `pg_control` is removed first: a delta restore cut short leaves a directory
//! postgres refuses to start, never a mix of old and new files that looks consistent.

use crate::backup::engine::index::{File as IndexedFile, PartIndex, Seek, WINDOW};
use crate::backup::engine::manifest::File as ManifestFile;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Files always written from the backup, whatever the directory holds.
pub const ALWAYS_FETCHED: &[&str] = &["global/pg_control", "backup_label"];

/// Directories kept (emptied) even with no file of the backup in them: the WAL
/// daemon of a running pgwarden holds `pg_wal` open (see `crate::wal::local`), and a
/// rebuilt replica's must stay the directory it archives from.
pub const KEPT_DIRS: &[&str] = &["pg_wal", "pg_wal/archive_status"];

/// Why a directory cannot be restored over with a delta; nothing in it was touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A postmaster is running on it.
    #[error(
        "{0}: postgres is running on it (postmaster.pid names live process {1}); stop it first"
    )]
    Running(String, i32),
    /// It is not a PostgreSQL data directory, or one of another cluster or version.
    #[error("{0}: {1}; a delta restore only goes over a copy of the backup's own cluster")]
    NotACopy(String, String),
    /// It holds what a delta restore does not handle (a linked WAL directory, tablespaces).
    #[error("{0}: {1}; a delta restore handles neither yet")]
    Unsupported(String, String),
}

/// The system identifier in a `pg_control` file (its first 8 bytes, in the byte order
/// of the machine that wrote it, which is this one's: a data directory is not portable).
pub fn system_identifier(pg_control: &[u8]) -> Option<u64> {
    let b: [u8; 8] = pg_control.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(b))
}

/// Checks that `dir` holds a stopped copy of the cluster `system_id` of PostgreSQL
/// `major`; reads only. `Err` says why not.
pub fn check_copy(dir: &Path, system_id: u64, major: u32) -> Result<(), Refused> {
    let shown = dir.display().to_string();
    let not = |why: String| Refused::NotACopy(shown.clone(), why);
    if let Ok(pid) = std::fs::read_to_string(dir.join("postmaster.pid")) {
        if let Some(pid) = pid
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        {
            // A stale file (postgres killed) names a process that is gone.
            if pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                return Err(Refused::Running(shown, pid));
            }
        }
    }
    // A discarded cluster (see crate::bootstrap::discard) has lost its top-level
    // PG_VERSION, never its databases'.
    let version = std::fs::read_to_string(dir.join("PG_VERSION"))
        .or_else(|_| std::fs::read_to_string(dir.join("base/1/PG_VERSION")))
        .map_err(|_| not("it holds no PG_VERSION: it is not a PostgreSQL data directory".into()))?;
    if version.trim() != major.to_string() {
        return Err(not(format!(
            "it is a data directory of PostgreSQL {}, the backup is of PostgreSQL {major}",
            version.trim()
        )));
    }
    let control = std::fs::read(dir.join("global/pg_control"))
        .map_err(|e| not(format!("cannot read global/pg_control: {e}")))?;
    let theirs =
        system_identifier(&control).ok_or_else(|| not("global/pg_control is too short".into()))?;
    if theirs != system_id {
        return Err(not(format!(
            "it holds the cluster with system identifier {theirs}, the backup is of {system_id}"
        )));
    }
    for linked in ["pg_wal", "pg_tblspc"] {
        let p = dir.join(linked);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Refused::Unsupported(
                shown,
                format!("{linked} is a symbolic link"),
            ));
        }
    }
    if std::fs::read_dir(dir.join("pg_tblspc")).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Refused::Unsupported(shown, "it has tablespaces".into()));
    }
    Ok(())
}

/// A backup's data part, with its index.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its key in the archive.
    pub key: String,
    /// gzip (else uncompressed).
    pub gzip: bool,
    /// Bytes stored.
    pub size: u64,
    /// Where each window of each of its files is.
    pub index: PartIndex,
}

/// A window of a file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// The file, relative to the directory (shared by its windows).
    pub path: std::sync::Arc<str>,
    /// Where the window begins in the file.
    pub at: u64,
    /// Its length.
    pub len: u64,
    /// Where it begins in its part's tar.
    pub tar: u64,
    /// Its checksums, checked before it is written (see [`same_window`]).
    pub window: crate::backup::engine::index::Window,
}

/// One ranged read of a part: from a seek point to where its windows end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The part, an index into the parts given to [`prepare`].
    pub part: usize,
    /// Where the read starts.
    pub start: Seek,
    /// Where it ends in the object (exclusive); `None`: its end.
    pub until: Option<u64>,
    /// The windows it brings, in tar order.
    pub needs: Vec<Need>,
}

impl Fetch {
    /// Bytes of the object it reads.
    pub fn stored(&self, parts: &[Part]) -> u64 {
        let end = self
            .until
            .unwrap_or_else(|| parts.get(self.part).map_or(0, |p| p.size));
        end.saturating_sub(self.start.stored)
    }
}

/// What a delta restore keeps, and what it reads to write the rest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Files kept as they are.
    pub kept_files: u64,
    /// Bytes kept (of those files and of the matching windows of the others).
    pub kept_bytes: u64,
    /// Files with a window to write, or made, or cut or extended to their size.
    pub fetch_files: u64,
    /// Bytes to write.
    pub fetch_bytes: u64,
    /// Files removed because the manifest does not list them.
    pub removed: u64,
    /// The reads that bring the windows to write, in part and tar order.
    pub fetches: Vec<Fetch>,
    /// Files written to, with the modification time and mode they get afterwards.
    pub touched: Vec<(String, i64, u32)>,
}

/// Reads further than needed rather than start another read, up to this many bytes.
const GAP: u64 = 256 << 10;

/// Where each file of the manifest is: its part and entry in that part's index.
pub type Located = BTreeMap<String, (usize, usize)>;

/// Finds every file of the manifest in the parts' indexes; `Err` says why a delta
/// restore cannot rely on them (a file not indexed, or indexed with another size or
/// with windows whose checksums do not add up to the manifest's, a file or directory
/// path that leaves the directory, an index without a seek point). Reads nothing.
pub fn locate(files: &[ManifestFile], parts: &[Part]) -> Result<Located, String> {
    let mut at: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (p, part) in parts.iter().enumerate() {
        if part.gzip && part.index.seeks.is_empty() {
            return Err(format!("the index of {} has no seek point", part.key));
        }
        for d in &part.index.dirs {
            super::chain::safe(Path::new(&d.path)).map_err(|e| e.to_string())?;
        }
        for (i, f) in part.index.files.iter().enumerate() {
            at.insert(f.path.as_str(), (p, i));
        }
    }
    let mut out = Located::new();
    for f in files {
        super::chain::safe(Path::new(&f.path)).map_err(|e| e.to_string())?;
        let &(p, i) = at
            .get(f.path.as_str())
            .ok_or_else(|| format!("{} is in the manifest but in no part's index", f.path))?;
        let entry = &parts[p].index.files[i];
        if entry.size != f.size {
            return Err(format!(
                "{} has {} bytes in the manifest but {} in the index of {}",
                f.path, f.size, entry.size, parts[p].key
            ));
        }
        // The windows' checksums put together must be the manifest's for the file:
        // then a file whose every window matches or was fetched matches the manifest.
        let whole = (0..entry.windows.len()).fold(0, |crc, k| {
            let len = entry.span(k).1 as usize;
            crc32c::crc32c_combine(crc, entry.windows[k].crc32c, len)
        });
        if whole != f.crc32c {
            return Err(format!(
                "{}: the checksums of the index of {} do not add up to the manifest's",
                f.path, parts[p].key
            ));
        }
        out.insert(f.path.clone(), (p, i));
    }
    Ok(out)
}

/// Prepares `dir`, a checked copy of the cluster (see [`check_copy`]), for a delta
/// restore from a backup whose manifest lists `files`, found in `parts` by [`locate`]:
/// `pg_control` removed first, then every file and directory the backup does not have,
/// the backup's directories made, each file cut or extended to its size; and returns
/// the windows to fetch, those whose XXH3-128 differs from the index's. Files kept keep
/// their mode and time; directories that were there keep their mode. Compares with
/// `jobs` threads. Runs on a blocking thread.
pub fn prepare(
    dir: &Path,
    files: &[ManifestFile],
    parts: &[Part],
    located: &Located,
    jobs: usize,
) -> Result<Delta> {
    // First, so that a delta restore cut short cannot start (the fetches bring the
    // backup's pg_control back).
    crate::fsutil::remove_if_present(&dir.join("global/pg_control"))
        .context("remove global/pg_control")?;
    crate::fsutil::fsync_dir(&dir.join("global"))?;
    let listed: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut dirs: std::collections::HashSet<String> = parts
        .iter()
        .flat_map(|p| p.index.dirs.iter().map(|d| d.path.clone()))
        .collect();
    for f in files {
        let mut p = Path::new(&f.path);
        while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_string_lossy().into_owned());
            p = parent;
        }
    }
    let mut d = Delta::default();
    tidy(dir, "", &listed, &dirs, &mut d)?;
    let mut modes: Vec<(&str, u32)> = parts
        .iter()
        .flat_map(|p| p.index.dirs.iter().map(|d| (d.path.as_str(), d.mode)))
        .collect();
    modes.sort_by_key(|(p, _)| p.len());
    for (path, mode) in modes {
        let full = dir.join(super::chain::safe(Path::new(path))?);
        if !full.is_dir() {
            std::fs::create_dir_all(&full).with_context(|| format!("create {}", full.display()))?;
            std::fs::set_permissions(&full, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .with_context(|| format!("set the mode of {}", full.display()))?;
        }
    }

    // Each file compared window by window, by `jobs` threads taking the next file.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let compared: Vec<Result<Vec<(usize, Compared)>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, Compared)>> {
                    let mut buf = vec![0u8; WINDOW as usize];
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(f) = files.get(i) else {
                            return Ok(out);
                        };
                        let (p, e) = located[&f.path];
                        let entry = &parts[p].index.files[e];
                        let always = ALWAYS_FETCHED.contains(&f.path.as_str());
                        let c = compare(&dir.join(&f.path), entry, always, &mut buf)
                            .with_context(|| format!("compare {}", f.path))?;
                        out.push((i, c));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a comparing thread panicked")))
            })
            .collect()
    });
    let mut by_part: Vec<Vec<Need>> = vec![Vec::new(); parts.len()];
    for worker in compared {
        for (i, c) in worker? {
            let f = &files[i];
            let (p, e) = located[&f.path];
            let entry = &parts[p].index.files[e];
            d.kept_bytes += c.kept;
            if c.fetch.is_empty() && !c.written {
                d.kept_files += 1;
                continue;
            }
            d.fetch_files += 1;
            d.touched.push((f.path.clone(), entry.mtime, entry.mode));
            let path: std::sync::Arc<str> = f.path.as_str().into();
            for k in c.fetch {
                let (at, len) = entry.span(k);
                d.fetch_bytes += len;
                by_part[p].push(Need {
                    path: path.clone(),
                    at,
                    len,
                    tar: entry.windows[k].tar,
                    window: entry.windows[k],
                });
            }
        }
    }
    for (p, mut needs) in by_part.into_iter().enumerate() {
        needs.sort_by_key(|n| n.tar);
        d.fetches.extend(plan_reads(p, &parts[p], needs)?);
    }
    Ok(d)
}

/// Groups a part's windows (in tar order) into ranged reads: one read goes on through
/// a gap of less than [`GAP`] stored bytes rather than start another.
fn plan_reads(p: usize, part: &Part, needs: Vec<Need>) -> Result<Vec<Fetch>> {
    let mut out: Vec<Fetch> = Vec::new();
    for n in needs {
        let (start, until) = part
            .index
            .stored_range(n.tar, n.tar + n.len, part.gzip)
            .with_context(|| format!("the index of {} has no seek point", part.key))?;
        if let Some(cur) = out.last_mut() {
            // The windows come in tar order: a read that reaches near this one's
            // start goes on to its end.
            if cur
                .until
                .is_none_or(|end| start.stored <= end.saturating_add(GAP))
            {
                cur.until = cur.until.zip(until).map(|(a, b)| a.max(b));
                cur.needs.push(n);
                continue;
            }
        }
        out.push(Fetch {
            part: p,
            start,
            until,
            needs: vec![n],
        });
    }
    Ok(out)
}

/// What the comparison of one file found.
#[derive(Debug, Default)]
struct Compared {
    /// Windows to fetch.
    fetch: Vec<usize>,
    /// Bytes of the windows that match.
    kept: u64,
    /// The file was made, or cut or extended to its size.
    written: bool,
}

/// Whether `bytes` are the backup's `window`: the same XXH3-128, so that no differing
/// window passes for the same, and the same CRC-32C, which ties them to the manifest.
fn same_window(bytes: &[u8], window: &crate::backup::engine::index::Window) -> bool {
    xxhash_rust::xxh3::xxh3_128(bytes) == window.xxh3 && crc32c::crc32c(bytes) == window.crc32c
}

/// Compares the file at `path` with its index entry, window by window by their
/// XXH3-128 (all of them fetched when `always`), and gives it the entry's size.
fn compare(path: &Path, entry: &IndexedFile, always: bool, buf: &mut [u8]) -> Result<Compared> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut c = Compared::default();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Made by the first window written to it ([`apply`]), so that a missing
            // pg_control stays missing until the backup's is written whole.
            c.written = true;
            c.fetch = (0..entry.windows.len()).collect();
            if entry.size == 0 {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(entry.mode)
                    .open(path)?;
            }
            return Ok(c);
        }
        Err(e) => return Err(e.into()),
    };
    let have = file.metadata()?.len();
    for k in 0..entry.windows.len() {
        let (at, len) = entry.span(k);
        let same = !always && at + len <= have && {
            let b = &mut buf[..len as usize];
            file.read_exact_at(b, at)?;
            // The hash alone: equal XXH3-128s are equal bytes, whose CRC-32C is then
            // the index's too (a second pass over every kept byte would add nothing).
            xxhash_rust::xxh3::xxh3_128(b) == entry.windows[k].xxh3
        };
        if same {
            c.kept += len;
        } else {
            c.fetch.push(k);
        }
    }
    if have != entry.size {
        file.set_len(entry.size)?;
        c.written = true;
    }
    Ok(c)
}

/// Removes under `dir/rel` every file `listed` does not name and every directory not
/// in `dirs` (nor in [`KEPT_DIRS`]).
fn tidy(
    root: &Path,
    rel: &str,
    listed: &std::collections::HashSet<&str>,
    dirs: &std::collections::HashSet<String>,
    d: &mut Delta,
) -> Result<()> {
    let here = root.join(rel);
    for entry in std::fs::read_dir(&here).with_context(|| format!("read {}", here.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let full = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if dirs.contains(&path) || KEPT_DIRS.contains(&path.as_str()) {
                tidy(root, &path, listed, dirs, d)?;
            } else {
                std::fs::remove_dir_all(&full)
                    .with_context(|| format!("remove {}", full.display()))?;
            }
            continue;
        }
        // A link or a socket a backup never holds as such goes too.
        if !(kind.is_file() && listed.contains(path.as_str())) {
            d.removed += 1;
            std::fs::remove_file(&full).with_context(|| format!("remove {}", full.display()))?;
        }
    }
    Ok(())
}

/// Writes the windows `needs` from `tar` (a part's tar from offset `start` on),
/// checking each against its checksums; returns the bytes written. Runs on a blocking
/// thread.
pub fn apply(tar: &mut dyn Read, dir: &Path, start: u64, needs: &[Need]) -> std::io::Result<u64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut pos = start;
    let mut buf = vec![0u8; WINDOW as usize];
    let mut open: Option<(&str, std::fs::File)> = None;
    let mut written = 0;
    for n in needs {
        let skip = n
            .tar
            .checked_sub(pos)
            .ok_or_else(|| std::io::Error::other("the windows to fetch are out of order"))?;
        if std::io::copy(&mut tar.take(skip), &mut std::io::sink())? != skip {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let b = &mut buf[..n.len as usize];
        tar.read_exact(b)?;
        pos = n.tar + n.len;
        if !same_window(b, &n.window) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: the bytes at offset {} do not match the part's index: the backup is damaged",
                    n.path, n.at
                ),
            ));
        }
        let file = match open.take() {
            Some((p, f)) if p == &*n.path => (p, f),
            _ => (
                &*n.path,
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(dir.join(&*n.path))?,
            ),
        };
        file.1.write_all_at(b, n.at)?;
        open = Some(file);
        written += n.len;
    }
    Ok(written)
}

/// Gives the files written to their modification time back (writing set it to now),
/// and their mode (a file [`apply`] made has 0600).
pub fn restore_times(dir: &Path, touched: &[(String, i64, u32)]) -> Result<()> {
    for (path, mtime, mode) in touched {
        let full = dir.join(path);
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(*mtime).unwrap_or(0));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&full)
            .and_then(|f| {
                f.set_modified(t)?;
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(*mode))
            })
            .with_context(|| format!("set the modification time of {}", full.display()))?;
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::engine::manifest::File;

    fn file(path: &str, body: &[u8]) -> File {
        File {
            path: path.into(),
            size: body.len() as u64,
            mtime: 0,
            crc32c: crc32c::crc32c(body),
        }
    }

    fn cluster(dir: &Path, system_id: u64) {
        std::fs::create_dir_all(dir.join("global")).unwrap();
        std::fs::create_dir_all(dir.join("base/1")).unwrap();
        std::fs::create_dir_all(dir.join("pg_tblspc")).unwrap();
        std::fs::write(dir.join("PG_VERSION"), "18\n").unwrap();
        std::fs::write(dir.join("base/1/PG_VERSION"), "18\n").unwrap();
        let mut control = system_id.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(dir.join("global/pg_control"), control).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_stopped_copy_of_the_cluster() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        assert!(
            matches!(check_copy(dir, 7, 18), Err(Refused::NotACopy(_, w)) if w.contains("no PG_VERSION"))
        );
        cluster(dir, 7);
        assert_eq!(check_copy(dir, 7, 18), Ok(()));
        let e = check_copy(dir, 8, 18).unwrap_err().to_string();
        assert!(e.contains("system identifier 7, the backup is of 8"), "{e}");
        let e = check_copy(dir, 7, 15).unwrap_err().to_string();
        assert!(
            e.contains("PostgreSQL 18, the backup is of PostgreSQL 15"),
            "{e}"
        );
        // A discarded cluster (no top-level PG_VERSION) is still recognised.
        std::fs::remove_file(dir.join("PG_VERSION")).unwrap();
        assert_eq!(check_copy(dir, 7, 18), Ok(()));
        // A live postmaster (this very process), and a stale pid file.
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), dir.display()),
        )
        .unwrap();
        assert!(matches!(check_copy(dir, 7, 18), Err(Refused::Running(..))));
        std::fs::write(dir.join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(check_copy(dir, 7, 18), Ok(()));
        std::os::unix::fs::symlink("/nonexistent", dir.join("pg_tblspc/16384")).unwrap();
        assert!(matches!(
            check_copy(dir, 7, 18),
            Err(Refused::Unsupported(..))
        ));
    }

    /// A part holding `files` and the directory `base/5`, written as the backup
    /// engine writes one, and its index.
    fn part(files: &[(&str, Vec<u8>)], gzip: bool) -> (Vec<u8>, Part) {
        use crate::backup::engine::index::{self, Compressor, SeekableGz, Sink};
        let rec: index::Shared = Default::default();
        let out = if gzip {
            Compressor::Gzip(Box::new(SeekableGz::new(Vec::new(), 1).unwrap()))
        } else {
            Compressor::Plain(Vec::new())
        };
        let mut tar = ::tar::Builder::new(Sink::new(out, Some(rec.clone())));
        rec.borrow_mut().dir("base/5", 0o700);
        let mut h = index::tar_header(0o700, 0, 0, ::tar::EntryType::Directory);
        tar.append_data(&mut h, "base/5/", std::io::empty())
            .unwrap();
        for (path, body) in files {
            index::append_file(
                &mut tar,
                path,
                body.as_slice(),
                0o600,
                1_700_000_000,
                body.len() as u64,
            )
            .unwrap();
        }
        let stored = match tar.into_inner().unwrap().out {
            Compressor::Gzip(g) => g.finish().unwrap(),
            Compressor::Plain(v) => v,
        };
        let index = rec.borrow_mut().finish().unwrap();
        let part = Part {
            key: "b/data.tar".into(),
            gzip,
            size: stored.len() as u64,
            index,
        };
        (stored, part)
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// What fetch_delta does for `f`, from the part's bytes `stored`: writes `needs`.
    fn read_into(
        stored: &[u8],
        gzip: bool,
        f: &Fetch,
        dir: &Path,
        needs: &[Need],
    ) -> std::io::Result<u64> {
        let end = f.until.map_or(stored.len(), |u| u as usize);
        let bytes = &stored[f.start.stored as usize..end];
        if gzip {
            apply(
                &mut flate2::read::DeflateDecoder::new(bytes),
                dir,
                f.start.tar,
                needs,
            )
        } else {
            apply(&mut &bytes[..], dir, f.start.tar, needs)
        }
    }

    #[test]
    fn a_delta_fetches_only_the_windows_that_differ_and_ends_byte_for_byte() {
        let mut control = 7u64.to_ne_bytes().to_vec();
        control.resize(8192, 1);
        let big = noise(2 * WINDOW as usize + 4000, 1);
        let backup: Vec<(&str, Vec<u8>)> = vec![
            ("PG_VERSION", b"18\n".to_vec()),
            ("base/1/PG_VERSION", b"18\n".to_vec()),
            ("base/5/big", big.clone()),
            ("base/5/small", b"small and the same".to_vec()),
            ("base/5/grown", noise(5000, 2)),
            ("base/5/new", noise(3000, 3)),
            ("global/pg_control", control),
            ("backup_label", b"START WAL LOCATION: 0/2000028\n".to_vec()),
        ];
        let manifest: Vec<File> = backup.iter().map(|(p, b)| file(p, b)).collect();
        for gzip in [true, false] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path();
            cluster(dir, 7);
            std::fs::create_dir_all(dir.join("base/5")).unwrap();
            std::fs::create_dir_all(dir.join("base/6")).unwrap();
            std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
            // The copy: one window of `big` differs, `grown` is shorter, `new` is
            // missing, and a file and a database the backup does not have.
            let mut stale = big.clone();
            stale[WINDOW as usize + 10] ^= 0xff;
            std::fs::write(dir.join("base/5/big"), &stale).unwrap();
            std::fs::write(dir.join("base/5/small"), b"small and the same").unwrap();
            std::fs::write(dir.join("base/5/grown"), &noise(5000, 2)[..4096]).unwrap();
            std::fs::write(dir.join("base/5/dropped"), b"x").unwrap();
            std::fs::write(dir.join("base/6/3"), b"dropped database").unwrap();
            std::fs::write(dir.join("pg_wal/000000010000000000000001"), b"wal").unwrap();

            let (stored, part) = part(&backup, gzip);
            let parts = vec![part];
            let located = locate(&manifest, &parts).unwrap();
            let d = prepare(dir, &manifest, &parts, &located, 2).unwrap();
            assert!(
                !dir.join("global/pg_control").exists(),
                "pg_control goes first"
            );
            assert!(!dir.join("base/6").exists() && !dir.join("base/5/dropped").exists());
            assert!(!dir.join("pg_wal/000000010000000000000001").exists());
            assert!(
                dir.join("pg_wal").is_dir(),
                "pg_wal stays the same directory"
            );
            // Kept: both PG_VERSIONs, small, and two of big's three windows.
            assert_eq!((d.kept_files, d.fetch_files, d.removed), (3, 5, 2), "{d:?}");
            assert_eq!(d.kept_bytes, 2 * 3 + 18 + WINDOW + 4000);
            assert_eq!(
                d.fetch_bytes,
                WINDOW + 5000 + 3000 + 8192 + backup[7].1.len() as u64
            );
            let read: u64 = d.fetches.iter().map(|f| f.stored(&parts)).sum();
            if gzip {
                assert!(
                    read < stored.len() as u64 * 2 / 3,
                    "a delta reads part of the part: {read} of {}",
                    stored.len()
                );
            }
            for f in &d.fetches {
                let written = read_into(&stored, gzip, f, dir, &f.needs).unwrap();
                assert_eq!(written, f.needs.iter().map(|n| n.len).sum::<u64>());
            }
            restore_times(dir, &d.touched).unwrap();
            for (path, body) in &backup {
                assert_eq!(&std::fs::read(dir.join(path)).unwrap(), body, "{path}");
            }
            let mtime = std::fs::metadata(dir.join("base/5/big"))
                .unwrap()
                .modified()
                .unwrap();
            assert_eq!(
                mtime,
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
            );

            // Damaged bytes are refused, naming the file.
            let f = d.fetches.iter().find(|f| !f.needs.is_empty()).unwrap();
            let mut bad = f.needs.clone();
            bad[0].window.crc32c ^= 1;
            let e = read_into(&stored, gzip, f, dir, &bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&*bad[0].path) && e.contains("damaged"), "{e}");
        }
    }

    #[test]
    fn a_manifest_the_indexes_do_not_cover_is_no_delta() {
        let (_, p) = part(&[("base/5/1", b"abc".to_vec())], true);
        let parts = [p];
        assert!(locate(&[file("base/5/1", b"abc")], &parts).is_ok());
        let e = locate(&[file("base/5/2", b"abc")], &parts).unwrap_err();
        assert!(
            e.contains("base/5/2 is in the manifest but in no part's index"),
            "{e}"
        );
        let e = locate(&[file("base/5/1", b"abcd")], &parts).unwrap_err();
        assert!(e.contains("4 bytes in the manifest but 3"), "{e}");
        let mut other = file("base/5/1", b"abd");
        other.size = 3;
        let e = locate(&[other], &parts).unwrap_err();
        assert!(e.contains("do not add up to the manifest's"), "{e}");
        let e = locate(&[file("../1", b"abc")], &parts).unwrap_err();
        assert!(e.contains("leaves the directory"), "{e}");
    }
}
