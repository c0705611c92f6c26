//! Rendering postgresql.conf, pg_hba.conf and pg_ident.conf from settings.
//!
//! Renderers are pure: settings in, file text out. Every value is quoted and a value
//! holding a newline is refused. [`write()`] puts the files in place atomically and only
//! when their content changed; [`validate`] asks postgres itself to parse the result.

pub mod adopt;
pub mod autoconf;
pub mod failover_slots;
pub mod fragment;
pub mod hba;
pub mod quote;
pub mod tuning;
mod validate;

pub use quote::NewlineError;
pub use validate::{validate, ValidationError};

use crate::fsutil::{self, Owner};
use crate::settings::Settings;
use std::io;
use std::path::Path;
use tuning::Resources;

/// The base configuration initdb wrote (locale, time zone, text search), kept aside so
/// that pgwarden can own postgresql.conf while still honouring it.
pub const BASE_CONF: &str = "postgresql.base.conf";

/// The three rendered files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Text of postgresql.conf.
    pub postgresql_conf: String,
    /// Text of pg_hba.conf.
    pub pg_hba: String,
    /// Text of pg_ident.conf.
    pub pg_ident: String,
}

/// Which files [`write()`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// postgresql.conf changed.
    pub postgresql_conf: bool,
    /// pg_hba.conf or pg_ident.conf changed.
    pub hba: bool,
}

/// Renders all three files for a data directory at `data_dir`.
pub fn render(
    s: &Settings,
    data_dir: &Path,
    resources: &Resources,
) -> Result<Rendered, NewlineError> {
    Ok(Rendered {
        postgresql_conf: render_postgresql_conf(s, data_dir, resources)?,
        pg_hba: render_hba(s)?,
        pg_ident: render_ident(s)?,
    })
}

fn line(name: &str, value: &str) -> Result<String, NewlineError> {
    Ok(format!("{name} = {}\n", quote::conf_value(name, value)?))
}

/// Renders postgresql.conf: initdb's base, then sized defaults, then the user fragment,
/// then the parameters pgwarden owns, last so that nothing can override them.
pub fn render_postgresql_conf(
    s: &Settings,
    data_dir: &Path,
    resources: &Resources,
) -> Result<String, NewlineError> {
    let mut out = String::from(
        "# Written by pgwarden on every start and reload; edits here are lost.\n\
         # Put your settings in the file named by PGWARDEN_USER_CONF.\n\n",
    );
    out.push_str(&format!(
        "include_if_exists = {}\n\n",
        quote::conf_value("include", BASE_CONF)?
    ));

    out.push_str(
        "# Defaults (sized from the container's limits; the user fragment overrides them)\n",
    );
    out += &line("cluster_name", &s.name)?;
    out += &line("wal_log_hints", "on")?;
    out += &line("max_wal_senders", "10")?;
    out += &line("max_replication_slots", "10")?;
    out += &line("max_slot_wal_keep_size", &s.max_slot_wal_keep_size)?;
    // Keeps a little WAL for a standby that is briefly behind without its slot (just
    // after a failover, before it has recreated its slot on the new primary).
    out += &line("wal_keep_size", "256MB")?;
    if s.archive.is_some() {
        // Bounds how much committed work an idle primary leaves outside the archive.
        out += &line("archive_timeout", "60s")?;
        if s.major_version >= 17 {
            // Incremental backups read the blocks changed since the last backup from
            // the WAL summaries instead of every page (PostgreSQL 17+).
            out += &line("summarize_wal", "on")?;
        }
    }
    for (name, value) in tuning::tune(resources) {
        out += &line(name, &value)?;
    }

    if !s.adopted.conf.entries.is_empty() {
        out.push_str(&format!(
            "\n# Adopted from {}: this PGDATA's own settings from before pgwarden\n\
             # (edit that file to change them; PGWARDEN_USER_CONF and the command line win)\n",
            adopt::ORIGINAL_CONF
        ));
        for e in &s.adopted.conf.entries {
            out += &line(&e.name, &e.value)?;
        }
    }

    match &s.user_conf_path {
        Some(p) => out.push_str(&format!(
            "\n# User fragment: {}\n",
            quote::conf_value("PGWARDEN_USER_CONF", &p.to_string_lossy())?
        )),
        None => out.push_str("\n# User fragment: none (PGWARDEN_USER_CONF is not set)\n"),
    }
    for e in &s.user_conf.entries {
        out += &line(&e.name, &e.value)?;
    }
    if !s.command_line.entries.is_empty() {
        out.push_str("\n# Command line (pgwarden postgres -c ...)\n");
        for e in &s.command_line.entries {
            out += &line(&e.name, &e.value)?;
        }
    }

    let data = data_dir.to_string_lossy();
    out.push_str("\n# Owned by pgwarden\n");
    out += &line("listen_addresses", "*")?;
    out += &line("port", &s.port.to_string())?;
    out += &line("unix_socket_directories", &s.socket_dir.to_string_lossy())?;
    out += &line("hba_file", &format!("{data}/pg_hba.conf"))?;
    out += &line("ident_file", &format!("{data}/pg_ident.conf"))?;
    out += &line("wal_level", s.user_value("wal_level").unwrap_or("replica"))?;
    out += &line("hot_standby", "on")?;
    out += &line("log_destination", "stderr")?;
    out += &line("logging_collector", "off")?;
    out += &line("log_line_prefix", crate::logging::POSTGRES_LOG_PREFIX)?;
    out += &line("restart_after_crash", "off")?;
    let exe = quote::shell(&s.exe.to_string_lossy());
    match &s.archive {
        Some(_) => {
            out += &line("archive_mode", "on")?;
            out += &line("archive_command", &format!("{exe} wal-archive %p"))?;
        }
        None => out += &line("archive_mode", "off")?,
    }
    if s.archive.is_some() || s.restore.is_some() {
        // Used only in recovery and on standbys; from the restore archive while
        // recovering from a backup (the WAL daemon decides).
        out += &line("restore_command", &format!("{exe} wal-restore %f %p"))?;
    }
    out += &recovery_floor(s, resources)?;
    if let Some(r) = &s.restore {
        // A target means something only to the recovery from the backup: it is written
        // while PGDATA is about to be restored or still recovering, and dropped once
        // postgres has promoted (and removed recovery.signal).
        let recovering = !data_dir.join("PG_VERSION").exists()
            || data_dir
                .join(crate::settings::restore::RECOVERY_SIGNAL)
                .exists();
        let has_target = r.target != crate::settings::restore::RecoveryTarget::End;
        if recovering && s.role == crate::settings::Role::Primary && has_target {
            out.push_str(&format!(
                "\n# Recovery from the backup ({})\n",
                r.target.setting()
            ));
            for (name, value) in r.target.conf() {
                out += &line(name, &value)?;
            }
            out += &line("recovery_target_action", "promote")?;
        }
    }
    // Used only while standby.signal exists, so harmless on a primary; present whenever a
    // primary is configured so that a demoted instance needs no second render.
    let failover_slots = s.failover_slots();
    // The slot synchronization worker connects to a database of the primary; the WAL
    // receiver ignores dbname.
    let dbname = match failover_slots.enabled {
        true => failover_slots::SYNC_DBNAME,
        false => "replication",
    };
    // A standby kept on data pg_rewind could not rejoin stays on its own timeline (see
    // pgdata::REWIND_KEPT); any other follows its primary's newest.
    let timeline = match data_dir.join(crate::pgdata::REWIND_KEPT).exists() {
        true => "current",
        false => "latest",
    };
    if let Some(conninfo) = s.primary_conninfo(dbname) {
        out += &line("primary_conninfo", &conninfo)?;
        out += &line("primary_slot_name", &s.slot_name())?;
        out += &line("recovery_target_timeline", timeline)?;
    } else if s.ha.is_some() {
        // A postmaster-level parameter: with HA the upstream comes and goes with the
        // leader, and dropping this line on a reload would leave it pending a restart.
        out += &line("recovery_target_timeline", timeline)?;
    }
    // Ignored on a standby; on the leader the HA loop names the standbys.
    if let Some(value) = s.ha.as_ref().and_then(|h| {
        let named = s.sync_named.get_with_count();
        let count = named.as_ref().map_or(0, |(_, k)| *k);
        crate::ha::sync::setting(
            h.sync_mode,
            named.as_ref().map(|(n, _)| n.as_slice()),
            count,
        )
    }) {
        out += &line("synchronous_standby_names", &value)?;
    }
    // Rendered on every member: a standby uses the first two, a primary the last.
    if failover_slots.enabled {
        out += &line("sync_replication_slots", "on")?;
        out += &line("hot_standby_feedback", "on")?;
    }
    if let Some(slots) = &failover_slots.standby_slots {
        out += &line("synchronized_standby_slots", slots)?;
    }
    Ok(out)
}

/// postgres's own defaults of the parameters in [`Settings::recovery_floor`].
fn builtin_default(name: &str) -> i64 {
    match name {
        "max_connections" => 100,
        "max_worker_processes" => 8,
        "max_wal_senders" => 10,
        "max_locks_per_transaction" => 64,
        _ => 0,
    }
}

/// Raises the parameters recovery needs to the source's values where what would be in
/// force (the user's value, else pgwarden's default, else postgres's) is lower: a
/// standby refuses to replay below them, so a lower value can only stop the restore.
fn recovery_floor(s: &Settings, resources: &Resources) -> Result<String, NewlineError> {
    let defaults = tuning::tune(resources);
    let mut out = String::new();
    for (name, floor) in &s.recovery_floor {
        let configured = s
            .user_value(name)
            .or_else(|| {
                defaults
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            })
            .or((name == "max_wal_senders").then_some("10"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| builtin_default(name));
        if *floor > configured {
            out += &line(name, &floor.to_string())?;
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    Ok(format!(
        "\n# Raised to the source cluster's values, which recovery needs at least\n{out}"
    ))
}

/// Name of the pg_ident.conf map that lets pgwarden in over the socket without a password.
pub const IDENT_MAP: &str = "pgwarden";

/// Renders pg_hba.conf: pgwarden's own access, the replication rule, the user's rules,
/// then password authentication for everything else. Nothing is trusted over TCP.
pub fn render_hba(s: &Settings) -> Result<String, NewlineError> {
    let superuser = quote::hba_name("POSTGRES_USER", &s.superuser)?;
    let mut out = String::from(
        "# Written by pgwarden on every start and reload; edits here are lost.\n\
         # Put your rules in the file named by PGWARDEN_USER_HBA.\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n\n\
         # pgwarden's own connection over the unix socket (peer, mapped in pg_ident.conf)\n",
    );
    out.push_str(&format!("local all {superuser} peer map={IDENT_MAP}\n"));
    // So that a hand-run pg_basebackup or pg_receivewal over the socket works too,
    // and pgwarden backup.
    out.push_str(&format!(
        "local replication {superuser} peer map={IDENT_MAP}\n"
    ));
    if s.replication_password.is_some() {
        let repl = quote::hba_name("PGWARDEN_REPLICATION_USER", &s.replication_user)?;
        out.push_str("\n# Streaming replication (PGWARDEN_ALLOWED_NETWORK)\n");
        for net in &s.allowed_networks {
            out.push_str(&format!("host replication {repl} {net} scram-sha-256\n"));
        }
        if s.failover_slots().enabled {
            // The slot synchronization worker of a standby reads the primary's slots
            // over an ordinary connection, whatever POSTGRES_HOST_AUTH_METHOD allows.
            out.push_str("\n# Failover slots: standbys read the primary's logical slots\n");
            for net in &s.allowed_networks {
                out.push_str(&format!(
                    "host {} {repl} {net} scram-sha-256\n",
                    failover_slots::SYNC_DBNAME
                ));
            }
        }
    }
    out.push_str("\n# User rules\n");
    for rule in &s.user_hba {
        let text = rule.render();
        quote::conf_value("PGWARDEN_USER_HBA", &text)?;
        out.push_str(&text);
        out.push('\n');
    }
    if !s.adopted.hba.is_empty() {
        out.push_str(&format!(
            "\n# Adopted from {}: this PGDATA's own rules from before pgwarden\n",
            adopt::ORIGINAL_HBA
        ));
        for rule in &s.adopted.hba {
            let text = rule.render();
            quote::conf_value(adopt::ORIGINAL_HBA, &text)?;
            out.push_str(&text);
            out.push('\n');
        }
    }
    if s.host_auth_method == "trust" {
        // As in the official image with POSTGRES_HOST_AUTH_METHOD=trust.
        out.push_str("\n# WARNING: POSTGRES_HOST_AUTH_METHOD=trust: no password for anyone who can connect\nlocal all all trust\nhost all all all trust\n");
    } else {
        out.push_str(&format!(
            "\n# Everything else needs a password (POSTGRES_HOST_AUTH_METHOD)\nlocal all all scram-sha-256\nhost all all all {}\n",
            s.host_auth_method
        ));
    }
    Ok(out)
}

/// Renders pg_ident.conf: the OS users pgwarden and postgres run as may log in as the
/// superuser over the socket, then the user's maps.
pub fn render_ident(s: &Settings) -> Result<String, NewlineError> {
    let superuser = quote::hba_name("POSTGRES_USER", &s.superuser)?;
    let mut os_users = vec![s.os_user.clone()];
    if let Some(r) = &s.run_as {
        if !os_users.contains(&r.name) {
            os_users.push(r.name.clone());
        }
    }
    let mut out = String::from("# Written by pgwarden.\n# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n");
    for u in os_users {
        let u = quote::hba_name("OS user", &u)?;
        out.push_str(&format!("{IDENT_MAP} {u} {superuser}\n"));
    }
    out.push_str("\n# User maps (PGWARDEN_USER_IDENT)\n");
    for map in &s.user_ident {
        let text = map.render();
        quote::conf_value("PGWARDEN_USER_IDENT", &text)?;
        out.push_str(&text);
        out.push('\n');
    }
    Ok(out)
}

/// Writes the rendered files into `data_dir`, atomically, skipping unchanged ones.
pub fn write(r: &Rendered, data_dir: &Path, owner: Option<Owner>) -> io::Result<Changed> {
    let conf = fsutil::write_atomic(
        &data_dir.join("postgresql.conf"),
        r.postgresql_conf.as_bytes(),
        owner,
        0o600,
    )?;
    let hba = fsutil::write_atomic(
        &data_dir.join("pg_hba.conf"),
        r.pg_hba.as_bytes(),
        owner,
        0o600,
    )?;
    let ident = fsutil::write_atomic(
        &data_dir.join("pg_ident.conf"),
        r.pg_ident.as_bytes(),
        owner,
        0o600,
    )?;
    Ok(Changed {
        postgresql_conf: conf,
        hba: hba || ident,
    })
}

/// Renders, validates with postgres, and writes the configuration of `data_dir`. Nothing
/// is written when validation fails, so the running configuration stays in place.
pub async fn apply(
    s: &Settings,
    data_dir: &Path,
    resources: &Resources,
    runner: &crate::process::Runner,
) -> anyhow::Result<Changed> {
    use anyhow::Context;
    let rendered = render(s, data_dir, resources)?;
    validate(&rendered, &s.bin("postgres"), s.run_as.as_ref(), runner)
        .await
        .context(s.user_layer_name())?;
    write(&rendered, data_dir, s.run_as.as_ref().map(|u| u.owner()))
        .with_context(|| format!("cannot write the configuration into {}", data_dir.display()))
}

/// Turns an instance name into a replication slot name: lower case, `[a-z0-9_]`, at
/// most 63 bytes. Fails when nothing meaningful is left.
pub fn slot_name(name: &str) -> Result<String, String> {
    let slot: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !slot.chars().any(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{name:?} cannot become a replication slot name (it needs letters or digits); set PGWARDEN_NAME"
        ));
    }
    if slot.len() > 63 {
        return Err(format!(
            "{name:?} is longer than the 63 bytes a replication slot name may have"
        ));
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises_slot_names() {
        assert_eq!(slot_name("pg-0.pg.default").unwrap(), "pg_0_pg_default");
        assert!(slot_name("---").is_err());
        assert!(slot_name("").is_err());
        assert!(slot_name(&"a".repeat(64)).is_err());
    }
}
