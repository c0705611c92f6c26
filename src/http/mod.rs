//! The HTTP server: probes, status and metrics, all read from the supervisor's status
//! and the monitor's snapshot. No handler talks to postgres.
//!
//! Every read-only path answers `GET`, `HEAD` and `OPTIONS` alike, because load
//! balancers written for Patroni check with `OPTIONS` (HAProxy's `option httpchk
//! OPTIONS /primary`). A path that does not exist is 404.

pub mod backup;
pub mod client;
pub mod control;
mod dashboard;
pub mod failsafe;
mod ha;
mod healthz;
pub(crate) mod lag;
pub mod metrics;
mod process;
mod readiness;
mod readyz;
mod role;
mod startupz;
mod status;
mod switchover;
pub mod wal;

pub use readiness::{effective_role, readiness};
pub use status::StatusDoc;

use crate::monitor::Snapshot;
use crate::settings::Role;
use crate::state::SupervisorStatus;
use axum::handler::Handler;
use axum::routing::{get, MethodRouter};
use axum::Router;
use std::sync::Arc;
use tokio::sync::watch;

/// Facts about this instance that do not change while it runs.
#[derive(Debug, Clone)]
pub struct Instance {
    /// PGWARDEN_NAME.
    pub name: String,
    /// PGWARDEN_ROLE.
    pub configured_role: Role,
    /// PGWARDEN_READY_MAX_LAG.
    pub ready_max_lag: Option<u64>,
    /// PGWARDEN_HA is on.
    pub ha: bool,
}

/// What every handler reads.
#[derive(Clone)]
pub struct AppState {
    /// The supervisor's status.
    pub sup: watch::Receiver<SupervisorStatus>,
    /// The monitor's snapshot.
    pub snap: watch::Receiver<Snapshot>,
    /// Fixed facts.
    pub instance: Arc<Instance>,
    /// The WAL daemon, once it runs.
    pub daemon: watch::Receiver<Option<Arc<crate::wal::daemon::Daemon>>>,
    /// The backup under way and the last one.
    pub backup: Arc<std::sync::Mutex<crate::backup::BackupStatus>>,
    /// A restore from an archive under way: a bootstrap, a replica rebuilt from it.
    pub restore: crate::progress::Restoring,
    /// Restore drills: the one under way, the last ones, the schedule.
    pub drill: Arc<crate::drill::Tracker>,
    /// The HA loop's last round, when PGWARDEN_HA is on.
    pub ha: watch::Receiver<Option<crate::ha::status::HaStatus>>,
}

impl AppState {
    /// A consistent copy of both channels.
    pub fn view(&self) -> (SupervisorStatus, Snapshot) {
        (self.sup.borrow().clone(), self.snap.borrow().clone())
    }
}

/// `GET` (and so `HEAD`, which axum answers from the same handler without a body) and
/// `OPTIONS`, answered the same way.
fn check<H, T>(handler: H) -> MethodRouter<AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    get(handler.clone()).options(handler)
}

/// The probe and status routes, with Patroni's aliases.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", check(healthz::get))
        .route("/liveness", check(healthz::get))
        .route("/readyz", check(readyz::get))
        .route("/readiness", check(readyz::get))
        .route("/startupz", check(startupz::get))
        .route("/health", check(role::health))
        .route("/primary", check(role::primary))
        .route("/master", check(role::primary))
        .route("/leader", check(role::leader))
        .route("/sync", check(role::sync))
        .route("/synchronous", check(role::sync))
        .route("/async", check(role::asynchronous))
        .route("/asynchronous", check(role::asynchronous))
        .route("/read-write", check(role::primary))
        .route("/replica", check(role::replica))
        .route("/standby", check(role::replica))
        .route("/read-only", check(role::read_only))
        .route("/status", check(status::get))
        .route("/cluster", check(ha::cluster))
        .route("/history", check(ha::history))
        .route("/metrics", check(metrics::get))
        .with_state(state)
}

/// Serves `router` on an already bound listener until the process exits.
pub fn serve_tcp(listener: tokio::net::TcpListener, router: Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
}

/// Serves `router` over HTTPS on an already bound listener. The certificate and key
/// are loaded first, so a bad file fails start-up with its name.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "PGWARDEN_TLS_CERT/PGWARDEN_TLS_KEY: cannot load {} and {}",
                cert.display(),
                key.display()
            )
        })?;
    let std_listener = listener.into_std().context("PGWARDEN_HTTP_ADDR")?;
    let server =
        axum_server::from_tcp_rustls(std_listener, config).context("PGWARDEN_HTTP_ADDR")?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(router.into_make_service()).await {
            tracing::error!(error = %e, "the HTTPS server stopped");
        }
    });
    Ok(())
}

/// Serves `router` on a unix socket, for local CLI verbs such as `pgwarden status`.
pub fn serve_unix(listener: tokio::net::UnixListener, router: Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the control socket server stopped");
        }
    });
}

/// A probe answer: 200 or 503 with a one-line reason.
pub(crate) fn probe(result: Result<(), String>) -> (axum::http::StatusCode, String) {
    match result {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{reason}\n"),
        ),
    }
}
