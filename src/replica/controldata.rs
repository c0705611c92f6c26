//! What `pg_controldata` says about a data directory.

use crate::process::{run_as, Runner};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// The few control-file facts pgwarden decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// "Database cluster state", for example `shut down` or `shut down in recovery`.
    pub state: String,
    /// "Database system identifier".
    pub system_id: String,
    /// The newest timeline the control file mentions.
    pub timeline: u32,
    /// "Data page checksum version" is not 0.
    pub checksums: bool,
    /// "Bytes per WAL segment".
    pub wal_segment_size: Option<u64>,
}

impl ControlData {
    /// The cluster was last running as a standby (or was rewound, which leaves it in
    /// archive recovery): it must come back as one.
    pub fn was_standby(&self) -> bool {
        matches!(
            self.state.as_str(),
            "shut down in recovery" | "in archive recovery"
        )
    }
}

/// Runs pg_controldata on `data_dir`.
pub async fn read(s: &Settings, runner: &Runner, data_dir: &Path) -> Result<ControlData> {
    parse(&run(s, runner, data_dir).await?).context("pg_controldata printed something unexpected")
}

/// Runs the pg_controldata of `bindir` (another major's, for a cluster of that major)
/// on `data_dir`.
pub async fn read_with(
    s: &Settings,
    runner: &Runner,
    bindir: &Path,
    data_dir: &Path,
) -> Result<ControlData> {
    parse(&run_from(s, runner, bindir, data_dir).await?)
        .context("pg_controldata printed something unexpected")
}

/// pg_controldata's output for `data_dir`, in the C locale.
async fn run(s: &Settings, runner: &Runner, data_dir: &Path) -> Result<String> {
    run_from(s, runner, &s.bindir, data_dir).await
}

async fn run_from(s: &Settings, runner: &Runner, bindir: &Path, data_dir: &Path) -> Result<String> {
    let mut cmd = Command::new(bindir.join("pg_controldata"));
    cmd.arg(data_dir).env("LC_ALL", "C");
    run_as(&mut cmd, s.run_as.as_ref());
    let out = runner.output(&mut cmd, None).await?;
    if !out.status.success() {
        bail!(
            "pg_controldata {} failed ({}): {}",
            data_dir.display(),
            out.status,
            out.stderr_text()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The parameters a standby must run with at least the primary's values of, as
/// pg_controldata names them and as postgresql.conf does.
const HOT_STANDBY_PARAMETERS: &[(&str, &str)] = &[
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
];

/// The values of the parameters recovery of `data_dir` needs at least.
pub async fn hot_standby_floor(
    s: &Settings,
    runner: &Runner,
    data_dir: &Path,
) -> Result<Vec<(String, i64)>> {
    Ok(parse_floor(&run(s, runner, data_dir).await?))
}

fn parse_floor(text: &str) -> Vec<(String, i64)> {
    HOT_STANDBY_PARAMETERS
        .iter()
        .filter_map(|(label, guc)| {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(label)?.strip_prefix(':'))?;
            Some((guc.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn parse(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
    };
    let checkpoint_tli: u32 = field("Latest checkpoint's TimeLineID")?.parse().ok()?;
    let min_recovery_tli: u32 = field("Min recovery ending loc's timeline")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ControlData {
        state: field("Database cluster state")?,
        system_id: field("Database system identifier")?,
        timeline: checkpoint_tli.max(min_recovery_tli),
        checksums: field("Data page checksum version").is_some_and(|v| v != "0"),
        wal_segment_size: field("Bytes per WAL segment").and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hot_standby_parameters() {
        let text = "max_connections setting:              100\nmax_worker_processes setting:         8\n\
                    max_wal_senders setting:              10\nmax_prepared_xacts setting:           0\n\
                    max_locks_per_xact setting:           64\nwal_level setting:                    replica\n";
        let floor = parse_floor(text);
        assert_eq!(
            floor,
            [
                ("max_connections", 100),
                ("max_worker_processes", 8),
                ("max_wal_senders", 10),
                ("max_prepared_transactions", 0),
                ("max_locks_per_transaction", 64)
            ]
            .map(|(k, v)| (k.to_owned(), v))
        );
    }

    #[test]
    fn parses_pg_controldata() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7312345678901234567\n\
                    Database cluster state:               shut down in recovery\nLatest checkpoint's TimeLineID:       1\n\
                    Min recovery ending loc's timeline:   2\nBytes per WAL segment:                16777216\n\
                    Data page checksum version:           1\n";
        let c = parse(text).unwrap();
        assert!(c.checksums);
        assert_eq!(c.wal_segment_size, Some(16 << 20));
        assert_eq!(c.system_id, "7312345678901234567");
        assert_eq!(c.timeline, 2);
        assert!(c.was_standby());
        assert!(parse("nothing").is_none());
    }
}
