//! Running PostgreSQL's programs for an upgrade: the old cluster's crash recovery,
//! initdb for the new cluster, pg_upgrade, and the checks of the new configuration.
//! Each runs as the run-as user; a failure says which program failed and how.

use super::config::Mode;
use super::state::Layout;
use crate::process::{run_as, Runner};
use crate::replica::controldata::ControlData;
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use tracing::info;

/// libpq's variables, which would send pg_upgrade's connections elsewhere
/// (pg_upgrade refuses a non-local PGHOST outright).
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGDATA",
];

/// A command for one of PostgreSQL's programs, run as the run-as user, with libpq's
/// variables removed.
pub(super) fn command(s: &Settings, program: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.env("LC_ALL", "C");
    run_as(&mut cmd, s.run_as.as_ref());
    cmd
}

/// Brings an old cluster that was not shut down cleanly (pgwarden or the machine
/// killed) to a clean shutdown, which pg_upgrade needs: single-user mode replays the
/// WAL and writes a shutdown checkpoint when its input ends. Archiving is off for it:
/// the segments the old cluster had not archived stay in its pg_wal, kept with it.
pub async fn recover_old(
    s: &Settings,
    runner: &Runner,
    old_bindir: &Path,
    pgdata: &Path,
    state: &str,
) -> Result<()> {
    info!(
        state,
        "the old cluster was not shut down cleanly; replaying its WAL in single-user mode first"
    );
    let mut cmd = command(s, old_bindir.join("postgres"));
    cmd.arg("--single")
        .arg("-D")
        .arg(pgdata)
        .args(["-c", "archive_mode=off", "-c", "listen_addresses="])
        .arg("template1");
    let out = runner.output(&mut cmd, Some(Vec::new())).await?;
    if !out.status.success() {
        bail!(
            "the old cluster was not shut down cleanly ({state}) and its crash recovery in single-user mode failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 15)
        );
    }
    Ok(())
}

/// initdb for the new cluster in `layout`'s `new`, with what pg_upgrade requires to be
/// the same as the old cluster: the install user, data checksums and the WAL segment
/// size. Locale and encoding need not match: pg_upgrade 16 and later copy them.
pub async fn initdb(
    s: &Settings,
    runner: &Runner,
    layout: &Layout,
    old: &ControlData,
) -> Result<()> {
    let mut cmd = command(s, s.bin("initdb"));
    cmd.arg("--pgdata")
        .arg(layout.new_cluster())
        .arg("--username")
        .arg(&s.superuser)
        // pg_upgrade's servers listen on a socket in a private directory only; the
        // carried pg_hba.conf replaces this before the cluster ever runs for real.
        .arg("--auth=trust")
        .arg("--encoding=UTF8");
    if old.checksums {
        cmd.arg("--data-checksums");
    } else if s.major_version >= 18 {
        cmd.arg("--no-data-checksums");
    }
    if let Some(bytes) = old.wal_segment_size {
        cmd.arg(format!("--wal-segsize={}", bytes >> 20));
    }
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!(
            "initdb of the new cluster failed ({}): {}",
            out.status,
            out.stderr_text()
        );
    }
    Ok(())
}

/// Options of the old server pg_upgrade starts (one argument: pg_upgrade hands it to
/// pg_ctl's `-o`).
const OLD_SERVER_OPTIONS: &str = "-c archive_mode=off";

/// Runs pg_upgrade (`--check` only, or the upgrade) from `layout.work`, where it writes
/// its scripts. It starts the old cluster with archiving off: nothing it does there
/// needs archiving, and an archive that is down would stall its shutdown.
pub async fn pg_upgrade(
    s: &Settings,
    runner: &Runner,
    old_bindir: &Path,
    layout: &Layout,
    mode: Mode,
    check: bool,
) -> Result<()> {
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut cmd = command(s, s.bin("pg_upgrade"));
    cmd.current_dir(&layout.work)
        .arg("--old-bindir")
        .arg(old_bindir)
        .arg("--new-bindir")
        .arg(&s.bindir)
        .arg("--old-datadir")
        .arg(&layout.pgdata)
        .arg("--new-datadir")
        .arg(layout.new_cluster())
        .arg("--username")
        .arg(&s.superuser)
        .arg("--socketdir")
        .arg(&s.socket_dir)
        .arg("--old-port")
        .arg(s.port.to_string())
        .arg("--new-port")
        .arg(s.port.to_string())
        .arg("--old-options")
        .arg(OLD_SERVER_OPTIONS)
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--{}", mode.as_str()));
    if check {
        cmd.arg("--check");
    }
    let what = if check {
        "pg_upgrade --check"
    } else {
        "pg_upgrade"
    };
    info!(mode = mode.as_str(), jobs, "running {what}");
    let out = runner.output(&mut cmd, None).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            explain(&stdout, &String::from_utf8_lossy(&out.stderr))
        );
    }
    tracing::debug!(output = %stdout, "{what} succeeded");
    Ok(())
}

/// What to show of a failed pg_upgrade: the end of its output, and the end of each
/// report or log file that output names (the list of missing libraries, the server
/// log), read now because the new cluster's directory that holds them is removed
/// when the upgrade is undone.
pub fn explain(stdout: &str, stderr: &str) -> String {
    let mut text = tail(&format!("{stdout}\n{stderr}"), 25);
    let mut seen = Vec::new();
    for word in text.clone().split_whitespace() {
        let path = word.trim_matches(|c: char| c == '"' || c == '\'' || c == ',' || c == ':');
        let p = Path::new(path);
        if p.is_absolute()
            && (path.ends_with(".txt") || path.ends_with(".log"))
            && !seen.contains(&path.to_owned())
        {
            if let Ok(content) = std::fs::read_to_string(p) {
                seen.push(path.to_owned());
                text.push_str(&format!("\n--- {path} ---\n{}", tail(&content, 20)));
            }
        }
    }
    text
}

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Asks the new postgres to read the new cluster's whole configuration (the carried
/// postgresql.auto.conf and base configuration among it), as it would at its first
/// start: a parameter this major no longer knows is found now, while the old cluster
/// can still be put back.
pub async fn check_config(s: &Settings, runner: &Runner, data_dir: &Path) -> Result<()> {
    let mut cmd = command(s, s.bin("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-C", "shared_preload_libraries"]);
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!(
            "PostgreSQL {} does not accept the cluster's configuration ({}): {}",
            s.major_version,
            out.status,
            out.stderr_text()
        );
    }
    let libraries = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    check_libraries(s, runner, &libraries).await
}

/// Every library of `shared_preload_libraries` must be in the new major's library
/// directory: postgres would refuse to start without it, after the point where the old
/// cluster can still be started.
async fn check_libraries(s: &Settings, runner: &Runner, list: &str) -> Result<()> {
    let names: Vec<String> = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let mut cmd = command(s, s.bin("pg_config"));
    cmd.arg("--pkglibdir");
    let out = runner
        .output(&mut cmd, None)
        .await
        .context("run pg_config --pkglibdir")?;
    let pkglibdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            let file = n.strip_prefix("$libdir/").unwrap_or(n);
            let p = if Path::new(file).is_absolute() {
                PathBuf::from(file)
            } else {
                pkglibdir.join(file)
            };
            !p.exists()
                && !p.with_extension("so").exists()
                && !pkglibdir.join(format!("{file}.so")).exists()
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "shared_preload_libraries names {} which PostgreSQL {} does not have in {}; install it for PostgreSQL {} first",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            s.major_version,
            pkglibdir.display(),
            s.major_version
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_with_the_files_pg_upgrade_names() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("loadable_libraries.txt");
        std::fs::write(
            &report,
            "could not load library \"$libdir/adminpack\"\nIn database: postgres\n",
        )
        .unwrap();
        let stdout = format!(
            "Checking for presence of required libraries                 fatal\n\n\
             Your installation references loadable libraries that are missing from the\n\
             new installation.  A list of problem libraries is in the file:\n    {}\n\nFailure, exiting\n",
            report.display()
        );
        let text = explain(&stdout, "");
        assert!(text.contains("Failure, exiting"), "{text}");
        assert!(text.contains("$libdir/adminpack"), "{text}");
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
    }
}
