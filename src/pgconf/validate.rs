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
    let mut cmd = Command::new(postgres);
    cmd.arg("-D")
        .arg(dir.path())
        .arg("-C")
        .arg("port")
        .env("LC_MESSAGES", "C");
    run_as(&mut cmd, user);
    let out = runner.output(&mut cmd, None).await?;
    if out.status.success() {
        return Ok(());
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
