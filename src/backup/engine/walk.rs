//! What of PGDATA goes into a backup: pg_basebackup's rules (`basebackup.c`:
//! `excludeDirContents`, `excludeFiles`, `sendDir`), so that a restore of pgwarden's
//! backup holds what a restore of pg_basebackup's would.

use crate::backup::parts::Holds;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories sent empty: their content is rebuilt or meaningless after a restore.
const EMPTY_DIRS: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files never sent, wherever they are.
const SKIPPED_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// One entry to put in the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path in the backup (relative to PGDATA, as the manifest names it:
    /// `pg_tblspc/<oid>/PG_.../...` for a tablespace's).
    pub path: String,
    /// The data objects it goes into: PGDATA's, or a tablespace's.
    pub holds: Holds,
    /// Its path in those objects' tars (a tablespace's are relative to its location,
    /// as barman-cloud and pg_basebackup write them).
    pub tar_path: String,
    /// Where it is read from.
    pub source: PathBuf,
    /// A directory, or a file of `size` bytes when listed.
    pub dir: bool,
    /// Size when listed (files only).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Whether `name` (a file in directory `dir`, relative to PGDATA) is left out.
/// `init_forks` holds the relfilenodes in `dir` that have an `_init` fork (unlogged
/// relations: only that fork is sent).
pub fn skipped(dir: &str, name: &str, init_forks: &[String]) -> bool {
    if SKIPPED_FILES.contains(&name)
        || name.starts_with("pg_internal.init")
        || name.starts_with("pgsql_tmp")
    {
        return true;
    }
    // `global/pg_control` goes last, read by the caller after everything else.
    if dir == "global" && name == "pg_control" {
        return true;
    }
    let in_database = dir.starts_with("base/") || dir.starts_with("pg_tblspc/");
    if !in_database {
        return false;
    }
    // Temporary relations: t<backend>_<relfilenode>[...].
    if let Some(rest) = name.strip_prefix('t') {
        if let Some((backend, node)) = rest.split_once('_') {
            if backend.bytes().all(|b| b.is_ascii_digit())
                && node.bytes().next().is_some_and(|b| b.is_ascii_digit())
                && !backend.is_empty()
            {
                return true;
            }
        }
    }
    // Unlogged relations: every fork but `_init` (and its segments).
    let node = name.split(['_', '.']).next().unwrap_or(name);
    let is_init = name.split('.').next().is_some_and(|s| s.ends_with("_init"));
    !is_init && init_forks.iter().any(|n| n == node)
}

/// A tablespace to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// Its oid (`pg_tblspc/<oid>`).
    pub oid: u32,
    /// Where it is (`pg_tablespace_location`).
    pub location: PathBuf,
    /// The directory of this server's major in it, `PG_<major>_<catversion>`: the only
    /// one copied (pg_basebackup's `TABLESPACE_VERSION_DIRECTORY`; another major's is
    /// left behind by pg_upgrade).
    pub version_dir: String,
}

/// Lists PGDATA and the tablespaces `spaces`: directories first, then files, as
/// pg_basebackup would send them (minus `global/pg_control`, which goes last).
/// `major` decides the empty directories under `pg_wal` (`summaries` on 17+).
///
/// The symlinks under `pg_tblspc` are left out of PGDATA's entries, as barman-cloud
/// leaves them out: a restore creates them pointing where it puts each tablespace
/// (`barman-cloud-restore --tablespace`), and a symlink in the tar would be in its way.
/// A tablespace located inside PGDATA is copied once, as a tablespace.
pub fn list(pgdata: &Path, major: u32, spaces: &[Space]) -> std::io::Result<Vec<Entry>> {
    let inside: Vec<String> = spaces
        .iter()
        .filter_map(|s| s.location.strip_prefix(pgdata).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let mut out = Vec::new();
    walk(pgdata, "", major, &inside, &mut out)?;
    for s in spaces {
        let rel = format!("pg_tblspc/{}/{}", s.oid, s.version_dir);
        let path = pgdata.join(&rel);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Dropped since the catalogue was read: WAL replay drops it too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let first = out.len();
        visit_dir(pgdata, &rel, &path, &meta, major, &inside, &mut out)?;
        let prefix = format!("pg_tblspc/{}/", s.oid);
        for e in &mut out[first..] {
            e.holds = Holds::Tablespace(s.oid);
            e.tar_path = e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_owned();
        }
    }
    Ok(out)
}

fn entry(path: String, source: PathBuf, meta: &std::fs::Metadata, dir: bool) -> Entry {
    Entry {
        holds: Holds::Data,
        tar_path: path.clone(),
        path,
        source,
        dir,
        size: if dir { 0 } else { meta.len() },
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
    }
}

fn walk(
    root: &Path,
    rel: &str,
    major: u32,
    inside: &[String],
    out: &mut Vec<Entry>,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<(String, std::fs::Metadata, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Files come and go while postgres runs: one gone since the listing is fine.
        let meta = match std::fs::symlink_metadata(e.path()) {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        names.push((name, meta, e.path()));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let init_forks: Vec<String> = names
        .iter()
        .filter_map(|(n, _, _)| n.strip_suffix("_init").map(str::to_owned))
        .collect();
    for (name, meta, path) in names {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if inside.contains(&child) {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_symlink() {
            if rel == "pg_tblspc" {
                // A tablespace: copied on its own by the caller; one created since the
                // catalogue was read is recreated by WAL replay.
                continue;
            }
            // pg_wal (initdb -X) or another linked directory: sent as what it points to.
            let target = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if target.is_dir() {
                visit_dir(root, &child, &path, &target, major, inside, out)?;
            } else if target.is_file() && !skipped(rel, &name, &init_forks) {
                out.push(entry(child, path, &target, false));
            }
            continue;
        }
        if ft.is_dir() {
            if name.starts_with("pgsql_tmp") {
                continue;
            }
            visit_dir(root, &child, &path, &meta, major, inside, out)?;
        } else if ft.is_file() && !skipped(rel, &name, &init_forks) {
            out.push(entry(child, path, &meta, false));
        }
        // Sockets, fifos and devices are never part of a cluster's data.
    }
    Ok(())
}

fn visit_dir(
    root: &Path,
    child: &str,
    path: &Path,
    meta: &std::fs::Metadata,
    major: u32,
    inside: &[String],
    out: &mut Vec<Entry>,
) -> std::io::Result<()> {
    out.push(entry(child.to_owned(), path.to_path_buf(), meta, true));
    if EMPTY_DIRS.contains(&child) {
        return Ok(());
    }
    if child == "pg_wal" {
        // The WAL comes from the archive; the directories postgres expects stay.
        let mut subs = vec!["archive_status"];
        if major >= 17 {
            subs.push("summaries");
        }
        for sub in subs {
            let p = path.join(sub);
            if let Ok(m) = std::fs::metadata(&p) {
                out.push(entry(format!("pg_wal/{sub}"), p, &m, true));
            }
        }
        return Ok(());
    }
    walk(root, child, major, inside, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_out_what_pg_basebackup_leaves_out() {
        let none: Vec<String> = vec![];
        let unlogged = vec!["16390".to_owned()];
        let cases = [
            ("", "postmaster.pid", &none, true),
            ("", "backup_label", &none, true),
            ("", "postgresql.conf", &none, false),
            ("global", "pg_control", &none, true),
            ("global", "pg_internal.init", &none, true),
            ("global", "1262", &none, false),
            ("base/5", "pg_internal.init.12345", &none, true),
            ("base/5", "t3_16400", &none, true),
            ("base/5", "t3_16400.1", &none, true),
            ("base/5", "16400", &none, false),
            ("base/5", "16390", &unlogged, true),
            ("base/5", "16390.1", &unlogged, true),
            ("base/5", "16390_fsm", &unlogged, true),
            ("base/5", "16390_init", &unlogged, false),
            ("base/5", "16391", &unlogged, false),
            ("pg_wal", "pgsql_tmp123", &none, true),
        ];
        for (dir, name, forks, want) in cases {
            assert_eq!(skipped(dir, name, forks), want, "{dir}/{name}");
        }
    }

    #[test]
    fn lists_a_data_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in [
            "global",
            "base/1",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/s",
        ] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "global/pg_control",
            "global/1262",
            "base/1/1259",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "pg_replslot/s/state",
            "postmaster.pid",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let paths: Vec<String> = list(p, 15, &[])
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            vec![
                "PG_VERSION",
                "base",
                "base/1",
                "base/1/1259",
                "global",
                "global/1262",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_wal",
                "pg_wal/archive_status",
            ]
        );
    }

    #[test]
    fn lists_tablespaces_apart_and_leaves_their_symlinks_out() {
        let d = tempfile::tempdir().unwrap();
        let (pgdata, elsewhere) = (d.path().join("data"), d.path().join("ssd"));
        for dir in [
            "global",
            "pg_tblspc",
            "inner/PG_15_202209061/5",
            "inner/PG_14_202107181/5",
        ] {
            std::fs::create_dir_all(pgdata.join(dir)).unwrap();
        }
        for dir in ["PG_15_202209061/5", "PG_14_202107181/5"] {
            std::fs::create_dir_all(elsewhere.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "inner/PG_15_202209061/5/16400",
            "inner/PG_14_202107181/5/16400",
        ] {
            std::fs::write(pgdata.join(f), b"x").unwrap();
        }
        for f in [
            "PG_15_202209061/5/16401",
            "PG_15_202209061/5/t3_16402",
            "PG_14_202107181/5/16401",
        ] {
            std::fs::write(elsewhere.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink(&elsewhere, pgdata.join("pg_tblspc/16500")).unwrap();
        std::os::unix::fs::symlink(pgdata.join("inner"), pgdata.join("pg_tblspc/16501")).unwrap();
        // Created after the catalogue was read: left to WAL replay.
        std::os::unix::fs::symlink(&elsewhere, pgdata.join("pg_tblspc/16502")).unwrap();
        let space = |oid, location: &Path| Space {
            oid,
            location: location.to_path_buf(),
            version_dir: "PG_15_202209061".into(),
        };
        let spaces = [
            space(16500, &elsewhere),
            space(16501, &pgdata.join("inner")),
        ];
        let got: Vec<(String, Holds, String)> = list(&pgdata, 15, &spaces)
            .unwrap()
            .into_iter()
            .map(|e| (e.path, e.holds, e.tar_path))
            .collect();
        let data = |p: &str| (p.to_owned(), Holds::Data, p.to_owned());
        let ts = |oid: u32, p: &str| {
            (
                format!("pg_tblspc/{oid}/{p}"),
                Holds::Tablespace(oid),
                p.to_owned(),
            )
        };
        assert_eq!(
            got,
            vec![
                data("PG_VERSION"),
                data("global"),
                data("pg_tblspc"),
                ts(16500, "PG_15_202209061"),
                ts(16500, "PG_15_202209061/5"),
                ts(16500, "PG_15_202209061/5/16401"),
                ts(16501, "PG_15_202209061"),
                ts(16501, "PG_15_202209061/5"),
                ts(16501, "PG_15_202209061/5/16400"),
            ]
        );
    }
}
