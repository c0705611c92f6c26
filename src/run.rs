//! `pgwarden run`: the order of things at start-up.
//!
//! 1. Load and validate every setting, and have postgres validate the configuration
//!    about to be written. Nothing is touched until this passes.
//! 2. Bind the HTTP listener, so probes answer (and a port clash fails) before anything
//!    slow starts.
//! 3. Install signal handlers and the reaper, start the monitor and the HTTP server.
//! 4. Bootstrap PGDATA if needed, write the configuration, supervise postgres.

use crate::http::{self, AppState, Instance};
use crate::pgconf::{self, tuning};
use crate::process::{Reaper, Runner};
use crate::settings::{Settings, SettingsArgs};
use crate::state::SupervisorStatus;
use crate::supervisor::{self, Signals, Supervisor};
use crate::{bootstrap, monitor, replica};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Path of the control socket that local CLI verbs talk to.
pub fn control_socket(socket_dir: &Path) -> PathBuf {
    socket_dir.join("pgwarden.sock")
}

/// Runs pgwarden as the container's main process; returns its exit code.
pub async fn run(args: &SettingsArgs) -> Result<i32> {
    // Loaded before the reaper starts: it runs `postgres --version` the ordinary way.
    let settings = Arc::new(Settings::load(args)?);
    if settings.host_auth_method == "trust" {
        warn!(
            "POSTGRES_HOST_AUTH_METHOD=trust: anyone who can reach port {} connects as any role without a password, \
             even if POSTGRES_PASSWORD is set; set POSTGRES_PASSWORD and leave POSTGRES_HOST_AUTH_METHOD unset instead",
            settings.port
        );
    }
    // Before anything is touched (the control socket, the configuration): a second
    // pgwarden on a volume whose postmaster still runs must not fight over it.
    if let Some(pid) = crate::pgdata::running_postmaster(&settings.pgdata) {
        anyhow::bail!(
            "PGDATA: {} is in use by a running postmaster (pid {pid}), not started by this pgwarden; \
             is another instance using this volume? Refusing to start",
            settings.pgdata.display()
        );
    }
    let resources = tuning::detect();
    let rendered = pgconf::render(&settings, &settings.pgdata, &resources)?;
    pgconf::validate(
        &rendered,
        &settings.bin("postgres"),
        settings.run_as.as_ref(),
        &Runner::Direct,
    )
    .await
    .context(settings.user_layer_name())?;

    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| {
            format!(
                "PGWARDEN_HTTP_ADDR: cannot listen on {}",
                settings.http_addr
            )
        })?;
    let mut signals = Signals::install().context("install signal handlers")?;
    let reaper = Reaper::start().context("start the reaper")?;
    let runner = Runner::Reaped(reaper.clone());

    let (status_tx, status_rx) = watch::channel(SupervisorStatus::bootstrapping());
    let (daemon_tx, daemon_rx) = watch::channel(None);
    let (ha_status_tx, ha_status_rx) = watch::channel(None);
    let backup_status = Arc::new(std::sync::Mutex::new(crate::backup::BackupStatus::default()));
    let backups = http::backup::BackupState {
        settings: settings.clone(),
        runner: runner.clone(),
        daemon: daemon_rx.clone(),
        status: backup_status.clone(),
        one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
    };
    let drills = Arc::new(crate::drill::Tracker::new(
        &settings.drill.dir,
        settings.drill.schedule_text.clone(),
    ));
    let app = AppState {
        backup: backup_status,
        restore: Default::default(),
        drill: drills.clone(),
        daemon: daemon_rx,
        sup: status_rx.clone(),
        snap: monitor::spawn(settings.clone(), status_rx),
        instance: Arc::new(Instance {
            name: settings.name.clone(),
            configured_role: settings.role,
            ready_max_lag: settings.ready_max_lag,
            ha: settings.ha.is_some(),
        }),
        ha: ha_status_rx,
    };
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(8);
    let ctl = http::control::ControlState {
        settings: settings.clone(),
        runner: runner.clone(),
        commands: supervisor::Commands(command_tx.clone()),
        switchover: Default::default(),
    };
    // Failsafe requests from a leader that cannot reach etcd: answered on the TCP port
    // (the other members' way in), recorded for the HA loop.
    let failsafe = crate::ha::failsafe::Accepted::default();
    let failsafe_routes = http::failsafe::router(
        http::failsafe::FailsafeState {
            name: settings.name.clone(),
            on: settings.ha.as_ref().is_some_and(|c| c.failsafe),
            ha: app.ha.clone(),
            accepted: failsafe.clone(),
        },
        settings.api_token.clone(),
    );
    let tcp_router = http::router(app.clone())
        .merge(failsafe_routes)
        .merge(http::control::tcp_router(
            ctl.clone(),
            settings.api_token.clone(),
        ))
        .merge(http::control::protect(
            http::backup::router(backups.clone()),
            settings.api_token.clone(),
        ));
    match &settings.tls {
        Some((cert, key)) => http::serve_tls(listener, tcp_router, cert, key).await?,
        None => http::serve_tcp(listener, tcp_router),
    }
    info!(addr = %settings.http_addr, name = %settings.name, role = %settings.role, "pgwarden is up");

    let drill_dir = settings.drill.dir.clone();
    tokio::spawn(async move { crate::drill::clear_stale(&drill_dir).await });
    bootstrap::ensure_socket_dir(&settings)?;
    replica::write_passfile(&settings)?;
    let mut ha = match &settings.ha {
        Some(cfg) => {
            let mut ha = crate::ha::Ha::connect(&settings, cfg).await?;
            ha.publish_to(ha_status_tx);
            ha.accept_failsafe_on(failsafe);
            let _ = ctl.switchover.set(ha.switchover(app.ha.clone()));
            Some(ha)
        }
        None => None,
    };
    let prepare = async {
        // With HA the store decides the role to bootstrap or start as.
        let (settings, holder) = match ha.as_mut() {
            Some(ha) => (Arc::new(ha.prepare(&settings).await?), ha.hold_lease()),
            None => (settings.clone(), None),
        };
        let done = async {
            bootstrap::ensure(&settings, &runner, &app.restore).await?;
            match replica::prepare(&settings, &runner).await {
                Ok(()) => anyhow::Ok(()),
                // PGWARDEN_REWIND_FAILED decides, rather than an exit at every start.
                Err(e) => {
                    let kept = supervisor::after_failed_rewind(&settings, &runner, &app.restore, e)
                        .await?;
                    status_tx.send_modify(|st| st.rewind_failed = kept);
                    Ok(())
                }
            }
        }
        .await;
        if let Some(h) = holder {
            h.abort();
        }
        if let (Err(e), Some(ha)) = (&done, ha.as_mut()) {
            // The initialize winner's bootstrap failed: the cluster was never
            // initialized, and another member may try (Patroni's semantics). What this
            // one left in PGDATA reads as an interrupted bootstrap, redone from clean.
            if settings.role == crate::settings::Role::Primary
                && !matches!(
                    settings.data_state,
                    crate::pgdata::DataDirState::Initialized { .. }
                )
            {
                error!(
                    error = format!("{e:#}"),
                    "HA: the bootstrap of the cluster failed; giving up the initialize key"
                );
                ha.cancel_initialization().await;
            }
        }
        done?;
        // A clone of an upgraded primary archives under that cluster's server name.
        let settings = match crate::upgrade::with_archive_name(&settings) {
            Some(next) => Arc::new(next),
            None => settings,
        };
        anyhow::Ok(settings)
    };
    let (settings, rendered) = tokio::select! {
        result = prepare => {
            let next = result?;
            // Rendered again from what the start-up found: HA chose the upstream
            // (primary_conninfo), and a rewind that failed and was kept pins the
            // standby to its own timeline (pgdata::REWIND_KEPT). The first rendering
            // was validated; these inputs only change values postgres knows.
            let rendered = pgconf::render(&next, &next.pgdata, &resources)?;
            (next, rendered)
        }
        sig = supervisor::wait_for_stop(&mut signals) => {
            warn!(signal = ?sig, "stop requested during the bootstrap; it will be redone on the next start");
            supervisor::stop_children(&reaper).await;
            return Ok(1);
        }
    };
    let scheduled_backups = backups.clone();
    let upgrade_backups = backups.clone();
    let mut control = http::control::router(ctl).merge(http::backup::router(backups));
    if settings.archive.is_some() || settings.restore.is_some() {
        let owner = settings.run_as.as_ref().map(|u| u.owner());
        let source = settings
            .restore
            .as_ref()
            .map(|r| crate::wal::daemon::Source {
                cfg: r.source.clone(),
                always: settings.follows_archive(),
            });
        let daemon = crate::wal::daemon::Daemon::start(
            settings.archive.clone(),
            source,
            settings.pgdata.clone(),
            owner,
            status_tx.subscribe(),
        )
        .await
        .context("PGWARDEN_ARCHIVE_URL: start the WAL daemon")?;
        info!(
            archive = ?settings.archive.as_ref().map(|c| c.url.as_str()),
            restore_from = ?settings.restore.as_ref().map(|r| r.source.url.as_str()),
            "WAL daemon started"
        );
        daemon_tx.send_replace(Some(daemon.clone()));
        control = control.merge(http::wal::router(daemon));
    }
    serve_control(&settings, http::router(app.clone()).merge(control))?;
    if let Some(schedule) = settings.backups.schedule.clone() {
        info!(
            schedule = settings
                .backups
                .schedule_text
                .as_deref()
                .unwrap_or_default(),
            retention = settings.backups.retention.map(|p| p.to_string()),
            "scheduled backups on"
        );
        crate::backup::scheduler::Scheduler {
            schedule,
            backups: scheduled_backups,
            local: backup_role(app.clone()),
        }
        .spawn();
    }
    let drill_task = settings.drill.schedule.clone().map(|schedule| {
        info!(
            schedule = settings.drill.schedule_text.as_deref().unwrap_or_default(),
            dir = %settings.drill.dir.display(),
            "scheduled restore drills on"
        );
        crate::drill::scheduler::Scheduler {
            schedule,
            settings: settings.clone(),
            runner: runner.clone(),
            tracker: drills,
            local: drill_role(app.clone()),
            supervisor: status_tx.subscribe(),
        }
        .spawn()
    });
    // A base backup of an adopted primary brings its .orig files: a replica must run with
    // the same settings (a hot standby refuses a lower max_connections, for one).
    let (settings, rendered) = match settle(&settings, &runner).await? {
        Some(next) => {
            let next = Arc::new(next);
            let r = pgconf::render(&next, &next.pgdata, &resources)?;
            pgconf::validate(&r, &next.bin("postgres"), next.run_as.as_ref(), &runner)
                .await
                .context("PGDATA: the configuration with what the bootstrap brought (adopted settings, the source's recovery parameters)")?;
            (next, r)
        }
        None => (settings, rendered),
    };
    adopt_originals(&settings)?;
    // The text validated before anything was touched; writing it is all that is left.
    pgconf::write(
        &rendered,
        &settings.pgdata,
        settings.run_as.as_ref().map(|u| u.owner()),
    )
    .with_context(|| {
        format!(
            "cannot write the configuration into {}",
            settings.pgdata.display()
        )
    })?;

    // The upgraded cluster's first start is next: in link mode, from now on the old
    // cluster can no longer be started. What is left of the upgrade runs once it is up.
    crate::upgrade::mark_started(&settings)
        .context("PGDATA: record the upgraded cluster's start")?;
    crate::upgrade::after::After {
        settings: settings.clone(),
        runner: runner.clone(),
        backups: upgrade_backups,
        gate: scheduled_backup_gate(app.clone()),
    }
    .spawn();

    let ha = ha.map(|ha| {
        ha.spawn(
            settings.clone(),
            status_tx.subscribe(),
            supervisor::Commands(command_tx.clone()),
            &runner,
        )
    });
    let last_settings = settings.clone();
    let sup = Supervisor {
        restart_on_pending: settings.restart_on_pending,
        settings,
        resources,
        reaper,
        status: status_tx,
        commands: command_rx,
        self_commands: supervisor::Commands(command_tx),
        refused: None,
        restoring: app.restore.clone(),
    };
    let code = sup.run(&mut signals).await;
    // A drill under way stopped when the shutdown began: let it finish removing what
    // it made, within a bound (the next drill removes what is left).
    if let Some(task) = drill_task {
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!("the restore drill under way did not finish its clean-up in time; the next drill does");
        }
    }
    // postgres has stopped: only now may the leader key go to another member.
    if let Some(ha) = ha {
        if code != 0 && crate::ha::restoring(&last_settings) {
            // The restored backup did not recover (the archive ends before the target,
            // WAL is missing): the cluster was never initialized. Its data is a copy of
            // the archive's, so it is discarded and the claim given up, for this member
            // or another to try again from clean, as Patroni does.
            error!("HA: the restored backup did not recover; discarding it and giving up the initialize key");
            if let Err(e) = bootstrap::discard(&last_settings.pgdata) {
                error!(
                    error = format!("{e:#}"),
                    "cannot discard the restored backup"
                );
            }
            ha.cancel_initialization().await;
        } else {
            ha.retire().await;
        }
    }
    Ok(code)
}

/// The role the backup schedule sees this instance in: the one it runs as, while
/// ready in it, or why it is not ready.
fn backup_role(app: AppState) -> crate::backup::scheduler::Local {
    Arc::new(move || {
        let (sup, snap) = app.view();
        http::readiness(&sup, &snap, &app.instance)?;
        Ok(http::effective_role(&snap, &app.instance))
    })
}

/// The backup after an upgrade runs on a ready primary only: replicas share the
/// archive, and one backup is enough.
fn scheduled_backup_gate(app: AppState) -> crate::backup::scheduler::Gate {
    Arc::new(move || {
        let (sup, snap) = app.view();
        http::readiness(&sup, &snap, &app.instance)?;
        match http::effective_role(&snap, &app.instance) {
            crate::settings::Role::Primary => Ok(()),
            crate::settings::Role::Replica => Err(
                "this instance is a replica; the primary takes the scheduled backups".to_owned(),
            ),
        }
    })
}

/// The role a drill sees this instance in: the one it runs as, while ready in it.
fn drill_role(app: AppState) -> crate::drill::scheduler::Local {
    Arc::new(move || {
        let (sup, snap) = app.view();
        http::readiness(&sup, &snap, &app.instance).ok()?;
        Some(http::effective_role(&snap, &app.instance))
    })
}

/// Settings with what PGDATA now holds, when that changes them: the adopted layer a
/// base backup brought, and, while recovering from a restored backup (or a replica
/// seeded from the archive's), the source's values of the parameters recovery needs
/// at least.
async fn settle(s: &Settings, runner: &Runner) -> Result<Option<Settings>> {
    let mut next = reload_adopted(s)?;
    let recovering = [
        crate::settings::restore::RECOVERY_SIGNAL,
        replica::STANDBY_SIGNAL,
    ]
    .iter()
    .any(|f| s.pgdata.join(f).exists());
    let restored =
        s.restore.is_some() || s.clone_from == crate::settings::restore::CloneFrom::Archive;
    if restored && recovering {
        let floor = replica::controldata::hot_standby_floor(s, runner, &s.pgdata)
            .await
            .context("PGDATA: read the restored cluster's control file")?;
        if floor != s.recovery_floor {
            let mut n = next.unwrap_or_else(|| s.clone());
            n.recovery_floor = floor;
            next = Some(n);
        }
    }
    Ok(next)
}

/// Settings with the adopted layer read again, when the bootstrap brought one.
fn reload_adopted(s: &Settings) -> Result<Option<Settings>> {
    if s.data_state.version().is_some() {
        return Ok(None);
    }
    let adopted =
        crate::pgconf::adopt::load(&s.pgdata).map_err(|e| anyhow::anyhow!("PGDATA: {e}"))?;
    if adopted == s.adopted {
        return Ok(None);
    }
    let mut next = s.clone();
    next.adopted = adopted;
    Ok(Some(next))
}

/// Keeps the PGDATA's own configuration files beside the rendered ones the first time,
/// and says what of them is not in force.
fn adopt_originals(s: &Settings) -> Result<()> {
    use crate::pgconf::adopt;
    let a = &s.adopted;
    if !a.to_keep.is_empty() {
        adopt::keep_originals(a, s.run_as.as_ref().map(|u| u.owner()))
            .context("PGDATA: keep the original configuration files")?;
        for (live, copy) in &a.to_keep {
            warn!(
                original = %live.display(),
                kept_as = %copy.display(),
                "this PGDATA's configuration was not written by pgwarden; adopting it (its settings and rules stay in force, the file is kept beside the rendered one)"
            );
        }
        for n in &a.not_adopted {
            warn!(setting = %n.what, reason = %n.why, "not carried over from the original configuration");
        }
    }
    if !a.is_empty() {
        info!(
            settings = a.conf.entries.len(),
            hba_rules = a.hba.len(),
            "adopted configuration in force (from {} and {})",
            adopt::ORIGINAL_CONF,
            adopt::ORIGINAL_HBA
        );
    }
    for (name, was, by, value) in adopt::overridden(&a.conf, &s.user_conf, &s.command_line) {
        info!(
            parameter = name,
            adopted = was,
            winner = by,
            value,
            "{by} wins over {}",
            adopt::ORIGINAL_CONF
        );
    }
    Ok(())
}

/// Serves the same routes on a unix socket that only the run-as user and root can open.
fn serve_control(s: &Settings, router: axum::Router) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = control_socket(&s.socket_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(u) = &s.run_as {
        nix::unistd::chown(&path, Some(u.uid.into()), Some(u.gid.into()))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    http::serve_unix(listener, router);
    Ok(())
}
