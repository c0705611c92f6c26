//! `pgwarden wal-archive` and `pgwarden wal-restore`: the commands postgres runs.

use crate::http::client::{self, Response, Target};
use crate::wal::{archive, restore, ArchiveArgs, ArchiveConfig, WalError};
use clap::Args;
use std::path::{Path, PathBuf};

/// What `wal-archive` and `wal-restore` share: inherited from `pgwarden run` through
/// postgres's environment.
#[derive(Args, Debug, Clone)]
pub struct WalClientArgs {
    /// Archive settings.
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Instance name, the default server name in the archive.
    #[arg(long, env = "PGWARDEN_NAME")]
    pub name: Option<String>,
    /// Where `pgwarden run` listens; its daemon does the work when it is there.
    #[arg(long, env = "PGWARDEN_SOCKET_DIR")]
    pub socket_dir: Option<PathBuf>,
}

/// Arguments of `wal-archive`.
#[derive(Args, Debug, Clone)]
pub struct WalArchiveArgs {
    /// Settings shared with `wal-restore`.
    #[command(flatten)]
    pub client: WalClientArgs,
    /// The file to archive (postgres's %p).
    pub path: PathBuf,
}

/// Arguments of `wal-restore`.
#[derive(Args, Debug, Clone)]
pub struct WalRestoreArgs {
    /// Settings shared with `wal-archive`.
    #[command(flatten)]
    pub client: WalClientArgs,
    /// The file postgres wants (%f).
    pub file: String,
    /// Where to put it (%p).
    pub dest: PathBuf,
}

/// Exit code for a storage failure during restore outside standby mode. Above 125,
/// postgres aborts recovery instead of taking the failure for "no more WAL", which
/// would end a point-in-time recovery early, short of its target.
pub const RESTORE_ABORT: i32 = 255;

fn config(client: &WalClientArgs) -> Result<ArchiveConfig, String> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    match ArchiveConfig::from_args(&client.archive, client.name.as_deref().unwrap_or(&host)) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err("PGWARDEN_ARCHIVE_URL is not set".to_owned()),
        Err((setting, m)) => Err(format!("{setting}: {m}")),
    }
}

/// What the daemon answered, or `None` when no daemon listens (then the work is done
/// in-process: a restore job, or postgres run without pgwarden).
fn via_daemon(
    socket_dir: Option<&Path>,
    route: &str,
    timeout: std::time::Duration,
) -> Option<Response> {
    let socket = crate::run::control_socket(socket_dir?);
    match client::request_with_timeout(&Target::Unix(socket), "POST", route, &[], timeout) {
        Ok(r) => Some(r),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "the WAL daemon did not answer; doing the work in-process");
            None
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir()
        .map(|cwd| cwd.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Runs `wal-archive`; returns the exit code.
pub async fn wal_archive(args: &WalArchiveArgs) -> i32 {
    let cfg = match config(&args.client) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "wal-archive: bad settings");
            return 1;
        }
    };
    let route = format!(
        "/wal/archive?path={}",
        client::encode(&absolute(&args.path).to_string_lossy())
    );
    if let Some(r) = via_daemon(
        args.client.socket_dir.as_deref(),
        &route,
        cfg.timeout + std::time::Duration::from_secs(30),
    ) {
        return if r.status == 200 {
            tracing::info!(file = %args.path.display(), outcome = %r.body, via = "daemon", "archived");
            0
        } else {
            tracing::error!(file = %args.path.display(), error = %r.body, "wal-archive failed; postgres will retry");
            1
        };
    }
    let result = match cfg.open().await {
        Ok(storage) => archive::push(&cfg, &storage, &args.path).await,
        Err(e) => Err(WalError::Storage(e)),
    };
    match result {
        Ok(outcome) => {
            tracing::info!(file = %args.path.display(), outcome = ?outcome, "archived");
            0
        }
        Err(e) => {
            tracing::error!(file = %args.path.display(), error = %e, "wal-archive failed; postgres will retry");
            1
        }
    }
}

/// Runs `wal-restore`; returns the exit code: 0 restored, 1 not in the archive (or a
/// failure on a standby, which falls back to streaming), 255 a failure during
/// archive recovery.
pub async fn wal_restore(args: &WalRestoreArgs) -> i32 {
    let cfg = match config(&args.client) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "wal-restore: bad settings");
            return failure_code();
        }
    };
    // pg_rewind sets PGWARDEN_NO_PREFETCH: it asks for WAL backwards, once each.
    let prefetch = std::env::var_os("PGWARDEN_NO_PREFETCH").is_none();
    let route = format!(
        "/wal/restore?name={}&dest={}&prefetch={prefetch}",
        client::encode(&args.file),
        client::encode(&absolute(&args.dest).to_string_lossy())
    );
    if let Some(r) = via_daemon(
        args.client.socket_dir.as_deref(),
        &route,
        cfg.timeout + std::time::Duration::from_secs(30),
    ) {
        return match r.status {
            200 => {
                tracing::info!(file = %args.file, via = "daemon", "restored");
                0
            }
            404 => 1,
            _ => {
                let code = failure_code();
                tracing::error!(file = %args.file, error = %r.body, exit_code = code, "wal-restore failed");
                code
            }
        };
    }
    let result = match cfg.open().await {
        Ok(storage) => restore::fetch(&cfg, &storage, &args.file, &args.dest).await,
        Err(e) => Err(WalError::Storage(e)),
    };
    match result {
        Ok(()) => {
            tracing::info!(file = %args.file, "restored");
            0
        }
        Err(WalError::NotFound(_)) => {
            tracing::debug!(file = %args.file, "not in the archive");
            1
        }
        Err(e) => {
            let code = failure_code();
            tracing::error!(file = %args.file, error = %e, exit_code = code, "wal-restore failed");
            code
        }
    }
}

/// A standby (standby.signal in the working directory, which is PGDATA) falls back to
/// streaming on exit 1, so that is safe; anything else must not read a failure as the
/// end of the archive.
fn failure_code() -> i32 {
    if Path::new("standby.signal").exists() {
        1
    } else {
        RESTORE_ABORT
    }
}
