//! Automatic failover (`PGWARDEN_HA=etcd`): only the holder of a leader key, bound to an
//! etcd lease, runs postgres writable. See docs/high-availability.md.
//!
//! [`config`] validates the settings, [`store`] is what the loop needs from the
//! distributed store and [`etcd`] provides it, [`decide`] turns one view of the cluster
//! into one action, and [`Ha`] (in `agent.rs`) performs actions: [`Ha::prepare`] before the
//! bootstrap (which role to bootstrap as), [`Ha::spawn`] once postgres is supervised.

mod agent;
pub mod clock;
pub mod config;
pub mod deadman;
pub mod decide;
pub mod etcd;
pub mod failsafe;
mod handover;
pub mod job;
pub mod local;
pub mod status;
pub mod store;
mod switchover;
pub mod sync;
pub mod upstream;
mod watchdog;

pub use agent::{restoring, Ha, Running};
pub use config::{HaArgs, HaConfig, SyncMode};
pub use switchover::{Switchover, SwitchoverError};
