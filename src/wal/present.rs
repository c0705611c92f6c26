//! "Is this WAL file in the archive?": the one answer for every caller (the restore
//! command, the pre-restore check, a backup waiting for its WAL, `wal-verify`).
//!
//! An object counts for a file only under its exact key, bare or with one compression
//! extension. `<segment>.<offset>.backup` and `<segment>.partial` share a segment's
//! prefix and are not that segment: a check that took any key starting with the name
//! for the segment passed with the segment gone. An object in a codec pgwarden cannot
//! read (barman-cloud's `.bz2` or `.snappy`) is there, but unusable: never "not found",
//! which a recovery takes for the end of the archive.

use super::compress::Codec;
use super::names::{WalKind, WalName};
use super::storage::{Storage, StorageError};

/// What the archive holds for one WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// An object pgwarden reads: its key and codec.
    Readable {
        /// The object's key.
        key: String,
        /// How it is compressed.
        codec: Codec,
    },
    /// An object pgwarden cannot read.
    Unreadable {
        /// The object's key.
        key: String,
        /// Why, for the error message.
        why: String,
    },
    /// Nothing.
    Missing,
}

/// Looks `wal` up under the archive root `base`.
pub async fn lookup<S: Storage>(
    storage: &S,
    base: &str,
    wal: &WalName,
) -> Result<Presence, StorageError> {
    let key = wal.key(base);
    let listed = storage.list(&key, 32).await?;
    Ok(classify(&key, listed.iter().map(|o| o.key.as_str())))
}

/// What the keys listed under `key` say about the file at `key`: a readable object
/// first (zstd, gzip, then uncompressed, pgwarden's own order), else an unreadable one.
pub fn classify<'a>(key: &str, listed: impl Iterator<Item = &'a str>) -> Presence {
    let mut readable: Option<(String, Codec)> = None;
    let mut unreadable: Option<(String, String)> = None;
    for k in listed {
        let Some(rest) = k.strip_prefix(key) else {
            continue;
        };
        let ext = match rest {
            "" => "",
            _ => match rest.strip_prefix('.') {
                Some(ext) if !ext.contains('.') => ext,
                _ => continue,
            },
        };
        match ext {
            "" | "gz" | "zst" => {
                let codec = match ext {
                    "gz" => Codec::Gzip,
                    "zst" => Codec::Zstd,
                    _ => Codec::None,
                };
                let rank = |c: Codec| match c {
                    Codec::Zstd => 0,
                    Codec::Gzip => 1,
                    Codec::None => 2,
                };
                if readable
                    .as_ref()
                    .is_none_or(|(_, c)| rank(codec) < rank(*c))
                {
                    readable = Some((k.to_owned(), codec));
                }
            }
            "bz2" | "snappy" | "xz" | "lz4" => {
                unreadable = Some((
                    k.to_owned(),
                    format!("{k} is compressed with {ext}, which pgwarden does not read; decompress it in place (keeping its name without .{ext}) or restore with the tool that wrote it"),
                ));
            }
            // `.partial`, `.<offset>.backup` and anything else: another file.
            _ => {}
        }
    }
    match (readable, unreadable) {
        (Some((key, codec)), _) => Presence::Readable { key, codec },
        (None, Some((key, why))) => Presence::Unreadable { key, why },
        (None, None) => Presence::Missing,
    }
}

/// For a segment missing from the archive: the name of a later segment of its timeline
/// that is there, which makes the missing one a hole rather than the end of the
/// archive. Later segments of a timeline that a newer timeline's history says ended
/// before the missing one do not count: they are a branch the archive's newest
/// history left (a former primary's WAL written after the fork), not a hole.
/// Looks in the missing segment's directory and the next one (4 GiB of WAL).
pub async fn later_on_timeline<S: Storage>(
    storage: &S,
    base: &str,
    wal: &WalName,
    seg_size: u64,
) -> Result<Option<String>, StorageError> {
    if wal.kind != WalKind::Segment {
        return Ok(None);
    }
    let (Some(dir), Some((log, _))) = (wal.hash_dir(), wal.log_seg) else {
        return Ok(None);
    };
    let root = base.trim_end_matches('/');
    let sep = if root.is_empty() { "" } else { "/" };
    let mut later = None;
    let next_dir = format!("{:08X}{:08X}", wal.timeline, log.wrapping_add(1));
    for d in [dir.to_owned(), next_dir] {
        let listed = storage
            .list(&format!("{root}{sep}wals/{d}/"), 100_000)
            .await?;
        later = listed.iter().find_map(|o| {
            let name = o.key.rsplit('/').next()?;
            let seg = name.split('.').next()?;
            let is_later = seg.len() == 24 && seg > wal.name.as_str();
            let whole = WalName::parse(seg).is_some_and(|w| w.kind == WalKind::Segment)
                && !name.ends_with(".partial")
                && !name.ends_with(".backup");
            (is_later && whole).then(|| seg.to_owned())
        });
        if later.is_some() {
            break;
        }
    }
    let Some(later) = later else {
        return Ok(None);
    };
    // A newer timeline that forked from this one within or before the missing segment
    // makes the later segments a left branch (postgres reads the newer timeline's copy).
    let end = wal
        .segno(seg_size)
        .unwrap_or(0)
        .saturating_add(1)
        .saturating_mul(seg_size);
    for t in wal.timeline.saturating_add(1)..=wal.timeline.saturating_add(16) {
        let history = format!("{root}{sep}wals/{t:08X}.history");
        let Some((body, _)) = storage.get(&history).await? else {
            continue;
        };
        if ended_at_or_before(&String::from_utf8_lossy(&body), wal.timeline, end) {
            return Ok(None);
        }
    }
    Ok(Some(later))
}

/// Whether a timeline history says `timeline` ended at or before byte `position`.
fn ended_at_or_before(history: &str, timeline: u32, position: u64) -> bool {
    history.lines().any(|line| {
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            return false;
        };
        let Ok(tli) = tli.parse::<u32>() else {
            return false;
        };
        let Some((hi, lo)) = lsn.split_once('/') else {
            return false;
        };
        let (Ok(hi), Ok(lo)) = (u64::from_str_radix(hi, 16), u64::from_str_radix(lo, 16)) else {
            return false;
        };
        tli == timeline && (hi << 32 | lo) <= position
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "p/s/wals/0000000100000000/000000010000000000000003";

    fn look(keys: &[&str]) -> Presence {
        let listed: Vec<String> = keys.iter().map(|k| format!("{KEY}{k}")).collect();
        classify(KEY, listed.iter().map(String::as_str))
    }

    #[test]
    fn only_the_exact_key_counts() {
        // A backup history file and a partial segment share the prefix: not the segment.
        assert_eq!(look(&[".00000028.backup", ".partial"]), Presence::Missing);
        assert_eq!(look(&[".partial.gz"]), Presence::Missing);
        assert_eq!(look(&[]), Presence::Missing);
        assert_eq!(
            look(&["", ".00000028.backup"]),
            Presence::Readable {
                key: KEY.to_owned(),
                codec: Codec::None
            }
        );
        assert_eq!(
            look(&[".gz", ".zst"]),
            Presence::Readable {
                key: format!("{KEY}.zst"),
                codec: Codec::Zstd
            }
        );
    }

    #[test]
    fn an_object_in_a_codec_pgwarden_cannot_read_is_never_missing() {
        match look(&[".bz2"]) {
            Presence::Unreadable { key, why } => {
                assert_eq!(key, format!("{KEY}.bz2"));
                assert!(why.contains("bz2"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(look(&[".snappy"]), Presence::Unreadable { .. }));
        // A readable copy beside it wins.
        assert!(matches!(
            look(&[".bz2", ".gz"]),
            Presence::Readable {
                codec: Codec::Gzip,
                ..
            }
        ));
    }

    #[test]
    fn history_lines_say_where_a_timeline_ended() {
        let h = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tx\n";
        assert!(ended_at_or_before(h, 1, 0x3000148));
        assert!(ended_at_or_before(h, 2, 0x6000000));
        assert!(!ended_at_or_before(h, 2, 0x4000000));
        assert!(!ended_at_or_before(h, 3, u64::MAX));
        assert!(!ended_at_or_before("garbage", 1, 0));
    }
}
