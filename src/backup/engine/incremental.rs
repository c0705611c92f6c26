//! Incremental backups: only the blocks of a relation file that changed since the
//! backup it builds on (its parent, the previous backup of the chain).
//!
//! **Which blocks.** A page whose LSN is at or after the parent's start changed since
//! the parent read it, as WAL-G's delta backups decide. So does a page postgres has not
//! initialised (all zeros: a relation extended, or truncated and extended again, leaves
//! such pages without WAL) and any page whose header is not a valid one. Every block at
//! or beyond the parent's length of the file is sent too, whatever its LSN. The method
//! needs page LSNs that move with every change of a page's bytes: with page checksums
//! or `wal_log_hints`, setting a hint bit on a page not changed since the last
//! checkpoint writes a full-page image and moves its LSN; without either it does not,
//! so pgwarden takes a full backup instead (see [`why_not`]).
//!
//! **Which files.** Only the main fork of a relation (`16384`, `16384.1`) goes block
//! by block, and only when the parent had the file and both lengths are whole blocks.
//! The free space map is not WAL-logged and a visibility map bit is cleared without
//! moving its page's LSN, so `_fsm` and `_vm` forks (small: a bit or two per heap page)
//! are sent whole, as are `_init` forks and every other file.
//!
//! **The format** is PostgreSQL 17's `INCREMENTAL.<name>` file (pg_basebackup
//! `--incremental`, `src/include/backup/basebackup_incremental.h`), written as the tar
//! entry `INCREMENTAL.<name>` beside where the file would be: a little-endian header
//! (magic, block count, `truncation_block_length`: the file's length in blocks), the
//! block numbers relative to the file, zeros up to a block boundary, then the blocks.
//! A file is read once, 1 MiB at a time, and each window with a changed block becomes
//! an entry of its own, so the blocks never wait in memory; a file without a changed
//! block still gets one entry with none, which says the file exists and how long it
//! is. The manifest lists the file whole (its size and CRC-32C), so `pg_verifybackup`
//! checks the reconstruction. On 17+ the WAL summaries say which blocks changed
//! ([`super::summaries`]): a window without one is not read, and its CRC-32C is the
//! parent's (each backup stores its files' window checksums, [`WINDOWS_OBJECT`]).
//!
//! barman-cloud cannot restore an incremental: its parts are named `incr-data.tar.gz`
//! and so on (see [`crate::backup::parts`]), which barman-cloud-restore does not take
//! for a backup's data, so it refuses the backup rather than restore half of it.

use super::pages::BLCKSZ;
use crate::backup::Lsn;
use std::collections::HashMap;

/// The magic number PostgreSQL writes at the start of an INCREMENTAL file.
pub const MAGIC: u32 = 0xd3ae_1f0d;
/// The prefix of an incremental entry's file name.
pub const PREFIX: &str = "INCREMENTAL.";
/// The `backup.info` comment key naming an incremental's parent.
pub const PARENT_KEY: &str = "incremental_of";

/// The backup an incremental builds on.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Its id.
    pub backup_id: String,
    /// Where its WAL replay started: a page whose LSN is at or after this changed.
    pub start: Lsn,
    /// Where it ended: a timeline switch since must come at or after it, or it holds
    /// blocks of another history than this one's.
    pub end: Lsn,
    /// The timeline it started on (the WAL summaries are followed from it).
    pub timeline: u32,
    /// Each of its files, from its manifest.
    pub files: HashMap<String, Was>,
    /// The CRC-32C of each [`WINDOW`] of its block files, by path, when it recorded
    /// them (see [`render_windows`]).
    pub windows: HashMap<String, Vec<u32>>,
    /// When it began, Unix seconds rounded down (`begin_time`); `None` when unknown or
    /// when `foreign`, and then no file is taken as unchanged by its length and time.
    pub began: Option<i64>,
    /// It, or a backup of its chain, was taken of another data directory (another
    /// member's, or this one's before a rebuild or a rewind: see
    /// `pgdata::INCARNATION`): its pages may differ from this one's in hint bits,
    /// and every page of a window read is sent (see [`Select`]).
    pub foreign: bool,
}

/// What the parent's manifest says of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Was {
    /// Its length.
    pub size: u64,
    /// Its modification time, whole seconds, when the parent listed it.
    pub mtime: i64,
    /// The CRC-32C of what the parent read.
    pub crc32c: u32,
}

impl Parent {
    /// Whether `path` (as the manifest names it) goes block by block, given its
    /// length now: the main fork of a relation the parent had, both lengths whole
    /// blocks. Returns the parent's length of it in blocks.
    pub fn blocks_of(&self, path: &str, size: u64) -> Option<u64> {
        let bs = BLCKSZ as u64;
        if !is_block_file(path, size) {
            return None;
        }
        let before = self.files.get(path)?.size;
        (before % bs == 0).then_some(before / bs)
    }

    /// The parent's CRC-32C of window `w` of `path` (bytes `w * WINDOW` on), when it
    /// recorded one and that window is `len` bytes long in its copy too.
    pub fn window(&self, path: &str, w: u64, len: u64) -> Option<u32> {
        let size = self.files.get(path)?.size;
        let crc = *self.windows.get(path)?.get(usize::try_from(w).ok()?)?;
        (size.saturating_sub(w * WINDOW).min(WINDOW) == len).then_some(crc)
    }

    /// The parent's CRC-32C of `path` when the file, a main fork the parent had, is
    /// still what the parent read, by its length and modification time (`size` and
    /// `mtime` now): then it is not read again (pgBackRest's default). Only a file last
    /// modified two seconds or more before the parent began counts: the manifest keeps
    /// whole seconds, the file system's clock may lag the wall clock a little, and a
    /// write after the parent read the file would otherwise share its second. Any write
    /// since (postgres's, WAL replay's, a pg_rewind copy) sets a later time.
    pub fn unchanged(&self, path: &str, size: u64, mtime: i64) -> Option<u32> {
        self.blocks_of(path, size)?;
        let was = self.files.get(path)?;
        let began = self.began?;
        let known = was.mtime > 0;
        (known && was.size == size && was.mtime == mtime && was.mtime + 2 <= began)
            .then_some(was.crc32c)
    }
}

/// Whether `path` (as the manifest names it), `size` bytes long, can go block by
/// block: a relation's main fork, a whole number of blocks, not empty.
pub fn is_block_file(path: &str, size: u64) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let in_relation_dir = ["base/", "global/", "pg_tblspc/"]
        .iter()
        .any(|d| path.starts_with(d));
    in_relation_dir && is_main_fork(name) && size % BLCKSZ as u64 == 0 && size > 0
}

/// `16384` or `16384.3`: a relation's main fork.
fn is_main_fork(name: &str) -> bool {
    let stem = match name.split_once('.') {
        Some((stem, seg)) if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => stem,
        Some(_) => return false,
        None => name,
    };
    !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
}

/// Why this cluster cannot take an incremental backup on `parent`, or `None` when it
/// can. `same_history` says whether the parent's WAL position is in this cluster's
/// timeline history (see `backup::take`).
pub fn why_not(
    checksums_or_hints: bool,
    parent_system_id: &str,
    system_id: &str,
    parent_major: u32,
    major: u32,
    same_history: bool,
) -> Option<String> {
    if parent_system_id != system_id {
        return Some(format!(
            "the previous backup is of another cluster (system identifier {parent_system_id}, this one's is {system_id})"
        ));
    }
    if parent_major != major {
        return Some(format!(
            "the previous backup is of PostgreSQL {parent_major}, this server is {major}"
        ));
    }
    if !same_history {
        return Some(
            "the previous backup is not in this cluster's timeline history (a failover or a point-in-time restore branched off before its end)"
                .to_owned(),
        );
    }
    if !checksums_or_hints {
        return Some(
            "the cluster has neither page checksums nor wal_log_hints = on, so a page's hint bits can change without its LSN"
                .to_owned(),
        );
    }
    None
}

/// Why an incremental on a parent taken of another data directory (another member's,
/// or this one's before a rebuild or a rewind: `same_pgdata` false) is not taken. Two
/// copies of a page can differ in hint bits no WAL records, so every page of a window
/// read is sent (see [`Select`]): without WAL summaries (before PostgreSQL 17) that is
/// every page of every changed file, a full's worth in another format; a full backup
/// is taken instead. On 17+ the summaries decide, across a failover too (see
/// [`super::summaries`]); where they turn out unusable the engine takes a full.
pub fn why_not_here(same_pgdata: bool, major: u32) -> Option<String> {
    if same_pgdata || major >= 17 {
        return None;
    }
    Some(format!(
        "the previous backup was taken of another data directory (another member's, or this one's before a rebuild or a rewind), whose pages may differ from this one's in hint bits, and PostgreSQL {major} has no WAL summaries: an incremental would send every page of every changed file"
    ))
}

/// Which blocks of a relation file an incremental sends.
#[derive(Debug)]
pub enum Select {
    /// Pages whose LSN is at or after `since` (the parent's start) or that are not
    /// valid pages, and every block from `before` (the parent's length) on.
    Lsn { since: u64, before: u64 },
    /// The blocks the WAL summaries `listed` (sorted, relative to the file), every
    /// block from `from` on, and pages changed since `start` (this backup's) or not
    /// valid (see [`super::summaries`]).
    Summaries {
        listed: Vec<u32>,
        from: u64,
        start: u64,
    },
}

impl Select {
    /// Whether block `b` (relative to the file), read as `page`, is sent.
    pub fn keep(&self, b: u64, page: &[u8]) -> bool {
        match self {
            Select::Lsn { since, before } => b >= *before || changed_since(page, *since),
            Select::Summaries {
                listed,
                from,
                start,
            } => {
                b >= *from
                    || u32::try_from(b).is_ok_and(|b| listed.binary_search(&b).is_ok())
                    || changed_since(page, *start)
            }
        }
    }

    /// Whether blocks `first..end` need not be read when the parent recorded their
    /// window's checksum: the summaries name none of them and all lie below `from`.
    /// Pages changed since this backup began are then not sent, and the window's
    /// checksum is the parent's: the restore writes the parent's bytes, which WAL
    /// replay brings forward.
    pub fn may_skip(&self, first: u64, end: u64) -> bool {
        match self {
            Select::Lsn { .. } => false,
            Select::Summaries { listed, from, .. } => {
                let at = listed.partition_point(|&b| u64::from(b) < first);
                end <= *from && listed.get(at).is_none_or(|&b| u64::from(b) >= end)
            }
        }
    }
}

/// The span of a file each CRC-32C of [`WINDOWS_OBJECT`] covers: the engine's read.
pub const WINDOW: u64 = 1 << 20;
/// The object beside a backup's parts with its block files' window checksums: the
/// next incremental skips a window the WAL summaries leave untouched and still puts
/// the whole file's CRC-32C into its manifest (the windows' CRCs combined).
pub const WINDOWS_OBJECT: &str = "window_crc32c";
const WINDOWS_HEADER: &str = "pgwarden-window-crc32c 1";

/// Renders [`WINDOWS_OBJECT`]: a header line, then per file `<path> <size> <crc>...`,
/// each CRC 8 hex digits, one per [`WINDOW`] of the file.
pub fn render_windows(files: &[(String, u64, Vec<u32>)]) -> String {
    let mut out = format!("{WINDOWS_HEADER}\n");
    for (path, size, crcs) in files {
        out.push_str(&format!("{path} {size} "));
        for c in crcs {
            out.push_str(&format!("{c:08x}"));
        }
        out.push('\n');
    }
    out
}

/// Parses [`WINDOWS_OBJECT`], keeping the files whose size is `sizes` says (the
/// manifest's) and whose window count fits it.
pub fn parse_windows(
    text: &str,
    sizes: &HashMap<String, Was>,
) -> Result<HashMap<String, Vec<u32>>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(WINDOWS_HEADER) {
        return Err(format!("does not begin with {WINDOWS_HEADER:?}"));
    }
    let mut out = HashMap::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {}: {line:?}", n + 2);
        let mut f = line.split(' ');
        let (Some(path), Some(size), Some(hex), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(bad());
        };
        let size: u64 = size.parse().map_err(|_| bad())?;
        if hex.len() % 8 != 0 || !hex.is_ascii() {
            return Err(bad());
        }
        let crcs = (0..hex.len() / 8)
            .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| bad())?;
        let fits = crcs.len() as u64 == size.div_ceil(WINDOW);
        if fits && sizes.get(path).is_some_and(|w| w.size == size) {
            out.insert(path.to_owned(), crcs);
        }
    }
    Ok(out)
}

/// Whether `page` (one block) must be sent: it changed since `since` (its LSN), it is
/// not initialised, or its header is not a valid page header.
pub fn changed_since(page: &[u8], since: u64) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    let (lower, upper, special) = (
        usize::from(u16_at(12)),
        usize::from(u16_at(14)),
        usize::from(u16_at(16)),
    );
    let layout = u16_at(18);
    let valid = upper != 0
        && (24..=upper).contains(&lower)
        && upper <= special
        && special <= BLCKSZ
        && usize::from(layout & 0xff00) == BLCKSZ;
    if !valid {
        return true;
    }
    let lsn = (u64::from(u32_at(0)) << 32) | u64::from(u32_at(4));
    lsn >= since
}

/// The header of an incremental entry holding `blocks` (numbers relative to the file)
/// of a file `length` blocks long, padded as PostgreSQL pads it.
pub fn header(blocks: &[u32], length: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(12 + 4 * blocks.len() + BLCKSZ);
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    h.extend_from_slice(&length.to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_le_bytes());
    }
    if !blocks.is_empty() {
        h.resize(h.len().div_ceil(BLCKSZ) * BLCKSZ, 0);
    }
    h
}

/// An incremental entry's header, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The blocks that follow, in order.
    pub blocks: Vec<u32>,
    /// The file's length in blocks.
    pub length: u32,
    /// Bytes the header takes, padding included.
    pub bytes: usize,
}

/// Reads an entry's header from `r`; `Err` says what is wrong with it.
pub fn read_header(r: &mut impl std::io::Read) -> Result<Header, String> {
    let mut fixed = [0u8; 12];
    r.read_exact(&mut fixed)
        .map_err(|e| format!("its header is cut short: {e}"))?;
    let word = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
    if word(0) != MAGIC {
        return Err(format!(
            "its magic number is {:#x}, not {MAGIC:#x}",
            word(0)
        ));
    }
    let (count, length) = (word(4), word(8));
    if count > length || u64::from(length) > super::pages::RELSEG_BLOCKS {
        return Err(format!(
            "it claims {count} blocks of a file of {length} blocks"
        ));
    }
    let mut numbers = vec![0u8; 4 * count as usize];
    r.read_exact(&mut numbers)
        .map_err(|e| format!("its block list is cut short: {e}"))?;
    let blocks: Vec<u32> = numbers
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if blocks.iter().any(|&b| b >= length) || blocks.windows(2).any(|w| w[0] >= w[1]) {
        return Err("its block numbers are out of order or beyond the file's length".to_owned());
    }
    let mut bytes = 12 + numbers.len();
    if count > 0 {
        let padded = bytes.div_ceil(BLCKSZ) * BLCKSZ;
        let mut pad = vec![0u8; padded - bytes];
        r.read_exact(&mut pad)
            .map_err(|e| format!("its header's padding is cut short: {e}"))?;
        bytes = padded;
    }
    Ok(Header {
        blocks,
        length,
        bytes,
    })
}

/// The name of the entry for `name` (the last component of a path).
pub fn entry_name(tar_path: &str) -> String {
    match tar_path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{PREFIX}{name}"),
        None => format!("{PREFIX}{tar_path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(lsn: u64, lower: u16, upper: u16) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&lower.to_le_bytes());
        p[14..16].copy_from_slice(&upper.to_le_bytes());
        p[16..18].copy_from_slice(&8192u16.to_le_bytes());
        p[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
        p
    }

    #[test]
    fn a_page_is_sent_when_it_changed_is_new_or_is_not_a_page() {
        let since = 0x1_0000_0100;
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("older LSN", page(0x1_0000_00ff, 28, 8000), false),
            ("the start itself", page(since, 28, 8000), true),
            ("later LSN", page(0x2_0000_0000, 28, 8000), true),
            ("all zeros (never initialised)", vec![0u8; BLCKSZ], true),
            ("pd_lower above pd_upper", page(0x10, 8000, 28), true),
            ("pd_lower inside the header", page(0x10, 8, 8000), true),
            ("junk", vec![0xabu8; BLCKSZ], true),
        ];
        for (what, p, want) in cases {
            assert_eq!(changed_since(&p, since), want, "{what}");
        }
    }

    #[test]
    fn a_file_is_taken_as_unchanged_only_with_its_length_and_time_from_before_the_parent() {
        let bs = BLCKSZ as u64;
        let was = |size, mtime| Was {
            size,
            mtime,
            crc32c: 7,
        };
        let parent = Parent {
            backup_id: "p".into(),
            start: Lsn(0),
            end: Lsn(0),
            timeline: 1,
            files: [
                ("base/5/16384".to_owned(), was(10 * bs, 1000)),
                ("base/5/16385".to_owned(), was(10 * bs, 1099)),
                ("base/5/16386_vm".to_owned(), was(bs, 900)),
                ("pg_xact/0000".to_owned(), was(bs, 900)),
            ]
            .into_iter()
            .collect(),
            windows: HashMap::new(),
            began: Some(1100),
            foreign: false,
        };
        // (path, size now, mtime now) -> the parent's CRC when not read again
        for (path, size, mtime, want) in [
            ("base/5/16384", 10 * bs, 1000, Some(7)),
            // Written since: a later time, or another length.
            ("base/5/16384", 10 * bs, 1200, None),
            ("base/5/16384", 11 * bs, 1000, None),
            // Its last write shared a second, or the second before, with the parent's
            // start: it may have been written after the parent read it.
            ("base/5/16385", 10 * bs, 1099, None),
            // Not a main fork (the VM changes without moving page LSNs anyway), not a
            // relation, not in the parent.
            ("base/5/16386_vm", bs, 900, None),
            ("pg_xact/0000", bs, 900, None),
            ("base/5/16999", bs, 900, None),
        ] {
            assert_eq!(
                parent.unchanged(path, size, mtime),
                want,
                "{path} {size} {mtime}"
            );
        }
        // A time the manifest did not give (read as 0) is never a match.
        let mut no_time = Parent {
            files: parent.files.clone(),
            ..parent
        };
        no_time.files.insert("base/5/17000".into(), was(bs, 0));
        assert_eq!(no_time.unchanged("base/5/17000", bs, 0), None);
        let unknown = Parent {
            began: None,
            ..no_time
        };
        assert_eq!(unknown.unchanged("base/5/16384", 10 * bs, 1000), None);
    }

    #[test]
    fn only_main_forks_the_parent_had_go_block_by_block() {
        let parent = Parent {
            backup_id: "p".into(),
            start: Lsn(0),
            end: Lsn(0),
            timeline: 1,
            files: [
                ("base/5/16384", 8192 * 10),
                ("base/5/16384.1", 8192 * 3),
                ("base/5/16384_vm", 8192),
                ("base/5/16390", 100),
                ("pg_tblspc/16400/PG_18_1/5/16401", 8192),
                ("pg_xact/0000", 8192),
            ]
            .into_iter()
            .map(|(p, size)| {
                (
                    p.to_owned(),
                    Was {
                        size,
                        mtime: 0,
                        crc32c: 0,
                    },
                )
            })
            .collect(),
            windows: HashMap::new(),
            began: None,
            foreign: false,
        };
        let bs = BLCKSZ as u64;
        let cases = [
            ("base/5/16384", 12 * bs, Some(10)),
            ("base/5/16384", 4 * bs, Some(10)),
            ("base/5/16384.1", bs, Some(3)),
            ("base/5/16384_vm", bs, None),
            ("base/5/16390", bs, None),
            ("base/5/16384", 100, None),
            ("base/5/16384", 0, None),
            ("base/5/99999", bs, None),
            ("pg_tblspc/16400/PG_18_1/5/16401", bs, Some(1)),
            ("pg_xact/0000", bs, None),
        ];
        for (path, size, want) in cases {
            assert_eq!(parent.blocks_of(path, size), want, "{path} {size}");
        }
    }

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let h = header(&[1, 5, 7], 9);
        assert_eq!(h.len(), BLCKSZ);
        let back = read_header(&mut h.as_slice()).unwrap();
        assert_eq!(
            back,
            Header {
                blocks: vec![1, 5, 7],
                length: 9,
                bytes: BLCKSZ
            }
        );
        let empty = header(&[], 4);
        assert_eq!(empty.len(), 12);
        assert!(read_header(&mut empty.as_slice())
            .unwrap()
            .blocks
            .is_empty());
        let bad = [
            (header(&[5, 1], 9), "out of order"),
            (header(&[9], 9), "beyond"),
            (vec![0u8; 12], "magic"),
            (header(&[1], 9)[..20].to_vec(), "cut short"),
        ];
        for (bytes, want) in bad {
            let err = read_header(&mut bytes.as_slice()).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn an_incremental_on_another_data_directory_needs_wal_summaries() {
        // (same data directory, major) -> a full, because ...
        let cases = [
            (true, 15, None),
            (true, 18, None),
            (false, 17, None),
            (false, 18, None),
            (false, 16, Some("PostgreSQL 16 has no WAL summaries")),
            (false, 15, Some("PostgreSQL 15 has no WAL summaries")),
        ];
        for (same_pgdata, major, want) in cases {
            let got = why_not_here(same_pgdata, major);
            match want {
                None => assert_eq!(got, None, "{same_pgdata} {major}"),
                Some(w) => assert!(
                    got.as_deref()
                        .is_some_and(|g| g.contains(w) && g.contains("another data directory")),
                    "{got:?}"
                ),
            }
        }
    }

    #[test]
    fn why_an_incremental_is_not_possible() {
        assert_eq!(why_not(true, "1", "1", 18, 18, true), None);
        let cases = [
            (why_not(true, "1", "2", 18, 18, true), "another cluster"),
            (why_not(true, "1", "1", 17, 18, true), "PostgreSQL 17"),
            (why_not(true, "1", "1", 18, 18, false), "timeline history"),
            (why_not(false, "1", "1", 18, 18, true), "wal_log_hints"),
        ];
        for (got, want) in cases {
            assert!(got.as_deref().is_some_and(|g| g.contains(want)), "{got:?}");
        }
    }

    #[test]
    fn entries_sit_beside_the_file() {
        assert_eq!(entry_name("base/5/16384.1"), "base/5/INCREMENTAL.16384.1");
        assert_eq!(entry_name("PG_18_1/5/16401"), "PG_18_1/5/INCREMENTAL.16401");
        assert_eq!(entry_name("16401"), "INCREMENTAL.16401");
    }

    #[test]
    fn window_checksums_round_trip_and_must_fit_the_manifest() {
        let was = |size| Was {
            size,
            mtime: 0,
            crc32c: 0,
        };
        let w = WINDOW;
        let files = vec![
            ("base/5/1".to_owned(), 2 * w + 8192, vec![1, 0xdead_beef, 3]),
            ("base/5/2".to_owned(), w, vec![7]),
            ("base/5/3".to_owned(), w, vec![7, 8]),
            ("base/5/4".to_owned(), w, vec![9]),
        ];
        let text = render_windows(&files);
        let sizes: HashMap<String, Was> = [
            ("base/5/1".to_owned(), was(2 * w + 8192)),
            ("base/5/2".to_owned(), was(w)),
            ("base/5/3".to_owned(), was(w)),
            ("base/5/4".to_owned(), was(2 * w)),
        ]
        .into_iter()
        .collect();
        let got = parse_windows(&text, &sizes).unwrap();
        assert_eq!(got["base/5/1"], vec![1, 0xdead_beef, 3]);
        assert_eq!(got["base/5/2"], vec![7]);
        // Too many windows for its size; another size than the manifest's.
        assert!(!got.contains_key("base/5/3"));
        assert!(!got.contains_key("base/5/4"));
        for bad in [
            "",
            "pgwarden-window-crc32c 2\n",
            "pgwarden-window-crc32c 1\nbase/5/1 10\n",
            "pgwarden-window-crc32c 1\nbase/5/1 10 0000000g\n",
            "pgwarden-window-crc32c 1\nbase/5/1 10 0000000\n",
            "pgwarden-window-crc32c 1\nbase/5/1 x 00000000\n",
        ] {
            assert!(parse_windows(bad, &sizes).is_err(), "{bad:?}");
        }
        let parent = Parent {
            backup_id: "p".into(),
            start: Lsn(0),
            end: Lsn(0),
            timeline: 1,
            files: sizes,
            windows: got,
            began: None,
            foreign: false,
        };
        // A window's CRC counts only at the same length in both copies.
        assert_eq!(parent.window("base/5/1", 1, w), Some(0xdead_beef));
        assert_eq!(parent.window("base/5/1", 2, 8192), Some(3));
        assert_eq!(parent.window("base/5/1", 2, w), None);
        assert_eq!(parent.window("base/5/1", 3, 8192), None);
        assert_eq!(parent.window("base/5/9", 0, w), None);
    }

    #[test]
    fn a_crc_combined_from_windows_is_the_whole_files() {
        let data: Vec<u8> = (0..3 * 1000 + 17).map(|i| (i * 7 % 251) as u8).collect();
        let mut crc = 0;
        for chunk in data.chunks(1000) {
            crc = crc32c::crc32c_combine(crc, crc32c::crc32c(chunk), chunk.len());
        }
        assert_eq!(crc, crc32c::crc32c(&data));
    }

    #[test]
    fn summaries_skip_only_windows_with_nothing_to_send() {
        let s = Select::Summaries {
            listed: vec![5, 300],
            from: 400,
            start: u64::MAX,
        };
        assert!(!s.may_skip(0, 128));
        assert!(s.may_skip(128, 256));
        assert!(!s.may_skip(256, 384));
        // Reaches `from`: blocks beyond the parent's length or a limit are sent.
        assert!(!s.may_skip(384, 512));
        assert!(!Select::Lsn {
            since: 0,
            before: 1000
        }
        .may_skip(0, 128));
        let valid = {
            let mut p = vec![0u8; BLCKSZ];
            p[12..14].copy_from_slice(&24u16.to_le_bytes());
            p[14..16].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
            p[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
            p[18..20].copy_from_slice(&(BLCKSZ as u16 | 4).to_le_bytes());
            p
        };
        assert!(s.keep(5, &valid));
        assert!(!s.keep(6, &valid));
        assert!(s.keep(400, &valid));
        assert!(
            s.keep(6, &vec![0u8; BLCKSZ]),
            "an uninitialised page is sent"
        );
    }
}
