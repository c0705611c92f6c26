//! Fetching one file from the archive (`restore_command`), for the daemon and the
//! one-shot command alike.
//!
//! The object is streamed through decompression into a temp file beside the
//! destination, checked on the way, and renamed into place only when its integrity is
//! established; otherwise nothing is left. Integrity comes from, in this order: the
//! SHA-256 recorded with the object; the codec's own checksum (gzip's CRC, a zstd
//! frame checksum); for a WAL segment without either (an uncompressed object whose
//! metadata was lost, or one barman-cloud wrote), the CRC-32C of every WAL record in
//! it; for a timeline history file, its syntax. Anything else is refused. A segment
//! also has every page header checked (see [`header::PageCheck`]), and restored into a
//! cluster (`pg_wal` or the spool beside `PG_VERSION`) it must be WAL of that cluster's
//! major: postgres would take another major's page for the end of WAL and end a
//! recovery early.

use super::compress::Codec;
use super::local::LocalDir;
use super::names::{WalKind, WalName};
use super::storage::Storage;
use super::{header, records, ArchiveConfig, WalError};
use sha2::Digest;
use std::io::{self, Read, Seek, Write};

/// The largest file a restore will produce (the largest WAL segment size).
const MAX_FILE: u64 = 1 << 30;

/// Fetches `wal` from the archive into `dest_name` in `dir`, verified. `NotFound`
/// when the archive lacks it.
pub async fn fetch<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    wal: &WalName,
    dir: &LocalDir,
    dest_name: &str,
) -> Result<(), WalError> {
    let (key, codec) = match super::present::lookup(storage, &cfg.base(), wal).await? {
        super::present::Presence::Readable { key, codec } => (key, codec),
        super::present::Presence::Unreadable { why, .. } => return Err(WalError::Invalid(why)),
        super::present::Presence::Missing => return Err(missing(cfg, storage, wal, dir).await),
    };
    let Some((body, info)) = storage.get(&key).await? else {
        return Err(WalError::NotFound(wal.name.clone()));
    };
    let (wal, dir, dest_name) = (wal.clone(), dir.clone(), dest_name.to_owned());
    let major = cluster_major(dir.path());
    tokio::task::spawn_blocking(move || {
        dir.write(&dest_name, |file| {
            decode_verified(&body, codec, info.sha256.as_deref(), &wal, major, file)
        })
    })
    .await
    .map_err(|e| WalError::Io(io::Error::other(e)))?
    .map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => WalError::Invalid(format!("{key}: {e}")),
        _ => WalError::Io(e),
    })
}

/// Why `wal` is not restored: a segment missing while a later one of its timeline is
/// archived is a hole, an error that stops a recovery (exit 255) instead of the "not
/// found" that a recovery to the end of the archive takes for its end and promotes at,
/// short of every later commit.
async fn missing<S: Storage>(
    cfg: &ArchiveConfig,
    storage: &S,
    wal: &WalName,
    dir: &LocalDir,
) -> WalError {
    let seg_size = segment_size_in(dir.path()).unwrap_or(16 << 20);
    match super::present::later_on_timeline(storage, &cfg.base(), wal, seg_size).await {
        Ok(Some(later)) => WalError::Invalid(format!(
            "WAL segment {} is missing from the archive, but {later}, later on the same timeline, is there: \
             the archive has a hole, and a recovery would end short of every commit after it; \
             put the segment back, or recover to a target before it",
            wal.name
        )),
        Ok(None) => WalError::NotFound(wal.name.clone()),
        Err(e) => WalError::Storage(e),
    }
}

/// The WAL segment size of the cluster `dir` (its pg_wal) belongs to: the size of a
/// segment in it (every one has that size, and so has `RECOVERYXLOG`, the last one
/// restored), when there is one.
fn segment_size_in(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        let segment = name == "RECOVERYXLOG"
            || WalName::parse(name).is_some_and(|w| w.kind == super::names::WalKind::Segment);
        let len = e.metadata().ok()?.len();
        (segment && len.is_power_of_two() && len >= 1 << 20).then_some(len)
    })
}

/// The major of the cluster `dir` belongs to: `PG_VERSION` beside it (`dir` is its
/// `pg_wal`, or the daemon's spool). None for a directory outside a cluster.
fn cluster_major(dir: &std::path::Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.parent()?.join("PG_VERSION")).ok()?;
    text.trim().parse().ok()
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Decodes `body` into `file`, checking it; see the module documentation. A segment
/// must be WAL of PostgreSQL `major`, when given. Integrity failures are `InvalidData`
/// errors.
pub fn decode_verified(
    body: &[u8],
    codec: Codec,
    sha256: Option<&str>,
    wal: &WalName,
    major: Option<u32>,
    file: &mut std::fs::File,
) -> io::Result<()> {
    let self_checked = codec.self_verifying(&body[..body.len().min(16)]);
    let mut hasher = sha2::Sha256::new();
    let mut pages =
        (wal.kind == WalKind::Segment).then(|| header::PageCheck::new(wal).for_major(major));
    let mut out = io::BufWriter::with_capacity(super::compress::CHUNK, &mut *file);
    codec
        .decode(&mut &body[..], MAX_FILE, &mut |chunk| {
            hasher.update(chunk);
            if let Some(p) = pages.as_mut() {
                p.feed(chunk).map_err(|e| {
                    corrupt(format!(
                        "{e}; the object is corrupt, or not that WAL segment"
                    ))
                })?;
            }
            out.write_all(chunk)
        })
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => e,
            _ if codec != Codec::None => {
                corrupt(format!("does not decompress ({e}); the object is corrupt"))
            }
            _ => e,
        })?;
    out.flush()?;
    drop(out);
    let seg = match pages {
        Some(p) => Some(p.finish().map_err(|e| {
            corrupt(format!(
                "{e}; the object is corrupt, or not that WAL segment"
            ))
        })?),
        None => None,
    };
    if let Some(expected) = sha256 {
        let got = super::hex(&hasher.finalize());
        if got != expected {
            return Err(corrupt(format!(
                "fails its checksum (sha256 {got}, recorded {expected}); the object is corrupt"
            )));
        }
        return Ok(());
    }
    if self_checked {
        return Ok(());
    }
    // Neither a recorded checksum nor one in the object: check what the file says.
    file.rewind()?;
    match (wal.kind, seg) {
        (WalKind::Segment, Some(h)) => {
            records::verify(file, h.seg_size as u64, h.block_size as usize, true)
                .map(|_| ())
                .map_err(|e| corrupt(format!("{e}; the object is corrupt")))
        }
        (WalKind::History, _) => {
            let mut text = String::new();
            file.take(MAX_FILE).read_to_string(&mut text).map_err(|_| {
                corrupt("is not text; the history file is corrupt".to_owned())
            })?;
            history_is_plausible(&text)
                .then_some(())
                .ok_or_else(|| corrupt("is not a timeline history file; the object is corrupt".to_owned()))
        }
        _ => Err(corrupt(
            "carries no checksum, and none was recorded with it: its integrity cannot be established, so it is not restored"
                .to_owned(),
        )),
    }
}

/// Every line of a timeline history file is blank, a comment, or
/// `<timeline> <tab> <X/X LSN> <tab> <reason>`, timelines increasing.
fn history_is_plausible(text: &str) -> bool {
    let mut last = 0u32;
    text.lines().all(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return true;
        }
        let mut fields = line.split_whitespace();
        let tli = fields.next().and_then(|t| t.parse::<u32>().ok());
        let lsn = fields
            .next()
            .and_then(|l| l.split_once('/'))
            .is_some_and(|(a, b)| {
                u32::from_str_radix(a, 16).is_ok() && u32::from_str_radix(b, 16).is_ok()
            });
        match tli {
            Some(t) if lsn && t > last => {
                last = t;
                true
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment() -> (WalName, Vec<u8>) {
        let name = WalName::parse("000000010000000000000003").unwrap();
        let mut seg = records::tests::segment(1 << 20, 8192, &[100, 3000, 24, 9000]);
        let real = header::fake_segment(&name.name, 1 << 20, 7);
        // Page headers from the fake segment, records from the record builder.
        for page in (0..1 << 20).step_by(8192) {
            let h = if page == 0 { 40 } else { 24 };
            seg[page..page + h].copy_from_slice(&real[page..page + h]);
        }
        (name, seg)
    }

    fn restore(body: &[u8], codec: Codec, sha: Option<&str>, wal: &WalName) -> io::Result<Vec<u8>> {
        let mut f = tempfile::tempfile()?;
        decode_verified(body, codec, sha, wal, None, &mut f)?;
        f.rewind()?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Into a cluster of a known major, only that major's WAL is restored.
    #[test]
    fn wal_of_another_major_is_refused() {
        let (name, seg) = segment(); // PostgreSQL 15's page magic
        let sha = super::super::sha256_hex(&seg);
        for (major, ok) in [(Some(15), true), (None, true), (Some(18), false)] {
            let mut f = tempfile::tempfile().unwrap();
            let got = decode_verified(&seg, Codec::None, Some(&sha), &name, major, &mut f);
            match ok {
                true => got.unwrap(),
                false => {
                    let e = got.unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    assert!(e.to_string().contains("PostgreSQL 15's (0xd110)"), "{e}");
                    assert!(
                        e.to_string().contains("this cluster is PostgreSQL 18"),
                        "{e}"
                    );
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        assert_eq!(cluster_major(&dir.path().join("pg_wal")), None);
        std::fs::write(dir.path().join("PG_VERSION"), "18\n").unwrap();
        assert_eq!(cluster_major(&dir.path().join("pg_wal")), Some(18));
    }

    /// Every codec, with or without the recorded checksum: a flipped bit is refused.
    #[test]
    fn integrity_is_established_for_every_codec_with_or_without_metadata() {
        let (name, seg) = segment();
        let sha = super::super::sha256_hex(&seg);
        let bare_zstd = zstd::bulk::compress(&seg, 1).unwrap();
        let objects = [
            (Codec::None, seg.clone()),
            (Codec::Gzip, Codec::Gzip.compress(&seg).unwrap()),
            (Codec::Zstd, Codec::Zstd.compress(&seg).unwrap()),
            (Codec::Zstd, bare_zstd.clone()),
        ];
        for (codec, body) in &objects {
            for meta in [Some(sha.as_str()), None] {
                assert_eq!(
                    restore(body, *codec, meta, &name).unwrap(),
                    seg,
                    "{codec:?} {meta:?}"
                );
            }
        }
        // A flip inside the first record's data, in the uncompressed stream.
        let mut flipped = seg.clone();
        flipped[40 + 60] ^= 0x01;
        for meta in [Some(sha.as_str()), None] {
            let e = restore(&flipped, Codec::None, meta, &name).unwrap_err();
            assert!(e.to_string().contains("corrupt"), "{e}");
            let e = restore(
                &zstd::bulk::compress(&flipped, 1).unwrap(),
                Codec::Zstd,
                meta,
                &name,
            )
            .unwrap_err();
            assert!(e.to_string().contains("corrupt"), "{e}");
        }
        let zst = Codec::Zstd.compress(&seg).unwrap();
        let mut bad = zst.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x20;
        assert!(restore(&bad, Codec::Zstd, None, &name).is_err());
    }

    #[test]
    fn history_files_and_other_kinds_without_any_checksum() {
        let h = WalName::parse("00000002.history").unwrap();
        let text = b"1\t0/3000060\tno recovery target specified\n";
        assert!(restore(text, Codec::None, None, &h).is_ok());
        assert!(restore(b"1\t0/30zz060\tx\n", Codec::None, None, &h).is_err());
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        let e = restore(b"START WAL LOCATION", Codec::None, None, &b).unwrap_err();
        assert!(e.to_string().contains("cannot be established"), "{e}");
        assert!(restore(&Codec::Gzip.compress(b"x").unwrap(), Codec::Gzip, None, &b).is_ok());
    }
}
