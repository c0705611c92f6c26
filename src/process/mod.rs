//! Child processes: who they run as, how they are spawned, and how their exit is seen.
//!
//! Under `pgwarden run` one [`Reaper`] owns `waitpid`: every child is spawned through it
//! and its exit status comes back on a channel. Outside `run` (the `config` command, the
//! library in tests) [`Runner::Direct`] uses std's own waiting instead, because a reaper
//! that called `waitpid(-1)` in someone else's process would steal their children.

pub mod memory;
mod reaper;

pub use reaper::Reaper;

use crate::fsutil::Owner;
use nix::sys::signal::Signal;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tokio::sync::oneshot;

/// The unprivileged user that postgres and its tools run as when pgwarden is root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

impl RunAs {
    /// Looks a user up by name.
    pub fn lookup(name: &str) -> Result<RunAs, String> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(RunAs {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            Ok(None) => Err(format!("no such user {name:?}")),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        }
    }

    /// The owner to give files postgres must read.
    pub fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// Makes `cmd` run as `run_as` (with its supplementary groups dropped by std) when set.
pub fn run_as(cmd: &mut Command, user: Option<&RunAs>) {
    use std::os::unix::process::CommandExt;
    if let Some(u) = user {
        // The caller's working directory (often /root) is not readable by that user.
        cmd.uid(u.uid)
            .gid(u.gid)
            .current_dir("/")
            .env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    fn from_std(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {s} ({sig})"),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// What a finished child printed.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: Exit,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard error as text, trimmed, for error messages.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Spawns children, through the reaper under `run` and directly elsewhere.
#[derive(Clone)]
pub enum Runner {
    /// std waits for each child itself.
    Direct,
    /// The reaper waits for every child.
    Reaped(Reaper),
}

enum Waiter {
    Direct(std::process::Child),
    Reaped(Reaper, oneshot::Receiver<Exit>),
}

/// A running child.
pub struct Child {
    pid: i32,
    waiter: Waiter,
    exited: Option<Exit>,
    /// Its stdin, when piped.
    pub stdin: Option<std::process::ChildStdin>,
    /// Its stdout, when piped.
    pub stdout: Option<std::process::ChildStdout>,
    /// Its stderr, when piped.
    pub stderr: Option<std::process::ChildStderr>,
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the child, unless it has already been reaped (so a recycled pid is
    /// never hit).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        match &self.waiter {
            Waiter::Direct(_) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
                .map_err(io::Error::from),
            Waiter::Reaped(reaper, _) => reaper.signal(self.pid, sig),
        }
    }

    /// Waits for the child to end. Cancel-safe for the reaped kind: dropping the future
    /// loses only the notification, and the reaper still reaps the child.
    /// Once it has returned, it returns the same status again.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        if let Some(exit) = self.exited {
            return Ok(exit);
        }
        let exit = match &mut self.waiter {
            Waiter::Direct(child) => loop {
                if let Some(status) = child.try_wait()? {
                    break Exit::from_std(status);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            },
            Waiter::Reaped(_, rx) => rx
                .await
                .map_err(|_| io::Error::other("the reaper stopped before the child exited"))?,
        };
        self.exited = Some(exit);
        Ok(exit)
    }
}

impl Runner {
    /// Spawns `cmd`. Pipes set on `cmd` are handed over in the returned [`Child`].
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let with_name =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot start {program}: {e}"));
        match self {
            Runner::Direct => {
                if reaper::active() {
                    return Err(io::Error::other(format!(
                        "internal error: {program} was to be spawned around the reaper; it would lose its exit status"
                    )));
                }
                let mut child = cmd.spawn().map_err(with_name)?;
                Ok(Child {
                    pid: child.id() as i32,
                    stdin: child.stdin.take(),
                    stdout: child.stdout.take(),
                    stderr: child.stderr.take(),
                    waiter: Waiter::Direct(child),
                    exited: None,
                })
            }
            Runner::Reaped(reaper) => {
                let (mut child, rx) = reaper.spawn(cmd).map_err(with_name)?;
                Ok(Child {
                    pid: child.id() as i32,
                    stdin: child.stdin.take(),
                    stdout: child.stdout.take(),
                    stderr: child.stderr.take(),
                    waiter: Waiter::Reaped(reaper.clone(), rx),
                    exited: None,
                })
            }
        }
    }

    /// Runs `cmd` to completion with `input` on stdin, collecting stdout and stderr.
    pub async fn output(&self, cmd: &mut Command, input: Option<Vec<u8>>) -> io::Result<Output> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = self.spawn(cmd)?;
        let stdin = child.stdin.take();
        let feeder = tokio::task::spawn_blocking(move || -> io::Result<()> {
            if let (Some(mut pipe), Some(data)) = (stdin, input) {
                // A child that exits early closes the pipe; its exit status tells why.
                let _ = pipe.write_all(&data);
            }
            Ok(())
        });
        let out = read_pipe(child.stdout.take());
        let err = read_pipe(child.stderr.take());
        let status = child.wait().await?;
        let _ = feeder.await;
        Ok(Output {
            status,
            stdout: out.await.unwrap_or_default(),
            stderr: err.await.unwrap_or_default(),
        })
    }
}

fn read_pipe<R: Read + Send + 'static>(pipe: Option<R>) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}
