//! Asking postgres itself whether a rendered postgresql.conf is valid.
//!
//! `postgres -C` parses the configuration exactly as the server would (unknown
//! parameters, bad values, bad units) and exits, in about 10 ms. It needs a directory
//! that looks like a data directory, so the check runs in a scratch directory outside
//! PGDATA, which is never touched.

use super::Rendered;
use crate::process::{run_as, RunAs, Runner};
use std::process::Command;

/// postgres rejected the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The configuration is invalid; the text is postgres's own complaint.
    #[error("postgres rejects the configuration: {0}")]
    Rejected(String),
    /// The check itself could not run.
    #[error("cannot check the configuration: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks `rendered.postgresql_conf` with `<bindir>/postgres -C`.
pub async fn validate(
    rendered: &Rendered,
    postgres: &std::path::Path,
    user: Option<&RunAs>,
    runner: &Runner,
) -> Result<(), ValidationError> {
    let dir = tempfile::Builder::new()
        .prefix("pgwarden-check-")
        .tempdir()?;
    if let Some(u) = user {
        nix::unistd::chown(dir.path(), Some(u.uid.into()), Some(u.gid.into()))
            .map_err(std::io::Error::from)?;
    }
    let conf = dir.path().join("postgresql.conf");
    std::fs::write(&conf, &rendered.postgresql_conf)?;
    if let Some(u) = user {
        nix::unistd::chown(&conf, Some(u.uid.into()), Some(u.gid.into()))
            .map_err(std::io::Error::from)?;
    }
    // Asking for shared_preload_libraries parses the whole file like any parameter,
    // and returns the list as postgres reads it: a missing library would otherwise
    // only show when the server starts, after initdb.
    let mut cmd = Command::new(postgres);
    cmd.arg("-D")
        .arg(dir.path())
        .arg("-C")
        .arg("shared_preload_libraries")
        .env("LC_MESSAGES", "C");
    run_as(&mut cmd, user);
    let out = runner.output(&mut cmd, None).await?;
    if out.status.success() {
        let libdir = postgres
            .parent()
            .and_then(std::path::Path::parent)
            .map(|p| p.join("lib"));
        let listed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        return match libdir.filter(|d| d.is_dir()) {
            Some(libdir) => missing_libraries(&listed, &libdir),
            // Not a Debian-style layout: postgres will say at start.
            None => Ok(()),
        };
    }
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("skipping missing configuration file"))
        .filter_map(|l| {
            // Drop the timestamp and pid prefix; keep "invalid value for ...".
            let msg = l
                .split_once("LOG:")
                .or_else(|| l.split_once("FATAL:"))
                .map(|(_, m)| m.trim())?;
            (!msg.starts_with("configuration file"))
                .then(|| msg.replace(&conf.display().to_string(), "postgresql.conf"))
        })
        .collect();
    let detail = if complaints.is_empty() {
        out.stderr_text()
    } else {
        complaints.join("; ")
    };
    Err(ValidationError::Rejected(detail))
}

/// Refuses a `shared_preload_libraries` entry whose file is not in `libdir` (or at
/// its path), as postgres would at start.
fn missing_libraries(listed: &str, libdir: &std::path::Path) -> Result<(), ValidationError> {
    let missing: Vec<&str> = listed
        .split(',')
        .map(|l| l.trim().trim_matches('"'))
        .filter(|l| !l.is_empty())
        .filter(|lib| {
            let path = match lib.strip_prefix("$libdir/") {
                Some(rest) => libdir.join(rest),
                None if lib.contains('/') => std::path::PathBuf::from(lib),
                None => libdir.join(lib),
            };
            let with_so = path.with_file_name(format!(
                "{}.so",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            ));
            !path.is_file() && !with_so.is_file()
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::Rejected(format!(
            "shared_preload_libraries names {} that is not installed in {}",
            missing.join(", "),
            libdir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_preload_library() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg_stat_statements.so"), b"").unwrap();
        assert!(missing_libraries("", dir.path()).is_ok());
        assert!(missing_libraries("pg_stat_statements", dir.path()).is_ok());
        assert!(missing_libraries("$libdir/pg_stat_statements", dir.path()).is_ok());
        let e = missing_libraries("pg_stat_statements, timescaledb", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timescaledb") && !e.contains("pg_stat_statements,"),
            "{e}"
        );
    }
}
