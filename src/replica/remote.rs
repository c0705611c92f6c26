//! Talking to the primary as the replication role: who it is, and our slot on it.
//!
//! Both go through PostgreSQL's own client tools (psql in replication mode, and
//! pg_receivewal), which read the password from the passfile.

use crate::pgconf::quote::conninfo_value;
use crate::process::{run_as, Runner};
use crate::settings::Settings;
use anyhow::{bail, Result};
use std::process::Command;

/// What `IDENTIFY_SYSTEM` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSystem {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The timeline it is on.
    pub timeline: u32,
    /// Its current WAL position.
    pub lsn: String,
}

fn with_primary_env(s: &Settings, cmd: &mut Command) {
    cmd.env("PGPASSFILE", s.passfile())
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGAPPNAME", format!("pgwarden {}", s.name))
        .env_remove("PGPASSWORD");
    run_as(cmd, s.run_as.as_ref());
}

/// Asks the primary who it is, over a replication connection (the kind pg_hba's
/// replication rule governs). Errors carry libpq's message, for example a refused
/// pg_hba entry or a failed password.
pub async fn identify(s: &Settings, runner: &Runner) -> Result<RemoteSystem> {
    let Some(conninfo) = s.primary_conninfo("replication") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    identify_at(s, runner, &conninfo).await
}

/// `IDENTIFY_SYSTEM` on the server `conninfo` names. On a standby it answers the
/// timeline it replays and how far it has WAL.
pub async fn identify_at(s: &Settings, runner: &Runner, conninfo: &str) -> Result<RemoteSystem> {
    let text = replication_command(s, runner, conninfo, "IDENTIFY_SYSTEM").await?;
    let fields: Vec<&str> = text.trim().split('|').collect();
    match fields.as_slice() {
        [sysid, tli, lsn, ..] => Ok(RemoteSystem {
            system_id: sysid.to_string(),
            timeline: tli.parse()?,
            lsn: lsn.to_string(),
        }),
        _ => bail!("unexpected IDENTIFY_SYSTEM answer {:?}", text.trim()),
    }
}

/// `IDENTIFY_SYSTEM` on the local instance, over its unix socket as the superuser: on
/// a standby, the timeline of the last record it replayed and how far it has WAL on
/// that timeline.
pub async fn identify_local(s: &Settings, runner: &Runner) -> Result<RemoteSystem> {
    let conninfo = format!(
        "host={} port={} user={} dbname=replication",
        conninfo_value(&s.socket_dir.to_string_lossy()),
        s.port,
        conninfo_value(&s.superuser)
    );
    identify_at(s, runner, &conninfo).await
}

/// The history file of `timeline` on the primary (`TIMELINE_HISTORY`), as text: the
/// timelines it descends from, and where each ended.
pub async fn timeline_history(s: &Settings, runner: &Runner, timeline: u32) -> Result<String> {
    let Some(conninfo) = s.primary_conninfo("replication") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    let command = format!("TIMELINE_HISTORY {timeline}");
    let text = replication_command(s, runner, &conninfo, &command).await?;
    // One row: the file name, then its content (which spans lines).
    match text.split_once('|') {
        Some((_, content)) => Ok(content.to_owned()),
        None => bail!("unexpected TIMELINE_HISTORY answer {:?}", text.trim()),
    }
}

/// Runs one replication command through psql on a replication connection to
/// `conninfo`; returns its rows, fields separated by `|`.
async fn replication_command(
    s: &Settings,
    runner: &Runner,
    conninfo: &str,
    command: &str,
) -> Result<String> {
    let mut cmd = Command::new(s.bin("psql"));
    cmd.args([
        "-XAtq",
        "-v",
        "ON_ERROR_STOP=1",
        "-F",
        "|",
        "-c",
        command,
        "-d",
    ])
    .arg(format!("{conninfo} replication=true"));
    with_primary_env(s, &mut cmd);
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!("{}", out.stderr_text());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The major the primary runs (`SHOW server_version_num` over a replication
/// connection): a replica of the old major waits for its primary's upgrade.
pub async fn server_major(s: &Settings, runner: &Runner) -> Result<u32> {
    let Some(conninfo) = s.primary_conninfo("replication") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    let text = replication_command(s, runner, &conninfo, "SHOW server_version_num").await?;
    match text.trim().parse::<u32>() {
        Ok(num) => Ok(num / 10_000),
        Err(_) => bail!("unexpected server_version_num {:?}", text.trim()),
    }
}

/// Makes sure our physical slot exists on the primary, creating it if it is gone.
pub async fn ensure_slot(s: &Settings, runner: &Runner) -> Result<()> {
    let Some(conninfo) = s.primary_conninfo("replication") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    let mut cmd = Command::new(s.bin("pg_receivewal"));
    cmd.arg("--create-slot")
        .arg("--if-not-exists")
        .arg("--no-password")
        .arg(format!("--slot={}", s.slot_name()))
        .arg(format!("--dbname={conninfo}"));
    with_primary_env(s, &mut cmd);
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!(
            "cannot create replication slot {:?} on the primary: {}",
            s.slot_name(),
            out.stderr_text()
        );
    }
    Ok(())
}
