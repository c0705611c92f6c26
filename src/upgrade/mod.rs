//! Major upgrades at start (`PGWARDEN_UPGRADE=on`): a PGDATA of an older major than
//! the binaries is upgraded in place with pg_upgrade before postgres starts, like the
//! bootstrap, which also fills PGDATA before postgres runs. See docs/upgrades.md.
//!
//! [`decide`] says what a start does with PGDATA (a pure function, tested with a table);
//! [`ensure`] does it. The upgrade is a state machine on disk, so that a kill at any
//! moment followed by a restart finishes it or undoes it:
//!
//! | phase (marker) | PGDATA holds | after a kill, the next start |
//! |---|---|---|
//! | (no work directory) | the old cluster | upgrades |
//! | `prepare`: initdb into `new`, `pg_upgrade --check`, `pg_upgrade` | the old cluster (link mode: its `global/pg_control` renamed `pg_control.old`) | undoes: servers stopped, `pg_control` renamed back, `new` removed; then upgrades again |
//! | `swap-out`: PGDATA's entries into `old` | old `PG_VERSION`, fewer and fewer old entries | finishes the swap |
//! | `swap-in`: `new`'s entries into PGDATA, `PG_VERSION` last | old `PG_VERSION` and more and more new entries; then the new `PG_VERSION` (the commit) | finishes the swap |
//! | `ready` | the new cluster, never started | starts it |
//! | `started`: update_extensions.sql, `vacuumdb --analyze-in-stages` | the new cluster, running | does them again |
//! | `analyzed`: the first base backup | the new cluster | takes it |
//! | `cleanup`: `old` removed, then the marker, then the work directory | the new cluster | removes what is left |
//!
//! The work directory is `<PGDATA>.pgwarden-upgrade` beside PGDATA, or
//! `PGDATA/pgsql_tmp.pgwarden-upgrade` when PGDATA is a mount point or its parent is not
//! writable ([`state::choose`]); its marker file `state` names the phase. In link mode
//! the old cluster can no longer be started once the new one has run (pg_upgrade's
//! documentation): the last point where it can is `ready`, and up to `prepare` pgwarden
//! puts it back by itself.
//!
//! The new cluster has a new system identifier: it archives under its own server name,
//! `<name>-pg<major>` ([`archive_server`]), chosen from the record the upgrade leaves
//! in PGDATA ([`state::RECORD`]), so that its WAL never mixes with the old cluster's.

pub mod after;
pub mod config;
pub mod decide;
pub mod state;
pub mod swap;
mod tool;

pub use config::{Mode, PausePoint, UpgradeArgs, UpgradeConfig};
pub use decide::{decide, Found, Plan, Recover, Then, Work};

use crate::process::Runner;
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use state::{Layout, Marker, Phase};
use std::path::Path;
use tracing::{error, info, warn};

/// What an earlier upgrade of `pgdata` left: its work directory and marker.
pub fn find(pgdata: &Path) -> std::io::Result<(Option<Layout>, Work)> {
    let Some(layout) = state::find(pgdata)? else {
        return Ok((None, Work::None));
    };
    let work = match state::read(&layout)? {
        Some(m) => Work::Marked(m),
        None => Work::Stray,
    };
    Ok((Some(layout), work))
}

/// The archive's server name for a cluster: `configured`, or `<configured>-pg<major>`
/// once the cluster was upgraded to `major` (it has another system identifier than
/// the cluster that archived under `configured`).
pub fn archive_server(configured: &str, upgraded_to: Option<u32>) -> String {
    match upgraded_to {
        Some(major) => format!("{configured}-pg{major}"),
        None => configured.to_owned(),
    }
}

/// The major the cluster will be upgraded to, or was: what names its archive server.
pub fn upgraded_major(plan: &Plan, pgdata: &Path) -> Option<u32> {
    match &plan.then {
        Then::Upgrade { to, .. } | Then::Reclone { to, .. } => Some(*to),
        Then::Upgraded(m) => Some(m.to),
        Then::Use | Then::Refuse(_) => state::upgraded_to(pgdata),
    }
}

/// Settings whose archive server name follows PGDATA's record, when that changed it
/// (a replica that has just cloned an upgraded primary).
pub fn with_archive_name(s: &Settings) -> Option<Settings> {
    let archive = s.archive.as_ref()?;
    let to = state::upgraded_to(&s.pgdata)?;
    let wanted = archive_server(&archive.configured_server, Some(to));
    if archive.server == wanted {
        return None;
    }
    let mut next = s.clone();
    if let Some(a) = next.archive.as_mut() {
        info!(server = %wanted, "this cluster was upgraded to PostgreSQL {to}: it archives under its own server name");
        a.server = wanted;
    }
    Some(next)
}

/// Does what [`decide`] says about PGDATA's major, before the bootstrap looks at it:
/// finishes or undoes an interrupted upgrade, upgrades, or refuses. Returns with
/// PGDATA holding a cluster of the binaries' major, or none, or a replica's copy given
/// up for a new clone.
pub async fn ensure(s: &Settings, runner: &Runner) -> Result<()> {
    loop {
        let (layout, work) = find(&s.pgdata).context("PGDATA: look for an upgrade under way")?;
        let data = crate::pgdata::inspect(&s.pgdata)
            .context("PGDATA")?
            .version();
        let plan = decide(&Found {
            pgdata: &s.pgdata,
            data,
            bindir: &s.bindir,
            binaries: s.major_version,
            work,
            upgrade: s.upgrade.on,
            // With HA, the role is the one HA decided before (it follows a leader).
            replica: s.role == crate::settings::Role::Replica,
        });
        match (plan.recover, &layout) {
            (Recover::Nothing, _) | (_, None) => {}
            (Recover::RemoveStray, Some(l)) => {
                warn!(path = %l.work.display(), "removing an upgrade work directory that holds nothing needed");
                blocking(l.clone(), move |l| swap::remove_work(&l)).await?;
                continue;
            }
            (Recover::RollBack, Some(l)) => {
                warn!(path = %l.work.display(), "an upgrade was interrupted before the new cluster took PGDATA's place; undoing it");
                roll_back(s, l).await?;
                continue;
            }
            (Recover::FinishSwap, Some(l)) => {
                warn!(path = %l.work.display(), "an upgrade was interrupted while the new cluster was moved into PGDATA; finishing the move");
                let Work::Marked(m) = work else { continue };
                finish_swap(s, l, m).await?;
                continue;
            }
        }
        return match plan.then {
            Then::Use => Ok(()),
            Then::Upgraded(m) => {
                info!(from = m.from, to = m.to, phase = %m.phase, "PGDATA holds the upgraded cluster; what is left of the upgrade runs once it is up");
                Ok(())
            }
            Then::Refuse(why) => bail!("PGDATA: {why}"),
            Then::Upgrade { from, to } => upgrade(s, runner, from, to).await,
            Then::Reclone { from, to } => reclone(s, runner, from, to).await,
        };
    }
}

async fn blocking<F>(layout: Layout, f: F) -> Result<()>
where
    F: FnOnce(Layout) -> std::io::Result<()> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(layout))
        .await
        .context("the file-system task panicked")?
        .map_err(anyhow::Error::from)
}

async fn roll_back(s: &Settings, layout: &Layout) -> Result<()> {
    // The new major's tablespace directories go too: the marker names it (the
    // binaries may be the old ones by now).
    let to = state::read(layout)?.map_or(s.major_version, |m| m.to);
    // pg_upgrade's servers outlive a pgwarden killed with SIGKILL when pgwarden is not
    // PID 1; in a container they end with it.
    crate::bootstrap::stop_stale_postmaster(&layout.pgdata);
    crate::bootstrap::stop_stale_postmaster(&layout.new_cluster());
    blocking(layout.clone(), move |l| swap::roll_back(&l, to))
        .await
        .context("undo the upgrade")?;
    info!(pgdata = %layout.pgdata.display(), "the old cluster is back as it was in PGDATA");
    Ok(())
}

async fn finish_swap(s: &Settings, layout: &Layout, m: Marker) -> Result<()> {
    let owner = s.run_as.as_ref().map(|u| u.owner());
    let pause = s.upgrade.pause_at == Some(PausePoint::SwapIn);
    blocking(layout.clone(), move |l| {
        if m.phase == Phase::SwapOut {
            swap::move_out(&l)?;
            state::write(
                &l,
                &Marker {
                    phase: Phase::SwapIn,
                    ..m
                },
                owner,
            )?;
        }
        swap::move_in(&l, &|| {
            if pause {
                pause_here(PausePoint::SwapIn)
            }
        })?;
        state::write(
            &l,
            &Marker {
                phase: Phase::Ready,
                ..m
            },
            owner,
        )
    })
    .await
    .context("move the upgraded cluster into PGDATA")?;
    info!(from = m.from, to = m.to, pgdata = %layout.pgdata.display(), "PGDATA holds the upgraded cluster");
    Ok(())
}

/// Test only (`PGWARDEN_TEST_PAUSE_UPGRADE_AT`): stops here until killed.
fn pause_here(at: PausePoint) -> ! {
    warn!(point = ?at, "upgrade paused for a test; waiting to be killed");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

async fn upgrade(s: &Settings, runner: &Runner, from: u32, to: u32) -> Result<()> {
    let Some(old_bindir) = s.upgrade.resolved_old_bindir.clone() else {
        bail!("PGWARDEN_OLD_BINDIR: the PostgreSQL {from} binaries were not found");
    };
    let layout = state::choose_for(&s.pgdata);
    let owner = s.run_as.as_ref().map(|u| u.owner());
    crate::fsutil::ensure_dir(&layout.work, 0o700, owner).with_context(|| {
        format!(
            "create the upgrade's work directory {}",
            layout.work.display()
        )
    })?;
    if let Some(parent) = layout.work.parent() {
        crate::fsutil::fsync_dir(parent)?;
    }
    let mode = match s.upgrade.mode {
        Mode::Auto if same_file_system(&layout.work, &s.pgdata) => Mode::Link,
        Mode::Auto => Mode::Copy,
        m => m,
    };
    let marker = Marker {
        phase: Phase::Prepare,
        from,
        to,
        mode,
    };
    state::write(&layout, &marker, owner).context("write the upgrade's marker")?;
    info!(from, to, mode = mode.as_str(), pgdata = %s.pgdata.display(), work = %layout.work.display(), "upgrading PGDATA with pg_upgrade");
    let started = std::time::Instant::now();
    if let Err(e) = prepare(s, runner, &old_bindir, &layout, mode).await {
        error!(
            error = format!("{e:#}"),
            "the upgrade failed; putting the old cluster back"
        );
        if let Err(undo) = roll_back(s, &layout).await {
            error!(
                error = format!("{undo:#}"),
                "the upgrade could not be undone; the next start tries again"
            );
        }
        return Err(e.context(format!(
            "upgrade of PGDATA from PostgreSQL {from} to {to} failed; PGDATA holds the PostgreSQL {from} cluster as before. \
             Fix the cause and start again, or go back: the PostgreSQL {from} binaries (PGWARDEN_PG_BINDIR) with PGWARDEN_UPGRADE=off"
        )));
    }
    if s.upgrade.pause_at == Some(PausePoint::Upgraded) {
        tokio::task::spawn_blocking(|| pause_here(PausePoint::Upgraded)).await?;
    }
    state::write(
        &layout,
        &Marker {
            phase: Phase::SwapOut,
            ..marker
        },
        owner,
    )?;
    finish_swap(
        s,
        &layout,
        Marker {
            phase: Phase::SwapOut,
            ..marker
        },
    )
    .await?;
    info!(
        from,
        to,
        seconds = started.elapsed().as_secs(),
        "pg_upgrade done; the new cluster starts next"
    );
    Ok(())
}

fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Phase `prepare`: everything up to a finished pg_upgrade and a new cluster ready to
/// be moved in. PGDATA keeps the old cluster throughout.
async fn prepare(
    s: &Settings,
    runner: &Runner,
    old_bindir: &Path,
    layout: &Layout,
    mode: Mode,
) -> Result<()> {
    let pgdata = &s.pgdata;
    if std::fs::symlink_metadata(pgdata.join("pg_wal"))?
        .file_type()
        .is_symlink()
    {
        bail!(
            "{}/pg_wal is a link to a WAL directory outside PGDATA (POSTGRES_INITDB_WALDIR); \
             pgwarden does not upgrade such a cluster: run pg_upgrade by hand",
            pgdata.display()
        );
    }
    for signal in [
        crate::replica::STANDBY_SIGNAL,
        crate::settings::restore::RECOVERY_SIGNAL,
    ] {
        if pgdata.join(signal).exists() {
            bail!(
                "PGDATA holds a standby or a cluster in recovery ({signal}); only a primary is upgraded \
                 (a replica is cloned again from its upgraded primary)"
            );
        }
    }
    let mut old = crate::replica::controldata::read_with(s, runner, old_bindir, pgdata)
        .await
        .context("read the old cluster's control file")?;
    match old.state.as_str() {
        "shut down" => {}
        "shut down in recovery" | "in archive recovery" => bail!(
            "the old cluster was last running as a standby ({}); only a primary is upgraded",
            old.state
        ),
        other => {
            tool::recover_old(s, runner, old_bindir, pgdata, other).await?;
            old = crate::replica::controldata::read_with(s, runner, old_bindir, pgdata).await?;
        }
    }
    tool::initdb(s, runner, layout, &old).await?;
    tool::pg_upgrade(s, runner, old_bindir, layout, mode, true).await?;
    tool::pg_upgrade(s, runner, old_bindir, layout, mode, false).await?;
    carry_over(s, layout, &old).await?;
    tool::check_config(s, runner, &layout.new_cluster()).await
}

/// Gives the new cluster what of the old PGDATA is not PostgreSQL's own data: its
/// configuration files (postgresql.auto.conf, the base and adopted ones, pgwarden's
/// notes, files the user keeps there such as certificates), with pgwarden's files
/// rendered for the new binaries on top; and the record of the upgrade.
async fn carry_over(
    s: &Settings,
    layout: &Layout,
    old: &crate::replica::controldata::ControlData,
) -> Result<()> {
    /// The old cluster's own state, or notes about its archive: never carried.
    const NOT_CARRIED: &[&str] = &[
        "PG_VERSION",
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "tablespace_map.old",
        "current_logfiles",
        crate::replica::STANDBY_SIGNAL,
        crate::settings::restore::RECOVERY_SIGNAL,
        crate::wal::identity::CHECKED_NOTE,
        state::RECORD,
    ];
    let new = layout.new_cluster();
    for entry in std::fs::read_dir(&s.pgdata)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || NOT_CARRIED.iter().any(|n| name == *n) {
            continue;
        }
        swap::copy_file(&entry.path(), &new.join(&name))
            .with_context(|| format!("carry {} over", name.to_string_lossy()))?;
    }
    let rendered = crate::pgconf::render(s, &s.pgdata, &crate::pgconf::tuning::detect())?;
    crate::pgconf::write(&rendered, &new, s.run_as.as_ref().map(|u| u.owner()))
        .context("write the configuration into the new cluster")?;
    let record = format!(
        "# pgwarden: this cluster was upgraded with pg_upgrade; it archives under its own server name\n\
         from={}\nto={}\nold_system_identifier={}\nupgraded_at={}\n",
        old_major(&s.pgdata).unwrap_or_default(),
        s.major_version,
        old.system_id,
        crate::civil::rfc3339(std::time::SystemTime::now())
    );
    crate::fsutil::write_atomic(
        &new.join(state::RECORD),
        record.as_bytes(),
        s.run_as.as_ref().map(|u| u.owner()),
        0o600,
    )?;
    Ok(())
}

fn old_major(pgdata: &Path) -> Option<u32> {
    crate::pgdata::inspect(pgdata).ok()?.version()
}

/// A replica whose copy is of the old major: once the primary runs the new major, the
/// copy is given up and the bootstrap clones the primary again.
async fn reclone(s: &Settings, runner: &Runner, from: u32, to: u32) -> Result<()> {
    loop {
        match crate::replica::remote::server_major(s, runner).await {
            Ok(major) if major == to => break,
            Ok(major) => warn!(
                primary_major = major,
                "this replica's PGDATA is PostgreSQL {from} and the binaries are {to}: waiting for the primary to be upgraded to {to} before cloning it again"
            ),
            Err(e) => warn!(error = format!("{e:#}"), "cannot ask the primary which major it runs; trying again"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
    warn!(pgdata = %s.pgdata.display(), "the primary runs PostgreSQL {to}: giving up this replica's PostgreSQL {from} copy to clone it again");
    crate::bootstrap::discard(&s.pgdata)
}

/// Records that the upgraded cluster is about to start for the first time: from now
/// on, in link mode, the old cluster can no longer be started. Nothing to do when no
/// upgrade is under way or it is past that point.
pub fn mark_started(s: &Settings) -> Result<()> {
    let (Some(layout), Work::Marked(m)) = find(&s.pgdata)? else {
        return Ok(());
    };
    if m.phase == Phase::Ready {
        state::write(
            &layout,
            &Marker {
                phase: Phase::Started,
                ..m
            },
            s.run_as.as_ref().map(|u| u.owner()),
        )?;
    }
    Ok(())
}
