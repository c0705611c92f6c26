//! Supervising postgres: start, readiness, signals, reload, crash restarts, shutdown.

mod autoconf;
pub mod commands;
mod crash;
pub mod postgres;
mod rewind;
mod signals;

pub use commands::{lift_interrupted_hold, Command, Commands, Request};
pub use crash::{CrashPolicy, Decision};
pub use rewind::{after_failed_rewind, reclone, REWIND_HOLD_TEXT};
pub use signals::{Sig, Signals};

use crate::pgconf::tuning::Resources;
use crate::process::{Exit, Reaper, Runner};
use crate::settings::Settings;
use crate::state::{State, SupervisorStatus};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

/// How often the user fragments are re-read to notice a change (a ConfigMap update
/// swaps a symlink; re-reading the path follows it).
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

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
    /// Requests from the control API.
    pub commands: mpsc::Receiver<Request>,
    /// Restart postgres by itself when a reload leaves parameters pending a restart.
    pub restart_on_pending: bool,
    /// A sender to our own command queue, for restarts pgwarden decides on itself.
    pub self_commands: Commands,
    /// The fragments' text of the last refused change.
    pub refused: Option<crate::settings::UserTexts>,
    /// Where a rebuild from the archive (`reinit`, a reclone) shows its progress.
    pub restoring: crate::progress::Restoring,
}

/// How a shutdown was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Smart {
        fast_at: Instant,
    },
    Fast,
    Immediate,
    /// A restart or a fence: postgres stops, pgwarden goes on.
    Planned,
}

/// When a part of pgwarden other than the supervisor last stopped postgres on purpose
/// (the HA loop fencing a primary): the exit that follows is not a crash.
static EXPECTED_EXIT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Says that postgres is about to be stopped on purpose, outside the supervisor.
pub fn expect_exit() {
    *EXPECTED_EXIT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
}

/// Whether the exit just seen was announced by [`expect_exit`] (recently: a stale
/// announcement must not excuse a real crash later).
fn took_expected_exit() -> bool {
    EXPECTED_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
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
            if self.settings.pgdata.join(commands::FENCE_MARKER).exists() {
                if let Some(code) = self.stay_fenced(signals).await {
                    return code;
                }
            }
            let exit = match self.run_once(signals).await {
                Outcome::Planned(Next::Start) => continue,
                Outcome::Planned(Next::Rejoin) => match self.rejoin().await {
                    Ok(()) => continue,
                    Err(code) => return code,
                },
                Outcome::Planned(Next::Reinit) => match self.reinit().await {
                    Ok(()) => continue,
                    Err(code) => return code,
                },
                Outcome::Stopped(exit) => {
                    stop_children(&self.reaper).await;
                    info!(exit = %exit, "postgres stopped; exiting");
                    return exit_code(exit);
                }
                Outcome::Crashed(exit) => exit,
            };
            if took_expected_exit() {
                info!(exit = %exit, "postgres was stopped on purpose (HA fencing); starting it again, read-only");
                continue;
            }
            if let Some(why) = self.failed_recovery().await {
                error!(last_exit = %exit, "{why}");
                self.publish(|st| st.gave_up = true);
                stop_children(&self.reaper).await;
                return 1;
            }
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
                            self.publish(|st| {
                                st.state = State::Stopped;
                                st.exiting = true;
                            });
                            stop_children(&self.reaper).await;
                            return 0;
                        }
                    }
                }
            }
        }
    }

    /// Why recovery from a backup cannot succeed, when postgres just said so: starting
    /// it again would fail the same way, and must not look like a crash to retry.
    async fn failed_recovery(&self) -> Option<String> {
        let r = self.settings.restore.as_ref()?;
        let signal = self
            .settings
            .pgdata
            .join(crate::settings::restore::RECOVERY_SIGNAL);
        if !signal.exists() {
            return None;
        }
        // The postmaster's last lines may still be on their way through the pipe.
        tokio::time::sleep(Duration::from_millis(300)).await;
        crate::bootstrap::restore::explain_failure(&postgres::last_fatal()?, &r.target)
    }

    /// Rewinds the stopped standby from the primary it diverged from, and renders the
    /// configuration again (pg_rewind copies the primary's files over ours). A failed
    /// rewind may leave PGDATA half-copied, so postgres is not started on it: pgwarden
    /// exits with pg_rewind's explanation, as it does when the rewind at start-up fails,
    /// and the next start tries again.
    async fn rejoin(&mut self) -> Result<(), i32> {
        self.publish(|st| st.state = State::Starting);
        let s = self.settings.clone();
        info!(primary = ?s.upstream.get().map(|t| t.name), "rewinding this standby to rejoin the primary");
        let runner = self.runner();
        let rejoined = async {
            match crate::replica::rejoin(&s, &runner).await {
                Ok(()) => Ok(None),
                Err(e) => rewind::after_failed_rewind(&s, &runner, &self.restoring, e).await,
            }
        }
        .await;
        let done = match rejoined {
            Ok(kept) => crate::pgconf::apply(&s, &s.pgdata, &self.resources, &runner)
                .await
                .map(|_| kept),
            Err(e) => Err(e),
        };
        match done {
            Ok(kept) => {
                match &kept {
                    None => info!("rejoined; starting postgres as the primary's standby"),
                    Some(_) => warn!("not rejoined; the data was kept (see the error above)"),
                }
                self.publish(|st| st.rewind_failed = kept);
                Ok(())
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "cannot rejoin the primary; exiting"
                );
                self.publish(|st| st.gave_up = true);
                stop_children(&self.reaper).await;
                Err(1)
            }
        }
    }

    /// `pgwarden reinit`: discards the data of this stopped standby and clones its
    /// primary again. A clone that fails leaves an interrupted bootstrap, which the next
    /// start redoes: pgwarden exits.
    async fn reinit(&mut self) -> Result<(), i32> {
        self.publish(|st| st.state = State::Starting);
        let s = self.settings.clone();
        let runner = self.runner();
        let done = async {
            rewind::reclone(&s, &runner, &self.restoring).await?;
            crate::pgconf::apply(&s, &s.pgdata, &self.resources, &runner).await
        }
        .await;
        match done {
            Ok(_) => {
                info!("reinit: cloned the primary again; starting postgres as its standby");
                self.publish(|st| st.rewind_failed = None);
                Ok(())
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "reinit: cannot clone the primary; exiting (the next start clones it)"
                );
                self.publish(|st| st.gave_up = true);
                stop_children(&self.reaper).await;
                Err(1)
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
        // postgres is not running: the file can be fixed directly.
        match crate::pgconf::autoconf::neutralise_file(
            &s.pgdata,
            s.run_as.as_ref().map(|u| u.owner()),
        ) {
            Ok(found) => self.report_overrides(found),
            Err(e) => {
                warn!(error = %e, "cannot check postgresql.auto.conf for parameters pgwarden owns")
            }
        }
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
        // A standby's slot on the primary is made sure of now, not once postgres is
        // ready: a standby rewound past its local WAL reaches consistency only by
        // streaming, and streams only through its slot.
        if crate::replica::is_standby(&s.pgdata) && s.primary_host.is_some() {
            let (settings, runner) = (self.settings.clone(), self.runner());
            tokio::spawn(async move { ensure_standby_slot(&settings, &runner).await });
        }
        let mut mode: Option<Mode> = None;
        let mut next = Next::Start;
        // When a shutdown still running turns immediate (set by the first stop signal).
        let mut immediate_at: Option<Instant> = None;
        let mut ready = false;
        let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
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
                            let _ = self.reload(&pg).await;
                            continue;
                        }
                        Sig::Term if s.smart_shutdown_timeout.is_zero() => Mode::Fast,
                        Sig::Term => Mode::Smart { fast_at: Instant::now() + s.smart_shutdown_timeout },
                        Sig::Int => Mode::Fast,
                        Sig::Quit => Mode::Immediate,
                    };
                    // A second signal never restarts the smart-shutdown clock nor makes a
                    // shutdown gentler.
                    if !escalates(mode, next) {
                        continue;
                    }
                    let (pg_signal, name) = match next {
                        Mode::Smart { .. } => (Signal::SIGTERM, "smart"),
                        Mode::Fast => (Signal::SIGINT, "fast"),
                        Mode::Immediate => (Signal::SIGQUIT, "immediate"),
                        Mode::Planned => (Signal::SIGINT, "fast"),
                    };
                    info!(signal = ?sig, mode = name, pid, "shutting postgres down");
                    let _ = pg.signal(pg_signal);
                    mode = Some(next);
                    if immediate_at.is_none() && next != Mode::Immediate {
                        immediate_at = s.stop_timeout.map(|t| Instant::now() + t);
                    }
                    self.publish(|st| {
                        st.state = State::Stopping;
                        st.exiting = true;
                    });
                }
                Some(req) = self.commands.recv() => {
                    let answer = match req.command {
                        _ if mode.is_some() => Err("postgres is stopping".to_owned()),
                        Command::Reload => self.reload(&pg).await,
                        Command::Unfence => Err("this instance is not fenced".to_owned()),
                        Command::Rejoin if !crate::replica::is_standby(&s.pgdata) => {
                            Err("only a standby rejoins a primary".to_owned())
                        }
                        Command::Reinit if !crate::replica::is_standby(&s.pgdata) => {
                            Err("refused: only a standby is rebuilt from its primary, and this instance runs as a primary".to_owned())
                        }
                        Command::Reinit if s.primary_conninfo("replication").is_none() => {
                            Err("refused: this standby follows no primary to clone (with HA: no leader yet)".to_owned())
                        }
                        Command::Restart | Command::Fence | Command::Hold | Command::Rejoin | Command::Reinit => {
                            next = match req.command {
                                Command::Rejoin => Next::Rejoin,
                                Command::Reinit => Next::Reinit,
                                _ => Next::Start,
                            };
                            if matches!(req.command, Command::Fence | Command::Hold) {
                                if let Err(e) = self.write_fence_marker(req.command) {
                                    let _ = req.reply.send(Err(e));
                                    continue;
                                }
                            }
                            // A checkpoint first keeps the shutdown checkpoint, and so the
                            // time postgres is away, short.
                            checkpoint_if_primary(&s).await;
                            info!(command = ?req.command, pid, "stopping postgres (fast)");
                            let _ = pg.signal(Signal::SIGINT);
                            mode = Some(Mode::Planned);
                            self.publish(|st| st.state = State::Stopping);
                            Ok(format!("{:?}: postgres is stopping", req.command).to_lowercase())
                        }
                    };
                    let _ = req.reply.send(answer);
                }
                _ = watch_tick.tick(), if mode.is_none() => {
                    // ALTER SYSTEM followed by pg_reload_conf() never goes through pgwarden.
                    if ready {
                        self.guard_auto_conf().await;
                    }
                    let on_disk = self.settings.user_texts_on_disk();
                    // A change refused once is not retried (nor logged) every tick.
                    if on_disk != self.settings.user_texts && Some(&on_disk) != self.refused.as_ref() {
                        info!("a user configuration file changed; reloading");
                        if self.reload(&pg).await.is_err() {
                            self.refused = Some(on_disk);
                        }
                    }
                }
                _ = sleep_until_opt(fast_at) => {
                    warn!(
                        timeout_seconds = s.smart_shutdown_timeout.as_secs(),
                        "smart shutdown is waiting for clients to disconnect; switching to fast shutdown"
                    );
                    let _ = pg.signal(Signal::SIGINT);
                    mode = Some(Mode::Fast);
                }
                _ = sleep_until_opt(immediate_at), if mode != Some(Mode::Immediate) => {
                    warn!(
                        timeout_seconds = s.stop_timeout.map_or(0, |t| t.as_secs()),
                        "postgres has not stopped within PGWARDEN_STOP_TIMEOUT; switching to immediate shutdown before the platform kills it (crash recovery on the next start)"
                    );
                    let _ = pg.signal(Signal::SIGQUIT);
                    mode = Some(Mode::Immediate);
                }
                _ = tokio::time::sleep(Duration::from_millis(10)), if !ready && mode.is_none() => {
                    if crate::pgdata::postmaster_ready(&s.pgdata, pid) {
                        ready = true;
                        info!(pid, "postgres accepts connections");
                        self.publish(|st| st.state = State::Running);
                        if !crate::replica::is_standby(&s.pgdata) {
                            let settings = self.settings.clone();
                            tokio::spawn(async move { after_start(&settings).await });
                        }
                    }
                }
            }
        };
        self.publish(|st| {
            st.pid = None;
            st.last_exit = Some(exit.to_string());
        });
        if mode == Some(Mode::Planned) {
            info!(exit = %exit, "postgres stopped as asked");
            Outcome::Planned(next)
        } else if mode.is_some() {
            self.publish(|st| {
                st.state = State::Stopped;
                st.exiting = true;
            });
            Outcome::Stopped(exit)
        } else {
            error!(pid, exit = %exit, "postgres exited unexpectedly");
            Outcome::Crashed(exit)
        }
    }

    /// SIGHUP, a changed fragment or POST /reload: re-read the user fragments,
    /// re-render, validate, write, and reload postgres. An invalid change is refused,
    /// the running configuration kept, and the error shown in /status.
    async fn reload(&mut self, pg: &crate::process::Child) -> Result<String, String> {
        let applied = match self.settings.reload_user_files() {
            Ok(next) => crate::pgconf::apply(&next, &next.pgdata, &self.resources, &self.runner())
                .await
                .map(|changed| (next, changed))
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        let (next, changed) = match applied {
            Ok(ok) => ok,
            Err(e) => {
                error!(error = %e, "reload refused; the running configuration is kept");
                self.publish(|st| st.config_error = Some(e.clone()));
                return Err(e);
            }
        };
        self.settings = Arc::new(next);
        self.refused = None;
        let _ = pg.signal(Signal::SIGHUP);
        self.publish(|st| st.config_error = None);
        info!(
            postgresql_conf_changed = changed.postgresql_conf,
            hba_changed = changed.hba,
            "configuration reloaded"
        );
        self.guard_auto_conf().await;
        if self.restart_on_pending && changed.postgresql_conf {
            let (settings, commands) = (self.settings.clone(), self.self_commands.clone());
            tokio::spawn(async move { restart_if_pending(&settings, commands).await });
        }
        Ok("reloaded".to_owned())
    }

    /// Waits, postgres stopped, until unfenced or asked to stop; `Some(exit code)` to
    /// exit.
    async fn stay_fenced(&mut self, signals: &mut Signals) -> Option<i32> {
        info!("fenced: postgres stays stopped until POST /unfence");
        // Deliberately not running counts as started: the startup probe must not kill
        // a pod fenced on purpose.
        self.publish(|st| {
            st.state = State::Fenced;
            st.pid = None;
            st.started = true;
        });
        loop {
            tokio::select! {
                sig = wait_for_stop(signals) => {
                    info!(signal = ?sig, "shutdown requested while fenced");
                    self.publish(|st| {
                        st.state = State::Stopped;
                        st.exiting = true;
                    });
                    stop_children(&self.reaper).await;
                    return Some(0);
                }
                Some(req) = self.commands.recv() => {
                    let answer = match req.command {
                        Command::Unfence => match std::fs::remove_file(self.settings.pgdata.join(commands::FENCE_MARKER)) {
                            Ok(()) => {
                                info!("unfenced: starting postgres");
                                let _ = req.reply.send(Ok("unfenced: postgres is starting".into()));
                                return None;
                            }
                            Err(e) => Err(format!("cannot remove the fence marker: {e}")),
                        },
                        Command::Fence | Command::Hold => Ok("already fenced".into()),
                        Command::Reinit => {
                            let (s, runner) = (self.settings.clone(), self.runner());
                            let rebuilt = async {
                                rewind::reclone(&s, &runner, &self.restoring).await?;
                                crate::pgconf::apply(&s, &s.pgdata, &self.resources, &runner).await
                            }
                            .await;
                            match rebuilt {
                                Ok(_) => {
                                    info!("reinit: cloned the primary again; starting postgres as its standby");
                                    self.publish(|st| st.rewind_failed = None);
                                    let _ = req.reply.send(Ok("reinit: cloned the primary again; postgres is starting".into()));
                                    return None;
                                }
                                Err(e) => Err(format!("reinit failed: {e:#}")),
                            }
                        }
                        other => Err(format!("{other:?} is not possible while fenced").to_lowercase()),
                    };
                    let _ = req.reply.send(answer);
                }
            }
        }
    }

    fn write_fence_marker(&self, command: Command) -> Result<(), String> {
        let text = match command {
            Command::Hold => format!(
                "{}; lifted when it ends or pgwarden restarts\n",
                commands::HOLD_TEXT
            ),
            _ => "fenced by pgwarden; POST /unfence to lift\n".to_owned(),
        };
        crate::fsutil::write_atomic(
            &self.settings.pgdata.join(commands::FENCE_MARKER),
            text.as_bytes(),
            self.settings.run_as.as_ref().map(|u| u.owner()),
            0o600,
        )
        .map(|_| ())
        .map_err(|e| format!("cannot write the fence marker: {e}"))
    }
}

/// CHECKPOINT on a primary, before a planned stop. Best effort.
async fn checkpoint_if_primary(s: &Settings) {
    if let Ok(client) = crate::db::connect_local(s, &s.socket_dir, "postgres").await {
        let _ = client
            .batch_execute("DO $$ BEGIN IF NOT pg_is_in_recovery() THEN CHECKPOINT; END IF; END $$")
            .await;
    }
}

/// After a reload, restarts postgres if a changed parameter waits for one
/// (PGWARDEN_RESTART_ON_PENDING=true).
async fn restart_if_pending(s: &Settings, commands: Commands) {
    // postgres applies SIGHUP asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Ok(client) = crate::db::connect_local(s, &s.socket_dir, "postgres").await else {
        return;
    };
    let pending: i64 = match client
        .query_one(
            "SELECT count(*) FROM pg_settings WHERE pending_restart",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => return,
    };
    if pending > 0 {
        info!(pending, "parameters wait for a restart and PGWARDEN_RESTART_ON_PENDING is set; restarting postgres");
        let _ = commands.send(Command::Restart).await;
    }
}

/// How forceful a shutdown mode is; a planned stop is a fast one that pgwarden survives.
fn severity(mode: Mode) -> u8 {
    match mode {
        Mode::Planned => 0,
        Mode::Smart { .. } => 1,
        Mode::Fast => 2,
        Mode::Immediate => 3,
    }
}

/// True when a stop signal asking for `next` should change the current shutdown.
fn escalates(current: Option<Mode>, next: Mode) -> bool {
    match current {
        None | Some(Mode::Planned) => true,
        Some(cur) => severity(next) > severity(cur),
    }
}

enum Outcome {
    Stopped(Exit),
    Crashed(Exit),
    /// A restart, fence, rejoin or reinit asked for: go round again, after `Next`.
    Planned(Next),
}

/// What comes before postgres starts again after a planned stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing: start it (or stay fenced).
    Start,
    /// Rewind from the primary first.
    Rejoin,
    /// Discard the data and clone the primary first.
    Reinit,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Work for each time a primary comes up: the replication role.
pub async fn after_start(s: &Settings) {
    // A cluster recovering from a backup is read-only until it promotes at its target.
    while s
        .pgdata
        .join(crate::settings::restore::RECOVERY_SIGNAL)
        .exists()
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Err(e) = crate::roles::ensure_replication_role(s).await {
        error!(
            error = format!("{e:#}"),
            "cannot set up the replication role"
        );
    }
}

/// Each time a standby's postgres is started: its slot on the primary, retried while
/// the primary is unreachable.
pub async fn ensure_standby_slot(s: &Settings, runner: &Runner) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_only_escalates() {
        let smart = Mode::Smart {
            fast_at: Instant::now(),
        };
        let cases = [
            (None, smart, true),
            (None, Mode::Fast, true),
            (Some(Mode::Planned), Mode::Fast, true),
            (Some(smart), smart, false),
            (Some(smart), Mode::Fast, true),
            (Some(Mode::Fast), smart, false),
            (Some(Mode::Fast), Mode::Fast, false),
            (Some(Mode::Fast), Mode::Immediate, true),
            (Some(Mode::Immediate), Mode::Fast, false),
        ];
        for (current, next, want) in cases {
            assert_eq!(escalates(current, next), want, "{current:?} then {next:?}");
        }
    }
}
