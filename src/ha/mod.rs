//! Automatic failover (`PGWARDEN_HA=etcd`): only the holder of a leader key, bound to an
//! etcd lease, runs postgres writable. See docs/high-availability.md.
//!
//! [`config`] validates the settings, [`store`] is what the loop needs from the
//! distributed store and [`etcd`] provides it, [`decide`] turns one view of the cluster
//! into one action.

pub mod config;
pub mod decide;
pub mod etcd;
pub mod store;

pub use config::{HaArgs, HaConfig, SyncMode};
