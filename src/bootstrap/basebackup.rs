//! A new replica: wait for the primary, then pg_basebackup into the staging directory
//! with our replication slot, then standby.signal and the configuration.

use crate::process::{run_as, Runner};
use crate::replica::{self, remote};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Builds a standby in `staging`.
pub async fn build(s: &Settings, runner: &Runner, staging: &Path) -> Result<()> {
    wait_for_primary(s, runner).await;
    if let Err(e) = base_backup(s, runner, staging, true).await {
        if !format!("{e:#}").contains("already exists") {
            return Err(e);
        }
        // The slot survives from an earlier attempt or an earlier life of this replica:
        // reuse it (pg_basebackup refuses it if another instance is streaming from it).
        info!(slot = %s.slot_name(), "the replication slot exists on the primary; reusing it");
        std::fs::remove_dir_all(staging).ok();
        base_backup(s, runner, staging, false).await?;
    }
    // A note that the primary once could not follow its own former primary is not
    // this replica's (pg_basebackup copies every file).
    crate::pgdata::forget_rewind_kept(staging).context("PGDATA: tidy the copy")?;
    // The configuration is written once the copy is in place (run.rs).
    replica::write_standby_signal(s, staging)
}

/// Waits until the primary answers a replication connection, logging every attempt.
pub(super) async fn wait_for_primary(s: &Settings, runner: &Runner) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1.. {
        match remote::identify(s, runner).await {
            Ok(r) => {
                info!(attempt, system_id = %r.system_id, timeline = r.timeline, "the primary is reachable");
                return;
            }
            Err(e) => warn!(
                attempt,
                primary = %format!("{}:{}", s.primary_host.as_deref().unwrap_or_default(), s.primary_port),
                retry_in_seconds = delay.as_secs(),
                error = format!("{e:#}"),
                "waiting for the primary"
            ),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

async fn base_backup(
    s: &Settings,
    runner: &Runner,
    staging: &Path,
    create_slot: bool,
) -> Result<()> {
    let Some(conninfo) = s.primary_conninfo("replication") else {
        bail!("PGWARDEN_PRIMARY_HOST is not set")
    };
    let mut cmd = Command::new(s.bin("pg_basebackup"));
    cmd.arg("--pgdata")
        .arg(staging)
        .arg(format!("--dbname={conninfo}"))
        .args([
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-password",
            "--progress",
            "--verbose",
        ])
        .arg(format!("--slot={}", s.slot_name()))
        .env("PGPASSFILE", s.passfile())
        .env("LC_MESSAGES", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if create_slot {
        cmd.arg("--create-slot");
    }
    run_as(&mut cmd, s.run_as.as_ref());
    info!(slot = %s.slot_name(), create_slot, "copying the primary with pg_basebackup");
    let mut child = runner.spawn(&mut cmd)?;
    let stderr = child.stderr.take();
    let reader = tokio::task::spawn_blocking(move || log_progress(stderr));
    let status = child.wait().await?;
    let tail = reader.await.unwrap_or_default();
    if !status.success() {
        bail!("pg_basebackup failed ({status}): {tail}");
    }
    Ok(())
}

/// Forwards pg_basebackup's messages, with its `\r`-refreshed progress line at most
/// every few seconds. Returns the last messages, for an error.
fn log_progress(stderr: Option<std::process::ChildStderr>) -> String {
    let Some(mut pipe) = stderr else {
        return String::new();
    };
    let mut last_progress = Instant::now() - Duration::from_secs(60);
    let mut tail: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&byte[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let line = String::from_utf8_lossy(&buf[..pos]).trim().to_owned();
            buf.drain(..=pos);
            if line.is_empty() {
                continue;
            }
            let is_progress = line.contains("kB (") || line.contains("tablespace");
            if is_progress {
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    info!(tool = "pg_basebackup", progress = %line, "copying");
                    last_progress = Instant::now();
                }
            } else {
                info!(tool = "pg_basebackup", "{line}");
                tail.push(line);
                if tail.len() > 5 {
                    tail.remove(0);
                }
            }
        }
    }
    tail.join("; ")
}
