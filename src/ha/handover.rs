//! The leader's side of a switchover, the parts that are not decisions: waiting for
//! the supervisor to have stopped postgres, and reading where the shutdown checkpoint
//! is, the position the candidate must have received before the key is released.

use crate::process::{run_as, Runner};
use crate::settings::Settings;
use crate::state::{State, SupervisorStatus};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Duration;
use tokio::sync::watch;

/// Waits until postgres is down and held down (fenced), at most `within`; true when it is.
pub async fn wait_stopped(status: &watch::Receiver<SupervisorStatus>, within: Duration) -> bool {
    let mut status = status.clone();
    let stopped = tokio::time::timeout(
        within,
        status.wait_for(|s| s.state == State::Fenced && s.pid.is_none()),
    )
    .await;
    let done = matches!(stopped, Ok(Ok(_)));
    done
}

/// The position just past the shutdown checkpoint of a cleanly stopped PGDATA: a
/// standby that received WAL beyond it has everything the primary ever wrote.
pub async fn shutdown_checkpoint(s: &Settings, runner: &Runner) -> Result<u64> {
    let mut cmd = Command::new(s.bin("pg_controldata"));
    cmd.arg(&s.pgdata).env("LC_ALL", "C");
    run_as(&mut cmd, s.run_as.as_ref());
    let out = runner
        .output(&mut cmd, None)
        .await
        .context("run pg_controldata")?;
    if !out.status.success() {
        bail!(
            "pg_controldata failed ({}): {}",
            out.status,
            out.stderr_text()
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(text: &str) -> Result<u64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let state = field("Database cluster state:").context("no cluster state")?;
    if state != "shut down" {
        bail!("postgres did not shut down cleanly (cluster state {state:?})");
    }
    let location = field("Latest checkpoint location:").context("no checkpoint location")?;
    let (hi, lo) = location
        .split_once('/')
        .with_context(|| format!("unreadable checkpoint location {location:?}"))?;
    let pos = (u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?;
    // The location is where the checkpoint record starts; it ends a little further.
    Ok(pos + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shutdown_checkpoint() {
        let text = "Database cluster state:               shut down\n\
                    Latest checkpoint location:           1/3000028\n";
        assert_eq!(parse(text).unwrap(), 0x1_0300_0029);
        let crashed = text.replace("shut down", "in production");
        assert!(parse(&crashed).is_err());
    }
}
