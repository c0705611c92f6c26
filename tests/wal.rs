//! WAL archiving and restore against real components: PostgreSQL, and Garage for S3 or
//! a directory for the file backend.

mod common;

use common::wal::*;
use common::*;
use std::time::{Duration, Instant};

async fn archive_then_restore_a_new_cluster(store: Store) {
    let tmp = test_dir();
    let mut primary = Instance::primary(tmp.path(), "wal-primary");
    store.configure(&mut primary, "cluster1");
    primary.start().wait_ready();
    pgbench(&primary, &["-i", "-q", "-s", "2"]);
    switch_and_wait_archived(&primary).await;

    let restored_dir = tmp.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let backup = restored_dir.join("data");
    base_backup(&primary, &backup);

    // Work after the base backup, under load, then every row committed must come back.
    pgbench(&primary, &["-c", "2", "-t", "300", "-n"]);
    let client = primary.connect().await;
    client
        .batch_execute("CREATE TABLE after_backup AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    // Several segments to replay, so that the restore's prefetch has work to do.
    for _ in 0..6 {
        client
            .batch_execute("INSERT INTO after_backup SELECT g FROM generate_series(1, 100) g; SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    let history: i64 = client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 600);
    let last = switch_and_wait_archived(&primary).await;
    let failed: i64 = client
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "log:\n{}", primary.log());
    assert_contiguous(&store, "cluster1", &last).await;
    primary.stop();

    // A new cluster from the base backup plus the archive: recovery to the end (latest).
    std::fs::write(backup.join("recovery.signal"), "").unwrap();
    let mut restored = Instance::new(tmp.path(), "restored");
    store.configure(&mut restored, "cluster1");
    restored.pgdata = backup.clone();
    restored.set("PGDATA", backup.display().to_string());
    // Ready (read-only) comes once consistent; primary once the archive is replayed.
    restored
        .start()
        .wait_for("/primary", 200, Duration::from_secs(120));
    assert!(
        restored.log().contains("restored"),
        "WAL came from the archive"
    );
    let client = restored.connect().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM after_backup", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1600);
    let h: i64 = client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(h, 600, "every committed transaction is back");
    let st = restored.status();
    assert_eq!(st.role, pgwarden::settings::Role::Primary);
    let daemon = st.archiver.daemon.expect("daemon figures in /status");
    assert!(
        daemon.spool_hits > 0,
        "replay was served from the prefetch spool: {daemon:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_archive_then_restore_a_new_cluster() {
    archive_then_restore_a_new_cluster(Store::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_archive_then_restore_a_new_cluster() {
    archive_then_restore_a_new_cluster(Store::fs()).await;
}

async fn cli_faults(store: Store) {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let mut cli = Instance::new(tmp.path(), "cli");
    store.configure(&mut cli, "faults");
    let work = tmp.path().join("pgdata-like/pg_wal");
    std::fs::create_dir_all(&work).unwrap();
    let seg = work.join(&name);
    std::fs::write(&seg, &data).unwrap();
    let seg_arg = seg.display().to_string();

    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success(), "{out}");
    assert!(out.contains("Uploaded"), "{out}");
    // Pushing the same content again succeeds without uploading.
    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success() && out.contains("AlreadyArchived"), "{out}");
    // Different content under the same name is refused, and the archive keeps the first.
    let mut other = data.clone();
    other[100_000] ^= 0xFF;
    std::fs::write(&seg, &other).unwrap();
    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(out.contains("refusing to overwrite"), "{out}");

    // Restore is byte for byte.
    let dest = tmp.path().join("restored-seg");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
    assert!(code.success(), "{out}");
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "restored file differs"
    );

    // A missing file: exit 1, and no file.
    let missing = tmp.path().join("missing");
    let (code, out) = cli.run_cli(&[
        "wal-restore",
        "0000000100000000000000EE",
        &missing.display().to_string(),
    ]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(!missing.exists());

    // A corrupted object is refused and %p is not created.
    let (cfg, _) = store.open("faults").await;
    let key = format!(
        "{}.zst",
        pgwarden::wal::names::WalName::parse(&name)
            .unwrap()
            .key(&cfg.base())
    );
    let garbage = zstd::bulk::compress(&vec![7u8; data.len()], 1).unwrap();
    match &store {
        Store::Fs(d) => std::fs::write(d.path().join(&key), &garbage).unwrap(),
        Store::S3(g) => raw_put(g, &key, garbage).await,
    }
    let corrupt_dest = tmp.path().join("corrupt");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &corrupt_dest.display().to_string()]);
    assert!(!code.success(), "{out}");
    assert!(out.contains("corrupt"), "{out}");
    assert!(!corrupt_dest.exists(), "a refused object leaves no file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_push_and_fetch_refuse_conflicts_corruption_and_report_missing() {
    cli_faults(Store::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_push_and_fetch_refuse_conflicts_corruption_and_report_missing() {
    cli_faults(Store::fs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_within_the_timeout() {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let seg = tmp.path().join(&name);
    std::fs::write(&seg, data).unwrap();
    let mut cli = Instance::new(tmp.path(), "unreachable");
    cli.set("PGWARDEN_ARCHIVE_URL", "s3://nowhere/x")
        .set("PGWARDEN_ARCHIVE_TIMEOUT", "3")
        .set(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .set("AWS_ACCESS_KEY_ID", "GKnothing")
        .set("AWS_SECRET_ACCESS_KEY", "nothing")
        .set("AWS_REGION", "garage");
    let t0 = Instant::now();
    let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "it must not hang: {:?}",
        t0.elapsed()
    );
    // Outside standby mode a storage failure aborts recovery rather than ending it early.
    let (code, out) = cli.run_cli(&[
        "wal-restore",
        &name,
        &tmp.path().join("x").display().to_string(),
    ]);
    assert_eq!(code.code(), Some(255), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_another_cluster_is_refused() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut cli = Instance::new(tmp.path(), "mix");
    store.configure(&mut cli, "shared-name");
    for (i, dir) in ["one", "two"].iter().enumerate() {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (name, data) = real_segment(&d).await;
        let seg = d.join("pgdata/pg_wal").join(&name);
        std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
        std::fs::write(&seg, data).unwrap();
        let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
        if i == 0 {
            assert!(code.success(), "{out}");
        } else {
            assert_eq!(code.code(), Some(1), "{out}");
            assert!(out.contains("refusing to mix"), "{out}");
        }
    }
}

/// Without a daemon each `wal-archive` is a new process. The S3 server's handling of
/// `If-None-Match` (Garage ignores it) is probed by the first one and noted in PGDATA;
/// the next ones take the note instead of probing again (three requests a segment),
/// until it is an hour old or about another server. Every push still archives, and
/// the careful path Garage needs is still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_pushes_probe_the_server_once_and_note_it() {
    let tmp = test_dir();
    let store = Store::s3();
    let mut pg = Instance::new(tmp.path(), "segsource");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "1"]);
    let client = pg.connect().await;
    let work = tmp.path().join("pgdata-like/pg_wal");
    std::fs::create_dir_all(&work).unwrap();
    let mut segs = Vec::new();
    for i in 0..4 {
        // Each segment holds a record of its own, so that each is a new object.
        client
            .batch_execute(&format!("CREATE TABLE t{i} AS SELECT 1"))
            .await
            .unwrap();
        let name: String = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap()
            .get(0);
        std::fs::copy(pg.pgdata.join("pg_wal").join(&name), work.join(&name)).unwrap();
        segs.push(work.join(&name).display().to_string());
    }
    pg.stop();
    let mut cli = Instance::new(tmp.path(), "cli");
    store.configure(&mut cli, "probe-once");
    let note = tmp.path().join("pgdata-like/pgwarden.archive-server");
    const WARNING: &str = "ignores If-None-Match";

    let (code, out) = cli.run_cli(&["wal-archive", &segs[0]]);
    assert!(code.success() && out.contains("Uploaded"), "{out}");
    assert!(out.contains(WARNING), "the first push probes: {out}");
    let noted = std::fs::read_to_string(&note).unwrap();
    assert!(noted.trim_end().ends_with(" ignored"), "{noted}");

    let (code, out) = cli.run_cli(&["wal-archive", &segs[1]]);
    assert!(code.success() && out.contains("Uploaded"), "{out}");
    assert!(
        !out.contains(WARNING),
        "the next push takes the note: {out}"
    );

    // A note about another server does not count: probed again, and noted anew.
    std::fs::write(&note, "http://127.0.0.1:1/elsewhere enforced\n").unwrap();
    let (code, out) = cli.run_cli(&["wal-archive", &segs[2]]);
    assert!(code.success() && out.contains("Uploaded"), "{out}");
    assert!(out.contains(WARNING), "a foreign note is not taken: {out}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), noted);

    // An hour-old note is probed again.
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&note)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (code, out) = cli.run_cli(&["wal-archive", &segs[3]]);
    assert!(code.success() && out.contains("Uploaded"), "{out}");
    assert!(out.contains(WARNING), "a stale note is not taken: {out}");

    // Everything pushed restores byte for byte.
    for seg in &segs {
        let name = std::path::Path::new(seg)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let dest = tmp.path().join(format!("restored-{name}"));
        let (code, out) = cli.run_cli(&["wal-restore", name, &dest.display().to_string()]);
        assert!(code.success(), "{out}");
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(seg).unwrap());
    }
}
