//! Filling an empty PGDATA, atomically.
//!
//! A bootstrap builds the cluster in `PGDATA/.pgwarden-staging` and, once it is complete
//! (initdb, password, database and init scripts all done), moves the entries up into
//! PGDATA with `PG_VERSION` last. `PG_VERSION` at the top is the commit mark: until it
//! is there, a later start sees an interrupted bootstrap and redoes it from clean. The
//! staging directory lives inside PGDATA so that this also works when PGDATA is itself
//! a mount point, where a rename of the directory is impossible. A PGDATA that holds a
//! cluster, or anything pgwarden did not put there, is never removed.

mod basebackup;
mod initdb;
pub mod restore;
mod scripts;

use crate::fsutil;
use crate::pgdata::{self, DataDirState};
use crate::process::Runner;
use crate::progress::Restoring;
use crate::settings::{Role, Settings};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tracing::{info, warn};

/// Creates the socket directory, where the control socket and the passfile live too.
///
/// Started as a user that does not own an existing socket directory (OpenShift's
/// arbitrary UID, with the official image's `/var/run/postgresql`, mode 3777), pgwarden
/// uses it as it is: it may not chmod it, and needs only to create its files there.
pub fn ensure_socket_dir(s: &Settings) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        if let Ok(meta) = std::fs::metadata(&s.socket_dir) {
            if meta.is_dir() && meta.uid() != me.as_raw() {
                nix::unistd::access(
                    &s.socket_dir,
                    nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
                )
                .with_context(|| {
                    format!(
                        "PGWARDEN_SOCKET_DIR: {} belongs to another user and is not writable by user id {me}",
                        s.socket_dir.display()
                    )
                })?;
                info!(socket_dir = %s.socket_dir.display(), mode = format!("{:o}", meta.mode() & 0o7777), "using a socket directory of another user as it is");
                return Ok(());
            }
        }
    }
    let owner = s.run_as.as_ref().map(|u| u.owner());
    fsutil::ensure_dir(&s.socket_dir, 0o700, owner).context("PGWARDEN_SOCKET_DIR")
}

/// Makes PGDATA hold a complete cluster: bootstraps it when needed, otherwise fixes its
/// ownership and mode. A restore from an archive shows its progress in `restoring`.
pub async fn ensure(s: &Settings, runner: &Runner, restoring: &Restoring) -> Result<()> {
    // An older major is upgraded (or an interrupted upgrade finished or undone) first:
    // what follows sees a cluster of the binaries' major, or none.
    crate::upgrade::ensure(s, runner).await?;
    let state = pgdata::inspect(&s.pgdata).context("PGDATA")?;
    match state {
        DataDirState::Initialized { version } => {
            info!(pgdata = %s.pgdata.display(), version, "using the existing data directory");
            fix_ownership(s)?;
            remove_leftover_staging(&s.pgdata)?;
            Ok(())
        }
        DataDirState::Missing | DataDirState::Empty => bootstrap(s, runner, restoring).await,
        DataDirState::InterruptedBootstrap => {
            warn!(pgdata = %s.pgdata.display(), "an earlier bootstrap was interrupted; starting it again from clean");
            clean_interrupted(&s.pgdata, s.major_version, seeds_from_archive(s))?;
            bootstrap(s, runner, restoring).await
        }
        DataDirState::Foreign(entries) => bail!(
            "PGDATA: {} is not empty and is not a PostgreSQL data directory (it holds {}); pgwarden will not touch it",
            s.pgdata.display(),
            entries.join(", ")
        ),
    }
}

async fn bootstrap(s: &Settings, runner: &Runner, restoring: &Restoring) -> Result<()> {
    use crate::settings::restore::Then;
    // A restore is planned and checked (backup, version, WAL) before PGDATA is created.
    let restore = match (&s.restore, s.role) {
        (Some(r), Role::Primary) => Some(restore::plan(s, r, Then::Promote, &s.pgdata).await?),
        (Some(r), Role::Replica) if s.follows_archive() => {
            Some(restore::plan(s, r, Then::FollowArchive, &s.pgdata).await?)
        }
        _ => None,
    };
    let owner = s.run_as.as_ref().map(|u| u.owner());
    fsutil::ensure_dir(&s.pgdata, 0o700, owner).context("PGDATA")?;
    let staging = pgdata::staging_dir(&s.pgdata);
    match (restore, s.role) {
        (Some(plan), _) => {
            let _shown = restoring.show(&plan.backup().backup_id, plan.progress());
            restore::build(s, plan, runner, &staging).await?
        }
        (None, Role::Primary) => initdb::build(s, runner, &staging).await?,
        (None, Role::Replica) => clone(s, runner, &staging, restoring).await?,
    }
    // A new data directory, whatever it was copied from (see pgdata::INCARNATION).
    pgdata::new_incarnation(&staging, owner).context("PGDATA: write its incarnation")?;
    commit(&staging, &s.pgdata)?;
    info!(pgdata = %s.pgdata.display(), "bootstrap complete");
    Ok(())
}

/// A new replica: from the cluster's own archive with `PGWARDEN_CLONE_FROM=archive`
/// when it holds a usable backup, else (and always by default) pg_basebackup from the
/// primary. The archive spares the primary the copy (CloudNativePG issue 10429); it is
/// an optimisation, so any reason it cannot serve falls back to the primary, logged.
async fn clone(s: &Settings, runner: &Runner, staging: &Path, restoring: &Restoring) -> Result<()> {
    use crate::settings::restore::CloneFrom;
    if s.clone_from == CloneFrom::Archive {
        // The backup must be of the primary's cluster: it is asked, once it answers.
        basebackup::wait_for_primary(s, runner).await;
        match seed(s, runner, staging, restoring).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                warn!(reason = format!("{e:#}"), "PGWARDEN_CLONE_FROM=archive: the archive cannot seed this replica; cloning the primary with pg_basebackup instead");
                if staging.exists() {
                    std::fs::remove_dir_all(staging)
                        .with_context(|| format!("remove {}", staging.display()))?;
                }
            }
        }
    }
    basebackup::build(s, runner, staging).await
}

/// Seeds a standby from the latest backup in the cluster's own archive; postgres then
/// replays the archived WAL (restore_command) and streams from the primary.
async fn seed(s: &Settings, runner: &Runner, staging: &Path, restoring: &Restoring) -> Result<()> {
    let mut plan = restore::plan_seed(s, runner).await?;
    // What a discarded cluster left in staging (see clean_interrupted): kept where it
    // matches the backup, a delta restore.
    plan.allow_delta();
    let backup_id = plan.backup().backup_id.clone();
    info!(backup_id = %backup_id, "seeding this replica from the archive's latest backup instead of pg_basebackup");
    let _shown = restoring.show(&backup_id, plan.progress());
    restore::build(s, plan, runner, staging).await?;
    info!(backup_id = %backup_id, "replica seeded from the archive: it replays the archived WAL, then streams from the primary");
    Ok(())
}

/// Gives up the cluster in PGDATA so that a bootstrap rebuilds it (a replica whose
/// rewind failed, `pgwarden reinit`). Crash-safe: the staging directory is made first,
/// then `PG_VERSION` is removed; from that moment PGDATA reads as an interrupted
/// bootstrap, which the next [`ensure`] (now, or at the next start) clears and redoes.
/// postgres must not be running.
pub fn discard(pgdata: &Path) -> Result<()> {
    let staging = pgdata::staging_dir(pgdata);
    std::fs::create_dir_all(&staging).with_context(|| format!("create {}", staging.display()))?;
    fsutil::fsync_dir(pgdata)?;
    fsutil::remove_if_present(&pgdata.join("PG_VERSION")).context("remove PG_VERSION")?;
    fsutil::fsync_dir(pgdata)?;
    warn!(pgdata = %pgdata.display(), "the cluster in PGDATA is discarded; it is rebuilt from empty");
    Ok(())
}

/// Moves the staged cluster into PGDATA, `PG_VERSION` last, then removes the staging dir.
fn commit(staging: &Path, pgdata: &Path) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(staging)
        .with_context(|| format!("read {}", staging.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    // PG_VERSION sorts last, whatever the other names are.
    names.sort_by_key(|n| (n == "PG_VERSION", n.clone()));
    for name in &names {
        if name == "PG_VERSION" {
            // Everything before the commit mark must be durable first.
            fsutil::fsync_dir(pgdata)?;
        }
        std::fs::rename(staging.join(name), pgdata.join(name)).with_context(|| {
            format!("move {} into {}", name.to_string_lossy(), pgdata.display())
        })?;
    }
    fsutil::fsync_dir(pgdata)?;
    std::fs::remove_dir(staging).with_context(|| format!("remove {}", staging.display()))?;
    fsutil::fsync_dir(pgdata)?;
    Ok(())
}

/// Whether a bootstrap of this member seeds it from the archive's latest backup
/// (`PGWARDEN_CLONE_FROM=archive`, a replica that does not restore a backup of its
/// own): then a discarded cluster still in PGDATA is worth a delta restore.
fn seeds_from_archive(s: &Settings) -> bool {
    s.role == Role::Replica
        && s.clone_from == crate::settings::restore::CloneFrom::Archive
        && !(s.restore.is_some() && s.follows_archive())
}

/// Removes what an interrupted bootstrap left: PGDATA was empty when it began, so
/// everything but `lost+found` is ours. With `keep_cluster`, a cluster discarded
/// whole (its `global/pg_control` still in PGDATA: `pgwarden reinit`, a failed
/// rewind) moves into the staging directory instead, for the seed's delta restore
/// ([`restore::delta`]), `global` last: a move cut short leaves that, and the next
/// attempt starts it again.
fn clean_interrupted(pgdata: &Path, major: u32, keep_cluster: bool) -> Result<()> {
    let staging = pgdata::staging_dir(pgdata);
    stop_stale_postmaster(&staging);
    clean_interrupted_waldir(&staging)?;
    restore::tablespaces::empty_interrupted(&staging, major)?;
    if keep_cluster && pgdata.join("global/pg_control").is_file() {
        if staging.exists() {
            fsutil::remove_entry(&staging)
                .with_context(|| format!("remove {}", staging.display()))?;
        }
        std::fs::create_dir(&staging).with_context(|| format!("create {}", staging.display()))?;
        let mut names: Vec<_> = std::fs::read_dir(pgdata)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.retain(|n| n != "lost+found" && n.as_os_str() != pgdata::STAGING_DIR);
        names.sort_by_key(|n| (n == "global", n.clone()));
        for name in &names {
            std::fs::rename(pgdata.join(name), staging.join(name)).with_context(|| {
                format!("move {} into {}", name.to_string_lossy(), staging.display())
            })?;
        }
        fsutil::fsync_dir(pgdata)?;
        info!(pgdata = %pgdata.display(), "the discarded cluster is kept aside for a delta restore from the archive");
        return Ok(());
    }
    for entry in std::fs::read_dir(pgdata)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "lost+found" {
            continue;
        }
        let path = entry.path();
        fsutil::remove_entry(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    fsutil::fsync_dir(pgdata)?;
    Ok(())
}

/// With POSTGRES_INITDB_WALDIR, the interrupted initdb filled a directory outside
/// PGDATA that a new initdb refuses to reuse. initdb only writes into an empty or new
/// waldir, so what is in it is that bootstrap's.
fn clean_interrupted_waldir(staging: &Path) -> Result<()> {
    let Ok(target) = std::fs::read_link(staging.join("pg_wal")) else {
        return Ok(());
    };
    warn!(waldir = %target.display(), "emptying the WAL directory of the interrupted bootstrap");
    for entry in std::fs::read_dir(&target).with_context(|| format!("read {}", target.display()))? {
        let path = entry?.path();
        fsutil::remove_entry(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

fn remove_leftover_staging(pgdata: &Path) -> Result<()> {
    let staging = pgdata::staging_dir(pgdata);
    if staging.exists() {
        warn!(path = %staging.display(), "removing a staging directory left by an earlier bootstrap");
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("remove {}", staging.display()))?;
    }
    Ok(())
}

/// A bootstrap's temporary server (or one pg_upgrade started, or a restore drill's)
/// outlives a pgwarden killed with SIGKILL when pgwarden is not PID 1 (in a container
/// the kernel ends it with PID 1). Stop it before its directory is removed or changed,
/// but only if it really is a postgres serving that directory.
pub(crate) fn stop_stale_postmaster(staging: &Path) {
    let Some(pm) = pgdata::read_postmaster_pid(staging) else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pm.pid)).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !(cmdline.contains("postgres") && cmdline.contains(&*staging.to_string_lossy())) {
        return;
    }
    warn!(
        pid = pm.pid,
        "stopping the temporary server of an interrupted bootstrap"
    );
    let pid = nix::unistd::Pid::from_raw(pm.pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Gives PGDATA to the run-as user when it was written by another UID (a volume
/// populated elsewhere). Walking a large PGDATA is slow, so only when the top is wrong.
fn fix_ownership(s: &Settings) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(user) = &s.run_as else { return Ok(()) };
    let meta = std::fs::metadata(&s.pgdata)?;
    if meta.uid() != user.uid {
        warn!(pgdata = %s.pgdata.display(), user = %user.name, "PGDATA belongs to another user; giving it to the run-as user");
        fsutil::chown_tree(&s.pgdata, user.owner()).context("PGDATA")?;
    }
    fsutil::ensure_dir(&s.pgdata, 0o700, Some(user.owner())).context("PGDATA")?;
    Ok(())
}
