//! `pgwarden wal-verify`: is every WAL segment a restore needs in the archive?
//!
//! From the oldest backup's first segment (or, with no backup, the oldest archived
//! segment) to the newest archived one, along the history of the newest timeline: a
//! segment is looked for on the newest timeline that had begun by then, as recovery
//! looks for it. Each missing segment is reported with the backups it makes
//! unrestorable (it lies between their first and last segment) and those it stops
//! short (recovery from them cannot go past it).

use super::info::{BackupInfo, Lsn};
use crate::wal::compress::split_codec;
use crate::wal::names::WalKind;
use crate::wal::present::Presence;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A segment that should be in the archive and is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// Its file name.
    pub segment: String,
    /// Backups that cannot be restored at all without it.
    pub unrestorable_backups: Vec<String>,
    /// Backups whose recovery stops before it.
    pub limited_backups: Vec<String>,
    /// Why an object that is there does not count (a codec pgwarden does not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `OK` or `FAILURE`.
    pub status: &'static str,
    /// The newest timeline in the archive.
    pub timeline: u32,
    /// The first segment checked.
    pub first: Option<String>,
    /// The last segment checked (the newest archived).
    pub last: Option<String>,
    /// Segments checked.
    pub checked: u64,
    /// What is missing.
    pub missing: Vec<Missing>,
}

/// Where each timeline begins, from a `.history` file: `(timeline, switch point)` of
/// every ancestor, oldest first; the file's own timeline begins at the last one.
pub fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, Lsn::parse(f.next()?)?))
        })
        .collect()
}

fn segno(name: &str, seg_size: u64) -> Option<u64> {
    crate::wal::names::WalName::parse(name)?.segno(seg_size)
}

fn seg_name(tli: u32, segno: u64, seg_size: u64) -> String {
    Lsn(segno * seg_size).wal_name(tli, seg_size)
}

/// Checks `keys` (every object under `<server>/wals/`) against `backups`;
/// `histories` maps a timeline to its history file's text.
pub fn verify(
    keys: &[String],
    histories: &BTreeMap<u32, String>,
    backups: &[BackupInfo],
) -> Report {
    let seg_size = backups
        .first()
        .map(|b| b.xlog_segment_size)
        .unwrap_or(16 << 20);
    let mut present: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut newest_tli = 1;
    for key in keys {
        let Some((name, _)) = key.rsplit('/').next().and_then(split_codec) else {
            continue;
        };
        newest_tli = newest_tli.max(name.timeline);
        if name.kind == WalKind::Segment {
            if let Some(n) = name.segno(seg_size) {
                present.insert((name.timeline, n));
            }
        }
    }
    // Timeline begin points along the newest timeline's history.
    let mut begins: Vec<(u32, u64)> = vec![];
    if let Some(text) = histories.get(&newest_tli) {
        let hist = parse_history(text);
        let mut start = 0;
        for (tli, switch) in &hist {
            begins.push((*tli, start));
            start = switch.0 / seg_size;
        }
        begins.push((newest_tli, start));
    } else {
        begins.push((newest_tli, 0));
    }
    // The newest timeline that had begun by `segno`, as recovery looks for it.
    let tli_at = |n: u64| {
        begins
            .iter()
            .rev()
            .find(|(_, b)| *b <= n)
            .map(|(t, _)| *t)
            .unwrap_or(newest_tli)
    };
    let on_path = |&(t, n): &(u32, u64)| tli_at(n) == t;
    let last = present.iter().filter(|p| on_path(p)).map(|(_, n)| *n).max();
    let first = backups
        .iter()
        .filter_map(|b| segno(&b.begin_wal, seg_size))
        .min()
        .or_else(|| present.iter().filter(|p| on_path(p)).map(|(_, n)| *n).min());
    // Each file name under the stems it may be the object of (itself, and without
    // one extension), for the one presence rule, `wal::present::classify`.
    let mut by_stem: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for file in keys.iter().filter_map(|k| k.rsplit('/').next()) {
        by_stem.entry(file).or_default().push(file);
        if let Some((stem, _)) = file.rsplit_once('.') {
            by_stem.entry(stem).or_default().push(file);
        }
    }
    let presence = |name: &str| {
        crate::wal::present::classify(name, by_stem.get(name).into_iter().flatten().copied())
    };
    let mut missing = Vec::new();
    let mut checked = 0;
    if let (Some(first), Some(last)) = (first, last) {
        for n in first..=last {
            checked += 1;
            let t = tli_at(n);
            let unreadable = match presence(&seg_name(t, n, seg_size)) {
                Presence::Readable { .. } => continue,
                Presence::Unreadable { why, .. } => Some(why),
                Presence::Missing => None,
            };
            let mut unrestorable = Vec::new();
            let mut limited = Vec::new();
            for b in backups {
                let (Some(begin), Some(end)) =
                    (segno(&b.begin_wal, seg_size), segno(&b.end_wal, seg_size))
                else {
                    continue;
                };
                if begin <= n && n <= end {
                    unrestorable.push(b.backup_id.clone());
                } else if begin <= n {
                    limited.push(b.backup_id.clone());
                }
            }
            missing.push(Missing {
                segment: seg_name(t, n, seg_size),
                unrestorable_backups: unrestorable,
                limited_backups: limited,
                unreadable,
            });
        }
    }
    Report {
        status: if missing.is_empty() { "OK" } else { "FAILURE" },
        timeline: newest_tli,
        first: first.map(|n| seg_name(tli_at(n), n, seg_size)),
        last: last.map(|n| seg_name(tli_at(n), n, seg_size)),
        checked,
        missing,
    }
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "{}: {} segments checked on the path of timeline {}, from {} to {}\n",
        r.status,
        r.checked,
        r.timeline,
        r.first.as_deref().unwrap_or("-"),
        r.last.as_deref().unwrap_or("-")
    );
    for m in &r.missing {
        out.push_str(&format!("missing {}", m.segment));
        if let Some(why) = &m.unreadable {
            out.push_str(&format!(" (there, but unusable: {why})"));
        }
        if !m.unrestorable_backups.is_empty() {
            out.push_str(&format!(
                "; backups made unrestorable: {}",
                m.unrestorable_backups.join(", ")
            ));
        }
        if !m.limited_backups.is_empty() {
            out.push_str(&format!(
                "; recovery from {} stops before it",
                m.limited_backups.join(", ")
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str, begin: &str, end: &str) -> BackupInfo {
        BackupInfo {
            backup_id: id.into(),
            status: "DONE".into(),
            timeline: 1,
            begin_wal: begin.into(),
            begin_xlog: String::new(),
            end_wal: end.into(),
            end_xlog: String::new(),
            begin_time: String::new(),
            end_time: String::new(),
            version: 150000,
            systemid: "1".into(),
            xlog_segment_size: 16 << 20,
            size: None,
            backup_label: None,
            tablespaces: vec![],
            made_by: "pgwarden".into(),
            extra: Default::default(),
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| match n.len() {
                24 => format!("srv/wals/{}/{n}.zst", &n[..16]),
                _ => format!("srv/wals/{n}"),
            })
            .collect()
    }

    #[test]
    fn finds_gaps_along_the_newest_timeline_and_names_the_backups() {
        let b1 = backup(
            "20260101T000000",
            "000000010000000000000002",
            "000000010000000000000003",
        );
        let b2 = backup(
            "20260102T000000",
            "000000010000000000000005",
            "000000010000000000000005",
        );
        let all = keys(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
        ]);
        let r = verify(&all, &BTreeMap::new(), &[b1.clone(), b2.clone()]);
        assert_eq!((r.status, r.checked), ("OK", 5));

        let gap: Vec<String> = all
            .iter()
            .filter(|k| !k.contains("0000000000000003"))
            .cloned()
            .collect();
        let r = verify(&gap, &BTreeMap::new(), &[b1.clone(), b2.clone()]);
        assert_eq!(r.status, "FAILURE");
        assert_eq!(
            r.missing,
            vec![Missing {
                segment: "000000010000000000000003".into(),
                unrestorable_backups: vec![b1.backup_id.clone()],
                limited_backups: vec![],
                unreadable: None,
            }]
        );
        let gap: Vec<String> = all
            .iter()
            .filter(|k| !k.contains("0000000000000006"))
            .cloned()
            .collect();
        // The newest archived is then 5: nothing after it is expected yet.
        assert_eq!(
            verify(&gap, &BTreeMap::new(), std::slice::from_ref(&b1)).status,
            "OK"
        );
        let gap: Vec<String> = all
            .iter()
            .filter(|k| !k.contains("0000000000000004"))
            .cloned()
            .collect();
        let r = verify(&gap, &BTreeMap::new(), &[b1.clone(), b2]);
        assert_eq!(r.missing[0].limited_backups, vec![b1.backup_id]);
    }

    #[test]
    fn follows_the_timeline_history() {
        // Timeline 2 began at 0/5000100: segment 5 onwards come from timeline 2.
        let hist: BTreeMap<u32, String> =
            [(2, "1\t0/5000100\tno recovery target specified\n".to_owned())].into();
        let b = backup(
            "20260101T000000",
            "000000010000000000000003",
            "000000010000000000000003",
        );
        let mut names = keys(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "000000020000000000000005",
            "000000020000000000000006",
            "00000002.history",
        ]);
        let r = verify(&names, &hist, std::slice::from_ref(&b));
        assert_eq!((r.status, r.timeline, r.checked), ("OK", 2, 4), "{r:?}");
        names.retain(|k| !k.ends_with("000000020000000000000005.zst"));
        let r = verify(&names, &hist, &[b]);
        assert_eq!(r.missing[0].segment, "000000020000000000000005");
    }

    #[test]
    fn counts_a_segment_only_as_the_restore_reads_it() {
        let b = backup(
            "20260101T000000",
            "000000010000000000000002",
            "000000010000000000000002",
        );
        let mut names = keys(&["000000010000000000000002", "000000010000000000000004"]);
        // Segment 3 as barman-cloud may store it, and a `.backup` file sharing its
        // prefix: neither is a segment pgwarden can restore.
        names.push("srv/wals/0000000100000000/000000010000000000000003.bz2".into());
        names.push("srv/wals/0000000100000000/000000010000000000000003.00000028.backup".into());
        let r = verify(&names, &BTreeMap::new(), std::slice::from_ref(&b));
        assert_eq!(r.status, "FAILURE");
        assert_eq!(r.missing[0].segment, "000000010000000000000003");
        let why = r.missing[0].unreadable.as_deref().unwrap_or("");
        assert!(why.contains("compressed with bz2"), "{why}");
        assert!(
            render(&r).contains("(there, but unusable:"),
            "{}",
            render(&r)
        );
        names.retain(|k| !k.ends_with(".bz2"));
        let r = verify(&names, &BTreeMap::new(), &[b]);
        assert_eq!(r.missing[0].unreadable, None);
    }
}
