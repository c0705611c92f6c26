//! A restore never stops short quietly: a segment missing in the middle of the archive,
//! an object in a codec pgwarden cannot read, or a backup's first segment missing
//! behind its `.backup` file is reported by name, and the instance never promotes
//! (issue 17, holes 1 and 2). Real PostgreSQL, an archive on a volume. That a restore
//! to the end of an archive without holes still gets every row is tests/restore.rs's.

mod common;

use common::wal::*;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_archive_stops_a_restore_to_its_end_naming_the_segment() {
    let tmp = test_dir();
    let store = Store::fs();
    let (_src, _, segs) = backup_then_segments(tmp.path(), &store, 4).await;
    // The second segment after the backup goes: later ones are still there.
    let hole = segs[1].clone();
    std::fs::remove_file(archived(store.root(), "src", &hole)).unwrap();
    let mut pg = restoring(tmp.path(), &store, "src");
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "must exit non-zero");
    let log = pg.log();
    assert!(
        log.contains(&format!(
            "WAL segment {hole} is missing from the archive, but"
        )),
        "the missing segment is named: {log}"
    );
    assert!(
        !log.contains("selected new timeline"),
        "never promoted: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_in_a_codec_pgwarden_cannot_read_is_an_error_not_the_end() {
    let tmp = test_dir();
    let store = Store::fs();
    let (_src, _, segs) = backup_then_segments(tmp.path(), &store, 3).await;
    let seg = segs[1].clone();
    let object = archived(store.root(), "src", &seg);
    let bz2 = object.with_file_name(format!("{seg}.bz2"));
    std::fs::rename(&object, &bz2).unwrap();
    let mut pg = restoring(tmp.path(), &store, "src");

    pg.start();
    let status = pg.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "must exit non-zero");
    let log = pg.log();
    assert!(
        log.contains(&format!(
            "{seg}.bz2 is compressed with bz2, which pgwarden does not read"
        )),
        "{log}"
    );
    assert!(
        !log.contains("selected new timeline"),
        "never promoted: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backups_first_segment_missing_behind_its_backup_file_is_refused_up_front() {
    let tmp = test_dir();
    let store = Store::fs();
    let (_src, info, _) = backup_then_segments(tmp.path(), &store, 1).await;
    let begin = info["begin_wal"].as_str().unwrap().to_owned();
    // `<begin_wal>.<offset>.backup` stays; the segment itself goes.
    std::fs::remove_file(archived(store.root(), "src", &begin)).unwrap();
    let dir = store.root().join("src/wals").join(&begin[..16]);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&begin) && n.contains(".backup")),
        "the .backup file shares the prefix: {names:?}"
    );
    let mut pg = restoring(tmp.path(), &store, "src");
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "must exit non-zero");
    let log = pg.log();
    assert!(
        log.contains(&format!("WAL segment {begin} is missing from the archive")),
        "{log}"
    );
    assert!(
        !pg.pgdata.join("PG_VERSION").exists(),
        "refused before PGDATA was filled"
    );
}
