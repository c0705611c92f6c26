//! Which archived WAL the deletion of backups leaves unneeded, by barman-cloud's rules
//! (`_remove_wals_for_backup`, `BackupManager.should_remove_wals` and
//! `get_timelines_to_protect`), replayed backup by backup, oldest first, exactly as
//! `barman-cloud-backup-delete` deletes them:
//!
//! - WAL goes only when no older backup remains (or only `keep:standalone` ones,
//!   whose own begin-to-end WAL stays): an older backup needs the WAL after it.
//! - Then every WAL file whose name sorts before the next remaining backup's
//!   `begin_wal` (or the deleted one's, when none remains) goes, except on timelines
//!   that other backups are on, and except history files.
//!
//! Names compare as strings, timeline first, as in barman: on the next backup's
//! timeline that is "the segments before its first one"; WAL of older timelines
//! that no backup is on sorts lower and goes too; newer timelines sort higher and stay.

use super::catalogue::{Entry, Keep, WalObject};
use std::collections::{BTreeMap, BTreeSet};

/// The WAL that deleting each backup frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStep {
    /// The deleted backup.
    pub backup_id: String,
    /// The keys of the WAL objects that go with it.
    pub keys: Vec<String>,
}

fn timeline_of(name: &str) -> Option<u32> {
    u32::from_str_radix(name.get(..8)?, 16).ok()
}

/// The backup before `id` among the `STATUS_COPY_DONE` ones of `available`.
fn previous<'a>(available: &'a BTreeMap<String, Entry>, id: &str) -> Option<&'a Entry> {
    use std::ops::Bound::{Excluded, Unbounded};
    available
        .range::<str, _>((Unbounded, Excluded(id)))
        .rev()
        .map(|(_, e)| e)
        .find(|e| e.copy_done())
}

/// The backup after `id` among the `STATUS_COPY_DONE` ones of `available`.
fn next<'a>(available: &'a BTreeMap<String, Entry>, id: &str) -> Option<&'a Entry> {
    use std::ops::Bound::{Excluded, Unbounded};
    available
        .range::<str, _>((Excluded(id), Unbounded))
        .map(|(_, e)| e)
        .find(|e| e.copy_done())
}

/// barman's `should_remove_wals`: `None` when an older backup still needs the WAL,
/// else the `(begin_wal, end_wal)` ranges of older `keep:standalone` backups, which
/// stay. `skip_if_standalone` is barman's `skip_wal_cleanup_if_standalone`: true for
/// a delete by id, false under a retention policy.
fn should_remove(
    deleted: &Entry,
    available: &BTreeMap<String, Entry>,
    skip_if_standalone: bool,
) -> Option<Vec<(String, String)>> {
    let mut ranges = Vec::new();
    let mut prev = previous(available, &deleted.backup_id);
    while let Some(p) = prev {
        if p.keep != Some(Keep::Standalone) || skip_if_standalone {
            return None;
        }
        ranges.push((
            p.begin_wal.clone().unwrap_or_default(),
            p.end_wal.clone().unwrap_or_default(),
        ));
        prev = previous(available, &p.backup_id);
    }
    Some(ranges)
}

/// The WAL each deletion frees, for `deleted` (ids of `catalogue`) deleted oldest
/// first. Each WAL object appears in one step at most.
pub fn plan(
    catalogue: &BTreeMap<String, Entry>,
    deleted: &[String],
    wal: &[WalObject],
    skip_if_standalone: bool,
) -> Vec<WalStep> {
    let mut available = catalogue.clone();
    // barman keys its WAL cache by name; an object stored twice (two codecs) goes
    // with its name.
    let mut remaining: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in wal {
        remaining.entry(&w.name).or_default().push(&w.key);
    }
    let mut order: Vec<&String> = deleted.iter().collect();
    order.sort();
    let mut steps = Vec::new();
    for id in order {
        let Some(gone) = available.get(id).cloned() else {
            continue;
        };
        let mut keys = Vec::new();
        if let Some(protected_ranges) = should_remove(&gone, &available, skip_if_standalone) {
            let until = next(&available, id).unwrap_or(&gone);
            let mut protected_tlis: BTreeSet<Option<u32>> = available
                .values()
                .filter(|e| e.backup_id != gone.backup_id)
                .map(|e| e.timeline)
                .collect();
            protected_tlis.remove(&until.timeline);
            if let Some(limit) = until.begin_wal.as_deref() {
                let freed: Vec<&str> = remaining
                    .keys()
                    .copied()
                    .filter(|name| {
                        if name.ends_with(".history") {
                            return false;
                        }
                        if protected_tlis.contains(&timeline_of(name)) {
                            return false;
                        }
                        let seg = name.get(..24).unwrap_or(name);
                        let in_range = protected_ranges
                            .iter()
                            .any(|(b, e)| seg >= b.as_str() && seg <= e.as_str());
                        !in_range && *name < limit
                    })
                    .collect();
                for name in freed {
                    if let Some(k) = remaining.remove(name) {
                        keys.extend(k.into_iter().map(str::to_owned));
                    }
                }
            }
        }
        steps.push(WalStep {
            backup_id: id.clone(),
            keys,
        });
        available.remove(id);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, tli: u32, begin: u32, end: u32, keep: Option<Keep>) -> Entry {
        Entry {
            backup_id: id.into(),
            status: "DONE".into(),
            timeline: Some(tli),
            begin_wal: Some(seg(tli, begin)),
            end_wal: Some(seg(tli, end)),
            end_time: None,
            keep,
            parent: None,
        }
    }

    fn seg(tli: u32, n: u32) -> String {
        format!("{tli:08X}00000000{n:08X}")
    }

    fn wal(names: &[String]) -> Vec<WalObject> {
        names
            .iter()
            .map(|n| WalObject {
                key: format!("s/wals/{}.gz", n),
                name: n.clone(),
            })
            .collect()
    }

    fn cat(entries: &[Entry]) -> BTreeMap<String, Entry> {
        entries
            .iter()
            .map(|e| (e.backup_id.clone(), e.clone()))
            .collect()
    }

    /// The names freed by each step.
    fn freed(c: &[Entry], deleted: &[&str], names: &[String], skip: bool) -> Vec<Vec<String>> {
        let deleted: Vec<String> = deleted.iter().map(|s| s.to_string()).collect();
        plan(&cat(c), &deleted, &wal(names), skip)
            .into_iter()
            .map(|s| {
                s.keys
                    .iter()
                    .map(|k| {
                        k.trim_start_matches("s/wals/")
                            .trim_end_matches(".gz")
                            .to_owned()
                    })
                    .collect()
            })
            .collect()
    }

    fn segs(tli: u32, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
        range.map(|n| seg(tli, n)).collect()
    }

    #[test]
    fn wal_before_the_oldest_remaining_backup_goes_backup_by_backup() {
        let c = [
            e("A", 1, 2, 2, None),
            e("B", 1, 5, 5, None),
            e("C", 1, 8, 8, None),
        ];
        let mut names = segs(1, 1..=10);
        names.push(format!("{}.00000028.backup", seg(1, 5)));
        names.push(format!("{}.00000028.backup", seg(1, 2)));
        names.push("00000001.history".into());
        let out = freed(&c, &["A", "B"], &names, false);
        let mut first = segs(1, 1..=4);
        first.insert(2, format!("{}.00000028.backup", seg(1, 2)));
        assert_eq!(out[0], first, "A goes: everything before B's begin");
        let mut second = segs(1, 5..=7);
        second.insert(1, format!("{}.00000028.backup", seg(1, 5)));
        assert_eq!(out[1], second, "B goes: everything before C's begin");
    }

    #[test]
    fn an_older_backup_keeps_the_wal_of_a_deleted_one() {
        let c = [
            e("A", 1, 2, 2, None),
            e("B", 1, 5, 5, None),
            e("C", 1, 8, 8, None),
        ];
        let names = segs(1, 1..=10);
        // Deleting the middle one frees nothing: A recovers through it.
        assert_eq!(freed(&c, &["B"], &names, true), vec![Vec::<String>::new()]);
        // So does a keep:full older backup under a policy.
        let c = [
            e("A", 1, 2, 2, Some(Keep::Full)),
            e("B", 1, 5, 5, None),
            e("C", 1, 8, 8, None),
        ];
        assert_eq!(freed(&c, &["B"], &names, false), vec![Vec::<String>::new()]);
        // Deleting the newest with an older one left frees nothing either.
        let c = [e("A", 1, 2, 2, None), e("B", 1, 5, 5, None)];
        assert_eq!(freed(&c, &["B"], &names, true), vec![Vec::<String>::new()]);
        // The only backup: WAL before its own begin goes.
        let c = [e("A", 1, 4, 4, None)];
        assert_eq!(freed(&c, &["A"], &names, true), vec![segs(1, 1..=3)]);
    }

    #[test]
    fn standalone_backups_keep_their_own_range_under_a_policy() {
        let c = [
            e("A", 1, 2, 3, Some(Keep::Standalone)),
            e("B", 1, 5, 5, None),
            e("C", 1, 8, 8, None),
        ];
        let names = segs(1, 1..=10);
        let mut want = vec![seg(1, 1)];
        want.extend(segs(1, 4..=7));
        assert_eq!(freed(&c, &["B"], &names, false), vec![want]);
        // A delete by id leaves the WAL alone behind a standalone backup, as barman.
        assert_eq!(freed(&c, &["B"], &names, true), vec![Vec::<String>::new()]);
    }

    #[test]
    fn timelines_with_backups_are_protected() {
        // A and B on timeline 1, C on timeline 2 (which branched at segment 6).
        let c = [
            e("A", 1, 2, 2, None),
            e("B", 1, 4, 4, None),
            e("C", 2, 7, 7, None),
        ];
        let mut names = segs(1, 1..=6);
        names.extend(segs(2, 6..=9));
        names.push(format!("{}.partial", seg(1, 6)));
        names.push("00000002.history".into());
        names.extend(segs(3, 1..=2));
        // A goes: B is next, on timeline 1; C's timeline 2 is protected.
        let out = freed(&c, &["A"], &names, false);
        assert_eq!(out[0], segs(1, 1..=3));
        // A and B go: the second step removes up to C's begin on timeline 2 and
        // every timeline-1 file, which sorts below; timeline 3 sorts above and stays.
        let out = freed(&c, &["A", "B"], &names, false);
        assert_eq!(out[0], segs(1, 1..=3));
        let mut second = segs(1, 4..=6);
        second.push(format!("{}.partial", seg(1, 6)));
        second.push(seg(2, 6));
        assert_eq!(out[1], second);
        // With a backup left on timeline 1 besides, timeline 1 stays (what goes is
        // the WAL of the next backup's timeline before its begin).
        let c = [
            e("A", 1, 2, 2, None),
            e("B", 2, 7, 7, None),
            e("D", 1, 9, 9, None),
        ];
        assert_eq!(freed(&c, &["A"], &names, false), vec![vec![seg(2, 6)]]);
    }

    #[test]
    fn failed_backups_are_not_neighbours_but_their_timelines_count() {
        let mut failed = e("B", 2, 5, 5, None);
        failed.status = "FAILED".into();
        let c = [e("A", 1, 2, 2, None), failed, e("C", 1, 8, 8, None)];
        let mut names = segs(1, 1..=9);
        names.extend(segs(2, 1..=2));
        // C is A's next (B is not COPY_DONE); timeline 2 is protected by B.
        assert_eq!(freed(&c, &["A"], &names, false), vec![segs(1, 1..=7)]);
    }
}
