//! pgwarden: PID 1 for PostgreSQL containers.
//!
//! The binary's `main.rs` only parses the command line; everything lives here so that
//! the integration tests can use it. Start reading at [`run`], which orders the pieces:
//! [`settings`] → [`pgconf`] → [`bootstrap`] → [`supervisor`], with [`monitor`] and
//! [`http`] beside them.

pub mod backup;
pub mod bootstrap;
pub mod civil;
pub mod cli;
pub mod db;
pub mod drill;
pub mod entrypoint;
pub mod fsutil;
pub mod ha;
pub mod http;
pub mod logging;
pub mod monitor;
pub mod nss;
pub mod pgconf;
pub mod pgdata;
pub mod process;
pub mod progress;
pub mod redact;
pub mod replica;
pub mod roles;
pub mod run;
pub mod settings;
pub mod state;
pub mod supervisor;
pub mod upgrade;
pub mod wal;
pub mod wal_cli;
