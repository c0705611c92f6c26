//! The local files a push reads and a restore writes, confined to one directory.
//!
//! The WAL daemon runs inside `pgwarden run`, as root in most containers, and takes
//! paths over its control socket from whoever can reach it (postgres, or a SQL
//! superuser through `COPY … TO PROGRAM`). So every file is reached through a
//! directory descriptor opened once (`PGDATA/pg_wal`), by a single name that is a WAL
//! file name (no `/`, no `..`), without following symlinks, and with the file-system
//! rights of the run-as user (`setfsuid`, on a blocking thread of its own). A source
//! must also be a regular file owned by that user. A destination is written to a temp
//! file in the same directory, fsynced and renamed into place: it never holds a
//! partial file.
//!
//! pgwarden may replace the directory while it runs (`pgwarden reinit`, a reclone
//! after a failed pg_rewind: PGDATA is rebuilt, with a new `pg_wal`). So before each
//! operation the path is checked (one `stat`) to still name the directory held, and
//! is opened again when it names another one; the spool, which a rebuild removes, is
//! made again first.

use crate::fsutil::Owner;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// Numbers temp files, so that concurrent writes in one process never share one.
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A directory the daemon (or a one-shot command) reads and writes WAL files in.
/// Clones share the open directory, and see it opened again when it was replaced.
#[derive(Clone)]
pub struct LocalDir {
    path: PathBuf,
    owner: Option<Owner>,
    /// The directory held now; swapped when `path` is found to name another one.
    held: Arc<RwLock<Arc<Opened>>>,
    recreate: Option<Arc<Recreate>>,
}

/// How a directory that a rebuild of PGDATA removed is made again (the spool).
#[derive(Debug, Clone)]
pub struct Recreate {
    /// Its mode.
    pub mode: u32,
    /// Its owner (when pgwarden is root).
    pub owner: Option<Owner>,
    /// It is made again only while this file exists: `PGDATA/PG_VERSION` for the
    /// spool, so that a PGDATA being rebuilt, which must read as empty or as an
    /// interrupted bootstrap, never gets a stray directory.
    pub only_with: PathBuf,
}

/// One opening of the directory.
struct Opened {
    fd: OwnedFd,
    /// Device and inode of what `fd` holds, to tell whether `path` still names it.
    id: (u64, u64),
    /// The path with symlinks resolved at that opening, for [`LocalDir::name_in`].
    canonical: PathBuf,
}

impl Opened {
    fn open(path: &Path) -> io::Result<Opened> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open the directory", path, e))?;
        // From the descriptor, not the path: the path may have changed in between.
        let st = nix::sys::stat::fstat(&fd).map_err(|e| io_err("stat", path, e))?;
        Ok(Opened {
            fd,
            id: file_id(&st),
            canonical: path.canonicalize()?,
        })
    }
}

/// Device and inode: what tells two directories apart.
// dev_t and ino_t are u64 on 64-bit Linux, not everywhere.
#[allow(clippy::useless_conversion)]
fn file_id(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

impl std::fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalDir({})", self.path.display())
    }
}

fn io_err(what: &str, path: &Path, e: nix::Error) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Refuses anything but a plain WAL file name (or a temp name of ours).
fn plain_name(name: &str) -> io::Result<&str> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{name:?} is not a file name in the WAL directory"),
        ));
    }
    Ok(name)
}

impl LocalDir {
    /// Opens `path` (symlinks on the way are followed: pg_wal may be one, made by
    /// `initdb --waldir`). Files are handled with `owner`'s rights when given and
    /// pgwarden is root.
    pub fn open(path: &Path, owner: Option<Owner>) -> io::Result<LocalDir> {
        let owner = owner.filter(|_| nix::unistd::geteuid().is_root());
        Ok(LocalDir {
            held: Arc::new(RwLock::new(Arc::new(Opened::open(path)?))),
            path: path.to_path_buf(),
            owner,
            recreate: None,
        })
    }

    /// Makes `path` (with `recreate`'s mode and owner) and opens it; when it is
    /// removed later, it is made again as [`Recreate`] says.
    pub fn create(path: &Path, owner: Option<Owner>, recreate: Recreate) -> io::Result<LocalDir> {
        crate::fsutil::ensure_dir(path, recreate.mode, recreate.owner)?;
        let mut dir = LocalDir::open(path, owner)?;
        dir.recreate = Some(Arc::new(recreate));
        Ok(dir)
    }

    /// The directory `path` names now: the one held, unless `path` was replaced since
    /// (then it is opened, and held from then on). When `path` names nothing, the
    /// held one is kept (its operations fail as they did) unless it is to be made
    /// again.
    fn dir(&self) -> Arc<Opened> {
        let held = Arc::clone(&self.held.read().unwrap_or_else(PoisonError::into_inner));
        match nix::sys::stat::stat(&self.path) {
            Ok(st) if file_id(&st) == held.id => held,
            Ok(_) => self.reopen(held),
            Err(nix::Error::ENOENT) => match &self.recreate {
                Some(r) if r.only_with.exists() => {
                    match crate::fsutil::ensure_dir(&self.path, r.mode, r.owner) {
                        Ok(()) => self.reopen(held),
                        Err(e) => {
                            tracing::warn!(dir = %self.path.display(), error = %e, "cannot make the directory again");
                            held
                        }
                    }
                }
                _ => held,
            },
            Err(_) => held,
        }
    }

    fn reopen(&self, held: Arc<Opened>) -> Arc<Opened> {
        match Opened::open(&self.path) {
            Ok(new) => {
                let new = Arc::new(new);
                *self.held.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&new);
                tracing::info!(dir = %self.path.display(), "the directory was replaced (PGDATA rebuilt); working in the new one");
                new
            }
            Err(e) => {
                tracing::warn!(dir = %self.path.display(), error = %e, "the directory was replaced but cannot be opened");
                held
            }
        }
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name of `path` when `path` is directly in this directory; refuses
    /// anything else: another directory, `..`, a symlinked parent.
    pub fn name_in(&self, path: &Path) -> io::Result<String> {
        let refuse = |why: &str| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is {why}; pgwarden only handles files directly in {}",
                    path.display(),
                    self.path.display()
                ),
            )
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refuse("not a file name"))?;
        let parent = path.parent().ok_or_else(|| refuse("not a file path"))?;
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(refuse("a path with .."));
        }
        let canonical = &self.dir().canonical;
        let same = parent.canonicalize().is_ok_and(|p| &p == canonical);
        if !same {
            return Err(refuse("outside the WAL directory"));
        }
        Ok(plain_name(name)?.to_owned())
    }

    /// Runs `f` with the owner's file-system identity. Only call on a thread of its
    /// own (`spawn_blocking`): the identity is per thread.
    fn as_owner<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(o) = self.owner else {
            return f();
        };
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
            }
        }
        let _restore = Restore;
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(o.gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(o.uid));
        f()
    }

    /// Opens `name` for reading: a regular file, not a symlink, owned by the owner.
    pub fn open_source(&self, name: &str) -> io::Result<File> {
        let name = plain_name(name)?;
        let path = self.path.join(name);
        let dir = self.dir();
        self.as_owner(|| {
            let fd = nix::fcntl::openat(
                dir.fd.as_fd(),
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| match e {
                nix::Error::ELOOP => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} is a symlink; refusing to follow it", path.display()),
                ),
                e => io_err("open", &path, e),
            })?;
            let st = nix::sys::stat::fstat(&fd).map_err(|e| io_err("stat", &path, e))?;
            if st.st_mode & libc_s_ifmt() != libc_s_ifreg() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} is not a regular file", path.display()),
                ));
            }
            if let Some(o) = self.owner {
                if st.st_uid != o.uid {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} belongs to uid {}, not to the postgres user ({}); refusing it",
                            path.display(),
                            st.st_uid,
                            o.uid
                        ),
                    ));
                }
            }
            Ok(File::from(fd))
        })
    }

    /// Writes `name` through `fill`, which gets a fresh temp file in this directory,
    /// opened read-write so that `fill` may read back what it wrote. On success the
    /// file is fsynced and renamed onto `name` (replacing a symlink there, never
    /// following it); on failure it is removed.
    pub fn write<T>(
        &self,
        name: &str,
        fill: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let name = plain_name(name)?;
        let dir = self.dir();
        self.as_owner(|| {
            // Unique within this process; a leftover of a killed process that had the
            // same pid is replaced.
            let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = format!(".pgwarden-restore-{name}-{}-{seq}", std::process::id());
            let open = || {
                nix::fcntl::openat(
                    dir.fd.as_fd(),
                    tmp.as_str(),
                    OFlag::O_RDWR
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
            };
            let fd = match open() {
                Err(nix::Error::EEXIST) => {
                    let _ = nix::unistd::unlinkat(
                        dir.fd.as_fd(),
                        tmp.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    open()
                }
                other => other,
            }
            .map_err(|e| io_err("create", &self.path.join(&tmp), e))?;
            let mut file = File::from(fd);
            let result = fill(&mut file).and_then(|v| {
                file.flush()?;
                file.sync_all()?;
                nix::fcntl::renameat(dir.fd.as_fd(), tmp.as_str(), dir.fd.as_fd(), name)
                    .map_err(|e| io_err("rename into", &self.path.join(name), e))?;
                Ok(v)
            });
            if result.is_err() {
                let _ = nix::unistd::unlinkat(
                    dir.fd.as_fd(),
                    tmp.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
            result
        })
    }

    /// Moves `name` from this directory to `to_name` in `to`, without following
    /// symlinks at either end; `false` when there is no such file.
    pub fn move_to(&self, name: &str, to: &LocalDir, to_name: &str) -> io::Result<bool> {
        let (name, to_name) = (plain_name(name)?, plain_name(to_name)?);
        let (from, to_dir) = (self.dir(), to.dir());
        self.as_owner(|| {
            match nix::fcntl::renameat(from.fd.as_fd(), name, to_dir.fd.as_fd(), to_name) {
                Ok(()) => Ok(true),
                Err(nix::Error::ENOENT) => Ok(false),
                Err(e) => Err(io_err("rename", &self.path.join(name), e)),
            }
        })
    }

    /// `lstat` of `name` here.
    pub fn stat(&self, name: &str) -> io::Result<nix::sys::stat::FileStat> {
        let name = plain_name(name)?;
        nix::sys::stat::fstatat(self.dir().fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("stat", &self.path.join(name), e))
    }

    /// True when `name` exists here (as anything, symlinks not followed).
    pub fn contains(&self, name: &str) -> bool {
        plain_name(name).is_ok()
            && nix::sys::stat::fstatat(self.dir().fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok()
    }

    /// Removes `name` if it is there.
    pub fn remove(&self, name: &str) {
        if plain_name(name).is_ok() {
            let _ = nix::unistd::unlinkat(
                self.dir().fd.as_fd(),
                name,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }

    /// The names in this directory.
    pub fn names(&self) -> Vec<String> {
        // By path, so always the directory there now; the spool is made again first.
        let _ = self.dir();
        std::fs::read_dir(&self.path)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}

fn libc_s_ifreg() -> u32 {
    nix::sys::stat::SFlag::S_IFREG.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_plain_files_directly_inside_are_reached() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        std::fs::write(wal.join("000000010000000000000001"), b"wal").unwrap();
        std::fs::write(tmp.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("secret"),
            wal.join("000000010000000000000002"),
        )
        .unwrap();
        let dir = LocalDir::open(&wal, None).unwrap();
        assert_eq!(
            dir.name_in(&wal.join("000000010000000000000001")).unwrap(),
            "000000010000000000000001"
        );
        for bad in [
            tmp.path().join("secret"),
            wal.join("../secret"),
            PathBuf::from("/etc/passwd"),
        ] {
            let e = dir.name_in(&bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{bad:?}");
        }
        assert!(dir.open_source("000000010000000000000001").is_ok());
        let e = dir.open_source("000000010000000000000002").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(dir.open_source("../secret").is_err());

        // A write replaces a symlink planted at the destination, not its target.
        std::os::unix::fs::symlink(tmp.path().join("secret"), wal.join("RECOVERYXLOG")).unwrap();
        dir.write("RECOVERYXLOG", |f| f.write_all(b"restored"))
            .unwrap();
        assert_eq!(std::fs::read(tmp.path().join("secret")).unwrap(), b"secret");
        assert_eq!(
            std::fs::read(wal.join("RECOVERYXLOG")).unwrap(),
            b"restored"
        );
        // A failed write leaves nothing behind.
        let e = dir
            .write("000000010000000000000009", |_| -> io::Result<()> {
                Err(io::Error::other("corrupt"))
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "corrupt");
        assert!(!wal.join("000000010000000000000009").exists());
        assert_eq!(std::fs::read_dir(&wal).unwrap().count(), 3);
    }

    #[test]
    fn a_replaced_directory_is_opened_again_and_a_removed_spool_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join("pg_wal");
        std::fs::create_dir(&wal).unwrap();
        let dir = LocalDir::open(&wal, None).unwrap();
        let clone = dir.clone();
        dir.write("000000010000000000000001", |f| f.write_all(b"old"))
            .unwrap();

        // Removed and nothing in its place: the held directory is kept, as before.
        let moved = tmp.path().join("pg_wal.old");
        std::fs::rename(&wal, &moved).unwrap();
        assert!(dir.contains("000000010000000000000001"));
        std::fs::rename(&moved, &wal).unwrap();

        // Replaced, as a rebuild of PGDATA does: every operation, of every clone,
        // acts on the new one.
        std::fs::remove_dir_all(&wal).unwrap();
        std::fs::create_dir(&wal).unwrap();
        assert!(!clone.contains("000000010000000000000001"));
        dir.write("00000002.history", |f| f.write_all(b"new"))
            .unwrap();
        assert_eq!(std::fs::read(wal.join("00000002.history")).unwrap(), b"new");
        assert!(clone.open_source("00000002.history").is_ok());
        assert_eq!(
            clone.name_in(&wal.join("00000002.history")).unwrap(),
            "00000002.history"
        );
        assert!(clone.stat("00000002.history").is_ok());

        // The spool is made again once the cluster it belongs to is there again.
        let marker = tmp.path().join("PG_VERSION");
        let spool_path = tmp.path().join("spool");
        let recreate = Recreate {
            mode: 0o700,
            owner: None,
            only_with: marker.clone(),
        };
        let spool = LocalDir::create(&spool_path, None, recreate).unwrap();
        std::fs::remove_dir_all(&spool_path).unwrap();
        assert!(spool.write("000000020000000000000003", |_| Ok(())).is_err());
        assert!(!spool_path.exists(), "made again while PGDATA is rebuilt");
        std::fs::write(&marker, b"18\n").unwrap();
        spool
            .write("000000020000000000000003", |f| f.write_all(b"seg"))
            .unwrap();
        let mode = std::fs::metadata(&spool_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        assert!(spool
            .move_to("000000020000000000000003", &dir, "RECOVERYXLOG")
            .unwrap());
        assert_eq!(std::fs::read(wal.join("RECOVERYXLOG")).unwrap(), b"seg");
        assert_eq!(spool.names(), Vec::<String>::new());
    }
}
