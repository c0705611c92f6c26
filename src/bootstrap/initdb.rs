//! A new primary: initdb, then the superuser password, the database and the init
//! scripts, on a temporary server that listens on the unix socket only.

use super::scripts;
use crate::pgconf::{self, quote, tuning};
use crate::process::{run_as, Runner};
use crate::settings::Settings;
use crate::supervisor::postgres;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tracing::info;

/// Builds a complete cluster in `staging`.
pub async fn build(s: &Settings, runner: &Runner, staging: &Path) -> Result<()> {
    run_initdb(s, runner, staging).await?;
    // initdb's postgresql.conf carries the locale, time zone and text search choices it
    // made; keep it as the base that pgwarden's postgresql.conf includes.
    std::fs::rename(
        staging.join("postgresql.conf"),
        staging.join(pgconf::BASE_CONF),
    )
    .context("keep initdb's postgresql.conf as the base configuration")?;
    pgconf::apply(s, staging, &tuning::detect(), runner).await?;

    // As in the official image, the init scripts may connect as any role over the
    // socket: the temporary server listens on nothing else, and the socket directory is
    // the run-as user's.
    let bootstrap_hba = staging.join(BOOTSTRAP_HBA);
    crate::fsutil::write_atomic(
        &bootstrap_hba,
        b"# pgwarden's bootstrap only: the temporary server listens on the unix socket alone\nlocal all all trust\n",
        s.run_as.as_ref().map(|u| u.owner()),
        0o600,
    )
    .context("write the bootstrap's pg_hba.conf")?;
    let hba_arg = format!("hba_file={}", bootstrap_hba.display());
    info!("starting a temporary server on the unix socket to finish the bootstrap");
    let mut server = postgres::spawn(
        s,
        runner,
        staging,
        &[
            "-c",
            "listen_addresses=",
            "-c",
            "archive_mode=off",
            "-c",
            &hba_arg,
        ],
    )?;
    let result = async {
        postgres::wait_ready(&mut server, staging, Duration::from_secs(120)).await?;
        initialise_roles(s).await?;
        scripts::run_all(s, runner, staging).await
    }
    .await;
    // Fast shutdown: a checkpoint, and nothing left for crash recovery.
    let _ = server.signal(Signal::SIGINT);
    let exit = server.wait().await?;
    result?;
    if !exit.success() {
        bail!("the temporary server did not shut down cleanly ({exit})");
    }
    std::fs::remove_file(&bootstrap_hba).context("remove the bootstrap's pg_hba.conf")?;
    keep_script_edits(s, staging)
}

/// Init scripts written for the official image append to `$PGDATA/postgresql.conf` and
/// `pg_hba.conf`, which pgwarden renders again at every start: keep what they added in
/// force, through the adopted layer, rather than lose it silently.
fn keep_script_edits(s: &Settings, staging: &Path) -> Result<()> {
    let rendered = pgconf::render(s, staging, &tuning::detect())?;
    let kept = pgconf::adopt::keep_script_additions(
        staging,
        &rendered,
        s.run_as.as_ref().map(|u| u.owner()),
    )
    .context("keep the init scripts' configuration changes")?;
    for (path, lines) in kept {
        tracing::warn!(
            kept_in = %path.display(),
            lines,
            "init scripts changed the configuration during the bootstrap; their lines stay in force as adopted settings (prefer PGWARDEN_USER_CONF and PGWARDEN_USER_HBA)"
        );
    }
    Ok(())
}

/// The temporary server's pg_hba.conf, removed before the cluster is committed.
const BOOTSTRAP_HBA: &str = "pg_hba.bootstrap.conf";

async fn run_initdb(s: &Settings, runner: &Runner, staging: &Path) -> Result<()> {
    let mut cmd = Command::new(s.bin("initdb"));
    cmd.arg("--pgdata")
        .arg(staging)
        .arg("--username")
        .arg(&s.superuser)
        .arg("--encoding=UTF8")
        .arg("--data-checksums")
        .arg("--auth-local=peer")
        .arg("--auth-host=scram-sha-256");
    if let Some(waldir) = &s.initdb_waldir {
        if let Some(u) = &s.run_as {
            // As root, make it the run-as user's, as the official entrypoint does.
            crate::fsutil::ensure_dir(waldir, 0o700, Some(u.owner()))
                .context("POSTGRES_INITDB_WALDIR")?;
        }
        cmd.arg("--waldir").arg(waldir);
    }
    // The user's arguments come last so that they win (initdb keeps the last value).
    cmd.args(&s.initdb_args);
    run_as(&mut cmd, s.run_as.as_ref());
    info!(args = ?s.initdb_args, "running initdb");
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!("initdb failed ({}): {}", out.status, out.stderr_text());
    }
    Ok(())
}

/// Sets the superuser password and creates POSTGRES_DB, as the official image does.
/// The password is sent as a SCRAM verifier computed here, so the clear text never
/// reaches the server, its logs or `pg_stat_activity`.
async fn initialise_roles(s: &Settings) -> Result<()> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the temporary server")?;
    if let Some(pw) = &s.password {
        let verifier = postgres_protocol::password::scram_sha_256(pw.expose().as_bytes());
        client
            .batch_execute(&format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote::ident(&s.superuser),
                quote::literal(&verifier)
            ))
            .await
            .context("set the superuser password")?;
    }
    if s.database != "postgres" {
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote::ident(&s.database)))
            .await
            .with_context(|| format!("POSTGRES_DB: create database {:?}", s.database))?;
    }
    Ok(())
}
