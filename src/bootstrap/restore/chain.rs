//! Restoring an incremental backup: its chain (the incremental, the backups it builds
//! on, back to a full one) in one pass, each block written once.
//!
//! The backups are read newest first. The newest says which files the cluster has, how
//! long each is, and holds whole files and the blocks that changed since its parent
//! (see [`crate::backup::engine::incremental`]); each older backup then fills only the
//! blocks still missing, up to the length the newest gave, and nothing of a file the
//! newest does not have. The full backup at the end of the chain has every file whole,
//! so when it is done every block is there; a block still missing means the chain is
//! damaged, and the restore fails naming the file. The newest backup's manifest lists
//! the files as they were whole, so `pg_verifybackup` then checks the reconstruction.
//!
//! The parts of one backup hold disjoint files and are extracted concurrently; the
//! backups follow one another.

use crate::backup::engine::incremental;
use crate::backup::engine::pages::BLCKSZ;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// What has been written of a file the restored cluster has.
enum State {
    /// Complete.
    Whole,
    /// Built block by block: its length in blocks and which are written.
    Blocks {
        length: u32,
        written: Vec<u64>,
        count: u32,
    },
}

impl State {
    fn blocks(length: u32) -> State {
        State::Blocks {
            length,
            written: vec![0; (length as usize).div_ceil(64)],
            count: 0,
        }
    }
}

/// The files of the restored cluster (by their path where they are restored: PGDATA's
/// and each tablespace's), as the chain's backups fill them.
#[derive(Default)]
pub struct Files {
    state: Mutex<HashMap<PathBuf, State>>,
}

impl Files {
    fn take(&self, path: &Path) -> Option<State> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path)
    }

    fn put(&self, path: PathBuf, s: State) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, s);
    }

    /// After the last backup: every file complete, or the first that is not.
    pub fn check_complete(&self) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<String> = state
            .iter()
            .filter_map(|(path, s)| match s {
                State::Blocks { length, count, .. } if count < length => {
                    Some(format!("{} ({} of {length} blocks)", path.display(), count))
                }
                _ => None,
            })
            .collect();
        missing.sort();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the backup chain does not hold every block: {}{}; the chain is damaged",
            missing
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        ))
    }
}

/// A tar entry's path, relative and without `..`: anything else is refused.
pub(super) fn safe(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::other(format!(
                    "the tar entry {} leaves the directory",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Reads one part of backup `newest` (true for the first backup of the chain) from
/// `tar` into `dest`, `incremental` saying whether that backup holds changed blocks.
pub fn apply(
    tar: &mut dyn Read,
    dest: &Path,
    newest: bool,
    incremental: bool,
    files: &Files,
) -> io::Result<()> {
    let mut ar = super::extract::archive(tar);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = safe(&entry.path()?)?;
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            // Directories (and anything else) are the newest backup's.
            if newest {
                entry.unpack_in(dest)?;
            }
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        match name.strip_prefix(incremental::PREFIX) {
            Some(real) if incremental => {
                let real = path.with_file_name(real);
                let h = incremental::read_header(&mut entry)
                    .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
                blocks(&mut entry, &dest.join(real), newest, &h, files)?;
            }
            _ => whole(&mut entry, dest, &path, newest, files)?,
        }
    }
    Ok(())
}

/// The blocks of an incremental entry, after its header.
fn blocks(
    r: &mut impl Read,
    path: &Path,
    newest: bool,
    h: &incremental::Header,
    files: &Files,
) -> io::Result<()> {
    let state = match files.take(path) {
        Some(s) => s,
        None if newest => {
            // The file's first entry: it is this long, its blocks come from here and
            // from the older backups.
            let f = open(path, true)?;
            f.set_len(u64::from(h.length) * BLCKSZ as u64)?;
            State::blocks(h.length)
        }
        // Not a file of the restored cluster.
        None => return Ok(()),
    };
    let State::Blocks {
        length,
        mut written,
        mut count,
    } = state
    else {
        files.put(path.to_path_buf(), state);
        return Ok(());
    };
    let f = open(path, false)?;
    let mut page = vec![0u8; BLCKSZ];
    for &b in &h.blocks {
        r.read_exact(&mut page)?;
        if b < length && mark(&mut written, b) {
            f.write_all_at(&page, u64::from(b) * BLCKSZ as u64)?;
            count += 1;
        }
    }
    files.put(
        path.to_path_buf(),
        State::Blocks {
            length,
            written,
            count,
        },
    );
    Ok(())
}

/// A whole file: the newest backup's is written as it is; an older backup's fills the
/// blocks a newer one did not have.
fn whole<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    path: &Path,
    newest: bool,
    files: &Files,
) -> io::Result<()> {
    let full = dest.join(path);
    if newest {
        entry.unpack_in(dest)?;
        files.put(full, State::Whole);
        return Ok(());
    }
    let path = full.as_path();
    let (length, mut written, mut count) = match files.take(path) {
        Some(State::Blocks {
            length,
            written,
            count,
        }) => (length, written, count),
        // Complete already.
        Some(done) => {
            files.put(path.to_path_buf(), done);
            return Ok(());
        }
        // Not a file of the restored cluster.
        None => return Ok(()),
    };
    let f = open(path, false)?;
    let mut page = vec![0u8; BLCKSZ];
    for b in 0..length {
        let mut got = 0;
        while got < BLCKSZ {
            match entry.read(&mut page[got..])? {
                0 => break,
                n => got += n,
            }
        }
        if got < BLCKSZ {
            break;
        }
        if mark(&mut written, b) {
            f.write_all_at(&page, u64::from(b) * BLCKSZ as u64)?;
            count += 1;
        }
    }
    let state = if count == length {
        State::Whole
    } else {
        State::Blocks {
            length,
            written,
            count,
        }
    };
    files.put(path.to_path_buf(), state);
    Ok(())
}

/// Marks block `b` written; `false` when it already was.
fn mark(written: &mut [u64], b: u32) -> bool {
    let (word, bit) = ((b / 64) as usize, 1u64 << (b % 64));
    let Some(w) = written.get_mut(word) else {
        return false;
    };
    let fresh = *w & bit == 0;
    *w |= bit;
    fresh
}

fn open(path: &Path, create: bool) -> io::Result<std::fs::File> {
    if create {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries` (name, bytes).
    fn tar(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, body.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn blocks_of(fill: &[u8]) -> Vec<u8> {
        fill.iter().flat_map(|&f| vec![f; BLCKSZ]).collect()
    }

    fn incr(blocks: &[(u32, u8)], length: u32) -> Vec<u8> {
        let numbers: Vec<u32> = blocks.iter().map(|b| b.0).collect();
        let mut out = incremental::header(&numbers, length);
        for (_, fill) in blocks {
            out.extend(vec![*fill; BLCKSZ]);
        }
        out
    }

    #[test]
    fn newest_blocks_win_and_older_backups_fill_the_rest_up_to_the_newest_length() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::default();
        // Newest: the file is 4 blocks, block 3 is new; "gone" was dropped meanwhile.
        let newest = tar(&[
            ("base/1/INCREMENTAL.100", incr(&[(3, b'n')], 4)),
            ("PG_VERSION", b"18\n".to_vec()),
        ]);
        apply(&mut newest.as_slice(), dir.path(), true, true, &files).unwrap();
        // The middle one changed blocks 1 and 3 (3 is newer above).
        let middle = tar(&[("base/1/INCREMENTAL.100", incr(&[(1, b'm'), (3, b'x')], 4))]);
        apply(&mut middle.as_slice(), dir.path(), false, true, &files).unwrap();
        assert!(files
            .check_complete()
            .unwrap_err()
            .contains("base/1/100 (2 of 4 blocks)"));
        // The full: 5 blocks then (truncated since), and a file the newest lacks.
        let full = tar(&[
            ("base/1/100", blocks_of(b"fffff")),
            ("base/1/gone", b"old".to_vec()),
            ("PG_VERSION", b"17\n".to_vec()),
        ]);
        apply(&mut full.as_slice(), dir.path(), false, false, &files).unwrap();
        files.check_complete().unwrap();
        let got = std::fs::read(dir.path().join("base/1/100")).unwrap();
        assert_eq!(got, blocks_of(b"fmfn"));
        assert!(!dir.path().join("base/1/gone").exists());
        assert_eq!(
            std::fs::read(dir.path().join("PG_VERSION")).unwrap(),
            b"18\n"
        );
    }

    #[test]
    fn a_chain_short_of_blocks_is_refused_and_paths_may_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::default();
        // A file that grew to 3 blocks, but the full had 1 and no backup sent block 2.
        let newest = tar(&[("base/1/INCREMENTAL.7", incr(&[(1, b'n')], 3))]);
        apply(&mut newest.as_slice(), dir.path(), true, true, &files).unwrap();
        let full = tar(&[("base/1/7", blocks_of(b"f"))]);
        apply(&mut full.as_slice(), dir.path(), false, false, &files).unwrap();
        let err = files.check_complete().unwrap_err();
        assert!(err.contains("base/1/7 (2 of 3 blocks)"), "{err}");
        assert!(safe(Path::new("../x")).is_err());
        assert!(safe(Path::new("/etc/x")).is_err());
        assert_eq!(safe(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
    }
}
