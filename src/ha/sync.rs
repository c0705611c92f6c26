//! Synchronous mode (`PGWARDEN_SYNC_MODE=on|strict`): which standbys the leader names
//! in `synchronous_standby_names`, and which it may record under the `sync` key. Pure;
//! the loop queries postgres and performs the changes in the safe order:
//!
//! - a standby is recorded only once postgres reports it synchronous and it has flushed
//!   past the end of WAL at the first round it was seen so (every commit acknowledged
//!   before is there, every one after waits for it);
//! - a standby is removed from the record before it is dropped from the setting.
//!
//! So the record never names a standby that may miss an acknowledged commit, and with
//! it, only a recorded standby is promoted.

use super::config::SyncMode;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A standby as the leader's `pg_stat_replication` shows it, streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its application_name, which is its member name.
    pub name: String,
    /// postgres reports it `sync` (or `quorum`).
    pub sync: bool,
    /// WAL it flushed, as a byte position.
    pub flush: u64,
}

/// The standbys to name: the recorded ones still streaming first (a change of
/// synchronous standby is never made for nothing), then the others with the most WAL,
/// up to `count`. `members` are the cluster's member names; others are ignored.
pub fn choose(
    count: u32,
    recorded: &[String],
    streaming: &[Standby],
    members: &[String],
) -> Vec<String> {
    let usable = |s: &&Standby| members.contains(&s.name);
    let mut chosen: Vec<String> = recorded
        .iter()
        .filter(|r| streaming.iter().filter(usable).any(|s| s.name == **r))
        .cloned()
        .collect();
    let mut rest: Vec<&Standby> = streaming
        .iter()
        .filter(usable)
        .filter(|s| !chosen.contains(&s.name))
        .collect();
    rest.sort_by(|a, b| b.flush.cmp(&a.flush).then(a.name.cmp(&b.name)));
    chosen.extend(rest.into_iter().map(|s| s.name.clone()));
    chosen.truncate(count as usize);
    chosen
}

/// What the record becomes: the recorded standbys still named, plus the named ones
/// postgres reports synchronous that flushed at least the position in `since` (the end
/// of WAL when the loop first saw them synchronous).
pub fn record(
    recorded: &[String],
    named: &[String],
    streaming: &[Standby],
    since: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut out: Vec<String> = recorded
        .iter()
        .filter(|r| named.contains(r))
        .cloned()
        .collect();
    for n in named {
        let confirmed = streaming
            .iter()
            .any(|s| s.name == *n && s.sync && since.get(n).is_some_and(|at| s.flush >= *at));
        if confirmed && !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

/// The `synchronous_standby_names` value for `named`: `FIRST n (...)`; with nobody,
/// `*` in strict mode (commits wait for any standby rather than for none) and empty
/// (standalone) in `on` mode. `None` (not rendered) with synchronous mode off, or
/// until the loop names standbys: a member that does not lead, and the bootstrap,
/// run without.
pub fn setting(mode: SyncMode, named: Option<&[String]>) -> Option<String> {
    let named = named?;
    if mode == SyncMode::Off {
        return None;
    }
    if named.is_empty() {
        return Some(if mode == SyncMode::Strict {
            "*".into()
        } else {
            String::new()
        });
    }
    let list: Vec<String> = named
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    Some(format!("FIRST {} ({})", named.len(), list.join(", ")))
}

/// The standbys the leader names now, shared by every clone of the settings so that
/// whoever renders the configuration next writes them; `None` until the loop sets it.
#[derive(Debug, Clone, Default)]
pub struct Named(Arc<RwLock<Option<Vec<String>>>>);

impl Named {
    /// The standbys named.
    pub fn get(&self) -> Option<Vec<String>> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces them; true when they changed.
    pub fn set(&self, names: Option<Vec<String>>) -> bool {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let changed = *g != names;
        *g = names;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, sync: bool, flush: u64) -> Standby {
        Standby {
            name: name.into(),
            sync,
            flush,
        }
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn chooses_recorded_first_then_most_wal() {
        let members = v(&["a", "b", "c"]);
        let streaming = [s("b", false, 10), s("c", false, 20)];
        assert_eq!(choose(1, &[], &streaming, &members), v(&["c"]));
        assert_eq!(choose(1, &v(&["b"]), &streaming, &members), v(&["b"]));
        assert_eq!(choose(2, &v(&["b"]), &streaming, &members), v(&["b", "c"]));
        // A recorded standby no longer streaming is replaced.
        assert_eq!(choose(1, &v(&["a"]), &streaming, &members), v(&["c"]));
        // Not a member (a pg_basebackup, another tool): never named.
        assert_eq!(
            choose(1, &[], &[s("x", false, 99)], &members),
            Vec::<String>::new()
        );
    }

    #[test]
    fn records_only_confirmed_and_drops_before_unnaming() {
        let named = v(&["b"]);
        let since: BTreeMap<String, u64> = [("b".to_owned(), 40)].into();
        let none = Vec::<String>::new();
        // Named, not yet synchronous: not recorded.
        assert_eq!(record(&[], &named, &[s("b", false, 50)], &since), none);
        // Synchronous but not flushed past where it was first seen so: not yet.
        assert_eq!(record(&[], &named, &[s("b", true, 30)], &since), none);
        assert_eq!(record(&[], &named, &[s("b", true, 40)], &since), v(&["b"]));
        assert_eq!(
            record(&[], &named, &[s("b", true, 40)], &BTreeMap::new()),
            none
        );
        // c is recorded but no longer named: dropped from the record.
        assert_eq!(
            record(&v(&["c"]), &named, &[s("b", false, 0)], &since),
            none
        );
    }

    #[test]
    fn renders_the_setting() {
        assert_eq!(setting(SyncMode::Off, Some(&v(&["a"]))), None);
        assert_eq!(setting(SyncMode::Strict, None), None);
        assert_eq!(setting(SyncMode::Strict, Some(&[])).as_deref(), Some("*"));
        assert_eq!(setting(SyncMode::On, Some(&[])).as_deref(), Some(""));
        assert_eq!(
            setting(SyncMode::On, Some(&v(&["a", "b"]))).as_deref(),
            Some("FIRST 2 (\"a\", \"b\")")
        );
    }
}
