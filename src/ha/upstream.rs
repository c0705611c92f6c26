//! The member a standby streams from, when the HA loop chooses it. Shared by every
//! clone of [`crate::settings::Settings`], so that whoever renders the configuration
//! next (a reload, a restart) writes the current leader into primary_conninfo.

use std::sync::{Arc, RwLock};

/// Where to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The leader's member name.
    pub name: String,
    /// Its advertised host.
    pub host: String,
    /// Its postgres port.
    pub port: u16,
}

/// A shared, changeable upstream; empty unless HA set one.
#[derive(Debug, Clone, Default)]
pub struct Upstream(Arc<RwLock<Option<Target>>>);

impl Upstream {
    /// The current target.
    pub fn get(&self) -> Option<Target> {
        // A poisoned lock still holds a whole value: the writer only replaces it.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the target; true when it changed.
    pub fn set(&self, target: Option<Target>) -> bool {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let changed = *g != target;
        *g = target;
        changed
    }
}
