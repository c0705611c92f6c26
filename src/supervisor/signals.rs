//! The signals pgwarden acts on, as one stream.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal pgwarden received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM: smart shutdown, then fast after a bound.
    Term,
    /// SIGINT: fast shutdown.
    Int,
    /// SIGQUIT: immediate shutdown.
    Quit,
    /// SIGHUP: re-render and reload.
    Hup,
}

/// Handlers for SIGTERM, SIGINT, SIGQUIT and SIGHUP. Installing them early matters: as
/// PID 1 a signal without a handler is silently dropped, and otherwise SIGTERM would
/// kill pgwarden before postgres has shut down.
pub struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Term,
            _ = self.int.recv() => Sig::Int,
            _ = self.quit.recv() => Sig::Quit,
            _ = self.hup.recv() => Sig::Hup,
        }
    }
}
