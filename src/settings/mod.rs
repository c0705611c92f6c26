//! Typed, validated settings, fixed at start-up.
//!
//! [`Settings::load`] reads everything it needs (password files, the user fragments, the
//! binaries' version, the state of PGDATA) but writes nothing, so that a wrong setting is
//! reported before anything is touched.

mod args;
mod bindir;
pub mod restore;
mod secret;

pub use args::SettingsArgs;
pub use bindir::{binaries_major, resolve_bindir};
pub use secret::Secret;

use crate::pgconf::fragment::{self, Fragment};
use crate::pgconf::hba::{self, HbaRule};
use crate::pgdata::{self, DataDirState};
use crate::process::RunAs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What this instance is configured to be. On-disk state can override it (a promoted
/// replica stays a primary), see the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-write; the bootstrap runs initdb.
    Primary,
    /// Hot standby streaming from `PGWARDEN_PRIMARY_HOST`.
    Replica,
}

/// What a replica does when pg_rewind cannot rejoin it to its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindFailed {
    /// Report, and keep the data as it is for a person to look at (`pgwarden reinit`
    /// rebuilds it). The safe default: nothing is ever deleted without being asked.
    Keep,
    /// Discard the data and clone the primary again, as Patroni's
    /// `remove_data_directory_on_rewind_failure`.
    Reclone,
}

impl RewindFailed {
    /// Parses `PGWARDEN_REWIND_FAILED`.
    pub fn from_arg(value: &str) -> Result<RewindFailed, SettingsError> {
        match value {
            "" | "keep" => Ok(RewindFailed::Keep),
            "reclone" => Ok(RewindFailed::Reclone),
            other => Err(invalid(
                "PGWARDEN_REWIND_FAILED",
                format!("{other:?} is not keep or reclone"),
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

/// A setting that cannot be used, named the way the user set it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The value of one setting is wrong.
    #[error("{setting}: {message}")]
    Invalid {
        /// The environment variable, for example `PGWARDEN_ROLE`.
        setting: &'static str,
        /// What is wrong and, where it helps, what to do.
        message: String,
    },
    /// Several settings are wrong (the user files), each reported.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<SettingsError>),
}

fn invalid(setting: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Every setting `run` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub pgdata: PathBuf,
    /// Port postgres listens on (TCP and the socket file name).
    pub port: u16,
    /// Superuser role name.
    pub superuser: String,
    /// Superuser password; required only to bootstrap a new primary.
    pub password: Option<Secret>,
    /// Database created at bootstrap.
    pub database: String,
    /// Extra initdb arguments.
    pub initdb_args: Vec<String>,
    /// Write-ahead log directory outside PGDATA, for initdb's `--waldir`.
    pub initdb_waldir: Option<PathBuf>,
    /// Method of the `host all all all` rule (`POSTGRES_HOST_AUTH_METHOD`).
    pub host_auth_method: String,
    /// Init scripts directory.
    pub initdb_dir: PathBuf,
    /// Configured role.
    pub role: Role,
    /// Primary host for a replica.
    pub primary_host: Option<String>,
    /// Primary port for a replica.
    pub primary_port: u16,
    /// Replication role name.
    pub replication_user: String,
    /// Replication role password.
    pub replication_password: Option<Secret>,
    /// Networks allowed to replicate, as pg_hba address fields.
    pub allowed_networks: Vec<String>,
    /// Instance name.
    pub name: String,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Directory of the PostgreSQL binaries.
    pub bindir: PathBuf,
    /// Major version of those binaries.
    pub major_version: u32,
    /// The user children run as, when pgwarden is root.
    pub run_as: Option<RunAs>,
    /// OS user name pgwarden itself connects as over the socket (peer authentication).
    pub os_user: String,
    /// Unix socket directory.
    pub socket_dir: PathBuf,
    /// Path of the user postgresql.conf fragment.
    pub user_conf_path: Option<PathBuf>,
    /// The parsed user fragment.
    pub user_conf: Fragment,
    /// Path of the user pg_hba rules.
    pub user_hba_path: Option<PathBuf>,
    /// The parsed user pg_hba rules.
    pub user_hba: Vec<HbaRule>,
    /// Path of the user pg_ident.conf maps.
    pub user_ident_path: Option<PathBuf>,
    /// The parsed user pg_ident.conf maps.
    pub user_ident: Vec<HbaRule>,
    /// Settings from the command line (`pgwarden postgres -c name=value`), checked like
    /// the fragment; they come after it, so they win, as `-c` does over postgresql.conf.
    pub command_line: Fragment,
    /// What an initialised PGDATA's own postgresql.conf and pg_hba.conf said before
    /// pgwarden (see [`crate::pgconf::adopt`]).
    pub adopted: crate::pgconf::adopt::Adopted,
    /// The fragments' text these settings were built from, to notice a change on disk.
    pub user_texts: UserTexts,
    /// `max_slot_wal_keep_size` default.
    pub max_slot_wal_keep_size: String,
    /// Maximum replay lag, in bytes, for a replica to be ready.
    pub ready_max_lag: Option<u64>,
    /// What to do when pg_rewind fails (`PGWARDEN_REWIND_FAILED`).
    pub rewind_failed: RewindFailed,
    /// Smart shutdown bound before fast shutdown (zero: SIGTERM is fast at once).
    pub smart_shutdown_timeout: Duration,
    /// Bound on any shutdown before it turns immediate; `None` never escalates.
    pub stop_timeout: Option<Duration>,
    /// Crashes tolerated within `crash_window`.
    pub max_crashes: u32,
    /// Window for counting crashes.
    pub crash_window: Duration,
    /// What PGDATA looked like when the settings were loaded.
    pub data_state: DataDirState,
    /// Token for the HTTP control API; without it the control endpoints answer 403.
    pub api_token: Option<Secret>,
    /// Restart postgres when a reload leaves parameters pending a restart.
    pub restart_on_pending: bool,
    /// Certificate and key for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// WAL archiving, when PGWARDEN_ARCHIVE_URL is set.
    pub archive: Option<crate::wal::ArchiveConfig>,
    /// Automatic failover, when PGWARDEN_HA=etcd.
    pub ha: Option<crate::ha::HaConfig>,
    /// Major upgrades at start.
    pub upgrade: crate::upgrade::UpgradeConfig,
    /// The leader to stream from, as the HA loop chose it; it wins over
    /// PGWARDEN_PRIMARY_HOST, which HA mode leaves unset.
    pub upstream: crate::ha::upstream::Upstream,
    /// With synchronous mode, on the leader: the standbys in synchronous_standby_names.
    pub sync_named: crate::ha::sync::Named,
    /// Bootstrap from a backup in an archive, when PGWARDEN_RESTORE_URL is set.
    pub restore: Option<crate::settings::restore::RestoreConfig>,
    /// Where a new or rebuilt replica is copied from (`PGWARDEN_CLONE_FROM`).
    pub clone_from: crate::settings::restore::CloneFrom,
    /// While recovering from a backup: the source's values of the parameters a
    /// standby may not run below (from pg_controldata), which pgwarden renders when
    /// they are higher than the configured ones. Empty otherwise.
    pub recovery_floor: Vec<(String, i64)>,
    /// How base backups are compressed.
    pub backup_compression: crate::backup::BackupCompression,
    /// Scheduled backups and retention.
    pub backups: crate::backup::config::BackupConfig,
    /// Restore drills.
    pub drill: crate::drill::DrillConfig,
    /// This binary, as archive_command and restore_command call it.
    pub exe: PathBuf,
}

impl Settings {
    /// Validates `args` and reads what they point to. Writes nothing.
    pub fn load(args: &SettingsArgs) -> Result<Settings, SettingsError> {
        let superuser = read_file_env(
            "POSTGRES_USER",
            args.postgres_user.as_deref(),
            args.postgres_user_file.as_deref(),
        )?
        .unwrap_or_else(|| "postgres".to_owned());
        let database = read_file_env(
            "POSTGRES_DB",
            args.postgres_db.as_deref(),
            args.postgres_db_file.as_deref(),
        )?
        .unwrap_or_else(|| superuser.clone());
        let initdb_args = read_file_env(
            "POSTGRES_INITDB_ARGS",
            args.postgres_initdb_args.as_deref(),
            args.postgres_initdb_args_file.as_deref(),
        )?
        .unwrap_or_default();
        let host_auth_method = match args.postgres_host_auth_method.as_deref() {
            None | Some("") => "scram-sha-256".to_owned(),
            Some(m) if hba::is_method(m) && m != "peer" && m != "ident" => m.to_owned(),
            Some(m) => {
                return Err(invalid(
                    "POSTGRES_HOST_AUTH_METHOD",
                    format!("{m:?} is not an authentication method for TCP connections (such as scram-sha-256, md5, trust)"),
                ))
            }
        };
        let role = match args.role.as_str() {
            "primary" => Role::Primary,
            "replica" => Role::Replica,
            other => {
                return Err(invalid(
                    "PGWARDEN_ROLE",
                    format!("unknown role {other:?}; expected \"primary\" or \"replica\""),
                ))
            }
        };
        for (setting, value) in [
            ("POSTGRES_USER", Some(superuser.as_str())),
            ("POSTGRES_DB", Some(database.as_str())),
            ("POSTGRES_INITDB_ARGS", Some(initdb_args.as_str())),
            ("PGWARDEN_PRIMARY_HOST", args.primary_host.as_deref()),
            (
                "PGWARDEN_REPLICATION_USER",
                Some(args.replication_user.as_str()),
            ),
            (
                "PGWARDEN_ALLOWED_NETWORK",
                Some(args.allowed_network.as_str()),
            ),
            ("PGWARDEN_NAME", args.name.as_deref()),
            ("PGWARDEN_RUN_AS", Some(args.run_as.as_str())),
            (
                "PGWARDEN_MAX_SLOT_WAL_KEEP_SIZE",
                Some(args.max_slot_wal_keep_size.as_str()),
            ),
        ] {
            if let Some(v) = value {
                reject_control_chars(setting, v)?;
            }
        }
        for (setting, path) in [
            ("PGDATA", Some(&args.pgdata)),
            ("PGWARDEN_SOCKET_DIR", Some(&args.socket_dir)),
            ("PGWARDEN_USER_CONF", args.user_conf.as_ref()),
            ("PGWARDEN_USER_HBA", args.user_hba.as_ref()),
            ("PGWARDEN_USER_IDENT", args.user_ident.as_ref()),
            ("PGWARDEN_PG_BINDIR", args.pg_bindir.as_ref()),
            (
                "POSTGRES_INITDB_WALDIR",
                args.postgres_initdb_waldir.as_ref(),
            ),
        ] {
            if let Some(p) = path {
                reject_control_chars(setting, &p.to_string_lossy())?;
                if !p.is_absolute() && setting != "PGWARDEN_PG_BINDIR" {
                    return Err(invalid(
                        setting,
                        format!("{} is not an absolute path", p.display()),
                    ));
                }
            }
        }
        if superuser.is_empty() {
            return Err(invalid("POSTGRES_USER", "must not be empty"));
        }

        let password = read_secret(
            "POSTGRES_PASSWORD",
            args.postgres_password.as_deref(),
            args.postgres_password_file.as_deref(),
        )?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (setting, p) in [("PGWARDEN_TLS_CERT", c), ("PGWARDEN_TLS_KEY", k)] {
                    std::fs::metadata(p).map_err(|e| {
                        invalid(setting, format!("cannot read {}: {e}", p.display()))
                    })?;
                }
                Some((c.clone(), k.clone()))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "PGWARDEN_TLS_KEY",
                    "PGWARDEN_TLS_CERT is set, so the key is needed too",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "PGWARDEN_TLS_CERT",
                    "PGWARDEN_TLS_KEY is set, so the certificate is needed too",
                ))
            }
        };
        let api_token = read_secret(
            "PGWARDEN_API_TOKEN",
            args.api_token.as_deref(),
            args.api_token_file.as_deref(),
        )?;
        let replication_password = read_secret(
            "PGWARDEN_REPLICATION_PASSWORD",
            args.replication_password.as_deref(),
            args.replication_password_file.as_deref(),
        )?;

        let host_name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let name = args.name.clone().unwrap_or_else(|| host_name.clone());
        crate::pgconf::slot_name(&name).map_err(|m| invalid("PGWARDEN_NAME", m))?;

        let http_addr: SocketAddr = args.http_addr.parse().map_err(|_| {
            invalid(
                "PGWARDEN_HTTP_ADDR",
                format!(
                    "{:?} is not an address:port such as 0.0.0.0:8008",
                    args.http_addr
                ),
            )
        })?;

        let mut upgrade = crate::upgrade::UpgradeConfig::from_args(&args.upgrade)
            .map_err(|(setting, m)| invalid(setting, m))?;
        let data_state =
            pgdata::inspect(&args.pgdata).map_err(|e| invalid("PGDATA", e.to_string()))?;
        // To upgrade, the newest binaries, not those of PGDATA's major.
        let prefer = if upgrade.on {
            None
        } else {
            data_state.version()
        };
        let bindir = resolve_bindir(args.pg_bindir.as_deref(), prefer)?;
        let major_version = binaries_major(&bindir)?;
        let (_, work) = crate::upgrade::find(&args.pgdata)
            .map_err(|e| invalid("PGDATA", format!("an upgrade's work directory: {e}")))?;
        let plan = crate::upgrade::decide(&crate::upgrade::Found {
            pgdata: &args.pgdata,
            data: data_state.version(),
            bindir: &bindir,
            binaries: major_version,
            work,
            upgrade: upgrade.on,
            replica: role == Role::Replica && args.ha.ha != "etcd",
        });
        match &plan.then {
            crate::upgrade::Then::Refuse(why) => return Err(invalid("PGDATA", why.clone())),
            crate::upgrade::Then::Upgrade { from, .. } => {
                upgrade.resolved_old_bindir = Some(
                    upgrade
                        .resolve_old_bindir(*from)
                        .map_err(|(setting, m)| invalid(setting, m))?,
                );
            }
            _ => {}
        }
        if let DataDirState::Foreign(entries) = &data_state {
            return Err(invalid(
                "PGDATA",
                format!(
                    "{} is not empty and is not a PostgreSQL data directory (it holds {}); \
                     pgwarden will not initialise over it",
                    args.pgdata.display(),
                    entries.join(", ")
                ),
            ));
        }

        let (run_as, os_user) = resolve_users(&args.run_as)?;
        if run_as.is_none() {
            check_pgdata_owner(&args.pgdata)?;
        }

        let socket_len =
            args.socket_dir.as_os_str().len() + format!("/.s.PGSQL.{}", args.port).len();
        if socket_len > 107 {
            return Err(invalid(
                "PGWARDEN_SOCKET_DIR",
                format!("{} is too long for a unix socket path (at most 107 bytes with the socket file name)", args.socket_dir.display()),
            ));
        }

        if args.stop_timeout > 0 && args.smart_shutdown_timeout >= args.stop_timeout {
            return Err(invalid(
                "PGWARDEN_SMART_SHUTDOWN_TIMEOUT",
                format!(
                    "{} s is not below PGWARDEN_STOP_TIMEOUT ({} s), so a smart shutdown would never turn fast before it turns immediate",
                    args.smart_shutdown_timeout, args.stop_timeout
                ),
            ));
        }
        let user = read_user_files(
            args.user_conf.as_deref(),
            args.user_hba.as_deref(),
            args.user_ident.as_deref(),
        )?;
        let command_line = fragment::from_command_line(&args.command_line)
            .map_err(|problems| invalid("postgres -c", problems.join("; ")))?;

        let allowed_networks = hba::parse_networks(&args.allowed_network)
            .map_err(|e| invalid("PGWARDEN_ALLOWED_NETWORK", e))?;

        let mut archive = crate::wal::ArchiveConfig::from_args(&args.archive, &name)
            .map_err(|(setting, m)| invalid(setting, m))?;
        if let Some(a) = archive.as_mut() {
            // An upgraded cluster (or one about to be) has a system identifier of its
            // own: it archives under a server name of its own.
            a.server = crate::upgrade::archive_server(
                &a.configured_server,
                crate::upgrade::upgraded_major(&plan, &args.pgdata),
            );
        }
        let ha = crate::ha::HaConfig::from_args(&args.ha, &host_name)
            .map_err(|(setting, m)| invalid(setting, m))?;
        let restore = crate::settings::restore::RestoreConfig::from_args(
            &args.restore,
            &args.archive,
            archive.as_ref(),
            &name,
        )
        .map_err(|(setting, m)| invalid(setting, m))?;
        let clone_from =
            crate::settings::restore::CloneFrom::from_args(&args.clone, archive.is_some())
                .map_err(|(setting, m)| invalid(setting, m))?;
        let backup_compression =
            crate::backup::BackupCompression::from_setting(&args.backup_compression)
                .map_err(|(setting, m)| invalid(setting, m))?;
        let backups =
            crate::backup::config::BackupConfig::from_args(&args.backup, archive.is_some())
                .map_err(|(setting, m)| invalid(setting, m))?;
        let drill = crate::drill::DrillConfig::from_args(
            &args.drill,
            &args.pgdata,
            args.port,
            archive.is_some() || restore.is_some(),
        )
        .map_err(|(setting, m)| invalid(setting, m))?;
        if let Some(crate::wal::config::Location::Fs { root }) =
            archive.as_ref().map(|a| &a.location)
        {
            // Caught now, not at the first archive_command after initdb.
            if !root.is_dir() {
                return Err(invalid(
                    "PGWARDEN_ARCHIVE_URL",
                    format!(
                        "{} is not a directory (is the archive volume mounted?)",
                        root.display()
                    ),
                ));
            }
        }
        let exe = std::env::current_exe().map_err(|e| {
            invalid(
                "PGWARDEN_ARCHIVE_URL",
                format!("cannot find pgwarden's own path: {e}"),
            )
        })?;
        if let (Some(_), Some(user)) = (&archive, &run_as) {
            let name = std::ffi::CString::new(user.name.clone()).unwrap_or_default();
            let groups = nix::unistd::getgrouplist(&name, user.gid.into())
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect::<Vec<_>>())
                .unwrap_or_else(|_| vec![user.gid]);
            if !crate::fsutil::can_execute(&exe, user.uid, &groups) {
                return Err(invalid(
                    "PGWARDEN_ARCHIVE_URL",
                    format!(
                        "postgres runs archive_command as {}, who cannot execute {}; install pgwarden where that user can run it, such as /usr/local/bin",
                        user.name,
                        exe.display()
                    ),
                ));
            }
        }

        let initialized = matches!(data_state, DataDirState::Initialized { .. });
        let adopted = if initialized {
            crate::pgconf::adopt::load(&args.pgdata).map_err(|e| invalid("PGDATA", e))?
        } else {
            Default::default()
        };
        if !initialized {
            match role {
                // A restored cluster keeps the source's roles and passwords.
                Role::Primary
                    if password.is_none() && host_auth_method != "trust" && restore.is_none() =>
                {
                    return Err(invalid(
                        "POSTGRES_PASSWORD",
                        format!(
                            "{} is not initialised yet and no superuser password is set; \
                             set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE \
                             (or, not recommended, POSTGRES_HOST_AUTH_METHOD=trust)",
                            args.pgdata.display()
                        ),
                    ))
                }
                _ => {}
            }
        }
        if ha.is_some() {
            check_ha_roles(role, args, replication_password.is_some())?;
        } else if role == Role::Replica && !(args.primary_host.is_none() && restore.is_some()) {
            // A replica without a primary to stream from follows the restore archive.
            if args.primary_host.is_none() {
                return Err(invalid(
                    "PGWARDEN_PRIMARY_HOST",
                    "role replica needs the host name of the primary to stream from \
                     (or PGWARDEN_RESTORE_URL, to follow an archive instead)",
                ));
            }
            if replication_password.is_none() {
                return Err(invalid(
                    "PGWARDEN_REPLICATION_PASSWORD",
                    "role replica needs the replication password; set PGWARDEN_REPLICATION_PASSWORD or PGWARDEN_REPLICATION_PASSWORD_FILE",
                ));
            }
        }

        let settings = Settings {
            pgdata: args.pgdata.clone(),
            port: args.port,
            superuser,
            password,
            database,
            initdb_args: initdb_args.split_whitespace().map(str::to_owned).collect(),
            initdb_waldir: args.postgres_initdb_waldir.clone(),
            host_auth_method,
            initdb_dir: args.initdb_dir.clone(),
            role,
            primary_host: args.primary_host.clone(),
            primary_port: args.primary_port,
            replication_user: args.replication_user.clone(),
            replication_password,
            allowed_networks,
            name,
            http_addr,
            bindir,
            major_version,
            run_as,
            os_user,
            socket_dir: args.socket_dir.clone(),
            user_conf_path: args.user_conf.clone(),
            user_conf: user.conf,
            command_line,
            adopted,
            user_hba_path: args.user_hba.clone(),
            user_hba: user.hba,
            user_ident_path: args.user_ident.clone(),
            user_ident: user.ident,
            user_texts: user.texts,
            max_slot_wal_keep_size: args.max_slot_wal_keep_size.clone(),
            ready_max_lag: args.ready_max_lag,
            rewind_failed: RewindFailed::from_arg(&args.rewind_failed)?,
            smart_shutdown_timeout: Duration::from_secs(args.smart_shutdown_timeout),
            stop_timeout: (args.stop_timeout > 0).then(|| Duration::from_secs(args.stop_timeout)),
            max_crashes: args.max_crashes.max(1),
            crash_window: Duration::from_secs(args.crash_window.max(1)),
            data_state,
            archive,
            ha,
            upgrade,
            upstream: Default::default(),
            sync_named: Default::default(),
            restore,
            clone_from,
            recovery_floor: Vec::new(),
            backup_compression,
            backups,
            drill,
            exe,
            api_token,
            restart_on_pending: args.restart_on_pending,
            tls,
        };
        check_sync_owned(&settings)?;
        check_failover_slots(&settings)?;
        Ok(settings)
    }

    /// A copy with the user fragments read again from disk, for a reload. Fails, naming
    /// the setting, when a fragment became invalid.
    pub fn reload_user_files(&self) -> Result<Settings, SettingsError> {
        let mut next = self.clone();
        let user = read_user_files(
            self.user_conf_path.as_deref(),
            self.user_hba_path.as_deref(),
            self.user_ident_path.as_deref(),
        )?;
        next.user_conf = user.conf;
        next.user_hba = user.hba;
        next.user_ident = user.ident;
        next.user_texts = user.texts;
        check_sync_owned(&next)?;
        check_failover_slots(&next)?;
        Ok(next)
    }

    /// The passfile that holds the replication password (rewritten at every start). It
    /// lives beside the sockets, outside PGDATA, so that no base backup copies it.
    pub fn passfile(&self) -> PathBuf {
        self.socket_dir.join("pgwarden-replication.pgpass")
    }

    /// A standby with no primary to stream from, that replays the restore archive
    /// (a disaster-recovery replica in another region). Never with HA: there a
    /// replica follows the leader, and only the initialize winner reads the restore
    /// archive, to bootstrap the cluster.
    pub fn follows_archive(&self) -> bool {
        self.role == Role::Replica
            && self.primary_host.is_none()
            && self.restore.is_some()
            && self.ha.is_none()
    }

    /// The libpq connection string to the primary, without a password (see [`Settings::passfile`]).
    pub fn primary_conninfo(&self, dbname: &str) -> Option<String> {
        let (host, port) = match self.upstream.get() {
            Some(t) => (t.host, t.port),
            None => (self.primary_host.clone()?, self.primary_port),
        };
        let kv = |k: &str, v: &str| format!("{k}={}", crate::pgconf::quote::conninfo_value(v));
        Some(
            [
                kv("host", &host),
                kv("port", &port.to_string()),
                kv("user", &self.replication_user),
                kv("dbname", dbname),
                kv("application_name", &self.name),
                kv("passfile", &self.passfile().to_string_lossy()),
                kv("connect_timeout", "5"),
                kv("keepalives_idle", "10"),
                kv("keepalives_interval", "5"),
                kv("keepalives_count", "3"),
            ]
            .join(" "),
        )
    }

    /// The fragments' text on disk now (a missing file reads as none).
    pub fn user_texts_on_disk(&self) -> UserTexts {
        let read = |p: &Option<PathBuf>| p.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        (
            read(&self.user_conf_path),
            read(&self.user_hba_path),
            read(&self.user_ident_path),
        )
    }

    /// The value the user layer gives `name`: the command line, else the fragment, else
    /// the adopted settings.
    pub fn user_value(&self, name: &str) -> Option<&str> {
        self.command_line
            .get(name)
            .or_else(|| self.user_conf.get(name))
            .or_else(|| self.adopted.conf.get(name))
    }

    /// The settings a value postgres rejects may come from, to name in the error.
    pub fn user_layer_name(&self) -> &'static str {
        match (
            self.command_line.entries.is_empty(),
            self.adopted.conf.entries.is_empty(),
        ) {
            (true, true) => "PGWARDEN_USER_CONF",
            (false, true) => "PGWARDEN_USER_CONF or postgres -c",
            (true, false) => "PGWARDEN_USER_CONF or PGDATA/postgresql.conf.orig",
            (false, false) => "PGWARDEN_USER_CONF, postgres -c or PGDATA/postgresql.conf.orig",
        }
    }

    /// Path of a PostgreSQL executable in the bindir.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// The replication slot name derived from the instance name.
    pub fn slot_name(&self) -> String {
        // Validated in load().
        crate::pgconf::slot_name(&self.name).unwrap_or_default()
    }

    /// Whether failover slots are synchronized, and which standbys logical senders wait
    /// for (see [`crate::pgconf::failover_slots`]).
    pub fn failover_slots(&self) -> crate::pgconf::failover_slots::Plan {
        let named = self.sync_named.get();
        crate::pgconf::failover_slots::plan(&self.failover_slots_input(named.as_deref()))
    }

    fn failover_slots_input<'a>(
        &'a self,
        named: Option<&'a [String]>,
    ) -> crate::pgconf::failover_slots::Input<'a> {
        crate::pgconf::failover_slots::Input {
            major: self.major_version,
            ha: self.ha.is_some(),
            wal_level: self.user_value("wal_level"),
            sync_replication_slots: self.user_value("sync_replication_slots"),
            // Only with a synchronous mode are the named standbys waited for.
            named: named.filter(|_| self.sync_mode_on()),
        }
    }

    /// HA with a synchronous mode (`on`, `strict` or `quorum`).
    fn sync_mode_on(&self) -> bool {
        self.ha
            .as_ref()
            .is_some_and(|h| h.sync_mode != crate::ha::SyncMode::Off)
    }
}

/// The user layer may not contradict the synchronization of failover slots: turn off
/// the feedback it needs, or list the standbys pgwarden lists itself.
fn check_failover_slots(s: &Settings) -> Result<(), SettingsError> {
    let user = crate::pgconf::failover_slots::UserValues {
        hot_standby_feedback: s.user_value("hot_standby_feedback"),
        synchronized_standby_slots: s.user_value("synchronized_standby_slots"),
    };
    let input = s.failover_slots_input(None);
    match crate::pgconf::failover_slots::conflict(&input, &user, s.sync_mode_on()) {
        Some(message) => Err(invalid(s.user_layer_name(), message)),
        None => Ok(()),
    }
}

/// With HA on the store decides who is primary and whom replicas follow, so the fixed
/// role settings would contradict it; and any member may have to clone another.
/// With synchronous mode the leader sets synchronous_standby_names itself; a user
/// value would win over it unseen (the record would then never be written).
fn check_sync_owned(s: &Settings) -> Result<(), SettingsError> {
    let sync =
        s.ha.as_ref()
            .is_some_and(|h| h.sync_mode != crate::ha::SyncMode::Off);
    if sync && s.user_value("synchronous_standby_names").is_some() {
        return Err(invalid(
            s.user_layer_name(),
            "synchronous_standby_names is set by pgwarden with PGWARDEN_SYNC_MODE on or strict; \
             remove it, and set PGWARDEN_SYNC_NODE_COUNT instead",
        ));
    }
    Ok(())
}

/// With PGWARDEN_RESTORE_URL every member has the restore settings, but only the one
/// that wins the initialize key restores (see [`crate::ha`]); the others clone it.
fn check_ha_roles(
    role: Role,
    args: &SettingsArgs,
    has_replication_password: bool,
) -> Result<(), SettingsError> {
    if role == Role::Replica {
        return Err(invalid(
            "PGWARDEN_ROLE",
            "with PGWARDEN_HA=etcd the leader key decides the role; leave PGWARDEN_ROLE unset",
        ));
    }
    if args.primary_host.is_some() {
        return Err(invalid(
            "PGWARDEN_PRIMARY_HOST",
            "with PGWARDEN_HA=etcd replicas follow the leader found in the store; leave PGWARDEN_PRIMARY_HOST unset",
        ));
    }
    if !has_replication_password {
        return Err(invalid(
            "PGWARDEN_REPLICATION_PASSWORD",
            "PGWARDEN_HA=etcd needs the replication password, since any member may have to clone or follow another; \
             set PGWARDEN_REPLICATION_PASSWORD or PGWARDEN_REPLICATION_PASSWORD_FILE",
        ));
    }
    Ok(())
}

fn reject_control_chars(setting: &'static str, value: &str) -> Result<(), SettingsError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            setting,
            "the value contains a newline or NUL character",
        ));
    }
    Ok(())
}

/// The text of the user files (fragment, hba rules, ident maps), as read: what a
/// configuration was built from.
pub type UserTexts = (Option<String>, Option<String>, Option<String>);

/// The user files, parsed and checked.
struct UserFiles {
    conf: Fragment,
    hba: Vec<HbaRule>,
    ident: Vec<HbaRule>,
    texts: UserTexts,
}

/// Reads the three user files and reports every bad line of every one of them at once,
/// so that fixing a ConfigMap takes one round, not one per mistake.
fn read_user_files(
    conf: Option<&Path>,
    hba: Option<&Path>,
    ident: Option<&Path>,
) -> Result<UserFiles, SettingsError> {
    let mut errors = Vec::new();
    let mut out = UserFiles {
        conf: Fragment::default(),
        hba: Vec::new(),
        ident: Vec::new(),
        texts: (None, None, None),
    };
    if let Some(path) = conf {
        match read_text("PGWARDEN_USER_CONF", path) {
            Ok(text) => {
                match fragment::parse_checked(&text) {
                    Ok(frag) => out.conf = frag,
                    Err(e) => errors.push(invalid(
                        "PGWARDEN_USER_CONF",
                        format!("{}: {e}", path.display()),
                    )),
                }
                out.texts.0 = Some(text);
            }
            Err(e) => errors.push(e),
        }
    }
    let mut rules = |setting: &'static str,
                     path: Option<&Path>,
                     parse: fn(&str) -> Result<Vec<HbaRule>, String>|
     -> (Vec<HbaRule>, Option<String>) {
        let Some(path) = path else {
            return (Vec::new(), None);
        };
        match read_text(setting, path) {
            Ok(text) => match parse(&text) {
                Ok(r) => (r, Some(text)),
                Err(e) => {
                    errors.push(invalid(setting, format!("{}: {e}", path.display())));
                    (Vec::new(), Some(text))
                }
            },
            Err(e) => {
                errors.push(e);
                (Vec::new(), None)
            }
        }
    };
    (out.hba, out.texts.1) = rules("PGWARDEN_USER_HBA", hba, hba::parse_rules);
    (out.ident, out.texts.2) = rules("PGWARDEN_USER_IDENT", ident, hba::parse_ident);
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(SettingsError::Several(errors)),
    }
}

fn read_text(setting: &'static str, path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", path.display())))
}

/// Reads a plain setting from its variable or its `_FILE` twin, as the official image's
/// `file_env` does (an empty variable counts as unset; the file's trailing newlines are
/// not part of the value).
fn read_file_env(
    setting: &'static str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, SettingsError> {
    match (value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => Err(invalid(
            setting,
            format!("both {setting} and {setting}_FILE are set; use one"),
        )),
        (Some(v), None) => Ok(Some(v.to_owned())),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|t| Some(t.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| {
                invalid(
                    setting,
                    format!("cannot read {setting}_FILE {}: {e}", path.display()),
                )
            }),
        (None, None) => Ok(None),
    }
}

/// Reads a secret from its variable or its `_FILE` twin, as the official image does.
fn read_secret(
    setting: &'static str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SettingsError> {
    // As the official image's file_env: an empty variable counts as unset, so that
    // `POSTGRES_PASSWORD=` with `POSTGRES_HOST_AUTH_METHOD=trust` works there and here.
    let raw = match (value.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                setting,
                format!("both {setting} and {setting}_FILE are set; use one"),
            ))
        }
        (Some(v), None) => v.to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                invalid(
                    setting,
                    format!("cannot read {setting}_FILE {}: {e}", path.display()),
                )
            })?
            // A Secret mounted from a file usually ends with a newline that is not part of it.
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if raw.is_empty() {
        return Err(invalid(setting, "the value is empty"));
    }
    if raw.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            setting,
            "the value contains a newline or NUL character",
        ));
    }
    Ok(Some(Secret::new(raw)))
}

/// postgres must own its data directory, and only its owner may chmod it: a PGDATA of
/// another user (the official image's `/var/lib/postgresql/data` under OpenShift's
/// arbitrary UID) cannot work, so say so before anything is touched.
fn check_pgdata_owner(pgdata: &Path) -> Result<(), SettingsError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    match std::fs::metadata(pgdata) {
        Ok(meta) if meta.uid() != me => Err(invalid(
            "PGDATA",
            format!(
                "{} belongs to user id {} but pgwarden runs as user id {me}, and postgres must own its data directory; \
                 point PGDATA at a subdirectory of the volume (for example /var/lib/postgresql/data/pgdata), which pgwarden creates for itself",
                pgdata.display(),
                meta.uid()
            ),
        )),
        _ => Ok(()),
    }
}

/// Decides who children run as. Root drops to `run_as`; anyone else (OpenShift's
/// arbitrary UID) runs everything as itself.
fn resolve_users(run_as: &str) -> Result<(Option<RunAs>, String), SettingsError> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        let user = RunAs::lookup(run_as).map_err(|e| invalid("PGWARDEN_RUN_AS", e))?;
        if user.uid == 0 {
            return Err(invalid(
                "PGWARDEN_RUN_AS",
                "postgres refuses to run as root; name an unprivileged user",
            ));
        }
        Ok((Some(user), "root".to_owned()))
    } else {
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .or_else(|| crate::nss::wrapped_name(uid.as_raw()))
            .ok_or_else(|| {
                invalid(
                    "user id",
                    format!(
                        "{uid} has no passwd entry and libnss_wrapper.so was not found; initdb and postgres's \
                         peer authentication need a user name: install libnss-wrapper (Debian), as the image does, \
                         or run with a user id that has an entry"
                    ),
                )
            })?;
        Ok((None, name))
    }
}
