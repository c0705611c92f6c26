//! Spawning the postmaster as a direct child, and forwarding what it prints.

use crate::process::{run_as, Child, Runner};
use crate::settings::Settings;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variables that hold secrets: postgres and its backends never need
/// them, and any SQL superuser could read them from `/proc/<pid>/environ`. The
/// archive and restore commands reach the storage through the WAL daemon, which
/// holds the credentials.
const SECRET_ENV: &[&str] = &[
    "POSTGRES_PASSWORD",
    "PGWARDEN_REPLICATION_PASSWORD",
    "PGPASSWORD",
    "PGWARDEN_API_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
];

/// Starts `postgres -D data_dir [extra]` as the run-as user, with its output forwarded to
/// pgwarden's log. It gets a process group of its own so that a Ctrl-C on a terminal
/// reaches only pgwarden, which then decides how to shut postgres down.
pub fn spawn(s: &Settings, runner: &Runner, data_dir: &Path, extra: &[&str]) -> io::Result<Child> {
    // archive_command and restore_command run as postgres's children and read their
    // settings from the environment, however pgwarden itself was configured.
    let mut env: Vec<(&str, OsString)> = Vec::new();
    if let Some(a) = &s.archive {
        env.extend(a.env().into_iter().map(|(k, v)| (k, v.into())));
    }
    if s.archive.is_some() || s.restore.is_some() {
        env.push(("PGWARDEN_SOCKET_DIR", s.socket_dir.clone().into()));
    }
    spawn_with(s, runner, data_dir, extra, &env, None)
}

/// What reads a postgres's output lines instead of the log (the restore drill's
/// server, whose lines say why its recovery failed).
pub type Tap = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// [`spawn`] with the environment its archive and restore commands see given by the
/// caller, and its output read by `tap` when there is one.
pub fn spawn_with(
    s: &Settings,
    runner: &Runner,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, OsString)],
    tap: Option<Tap>,
) -> io::Result<Child> {
    let mut cmd = Command::new(s.bin("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for var in SECRET_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Children of postgres that are pgwarden (archive_command, restore_command) log
    // JSON, whatever pgwarden's own format: [`crate::logging::postgres_line`] turns
    // their records back into pgwarden records at their own level.
    cmd.env("PGWARDEN_LOG_FORMAT", "json");
    run_as(&mut cmd, s.run_as.as_ref());
    let mut child = runner.spawn(&mut cmd)?;
    if let Some(out) = child.stdout.take() {
        forward(out, tap.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, tap);
    }
    Ok(child)
}

/// postgres's last FATAL message, so that a start that fails for a reason pgwarden
/// can name (a recovery target past the archive's end) is told apart from a crash.
static LAST_FATAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The last FATAL message postgres printed, if any.
pub fn last_fatal() -> Option<String> {
    LAST_FATAL.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn note_fatal(line: &str) {
    if let Some((_, msg)) = line.split_once("FATAL:") {
        *LAST_FATAL.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.trim().to_owned());
    }
}

/// Forwards lines on a thread of its own: the pipe is shared by every backend and stays
/// open until the last one exits, which may be after the postmaster.
fn forward<R: Read + Send + 'static>(pipe: R, tap: Option<Tap>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        let mut redactor = crate::redact::Redactor::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end();
                    if line.is_empty() {
                        continue;
                    }
                    match &tap {
                        Some(tap) => tap(&redactor.line(line)),
                        None => {
                            note_fatal(line);
                            crate::logging::postgres_line(&mut redactor, line);
                        }
                    }
                }
            }
        }
    });
}

/// Waits until postmaster.pid in `data_dir` says `pid` accepts connections, or the
/// child exits, or `timeout` passes.
pub async fn wait_ready(child: &mut Child, data_dir: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if crate::pgdata::postmaster_ready(data_dir, child.pid()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "postgres did not become ready in time",
            ));
        }
        tokio::select! {
            exit = child.wait() => {
                return Err(io::Error::other(format!("postgres exited during start-up ({})", exit?)));
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}
