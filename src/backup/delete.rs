//! `pgwarden backup-delete` and the retention run after each backup: what to delete
//! (a pure plan over the catalogue), checked, then deleted in barman-cloud's order.
//!
//! For each backup, oldest first: its data objects, then its `backup.info` (so that an
//! interrupted deletion is listed still, and the next run finishes it), then the WAL
//! it leaves unneeded. A directory without `backup.info` (a backup being taken) is
//! never touched.

use super::catalogue::{Catalogue, Entry, Keep};
use super::policy::Policy;
use super::retention::{self, RetentionError, Verdict};
use super::walclean;
use crate::wal::storage::{Retrying, Storage};
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

/// One backup to delete, and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Its id.
    pub backup_id: String,
    /// Every object under its directory but `backup.info`.
    pub data: Vec<String>,
    /// Its `backup.info`.
    pub info: String,
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
        self.steps.iter().map(|s| s.backup_id.clone()).collect()
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
            if entry.done() && cat.backups.values().filter(|e| e.done()).count() == 1 {
                return Err(RefusedError::OnlyBackup(id.clone()));
            }
            (Vec::new(), vec![id.clone()], true)
        }
    };
    let wal = walclean::plan(&cat.backups, &ids, &cat.wal, skip_if_standalone);
    let steps: Vec<Step> = wal
        .into_iter()
        .map(|w| Step {
            data: cat.objects.get(&w.backup_id).cloned().unwrap_or_default(),
            info: cat.info_keys.get(&w.backup_id).cloned().unwrap_or_default(),
            backup_id: w.backup_id,
            wal: w.keys,
        })
        .collect();
    let plan = Plan { report, steps };
    check(cat, &plan)?;
    Ok(plan)
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
        for key in step.data.iter().chain(std::iter::once(&step.info)) {
            if !dry_run {
                delete(key.clone()).await?;
            }
            done(key);
        }
        // No log line here: the command line prints its own lines on stdout, where
        // the log goes too, and `pgwarden run` logs the summary.
        summary.backups.push(step.backup_id.clone());
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
    fn the_safety_net_catches_a_backup_that_would_lose_its_wal() {
        // Ids out of WAL order (a clock set back): barman would delete, before B's
        // begin, WAL that the kept C needs.
        let cat = catalogue(
            &[
                entry("A", 6, None),
                entry("B", 4, None),
                entry("C", 1, None),
            ],
            1..=9,
        );
        let err = plan(
            &cat,
            &Selection::Policy(Policy::Redundancy(2)),
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            matches!(err, RefusedError::WouldBreak { ref backup, .. } if backup == "C"),
            "{err}"
        );
    }
}
