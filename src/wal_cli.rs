//! `pgwarden wal-archive` and `pgwarden wal-restore`: the commands postgres runs.

use crate::http::client::{self, Target};
use crate::wal::archive::{self, Pushed};
use crate::wal::local::LocalDir;
use crate::wal::names::WalName;
use crate::wal::storage::Retrying;
use crate::wal::{capability, exit_code, restore, ArchiveArgs, ArchiveConfig, Command, WalError};
use clap::Args;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

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

/// The archive settings of a one-shot command; the error names the setting.
pub fn config(client: &WalClientArgs) -> Result<ArchiveConfig, String> {
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
) -> Option<Result<String, WalError>> {
    let socket = crate::run::control_socket(socket_dir?);
    match client::request_with_timeout(&Target::Unix(socket), "POST", route, &[], timeout) {
        Ok(r) if r.status == 200 => Some(Ok(r.body)),
        Ok(r) => Some(Err(WalError::from_http(r.status, r.body))),
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

/// The directory holding `path` and the file's name in it.
fn split(path: &Path) -> Result<(LocalDir, String), WalError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| WalError::Invalid(format!("{} is not a file path", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    Ok((LocalDir::open(dir, None)?, name.to_owned()))
}

/// How long the client waits for the daemon: its whole retry budget, and more.
fn daemon_wait(cfg: &ArchiveConfig) -> std::time::Duration {
    cfg.timeout + std::time::Duration::from_secs(30)
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
    let path = absolute(&args.path);
    let route = format!(
        "/wal/archive?path={}",
        client::encode(&path.to_string_lossy())
    );
    let (result, via) =
        match via_daemon(args.client.socket_dir.as_deref(), &route, daemon_wait(&cfg)) {
            Some(r) => (r, "daemon"),
            None => (
                archive_in_process(&cfg, &path)
                    .await
                    .map(|p| p.as_str().to_owned()),
                "in-process",
            ),
        };
    let outcome = result.map(|pushed| {
        tracing::info!(file = %args.path.display(), outcome = %pushed, via, "archived");
    });
    if let Err(e) = &outcome {
        tracing::error!(file = %args.path.display(), error = %e, via, "wal-archive failed; postgres will retry");
    }
    exit_code(Command::Archive, &outcome)
}

async fn archive_in_process(cfg: &ArchiveConfig, path: &Path) -> Result<Pushed, WalError> {
    let (dir, file_name) = split(path)?;
    let name = WalName::parse(&file_name)
        .ok_or_else(|| WalError::Invalid(format!("{} is not a WAL file name", path.display())))?;
    let file = dir.open_source(&file_name)?;
    // Compression starts before the storage client is built: the SDK's set-up (its
    // configuration chain, the HTTP client) and the first round trip overlap it.
    let preparing = archive::Preparing::start(cfg.codec, &name, file);
    // PGDATA is pg_wal's parent: the notes that the archive was checked, and of what
    // the S3 server does with conditional writes, live there.
    let pgdata = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let storage = cfg.open(None).await?;
    let recalled = capability::recall(pgdata, &storage);
    let policy = Retrying::new(&storage, cfg.timeout, CancellationToken::new());
    let pushed = archive::push_prepared(cfg, &policy, &name, preparing, pgdata).await;
    capability::remember(pgdata, &storage, recalled);
    pushed
}

/// Runs `wal-restore`; returns the exit code: 0 restored, 1 not in the archive (or a
/// failure on a standby, which falls back to streaming), 255 a failure during
/// archive recovery.
pub async fn wal_restore(args: &WalRestoreArgs) -> i32 {
    // A standby (standby.signal in the working directory, which is PGDATA) falls back
    // to streaming on exit 1; anything else must not read a failure as the end of
    // the archive.
    let command = Command::Restore {
        standby: Path::new("standby.signal").exists(),
    };
    // Without an archive of its own (an instance restored from another one, or a
    // standby following it) only the daemon knows where to restore from.
    let cfg = config(&args.client);
    // pg_rewind sets PGWARDEN_NO_PREFETCH: it asks for WAL backwards, once each.
    let prefetch = std::env::var_os("PGWARDEN_NO_PREFETCH").is_none();
    let dest = absolute(&args.dest);
    let route = format!(
        "/wal/restore?name={}&dest={}&prefetch={prefetch}",
        client::encode(&args.file),
        client::encode(&dest.to_string_lossy())
    );
    let wait = cfg
        .as_ref()
        .map(daemon_wait)
        .unwrap_or(std::time::Duration::from_secs(90));
    let (result, via) = match via_daemon(args.client.socket_dir.as_deref(), &route, wait) {
        Some(r) => (r.map(|_| ()), "daemon"),
        None => match &cfg {
            Ok(cfg) => (
                restore_in_process(cfg, &args.file, &dest).await,
                "in-process",
            ),
            Err(e) => {
                tracing::error!(error = %e, "wal-restore: bad settings");
                return exit_code(command, &Err(WalError::Invalid(e.clone())));
            }
        },
    };
    let code = exit_code(command, &result);
    match &result {
        Ok(()) => tracing::info!(file = %args.file, via, "restored"),
        Err(WalError::NotFound(_)) => tracing::debug!(file = %args.file, via, "not in the archive"),
        Err(e) => {
            tracing::error!(file = %args.file, error = %e, exit_code = code, via, "wal-restore failed")
        }
    }
    code
}

async fn restore_in_process(cfg: &ArchiveConfig, file: &str, dest: &Path) -> Result<(), WalError> {
    let wal = WalName::parse(file)
        .ok_or_else(|| WalError::Invalid(format!("{file} is not a WAL file name")))?;
    let (dir, dest_name) = split(dest)?;
    let storage = cfg.open(None).await?;
    let policy = Retrying::new(&storage, cfg.timeout, CancellationToken::new());
    restore::fetch(cfg, &policy, &wal, &dir, &dest_name).await
}
