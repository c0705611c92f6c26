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
pub fn setting(mode: SyncMode, named: Option<&[String]>, count: usize) -> Option<String> {
    let named = named?;
    if mode == SyncMode::Off {
        return None;
    }
    if named.is_empty() || (mode == SyncMode::Quorum && count == 0) {
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
    Some(match mode {
        SyncMode::Quorum => format!("ANY {} ({})", count.min(named.len()), list.join(", ")),
        _ => format!("FIRST {} ({})", named.len(), list.join(", ")),
    })
}

/// Quorum mode: reads `ANY k (a, b, ...)` (and an empty setting) back into the names
/// and `k`, as postgres reports what it runs with; `None` for anything else.
pub fn parse_any(text: &str) -> Option<(Vec<String>, usize)> {
    let text = text.trim();
    if text.is_empty() {
        return Some((Vec::new(), 0));
    }
    let rest = text.strip_prefix("ANY ")?;
    let (k, list) = rest.split_once('(')?;
    let k: usize = k.trim().parse().ok()?;
    let list = list.trim().strip_suffix(')')?;
    let mut names = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let name = match item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => item.to_owned(),
        };
        if name.is_empty() {
            return None;
        }
        names.push(name);
    }
    names.sort();
    Some((names, k))
}

/// Quorum mode's next step on the leader. The invariant it keeps, whatever step an
/// interrupted leader stopped at: every set of standbys that can acknowledge a commit
/// (`k` of the setting's names `G`) overlaps every set that can promote (a candidate
/// and `q` other voters `V` that are not ahead of it), which holds while `G ⊆ V` and
/// `q ≥ |V| − k`. So the record grows first (new standbys join `V`, `q` rises), then
/// the setting changes, and only once postgres runs with it does the record shrink to
/// the steady state `V = G`, `q = |G| − k` (Patroni's quorum state machine in spirit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumStep {
    /// Write the record: these voters and this quorum.
    Record(Vec<String>, u32),
    /// Set `synchronous_standby_names` to `ANY k (names)`.
    Setting(Vec<String>, usize),
    /// Nothing to do.
    Steady,
}

/// The next quorum step. `record`: the voters and quorum recorded; `applied`: the
/// setting postgres runs with; `wanted`: the standbys streaming now that may be named
/// (sorted); `count`: `PGWARDEN_SYNC_NODE_COUNT`.
pub fn quorum_step(
    record: (&[String], u32),
    applied: (&[String], usize),
    wanted: &[String],
    count: u32,
) -> QuorumStep {
    let k_wanted = (count as usize).min(wanted.len());
    let (voters, q) = record;
    let (named, k) = applied;
    let mut grown: Vec<String> = voters.to_vec();
    for n in named.iter().chain(wanted) {
        if !grown.contains(n) {
            grown.push(n.clone());
        }
    }
    grown.sort();
    let q_grown = grown.len().saturating_sub(k.min(k_wanted)) as u32;
    let q_grown = q_grown.max(q.min(grown.len() as u32));
    let mut current: Vec<String> = voters.to_vec();
    current.sort();
    if (grown.as_slice(), q_grown) != (current.as_slice(), q) {
        return QuorumStep::Record(grown, q_grown);
    }
    if (named, k) != (wanted, k_wanted) {
        return QuorumStep::Setting(wanted.to_vec(), k_wanted);
    }
    let steady_q = (wanted.len() - k_wanted) as u32;
    if (current.as_slice(), q) != (wanted, steady_q) {
        return QuorumStep::Record(wanted.to_vec(), steady_q);
    }
    QuorumStep::Steady
}

/// The standbys the leader names now, shared by every clone of the settings so that
/// whoever renders the configuration next writes them; `None` until the loop sets it.
/// In quorum mode, with how many of them must confirm a commit.
#[derive(Debug, Clone, Default)]
pub struct Named(Arc<RwLock<Option<Counted>>>);

/// Standby names, and how many of them must confirm a commit.
pub type Counted = (Vec<String>, usize);

impl Named {
    /// The standbys named.
    pub fn get(&self) -> Option<Vec<String>> {
        self.get_with_count().map(|(names, _)| names)
    }

    /// The standbys named, and how many must confirm (quorum mode).
    pub fn get_with_count(&self) -> Option<(Vec<String>, usize)> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces them (all must confirm); true when they changed.
    pub fn set(&self, names: Option<Vec<String>>) -> bool {
        self.set_with_count(names.map(|n| {
            let k = n.len();
            (n, k)
        }))
    }

    /// Replaces them and how many must confirm; true when they changed.
    pub fn set_with_count(&self, named: Option<(Vec<String>, usize)>) -> bool {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let changed = *g != named;
        *g = named;
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
        assert_eq!(setting(SyncMode::Off, Some(&v(&["a"])), 1), None);
        assert_eq!(setting(SyncMode::Strict, None, 0), None);
        assert_eq!(
            setting(SyncMode::Strict, Some(&[]), 0).as_deref(),
            Some("*")
        );
        assert_eq!(setting(SyncMode::On, Some(&[]), 0).as_deref(), Some(""));
        assert_eq!(
            setting(SyncMode::On, Some(&v(&["a", "b"])), 2).as_deref(),
            Some("FIRST 2 (\"a\", \"b\")")
        );
        assert_eq!(
            setting(SyncMode::Quorum, Some(&v(&["a", "b", "c"])), 2).as_deref(),
            Some("ANY 2 (\"a\", \"b\", \"c\")")
        );
        assert_eq!(
            setting(SyncMode::Quorum, Some(&v(&["a"])), 0).as_deref(),
            Some("")
        );
        assert_eq!(setting(SyncMode::Quorum, Some(&[]), 0).as_deref(), Some(""));
    }

    #[test]
    fn reads_back_what_postgres_runs_with() {
        assert_eq!(parse_any(""), Some((vec![], 0)));
        assert_eq!(
            parse_any("ANY 2 (\"b\", \"a\", c)"),
            Some((v(&["a", "b", "c"]), 2))
        );
        assert_eq!(
            parse_any("ANY 1 (\"we\"\"ird\")"),
            Some((v(&["we\"ird"]), 1))
        );
        assert_eq!(parse_any("FIRST 1 (a)"), None);
        assert_eq!(parse_any("*"), None);
    }

    /// Every set of standbys that can acknowledge (`k` of `G`) meets every set that can
    /// promote (`q + 1` of `V`): `G ⊆ V` and `q ≥ |V| − k`.
    fn safe(voters: &[String], q: u32, named: &[String], k: usize) -> bool {
        named.iter().all(|n| voters.contains(n)) && q as usize + k >= voters.len()
    }

    #[test]
    fn quorum_steps_keep_acknowledging_and_promoting_sets_overlapping() {
        // From every start, follow the steps to the steady state, checking the
        // invariant after each (the setting applies at once here; in life it
        // applies on reload, and the record is shrunk only once it did).
        type Start = (Vec<String>, u32, Vec<String>, usize, Vec<String>, u32);
        let starts: Vec<Start> = vec![
            // (voters, q, named, k, wanted, count)
            (v(&[]), 0, v(&[]), 0, v(&["a"]), 1),
            (v(&["a"]), 0, v(&["a"]), 1, v(&["a", "b"]), 1),
            (v(&["a", "b"]), 1, v(&["a", "b"]), 1, v(&["a", "b", "c"]), 2),
            (v(&["a", "b", "c"]), 1, v(&["a", "b", "c"]), 2, v(&["a"]), 2),
            (v(&["a", "b", "c"]), 1, v(&["a", "b", "c"]), 2, v(&[]), 2),
            (v(&["a", "b"]), 0, v(&["a", "b"]), 2, v(&["b", "c"]), 2),
            // An interrupted leader's leftovers: a named standby outside the record.
            (v(&["a"]), 0, v(&["a", "x"]), 1, v(&["a"]), 1),
        ];
        for (mut voters, mut q, mut named, mut k, wanted, count) in starts {
            for _ in 0..10 {
                match quorum_step((&voters, q), (&named, k), &wanted, count) {
                    QuorumStep::Record(nv, nq) => {
                        assert!(
                            safe(&nv, nq, &named, k) || !safe(&voters, q, &named, k),
                            "record {nv:?}/{nq} unsafe with {named:?}/{k}"
                        );
                        (voters, q) = (nv, nq);
                    }
                    QuorumStep::Setting(nn, nk) => {
                        assert!(
                            safe(&voters, q, &nn, nk),
                            "setting {nn:?}/{nk} unsafe with {voters:?}/{q}"
                        );
                        (named, k) = (nn, nk);
                    }
                    QuorumStep::Steady => break,
                }
            }
            let k_wanted = (count as usize).min(wanted.len());
            assert_eq!((named.clone(), k), (wanted.clone(), k_wanted));
            assert_eq!(
                (voters, q),
                (wanted.clone(), (wanted.len() - k_wanted) as u32)
            );
        }
    }
}
