//! The dead-man switch: a small process of its own (`pgwarden ha-deadman`) that stops a
//! leader's postgres at the fence deadline when pgwarden itself cannot, because it is
//! stopped (SIGSTOP), starved or dead. Pods have no `/dev/watchdog`; this is its
//! stand-in.
//!
//! The loop sends it, over a pipe, `arm <postmaster pid> <deadline>` after each renewal
//! while postgres may be writable on its lease, and `disarm` otherwise; the deadline is
//! the fence deadline plus [`super::HaConfig::deadman_grace`], so that a live pgwarden's
//! own watchdog, which logs and fences in order, always acts first. Deadlines are
//! milliseconds on `CLOCK_BOOTTIME` ([`super::clock`]), shared by both processes. When
//! the deadline passes, or the pipe closes while armed (pgwarden died), it writes
//! standby.signal, so that whoever starts postgres next starts a standby, and SIGKILLs
//! the postmaster and each of its children.

use super::clock;
use crate::process::{Child, Runner};
use crate::settings::Settings;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;
use tracing::warn;

/// Arguments of the hidden `ha-deadman` command.
#[derive(clap::Args, Debug, Clone)]
pub struct DeadmanArgs {
    /// The data directory standby.signal goes into.
    #[arg(long)]
    pub pgdata: PathBuf,
    /// Owner of standby.signal, `uid:gid`, when pgwarden runs as root.
    #[arg(long)]
    pub owner: Option<String>,
}

/// The loop's end of the pipe.
pub struct DeadMan {
    _child: Child,
    stdin: std::process::ChildStdin,
    sent: Option<(i32, u64)>,
    broken: bool,
}

impl DeadMan {
    /// Starts the switch, disarmed.
    pub fn start(s: &Settings, runner: &Runner) -> std::io::Result<DeadMan> {
        let mut cmd = std::process::Command::new(&s.exe);
        cmd.arg("ha-deadman").arg("--pgdata").arg(&s.pgdata);
        if let Some(u) = &s.run_as {
            cmd.arg("--owner").arg(format!("{}:{}", u.uid, u.gid));
        }
        cmd.stdin(std::process::Stdio::piped());
        let mut child = runner.spawn(&mut cmd)?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no pipe to the dead-man switch"))?;
        Ok(DeadMan {
            _child: child,
            stdin,
            sent: None,
            broken: false,
        })
    }

    /// Arms the switch for `postmaster` at `deadline` (boot clock), or disarms it.
    pub fn set(&mut self, target: Option<(i32, Duration)>) {
        let target = target.map(|(pid, at)| (pid, at.as_millis().try_into().unwrap_or(u64::MAX)));
        if target == self.sent || self.broken {
            return;
        }
        let line = match target {
            Some((pid, at)) => format!("arm {pid} {at}\n"),
            None => "disarm\n".to_owned(),
        };
        // A few bytes into a pipe the switch drains at once: this does not block.
        match self.stdin.write_all(line.as_bytes()) {
            Ok(()) => self.sent = target,
            Err(e) => {
                warn!(error = %e, "HA: the dead-man switch is gone; the in-process watchdog remains");
                self.broken = true;
            }
        }
    }
}

/// Runs the switch until its pipe closes; returns the exit code.
pub fn main(args: &DeadmanArgs) -> i32 {
    let owner = args.owner.as_deref().and_then(|o| {
        let (u, g) = o.split_once(':')?;
        Some(crate::fsutil::Owner {
            uid: u.parse().ok()?,
            gid: g.parse().ok()?,
        })
    });
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let mut armed: Option<(i32, u64)> = None;
    loop {
        let wait = match armed {
            Some((_, at)) => Duration::from_millis(at).saturating_sub(clock::now()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(line) => armed = parse(&line).unwrap_or(armed),
            Err(RecvTimeoutError::Timeout) => {
                if let Some((pid, _)) = armed.take() {
                    eprintln!("pgwarden ha-deadman: the fence deadline passed without a renewal; killing postgres (pid {pid})");
                    fence(&args.pgdata, owner, pid);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Some((pid, _)) = armed {
                    eprintln!("pgwarden ha-deadman: pgwarden is gone while postgres may be writable; killing postgres (pid {pid})");
                    fence(&args.pgdata, owner, pid);
                }
                return 0;
            }
        }
    }
}

/// `arm <pid> <deadline ms>` or `disarm`; `None` for anything else.
fn parse(line: &str) -> Option<Option<(i32, u64)>> {
    let mut f = line.split_whitespace();
    match (f.next()?, f.next(), f.next(), f.next()) {
        ("disarm", None, None, None) => Some(None),
        ("arm", Some(pid), Some(at), None) => Some(Some((pid.parse().ok()?, at.parse().ok()?))),
        _ => None,
    }
}

/// Kills postgres with standby.signal in place, so that whoever starts postgres next
/// starts a standby. The signal is an empty file: created (one system call) before the
/// kill, made durable after it, as fsyncs on the stalled, loaded host this switch is for
/// must not hold the kill back.
fn fence(pgdata: &Path, owner: Option<crate::fsutil::Owner>, postmaster: i32) {
    let created = create_signal(&pgdata.join(crate::replica::STANDBY_SIGNAL), owner);
    super::local::kill_now(postmaster);
    let durable = created.and_then(|f| {
        f.sync_all()?;
        crate::fsutil::fsync_dir(pgdata)
    });
    if let Err(e) = durable {
        eprintln!("pgwarden ha-deadman: cannot write standby.signal: {e}");
    }
}

/// Creates the empty standby.signal, or opens the one there. Never through a symbolic
/// link: the switch runs as root, in a directory its database user owns (a link
/// planted there would have root create and chown a file elsewhere), so the file is
/// created with `O_EXCL` (which does not follow one), and what is there already is
/// opened with `O_NOFOLLOW` or, not a regular file, replaced.
fn create_signal(
    path: &Path,
    owner: Option<crate::fsutil::Owner>,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    let f = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(path)?.file_type().is_file() {
                return std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path);
            }
            std::fs::remove_file(path)?;
            create()?
        }
        Err(e) => return Err(e),
    };
    if let Some(o) = owner {
        std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("arm 42 1000"), Some(Some((42, 1000))));
        assert_eq!(parse("disarm"), Some(None));
        for bad in [
            "",
            "arm",
            "arm 42",
            "arm x 1",
            "arm 1 2 3",
            "disarm now",
            "fire",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    /// A link planted as standby.signal is replaced, never followed: neither the file
    /// it names nor a file where a dangling one points is created or touched.
    #[test]
    fn the_signal_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (pgdata, elsewhere) = (dir.path().join("data"), dir.path().join("elsewhere"));
        std::fs::create_dir(&pgdata).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let signal = pgdata.join(crate::replica::STANDBY_SIGNAL);
        let target = elsewhere.join("shadow");
        std::fs::write(&target, "secret\n").unwrap();
        let dangling = elsewhere.join("cron");
        for points_at in [&target, &dangling] {
            let _ = std::fs::remove_file(&signal);
            std::os::unix::fs::symlink(points_at, &signal).unwrap();
            create_signal(&signal, None).unwrap();
            let meta = std::fs::symlink_metadata(&signal).unwrap();
            assert!(meta.file_type().is_file(), "{points_at:?}");
            assert_eq!(meta.len(), 0);
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
        assert!(!dangling.exists());
        // One already there is kept as it is.
        std::fs::write(&signal, "").unwrap();
        create_signal(&signal, None).unwrap();
        assert!(std::fs::symlink_metadata(&signal).unwrap().is_file());
    }
}
