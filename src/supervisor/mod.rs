//! Supervising postgres: start, readiness, signals, reload, crash restarts, shutdown.

mod crash;
pub mod postgres;
mod signals;

pub use crash::{CrashPolicy, Decision};
pub use signals::{Sig, Signals};

use crate::pgconf::tuning::Resources;
use crate::process::{Exit, Reaper, Runner};
use crate::settings::Settings;
use crate::state::{State, SupervisorStatus};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How long children other than postgres get to exit after postgres has stopped.
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// Owns the postgres process and the supervisor's published status.
pub struct Supervisor {
    /// Current settings; a reload swaps in re-read user fragments.
    pub settings: Arc<Settings>,
    /// Container limits the configuration was sized for.
    pub resources: Resources,
    /// The reaper every child is spawned through.
    pub reaper: Reaper,
    /// Where the status is published.
    pub status: watch::Sender<SupervisorStatus>,
}

/// How a shutdown was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Smart { fast_at: Instant },
    Fast,
    Immediate,
}

impl Supervisor {
    fn runner(&self) -> Runner {
        Runner::Reaped(self.reaper.clone())
    }

    fn publish(&self, f: impl FnOnce(&mut SupervisorStatus)) {
        self.status.send_modify(f);
    }

    /// Runs postgres until a shutdown signal or too many crashes; returns the exit code
    /// for pgwarden.
    pub async fn run(mut self, signals: &mut Signals) -> i32 {
        let mut crashes = CrashPolicy::new(self.settings.max_crashes, self.settings.crash_window);
        loop {
            let exit = match self.run_once(signals).await {
                Outcome::Stopped(exit) => {
                    stop_children(&self.reaper).await;
                    info!(exit = %exit, "postgres stopped; exiting");
                    return exit_code(exit);
                }
                Outcome::Crashed(exit) => exit,
            };
            self.publish(|st| {
                st.state = State::Crashed;
                st.restarts += 1;
            });
            match crashes.record(Instant::now()) {
                Decision::GiveUp => {
                    error!(
                        crashes = self.settings.max_crashes,
                        window_seconds = self.settings.crash_window.as_secs(),
                        last_exit = %exit,
                        "postgres keeps crashing; exiting so that the kubelet restarts the container"
                    );
                    self.publish(|st| st.gave_up = true);
                    stop_children(&self.reaper).await;
                    return 1;
                }
                Decision::Restart(delay) => {
                    warn!(exit = %exit, delay_ms = delay.as_millis() as u64, "postgres crashed; restarting after a backoff");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        sig = wait_for_stop(signals) => {
                            info!(signal = ?sig, "shutdown requested while postgres was down");
                            self.publish(|st| st.state = State::Stopped);
                            stop_children(&self.reaper).await;
                            return 0;
                        }
                    }
                }
            }
        }
    }

    /// Starts postgres once and follows it until it exits.
    async fn run_once(&mut self, signals: &mut Signals) -> Outcome {
        self.publish(|st| {
            st.state = State::Starting;
            st.pid = None;
        });
        let s = self.settings.clone();
        let mut pg = match postgres::spawn(&s, &self.runner(), &s.pgdata, &[]) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "cannot start postgres");
                return Outcome::Crashed(Exit::Code(-1));
            }
        };
        let pid = pg.pid();
        info!(pid, "postgres started");
        self.publish(|st| {
            st.pid = Some(pid);
            st.started = true;
        });
        let mut mode: Option<Mode> = None;
        let mut ready = false;
        let exit = loop {
            let fast_at = match mode {
                Some(Mode::Smart { fast_at }) => Some(fast_at),
                _ => None,
            };
            tokio::select! {
                exit = pg.wait() => break exit.unwrap_or(Exit::Code(-1)),
                sig = signals.recv() => {
                    let next = match sig {
                        Sig::Hup => {
                            self.reload(&pg).await;
                            continue;
                        }
                        Sig::Term => Mode::Smart { fast_at: Instant::now() + s.smart_shutdown_timeout },
                        Sig::Int => Mode::Fast,
                        Sig::Quit => Mode::Immediate,
                    };
                    // A second SIGTERM does not restart the smart-shutdown clock.
                    if matches!((mode, next), (Some(_), Mode::Smart { .. })) {
                        continue;
                    }
                    let (pg_signal, name) = match next {
                        Mode::Smart { .. } => (Signal::SIGTERM, "smart"),
                        Mode::Fast => (Signal::SIGINT, "fast"),
                        Mode::Immediate => (Signal::SIGQUIT, "immediate"),
                    };
                    info!(signal = ?sig, mode = name, pid, "shutting postgres down");
                    let _ = pg.signal(pg_signal);
                    mode = Some(next);
                    self.publish(|st| st.state = State::Stopping);
                }
                _ = sleep_until_opt(fast_at) => {
                    warn!(
                        timeout_seconds = s.smart_shutdown_timeout.as_secs(),
                        "smart shutdown is waiting for clients to disconnect; switching to fast shutdown"
                    );
                    let _ = pg.signal(Signal::SIGINT);
                    mode = Some(Mode::Fast);
                }
                _ = tokio::time::sleep(Duration::from_millis(10)), if !ready && mode.is_none() => {
                    if crate::pgdata::postmaster_ready(&s.pgdata, pid) {
                        ready = true;
                        info!(pid, "postgres accepts connections");
                        self.publish(|st| st.state = State::Running);
                        let (settings, runner) = (self.settings.clone(), self.runner());
                        tokio::spawn(async move { after_start(&settings, &runner).await });
                    }
                }
            }
        };
        self.publish(|st| {
            st.pid = None;
            st.last_exit = Some(exit.to_string());
        });
        if mode.is_some() {
            self.publish(|st| st.state = State::Stopped);
            Outcome::Stopped(exit)
        } else {
            error!(pid, exit = %exit, "postgres exited unexpectedly");
            Outcome::Crashed(exit)
        }
    }

    /// SIGHUP: re-read the user fragments, re-render, validate, write, and reload
    /// postgres. An invalid change is refused and the running configuration kept.
    async fn reload(&mut self, pg: &crate::process::Child) {
        let next = match self.settings.reload_user_files() {
            Ok(n) => n,
            Err(e) => {
                error!(error = %e, "reload refused; the running configuration is kept");
                return;
            }
        };
        match crate::pgconf::apply(&next, &next.pgdata, &self.resources, &self.runner()).await {
            Ok(changed) => {
                self.settings = Arc::new(next);
                let _ = pg.signal(Signal::SIGHUP);
                info!(
                    postgresql_conf_changed = changed.postgresql_conf,
                    hba_changed = changed.hba,
                    "configuration reloaded"
                );
            }
            Err(e) => error!(
                error = format!("{e:#}"),
                "reload refused; the running configuration is kept"
            ),
        }
    }
}

enum Outcome {
    Stopped(Exit),
    Crashed(Exit),
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Work for each time postgres comes up: on a primary, the replication role; on a
/// standby, its slot on the primary, retried while the primary is unreachable.
pub async fn after_start(s: &Settings, runner: &Runner) {
    if crate::replica::is_standby(&s.pgdata) {
        for attempt in 1..=30 {
            match crate::replica::remote::ensure_slot(s, runner).await {
                Ok(()) => return,
                Err(e) => warn!(
                    attempt,
                    error = format!("{e:#}"),
                    "cannot make sure our slot exists on the primary; retrying"
                ),
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    } else if let Err(e) = crate::roles::ensure_replication_role(s).await {
        error!(
            error = format!("{e:#}"),
            "cannot set up the replication role"
        );
    }
}

/// Waits for a signal that asks pgwarden to stop (SIGHUP is ignored here).
pub async fn wait_for_stop(signals: &mut Signals) -> Sig {
    loop {
        let sig = signals.recv().await;
        if sig != Sig::Hup {
            return sig;
        }
    }
}

/// Gives the children still running a grace period, then kills them, so that pgwarden
/// exits last.
pub async fn stop_children(reaper: &Reaper) {
    if reaper.running().is_empty() {
        return;
    }
    reaper.signal_all(Signal::SIGTERM);
    let deadline = Instant::now() + CHILD_GRACE;
    while !reaper.running().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !reaper.running().is_empty() {
        warn!(pids = ?reaper.running(), "children still running after the grace period; killing them");
        reaper.signal_all(Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// pgwarden's exit code for postgres's exit: its code, or 128 + the signal, as a shell would.
pub fn exit_code(exit: Exit) -> i32 {
    match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}
