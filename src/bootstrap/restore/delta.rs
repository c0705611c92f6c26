//! Delta restore: restoring a backup over a directory that already holds a copy of the
//! same cluster (a replica being rebuilt, a diverged former primary), as pgBackRest's
//! `--delta` does. Every file whose size and CRC-32C match the backup's manifest is
//! kept, every file the manifest does not list is removed, and only the rest is
//! written from the backup's parts.
//!
//! Only ever over a copy of this very cluster: the directory's `global/pg_control`
//! must carry the backup's system identifier and its `PG_VERSION` the same major
//! version, and no postmaster may be running on it. Otherwise it is refused before
//! anything in it is touched.
//!
//! `global/pg_control` and `backup_label` are always written from the backup, and the
//! old `pg_control` is removed first: a delta restore cut short leaves a directory
//! postgres refuses to start, never a mix of old and new files that looks consistent.

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

/// What a delta restore keeps and what it must write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Paths (relative to the directory) kept as they are.
    pub keep: std::collections::HashSet<String>,
    /// Files kept, and their bytes.
    pub kept_files: u64,
    /// Bytes kept.
    pub kept_bytes: u64,
    /// Files of the manifest that must be written, and their bytes.
    pub fetch_files: u64,
    /// Bytes to write.
    pub fetch_bytes: u64,
    /// Files removed because the manifest does not list them.
    pub removed: u64,
}

impl Delta {
    /// True when every file to write is one of [`ALWAYS_FETCHED`]: all of them are in
    /// the backup's last data part, and the others need not be read at all.
    pub fn only_last_part(&self, manifest: &[crate::backup::engine::manifest::File]) -> bool {
        manifest
            .iter()
            .all(|f| self.keep.contains(&f.path) || ALWAYS_FETCHED.contains(&f.path.as_str()))
    }
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

/// What to do with a file of the directory, given the manifest's entry for its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same size and CRC-32C: kept.
    Keep,
    /// Listed, but different (or always fetched): removed, written from the backup.
    Fetch,
    /// Not in the manifest: removed.
    Remove,
}

/// The one decision of a delta restore, for a file at `path` of `size` bytes whose
/// CRC-32C `crc` computes (only called when the size matches).
pub fn verdict(
    path: &str,
    size: u64,
    listed: Option<&crate::backup::engine::manifest::File>,
    crc: impl FnOnce() -> std::io::Result<u32>,
) -> std::io::Result<Verdict> {
    let Some(f) = listed else {
        return Ok(Verdict::Remove);
    };
    if ALWAYS_FETCHED.contains(&path) || f.size != size {
        return Ok(Verdict::Fetch);
    }
    Ok(if crc()? == f.crc32c {
        Verdict::Keep
    } else {
        Verdict::Fetch
    })
}

/// Prepares `dir`, a checked copy of the cluster (see [`check_copy`]), for a delta
/// restore from a backup whose manifest lists `files`: `pg_control` removed first,
/// then every file that does not match removed, and directories the backup has no
/// file in (the backup's parts create those it has again). Runs on a blocking thread.
pub fn prepare(dir: &Path, files: &[crate::backup::engine::manifest::File]) -> Result<Delta> {
    let listed: BTreeMap<&str, &crate::backup::engine::manifest::File> =
        files.iter().map(|f| (f.path.as_str(), f)).collect();
    // First, so that a delta restore cut short cannot start (the parts bring the
    // backup's pg_control back).
    let control = dir.join("global/pg_control");
    match std::fs::remove_file(&control) {
        Ok(()) => crate::fsutil::fsync_dir(&dir.join("global"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", control.display())),
    }
    let mut d = Delta::default();
    walk(dir, "", &listed, &mut d)?;
    for f in files {
        if !d.keep.contains(&f.path) {
            d.fetch_files += 1;
            d.fetch_bytes += f.size;
        }
    }
    Ok(d)
}

/// Decides every entry under `dir/rel`; returns whether anything under it is kept.
fn walk(
    root: &Path,
    rel: &str,
    listed: &BTreeMap<&str, &crate::backup::engine::manifest::File>,
    d: &mut Delta,
) -> Result<bool> {
    let here = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut any = false;
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
            if walk(root, &path, listed, d)? {
                any = true;
            } else if !KEPT_DIRS.contains(&path.as_str()) {
                // Nothing of the backup in it: the parts recreate it if the backup has it.
                std::fs::remove_dir_all(&full)
                    .with_context(|| format!("remove {}", full.display()))?;
            }
            continue;
        }
        let size = entry.metadata()?.len();
        let v = if kind.is_file() {
            verdict(&path, size, listed.get(path.as_str()).copied(), || {
                crc32c_of(&full)
            })
            .with_context(|| format!("read {}", full.display()))?
        } else {
            // A link or a socket a backup never holds as such.
            Verdict::Remove
        };
        match v {
            Verdict::Keep => {
                d.kept_files += 1;
                d.kept_bytes += size;
                d.keep.insert(path);
                any = true;
            }
            Verdict::Fetch | Verdict::Remove => {
                if v == Verdict::Remove {
                    d.removed += 1;
                }
                std::fs::remove_file(&full)
                    .with_context(|| format!("remove {}", full.display()))?;
            }
        }
    }
    Ok(any)
}

/// The CRC-32C of a file's content, as the manifest records it.
fn crc32c_of(path: &Path) -> std::io::Result<u32> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
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

    #[test]
    fn keeps_only_files_whose_size_and_checksum_match() {
        let listed = file("base/5/16384", b"page");
        let ok = || Ok(crc32c::crc32c(b"page"));
        let cases: [(&str, u64, Option<&File>, u32, Verdict); 5] = [
            (
                "base/5/16384",
                4,
                Some(&listed),
                crc32c::crc32c(b"page"),
                Verdict::Keep,
            ),
            (
                "base/5/16384",
                4,
                Some(&listed),
                crc32c::crc32c(b"pagf"),
                Verdict::Fetch,
            ),
            ("base/5/16384", 5, Some(&listed), 0, Verdict::Fetch),
            ("base/5/99999", 4, None, 0, Verdict::Remove),
            (
                "global/pg_control",
                4,
                Some(&listed),
                crc32c::crc32c(b"page"),
                Verdict::Fetch,
            ),
        ];
        for (path, size, l, crc, want) in cases {
            let got = verdict(path, size, l, || Ok(crc)).unwrap();
            assert_eq!(got, want, "{path} {size}");
        }
        // The checksum is only computed when the size matches.
        assert_eq!(
            verdict("x", 9, Some(&listed), || panic!("read")).unwrap(),
            Verdict::Fetch
        );
        assert_eq!(
            verdict("base/5/16384", 4, Some(&listed), ok).unwrap(),
            Verdict::Keep
        );
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

    #[test]
    fn prepare_keeps_matches_and_removes_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        cluster(dir, 7);
        std::fs::create_dir_all(dir.join("base/5")).unwrap();
        std::fs::create_dir_all(dir.join("base/6")).unwrap();
        std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
        std::fs::write(dir.join("base/5/1"), b"same").unwrap();
        std::fs::write(dir.join("base/5/2"), b"old!").unwrap();
        std::fs::write(dir.join("base/6/3"), b"dropped database").unwrap();
        std::fs::write(dir.join("pg_wal/000000010000000000000001"), b"wal").unwrap();
        std::fs::write(dir.join("postmaster.pid"), "999999999\n").unwrap();
        let files = [
            file("PG_VERSION", b"18\n"),
            file("base/1/PG_VERSION", b"18\n"),
            file("base/5/1", b"same"),
            file("base/5/2", b"new!"),
            file("base/5/4", b"missing"),
            file("global/pg_control", b"control"),
        ];
        let d = prepare(dir, &files).unwrap();
        let mut keep: Vec<_> = d.keep.iter().cloned().collect();
        keep.sort();
        assert_eq!(keep, ["PG_VERSION", "base/1/PG_VERSION", "base/5/1"]);
        assert_eq!((d.kept_files, d.fetch_files, d.removed), (3, 3, 3));
        assert!(!dir.join("global/pg_control").exists());
        assert!(!dir.join("base/5/2").exists());
        assert!(
            !dir.join("base/6").exists(),
            "a directory with nothing kept goes"
        );
        assert!(!dir.join("pg_wal/000000010000000000000001").exists());
        assert!(
            dir.join("pg_wal").is_dir(),
            "pg_wal stays the same directory"
        );
        assert!(!dir.join("postmaster.pid").exists());
        assert!(!d.only_last_part(&files));
        let mut all = d.clone();
        all.keep
            .extend(["base/5/2".to_owned(), "base/5/4".to_owned()]);
        assert!(all.only_last_part(&files));
    }
}
