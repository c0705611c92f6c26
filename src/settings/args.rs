//! The raw command-line and environment form of every setting.
//!
//! Each field is both a flag and an environment variable (clap `env =`). Names follow
//! the official `postgres` image where it has one, so pgwarden is a drop-in entrypoint.
//! Nothing here is validated: [`super::Settings::load`] turns this into typed settings.

use clap::Args;
use std::path::PathBuf;

/// Settings shared by `run` and `config`.
#[derive(Args, Debug, Clone, Default)]
pub struct SettingsArgs {
    /// Data directory.
    #[arg(long, env = "PGDATA", default_value = "/var/lib/postgresql/data")]
    pub pgdata: PathBuf,

    /// PostgreSQL port.
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    pub port: u16,

    /// Superuser name (default: postgres).
    #[arg(long, env = "POSTGRES_USER")]
    pub postgres_user: Option<String>,

    /// File holding the superuser name, as the official image's `POSTGRES_USER_FILE`.
    #[arg(long, env = "POSTGRES_USER_FILE")]
    pub postgres_user_file: Option<PathBuf>,

    /// Superuser password (prefer --postgres-password-file).
    #[arg(long, env = "POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<String>,

    /// File holding the superuser password, for example a mounted Secret.
    #[arg(long, env = "POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<PathBuf>,

    /// Database created at bootstrap (default: the superuser name).
    #[arg(long, env = "POSTGRES_DB")]
    pub postgres_db: Option<String>,

    /// File holding the database name.
    #[arg(long, env = "POSTGRES_DB_FILE")]
    pub postgres_db_file: Option<PathBuf>,

    /// Extra initdb arguments, split on white space as the official image does.
    #[arg(long, env = "POSTGRES_INITDB_ARGS", allow_hyphen_values = true)]
    pub postgres_initdb_args: Option<String>,

    /// File holding the extra initdb arguments.
    #[arg(long, env = "POSTGRES_INITDB_ARGS_FILE")]
    pub postgres_initdb_args_file: Option<PathBuf>,

    /// Directory for the write-ahead log, outside PGDATA (initdb --waldir).
    #[arg(long, env = "POSTGRES_INITDB_WALDIR")]
    pub postgres_initdb_waldir: Option<PathBuf>,

    /// Authentication method for connections over TCP (`host all all all`), as in the
    /// official image; `trust` needs no password and is loudly warned about.
    #[arg(long, env = "POSTGRES_HOST_AUTH_METHOD")]
    pub postgres_host_auth_method: Option<String>,

    /// Directory of *.sql, *.sql.gz and *.sh files run once after initdb.
    #[arg(
        long,
        env = "PGWARDEN_INITDB_DIR",
        default_value = "/docker-entrypoint-initdb.d"
    )]
    pub initdb_dir: PathBuf,

    /// `primary` or `replica`.
    #[arg(long, env = "PGWARDEN_ROLE", default_value = "primary")]
    pub role: String,

    /// Where a replica streams from.
    #[arg(long, env = "PGWARDEN_PRIMARY_HOST")]
    pub primary_host: Option<String>,

    /// Port of the primary.
    #[arg(long, env = "PGWARDEN_PRIMARY_PORT", default_value_t = 5432)]
    pub primary_port: u16,

    /// Streaming replication role.
    #[arg(long, env = "PGWARDEN_REPLICATION_USER", default_value = "replicator")]
    pub replication_user: String,

    /// Password of the replication role (prefer the _FILE form).
    #[arg(long, env = "PGWARDEN_REPLICATION_PASSWORD", hide_env_values = true)]
    pub replication_password: Option<String>,

    /// File holding the replication password.
    #[arg(long, env = "PGWARDEN_REPLICATION_PASSWORD_FILE")]
    pub replication_password_file: Option<PathBuf>,

    /// Networks allowed to open replication connections (CIDR list, or samenet/samehost/all).
    #[arg(long, env = "PGWARDEN_ALLOWED_NETWORK", default_value = "samenet")]
    pub allowed_network: String,

    /// Instance name: replication slot and application_name (default: host name).
    #[arg(long, env = "PGWARDEN_NAME")]
    pub name: Option<String>,

    /// HTTP listen address for probes, status and metrics.
    #[arg(long, env = "PGWARDEN_HTTP_ADDR", default_value = "0.0.0.0:8008")]
    pub http_addr: String,

    /// Directory holding initdb, postgres, pg_ctl and pg_basebackup (default: autodetected).
    #[arg(long, env = "PGWARDEN_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,

    /// OS user that postgres runs as when pgwarden starts as root.
    #[arg(long, env = "PGWARDEN_RUN_AS", default_value = "postgres")]
    pub run_as: String,

    /// Unix socket directory.
    #[arg(
        long,
        env = "PGWARDEN_SOCKET_DIR",
        default_value = "/var/run/postgresql"
    )]
    pub socket_dir: PathBuf,

    /// postgresql.conf fragment, for example mounted from a ConfigMap.
    #[arg(long, env = "PGWARDEN_USER_CONF")]
    pub user_conf: Option<PathBuf>,

    /// Extra pg_hba.conf rules.
    #[arg(long, env = "PGWARDEN_USER_HBA")]
    pub user_hba: Option<PathBuf>,

    /// Extra pg_ident.conf maps, for `map=` options in PGWARDEN_USER_HBA.
    #[arg(long, env = "PGWARDEN_USER_IDENT")]
    pub user_ident: Option<PathBuf>,

    /// Upper bound on WAL that replication slots may hold back, so that a lost replica
    /// cannot fill the primary's disk (`max_slot_wal_keep_size`; -1 for no bound).
    #[arg(long, env = "PGWARDEN_MAX_SLOT_WAL_KEEP_SIZE", default_value = "4GB")]
    pub max_slot_wal_keep_size: String,

    /// A replica is ready only while streaming within this many bytes of lag.
    #[arg(long, env = "PGWARDEN_READY_MAX_LAG")]
    pub ready_max_lag: Option<u64>,

    /// What a replica does when pg_rewind cannot rejoin it to its primary: `keep` (report
    /// and keep the data for a person to look at; `pgwarden reinit` rebuilds it) or
    /// `reclone` (discard the data and clone the primary again).
    #[arg(long, env = "PGWARDEN_REWIND_FAILED", default_value = "keep")]
    pub rewind_failed: String,

    /// Seconds of smart shutdown on SIGTERM before switching to fast shutdown; 0 (the
    /// default, as the official image's SIGINT) makes SIGTERM a fast shutdown at once.
    #[arg(long, env = "PGWARDEN_SMART_SHUTDOWN_TIMEOUT", default_value_t = 0)]
    pub smart_shutdown_timeout: u64,

    /// Seconds from a stop signal after which a shutdown still running turns immediate,
    /// so that pgwarden exits before the platform's SIGKILL (docker stop: 10 s,
    /// Kubernetes: 30 s); 0 never escalates.
    #[arg(long, env = "PGWARDEN_STOP_TIMEOUT", default_value_t = 8)]
    pub stop_timeout: u64,

    /// Bearer token for the HTTP control API (POST /promote, /restart, ...).
    #[arg(long, env = "PGWARDEN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the API token.
    #[arg(long, env = "PGWARDEN_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// PEM certificate (chain) for HTTPS on PGWARDEN_HTTP_ADDR; needs PGWARDEN_TLS_KEY.
    #[arg(long, env = "PGWARDEN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for PGWARDEN_TLS_CERT.
    #[arg(long, env = "PGWARDEN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Restart postgres by itself when a reload leaves parameters pending a restart.
    #[arg(long, env = "PGWARDEN_RESTART_ON_PENDING", default_value_t = false, action = clap::ArgAction::Set)]
    pub restart_on_pending: bool,

    /// WAL archive settings.
    #[command(flatten)]
    pub archive: crate::wal::ArchiveArgs,

    /// High-availability settings (`PGWARDEN_HA=etcd`).
    #[command(flatten)]
    pub ha: crate::ha::HaArgs,

    /// Major upgrades at start (`PGWARDEN_UPGRADE=on`).
    #[command(flatten)]
    pub upgrade: crate::upgrade::UpgradeArgs,

    /// Bootstrap from a backup, and recovery targets.
    #[command(flatten)]
    pub restore: crate::settings::restore::RestoreArgs,

    /// Where a new or rebuilt replica is copied from (`PGWARDEN_CLONE_FROM`).
    #[command(flatten)]
    pub clone: crate::settings::restore::CloneArgs,

    /// Base backup compression: `gzip` or `none` (barman-cloud restores no zstd).
    #[arg(long, env = "PGWARDEN_BACKUP_COMPRESSION", default_value = "gzip")]
    pub backup_compression: String,

    /// Scheduled backups and retention.
    #[command(flatten)]
    pub backup: crate::backup::config::BackupArgs,

    /// Restore drills.
    #[command(flatten)]
    pub drill: crate::drill::DrillArgs,

    /// Crashes tolerated within the crash window before pgwarden exits non-zero.
    #[arg(long, env = "PGWARDEN_MAX_CRASHES", default_value_t = 5)]
    pub max_crashes: u32,

    /// Length of the crash window, in seconds.
    #[arg(long, env = "PGWARDEN_CRASH_WINDOW", default_value_t = 300)]
    pub crash_window: u64,

    /// Settings given on the command line as `pgwarden postgres -c name=value ...`.
    #[arg(skip)]
    pub command_line: Vec<(String, String)>,
}
