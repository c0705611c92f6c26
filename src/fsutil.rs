//! File-system helpers: atomic writes, and directories with the right owner and mode.

use nix::unistd::{Gid, Uid};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Owner to give files and directories when pgwarden runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

fn chown(path: &Path, owner: Owner) -> io::Result<()> {
    nix::unistd::chown(
        path,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("chown {}: {e}", path.display()),
        )
    })
}

/// Writes `contents` to `path` through a temp file in the same directory: write, fsync,
/// rename, fsync the directory. Returns `false`, touching nothing, when the file already
/// holds exactly `contents`.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    owner: Option<Owner>,
    mode: u32,
) -> io::Result<bool> {
    if fs::read(path).map(|old| old == contents).unwrap_or(false) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pgwarden-tmp-")
        .tempfile_in(dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("create a temp file in {}: {e}", dir.display()),
            )
        })?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some(o) = owner {
        chown(tmp.path(), o)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| {
        io::Error::new(
            e.error.kind(),
            format!("rename into {}: {}", path.display(), e.error),
        )
    })?;
    fsync_dir(dir)?;
    Ok(true)
}

/// Removes `path`: a directory with everything under it, anything else (a symbolic
/// link included, never followed) as a file.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Removes the file `path` if it is there; one that is not is no error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the directory entry changes in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if needed, then sets `mode` and, when given, the owner.
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> io::Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    if let Some(o) = owner {
        chown(dir, o)?;
    }
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Gives every entry under `dir` not already owned by `owner` to it, as the official
/// image does for a volume that was written by another UID. Symlinks are not followed.
pub fn chown_tree(dir: &Path, owner: Owner) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.uid() != owner.uid || meta.gid() != owner.gid {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            dir,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// True when `user` (uid, primary gid, supplementary groups) may execute `path`:
/// every directory on the way must be searchable and the file executable. Mode bits
/// only; ACLs are not consulted.
pub fn can_execute(path: &Path, uid: u32, gids: &[u32]) -> bool {
    let allowed = |p: &Path, bit: u32| -> bool {
        let Ok(meta) = fs::metadata(p) else {
            return false;
        };
        let mode = meta.permissions().mode();
        if uid == 0 {
            return true;
        }
        if meta.uid() == uid {
            mode & (bit << 6) != 0
        } else if gids.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    path.ancestors()
        .skip(1)
        .all(|dir| dir.as_os_str().is_empty() || allowed(dir, 0o1))
        && allowed(path, 0o1)
}

/// A fresh random token: 16 bytes from `/dev/urandom`, in hex. Without it, the time
/// and the pid still tell two writers apart.
pub fn random_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..8].copy_from_slice(&(t as u64).to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        assert!(write_atomic(&p, b"a = 1\n", None, 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a = 1\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let before = fs::metadata(&p).unwrap().ino();
        assert!(!write_atomic(&p, b"a = 1\n", None, 0o600).unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            before,
            "an unchanged file is not rewritten"
        );
        assert!(write_atomic(&p, b"a = 2\n", None, 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"a = 2\n");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn checks_execute_permission_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        let exe = private.join("tool");
        fs::write(&exe, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let stranger = 54321;
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(can_execute(&exe, stranger, &[stranger]));
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            !can_execute(&exe, stranger, &[stranger]),
            "a 0700 directory on the way blocks others"
        );
    }
}
