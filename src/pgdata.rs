//! Read-only facts about a data directory: is it initialised, half-bootstrapped, or
//! something else; and what `postmaster.pid` says.

use std::io;
use std::path::{Path, PathBuf};

/// Name of the directory, inside PGDATA, that a bootstrap builds in before it moves the
/// result into place. Its presence without `PG_VERSION` means an interrupted bootstrap.
pub const STAGING_DIR: &str = ".pgwarden-staging";

/// A note that pg_rewind could not rejoin this standby to its primary and its data
/// was kept (`PGWARDEN_REWIND_FAILED=keep`), with why. While it is there, postgres is
/// pinned to its own timeline (`recovery_target_timeline = 'current'`): its primary's
/// newer timeline is not a child of its history, and a standby that looks for it (in
/// the archive, through `restore_command`) stops with a FATAL error at every start.
/// The next rewind removes it.
pub const REWIND_KEPT: &str = "pgwarden.rewind-kept";

/// The data directory's incarnation: a random token written when a bootstrap fills
/// PGDATA (initdb, a clone, a restore) and when pg_rewind rewrites it, never carried by
/// a copy. Two backups of the same incarnation saw the same files with the same
/// clock: only then does an incremental trust a file's modification time (see
/// `backup::engine::incremental::Parent::unchanged`).
pub const INCARNATION: &str = "pgwarden.incarnation";

/// Writes a new incarnation into the data directory `dir` (see [`INCARNATION`]).
pub fn new_incarnation(dir: &Path, owner: Option<crate::fsutil::Owner>) -> io::Result<String> {
    let token = crate::fsutil::random_token();
    crate::fsutil::write_atomic(
        &dir.join(INCARNATION),
        format!("{token}\n").as_bytes(),
        owner,
        0o600,
    )?;
    Ok(token)
}

/// The incarnation of the data directory `dir`; a new one is written when it has none
/// (a PGDATA made before pgwarden kept one).
pub fn incarnation(dir: &Path, owner: Option<crate::fsutil::Owner>) -> io::Result<String> {
    match std::fs::read_to_string(dir.join(INCARNATION)) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => new_incarnation(dir, owner),
    }
}

/// Removes the [`REWIND_KEPT`] note from the data directory `dir`, if it is there: a
/// rewind that succeeded, a promotion, or a copy of another instance that carried its
/// note along (pg_basebackup and pg_rewind copy every file of their source).
pub fn forget_rewind_kept(dir: &Path) -> io::Result<()> {
    crate::fsutil::remove_if_present(&dir.join(REWIND_KEPT))
}

/// Entries that may sit in an empty volume without making it "used".
const IGNORABLE: &[&str] = &["lost+found"];

/// The state of PGDATA as found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDirState {
    /// The directory does not exist.
    Missing,
    /// It exists and holds nothing of note.
    Empty,
    /// A complete cluster of this major version.
    Initialized {
        /// Contents of `PG_VERSION`.
        version: u32,
    },
    /// A bootstrap of ours was interrupted; everything but ignorable entries is ours.
    InterruptedBootstrap,
    /// Not empty, not a cluster, not ours: never touched.
    Foreign(Vec<String>),
}

impl DataDirState {
    /// The cluster's major version, for an initialised PGDATA.
    pub fn version(&self) -> Option<u32> {
        match self {
            DataDirState::Initialized { version } => Some(*version),
            _ => None,
        }
    }
}

/// Looks at `pgdata` without changing it.
pub fn inspect(pgdata: &Path) -> io::Result<DataDirState> {
    let entries = match std::fs::read_dir(pgdata) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DataDirState::Missing),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", pgdata.display()),
            ))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !IGNORABLE.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    if names.iter().any(|n| n == "PG_VERSION") {
        let text = std::fs::read_to_string(pgdata.join("PG_VERSION"))?;
        let version = text
            .trim()
            .split('.')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}/PG_VERSION holds {:?}, not a version",
                        pgdata.display(),
                        text.trim()
                    ),
                )
            })?;
        return Ok(DataDirState::Initialized { version });
    }
    if names.is_empty() {
        return Ok(DataDirState::Empty);
    }
    if names.iter().any(|n| n == STAGING_DIR) {
        return Ok(DataDirState::InterruptedBootstrap);
    }
    Ok(DataDirState::Foreign(names))
}

/// Path of the staging directory for `pgdata`.
pub fn staging_dir(pgdata: &Path) -> PathBuf {
    pgdata.join(STAGING_DIR)
}

/// What the postmaster says about itself in `postmaster.pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    /// The postmaster's pid (line 1).
    pub pid: i32,
    /// The status word (line 8): `starting`, `stopping`, `ready` or `standby`.
    pub status: Option<String>,
}

/// Reads `postmaster.pid`; `None` when it is absent or not yet complete.
pub fn read_postmaster_pid(pgdata: &Path) -> Option<PostmasterPid> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    parse_postmaster_pid(&text)
}

fn parse_postmaster_pid(text: &str) -> Option<PostmasterPid> {
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let status = lines
        .nth(6)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Some(PostmasterPid { pid, status })
}

/// True when the postmaster says it accepts connections (as primary or hot standby).
pub fn postmaster_ready(pgdata: &Path, pid: i32) -> bool {
    matches!(read_postmaster_pid(pgdata), Some(p) if p.pid == pid
        && matches!(p.status.as_deref(), Some("ready") | Some("standby")))
}

/// The pid of a postmaster that is running on `pgdata` now, started by someone else
/// (a second pgwarden on the same volume, a leftover of a killed one): its
/// `postmaster.pid` names a live process whose working directory is this PGDATA
/// (the postmaster works in its data directory), so a stale file whose pid was
/// reused by an unrelated process is not taken for one.
pub fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let pid = read_postmaster_pid(pgdata)?.pid;
    if pid <= 0 || pid == std::process::id() as i32 {
        return None;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let ours = pgdata.canonicalize().ok()?;
    (cwd == ours).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rewind_note_is_forgotten_whether_or_not_it_is_there() {
        let dir = tempfile::tempdir().unwrap();
        forget_rewind_kept(dir.path()).unwrap();
        std::fs::write(dir.path().join(REWIND_KEPT), "why\n").unwrap();
        forget_rewind_kept(dir.path()).unwrap();
        assert!(!dir.path().join(REWIND_KEPT).exists());
    }

    #[test]
    fn a_live_process_working_elsewhere_is_not_a_postmaster_here() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(running_postmaster(dir.path()), None, "no postmaster.pid");
        // A pid that is alive (ours, via the parent test harness) but works elsewhere.
        let parent = nix::unistd::getppid().as_raw();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{parent}\n/x\n")).unwrap();
        assert_eq!(running_postmaster(dir.path()), None);
        // A child working in this directory is taken for a running postmaster.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n/x\n", child.id()),
        )
        .unwrap();
        assert_eq!(running_postmaster(dir.path()), Some(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(running_postmaster(dir.path()), None, "gone");
    }

    #[test]
    fn parses_postmaster_pid() {
        let text = "4242\n/var/lib/postgresql/data\n1700000000\n5432\n/var/run/postgresql\n*\n  1234  5678\nready   \n";
        let p = parse_postmaster_pid(text).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.status.as_deref(), Some("ready"));
        let starting = parse_postmaster_pid("4242\n/x\n").unwrap();
        assert_eq!(starting.status, None);
        assert!(parse_postmaster_pid("").is_none());
    }

    #[test]
    fn classifies_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("data");
        assert_eq!(inspect(&d).unwrap(), DataDirState::Missing);
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir(d.join("lost+found")).unwrap();
        assert_eq!(inspect(&d).unwrap(), DataDirState::Empty);
        std::fs::create_dir(d.join(STAGING_DIR)).unwrap();
        std::fs::create_dir(d.join("base")).unwrap();
        assert_eq!(inspect(&d).unwrap(), DataDirState::InterruptedBootstrap);
        std::fs::write(d.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(
            inspect(&d).unwrap(),
            DataDirState::Initialized { version: 15 }
        );
        let f = tmp.path().join("foreign");
        std::fs::create_dir(&f).unwrap();
        std::fs::write(f.join("notes.txt"), "x").unwrap();
        assert_eq!(
            inspect(&f).unwrap(),
            DataDirState::Foreign(vec!["notes.txt".into()])
        );
    }
}
