//! pgwarden's own connections to the local postgres, over the unix socket.
//!
//! Authentication is `peer`, mapped in pg_ident.conf, so no password is involved.

use crate::settings::Settings;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Connects to `dbname` on the local socket as the superuser and drives the connection
/// on a task of its own. The statement timeout keeps a stuck server from stalling us.
pub async fn connect_local(
    s: &Settings,
    socket_dir: &Path,
    dbname: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket_dir)
        .port(s.port)
        .user(&s.superuser)
        .dbname(dbname)
        .application_name("pgwarden")
        .options("-c statement_timeout=10000")
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "local connection closed");
        }
    });
    Ok(client)
}
