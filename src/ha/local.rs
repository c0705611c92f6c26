//! What the HA loop does to and asks of the local postgres: its position, the leader's
//! slots for the other members, the passfile, and the hard stop of a fence.

use crate::settings::Settings;
use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

/// postgres's own answer about its role and position.
///
/// A standby has no SQL function that names the timeline it replays. While it streams,
/// the WAL receiver's timeline is the one its received position is on; otherwise the
/// timeline is left unknown here and the HA loop asks `IDENTIFY_SYSTEM` (see
/// `Ha::local_facts`). Neither a history file in pg_wal (fetched before streaming on a
/// new timeline, also by a standby that cannot follow it) nor the last restartpoint's
/// timeline says where a standby is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// In recovery (a standby).
    pub in_recovery: bool,
    /// Timeline: the one it writes (primary) or streams (standby); `None` for a standby
    /// that does not stream.
    pub timeline: Option<u32>,
    /// WAL written (primary) or received, else replayed (standby), as a byte position.
    pub received: Option<u64>,
    /// WAL replayed (standby); the write position on a primary.
    pub replayed: Option<u64>,
    /// A standby's WAL receiver is streaming.
    pub streaming: bool,
}

const FACTS: &str = "
SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery()
    THEN (SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming')
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  END,
  pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
    THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
    ELSE pg_current_wal_lsn() END, '0/0')::bigint,
  pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
    THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, '0/0')::bigint,
  EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')";

/// Asks the local postgres; `None` when it does not answer.
pub async fn facts(s: &Settings) -> Option<Facts> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .ok()?;
    let row = client.query_one(FACTS, &[]).await.ok()?;
    let pos = |i: usize| {
        row.get::<_, Option<i64>>(i)
            .and_then(|v| u64::try_from(v).ok())
    };
    Some(Facts {
        in_recovery: row.get(0),
        timeline: row
            .get::<_, Option<i32>>(1)
            .and_then(|v| u32::try_from(v).ok()),
        received: pos(2),
        replayed: pos(3),
        streaming: row.get(4),
    })
}

/// On the leader: the streaming standbys, and the end of WAL, read together.
pub async fn standbys(s: &Settings) -> Result<(Vec<crate::ha::sync::Standby>, u64)> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    let rows = client
        .query(
            "SELECT application_name, sync_state IN ('sync', 'quorum'),
                    COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0'), 0)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint
             FROM pg_stat_replication RIGHT JOIN (SELECT 1) one ON state = 'streaming'",
            &[],
        )
        .await
        .context("read pg_stat_replication")?;
    let mut end = 0;
    let mut out = Vec::new();
    for r in rows {
        end = u64::try_from(r.get::<_, i64>(3)).unwrap_or(0);
        if let Some(name) = r.get::<_, Option<String>>(0) {
            out.push(crate::ha::sync::Standby {
                name,
                sync: r.get::<_, Option<bool>>(1).unwrap_or(false),
                flush: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            });
        }
    }
    Ok((out, end))
}

/// The `synchronous_standby_names` postgres runs with now (after the last reload it
/// has applied, not what the file says).
pub async fn sync_setting(s: &Settings) -> Result<String> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    let row = client
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .context("read synchronous_standby_names")?;
    Ok(row.get(0))
}

/// On the leader: a physical slot for every other member, so that each can stream from
/// it at once (a member re-pointed here asks for its slot by its own name).
pub async fn ensure_slots(s: &Settings, members: &[String]) -> Result<()> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    for m in members {
        let Ok(slot) = crate::pgconf::slot_name(m) else {
            continue;
        };
        client
            .execute(
                // Reserving WAL at once (Patroni does too): a slot without a
                // restart_lsn holds nothing back, and a member that connects a
                // moment later could find the WAL it needs recycled.
                "SELECT pg_create_physical_replication_slot($1::text::name, true)
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::text::name)",
                &[&slot],
            )
            .await
            .with_context(|| format!("create replication slot {slot:?}"))?;
    }
    Ok(())
}

/// On the leader: drops the physical slots of `members` (gone from the cluster), each
/// only while no one streams from it.
pub async fn drop_inactive_slots(s: &Settings, members: &[String]) -> Result<()> {
    if members.is_empty() {
        return Ok(());
    }
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    for m in members {
        let Ok(slot) = crate::pgconf::slot_name(m) else {
            continue;
        };
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1::text::name AND slot_type = 'physical' AND NOT active",
                &[&slot],
            )
            .await
            .with_context(|| format!("drop replication slot {slot:?}"))?;
        if dropped > 0 {
            tracing::info!(slot = %slot, member = %m, "HA: dropped the slot of a member gone from the cluster");
        }
    }
    Ok(())
}

/// On a standby: drops the logical failover slots it kept from when it was the primary
/// (`failover` and not `synced`), and returns their names. Its slot synchronization
/// worker refuses to run beside a slot it did not create itself of the name it
/// synchronizes, and the slot that counts is the leader's: this one is a copy from
/// the past. Such a slot cannot be created on a standby (PostgreSQL refuses
/// `failover` there), so only a former primary has one. A slot someone decodes from
/// is left alone.
pub async fn drop_leftover_failover_slots(s: &Settings) -> Result<Vec<String>> {
    let client = crate::db::connect_local(s, &s.socket_dir, "postgres")
        .await
        .context("connect to the local postgres")?;
    let rows = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots
             WHERE pg_is_in_recovery() AND slot_type = 'logical'
               AND failover AND NOT synced AND NOT active",
            &[],
        )
        .await
        .context("read pg_replication_slots")?;
    let mut dropped = Vec::new();
    for row in rows {
        let slot: String = row.get(0);
        client
            .execute("SELECT pg_drop_replication_slot($1::text::name)", &[&slot])
            .await
            .with_context(|| format!("drop replication slot {slot:?}"))?;
        dropped.push(slot);
    }
    Ok(dropped)
}

/// The replication passfile for any member: in HA mode the upstream changes, so the
/// line matches every host and port.
pub fn write_passfile(s: &Settings) -> Result<()> {
    crate::replica::write_passfile_for(s, "*", "*")
}

/// Stops a postmaster that must accept no more writes: an immediate shutdown (SIGQUIT,
/// no checkpoint) at once, then SIGKILL of the postmaster and each of its children if
/// it is still there after `budget`. Every postgres child calls setsid(), so a signal
/// to the postmaster's process group would miss them: they are found by parent pid.
pub async fn stop_now(postmaster: i32, budget: Duration) {
    // The exit that follows is a fence, not a crash: it must not count towards
    // PGWARDEN_MAX_CRASHES nor wait out a crash backoff.
    crate::supervisor::expect_exit();
    let pm = Pid::from_raw(postmaster);
    let _ = kill(pm, Signal::SIGQUIT);
    let deadline = tokio::time::Instant::now() + budget;
    while tokio::time::Instant::now() < deadline {
        if !alive(postmaster) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let children = children_of(postmaster);
    let _ = kill(pm, Signal::SIGKILL);
    for c in children {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    }
}

/// SIGKILLs a postmaster and each of its children at once, if `postmaster` still is a
/// postgres process (a pid recycled since is left alone).
pub fn kill_now(postmaster: i32) {
    let cmdline = std::fs::read(format!("/proc/{postmaster}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("postgres") || !alive(postmaster) {
        return;
    }
    let children = children_of(postmaster);
    let _ = kill(Pid::from_raw(postmaster), Signal::SIGKILL);
    for c in children {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|(state, _)| state != "Z"),
        Err(_) => false,
    }
}

/// The pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s).map(|(_, ppid)| ppid == parent))
                .unwrap_or(false)
        })
        .collect()
}

/// State and parent pid from a `/proc/<pid>/stat` line. The command name, in
/// parentheses, may hold spaces and parentheses itself: fields start after the last ')'.
fn stat_fields(stat: &str) -> Option<(&str, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        assert_eq!(
            stat_fields("123 (postgres: walwriter ) S 99 123 123 0 -1"),
            Some(("S", 99))
        );
        assert_eq!(stat_fields("7 (a) b) (c) Z 1 7 7"), Some(("Z", 1)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn finds_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(children_of(me).contains(&(child.id() as i32)));
        assert!(alive(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(child.id() as i32));
    }
}
