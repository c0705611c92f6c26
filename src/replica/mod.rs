//! The replica side: the passfile, and deciding at start-up whether an existing PGDATA
//! comes up as a standby, stays a primary, or must rejoin through pg_rewind.

pub mod controldata;
pub mod diverge;
pub mod promote;
pub mod remote;

use crate::fsutil;
use crate::pgconf::quote;
use crate::process::{run_as, Runner};
use crate::settings::{Role, Settings};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use tracing::{info, warn};

/// Name of the file that makes postgres start as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";

/// Writes the 0600 passfile that primary_conninfo, pg_basebackup, pg_receivewal and
/// pg_rewind read the replication password from, so it never appears in a
/// connection string, a command line or postgresql.conf.
pub fn write_passfile(s: &Settings) -> Result<()> {
    match &s.primary_host {
        Some(host) => {
            write_passfile_for(s, &quote::pgpass_field(host), &s.primary_port.to_string())
        }
        None => Ok(()),
    }
}

/// Writes the passfile with one line for `host` and `port` as they go into it (`*`
/// matches any: in HA mode the upstream changes).
pub fn write_passfile_for(s: &Settings, host: &str, port: &str) -> Result<()> {
    let Some(password) = &s.replication_password else {
        return Ok(());
    };
    let line = format!(
        "{host}:{port}:*:{}:{}\n",
        quote::pgpass_field(&s.replication_user),
        quote::pgpass_field(password.expose())
    );
    fsutil::write_atomic(
        &s.passfile(),
        line.as_bytes(),
        s.run_as.as_ref().map(|u| u.owner()),
        0o600,
    )
    .context("write the replication passfile")?;
    Ok(())
}

/// True when PGDATA will start as a standby.
pub fn is_standby(data_dir: &Path) -> bool {
    data_dir.join(STANDBY_SIGNAL).exists()
}

/// Writes standby.signal.
pub fn write_standby_signal(s: &Settings, data_dir: &Path) -> Result<()> {
    fsutil::write_atomic(
        &data_dir.join(STANDBY_SIGNAL),
        b"",
        s.run_as.as_ref().map(|u| u.owner()),
        0o600,
    )
    .context("write standby.signal")?;
    Ok(())
}

/// Decides how an existing PGDATA starts when pgwarden is configured as a replica:
///
/// - last run as a standby (standby.signal, or a control file in recovery): a standby;
/// - last run as a primary, and the configured primary is on a newer timeline of the
///   same cluster: this is the old primary after a failover, so it rejoins through
///   pg_rewind and starts as a standby;
/// - otherwise (the configured primary is unreachable, or not ahead of us): this is a
///   promoted instance, and on-disk state wins: it stays a primary, with a warning.
///
/// A standby whose primary moved to a newer timeline is rewound too (pg_rewind does
/// nothing when no rewind is needed), so a replica re-pointed at a new primary follows
/// it even when it had received WAL past the fork.
pub async fn prepare(s: &Settings, runner: &Runner) -> Result<()> {
    if s.role != Role::Replica {
        if is_standby(&s.pgdata) {
            warn!("PGWARDEN_ROLE=primary but PGDATA is a standby (standby.signal); starting as a standby: run `pgwarden promote` to promote it");
        }
        return Ok(());
    }
    if s.primary_host.is_none() {
        // A standby following the restore archive: nothing to reach, nothing to rewind.
        return Ok(());
    }
    let local = controldata::read(s, runner, &s.pgdata).await?;
    let standby = is_standby(&s.pgdata) || local.was_standby();
    let remote = match remote::identify(s, runner).await {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = format!("{e:#}"), primary = ?s.primary_host, "cannot reach the primary at start-up");
            None
        }
    };
    if let Some(r) = &remote {
        if r.system_id != local.system_id {
            bail!(
                "PGWARDEN_PRIMARY_HOST: {} serves another cluster (system identifier {}, ours is {}); refusing to follow it",
                s.primary_host.as_deref().unwrap_or_default(),
                r.system_id,
                local.system_id
            );
        }
    }
    let primary_ahead = remote.as_ref().is_some_and(|r| r.timeline > local.timeline);
    if !standby && !primary_ahead {
        warn!(
            timeline = local.timeline,
            primary_timeline = remote.as_ref().map(|r| r.timeline),
            "PGWARDEN_ROLE=replica, but this instance was promoted and the configured primary is not ahead of it: it stays a primary"
        );
        return Ok(());
    }
    if primary_ahead {
        let r = remote.as_ref().map(|r| r.timeline).unwrap_or_default();
        info!(
            timeline = local.timeline,
            primary_timeline = r,
            "the primary is on a newer timeline; rewinding to rejoin it"
        );
        rewind(s, runner).await?;
    }
    // The slot on the primary is checked once postgres runs (supervisor::after_start).
    write_standby_signal(s, &s.pgdata)
}

/// Rewinds a stopped standby that went past the fork of the primary now in
/// primary_conninfo (see [`diverge`]), and makes it that primary's standby again.
pub async fn rejoin(s: &Settings, runner: &Runner) -> Result<()> {
    rewind(s, runner).await?;
    write_standby_signal(s, &s.pgdata)
}

/// Asks the rewind source for a checkpoint, so that its pg_control names its current
/// timeline even if it was promoted moments ago by something other than pgwarden.
/// Best effort: it needs the pg_checkpoint role (PostgreSQL 15 and later).
async fn checkpoint_source(s: &Settings, runner: &Runner) {
    let Some(conninfo) = s.primary_conninfo("postgres") else {
        return;
    };
    let mut cmd = Command::new(s.bin("psql"));
    cmd.args(["-XAtq", "-c", "CHECKPOINT", "-d"])
        .arg(conninfo)
        .env("PGPASSFILE", s.passfile());
    run_as(&mut cmd, s.run_as.as_ref());
    match runner.output(&mut cmd, None).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            warn!(error = %out.stderr_text(), "could not ask the primary for a checkpoint before pg_rewind")
        }
        Err(e) => warn!(error = %e, "could not ask the primary for a checkpoint before pg_rewind"),
    }
}

/// Runs pg_rewind against the configured primary. On failure, nothing more is done to
/// PGDATA: pgwarden stops with pg_rewind's own explanation.
async fn rewind(s: &Settings, runner: &Runner) -> Result<()> {
    let Some(source) = s.primary_conninfo("postgres") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    checkpoint_source(s, runner).await;
    // A target that was not shut down cleanly (a standby killed, in recovery) is first
    // recovered by pg_rewind in single-user mode, which refuses to run with
    // standby.signal present. prepare() writes it again after the rewind.
    crate::fsutil::remove_if_present(&s.pgdata.join(STANDBY_SIGNAL))
        .context("remove standby.signal before pg_rewind")?;
    // A note that an earlier rewind failed is this attempt's to write again, or not.
    crate::pgdata::forget_rewind_kept(&s.pgdata)
        .context("remove the note of an earlier failed rewind")?;
    let mut cmd = Command::new(s.bin("pg_rewind"));
    cmd.arg("--target-pgdata")
        .arg(&s.pgdata)
        .arg(format!("--source-server={source}"))
        .arg("--progress")
        .env("PGPASSFILE", s.passfile())
        .env("LC_MESSAGES", "C")
        // pg_rewind asks restore_command for old WAL, backwards: nothing to prefetch.
        .env("PGWARDEN_NO_PREFETCH", "1");
    if let Some(a) = &s.archive {
        // WAL the target needs but no longer has comes from the archive.
        cmd.arg("--restore-target-wal")
            .envs(a.env())
            .env("PGWARDEN_SOCKET_DIR", &s.socket_dir);
    }
    run_as(&mut cmd, s.run_as.as_ref());
    let out = runner.output(&mut cmd, None).await?;
    let mut touched = false;
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
    {
        // pg_rewind changes nothing in the target before it says how much it is
        // about to copy (a single-user recovery of a crashed target, before that,
        // leaves it consistent).
        touched |= line.contains("need to copy");
        if !line.trim().is_empty() {
            info!(tool = "pg_rewind", "{}", line.trim());
        }
    }
    if !out.status.success() {
        return Err(RewindError {
            pgdata: s.pgdata.display().to_string(),
            status: out.status.to_string(),
            message: out.stderr_text(),
            touched,
        }
        .into());
    }
    // pg_rewind copies the source's files: not a note of the source's own, and the
    // data directory is a new incarnation (see pgdata::INCARNATION).
    crate::pgdata::forget_rewind_kept(&s.pgdata)
        .context("remove the note of a failed rewind copied from the primary")?;
    crate::pgdata::new_incarnation(&s.pgdata, s.run_as.as_ref().map(|u| u.owner()))
        .context("PGDATA: write its incarnation after pg_rewind")?;
    Ok(())
}

/// pg_rewind could not rejoin this member to its primary.
#[derive(Debug, thiserror::Error)]
#[error(
    "pg_rewind could not rejoin {pgdata} to the primary ({status}): {message}. {}",
    if *touched {
        "It had begun to copy files: PGDATA may be inconsistent and postgres is not started on it"
    } else {
        "It had not changed PGDATA yet"
    }
)]
pub struct RewindError {
    /// The target.
    pub pgdata: String,
    /// pg_rewind's exit status.
    pub status: String,
    /// What pg_rewind said.
    pub message: String,
    /// pg_rewind had begun to copy files into PGDATA.
    pub touched: bool,
}
