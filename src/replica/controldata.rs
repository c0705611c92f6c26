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
    let mut cmd = Command::new(s.bin("pg_controldata"));
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
    parse(&String::from_utf8_lossy(&out.stdout))
        .context("pg_controldata printed something unexpected")
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_controldata() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7312345678901234567\n\
                    Database cluster state:               shut down in recovery\nLatest checkpoint's TimeLineID:       1\n\
                    Min recovery ending loc's timeline:   2\n";
        let c = parse(text).unwrap();
        assert_eq!(c.system_id, "7312345678901234567");
        assert_eq!(c.timeline, 2);
        assert!(c.was_standby());
        assert!(parse("nothing").is_none());
    }
}
