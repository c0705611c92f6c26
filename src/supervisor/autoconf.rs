//! Keeping `ALTER SYSTEM` off the parameters pgwarden owns while postgres runs (see
//! [`crate::pgconf::autoconf`]).

use super::Supervisor;
use crate::pgconf::autoconf;
use crate::settings::Settings;
use tracing::{error, warn};

impl Supervisor {
    /// Resets owned parameters that postgresql.auto.conf sets, and reloads postgres.
    /// Through `ALTER SYSTEM RESET`, which takes postgres's own lock on the file, so a
    /// concurrent `ALTER SYSTEM` is never lost.
    pub(super) async fn guard_auto_conf(&mut self) {
        let found = match autoconf::owned_in(&self.settings.pgdata) {
            Ok(found) if found.is_empty() => return,
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "cannot read postgresql.auto.conf");
                return;
            }
        };
        match reset(&self.settings, &found).await {
            Ok(()) => self.report_overrides(found),
            // Tried again at the next tick; the next start fixes the file in any case.
            Err(e) => {
                warn!(parameters = ?found, error = %e, "cannot reset owned parameters set by ALTER SYSTEM")
            }
        }
    }

    /// Logs and publishes owned parameters that were taken out of postgresql.auto.conf.
    pub(super) fn report_overrides(&self, found: Vec<String>) {
        if found.is_empty() {
            return;
        }
        let message = autoconf::report(&found);
        error!(parameters = ?found, "{message}");
        self.publish(|st| {
            st.config_error = Some(message);
            st.auto_conf_overrides += found.len() as u64;
        });
    }
}

async fn reset(s: &Settings, names: &[String]) -> Result<(), String> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .map_err(|e| format!("cannot connect to postgres: {e}"))?;
    // One statement each: ALTER SYSTEM refuses to run in a transaction block, which a
    // multi-statement query string is.
    for name in names {
        // `name` is one of pgwarden's own parameter names, not user text.
        client
            .batch_execute(&format!("ALTER SYSTEM RESET \"{name}\""))
            .await
            .map_err(|e| format!("ALTER SYSTEM RESET {name}: {e}"))?;
    }
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| format!("pg_reload_conf(): {e}"))
}
