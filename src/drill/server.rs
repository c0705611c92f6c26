//! The drill's own postgres, on the restored cluster: a unix socket in the scratch
//! directory and no TCP, archiving off and every command that could touch the
//! archive emptied, WAL from a restore-only WAL daemon on that socket (the same
//! fetch, checks and prefetch as a real restore, and credentials that never reach
//! postgres's environment).

use super::record::Check;
use crate::process::{run_as, Child, Runner};
use crate::settings::restore::RecoveryTarget;
use crate::settings::Settings;
use crate::state::{State, SupervisorStatus};
use crate::wal::daemon::{Daemon, Source};
use crate::wal::ArchiveConfig;
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Lines of a failed check's output quoted in the result.
const DETAIL_LINES: usize = 20;

/// What the server's output said went wrong.
#[derive(Debug, Default)]
struct Cause {
    /// The last error of a `wal-restore` (a hole in the archive names its segment).
    restore_error: Option<String>,
    /// postgres's last FATAL or PANIC.
    fatal: Option<String>,
    /// postgres said it accepts connections: recovery has ended.
    open: bool,
}

/// What postgres logs once recovery has ended and it accepts connections (with
/// `lc_messages=C`).
const OPEN: &str = "database system is ready to accept connections";
/// What it answers the drill's connections with while it recovers (hot standby off),
/// with their details: not failures.
const NOT_OPEN: [&str; 5] = [
    "the database system is not accepting connections",
    "the database system is starting up",
    "the database system is not yet accepting connections",
    "Hot standby mode is disabled.",
    "Consistent recovery state has not been yet reached.",
];

/// The running drill server and the WAL daemon behind its restore_command.
pub(super) struct Server {
    child: Child,
    run: PathBuf,
    port: u16,
    serve: tokio::task::JoinHandle<()>,
    daemon_state: watch::Sender<SupervisorStatus>,
    cause: Arc<Mutex<Cause>>,
}

/// The settings the drill server runs with, over the restored `postgresql.conf`
/// (postgres's `-c` wins over its files).
fn flags(s: &Settings, run: &Path, target: &RecoveryTarget) -> Vec<(String, String)> {
    let exe = crate::pgconf::quote::shell(&s.exe.to_string_lossy());
    let run_text = run.to_string_lossy().into_owned();
    let mut f: Vec<(&str, String)> = vec![
        ("listen_addresses", String::new()),
        ("port", s.port.to_string()),
        ("unix_socket_directories", run_text.clone()),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", format!("{run_text}/{HBA}")),
        ("ident_file", format!("{run_text}/{IDENT}")),
        ("ssl", "off".into()),
        // Not the live instance's, if its configuration names one.
        (
            "external_pid_file",
            format!("{run_text}/postmaster.external.pid"),
        ),
        ("cluster_name", format!("{}-drill", s.name)),
        // Nothing of the drill may reach the archive, or any other place outside the
        // scratch directory: no archiving (so no .history or .partial pushed at
        // promotion), and no command of the source's configuration that a recovery
        // runs (pg_archivecleanup in archive_cleanup_command would delete WAL).
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("restore_command", format!("{exe} wal-restore %f %p")),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("recovery_target_timeline", "latest".into()),
        // Open only once recovery has ended: no read-only phase to check, and no
        // minimum of max_connections and friends to meet during replay.
        ("hot_standby", "off".into()),
        // Beside a live cluster: a small footprint, whatever the source's sizing.
        ("shared_buffers", "128MB".into()),
        ("huge_pages", "try".into()),
        ("autovacuum", "off".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        (
            "log_line_prefix",
            crate::logging::POSTGRES_LOG_PREFIX.to_owned(),
        ),
        ("restart_after_crash", "off".into()),
        // Its messages are read: in English, whatever the source's locale.
        ("lc_messages", "C".into()),
    ];
    let target_lines = target.conf();
    if !target_lines.is_empty() {
        f.extend(target_lines);
        f.push(("recovery_target_action", "promote".into()));
    }
    f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The drill server's pg_hba.conf and pg_ident.conf, in its socket directory, which
/// only the run-as user (and root) can enter.
const HBA: &str = "pg_hba.conf";
const IDENT: &str = "pg_ident.conf";

impl Server {
    /// Starts the WAL daemon and postgres on the cluster in `data`; returns once
    /// postgres is spawned.
    pub(super) async fn start(
        s: &Settings,
        runner: &Runner,
        source: &ArchiveConfig,
        data: &Path,
        run: &Path,
        target: &RecoveryTarget,
    ) -> Result<Server> {
        let owner = s.run_as.as_ref().map(|u| u.owner());
        crate::fsutil::ensure_dir(run, 0o700, owner).context("create the socket directory")?;
        crate::fsutil::write_atomic(
            &run.join(HBA),
            b"# pgwarden's restore drill: its server listens on this directory's socket alone\nlocal all all trust\n",
            owner,
            0o600,
        )
        .context("write the drill's pg_hba.conf")?;
        crate::fsutil::write_atomic(&run.join(IDENT), b"", owner, 0o600)
            .context("write the drill's pg_ident.conf")?;
        if !data.join("postgresql.conf").exists() {
            // A backup without one (postgres needs the file, even empty).
            crate::fsutil::write_atomic(&data.join("postgresql.conf"), b"", owner, 0o600)
                .context("write postgresql.conf")?;
        }

        let (daemon_state, state_rx) = watch::channel(SupervisorStatus::bootstrapping());
        let daemon = Daemon::start(
            None,
            Some(Source {
                cfg: source.clone(),
                always: true,
            }),
            data.to_path_buf(),
            owner,
            state_rx,
        )
        .await
        .context("start the WAL daemon the drill restores through")?;
        let socket = crate::run::control_socket(run);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("bind {}", socket.display()))?;
        if let Some(o) = owner {
            nix::unistd::chown(&socket, Some(o.uid.into()), Some(o.gid.into()))
                .with_context(|| format!("chown {}", socket.display()))?;
        }
        let router = crate::http::wal::router(daemon);
        let serve = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "the drill's WAL socket stopped");
            }
        });

        let cause = Arc::new(Mutex::new(Cause::default()));
        let tap = tap(cause.clone());
        let owned = flags(s, run, target);
        let mut extra: Vec<&str> = Vec::new();
        let pairs: Vec<String> = owned.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for p in &pairs {
            extra.push("-c");
            extra.push(p);
        }
        // restore_command goes to the daemon on the drill's socket; without it, to
        // the source archive in-process (read only either way).
        let mut env: Vec<(&str, std::ffi::OsString)> = source
            .env()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        env.push(("PGWARDEN_SOCKET_DIR", run.as_os_str().to_owned()));
        let child =
            match crate::supervisor::postgres::spawn_with(s, runner, data, &extra, &env, Some(tap))
            {
                Ok(c) => c,
                Err(e) => {
                    serve.abort();
                    return Err(e).context("start postgres on the restored cluster");
                }
            };
        tracing::info!(pid = child.pid(), data = %data.display(), "the drill's server is recovering the restored backup");
        Ok(Server {
            child,
            run: run.to_path_buf(),
            port: s.port,
            serve,
            daemon_state,
            cause,
        })
    }

    /// Waits until recovery has ended and the server accepts connections; the error
    /// says why it stopped instead (a missing segment by name). With hot standby off
    /// the server refuses connections (57P03) until recovery has ended: a connection,
    /// not postmaster.pid, is the proof that it is open.
    pub(super) async fn wait_recovered(&mut self, s: &Settings) -> Result<(), String> {
        // Ask when postgres said it is open, and now and then besides (a log line is a
        // hint, the connection the proof).
        let mut tick = 0u32;
        loop {
            tick = tick.wrapping_add(1);
            let open = self.cause.lock().unwrap_or_else(|p| p.into_inner()).open;
            if !open && tick % 40 != 1 {
                tokio::select! {
                    exit = self.child.wait() => return Err(self.stopped(exit).await),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
            match self.connect(s, "template1").await {
                Ok(client) => match client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    Ok(row) if !row.get::<_, bool>(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "the drill's server is not open yet"),
                },
                Err(e) => {
                    let refused = e
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.code())
                        .is_some_and(|c| *c != tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW);
                    if refused {
                        return Err(format!("{e:#}"));
                    }
                }
            }
            tokio::select! {
                exit = self.child.wait() => return Err(self.stopped(exit).await),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Why postgres exited during recovery, from what it and `wal-restore` said.
    async fn stopped(&self, exit: std::io::Result<crate::process::Exit>) -> String {
        let exit = exit
            .map(|e| e.to_string())
            .unwrap_or_else(|e| e.to_string());
        // The output threads may still hold the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cause = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        let why = match (&cause.restore_error, &cause.fatal) {
            (Some(r), Some(f)) => format!("{r} (postgres: {f})"),
            (Some(r), None) => r.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => "no message".to_owned(),
        };
        format!("recovery stopped: postgres exited ({exit}): {why}")
    }

    async fn connect(&self, s: &Settings, db: &str) -> Result<tokio_postgres::Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.run)
            .port(self.port)
            .user(&s.superuser)
            .dbname(db)
            .application_name("pgwarden-drill")
            .connect_timeout(Duration::from_secs(10));
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to database {db:?} of the recovered cluster"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "drill connection closed");
            }
        });
        Ok(client)
    }

    /// The commit time of the last transaction replayed (microseconds since the
    /// epoch, none when recovery replayed none) and the last position replayed.
    pub(super) async fn recovered_to(&self, s: &Settings) -> Result<(Option<i64>, String)> {
        let client = self.connect(s, "template1").await?;
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::int8, \
                        coalesce(pg_last_wal_replay_lsn()::text, '')",
                &[],
            )
            .await
            .context("ask the recovered cluster how far it recovered")?;
        Ok((row.get(0), row.get(1)))
    }

    /// `pg_amcheck --heapallindexed` on every database.
    pub(super) async fn amcheck(&self, s: &Settings, runner: &Runner) -> Check {
        let mut cmd = Command::new(s.bin("pg_amcheck"));
        cmd.args([
            "--all",
            "--heapallindexed",
            "--install-missing",
            "--no-password",
        ])
        .arg("--maintenance-db=template1")
        .arg("--host")
        .arg(&self.run)
        .arg("--port")
        .arg(self.port.to_string())
        .arg("--username")
        .arg(&s.superuser)
        .env("LC_MESSAGES", "C")
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE");
        run_as(&mut cmd, s.run_as.as_ref());
        tracing::info!("checking every database of the recovered cluster with pg_amcheck");
        let (ok, detail) = match runner.output(&mut cmd, None).await {
            Ok(out) if out.status.success() => (true, None),
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                (
                    false,
                    Some(format!(
                        "pg_amcheck failed ({}): {}",
                        out.status,
                        head(&text, DETAIL_LINES)
                    )),
                )
            }
            Err(e) => (false, Some(format!("cannot run pg_amcheck: {e}"))),
        };
        Check {
            name: "pg_amcheck".into(),
            ok,
            detail,
        }
    }

    /// `PGWARDEN_DRILL_SQL` in POSTGRES_DB: one row, one boolean column, true.
    pub(super) async fn sql(&self, s: &Settings, sql: &str) -> Check {
        let verdict = async {
            let client = self.connect(s, &s.database).await?;
            let rows = client
                .query(sql, &[])
                .await
                .map_err(|e| anyhow::anyhow!("{}", db_error(&e)))?;
            let [row] = rows.as_slice() else {
                anyhow::bail!("it returned {} rows; it must return one", rows.len());
            };
            if row.columns().len() != 1
                || *row.columns()[0].type_() != tokio_postgres::types::Type::BOOL
            {
                anyhow::bail!(
                    "it returned {}; it must return one boolean column",
                    row.columns()
                        .iter()
                        .map(|c| format!("{} ({})", c.name(), c.type_()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            match row.get::<_, Option<bool>>(0) {
                Some(true) => Ok(()),
                Some(false) => anyhow::bail!("it returned false"),
                None => anyhow::bail!("it returned null"),
            }
        }
        .await;
        Check {
            name: "PGWARDEN_DRILL_SQL".into(),
            ok: verdict.is_ok(),
            detail: verdict.err().map(|e| format!("PGWARDEN_DRILL_SQL: {e:#}")),
        }
    }

    /// Stops postgres at once (nothing of it is kept) and the WAL daemon with it.
    pub(super) async fn stop(mut self) {
        let _ = self.child.signal(Signal::SIGQUIT);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    pid = self.child.pid(),
                    "the drill's server did not stop; killing it"
                );
                let _ = self.child.signal(Signal::SIGKILL);
                let _ = self.child.wait().await;
            }
        }
        // Cancels the daemon's fetches under way (the prefetcher's too).
        self.daemon_state
            .send_modify(|st| st.state = State::Stopping);
        self.serve.abort();
        let _ = (&mut self.serve).await;
    }
}

/// A database error with its detail, as psql shows it.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// The first `n` lines of `text`, trimmed, joined with ` | `.
fn head(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = lines
        .iter()
        .take(n)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if lines.len() > n {
        out.push_str(&format!(" | ({} more lines)", lines.len() - n));
    }
    out
}

/// Reads the drill server's output: logged as the drill's (not as the live
/// postgres's), and what it says about a failure kept.
fn tap(cause: Arc<Mutex<Cause>>) -> crate::supervisor::postgres::Tap {
    Arc::new(move |line: &str| {
        if let Some((obj, level)) = crate::logging::child_record(line) {
            if level == tracing::Level::ERROR {
                if let Some(e) = obj.get("error").and_then(|v| v.as_str()) {
                    cause
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restore_error = Some(e.to_owned());
                }
            }
            // Already redacted by the reader.
            crate::logging::postgres_line(&mut crate::redact::Redactor::new(), line);
            return;
        }
        match crate::logging::parse_postgres_line(line) {
            // The drill's own connections while recovery runs.
            Some(p)
                if matches!(p.severity, "FATAL" | "DETAIL") && NOT_OPEN.contains(&p.message) =>
            {
                tracing::debug!(target: "pgwarden::drill", "drill server: {}", p.message)
            }
            Some(p) if matches!(p.severity, "FATAL" | "PANIC") => {
                cause.lock().unwrap_or_else(|p| p.into_inner()).fatal = Some(p.message.to_owned());
                tracing::error!(target: "pgwarden::drill", severity = p.severity, "drill server: {}", p.message);
            }
            Some(p) if matches!(p.severity, "ERROR" | "WARNING") => {
                tracing::warn!(target: "pgwarden::drill", severity = p.severity, "drill server: {}", p.message)
            }
            Some(p) => {
                if p.message == OPEN {
                    cause.lock().unwrap_or_else(|p| p.into_inner()).open = true;
                }
                tracing::info!(target: "pgwarden::drill", severity = p.severity, "drill server: {}", p.message)
            }
            None => tracing::info!(target: "pgwarden::drill", "drill server: {line}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_names_the_cause() {
        let cause = Arc::new(Mutex::new(Cause::default()));
        let t = tap(cause.clone());
        t(
            r#"{"ts":"x","level":"error","logger":"pgwarden","msg":"wal-restore failed","file":"000000010000000000000005","error":"invalid: WAL segment 000000010000000000000005 is missing from the archive, but ..."}"#,
        );
        t("2026-11-24 03:00:00.000 UTC|42|00000|||FATAL:  could not restore file \"000000010000000000000005\" from archive: child process exited with exit code 255");
        t("2026-11-24 03:00:00.000 UTC|42|00000|||LOG:  startup process (PID 43) exited with exit code 1");
        // The drill's own connections during recovery are no cause.
        t("2026-11-24 03:00:00.000 UTC|44|57P03|postgres|template1|FATAL:  the database system is not accepting connections");
        assert!(!cause.lock().unwrap().open);
        t("2026-11-24 03:00:00.000 UTC|42|00000|||LOG:  database system is ready to accept connections");
        let c = cause.lock().unwrap();
        assert!(c.open);
        assert!(c
            .restore_error
            .as_deref()
            .unwrap()
            .contains("WAL segment 000000010000000000000005 is missing"));
        assert!(c
            .fatal
            .as_deref()
            .unwrap()
            .starts_with("could not restore file"));
    }

    #[test]
    fn quotes_only_what_helps() {
        assert_eq!(head("a\n\n b \nc\nd", 2), "a | b | (2 more lines)");
        assert_eq!(head("one", 5), "one");
    }
}
