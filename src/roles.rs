//! Roles pgwarden keeps in shape on a running primary.

use crate::db;
use crate::pgconf::quote;
use crate::settings::Settings;
use anyhow::{Context, Result};
use tokio_postgres::error::SqlState;
use tracing::info;

/// Functions pg_rewind calls on its source server; granting them lets the replication
/// role serve a rewind without being a superuser (as pg_rewind's documentation lists).
const REWIND_FUNCTIONS: &[&str] = &[
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// Makes the replication role exist with REPLICATION, LOGIN and the configured
/// password, and lets it serve pg_rewind. Idempotent; a changed password is applied. A
/// standby is left alone (its catalog is the primary's).
pub async fn ensure_replication_role(s: &Settings) -> Result<()> {
    let Some(password) = &s.replication_password else {
        return Ok(());
    };
    let client = db::connect_local(s, &s.socket_dir, "postgres").await?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if in_recovery {
        return Ok(());
    }
    let role = quote::ident(&s.replication_user);
    let verifier = || {
        quote::literal(&postgres_protocol::password::scram_sha_256(
            password.expose().as_bytes(),
        ))
    };
    let row = client
        .query_opt(
            "SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&s.replication_user],
        )
        .await?;
    match row {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE ROLE {role} WITH REPLICATION LOGIN PASSWORD {}",
                    verifier()
                ))
                .await
                .context("create the replication role")?;
            info!(role = %s.replication_user, "created the replication role");
        }
        Some(r) => {
            if !(r.get::<_, bool>(0) && r.get::<_, bool>(1)) {
                client
                    .batch_execute(&format!("ALTER ROLE {role} WITH REPLICATION LOGIN"))
                    .await?;
            }
            if !password_works(s, password.expose()).await {
                client
                    .batch_execute(&format!("ALTER ROLE {role} WITH PASSWORD {}", verifier()))
                    .await
                    .context("set the replication password")?;
                info!(role = %s.replication_user, "applied the replication password");
            }
        }
    }
    for f in REWIND_FUNCTIONS {
        client
            .batch_execute(&format!("GRANT EXECUTE ON FUNCTION {f} TO {role}"))
            .await?;
    }
    if s.major_version >= 15 {
        // Lets a rejoining instance make a freshly promoted primary checkpoint first.
        client
            .batch_execute(&format!("GRANT pg_checkpoint TO {role}"))
            .await?;
    }
    info!(role = %s.replication_user, "the replication role is set up: login, pg_rewind grants, pg_checkpoint");
    Ok(())
}

/// Checks the password by logging in with it over the socket: no SCRAM code of our own.
async fn password_works(s: &Settings, password: &str) -> bool {
    let result = tokio_postgres::Config::new()
        .host_path(&s.socket_dir)
        .port(s.port)
        .user(&s.replication_user)
        .password(password)
        .dbname("postgres")
        .application_name("pgwarden")
        .connect(tokio_postgres::NoTls)
        .await;
    match result {
        Ok(_) => true,
        Err(e) => {
            if e.code() != Some(&SqlState::INVALID_PASSWORD) {
                tracing::debug!(error = %e, "could not check the replication password; setting it");
            }
            false
        }
    }
}
