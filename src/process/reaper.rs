//! The one owner of `waitpid` in `pgwarden run`.
//!
//! As PID 1 (or as a child subreaper when it is not PID 1) pgwarden inherits every
//! orphan in its subtree, so it must reap them or they stay zombies. Spawning and
//! reaping take the same lock: a child cannot be reaped between `fork` and the moment
//! its exit channel is registered, and a signal is never sent to a pid that was
//! already reaped and might have been recycled.

use super::Exit;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

static ACTIVE: AtomicBool = AtomicBool::new(false);

/// True once a reaper runs in this process: from then on every child must be spawned
/// through it, or the reaper could reap it first.
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Reaps every child and routes each exit status to whoever spawned that pid.
#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl Reaper {
    /// Becomes a subreaper (unless PID 1) and starts reaping. Call once, inside the
    /// runtime, before any child is spawned.
    pub fn start() -> io::Result<Reaper> {
        if nix::unistd::getpid().as_raw() != 1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        }
        let mut sigchld = signal(SignalKind::child())?;
        ACTIVE.store(true, Ordering::SeqCst);
        let reaper = Reaper {
            waiters: Arc::new(Mutex::new(HashMap::new())),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            // SIGCHLD coalesces, and a signal could in theory be missed between two
            // reaps; a slow sweep makes a leak impossible rather than unlikely.
            let mut sweep = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = sweep.tick() => {}
                }
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<Exit>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn spawn(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(std::process::Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    pub(super) fn signal(&self, pid: i32, sig: Signal) -> io::Result<()> {
        let waiters = self.lock();
        if !waiters.contains_key(&pid) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} has already exited"),
            ));
        }
        nix::sys::signal::kill(Pid::from_raw(pid), sig).map_err(io::Error::from)
    }

    /// Pids spawned through the reaper that have not exited yet.
    pub fn running(&self) -> Vec<i32> {
        self.lock().keys().copied().collect()
    }

    /// Sends `sig` to every running child.
    pub fn signal_all(&self, sig: Signal) {
        let waiters = self.lock();
        for pid in waiters.keys() {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), sig);
        }
    }

    fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return, // ECHILD: nothing left to reap.
            };
            match waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, exit = %exit, "reaped an orphaned process"),
            }
        }
    }
}
