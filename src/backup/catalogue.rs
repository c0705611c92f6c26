//! The catalogue as deleting sees it: every backup with a `backup.info` (any status,
//! as barman-cloud's `CloudBackupCatalog` reads them), the objects under each
//! backup's directory, barman's keep annotations, and the archived WAL.
//!
//! Reading is lenient where barman is (a FAILED backup may lack its WAL fields) and
//! strict where deleting needs it: a `backup.info` that cannot be read stops the
//! whole deletion, as it does in `barman-cloud-backup-delete` ("unsafe to proceed").

use super::marker::{Running, DELETING, RUNNING};
use crate::civil::parse_barman_time;
use crate::wal::storage::{Bytes, ObjectInfo, Storage, StorageError};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// barman's keep annotation (`base/<id>/annotations/keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// `full`, or any other target, which barman treats as full for safety: the
    /// backup and the WAL after it stay.
    Full,
    /// `standalone`: the backup and the WAL from its begin to its end stay.
    Standalone,
}

impl Keep {
    /// The annotation's first line, as barman reads it.
    pub fn from_annotation(text: &str) -> Keep {
        match text.lines().next().unwrap_or("").trim() {
            "standalone" => Keep::Standalone,
            _ => Keep::Full,
        }
    }
}

/// What deleting needs to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id (the directory name).
    pub backup_id: String,
    /// `DONE`, `WAITING_FOR_WALS`, `FAILED`, ...
    pub status: String,
    /// The timeline it began on.
    pub timeline: Option<u32>,
    /// Its first WAL segment.
    pub begin_wal: Option<String>,
    /// Its last WAL segment.
    pub end_wal: Option<String>,
    /// When it ended.
    pub end_time: Option<SystemTime>,
    /// A keep annotation, if any.
    pub keep: Option<Keep>,
    /// For an incremental backup, the backup it builds on (kept while it is).
    pub parent: Option<String>,
}

impl Entry {
    /// barman's `STATUS_COPY_DONE`: the backups that count as neighbours when barman
    /// decides which WAL a deleted backup leaves unneeded.
    pub fn copy_done(&self) -> bool {
        matches!(self.status.as_str(), "DONE" | "WAITING_FOR_WALS")
    }

    /// A backup the retention policies count.
    pub fn done(&self) -> bool {
        self.status == "DONE"
    }

    /// Reads the fields deleting needs from a `backup.info`. `None` in a field is
    /// barman's "not set".
    pub fn parse(backup_id: &str, text: &str) -> Result<Entry, String> {
        let fields = super::info::Fields::read(text);
        let v = fields.values;
        let get = |k: &str| v.get(k).map(String::as_str);
        let status = get("status")
            .ok_or_else(|| format!("backup.info of {backup_id} has no status"))?
            .to_owned();
        let timeline = match get("timeline") {
            Some(t) => Some(t.parse().map_err(|_| {
                format!("backup.info of {backup_id}: timeline {t:?} is not a number")
            })?),
            None => None,
        };
        // Only a DONE backup's end time is ever read (by a recovery window).
        let end_time = match get("end_time").map(|t| (t, parse_barman_time(t))) {
            Some((_, Some(t))) => Some(t),
            Some((t, None)) if status == "DONE" => {
                return Err(format!(
                    "backup.info of {backup_id}: end_time {t:?} is not a time"
                ))
            }
            _ => None,
        };
        let entry = Entry {
            backup_id: backup_id.to_owned(),
            status,
            timeline,
            begin_wal: get("begin_wal").map(str::to_owned),
            end_wal: get("end_wal").map(str::to_owned),
            end_time,
            keep: None,
            parent: fields
                .extra
                .get(super::engine::incremental::PARENT_KEY)
                .cloned(),
        };
        if entry.copy_done() && (entry.begin_wal.is_none() || entry.timeline.is_none()) {
            return Err(format!(
                "backup.info of {backup_id}: a {} backup without its timeline or begin_wal",
                entry.status
            ));
        }
        Ok(entry)
    }
}

/// An archived WAL object as barman-cloud recognises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// Its key.
    pub key: String,
    /// The file name without the compression suffix.
    pub name: String,
}

/// Compression suffixes barman-cloud strips from WAL names (3.4 knows `.gz`, `.bz2`
/// and `.snappy`; later releases and pgwarden add the others).
const WAL_SUFFIXES: &[&str] = &[".gz", ".bz2", ".snappy", ".zst", ".lz4", ".xz"];

/// barman's `_xlog_re`: a segment (optionally `.partial` or `.XXXXXXXX.backup`) or a
/// `.history` file, hex digits in either case.
pub fn is_any_xlog_file(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tli) = name.strip_suffix(".history") {
        return hex(tli, 8);
    }
    let (seg, rest) = match name.get(..24) {
        Some(seg) => (seg, &name[24..]),
        None => return false,
    };
    if !hex(seg, 24) {
        return false;
    }
    rest.is_empty()
        || rest == ".partial"
        || rest
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix(".backup"))
            .is_some_and(|off| hex(off, 8))
}

/// The WAL file name of an object key under `wals/`, as barman-cloud's
/// `get_wal_paths` reads it; `None` for anything else.
pub fn wal_name(key: &str) -> Option<String> {
    let base = key.rsplit('/').next()?;
    if is_any_xlog_file(base) {
        return Some(base.to_owned());
    }
    WAL_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .filter(|n| is_any_xlog_file(n))
        .map(str::to_owned)
}

/// Everything deleting needs, read from the archive.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Every listed backup, by id (string order is time order).
    pub backups: BTreeMap<String, Entry>,
    /// The objects under each listed backup's directory, `backup.info` excluded.
    pub objects: BTreeMap<String, Vec<String>>,
    /// The key of each listed backup's `backup.info`.
    pub info_keys: BTreeMap<String, String>,
    /// The archived WAL.
    pub wal: Vec<WalObject>,
    /// Directories without `backup.info`: every object under each, and its
    /// `backup.running` marker when it has a readable one (see [`super::marker`]).
    pub unlisted: BTreeMap<String, (Vec<String>, Option<Running>)>,
    /// Directories marked `backup.deleting`: a deletion that was cut short. Every
    /// object under each, the marker included; such a backup is not in `backups`.
    pub deleting: BTreeMap<String, Vec<String>>,
}

/// How many catalogue objects are fetched at once: hundreds of `backup.info` files on
/// S3 are read in the time of a few round trips, not of hundreds.
const IN_FLIGHT: usize = 16;

/// The objects listed under `prefix` (`<server_base>/base/`), grouped by backup
/// directory: each directory's name and the keys of every object under it.
pub fn directories(prefix: &str, listed: &[ObjectInfo]) -> BTreeMap<String, Vec<String>> {
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for obj in listed {
        let Some((id, _)) = obj
            .key
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        dirs.entry(id.to_owned()).or_default().push(obj.key.clone());
    }
    dirs
}

/// The content of each of `keys`, fetched [`IN_FLIGHT`] at a time: `None` for an
/// object that vanished since it was listed. The first storage error ends it.
pub async fn fetch_all<S: Storage>(
    storage: &S,
    keys: Vec<String>,
) -> Result<BTreeMap<String, Option<Bytes>>, StorageError> {
    stream::iter(keys)
        .map(|key| async move {
            let body = storage.get(&key).await?.map(|(b, _)| b);
            Ok::<_, StorageError>((key, body))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Reads the catalogue of the server at `server_base`. A directory without a
/// `backup.info` (a backup being taken, or an interrupted one) is not a backup: it is
/// in [`Catalogue::unlisted`], and one marked for deletion in
/// [`Catalogue::deleting`].
pub async fn load<S: Storage>(storage: &S, server_base: &str) -> anyhow::Result<Catalogue> {
    use anyhow::Context;
    let prefix = super::base_prefix(server_base);
    let listed = storage
        .list(&prefix, usize::MAX)
        .await
        .with_context(|| format!("list {prefix}"))?;
    let mut cat = Catalogue::default();
    let files = directories(&prefix, &listed);
    // backup.info, backup.running and annotations/keep of every directory, at once.
    let wanted = files
        .iter()
        .filter(|(id, keys)| !keys.contains(&format!("{prefix}{id}/{DELETING}")))
        .flat_map(|(id, keys)| {
            [
                format!("{prefix}{id}/backup.info"),
                format!("{prefix}{id}/{RUNNING}"),
                format!("{prefix}{id}/annotations/keep"),
            ]
            .into_iter()
            .filter(|k| keys.contains(k))
        })
        .collect();
    let mut fetched = fetch_all(storage, wanted)
        .await
        .with_context(|| format!("read the backups under {prefix}"))?;
    for (id, keys) in files {
        let info_key = format!("{prefix}{id}/backup.info");
        if keys.contains(&format!("{prefix}{id}/{DELETING}")) {
            cat.deleting.insert(id, keys);
            continue;
        }
        if !keys.contains(&info_key) {
            let marker = fetched
                .remove(&format!("{prefix}{id}/{RUNNING}"))
                .flatten()
                .and_then(|b| Running::parse(&b));
            cat.unlisted.insert(id, (keys, marker));
            continue;
        }
        let body = fetched
            .remove(&info_key)
            .flatten()
            .with_context(|| format!("{info_key} vanished while reading the catalogue"))?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| anyhow::anyhow!("{info_key} is not text"))?;
        let mut entry = Entry::parse(&id, &text).map_err(anyhow::Error::msg)?;
        let keep_key = format!("{prefix}{id}/annotations/keep");
        if keys.contains(&keep_key) {
            // An annotation that is there at all keeps the backup, as barman's
            // `should_keep_backup` does.
            entry.keep = fetched
                .remove(&keep_key)
                .flatten()
                .map(|b| Keep::from_annotation(&String::from_utf8_lossy(&b)));
        }
        cat.objects.insert(
            id.clone(),
            keys.into_iter().filter(|k| *k != info_key).collect(),
        );
        cat.info_keys.insert(id.clone(), info_key);
        cat.backups.insert(id, entry);
    }
    let wal_prefix = format!("{server_base}/wals/");
    let wal = storage
        .list(&wal_prefix, usize::MAX)
        .await
        .with_context(|| format!("list {wal_prefix}"))?;
    cat.wal = wal
        .into_iter()
        .filter_map(|o| {
            wal_name(&o.key).map(|name| WalObject {
                key: o.key.clone(),
                name,
            })
        })
        .collect();
    Ok(cat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_wal_names_as_barman_cloud_does() {
        let cases = [
            (
                "s/wals/0000000100000000/000000010000000000000002.gz",
                Some("000000010000000000000002"),
            ),
            (
                "s/wals/0000000100000000/000000010000000000000002.zst",
                Some("000000010000000000000002"),
            ),
            (
                "s/wals/0000000100000000/000000010000000000000002",
                Some("000000010000000000000002"),
            ),
            (
                "s/wals/0000000100000000/000000010000000a0000000b.bz2",
                Some("000000010000000a0000000b"),
            ),
            (
                "s/wals/0000000100000000/000000010000000000000002.00000028.backup.gz",
                Some("000000010000000000000002.00000028.backup"),
            ),
            (
                "s/wals/0000000200000000/000000020000000000000005.partial.gz",
                Some("000000020000000000000005.partial"),
            ),
            ("s/wals/00000002.history.gz", Some("00000002.history")),
            ("s/wals/00000002.history", Some("00000002.history")),
            (
                "s/wals/0000000100000000/000000010000000000000002.gz.tmp",
                None,
            ),
            (
                "s/wals/0000000100000000/000000010000000000000002.lzma",
                None,
            ),
            ("s/wals/0000000100000000/00000001000000000000002", None),
            (
                "s/wals/0000000100000000/000000010000000000000002.0000028.backup",
                None,
            ),
            ("s/wals/pgwarden-system-identifier", None),
        ];
        for (key, want) in cases {
            assert_eq!(wal_name(key).as_deref(), want, "{key}");
        }
    }

    #[test]
    fn reads_what_deleting_needs_from_backup_info() {
        let done = "backup_label=None\nstatus=DONE\ntimeline=1\nbegin_wal=000000010000000000000007\n\
                    end_wal=000000010000000000000007\nend_time=2026-11-24 03:50:41.000000+00:00\n# made_by: pgwarden\n";
        let e = Entry::parse("20261124T035040", done).unwrap();
        assert_eq!(e.status, "DONE");
        assert_eq!(e.timeline, Some(1));
        assert_eq!(e.begin_wal.as_deref(), Some("000000010000000000000007"));
        assert!(e.end_time.is_some() && e.done() && e.copy_done());
        // A failed barman backup may lack its WAL fields: it is still listed.
        let failed = "status=FAILED\ntimeline=None\nbegin_wal=None\nend_time=None\n";
        let e = Entry::parse("x", failed).unwrap();
        assert!(!e.copy_done() && e.timeline.is_none());
        assert!(Entry::parse("x", "status=DONE\ntimeline=1\n").is_err());
        assert!(Entry::parse("x", "timeline=1\n").is_err());
        assert!(Entry::parse("x", "status=DONE\ntimeline=one\nbegin_wal=0\n").is_err());
        let odd_time = "status=DONE\ntimeline=1\nbegin_wal=0\nend_time=yesterday\n";
        assert!(Entry::parse("x", odd_time).is_err());
        let odd_failed = "status=FAILED\nend_time=yesterday\n";
        assert_eq!(Entry::parse("x", odd_failed).unwrap().end_time, None);
        assert_eq!(Keep::from_annotation("standalone"), Keep::Standalone);
        assert_eq!(Keep::from_annotation("full"), Keep::Full);
        assert_eq!(Keep::from_annotation("something else"), Keep::Full);
    }
}
