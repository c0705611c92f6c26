//! `/docker-entrypoint-initdb.d`: `*.sql`, `*.sql.gz`, `*.sql.xz`, `*.sql.zst` and
//! `*.sh`, run once, in name order, after initdb, as in the official image.
//!
//! Scripts see what the official image gives them: `POSTGRES_USER`, `POSTGRES_DB`,
//! `POSTGRES_PASSWORD` (also when it came from `_FILE`), the libpq variables pointing at
//! the temporary server, which lets any role in over the socket (local trust, as in the
//! official image), and, for a `*.sh` that is sourced, `docker_process_sql`, `file_env`
//! and the `psql` array.

use crate::process::{run_as, Runner};
use crate::settings::Settings;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Lines of a failed script's stderr quoted in the error.
const STDERR_TAIL: usize = 20;

/// Defined before a non-executable `*.sh` is sourced: the helpers the official image's
/// entrypoint offers its sourced scripts, with the same names and meaning.
const SOURCED_PRELUDE: &str = r#"set -Eeo pipefail
# file_env VAR [DEFAULT]: VAR from itself or from the file named by VAR_FILE.
file_env() {
	local name="$1" file_name="${1}_FILE" value="${2:-}"
	if [ -n "${!name:-}" ] && [ -n "${!file_name:-}" ]; then
		echo >&2 "error: $name and $file_name are both set; use one"
		return 1
	fi
	if [ -n "${!name:-}" ]; then
		value="${!name}"
	elif [ -n "${!file_name:-}" ]; then
		value="$(< "${!file_name}")"
	fi
	export "$name"="$value"
	unset "$file_name"
}
# docker_process_sql [psql arguments]: SQL from stdin or -f, as the superuser, in POSTGRES_DB.
docker_process_sql() {
	local args=( -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc )
	[ -z "${POSTGRES_DB:-}" ] || args+=( --dbname "$POSTGRES_DB" )
	psql "${args[@]}" "$@"
}
psql=( docker_process_sql )
__pgwarden_script="$1"
shift
. "$__pgwarden_script"
"#;

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
        } else if let Some(codec) = Codec::of(&name) {
            let sql = codec
                .decompress(&path, runner)
                .await
                .with_context(|| format!("decompress {}", path.display()))?;
            (psql(s), Some(sql))
        } else {
            warn!(script = %name, "ignoring a file that is not *.sql, *.sql.gz, *.sql.xz, *.sql.zst or *.sh");
            continue;
        };
        script_env(&mut cmd, s, staging);
        run_as(&mut cmd, s.run_as.as_ref());
        info!(script = %name, "running init script");
        let (status, stderr) = match input {
            Some(sql) => {
                let out = runner.output(&mut cmd, Some(sql)).await?;
                log_lines(&name, &out.stdout);
                (out.status, out.stderr_text())
            }
            None => run_forwarding(runner, &mut cmd, &name).await?,
        };
        if !status.success() {
            bail!("init script {name} failed ({status}): {stderr}");
        }
    }
    Ok(())
}

/// What a script sees, as in the official image.
fn script_env(cmd: &mut Command, s: &Settings, staging: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![s.bindir.clone()];
    dirs.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(dirs) {
        cmd.env("PATH", joined);
    }
    cmd.env("PGHOST", &s.socket_dir)
        .env("PGPORT", s.port.to_string())
        .env("PGUSER", &s.superuser)
        .env("PGDATABASE", &s.database)
        .env("PGDATA", staging)
        .env("POSTGRES_USER", &s.superuser)
        .env("POSTGRES_DB", &s.database)
        .env_remove("POSTGRES_PASSWORD_FILE");
    // The official image exports both, also when the password came from a file.
    if let Some(pw) = &s.password {
        cmd.env("POSTGRES_PASSWORD", pw.expose())
            .env("PGPASSWORD", pw.expose());
    }
}

/// Runs a script with its output forwarded to the log line by line, and returns when
/// the script exits, whoever else still holds its output open: a background job it
/// left running must not hold up the bootstrap.
async fn run_forwarding(
    runner: &Runner,
    cmd: &mut Command,
    name: &str,
) -> Result<(crate::process::Exit, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = runner.spawn(cmd)?;
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done_tx, done_rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        forward(out, name.to_owned(), None, done_tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, name.to_owned(), Some(tail.clone()), done_tx);
    }
    let status = child.wait().await?;
    // What the script itself wrote is in the pipes already; give the readers a moment
    // to log it, but not the lifetime of a background job that inherited the pipes.
    tokio::task::spawn_blocking(move || {
        for _ in 0..2 {
            if done_rx.recv_timeout(Duration::from_millis(500)).is_err() {
                break;
            }
        }
    })
    .await
    .ok();
    let stderr = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
    Ok((status, stderr))
}

fn forward<R: Read + Send + 'static>(
    pipe: R,
    script: String,
    tail: Option<Arc<Mutex<Vec<String>>>>,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            info!(script = %script, "{line}");
            if let Some(t) = &tail {
                if let Ok(mut t) = t.lock() {
                    t.push(line);
                    if t.len() > STDERR_TAIL {
                        t.remove(0);
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

fn log_lines(script: &str, out: &[u8]) {
    for line in String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        info!(script = %script, "{line}");
    }
}

/// Compressed SQL dumps, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Gzip,
    Xz,
    Zstd,
}

impl Codec {
    fn of(name: &str) -> Option<Codec> {
        [
            (".sql.gz", Codec::Gzip),
            (".sql.xz", Codec::Xz),
            (".sql.zst", Codec::Zstd),
        ]
        .into_iter()
        .find(|(ext, _)| name.ends_with(ext))
        .map(|(_, c)| c)
    }

    async fn decompress(self, path: &Path, runner: &Runner) -> Result<Vec<u8>> {
        let file = std::fs::File::open(path)?;
        let mut sql = Vec::new();
        match self {
            Codec::Gzip => {
                flate2::read::GzDecoder::new(file).read_to_end(&mut sql)?;
            }
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(file)?.read_to_end(&mut sql)?;
            }
            // No xz decoder is linked in; the official image uses xzcat too, and
            // xz-utils is part of every Debian system. Spawned through the runner:
            // pgwarden's reaper owns waitpid, so a plain Command would lose its
            // child's exit status to it (ECHILD).
            Codec::Xz => {
                let mut cmd = Command::new("xz");
                cmd.args(["--decompress", "--stdout", "--"])
                    .arg(path)
                    .stdin(Stdio::null());
                let out = runner
                    .output(&mut cmd, None)
                    .await
                    .context("run xz (install xz-utils)")?;
                if !out.status.success() {
                    bail!("xz: {}", out.stderr_text().trim());
                }
                sql = out.stdout;
            }
        }
        Ok(sql)
    }
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

/// An executable script runs itself; another is sourced by bash after the official
/// image's helpers are defined, with `set -Eeo pipefail` as there.
fn shell_command(path: &Path) -> Command {
    let executable = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if executable {
        Command::new(path)
    } else if Path::new("/bin/bash").exists() {
        let mut cmd = Command::new("/bin/bash");
        cmd.arg("-c")
            .arg(SOURCED_PRELUDE)
            .arg("docker-entrypoint.sh")
            .arg(path);
        cmd
    } else {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(path);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_codec_from_the_name() {
        assert_eq!(Codec::of("01-a.sql.gz"), Some(Codec::Gzip));
        assert_eq!(Codec::of("02-b.sql.xz"), Some(Codec::Xz));
        assert_eq!(Codec::of("03-c.sql.zst"), Some(Codec::Zstd));
        assert_eq!(Codec::of("04-d.sql"), None);
        assert_eq!(Codec::of("05-e.zst"), None);
    }
}
