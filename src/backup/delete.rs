//! `pgwarden backup-delete` and the retention run after each backup: what to delete
//! (a pure plan over the catalogue), checked, then deleted in barman-cloud's order.
//!
//! For each backup, oldest first: a `backup.deleting` marker (from then on the backup
//! is never listed or restored, whatever is left of it), its `backup.info`, its data
//! objects, the WAL it leaves unneeded, and the marker last. A deletion cut short (a
//! kill, an outage) is finished by the next retention run. Retention also removes the
//! orphans: directories without `backup.info` older than
//! [`super::marker::RUNNING_LEASE`]; a younger one is a backup being taken, and the
//! WAL from its `backup.running` marker's segment on is kept for it.

use super::catalogue::{Catalogue, Entry, Keep};
use super::marker::{classify_unlisted, Unlisted, DELETING, RUNNING};
use super::policy::Policy;
use super::retention::{self, RetentionError, Verdict};
use super::walclean;
use crate::wal::storage::{Bytes, Retrying, Storage};
use anyhow::Context;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The backups a policy finds OBSOLETE.
    Policy(Policy),
    /// One backup.
    BackupId(String),
}

/// Why nothing was deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedError {
    /// `--backup-id` names no listed backup.
    #[error("backup {0} is not in the archive (no base/{0}/backup.info); nothing was deleted")]
    UnknownBackup(String),
    /// A keep annotation protects the backup, as in barman.
    #[error("backup {0} has a keep annotation ({1}); release it first (barman-cloud-backup-keep --release); nothing was deleted")]
    Kept(String, &'static str),
    /// The last DONE backup: the archive's WAL would have no base left.
    #[error("backup {0} is the only DONE backup in the archive; deleting it would leave its WAL unusable; nothing was deleted")]
    OnlyBackup(String),
    /// Incremental backups build on it.
    #[error("backup {0} is needed by the incremental backup{s} {1} built on it; delete {them} first; nothing was deleted", s = if .1.contains(',') { "s" } else { "" }, them = if .1.contains(',') { "them" } else { "it" })]
    NeededByIncremental(String, String),
    /// The policy cannot be applied.
    #[error("{0}; nothing was deleted")]
    Retention(#[from] RetentionError),
    /// A safety check on the plan: a WAL file a remaining backup needs was selected.
    #[error("refusing: {wal} would be deleted but backup {backup} needs it; nothing was deleted")]
    WouldBreak {
        /// The WAL file.
        wal: String,
        /// The backup that needs it.
        backup: String,
    },
}

/// What a step deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A listed backup: marked, then deleted.
    Backup,
    /// A backup whose deletion was cut short: the rest of it.
    Unfinished,
    /// A directory without `backup.info` past the lease: everything in it.
    Orphan,
}

/// One backup to delete, and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its id.
    pub backup_id: String,
    /// What it is.
    pub kind: StepKind,
    /// Every object under its directory but `backup.info` and the deletion marker.
    pub data: Vec<String>,
    /// Its `backup.info` (empty when it has none).
    pub info: String,
    /// The `backup.deleting` marker's key.
    pub marker: String,
    /// The WAL objects it leaves unneeded.
    pub wal: Vec<String>,
}

/// The plan: the policy's verdicts (empty for a delete by id) and the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Each backup's verdict, newest first.
    pub report: Vec<(String, Verdict)>,
    /// The deletions, oldest first.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The ids of the deleted backups.
    pub fn backup_ids(&self) -> Vec<String> {
        self.ids(StepKind::Backup)
    }

    /// The ids of the steps of one kind.
    pub fn ids(&self, kind: StepKind) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.backup_id.clone())
            .collect()
    }

    /// WAL objects deleted.
    pub fn wal_count(&self) -> usize {
        self.steps.iter().map(|s| s.wal.len()).sum()
    }
}

/// Decides what to delete; a pure function of the catalogue and `now`.
pub fn plan(cat: &Catalogue, selection: &Selection, now: SystemTime) -> Result<Plan, RefusedError> {
    let (report, ids, skip_if_standalone) = match selection {
        Selection::Policy(policy) => {
            let entries: Vec<Entry> = cat.backups.values().cloned().collect();
            let report = retention::classify(&entries, policy, now)?;
            let mut report = report;
            let needed = needed_by_chains(cat, &report);
            for (id, v) in report.iter_mut() {
                if *v == Verdict::Obsolete && needed.contains(id.as_str()) {
                    *v = Verdict::Chain;
                }
            }
            let mut ids: Vec<String> = report
                .iter()
                .filter(|(_, v)| *v == Verdict::Obsolete)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            (report, ids, false)
        }
        Selection::BackupId(id) => {
            let entry = cat
                .backups
                .get(id)
                .ok_or_else(|| RefusedError::UnknownBackup(id.clone()))?;
            if let Some(k) = entry.keep {
                let target = match k {
                    Keep::Full => "full",
                    Keep::Standalone => "standalone",
                };
                return Err(RefusedError::Kept(id.clone(), target));
            }
            let mut dependents: Vec<&str> = cat
                .backups
                .values()
                .filter(|e| e.parent.as_deref() == Some(id.as_str()))
                .map(|e| e.backup_id.as_str())
                .collect();
            dependents.sort();
            if !dependents.is_empty() {
                return Err(RefusedError::NeededByIncremental(
                    id.clone(),
                    dependents.join(", "),
                ));
            }
            if entry.done() && cat.backups.values().filter(|e| e.done()).count() == 1 {
                return Err(RefusedError::OnlyBackup(id.clone()));
            }
            (Vec::new(), vec![id.clone()], true)
        }
    };
    let wal = walclean::plan(&cat.backups, &ids, &cat.wal, skip_if_standalone);
    let marker_of = |id: &str| {
        cat.info_keys
            .get(id)
            .and_then(|k| k.strip_suffix("backup.info"))
            .map(|dir| format!("{dir}{DELETING}"))
            .unwrap_or_default()
    };
    // The oldest segment number a backup being taken may need: no WAL from it on
    // goes, on any timeline (its timeline may not be the one it began on by the time
    // it ends).
    let mut running_from: Option<String> = None;
    let mut leftovers = Vec::new();
    for (id, (keys, marker)) in &cat.unlisted {
        match classify_unlisted(id, marker.as_ref(), now) {
            Unlisted::Running(begin) => {
                let seg = begin
                    .as_deref()
                    .and_then(|b| b.get(8..24))
                    // A running backup whose marker cannot be read: keep all WAL.
                    .unwrap_or("")
                    .to_owned();
                if running_from.as_ref().is_none_or(|r| seg < *r) {
                    running_from = Some(seg);
                }
            }
            Unlisted::Orphan if matches!(selection, Selection::Policy(_)) => {
                let (mut data, last): (Vec<String>, Vec<String>) =
                    keys.iter().cloned().partition(|k| !k.ends_with(RUNNING));
                data.extend(last);
                leftovers.push(Step {
                    backup_id: id.clone(),
                    kind: StepKind::Orphan,
                    data,
                    info: String::new(),
                    marker: String::new(),
                    wal: Vec::new(),
                });
            }
            Unlisted::Orphan => {}
        }
    }
    if matches!(selection, Selection::Policy(_)) {
        for (id, keys) in &cat.deleting {
            // backup.info first (barman-cloud lists by it), the marker last.
            let (marker, rest): (Vec<String>, Vec<String>) =
                keys.iter().cloned().partition(|k| k.ends_with(DELETING));
            let (info, data): (Vec<String>, Vec<String>) =
                rest.into_iter().partition(|k| k.ends_with("/backup.info"));
            leftovers.push(Step {
                backup_id: id.clone(),
                kind: StepKind::Unfinished,
                data,
                info: info.into_iter().next().unwrap_or_default(),
                marker: marker.into_iter().next().unwrap_or_default(),
                wal: Vec::new(),
            });
        }
    }
    let wal_names: std::collections::BTreeMap<&str, &str> = cat
        .wal
        .iter()
        .map(|w| (w.key.as_str(), w.name.as_str()))
        .collect();
    let spared = |key: &String| match (&running_from, wal_names.get(key.as_str())) {
        (Some(from), Some(name)) => name.get(8..24).is_some_and(|seg| seg >= from.as_str()),
        _ => false,
    };
    let mut steps: Vec<Step> = wal
        .into_iter()
        .map(|w| Step {
            data: cat.objects.get(&w.backup_id).cloned().unwrap_or_default(),
            info: cat.info_keys.get(&w.backup_id).cloned().unwrap_or_default(),
            marker: marker_of(&w.backup_id),
            kind: StepKind::Backup,
            backup_id: w.backup_id,
            wal: w.keys.into_iter().filter(|k| !spared(k)).collect(),
        })
        .collect();
    steps.extend(leftovers);
    let plan = Plan { report, steps };
    check(cat, &plan)?;
    Ok(plan)
}

/// The backups an incremental still needs: every backup the policy keeps (any verdict
/// but obsolete) and every backup being taken (its marker names its parent) needs its
/// whole chain, back to the full backup.
fn needed_by_chains<'a>(
    cat: &'a Catalogue,
    report: &[(String, Verdict)],
) -> std::collections::BTreeSet<&'a str> {
    let mut needed = std::collections::BTreeSet::new();
    let kept = report
        .iter()
        .filter(|(_, v)| *v != Verdict::Obsolete)
        .filter_map(|(id, _)| cat.backups.get(id))
        .filter_map(|e| e.parent.as_deref());
    let running = cat
        .unlisted
        .values()
        .filter_map(|(_, m)| m.as_ref()?.parent.as_deref());
    for start in kept.chain(running) {
        let mut at = Some(start);
        while let Some(id) = at {
            let Some(e) = cat.backups.get_key_value(id) else {
                break;
            };
            if !needed.insert(e.0.as_str()) {
                break;
            }
            at = e.1.parent.as_deref();
        }
    }
    needed
}

/// The safety net under barman's rules: no remaining DONE backup loses a WAL file it
/// needs (from its begin on its timeline; a `keep:standalone` one, from its begin to
/// its end).
fn check(cat: &Catalogue, plan: &Plan) -> Result<(), RefusedError> {
    let gone: std::collections::BTreeSet<&str> =
        plan.steps.iter().map(|s| s.backup_id.as_str()).collect();
    let names: std::collections::BTreeMap<&str, &str> = cat
        .wal
        .iter()
        .map(|w| (w.key.as_str(), w.name.as_str()))
        .collect();
    for key in plan.steps.iter().flat_map(|s| &s.wal) {
        let Some(name) = names.get(key.as_str()) else {
            continue;
        };
        let seg = name.get(..24).unwrap_or(name);
        let tli = u32::from_str_radix(seg.get(..8).unwrap_or(""), 16).ok();
        for b in cat.backups.values() {
            if gone.contains(b.backup_id.as_str()) || !b.done() || b.timeline != tli {
                continue;
            }
            let (Some(begin), end) = (b.begin_wal.as_deref(), b.end_wal.as_deref()) else {
                continue;
            };
            let needed = match b.keep {
                Some(Keep::Standalone) => seg >= begin && end.is_none_or(|e| seg <= e),
                _ => seg >= begin,
            };
            if needed {
                return Err(RefusedError::WouldBreak {
                    wal: (*name).to_owned(),
                    backup: b.backup_id.clone(),
                });
            }
        }
    }
    Ok(())
}

/// What was deleted (or would be, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Backups.
    pub backups: Vec<String>,
    /// WAL objects.
    pub wal: usize,
    /// Directories of deletions cut short and orphans, removed.
    pub leftovers: Vec<String>,
}

/// Deletes what `plan` says, in order, calling `done` with each key once it is gone
/// (or, with `dry_run`, instead of deleting it). Each storage call retries transient
/// failures within `budget`. Stops at the first failure; what is left is listed
/// still, and the next run takes it up again.
pub async fn execute<S: Storage + Clone + 'static>(
    storage: &S,
    plan: &Plan,
    dry_run: bool,
    budget: Duration,
    done: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let delete = |key: String| {
        let s = storage.clone();
        async move {
            Retrying::new(&s, budget, CancellationToken::new())
                .delete(&key)
                .await
                .with_context(|| format!("delete {key}"))
                .map(|()| key)
        }
    };
    for step in &plan.steps {
        if step.kind == StepKind::Backup && !dry_run {
            // From here on the backup is never listed or restored, whatever is left
            // of it; the next run finishes a deletion cut short.
            let body = Bytes::from_static(b"deleting\n");
            let sha = crate::wal::sha256_hex(&body);
            Retrying::new(storage, budget, CancellationToken::new())
                .put_new(&step.marker, body, &sha)
                .await
                .with_context(|| format!("mark {} for deletion", step.backup_id))?;
        }
        // backup.info first: barman-cloud lists by it and does not know the marker.
        let info = Some(&step.info).filter(|k| !k.is_empty());
        for key in info.into_iter().chain(&step.data) {
            if !dry_run {
                delete(key.clone()).await?;
            }
            done(key);
        }
        // No log line here: the command line prints its own lines on stdout, where
        // the log goes too, and `pgwarden run` logs the summary.
        match step.kind {
            StepKind::Backup => summary.backups.push(step.backup_id.clone()),
            StepKind::Unfinished | StepKind::Orphan => {
                summary.leftovers.push(step.backup_id.clone())
            }
        }
        if dry_run {
            step.wal.iter().for_each(|k| done(k));
        } else {
            // WAL goes in parallel: a first run on an old archive may have thousands.
            let mut set = tokio::task::JoinSet::new();
            let mut keys = step.wal.iter();
            loop {
                while set.len() < 8 {
                    match keys.next() {
                        Some(k) => {
                            set.spawn(delete(k.clone()));
                        }
                        None => break,
                    }
                }
                let Some(joined) = set.join_next().await else {
                    break;
                };
                let key = joined.context("a WAL deletion task")??;
                done(&key);
            }
        }
        summary.wal += step.wal.len();
        if !step.marker.is_empty() && !dry_run {
            delete(step.marker.clone()).await?;
        }
    }
    Ok(summary)
}

/// Reads the catalogue and plans; `budget` bounds the reading's retries.
pub async fn prepare<S: Storage>(
    storage: &S,
    server_base: &str,
    selection: &Selection,
    now: SystemTime,
    budget: Duration,
) -> anyhow::Result<(Catalogue, Plan)> {
    let reader = Retrying::new(storage, budget, CancellationToken::new());
    let cat = super::catalogue::load(&reader, server_base)
        .await
        .context("read the catalogue")?;
    // Names compared by the thousand on a large archive: off the async workers.
    let selection = selection.clone();
    tokio::task::spawn_blocking(move || {
        let plan = plan(&cat, &selection, now)?;
        anyhow::Ok((cat, plan))
    })
    .await
    .context("the planning thread")?
}

/// The policy's verdicts, one line a backup: `backup <id> <VERDICT>`.
pub fn render_report(plan: &Plan) -> String {
    plan.report
        .iter()
        .map(|(id, v)| format!("backup {id} {}\n", v.as_str()))
        .collect()
}

/// The closing line.
pub fn render_summary(plan: &Plan, dry_run: bool) -> String {
    let ids = plan.backup_ids();
    let what = format!(
        "{} backup{}{} and {} WAL file{}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        if ids.is_empty() {
            String::new()
        } else {
            format!(" ({})", ids.join(", "))
        },
        plan.wal_count(),
        if plan.wal_count() == 1 { "" } else { "s" }
    );
    let mut leftovers = plan.ids(StepKind::Unfinished);
    leftovers.extend(plan.ids(StepKind::Orphan));
    let what = if leftovers.is_empty() {
        what
    } else {
        format!(
            "{what}, and {} leftover director{} of backups that never finished or whose deletion was cut short ({})",
            leftovers.len(),
            if leftovers.len() == 1 { "y" } else { "ies" },
            leftovers.join(", ")
        )
    };
    if dry_run {
        format!("would delete {what}; nothing was deleted (--dry-run)\n")
    } else {
        format!("deleted {what}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalogue::WalObject;

    fn entry(id: &str, begin: u32, keep: Option<Keep>) -> Entry {
        Entry {
            backup_id: id.into(),
            status: "DONE".into(),
            timeline: Some(1),
            begin_wal: Some(format!("0000000100000000{begin:08X}")),
            end_wal: Some(format!("0000000100000000{begin:08X}")),
            end_time: Some(SystemTime::UNIX_EPOCH),
            keep,
            parent: None,
        }
    }

    fn catalogue(entries: &[Entry], segs: std::ops::RangeInclusive<u32>) -> Catalogue {
        let mut cat = Catalogue::default();
        for e in entries {
            let dir = format!("s/base/{}", e.backup_id);
            cat.objects
                .insert(e.backup_id.clone(), vec![format!("{dir}/data.tar.gz")]);
            cat.info_keys
                .insert(e.backup_id.clone(), format!("{dir}/backup.info"));
            cat.backups.insert(e.backup_id.clone(), e.clone());
        }
        cat.wal = segs
            .map(|n| {
                let name = format!("0000000100000000{n:08X}");
                WalObject {
                    key: format!("s/wals/0000000100000000/{name}.gz"),
                    name,
                }
            })
            .collect();
        cat
    }

    #[test]
    fn a_kept_incremental_keeps_its_chain_and_a_needed_backup_is_not_deleted_by_id() {
        let incr = |id: &str, begin: u32, parent: &str| Entry {
            parent: Some(parent.into()),
            ..entry(id, begin, None)
        };
        // F1 <- I1 <- I2, then F2 <- I3.
        let cat = catalogue(
            &[
                entry("F1", 2, None),
                incr("I1", 3, "F1"),
                incr("I2", 4, "I1"),
                entry("F2", 5, None),
                incr("I3", 6, "F2"),
            ],
            1..=7,
        );
        let now = SystemTime::now();
        let cases = [
            // The newest two: I3 and F2; nothing else is needed.
            (2, vec!["F1", "I1", "I2"]),
            // The newest three: I2 is kept, so I1 and F1 are too.
            (3, vec![]),
            (1, vec!["F1", "I1", "I2"]),
        ];
        for (n, deleted) in cases {
            let p = plan(&cat, &Selection::Policy(Policy::Redundancy(n)), now).unwrap();
            assert_eq!(p.backup_ids(), deleted, "REDUNDANCY {n}");
            let chain: Vec<&str> = p
                .report
                .iter()
                .filter(|(_, v)| *v == Verdict::Chain)
                .map(|(id, _)| id.as_str())
                .collect();
            if n == 1 {
                assert_eq!(chain, ["F2"], "I3 needs F2");
            }
        }
        let err = plan(&cat, &Selection::BackupId("F1".into()), now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backup F1 is needed by the incremental backup I1 built on it; delete it first; nothing was deleted"
        );
        assert_eq!(
            plan(&cat, &Selection::BackupId("I2".into()), now)
                .unwrap()
                .backup_ids(),
            ["I2"]
        );
        // A backup being taken on I3 keeps I3 (and F2) whatever the policy says.
        let mut running = cat.clone();
        running.backups.remove("I3");
        let marker = crate::backup::marker::Running {
            token: "t".into(),
            begin_wal: "000000010000000000000006".into(),
            host: "n1".into(),
            parent: Some("I2".into()),
        };
        running.unlisted.insert(
            crate::backup::backup_id(now),
            (vec!["s/base/x/backup.running".into()], Some(marker)),
        );
        let p = plan(&running, &Selection::Policy(Policy::Redundancy(1)), now).unwrap();
        assert_eq!(
            p.backup_ids(),
            Vec::<String>::new(),
            "I2's chain is needed by the running backup"
        );
    }

    #[test]
    fn plans_data_then_info_then_wal_oldest_first() {
        let cat = catalogue(
            &[
                entry("A", 2, None),
                entry("B", 4, None),
                entry("C", 6, None),
            ],
            1..=7,
        );
        let p = plan(
            &cat,
            &Selection::Policy(Policy::Redundancy(1)),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(p.backup_ids(), vec!["A", "B"]);
        assert_eq!(p.steps[0].data, vec!["s/base/A/data.tar.gz"]);
        assert_eq!(p.steps[0].info, "s/base/A/backup.info");
        assert_eq!(p.steps[0].wal.len(), 3, "01..03, before B's begin");
        assert_eq!(p.steps[1].wal.len(), 2, "04..05, before C's begin");
        assert_eq!(
            render_summary(&p, true),
            "would delete 2 backups (A, B) and 5 WAL files; nothing was deleted (--dry-run)\n"
        );
        assert_eq!(
            render_report(&p),
            "backup C VALID\nbackup B OBSOLETE\nbackup A OBSOLETE\n"
        );
    }

    #[test]
    fn refuses_what_must_not_go() {
        let cat = catalogue(
            &[entry("A", 2, Some(Keep::Standalone)), entry("B", 4, None)],
            1..=5,
        );
        let by_id = |id: &str| plan(&cat, &Selection::BackupId(id.into()), SystemTime::now());
        assert_eq!(by_id("Z"), Err(RefusedError::UnknownBackup("Z".into())));
        assert_eq!(
            by_id("A"),
            Err(RefusedError::Kept("A".into(), "standalone"))
        );
        let p = by_id("B").unwrap();
        assert_eq!(p.backup_ids(), vec!["B"]);
        assert!(p.steps[0].wal.is_empty(), "A is older: its WAL stays");
        let single = catalogue(&[entry("A", 2, None)], 1..=5);
        assert_eq!(
            plan(&single, &Selection::BackupId("A".into()), SystemTime::now()),
            Err(RefusedError::OnlyBackup("A".into()))
        );
    }

    #[test]
    fn a_running_backup_keeps_its_wal_and_leftovers_go() {
        use crate::backup::marker::{id_time, Running};
        let mut cat = catalogue(
            &[
                entry("A", 2, None),
                entry("B", 4, None),
                entry("C", 6, None),
            ],
            1..=7,
        );
        let now = id_time("20261206T000000").unwrap();
        let running = |begin: u32| Running {
            token: "t".into(),
            begin_wal: format!("0000000100000000{begin:08X}"),
            host: "n2".into(),
            parent: None,
        };
        // A standby's backup under way, which may need segment 3 on.
        let dir = "s/base/20261205T230000";
        cat.unlisted.insert(
            "20261205T230000".into(),
            (vec![format!("{dir}/backup.running")], Some(running(3))),
        );
        // A backup killed eight days ago: data complete, no backup.info.
        let dir = "s/base/20261128T000000";
        cat.unlisted.insert(
            "20261128T000000".into(),
            (
                vec![
                    format!("{dir}/backup.running"),
                    format!("{dir}/data.tar.gz"),
                ],
                Some(running(1)),
            ),
        );
        // A deletion cut short.
        let dir = "s/base/20261101T000000";
        cat.deleting.insert(
            "20261101T000000".into(),
            vec![
                format!("{dir}/backup.deleting"),
                format!("{dir}/backup.info"),
                format!("{dir}/data.tar.gz"),
            ],
        );
        let p = plan(&cat, &Selection::Policy(Policy::Redundancy(1)), now).unwrap();
        assert_eq!(p.backup_ids(), vec!["A", "B"]);
        assert_eq!(p.steps[0].marker, "s/base/A/backup.deleting");
        assert_eq!(
            p.steps[0].wal.len(),
            2,
            "01, 02: 03 on is the running backup's"
        );
        assert!(p.steps[1].wal.is_empty());
        assert_eq!(p.ids(StepKind::Orphan), vec!["20261128T000000"]);
        assert_eq!(p.ids(StepKind::Unfinished), vec!["20261101T000000"]);
        let orphan = p.steps.iter().find(|s| s.kind == StepKind::Orphan).unwrap();
        assert_eq!(
            orphan.data,
            vec![
                "s/base/20261128T000000/data.tar.gz",
                "s/base/20261128T000000/backup.running"
            ],
            "the marker last"
        );
        let cut = p
            .steps
            .iter()
            .find(|s| s.kind == StepKind::Unfinished)
            .unwrap();
        assert_eq!(cut.info, "s/base/20261101T000000/backup.info");
        assert_eq!(cut.data, vec!["s/base/20261101T000000/data.tar.gz"]);
        assert_eq!(cut.marker, "s/base/20261101T000000/backup.deleting");
        assert!(render_summary(&p, true).contains(
            "and 2 leftover directories of backups that never finished or whose deletion was cut short (20261101T000000, 20261128T000000)"
        ), "{}", render_summary(&p, true));
        // A delete by id leaves leftovers to retention, and still spares the WAL.
        let p = plan(&cat, &Selection::BackupId("A".into()), now).unwrap();
        assert_eq!(p.steps.len(), 1);
        assert!(p.steps[0].wal.iter().all(|k| !k.contains("00000003")));
    }

    #[test]
    fn ids_out_of_wal_order_delete_the_oldest_in_the_wal_and_lose_no_wal() {
        // Ids out of WAL order (a clock set back): C began first in the WAL. Ordered
        // by id, barman would keep C and delete, before B's begin, WAL that C needs.
        let cat = catalogue(
            &[
                entry("A", 6, None),
                entry("B", 4, None),
                entry("C", 1, None),
            ],
            1..=9,
        );
        let p = plan(
            &cat,
            &Selection::Policy(Policy::Redundancy(2)),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(p.backup_ids(), vec!["C"]);
        assert!(p.steps[0].wal.is_empty(), "{:?}", p.steps[0].wal);
        // The safety net under any plan: WAL a remaining backup needs never goes.
        let mut bad = p.clone();
        bad.steps[0].backup_id = "A".into();
        bad.steps[0].wal = vec![cat.wal[0].key.clone()];
        let err = check(&cat, &bad).unwrap_err();
        assert!(
            matches!(err, RefusedError::WouldBreak { ref backup, .. } if backup == "C"),
            "{err}"
        );
    }
}
