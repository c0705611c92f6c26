//! Moving directories: the new cluster into PGDATA (the commit), and undoing an
//! upgrade that had not got that far. Blocking file-system work: call it from
//! `spawn_blocking`.
//!
//! PGDATA itself is never renamed, only its entries move: it may be a mount point, and
//! it keeps its owner, mode and labels. Every move is a `rename(2)` within one file
//! system, so each entry is either here or there, never half-copied, and a move
//! interrupted at any point is finished by running it again.

use super::state::{Layout, INSIDE};
use crate::fsutil;
use std::io;
use std::path::Path;

/// Entries of PGDATA that a swap never moves.
fn stays(name: &std::ffi::OsStr) -> bool {
    name == "lost+found" || name == INSIDE
}

fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("move {} to {}: {e}", from.display(), to.display()),
        )
    })
}

fn create_like(dir: &Path, like: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(like)?;
    let owner = fsutil::Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    fsutil::ensure_dir(dir, 0o700, Some(owner))
}

/// Phase `swap-out`: every entry of PGDATA but `PG_VERSION` goes into `old`, and a
/// copy of `PG_VERSION` with them, so that `old` is a whole cluster. Run again after an
/// interruption, it moves what is left.
pub fn move_out(layout: &Layout) -> io::Result<()> {
    let old = layout.old_cluster();
    create_like(&old, &layout.pgdata)?;
    for entry in std::fs::read_dir(&layout.pgdata)? {
        let name = entry?.file_name();
        if stays(&name) || name == "PG_VERSION" {
            continue;
        }
        rename(&layout.pgdata.join(&name), &old.join(&name))?;
    }
    copy_file(&layout.pgdata.join("PG_VERSION"), &old.join("PG_VERSION"))?;
    fsutil::fsync_dir(&old)?;
    fsutil::fsync_dir(&layout.pgdata)
}

/// Phase `swap-in`: every entry of `new` moves into PGDATA, then `new/PG_VERSION`
/// replaces PGDATA's in one rename, the commit point: from then on PGDATA reads as the
/// new major. Run again after an interruption, it moves what is left. `pause` is
/// called after the first entry has moved (tests stop there).
pub fn move_in(layout: &Layout, pause: &dyn Fn()) -> io::Result<()> {
    let new = layout.new_cluster();
    if !new.exists() {
        // Interrupted after the last step: all of it is in place.
        return Ok(());
    }
    let mut moved = 0;
    for entry in std::fs::read_dir(&new)? {
        let name = entry?.file_name();
        if name == "PG_VERSION" {
            continue;
        }
        let target = layout.pgdata.join(&name);
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is in the way of the upgraded cluster's {}; it is not pgwarden's, remove it by hand",
                    target.display(),
                    name.to_string_lossy()
                ),
            ));
        }
        rename(&new.join(&name), &target)?;
        moved += 1;
        if moved == 1 {
            fsutil::fsync_dir(&layout.pgdata)?;
            pause();
        }
    }
    fsutil::fsync_dir(&layout.pgdata)?;
    if new.join("PG_VERSION").exists() {
        rename(&new.join("PG_VERSION"), &layout.pgdata.join("PG_VERSION"))?;
        fsutil::fsync_dir(&layout.pgdata)?;
    }
    match std::fs::remove_dir(&new) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("remove {}: {e}", new.display()),
        )),
        _ => fsutil::fsync_dir(&layout.work),
    }
}

/// Copies a small file, with its mode and owner, durably.
pub fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(from)?;
    let data = std::fs::read(from)?;
    fsutil::write_atomic(
        to,
        &data,
        Some(fsutil::Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        }),
        meta.permissions().mode() & 0o7777,
    )?;
    Ok(())
}

/// Undoes an upgrade that had not begun to move the new cluster into PGDATA. What
/// pg_upgrade does to the old cluster is renaming `global/pg_control` to
/// `pg_control.old` (link mode, just before it links the files) and creating its
/// directory in each tablespace; both are undone here. Hard links into the old
/// cluster's files are only more names for them: removing the new cluster leaves the
/// old one's data as it was. postgres must not be running on either cluster.
pub fn roll_back(layout: &Layout, to: u32) -> io::Result<()> {
    let global = layout.pgdata.join("global");
    let control = global.join("pg_control");
    let renamed = global.join("pg_control.old");
    if !control.exists() && renamed.exists() {
        rename(&renamed, &control)?;
        fsutil::fsync_dir(&global)?;
        tracing::info!(path = %control.display(), "renamed the old cluster's pg_control back");
    }
    remove_tablespace_dirs(&layout.pgdata, to)?;
    remove_tree(&layout.new_cluster())?;
    remove_work(layout)
}

/// Removes the directories `PG_<major>_<catalog version>` a cluster of `major` has in
/// each tablespace of `pgdata`.
pub fn remove_tablespace_dirs(pgdata: &Path, major: u32) -> io::Result<()> {
    let Ok(links) = std::fs::read_dir(pgdata.join("pg_tblspc")) else {
        return Ok(());
    };
    let prefix = format!("PG_{major}_");
    for link in links {
        let Ok(location) = std::fs::read_link(link?.path()) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&location) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::info!(path = %entry.path().display(), "removing a tablespace directory of PostgreSQL {major}");
                remove_tree(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Removes `dir` and everything in it; a missing one is fine.
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("remove {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// Removes the work directory, the marker first (durably), so that an interrupted
/// removal leaves a stray directory and never a marker naming a phase whose things
/// are gone.
pub fn remove_work(layout: &Layout) -> io::Result<()> {
    match std::fs::remove_file(layout.marker()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                e.kind(),
                format!("remove {}: {e}", layout.marker().display()),
            ))
        }
        _ => {}
    }
    if layout.work.exists() {
        fsutil::fsync_dir(&layout.work)?;
    }
    remove_tree(&layout.work)?;
    if let Some(parent) = layout.work.parent() {
        fsutil::fsync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::state;

    fn tree(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = walkdir(dir)
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                match std::fs::read_to_string(&p) {
                    Ok(t) => format!("{rel}={}", t.trim()),
                    Err(_) => rel,
                }
            })
            .collect();
        out.sort();
        out
    }

    fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            }
            out.push(p);
        }
        out
    }

    fn cluster(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir.join("global")).unwrap();
        std::fs::write(dir.join("PG_VERSION"), version).unwrap();
        std::fs::write(dir.join("global/pg_control"), format!("control {version}")).unwrap();
        std::fs::create_dir_all(dir.join("base/1")).unwrap();
        std::fs::write(dir.join("base/1/1259"), format!("catalog {version}")).unwrap();
        std::fs::write(dir.join("postgresql.conf"), format!("conf {version}")).unwrap();
    }

    /// Runs the swap, interrupted after every possible number of moves in turn, then
    /// resumed: the result is always the same.
    #[test]
    fn a_swap_interrupted_anywhere_finishes_the_same() {
        for inside in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let pgdata = tmp.path().join("data");
            cluster(&pgdata, "15");
            std::fs::create_dir(pgdata.join("lost+found")).unwrap();
            let layout = state::choose(&pgdata, inside, true);
            std::fs::create_dir_all(&layout.work).unwrap();
            cluster(&layout.new_cluster(), "18");
            std::fs::write(layout.marker(), "x").unwrap();

            // An interruption part-way through: some entries moved, not all.
            std::fs::create_dir_all(layout.old_cluster()).unwrap();
            std::fs::rename(pgdata.join("base"), layout.old_cluster().join("base")).unwrap();
            move_out(&layout).unwrap();
            move_out(&layout).unwrap();
            std::fs::rename(layout.new_cluster().join("global"), pgdata.join("global")).unwrap();
            assert_eq!(
                std::fs::read_to_string(pgdata.join("PG_VERSION")).unwrap(),
                "15"
            );
            move_in(&layout, &|| {}).unwrap();
            move_in(&layout, &|| {}).unwrap();

            let mut expect = vec![
                "PG_VERSION=18",
                "base",
                "base/1",
                "base/1/1259=catalog 18",
                "global",
                "global/pg_control=control 18",
                "lost+found",
                "postgresql.conf=conf 18",
            ];
            let got: Vec<String> = tree(&pgdata)
                .into_iter()
                .filter(|e| !e.starts_with(state::INSIDE))
                .collect();
            assert_eq!(got, expect, "inside={inside}");
            expect.retain(|e| *e != "lost+found");
            let old: Vec<String> = tree(&layout.old_cluster());
            let expect_old: Vec<String> = expect.iter().map(|e| e.replace("18", "15")).collect();
            assert_eq!(old, expect_old, "inside={inside}");
            assert!(!layout.new_cluster().exists());
        }
    }

    #[test]
    fn a_roll_back_restores_pg_control_and_removes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let pgdata = tmp.path().join("data");
        cluster(&pgdata, "15");
        let space = tmp.path().join("space");
        std::fs::create_dir_all(space.join("PG_15_202209061")).unwrap();
        std::fs::create_dir_all(space.join("PG_18_202506291/5")).unwrap();
        std::fs::create_dir_all(pgdata.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&space, pgdata.join("pg_tblspc/16400")).unwrap();
        let layout = state::choose(&pgdata, false, true);
        cluster(&layout.new_cluster(), "18");
        std::fs::write(layout.marker(), "x").unwrap();
        std::fs::rename(
            pgdata.join("global/pg_control"),
            pgdata.join("global/pg_control.old"),
        )
        .unwrap();
        roll_back(&layout, 18).unwrap();
        assert_eq!(
            std::fs::read_to_string(pgdata.join("global/pg_control")).unwrap(),
            "control 15"
        );
        assert!(!pgdata.join("global/pg_control.old").exists());
        assert!(space.join("PG_15_202209061").is_dir());
        assert!(!space.join("PG_18_202506291").exists());
        assert!(!layout.work.exists());
        // Again: nothing left to do, nothing fails.
        roll_back(&layout, 18).unwrap();
    }
}
