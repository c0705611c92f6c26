//! The command line: parsing and dispatch to the library.

use crate::http::client::{self, Target};
use crate::pgconf::{self, tuning};
use crate::process::Runner;
use crate::settings::{Settings, SettingsArgs};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// pgwarden: PID 1 for PostgreSQL containers.
#[derive(Parser, Debug)]
#[command(name = "pgwarden", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of design.md.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Bootstrap PGDATA if empty, render the config, supervise postgres, serve HTTP.
    Run(SettingsArgs),
    /// Print the postgresql.conf, pg_hba.conf and pg_ident.conf that `run` would write.
    Config(SettingsArgs),
    /// Print the /status JSON of the local instance.
    Status(LocalArgs),
    /// Promote the local replica to primary and wait until it accepts writes.
    Promote(LocalArgs),
    /// Restart postgres (a CHECKPOINT first on a primary).
    Restart(LocalArgs),
    /// Re-render, validate and reload the configuration.
    Reload(LocalArgs),
    /// Run a CHECKPOINT.
    Checkpoint(LocalArgs),
    /// Stop postgres and keep it stopped, across restarts, until `unfence`.
    Fence(LocalArgs),
    /// Lift a fence and start postgres.
    Unfence(LocalArgs),
    /// Rebuild this replica from its primary (with HA, the leader): stop postgres,
    /// discard its data and clone the primary again. Refused on a primary.
    Reinit(LocalArgs),
    /// Push one WAL or history file to the archive (postgres's archive_command).
    WalArchive(crate::wal_cli::WalArchiveArgs),
    /// Fetch one file from the archive into a path (postgres's restore_command).
    WalRestore(crate::wal_cli::WalRestoreArgs),
    /// Take a base backup of the running local instance into the archive.
    Backup(BackupArgs),
    /// List the base backups in the archive, pgwarden's and barman-cloud's.
    BackupList(BackupListArgs),
    /// Delete the backups a retention policy finds obsolete (or one backup), then the
    /// WAL no remaining backup needs, with barman's rules.
    BackupDelete(BackupDeleteArgs),
    /// Check that every WAL segment from the oldest backup to the newest archived
    /// segment is in the archive, across timelines; exit 1 when one is missing.
    WalVerify(BackupListArgs),
    /// Restore a backup into a scratch directory beside PGDATA (PGWARDEN_DRILL_DIR),
    /// recover it with a postgres of its own, check it (pg_amcheck, PGWARDEN_DRILL_SQL),
    /// report, and remove it all; exit 1 when the drill fails, naming why.
    RestoreDrill(RestoreDrillArgs),
    /// The official image's form: `run` with `-c name=value` (or `--name=value`) settings
    /// added to the user layer. Settings come from the environment only.
    Postgres(PostgresArgs),
    /// With PGWARDEN_HA: the cluster's members, the leader and its term.
    List(ListArgs),
    /// With PGWARDEN_HA: hand the leadership over to another member, without losing a
    /// transaction; prints the new leader.
    Switchover(SwitchoverArgs),
    /// Promote a member when the cluster has no healthy leader (with a leader, a
    /// switchover to it). Without a leader the member is promoted without the
    /// eligibility checks and may lack acknowledged commits: `--force` confirms.
    Failover(FailoverArgs),
    /// Pause automatic failover for maintenance (no promotion, fence or rewind).
    Pause(LocalArgs),
    /// Resume automatic failover.
    Resume(LocalArgs),
    /// The HA dead-man switch `run` starts for itself (see src/ha/deadman.rs).
    #[command(hide = true)]
    HaDeadman(crate::ha::deadman::DeadmanArgs),
    /// Any other command (`psql`, `bash`, `sh -c ...`) is executed as is, as the official
    /// image's entrypoint does.
    #[command(external_subcommand)]
    Exec(Vec<OsString>),
}

/// Arguments of `backup-list`.
#[derive(Args, Debug, Clone)]
pub struct BackupListArgs {
    /// The archive, as for wal-archive.
    #[command(flatten)]
    pub client: crate::wal_cli::WalClientArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `restore-drill`.
#[derive(Args, Debug, Clone)]
pub struct RestoreDrillArgs {
    /// Every setting of `run`, from the environment as the running instance has them.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// The backup to restore (default: the latest that ends before the target).
    #[arg(long, value_name = "ID")]
    pub backup_id: Option<String>,
    /// Recover up to this time (with a time zone, as `2026-11-24 08:00:00+00`) instead
    /// of to the end of the archive.
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `backup-delete`.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["retention", "backup_id"])))]
pub struct BackupDeleteArgs {
    /// The archive, as for wal-archive.
    #[command(flatten)]
    pub client: crate::wal_cli::WalClientArgs,
    /// A barman retention policy: `REDUNDANCY n` or `RECOVERY WINDOW OF n
    /// {DAYS|WEEKS|MONTHS}`. Not read from PGWARDEN_BACKUP_RETENTION: deleting is
    /// asked for explicitly.
    #[arg(long, value_name = "POLICY")]
    pub retention: Option<String>,
    /// One backup to delete.
    #[arg(long, value_name = "ID")]
    pub backup_id: Option<String>,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The arguments after `postgres`, exactly as postgres would get them.
#[derive(Args, Debug, Clone)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct PostgresArgs {
    /// postgres's own arguments: `-c name=value`, `--name=value`, `-B`, `-N`, `-S`, `-F`;
    /// `--help`, `--version` and `-C name` are answered by postgres itself.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// Every setting from the environment alone, for `pgwarden postgres ...`, whose
/// arguments are postgres's.
#[derive(Parser, Debug)]
struct EnvOnly {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Arguments of `list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// The running instance to ask.
    #[command(flatten)]
    pub local: LocalArgs,
    /// Print the `GET /cluster` JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `switchover`.
#[derive(Args, Debug, Clone)]
pub struct SwitchoverArgs {
    /// The running instance to ask.
    #[command(flatten)]
    pub local: LocalArgs,
    /// The member to hand over to; the replica with the most WAL when absent.
    #[arg(long)]
    pub to: Option<String>,
}

/// Arguments of `failover`.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The running instance to ask.
    #[command(flatten)]
    pub local: LocalArgs,
    /// The member to promote.
    #[arg(long)]
    pub to: String,
    /// Confirms that the member may be promoted although it may lack commits.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of the verbs that talk to a running pgwarden.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Unix socket directory of the running instance (its control socket is there).
    #[arg(
        long,
        env = "PGWARDEN_SOCKET_DIR",
        default_value = "/var/run/postgresql"
    )]
    pub socket_dir: PathBuf,
}

/// Arguments of `backup`.
#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// The running instance.
    #[command(flatten)]
    pub local: LocalArgs,
    /// Only the blocks changed since the previous backup (pgwarden's own format,
    /// which barman-cloud cannot restore). Without a previous backup to build on, a
    /// full one is taken and its output says why.
    #[arg(long)]
    pub incremental: bool,
}

/// Runs the command; returns the process exit code.
pub fn dispatch(cli: Cli) -> i32 {
    // Before the runtime starts any thread: this may set environment variables.
    match &cli.command {
        Command::Run(a) => identity_for_children(&a.socket_dir, &a.pgdata),
        // `config` writes nothing where `run` would: the temp dir only.
        Command::Config(a) => identity_for_children(&std::env::temp_dir(), &a.pgdata),
        Command::RestoreDrill(a) => {
            identity_for_children(&std::env::temp_dir(), &a.settings.pgdata)
        }
        Command::Postgres(_) => {
            let env =
                |k: &str, d: &str| PathBuf::from(std::env::var(k).unwrap_or_else(|_| d.to_owned()));
            identity_for_children(
                &env("PGWARDEN_SOCKET_DIR", "/var/run/postgresql"),
                &env("PGDATA", "/var/lib/postgresql/data"),
            )
        }
        _ => {}
    }
    // Blocking and tiny, with no runtime: it must keep working when pgwarden cannot.
    if let Command::HaDeadman(args) = &cli.command {
        return crate::ha::deadman::main(args);
    }
    // postgres runs archive_command and restore_command once per file: the lightest
    // runtime that does the job, one thread (CPU work goes to the blocking pool).
    let one_shot = matches!(cli.command, Command::WalArchive(_) | Command::WalRestore(_));
    if !one_shot {
        crate::process::memory::limit_arenas();
    }
    let mut builder = if one_shot {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match cli.command {
        Command::Run(args) => run(&runtime, &args),
        Command::Postgres(args) => postgres(&runtime, &args.args),
        Command::Exec(argv) => crate::entrypoint::exec(&argv),
        Command::Config(args) => match runtime.block_on(config(&args)) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("pgwarden: {e:#}");
                1
            }
        },
        Command::Status(args) => local_call(&args, "GET", "/status"),
        Command::Promote(args) => local_call(&args, "POST", "/promote"),
        Command::Restart(args) => local_call(&args, "POST", "/restart"),
        Command::Reload(args) => local_call(&args, "POST", "/reload"),
        Command::Checkpoint(args) => local_call(&args, "POST", "/checkpoint"),
        Command::Fence(args) => local_call(&args, "POST", "/fence"),
        Command::Unfence(args) => local_call(&args, "POST", "/unfence"),
        Command::Reinit(args) => local_call(&args, "POST", "/reinit"),
        Command::Backup(args) => {
            // On a terminal, a progress bar from /status while the backup runs (the
            // log has a progress line every 10 s otherwise).
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
                let (done, dir) = (done.clone(), args.local.socket_dir.clone());
                std::thread::spawn(move || progress_bar(&dir, &done))
            });
            let code = local_call_within(
                &args.local,
                "POST",
                if args.incremental {
                    "/backup?incremental=true"
                } else {
                    "/backup"
                },
                std::time::Duration::from_secs(7 * 86_400),
            );
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(bar) = bar {
                let _ = bar.join();
            }
            code
        }
        Command::BackupList(args) => runtime.block_on(backup_list(&args)),
        Command::BackupDelete(args) => runtime.block_on(backup_delete(&args)),
        Command::WalVerify(args) => runtime.block_on(wal_verify(&args)),
        Command::RestoreDrill(args) => runtime.block_on(restore_drill(&args)),
        Command::WalArchive(args) => runtime.block_on(crate::wal_cli::wal_archive(&args)),
        Command::WalRestore(args) => runtime.block_on(crate::wal_cli::wal_restore(&args)),
        Command::HaDeadman(args) => crate::ha::deadman::main(&args),
        Command::List(args) => list(&args),
        Command::Switchover(args) => switchover(&args),
        Command::Failover(args) => failover(&args),
        Command::Pause(args) => local_call(&args, "POST", "/pause"),
        Command::Resume(args) => local_call(&args, "POST", "/resume"),
    }
}

/// Draws the running backup's progress on stderr from the local `/status` until
/// `done`.
fn progress_bar(socket_dir: &std::path::Path, done: &std::sync::atomic::AtomicBool) {
    let target = Target::Unix(crate::run::control_socket(socket_dir));
    crate::progress::draw_bar(
        || {
            let status = client::get(&target, "/status").ok()?;
            let v = serde_json::from_str::<serde_json::Value>(&status.body).ok()?;
            serde_json::from_value::<crate::backup::Running>(v["backup"]["running"].clone())
                .ok()
                .map(|r| r.progress)
        },
        done,
    )
}

/// Gives initdb and postgres a user name when pgwarden runs as a UID without one.
fn identity_for_children(socket_dir: &std::path::Path, pgdata: &std::path::Path) {
    use crate::nss::{self, Identity};
    match nss::ensure(&[socket_dir.to_path_buf(), std::env::temp_dir()], pgdata) {
        Identity::Known => {}
        Identity::Wrapped { library, passwd } => tracing::info!(
            uid = nix::unistd::geteuid().as_raw(),
            library = %library.display(),
            passwd = %passwd.display(),
            "this user id has no passwd entry; giving postgres and initdb one through nss_wrapper"
        ),
        // Settings::load reports it, naming what to do.
        Identity::Unknown => {}
    }
}

fn run(runtime: &tokio::runtime::Runtime, args: &SettingsArgs) -> i32 {
    match runtime.block_on(crate::run::run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "pgwarden cannot continue");
            1
        }
    }
}

/// `pgwarden postgres ...`: `run` with the command-line settings, or postgres itself
/// for a question such as `--version`.
fn postgres(runtime: &tokio::runtime::Runtime, argv: &[String]) -> i32 {
    use crate::entrypoint::{parse_postgres_args, PostgresCall};
    let mut settings = match EnvOnly::try_parse_from(["pgwarden"]) {
        Ok(e) => e.settings,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return 2;
        }
    };
    match parse_postgres_args(argv) {
        Ok(PostgresCall::Serve(pairs)) => {
            settings.command_line = pairs;
            run(runtime, &settings)
        }
        Ok(PostgresCall::Ask) => {
            match crate::settings::resolve_bindir(settings.pg_bindir.as_deref(), None) {
                Ok(dir) => {
                    let mut cmd = vec![dir.join("postgres").into_os_string()];
                    cmd.extend(argv.iter().map(OsString::from));
                    crate::entrypoint::exec(&cmd)
                }
                Err(e) => {
                    eprintln!("pgwarden: {e}");
                    1
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "pgwarden cannot continue");
            1
        }
    }
}

/// Renders and validates the files `run` would write, touching nothing in PGDATA.
async fn config(args: &SettingsArgs) -> anyhow::Result<String> {
    let s = Settings::load(args)?;
    let r = pgconf::render(&s, &s.pgdata, &tuning::detect())?;
    pgconf::validate(&r, &s.bin("postgres"), s.run_as.as_ref(), &Runner::Direct)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", s.user_layer_name()))?;
    Ok(format!(
        "# ==> {pgdata}/postgresql.conf <==\n{}\n# ==> {pgdata}/pg_hba.conf <==\n{}\n# ==> {pgdata}/pg_ident.conf <==\n{}",
        r.postgresql_conf,
        r.pg_hba,
        r.pg_ident,
        pgdata = s.pgdata.display()
    ))
}

/// `backup-list`: reads the catalogue with the archive settings, no daemon needed.
async fn backup_list(args: &BackupListArgs) -> i32 {
    let listed = async {
        let cfg = crate::wal_cli::config(&args.client).map_err(anyhow::Error::msg)?;
        let storage = cfg.open(None).await?;
        anyhow::Ok(crate::backup::list::list(&storage, &cfg.base()).await?)
    };
    match listed.await {
        Ok(backups) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&backups).unwrap_or_default()
            );
            0
        }
        Ok(backups) => {
            print!("{}", crate::backup::list::render_table(&backups));
            0
        }
        Err(e) => {
            eprintln!("pgwarden: backup-list: {e:#}");
            1
        }
    }
}

/// `backup-delete`: plans from the catalogue, prints the plan, deletes (unless a dry
/// run). Exit 2 when the request is refused before anything is deleted, 1 when a
/// deletion fails part-way.
async fn backup_delete(args: &BackupDeleteArgs) -> i32 {
    use crate::backup::delete::{self, Selection};
    let selection = match (&args.retention, &args.backup_id) {
        (Some(p), _) => match crate::backup::policy::Policy::parse(p) {
            Ok(p) => Selection::Policy(p),
            Err(e) => {
                eprintln!("pgwarden: backup-delete: --retention: {e}; nothing was deleted");
                return 2;
            }
        },
        (None, Some(id)) => Selection::BackupId(id.clone()),
        (None, None) => {
            eprintln!("pgwarden: backup-delete: give --retention POLICY or --backup-id ID");
            return 2;
        }
    };
    let prepared = async {
        let cfg = crate::wal_cli::config(&args.client).map_err(anyhow::Error::msg)?;
        let storage = cfg.open(None).await?;
        let now = std::time::SystemTime::now();
        let (_, plan) =
            delete::prepare(&storage, &cfg.base(), &selection, now, cfg.timeout).await?;
        anyhow::Ok((cfg, storage, plan, now))
    };
    let (cfg, storage, plan, now) = match prepared.await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgwarden: backup-delete: {e:#}");
            return 2;
        }
    };
    if let Selection::Policy(p) = &selection {
        println!("policy {p} at {}", crate::civil::rfc3339(now));
        print!("{}", delete::render_report(&plan));
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut show = |key: &str| println!("{verb} {key}");
    match delete::execute(&storage, &plan, args.dry_run, cfg.timeout, &mut show).await {
        Ok(_) => {
            print!("{}", delete::render_summary(&plan, args.dry_run));
            0
        }
        Err(e) => {
            eprintln!("pgwarden: backup-delete: {e:#}; run it again to finish");
            1
        }
    }
}

/// `wal-verify`: reads the catalogue and the WAL listing; exit 1 when a segment a
/// restore needs is missing.
async fn wal_verify(args: &BackupListArgs) -> i32 {
    let checked = async {
        use crate::wal::storage::Storage;
        let cfg = crate::wal_cli::config(&args.client).map_err(anyhow::Error::msg)?;
        let storage = cfg.open(None).await?;
        let backups = crate::backup::list::list(&storage, &cfg.base()).await?;
        let keys: Vec<String> = storage
            .list(&format!("{}/wals/", cfg.base()), usize::MAX)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut histories = std::collections::BTreeMap::new();
        for key in &keys {
            let Some((name, codec)) = key
                .rsplit('/')
                .next()
                .and_then(crate::wal::compress::split_codec)
            else {
                continue;
            };
            if name.kind != crate::wal::names::WalKind::History {
                continue;
            }
            if let Some((body, _)) = storage.get(key).await? {
                let text = codec.decompress(&body, 1 << 20)?;
                histories.insert(name.timeline, String::from_utf8_lossy(&text).into_owned());
            }
        }
        anyhow::Ok(crate::backup::verify::verify(&keys, &histories, &backups))
    };
    match checked.await {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", crate::backup::verify::render(&report));
            }
            i32::from(!report.missing.is_empty())
        }
        Err(e) => {
            eprintln!("pgwarden: wal-verify: {e:#}");
            2
        }
    }
}

/// `restore-drill`: a drill in this process, recorded where the running pgwarden's
/// `/status` reads it. Exit 0 when it succeeded, 1 when it failed (the reason on
/// stderr), 2 when it could not run (bad arguments or settings, another drill).
async fn restore_drill(args: &RestoreDrillArgs) -> i32 {
    use crate::drill::{self, Request, Trigger};
    use crate::settings::restore::{self as config, RecoveryTarget};
    let refuse = |e: &dyn std::fmt::Display| {
        eprintln!("pgwarden: restore-drill: {e}; nothing was restored");
        2
    };
    if let Some(id) = &args.backup_id {
        if !config::is_backup_id(id) {
            return refuse(&format!(
                "--backup-id: {id:?} is not a backup id (YYYYmmddTHHMMSS, as `pgwarden backup-list` shows)"
            ));
        }
    }
    let target = match args.target_time.as_deref() {
        None => RecoveryTarget::End,
        Some(t) => match config::parse_target("PGWARDEN_RECOVERY_TARGET_TIME", t) {
            Ok(t) => t,
            Err((_, m)) => return refuse(&format!("--target-time: {m}")),
        },
    };
    let s = match Settings::load(&args.settings) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    let req = Request {
        backup_id: args.backup_id.clone(),
        target,
        trigger: Trigger::Command,
    };
    // Ctrl-C or a SIGTERM stops the drill and still removes what it made.
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        on_signal.cancel();
    });
    // On a terminal, the restore's progress as a bar (the log has a line every few
    // seconds otherwise).
    let tracker = std::sync::Arc::new(drill::Tracker::new(&s.drill.dir, None));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let (tracker, done) = (tracker.clone(), done.clone());
        std::thread::spawn(move || {
            crate::progress::draw_bar(
                || {
                    tracker
                        .status()?
                        .running?
                        .restore
                        .filter(|f| f.total_bytes > 0)
                },
                &done,
            )
        })
    });
    let drilled = drill::drill(&s, &req, &Runner::Direct, &cancel, Some(&tracker)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    match drilled {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", drill::render(&r));
            }
            if let Some(e) = &r.error {
                eprintln!("pgwarden: restore-drill: {e}");
            }
            i32::from(!r.ok)
        }
        Err(drill::NotRun::Interrupted) => {
            eprintln!("pgwarden: restore-drill: interrupted; what it made is removed");
            1
        }
        Err(e) => refuse(&e),
    }
}

/// Calls the running pgwarden over its control socket and prints the answer.
/// `pgwarden list`: `GET /cluster` of the local instance, as a table.
fn list(args: &ListArgs) -> i32 {
    let path = crate::run::control_socket(&args.local.socket_dir);
    match client::request(&Target::Unix(path.clone()), "GET", "/cluster", &[]) {
        Ok(r) if r.status == 200 && !args.json => {
            match serde_json::from_str::<crate::ha::status::ClusterDoc>(&r.body) {
                Ok(doc) => {
                    print!("{}", doc.table());
                    0
                }
                Err(e) => {
                    eprintln!("pgwarden: unexpected /cluster answer ({e}): {}", r.body);
                    1
                }
            }
        }
        Ok(r) => {
            println!("{}", r.body.trim_end());
            i32::from(r.status != 200)
        }
        Err(e) => {
            eprintln!(
                "pgwarden: cannot reach the running pgwarden at {}: {e}",
                path.display()
            );
            1
        }
    }
}

/// Member names are host-like; anything else would need escaping in a URL.
fn member_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `pgwarden switchover [--to NAME]`: `POST /switchover` on the local instance.
fn switchover(args: &SwitchoverArgs) -> i32 {
    let route = match &args.to {
        Some(to) if !member_name(to) => {
            eprintln!("pgwarden: switchover: {to:?} is not a member name");
            return 2;
        }
        Some(to) => format!("/switchover?candidate={to}"),
        None => "/switchover".to_owned(),
    };
    local_call(&args.local, "POST", &route)
}

/// `pgwarden failover --to NAME --force`: `POST /failover` on the local instance.
fn failover(args: &FailoverArgs) -> i32 {
    if !member_name(&args.to) {
        eprintln!("pgwarden: failover: {:?} is not a member name", args.to);
        return 2;
    }
    if !args.force {
        eprintln!(
            "pgwarden: failover: without a healthy leader, {} is promoted even if it lacks acknowledged commits; add --force to confirm",
            args.to
        );
        return 2;
    }
    local_call(
        &args.local,
        "POST",
        &format!("/failover?candidate={}&force=true", args.to),
    )
}

fn local_call(args: &LocalArgs, method: &str, route: &str) -> i32 {
    local_call_within(args, method, route, std::time::Duration::from_secs(120))
}

/// [`local_call`], waiting at most `timeout` for the answer. `pgwarden backup` answers
/// when the backup (and the retention after it) is done, which for a large database
/// is hours: the socket then stays silent far longer than any verb's two minutes.
fn local_call_within(
    args: &LocalArgs,
    method: &str,
    route: &str,
    timeout: std::time::Duration,
) -> i32 {
    let path = crate::run::control_socket(&args.socket_dir);
    match client::request_with_timeout(&Target::Unix(path.clone()), method, route, &[], timeout) {
        Ok(r) => {
            println!("{}", r.body.trim_end());
            if r.status == 200 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!(
                "pgwarden: cannot reach the running pgwarden at {}: {e}",
                path.display()
            );
            1
        }
    }
}
