//! The blocks changed since an incremental's parent, from the server's WAL summaries
//! (PostgreSQL 17+, `summarize_wal = on`), as `pg_basebackup --incremental` finds them.
//!
//! The WAL summarizer writes, for each stretch of WAL it reads, which blocks of which
//! relation fork a record touched, and each fork's "limit block": the length it was
//! truncated to (0 when it was created or dropped). Every change to a permanent
//! relation's block is WAL-logged at `wal_level = replica`, hint bits aside (which
//! recovery rebuilds), so a block of the main fork named in no summary from the
//! parent's start to this backup's start is the parent's. Blocks at or beyond a limit
//! block, or beyond the parent's length, may have been written without WAL (a
//! relation extended with zeroed pages): those are sent whatever the summaries say.
//! A database created by file copy (`CREATE DATABASE ... STRATEGY FILE_COPY`) logs no
//! block: the summarizer marks it with relfilenode 0 and a limit of 0, and then every
//! file of that database is sent whole.
//!
//! The summaries must cover the parent's start to this backup's start without a gap
//! (summarization off for a while, summaries removed after `wal_summary_keep_time`, a
//! standby started after the parent began, a timeline history that does not lead
//! from the parent here): otherwise the caller compares page LSNs
//! ([`super::incremental`]) or, on a parent of another data directory, takes a full.
//! Across a timeline switch (a failover, a promotion) they are followed as
//! `pg_basebackup --incremental` follows them: on each timeline of the backup's
//! timeline history from the parent's on, from where it began (or the parent's start)
//! to where the next one branched off ([`stretches`]). A standby summarizes the WAL it
//! replays, so after a failover the new primary's summaries still reach back to a
//! parent taken on the old one.

use super::incremental::Parent;
use super::pages::{BLCKSZ, RELSEG_BLOCKS};
use crate::backup::Lsn;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How many block numbers are held at most (4 bytes each): beyond this, the
/// summaries are dropped and pages compared by LSN instead, so that memory stays
/// bounded however much changed.
const MAX_BLOCKS: usize = 16 << 20;
/// How long to wait for the summarizer to reach the backup's start.
const WAIT: Duration = Duration::from_secs(120);

/// `pg_default`'s and `pg_global`'s OIDs.
const DEFAULT_TABLESPACE: u32 = 1663;
const GLOBAL_TABLESPACE: u32 = 1664;

/// A relation fork: tablespace, database and relfilenode OIDs.
type Rel = (u32, u32, u32);

/// What the summaries say of a relation's main fork.
#[derive(Debug, Default, Clone)]
struct Changes {
    /// Blocks modified, sorted once collected.
    blocks: Vec<u32>,
    /// The shortest length it was truncated to, when it was.
    limit: Option<u32>,
}

/// The main-fork blocks changed between two positions, by relation.
#[derive(Debug, Default)]
pub struct Changed {
    rels: HashMap<Rel, Changes>,
    /// Databases (tablespace, database) created or dropped meanwhile.
    recreated: HashSet<(u32, u32)>,
    /// Summaries read and blocks named, for the log.
    pub summaries: usize,
    /// Block numbers held.
    pub blocks: usize,
}

/// What to send of one segment file of a relation's main fork.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Every block: the file is sent whole.
    Whole,
    /// The blocks listed (numbers relative to the file, sorted) and every block at or
    /// beyond `from` (relative to the file).
    Blocks { listed: Vec<u32>, from: u64 },
}

impl Changed {
    /// What to send of the file at `path` (as the manifest names it: `base/<db>/<rel>`,
    /// `global/<rel>`, `pg_tblspc/<ts>/<version dir>/<db>/<rel>`, with `.<segment>`),
    /// given the parent's length of it in blocks. `None` when the path is no relation
    /// file's (the caller sends it as it would without summaries).
    pub fn pick(&self, path: &str, parent_blocks: u64) -> Option<Pick> {
        let (rel, segment) = relation(path)?;
        if self.recreated.contains(&(rel.0, rel.1)) {
            return Some(Pick::Whole);
        }
        let first = segment.checked_mul(RELSEG_BLOCKS)?;
        let end = first.checked_add(RELSEG_BLOCKS)?;
        let Some(c) = self.rels.get(&rel) else {
            return Some(Pick::Blocks {
                listed: Vec::new(),
                from: parent_blocks,
            });
        };
        let mut from = parent_blocks;
        if let Some(limit) = c.limit.map(u64::from) {
            if limit <= first {
                return Some(Pick::Whole);
            }
            from = from.min(limit - first);
        }
        let lo = c.blocks.partition_point(|&b| u64::from(b) < first);
        let hi = c.blocks.partition_point(|&b| u64::from(b) < end);
        let listed = c.blocks[lo..hi]
            .iter()
            .map(|&b| (u64::from(b) - first) as u32)
            .filter(|&b| u64::from(b) < from)
            .collect();
        Some(Pick::Blocks { listed, from })
    }

    /// The parent's CRC-32C of `path` when the summaries name no block of it since the
    /// parent began and its length (`size`) is the parent's: then the file is what the
    /// parent read, and is not read again.
    pub fn untouched(&self, parent: &Parent, path: &str, size: u64) -> Option<u32> {
        let before = parent.blocks_of(path, size)?;
        let was = parent.files.get(path)?;
        match self.pick(path, before)? {
            Pick::Blocks { listed, from }
                if was.size == size && listed.is_empty() && from * BLCKSZ as u64 >= size =>
            {
                Some(was.crc32c)
            }
            _ => None,
        }
    }

    /// Adds one row of `pg_wal_summary_contents` (main fork only).
    fn add(&mut self, rel: Rel, block: u32, is_limit: bool) -> Result<()> {
        if rel.2 == 0 {
            // relfilenode 0: the whole database was created or dropped.
            self.recreated.insert((rel.0, rel.1));
            return Ok(());
        }
        let c = self.rels.entry(rel).or_default();
        if is_limit {
            c.limit = Some(c.limit.map_or(block, |l| l.min(block)));
        } else {
            if self.blocks >= MAX_BLOCKS {
                bail!("more than {MAX_BLOCKS} changed blocks");
            }
            c.blocks.push(block);
            self.blocks += 1;
        }
        Ok(())
    }

    fn finish(&mut self) {
        for c in self.rels.values_mut() {
            c.blocks.sort_unstable();
            c.blocks.dedup();
        }
        self.blocks = self.rels.values().map(|c| c.blocks.len()).sum();
    }
}

/// The relation and segment number of a main-fork file's manifest path.
fn relation(path: &str) -> Option<(Rel, u64)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (ts, db, file) = match parts.as_slice() {
        ["base", db, file] => (DEFAULT_TABLESPACE, db.parse().ok()?, *file),
        ["global", file] => (GLOBAL_TABLESPACE, 0, *file),
        ["pg_tblspc", ts, _version, db, file] => (ts.parse().ok()?, db.parse().ok()?, *file),
        _ => return None,
    };
    let (rel, segment) = match file.split_once('.') {
        Some((rel, seg)) => (rel, seg.parse().ok()?),
        None => (file, 0),
    };
    if rel.is_empty() || !rel.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(((ts, db, rel.parse().ok()?), segment))
}

/// The WAL from an incremental's parent to the backup, as the stretches of it on each
/// timeline, oldest first: from `from` (the parent's start; it ended at `parent_end`)
/// on `parent_tli` to `to` (this backup's start) on `tli`, through `history` (`tli`'s
/// `.history` file, parsed: each ancestor with the position where the next timeline
/// branched off, oldest first). `Err` when the parent's timeline is not an ancestor
/// of `tli`, when the parent ended after its timeline branched off (its files may hold
/// blocks of the abandoned branch, which no summary here names), or when the
/// positions do not follow one another.
pub fn stretches(
    history: &[(u32, Lsn)],
    (parent_tli, from, parent_end): (u32, Lsn, Lsn),
    tli: u32,
    to: Lsn,
) -> Result<Vec<(u32, Lsn, Lsn)>, String> {
    if parent_tli == tli {
        return Ok(vec![(tli, from, to)]);
    }
    let at = history
        .iter()
        .position(|(t, _)| *t == parent_tli)
        .ok_or_else(|| format!("timeline {parent_tli} is not in the history of timeline {tli}"))?;
    let switch = history[at].1;
    if parent_end > switch {
        return Err(format!(
            "the previous backup ended at {parent_end}, after its timeline {parent_tli} branched off at {switch}"
        ));
    }
    let mut out = Vec::new();
    let mut begin = from;
    for (t, end) in &history[at..] {
        if *end < begin || *end > to {
            return Err(format!(
                "timeline {t} ended at {end}, not between {begin} and {to}"
            ));
        }
        out.push((*t, begin, *end));
        begin = *end;
    }
    out.push((tli, begin, to));
    Ok(out)
}

/// The [`stretches`] from `parent` (its timeline, start and end) to `to`, the start
/// of a backup that has just begun: its timeline is the checkpoint's it starts from
/// (what `backup_label` will name), and its history is read from `pgdata`. On a
/// standby a later restartpoint may already name a newer timeline (its upstream
/// promoted meanwhile): that timeline branched off after `to`, so [`stretches`] refuses
/// it and page LSNs decide (a full, on another data directory's chain); it never
/// reads too little.
pub async fn since_parent(
    client: &tokio_postgres::Client,
    pgdata: &std::path::Path,
    parent: (u32, Lsn, Lsn),
    to: Lsn,
) -> Result<Vec<(u32, Lsn, Lsn)>> {
    let parent_tli = parent.0;
    let tli: i64 = client
        .query_one(
            "SELECT timeline_id::bigint FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .context("read the backup's timeline")?
        .get(0);
    let tli = u32::try_from(tli).context("the backup's timeline")?;
    let history = if tli == parent_tli {
        Vec::new()
    } else {
        let path = pgdata.join(format!("pg_wal/{tli:08X}.history"));
        let text = tokio::fs::read_to_string(&path)
            .await
            .with_context(|| format!("read {}", path.display()))?;
        crate::backup::verify::parse_history(&text)
    };
    stretches(&history, parent, tli, to).map_err(anyhow::Error::msg)
}

/// Which of the `available` summaries (timeline, start, end) cover `from` to `to` on
/// `tli` without a gap, in order; `Err` says why they do not.
pub fn covering(
    available: &[(u32, Lsn, Lsn)],
    tli: u32,
    from: Lsn,
    to: Lsn,
) -> Result<Vec<(Lsn, Lsn)>, String> {
    let mut on: Vec<(Lsn, Lsn)> = available
        .iter()
        .filter(|(t, s, e)| *t == tli && *e > from && *s < to)
        .map(|(_, s, e)| (*s, *e))
        .collect();
    on.sort();
    if from >= to {
        // Nothing happened in between (two backups of a standby within one
        // restartpoint start at the same place): no summary is needed.
        return Ok(Vec::new());
    }
    let mut reached = from;
    let mut out = Vec::new();
    for (s, e) in on {
        if e <= reached {
            continue;
        }
        if s > reached {
            break;
        }
        out.push((s, e));
        reached = e;
        if reached >= to {
            return Ok(out);
        }
    }
    Err(format!(
        "the WAL summaries on timeline {tli} cover {from} to {to} only up to {reached}"
    ))
}

/// Reads the blocks changed over `stretches` (see [`since_parent`]: from the parent's
/// start to this backup's, on each timeline), waiting for the summarizer to reach the
/// end of the last. `Err` says why the summaries cannot be used.
pub async fn changed(
    client: &tokio_postgres::Client,
    stretches: &[(u32, Lsn, Lsn)],
) -> Result<Changed> {
    let Some(&(tli, _, to)) = stretches.last() else {
        bail!("no WAL to read the summaries of");
    };
    let on: String = client
        .query_one("SELECT current_setting('summarize_wal')", &[])
        .await
        .context("read summarize_wal")?
        .get(0);
    if on != "on" {
        bail!("summarize_wal is {on}");
    }
    let began = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT summarized_tli, summarized_lsn::text, summarizer_pid \
                 FROM pg_get_wal_summarizer_state()",
                &[],
            )
            .await
            .context("read the WAL summarizer's state")?;
        let (at_tli, at, pid): (i64, String, Option<i32>) = (row.get(0), row.get(1), row.get(2));
        // Just after a start the summarizer may not be up yet; not at all is no reason
        // to wait two minutes.
        if pid.is_none() && began.elapsed() > Duration::from_secs(10) {
            bail!("the WAL summarizer is not running");
        }
        let at = Lsn::parse(&at).context("the summarizer's position")?;
        if at_tli > i64::from(tli) || (at_tli == i64::from(tli) && at >= to) {
            break;
        }
        if began.elapsed() >= WAIT {
            bail!("the WAL summarizer is at {at} on timeline {at_tli}, not yet at {to} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = client
        .query(
            "SELECT tli, start_lsn::text, end_lsn::text FROM pg_available_wal_summaries()",
            &[],
        )
        .await
        .context("list the WAL summaries")?;
    let mut available = Vec::new();
    for r in rows {
        let (t, s, e): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
        let t = u32::try_from(t).context("a summary's timeline")?;
        let lsn = |x: &str| Lsn::parse(x).with_context(|| format!("a summary's LSN {x:?}"));
        available.push((t, lsn(&s)?, lsn(&e)?));
    }
    let mut cover = Vec::new();
    for &(t, from, to) in stretches {
        for (s, e) in covering(&available, t, from, to).map_err(anyhow::Error::msg)? {
            cover.push((t, s, e));
        }
    }
    let mut out = Changed::default();
    for (tli, s, e) in &cover {
        // Rows stream in; only block numbers are kept (4 bytes each).
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&i64::from(*tli), &s.to_string(), &e.to_string()];
        let rows = client
            .query_raw(
                "SELECT reltablespace::bigint, reldatabase::bigint, relfilenode::bigint, \
                        relblocknumber, is_limit_block \
                 FROM pg_wal_summary_contents($1::bigint, $2::text::pg_lsn, $3::text::pg_lsn) \
                 WHERE relforknumber = 0",
                params,
            )
            .await
            .with_context(|| format!("read the WAL summary of timeline {tli} from {s} to {e}"))?;
        futures_util::pin_mut!(rows);
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .with_context(|| format!("read the WAL summary of timeline {tli} from {s} to {e}"))?
        {
            let oid = |i: usize| u32::try_from(row.get::<_, i64>(i)).context("an OID");
            let block = u32::try_from(row.get::<_, i64>(3)).context("a block number")?;
            out.add((oid(0)?, oid(1)?, oid(2)?), block, row.get(4))?;
        }
    }
    out.summaries = cover.len();
    out.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(p: Option<Pick>) -> (Vec<u32>, u64) {
        match p {
            Some(Pick::Blocks { listed, from, .. }) => (listed, from),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relation_paths_are_read_as_the_manifest_names_them() {
        let cases = [
            ("base/5/16384", Some(((1663, 5, 16384), 0))),
            ("base/5/16384.2", Some(((1663, 5, 16384), 2))),
            ("global/1262", Some(((1664, 0, 1262), 0))),
            (
                "pg_tblspc/16500/PG_18_202506291/5/16501.1",
                Some(((16500, 5, 16501), 1)),
            ),
            ("base/5/16384_vm", None),
            ("base/5/PG_VERSION", None),
            ("pg_xact/0000", None),
            ("base/5/16384.x", None),
        ];
        for (path, want) in cases {
            assert_eq!(relation(path), want, "{path}");
        }
    }

    #[test]
    fn blocks_are_picked_by_summary_limit_and_parent_length() {
        let mut c = Changed::default();
        let r = (1663, 5, 16384);
        for b in [7, 3, 3, 131_072 + 1, 20] {
            c.add(r, b, false).unwrap();
        }
        c.add((1663, 5, 16390), 10, true).unwrap();
        c.add((1663, 5, 16390), 131_072 + 50, true).unwrap();
        c.add((1663, 5, 16391), 131_072 + 50, true).unwrap();
        c.add((1663, 6, 0), 0, true).unwrap();
        c.finish();
        assert_eq!(c.blocks, 4);
        // Segment 0: its changed blocks below the parent's length; beyond it, all.
        assert_eq!(blocks(c.pick("base/5/16384", 100)), (vec![3, 7, 20], 100));
        assert_eq!(blocks(c.pick("base/5/16384", 10)), (vec![3, 7], 10));
        // Segment 1: block numbers relative to the file.
        assert_eq!(
            blocks(c.pick("base/5/16384.1", RELSEG_BLOCKS)),
            (vec![1], RELSEG_BLOCKS)
        );
        // A relation the summaries do not name: nothing below the parent's length.
        assert_eq!(blocks(c.pick("base/5/17000", 9)), (vec![], 9));
        // Truncated to 10 blocks: every block from the 10th is sent, and a segment
        // wholly beyond the limit is sent whole.
        assert_eq!(blocks(c.pick("base/5/16390", 100)), (vec![], 10));
        assert_eq!(c.pick("base/5/16390.1", 100), Some(Pick::Whole));
        assert_eq!(
            blocks(c.pick("base/5/16391.1", RELSEG_BLOCKS)),
            (vec![], 50)
        );
        // A database created or dropped meanwhile: all of its files whole.
        assert_eq!(c.pick("base/6/16384", 100), Some(Pick::Whole));
        assert_eq!(c.pick("base/5/16384_fsm", 100), None);
    }

    #[test]
    fn summaries_must_cover_the_range_without_a_gap() {
        let l = |x: u64| Lsn(x);
        let avail = [
            (1, l(0x100), l(0x200)),
            (1, l(0x200), l(0x300)),
            (1, l(0x300), l(0x400)),
            (2, l(0x400), l(0x500)),
            (1, l(0x450), l(0x600)),
        ];
        assert_eq!(
            covering(&avail, 1, l(0x180), l(0x350)).unwrap(),
            vec![
                (l(0x100), l(0x200)),
                (l(0x200), l(0x300)),
                (l(0x300), l(0x400))
            ]
        );
        assert_eq!(
            covering(&avail, 1, l(0x200), l(0x200 + 1)).unwrap(),
            vec![(l(0x200), l(0x300))]
        );
        // A gap from 0x400 to 0x450 on timeline 1.
        let e = covering(&avail, 1, l(0x180), l(0x500)).unwrap_err();
        assert!(e.contains("only up to 0/400"), "{e}");
        // Two backups from the same position need no summary.
        assert_eq!(covering(&avail, 1, l(0x300), l(0x300)).unwrap(), vec![]);
        assert_eq!(covering(&[], 3, l(0x300), l(0x300)).unwrap(), vec![]);
        // Nothing before the parent's start.
        assert!(covering(&avail, 1, l(0x50), l(0x150)).is_err());
        // Another timeline's summaries do not count.
        assert!(covering(&avail, 2, l(0x300), l(0x450)).is_err());
    }

    #[test]
    fn the_wal_since_the_parent_follows_the_timeline_history() {
        let l = |x: u64| Lsn(x);
        // Timeline 3's history: 1 branched off to 2 at 0x500, 2 to 3 at 0x900.
        let history = [(1, l(0x500)), (2, l(0x900))];
        // ((parent's timeline, start, end), backup's timeline, start) -> stretches
        let ok = [
            (((2, 0x600, 0x980), 2, 0xa00), vec![(2, 0x600, 0xa00)]),
            (
                ((1, 0x100, 0x180), 3, 0xa00),
                vec![(1, 0x100, 0x500), (2, 0x500, 0x900), (3, 0x900, 0xa00)],
            ),
            (
                ((2, 0x600, 0x680), 3, 0xa00),
                vec![(2, 0x600, 0x900), (3, 0x900, 0xa00)],
            ),
            // A parent that ended right at the switch is of this history.
            (
                ((2, 0x600, 0x900), 3, 0xa00),
                vec![(2, 0x600, 0x900), (3, 0x900, 0xa00)],
            ),
            // A parent that began right at the switch reads nothing on its timeline.
            (
                ((2, 0x900, 0x900), 3, 0x900),
                vec![(2, 0x900, 0x900), (3, 0x900, 0x900)],
            ),
        ];
        for (((ptli, from, end), tli, to), want) in ok {
            let want: Vec<_> = want.into_iter().map(|(t, s, e)| (t, l(s), l(e))).collect();
            assert_eq!(
                stretches(&history, (ptli, l(from), l(end)), tli, l(to)).unwrap(),
                want,
                "{ptli} {from:x} {tli} {to:x}"
            );
        }
        let bad = [
            (((4, 0x100, 0x180), 3, 0xa00), "not in the history"),
            // The parent ran on after its timeline branched off (a former primary's
            // backup listed after the failover): its files hold another history's blocks.
            (
                ((1, 0x100, 0x600), 3, 0xa00),
                "after its timeline 1 branched off at 0/500",
            ),
            (
                ((2, 0x950, 0x980), 3, 0xa00),
                "after its timeline 2 branched off",
            ),
            // The backup's start before the switch to its own timeline.
            (((2, 0x600, 0x680), 3, 0x800), "ended at 0/900"),
        ];
        for (((ptli, from, end), tli, to), want) in bad {
            let e = stretches(&history, (ptli, l(from), l(end)), tli, l(to)).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn too_many_blocks_are_refused_rather_than_held() {
        let mut c = Changed {
            blocks: MAX_BLOCKS,
            ..Default::default()
        };
        assert!(c.add((1663, 5, 1), 1, false).is_err());
        // A limit takes no room.
        assert!(c.add((1663, 5, 1), 1, true).is_ok());
    }
}
