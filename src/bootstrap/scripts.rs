//! `/docker-entrypoint-initdb.d`: `*.sql`, `*.sql.gz` and `*.sh`, run once, in name
//! order, after initdb, as in the official image.

use crate::process::{run_as, Runner};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use tracing::{info, warn};

/// Runs every init script against the temporary server serving `staging`.
pub async fn run_all(s: &Settings, runner: &Runner, staging: &Path) -> Result<()> {
    let dir = &s.initdb_dir;
    let mut paths: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("PGWARDEN_INITDB_DIR: read {}", dir.display()))
        }
    };
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut cmd, input) = if name.ends_with(".sh") {
            (shell_command(&path), None)
        } else if name.ends_with(".sql") {
            let sql = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            (psql(s), Some(sql))
        } else if name.ends_with(".sql.gz") {
            let mut sql = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path)?)
                .read_to_end(&mut sql)
                .with_context(|| format!("decompress {}", path.display()))?;
            (psql(s), Some(sql))
        } else {
            warn!(script = %name, "ignoring a file that is not *.sql, *.sql.gz or *.sh");
            continue;
        };
        cmd.env("PGHOST", &s.socket_dir)
            .env("PGPORT", s.port.to_string())
            .env("PGUSER", &s.superuser)
            .env("PGDATABASE", &s.database)
            .env("PGDATA", staging);
        run_as(&mut cmd, s.run_as.as_ref());
        info!(script = %name, "running init script");
        let out = runner.output(&mut cmd, input).await?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            info!(script = %name, "{line}");
        }
        if !out.status.success() {
            bail!(
                "init script {name} failed ({}): {}",
                out.status,
                out.stderr_text()
            );
        }
    }
    Ok(())
}

fn psql(s: &Settings) -> Command {
    let mut cmd = Command::new(s.bin("psql"));
    cmd.args([
        "-v",
        "ON_ERROR_STOP=1",
        "--no-psqlrc",
        "--no-password",
        "-q",
        "-f",
        "-",
    ]);
    cmd
}

/// An executable script runs itself; another is read by the shell, like the official
/// image's `source`.
fn shell_command(path: &Path) -> Command {
    let executable = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if executable {
        Command::new(path)
    } else {
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut cmd = Command::new(shell);
        cmd.arg(path);
        cmd
    }
}
