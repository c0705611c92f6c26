//! A user id with no passwd entry, such as OpenShift's arbitrary UID (group 0, nothing in
//! /etc/passwd). initdb refuses to run without a user name ("could not look up effective
//! user ID"), and postgres's peer authentication needs one too. As the official image
//! does, pgwarden then gives its children a passwd entry through nss_wrapper (Debian's
//! libnss-wrapper): `LD_PRELOAD` and two small files describing this UID as `postgres`.

use std::path::{Path, PathBuf};

/// The user name the arbitrary UID gets, as in the official image.
pub const NAME: &str = "postgres";

/// Where Debian and other distributions install the library.
const LIBRARY_GLOBS: &[(&str, &str)] = &[
    ("/usr/lib", "libnss_wrapper.so"),
    ("/lib", "libnss_wrapper.so"),
];

/// A passwd line for `uid` as [`NAME`], and the group line for `gid`.
pub fn entries(uid: u32, gid: u32, home: &Path) -> (String, String) {
    (
        format!(
            "{NAME}:x:{uid}:{gid}:PostgreSQL:{}:/bin/false\n",
            home.display()
        ),
        format!("{NAME}:x:{gid}:\n"),
    )
}

/// The user name nss_wrapper gives `uid`, when pgwarden (or the user) set it up.
pub fn wrapped_name(uid: u32) -> Option<String> {
    let path = std::env::var_os("NSS_WRAPPER_PASSWD")?;
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// Finds libnss_wrapper.so in the usual library directories.
pub fn find_library() -> Option<PathBuf> {
    for (root, file) in LIBRARY_GLOBS {
        let direct = Path::new(root).join(file);
        if direct.is_file() {
            return Some(direct);
        }
        // Multiarch: /usr/lib/x86_64-linux-gnu/, /usr/lib/aarch64-linux-gnu/, ...
        if let Ok(rd) = std::fs::read_dir(root) {
            let mut dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            dirs.sort();
            if let Some(p) = dirs.into_iter().map(|d| d.join(file)).find(|p| p.is_file()) {
                return Some(p);
            }
        }
    }
    None
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The UID has a name already (or is root): nothing to do.
    Known,
    /// nss_wrapper is set up for the children, with these files.
    Wrapped {
        /// The library preloaded.
        library: PathBuf,
        /// The passwd file.
        passwd: PathBuf,
    },
    /// No name, and no libnss_wrapper to give one: initdb will fail.
    Unknown,
}

/// Gives this process's children a passwd entry when its UID has none. Must run before
/// any thread is started: it sets environment variables of this process.
///
/// The files go to the first writable of `dirs` (the socket directory, which must be
/// writable anyway, then the temp dir), so a read-only root file system is fine.
pub fn ensure(dirs: &[PathBuf], home: &Path) -> Identity {
    let uid = nix::unistd::geteuid();
    if uid.is_root() || matches!(nix::unistd::User::from_uid(uid), Ok(Some(_))) {
        return Identity::Known;
    }
    if wrapped_name(uid.as_raw()).is_some() {
        return Identity::Known;
    }
    let Some(library) = find_library() else {
        return Identity::Unknown;
    };
    let (passwd_line, group_line) = entries(uid.as_raw(), nix::unistd::getegid().as_raw(), home);
    for dir in dirs {
        let _ = std::fs::create_dir_all(dir);
        let passwd = dir.join("pgwarden-nss-passwd");
        let group = dir.join("pgwarden-nss-group");
        let written = crate::fsutil::write_atomic(&passwd, passwd_line.as_bytes(), None, 0o644)
            .and_then(|_| crate::fsutil::write_atomic(&group, group_line.as_bytes(), None, 0o644));
        if written.is_ok() {
            // Single-threaded still (see the doc comment), so changing the environment
            // cannot race a reader.
            let preload = match std::env::var("LD_PRELOAD") {
                Ok(p) if !p.is_empty() => format!("{} {p}", library.display()),
                _ => library.display().to_string(),
            };
            std::env::set_var("LD_PRELOAD", preload);
            std::env::set_var("NSS_WRAPPER_PASSWD", &passwd);
            std::env::set_var("NSS_WRAPPER_GROUP", &group);
            return Identity::Wrapped { library, passwd };
        }
    }
    Identity::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_uid_as_postgres() {
        let (passwd, group) = entries(1000650000, 0, Path::new("/var/lib/postgresql/data"));
        assert_eq!(
            passwd,
            "postgres:x:1000650000:0:PostgreSQL:/var/lib/postgresql/data:/bin/false\n"
        );
        assert_eq!(group, "postgres:x:0:\n");
    }
}
