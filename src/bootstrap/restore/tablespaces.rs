//! Where a restore puts the backup's tablespaces, and putting them there.
//!
//! Each tablespace of the backup (`tablespaces` in its `backup.info`, stored as
//! `<oid>.tar[.gz]`) goes to its original location, to the location
//! `PGWARDEN_RESTORE_TABLESPACES` names for it, or, for a drill, into the drill's
//! scratch directory. A location must be absent or empty, checked before PGDATA is
//! created: a restore never writes over files, least of all a live cluster's
//! tablespace. `pg_tblspc/<oid>` is made a symlink to the location, as
//! `barman-cloud-restore` makes it, before anything is extracted into it: a bootstrap
//! interrupted by a crash then knows from its staging directory which locations it
//! had begun to fill, and empties them before it starts again
//! ([`empty_interrupted`]).
//!
//! A `tablespace_map` in the restored PGDATA (pgwarden and barman-cloud write none; a
//! tar of another tool may hold one) is removed: PostgreSQL, finding one at the start
//! of recovery, replaces the `pg_tblspc` symlinks with links to the locations it
//! names, the original ones, and the mapping would be silently undone.

use crate::backup::info::Tablespace;
use crate::settings::restore::{SettingNames, Tablespaces};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A tablespace and where the restore puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its name.
    pub name: String,
    /// Its oid: `pg_tblspc/<oid>`, and its data objects' names.
    pub oid: u32,
    /// Where its `PG_<major>_<catversion>` directory goes.
    pub location: PathBuf,
}

/// Decides where each of `spaces` (the backup's) goes under `how`, for a cluster
/// restored into `pgdata`. Refuses a mapping of a tablespace the backup does not have,
/// a relative recorded location, two tablespaces in one place, and a location inside
/// PGDATA or holding it.
pub fn place(
    spaces: &[Tablespace],
    how: &Tablespaces,
    pgdata: &Path,
    names: &SettingNames,
) -> Result<Vec<Placed>, String> {
    let setting = names.tablespaces;
    if let Tablespaces::Mapped(rules) = how {
        for (name, _) in rules {
            if !spaces.iter().any(|t| &t.name == name) {
                let known: Vec<&str> = spaces.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "{setting}: the backup has no tablespace {name:?} (it has {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
    }
    let mut out: Vec<Placed> = Vec::new();
    for t in spaces {
        let location = match how {
            Tablespaces::Mapped(rules) => rules
                .iter()
                .find(|(n, _)| *n == t.name)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| PathBuf::from(&t.location)),
            Tablespaces::Under(dir) => dir.join(t.oid.to_string()),
        };
        if !location.is_absolute() {
            return Err(format!(
                "{setting}: the backup records tablespace {:?} at {:?}, not an absolute path; map it with {setting}=name:/path",
                t.name, t.location
            ));
        }
        if location.starts_with(pgdata) || pgdata.starts_with(&location) {
            return Err(format!(
                "{setting}: tablespace {:?} would be restored into {}, which overlaps PGDATA ({}); map it elsewhere",
                t.name,
                location.display(),
                pgdata.display()
            ));
        }
        if let Some(other) = out
            .iter()
            .find(|p| p.location.starts_with(&location) || location.starts_with(&p.location))
        {
            return Err(format!(
                "{setting}: tablespaces {:?} and {:?} would both be restored into {}; map one elsewhere",
                other.name,
                t.name,
                location.display()
            ));
        }
        out.push(Placed {
            name: t.name.clone(),
            oid: t.oid,
            location,
        });
    }
    Ok(out)
}

/// Checks that every location is absent or an empty directory (as
/// `barman-cloud-restore` checks), so that nothing is written over.
pub fn check_free(placed: &[Placed], names: &SettingNames) -> Result<()> {
    for p in placed {
        let l = &p.location;
        // Followed: a location may be a link to a mount point.
        match std::fs::metadata(l) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(l).is_ok() {
                    anyhow::bail!(
                        "tablespace {:?} would be restored into {}, a link to nothing; \
                         remove it, or restore the tablespace elsewhere with {}=name:/path; nothing was restored",
                        p.name,
                        l.display(),
                        names.tablespaces
                    );
                }
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("tablespace {:?}: cannot inspect {}", p.name, l.display())
                })
            }
            Ok(m) if !m.is_dir() => anyhow::bail!(
                "tablespace {:?} would be restored into {}, which is not a directory; \
                 remove it, or restore the tablespace elsewhere with {}=name:/path; nothing was restored",
                p.name,
                l.display(),
                names.tablespaces
            ),
            Ok(_) => {
                let mut entries = std::fs::read_dir(l)
                    .with_context(|| format!("tablespace {:?}: read {}", p.name, l.display()))?;
                if let Some(first) = entries.next() {
                    let first = first.map(|e| e.file_name().to_string_lossy().into_owned());
                    anyhow::bail!(
                        "tablespace {:?} would be restored into {}, which is not empty (it holds {}); \
                         empty it, or restore the tablespace elsewhere with {}={}:/path; nothing was restored",
                        p.name,
                        l.display(),
                        first.unwrap_or_else(|_| "entries".to_owned()),
                        names.tablespaces,
                        p.name
                    );
                }
            }
        }
    }
    Ok(())
}

/// The locations a restore made, to undo them when it fails: what did not exist is
/// removed, what was an empty directory is emptied again.
#[derive(Debug, Default)]
pub struct Made {
    created: Vec<PathBuf>,
    emptied: Vec<PathBuf>,
}

/// Creates (or takes, when it is an empty directory) each location, mode 0700, owned
/// by `owner` (the run-as user), as `CREATE TABLESPACE` leaves it.
pub fn create(
    placed: &[Placed],
    owner: Option<crate::fsutil::Owner>,
    made: &mut Made,
) -> Result<()> {
    for p in placed {
        let existed = p.location.exists();
        crate::fsutil::ensure_dir(&p.location, 0o700, owner)
            .with_context(|| format!("tablespace {:?}", p.name))?;
        if existed {
            made.emptied.push(p.location.clone());
        } else {
            made.created.push(p.location.clone());
        }
    }
    Ok(())
}

impl Made {
    /// Undoes what the restore wrote into the locations (its staging PGDATA is
    /// discarded by the caller); a failure is logged, and the next restore refuses the
    /// location, naming it.
    pub fn undo(&self) {
        for dir in &self.created {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a tablespace location this failed restore created");
            }
        }
        for dir in &self.emptied {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if let Err(e) = crate::fsutil::remove_entry(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove what this failed restore wrote into a tablespace location");
                }
            }
        }
    }
}

/// Points `pg_tblspc/<oid>` of the cluster in `dir` at each location (a link or
/// directory already there is replaced).
pub fn link(dir: &Path, placed: &[Placed]) -> Result<()> {
    let tblspc = dir.join("pg_tblspc");
    std::fs::create_dir_all(&tblspc).context("create pg_tblspc")?;
    for p in placed {
        let link = tblspc.join(p.oid.to_string());
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link),
            Ok(_) => std::fs::remove_file(&link),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .with_context(|| format!("replace {}", link.display()))?;
        std::os::unix::fs::symlink(&p.location, &link)
            .with_context(|| format!("link {} to {}", link.display(), p.location.display()))?;
    }
    crate::fsutil::fsync_dir(&tblspc)?;
    Ok(())
}

/// After extraction: the links once more (a tar may have held its own), and no
/// `tablespace_map` (see the module's comment).
pub fn settle(dir: &Path, placed: &[Placed]) -> Result<()> {
    link(dir, placed)?;
    for p in placed {
        tracing::info!(tablespace = %p.name, oid = p.oid, location = %p.location.display(), "tablespace restored");
    }
    match std::fs::remove_file(dir.join("tablespace_map")) {
        Ok(()) => tracing::info!(
            "tablespace_map removed: the pg_tblspc symlinks say where each tablespace is"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("remove tablespace_map"),
    }
    Ok(())
}

/// Empties the tablespace locations the interrupted bootstrap in `staging` had begun
/// to fill (the targets of its `pg_tblspc` links): a restore (and pg_basebackup) only
/// fills a location that was absent or empty, so what is in it is that bootstrap's,
/// and the next attempt would refuse it. Only this major's `PG_<major>_<catversion>`
/// directory is removed, the one a bootstrap with these binaries writes: a location
/// holding anything else (another major's directory, which pg_upgrade leaves beside
/// the new one, or a file) is left alone, and the next attempt refuses it, naming it.
pub fn empty_interrupted(staging: &Path, major: u32) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(staging.join("pg_tblspc")) else {
        return Ok(());
    };
    let ours = format!("PG_{major}_");
    for e in entries {
        let Ok(target) = std::fs::read_link(e?.path()) else {
            continue;
        };
        let Ok(inside) = std::fs::read_dir(&target) else {
            continue;
        };
        let inside: Vec<std::fs::DirEntry> = inside.collect::<std::io::Result<_>>()?;
        if let Some(other) = inside
            .iter()
            .find(|e| !e.file_name().to_string_lossy().starts_with(&ours))
        {
            tracing::warn!(location = %target.display(), entry = %other.file_name().to_string_lossy(), "a tablespace location of the interrupted bootstrap holds what this bootstrap does not write; left as it is");
            continue;
        }
        tracing::warn!(location = %target.display(), "emptying a tablespace location of the interrupted bootstrap");
        for entry in inside {
            let path = entry.path();
            crate::fsutil::remove_entry(&path)
                .with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(name: &str, oid: u32, location: &str) -> Tablespace {
        Tablespace {
            name: name.into(),
            oid,
            location: location.into(),
        }
    }

    #[test]
    fn places_each_tablespace_where_it_was_was_mapped_or_in_the_scratch_dir() {
        let names = SettingNames::BOOTSTRAP;
        let spaces = [ts("fast", 16384, "/mnt/ssd"), ts("slow", 16390, "/mnt/hdd")];
        let pgdata = Path::new("/var/lib/postgresql/data");
        let mapped = |rules: &[(&str, &str)]| {
            Tablespaces::Mapped(
                rules
                    .iter()
                    .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                    .collect(),
            )
        };
        let at = |r: Result<Vec<Placed>, String>| -> Result<Vec<String>, String> {
            r.map(|v| {
                v.into_iter()
                    .map(|p| p.location.display().to_string())
                    .collect()
            })
        };
        let cases: Vec<(Tablespaces, Result<Vec<&str>, &str>)> = vec![
            (mapped(&[]), Ok(vec!["/mnt/ssd", "/mnt/hdd"])),
            (mapped(&[("slow", "/new/hdd")]), Ok(vec!["/mnt/ssd", "/new/hdd"])),
            (
                Tablespaces::Under(PathBuf::from("/drill/tablespaces")),
                Ok(vec!["/drill/tablespaces/16384", "/drill/tablespaces/16390"]),
            ),
            (
                mapped(&[("nope", "/x")]),
                Err("PGWARDEN_RESTORE_TABLESPACES: the backup has no tablespace \"nope\" (it has fast, slow)"),
            ),
            (
                mapped(&[("fast", "/var/lib/postgresql/data/ts")]),
                Err("PGWARDEN_RESTORE_TABLESPACES: tablespace \"fast\" would be restored into /var/lib/postgresql/data/ts, which overlaps PGDATA"),
            ),
            (
                mapped(&[("fast", "/mnt/hdd")]),
                Err("PGWARDEN_RESTORE_TABLESPACES: tablespaces \"fast\" and \"slow\" would both be restored into /mnt/hdd"),
            ),
            (
                mapped(&[("slow", "/mnt/ssd/sub")]),
                Err("PGWARDEN_RESTORE_TABLESPACES: tablespaces \"fast\" and \"slow\""),
            ),
        ];
        for (how, want) in cases {
            let got = at(place(&spaces, &how, pgdata, &names));
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{how:?}"),
                (Err(g), Err(w)) => assert!(g.starts_with(w), "{how:?}: {g}"),
                _ => panic!("{how:?}: got {got:?}, want {want:?}"),
            }
        }
        let e = place(&[], &mapped(&[("fast", "/x")]), pgdata, &names).unwrap_err();
        assert!(e.ends_with("(it has none)"), "{e}");
        let e = place(&[ts("odd", 1, "pg_tblspc/1")], &mapped(&[]), pgdata, &names).unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
    }

    #[test]
    fn a_location_must_be_absent_or_empty_and_links_replace_any_map() {
        let d = tempfile::tempdir().unwrap();
        let names = SettingNames::BOOTSTRAP;
        let place_at = |l: PathBuf| {
            vec![Placed {
                name: "fast".into(),
                oid: 16384,
                location: l,
            }]
        };
        assert!(check_free(&place_at(d.path().join("absent")), &names).is_ok());
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert!(check_free(&place_at(d.path().join("empty")), &names).is_ok());
        std::fs::create_dir(d.path().join("full")).unwrap();
        std::fs::write(d.path().join("full/PG_18_1"), b"").unwrap();
        let e = check_free(&place_at(d.path().join("full")), &names)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "{}, which is not empty (it holds PG_18_1)",
                d.path().join("full").display()
            )) && e.contains("PGWARDEN_RESTORE_TABLESPACES=fast:/path"),
            "{e}"
        );

        std::os::unix::fs::symlink(d.path().join("empty"), d.path().join("mount")).unwrap();
        assert!(check_free(&place_at(d.path().join("mount")), &names).is_ok());
        std::os::unix::fs::symlink(d.path().join("nowhere"), d.path().join("dangling")).unwrap();
        let e = check_free(&place_at(d.path().join("dangling")), &names)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a link to nothing"), "{e}");

        let placed = place_at(d.path().join("absent"));
        let mut made = Made::default();
        create(&placed, None, &mut made).unwrap();
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", data.join("pg_tblspc/16384")).unwrap();
        std::fs::write(data.join("tablespace_map"), "16384 /elsewhere\n").unwrap();
        settle(&data, &placed).unwrap();
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc/16384")).unwrap(),
            d.path().join("absent")
        );
        assert!(!data.join("tablespace_map").exists());
        std::fs::create_dir_all(d.path().join("absent/PG_18_1/5")).unwrap();
        std::fs::write(d.path().join("absent/PG_18_1/5/16390"), b"").unwrap();
        // A crash here: the next bootstrap empties the location, and may use it; but
        // not one that holds what a restore does not write.
        std::fs::write(d.path().join("absent/notes.txt"), b"").unwrap();
        empty_interrupted(&data, 18).unwrap();
        assert!(d.path().join("absent/PG_18_1/5/16390").exists());
        std::fs::remove_file(d.path().join("absent/notes.txt")).unwrap();
        // Nor one holding another major's directory (pg_upgrade leaves the old one).
        std::fs::create_dir_all(d.path().join("absent/PG_15_2/5")).unwrap();
        empty_interrupted(&data, 18).unwrap();
        assert!(d.path().join("absent/PG_18_1/5/16390").exists());
        assert!(d.path().join("absent/PG_15_2/5").exists());
        std::fs::remove_dir_all(d.path().join("absent/PG_15_2")).unwrap();
        empty_interrupted(&data, 18).unwrap();
        assert!(check_free(&placed, &names).is_ok());
        std::fs::write(d.path().join("absent/x"), b"").unwrap();
        made.undo();
        assert!(!d.path().join("absent").exists());
    }
}
