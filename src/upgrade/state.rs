//! The on-disk state of an upgrade: where its work directory is, and the marker file
//! in it that names the phase (see the module documentation of [`super`]).

use super::config::Mode;
use crate::fsutil::{self, Owner};
use std::io;
use std::path::{Path, PathBuf};

/// Name of the work directory inside PGDATA, used when it cannot go beside PGDATA (a
/// mount point, or a parent directory pgwarden may not write). pg_basebackup skips
/// every file and directory whose name starts with `pgsql_tmp`, so neither a base
/// backup nor a clone of the new cluster carries the old one along; postgres never
/// removes it (it clears `pgsql_tmp` only under `base/` and the tablespaces).
pub const INSIDE: &str = "pgsql_tmp.pgwarden-upgrade";

/// Suffix of the work directory beside PGDATA: `<PGDATA>.pgwarden-upgrade`.
pub const BESIDE_SUFFIX: &str = ".pgwarden-upgrade";

/// The marker's file name in the work directory.
const MARKER: &str = "state";

/// Where an upgrade keeps its things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// PGDATA.
    pub pgdata: PathBuf,
    /// The work directory: the marker, pg_upgrade's working directory (its scripts),
    /// `new` and `old`.
    pub work: PathBuf,
}

impl Layout {
    /// The new cluster while it is built (initdb, then pg_upgrade).
    pub fn new_cluster(&self) -> PathBuf {
        self.work.join("new")
    }

    /// The old cluster once the new one has taken its place in PGDATA.
    pub fn old_cluster(&self) -> PathBuf {
        self.work.join("old")
    }

    /// The marker file.
    pub fn marker(&self) -> PathBuf {
        self.work.join(MARKER)
    }

    /// The script pg_upgrade writes when extensions have newer versions to update to.
    pub fn update_extensions(&self) -> PathBuf {
        self.work.join("update_extensions.sql")
    }

    /// True when the work directory is inside PGDATA.
    pub fn inside(&self) -> bool {
        self.work.parent() == Some(self.pgdata.as_path())
    }
}

/// The work directory beside `pgdata`.
pub fn beside(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.file_name().unwrap_or_default().to_os_string();
    name.push(BESIDE_SUFFIX);
    pgdata.with_file_name(name)
}

/// Where a new upgrade of `pgdata` works: beside PGDATA, on its file system, as
/// CloudNativePG does (`<PGDATA>-new`); inside it when PGDATA is a mount point (the
/// directory beside it is on another file system, where links and renames cannot reach)
/// or when its parent cannot be written.
pub fn choose(pgdata: &Path, mount_point: bool, parent_writable: bool) -> Layout {
    let work = if mount_point || !parent_writable {
        pgdata.join(INSIDE)
    } else {
        beside(pgdata)
    };
    Layout {
        pgdata: pgdata.to_path_buf(),
        work,
    }
}

/// Looks at the file system and chooses with [`choose`].
pub fn choose_for(pgdata: &Path) -> Layout {
    use std::os::unix::fs::MetadataExt;
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let mount_point = match (std::fs::metadata(pgdata), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev() || d.ino() == p.ino(),
        _ => true,
    };
    let writable = nix::unistd::access(
        parent,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok();
    choose(pgdata, mount_point, writable)
}

/// The work directory of an upgrade under way, if there is one. Both places are
/// looked at, whatever [`choose_for`] would say now (the parent's permissions may have
/// changed since).
pub fn find(pgdata: &Path) -> io::Result<Option<Layout>> {
    let found: Vec<PathBuf> = [beside(pgdata), pgdata.join(INSIDE)]
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Layout {
            pgdata: pgdata.to_path_buf(),
            work: one.clone(),
        })),
        _ => Err(io::Error::other(format!(
            "two upgrade work directories, {} and {}; remove the one that is not in use",
            found[0].display(),
            found[1].display()
        ))),
    }
}

/// The phases of an upgrade, in order. The marker names the one under way; each
/// transition is an atomic rewrite of the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// initdb into `new`, `pg_upgrade --check`, `pg_upgrade`. PGDATA holds the old
    /// cluster. Undone on a restart or a failure: `new` removed, the old
    /// `global/pg_control` renamed back.
    Prepare,
    /// Moving PGDATA's entries (but `PG_VERSION`) into `old`. Finished on a restart.
    SwapOut,
    /// Moving `new`'s entries into PGDATA, `PG_VERSION` last (a rename over the old
    /// one: the commit point). Finished on a restart.
    SwapIn,
    /// PGDATA holds the new cluster, which has never run: in link mode the old one can
    /// still be started by hand (docs/upgrades.md).
    Ready,
    /// The new cluster has been started: extensions and statistics are next.
    Started,
    /// Statistics are rebuilt: the first base backup is next.
    Analyzed,
    /// The old cluster is being removed.
    Cleanup,
}

impl Phase {
    /// The name in the marker.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::SwapOut => "swap-out",
            Phase::SwapIn => "swap-in",
            Phase::Ready => "ready",
            Phase::Started => "started",
            Phase::Analyzed => "analyzed",
            Phase::Cleanup => "cleanup",
        }
    }

    fn parse(text: &str) -> Option<Phase> {
        [
            Phase::Prepare,
            Phase::SwapOut,
            Phase::SwapIn,
            Phase::Ready,
            Phase::Started,
            Phase::Analyzed,
            Phase::Cleanup,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The phase under way.
    pub phase: Phase,
    /// The old major.
    pub from: u32,
    /// The new major.
    pub to: u32,
    /// The transfer mode pg_upgrade runs (or ran) with: never `auto`.
    pub mode: Mode,
}

impl Marker {
    /// The marker's text.
    pub fn render(&self) -> String {
        format!(
            "# pgwarden: a major upgrade is under way; see docs/upgrades.md before touching anything here\n\
             phase={}\nfrom={}\nto={}\nmode={}\n",
            self.phase,
            self.from,
            self.to,
            self.mode.as_str()
        )
    }

    /// Parses [`Marker::render`]'s text.
    pub fn parse(text: &str) -> Result<Marker, String> {
        let field = |key: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
                .ok_or_else(|| format!("no {key}="))
        };
        let major = |key: &str| -> Result<u32, String> {
            field(key)?
                .parse()
                .map_err(|_| format!("{key}= is not a major version"))
        };
        let phase = field("phase")?;
        let mode = field("mode")?;
        Ok(Marker {
            phase: Phase::parse(phase).ok_or_else(|| format!("unknown phase {phase:?}"))?,
            from: major("from")?,
            to: major("to")?,
            mode: Mode::parse(mode)
                .filter(|m| *m != Mode::Auto)
                .ok_or_else(|| format!("unknown mode {mode:?}"))?,
        })
    }
}

/// Reads the marker; `None` when there is none.
pub fn read(layout: &Layout) -> io::Result<Option<Marker>> {
    let path = layout.marker();
    match std::fs::read_to_string(&path) {
        Ok(text) => Marker::parse(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("read {}: {e}", path.display()),
        )),
    }
}

/// Writes the marker atomically (durable when this returns).
pub fn write(layout: &Layout, marker: &Marker, owner: Option<Owner>) -> io::Result<()> {
    fsutil::write_atomic(&layout.marker(), marker.render().as_bytes(), owner, 0o600)?;
    Ok(())
}

/// The record an upgraded cluster keeps in its PGDATA: which majors it came from. It
/// is what gives the cluster its own server name in the archive (see
/// [`super::archive_server`]), and base backups and clones carry it along.
pub const RECORD: &str = "pgwarden.upgraded";

/// The major the cluster in `pgdata` was last upgraded to, from its record.
pub fn upgraded_to(pgdata: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pgdata.join(RECORD)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("to="))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_directory_goes_beside_unless_it_cannot() {
        let p = Path::new("/var/lib/postgresql/data/pgdata");
        assert_eq!(
            choose(p, false, true).work,
            Path::new("/var/lib/postgresql/data/pgdata.pgwarden-upgrade")
        );
        let inside = choose(p, true, true);
        assert_eq!(
            inside.work,
            Path::new("/var/lib/postgresql/data/pgdata/pgsql_tmp.pgwarden-upgrade")
        );
        assert!(inside.inside());
        assert!(!choose(p, false, true).inside());
        assert_eq!(choose(p, false, false).work, inside.work);
    }

    #[test]
    fn finds_either_place_and_refuses_two() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("data");
        std::fs::create_dir(&p).unwrap();
        assert_eq!(find(&p).unwrap(), None);
        std::fs::create_dir(p.join(INSIDE)).unwrap();
        assert_eq!(find(&p).unwrap().unwrap().work, p.join(INSIDE));
        std::fs::create_dir(beside(&p)).unwrap();
        assert!(find(&p).unwrap_err().to_string().contains("two upgrade"));
    }

    #[test]
    fn the_marker_reads_back() {
        let m = Marker {
            phase: Phase::SwapIn,
            from: 15,
            to: 18,
            mode: Mode::Link,
        };
        assert_eq!(Marker::parse(&m.render()).unwrap(), m);
        assert!(Marker::parse("phase=later\nfrom=15\nto=18\nmode=link\n")
            .unwrap_err()
            .contains("later"));
        assert!(Marker::parse("phase=ready\nfrom=15\nto=18\nmode=auto\n").is_err());
        assert!(Marker::parse("phase=ready\nto=18\nmode=link\n")
            .unwrap_err()
            .contains("from="));
        assert!(Phase::Prepare < Phase::SwapOut && Phase::Started < Phase::Cleanup);
    }
}
