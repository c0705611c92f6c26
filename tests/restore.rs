//! Bootstrap from a base backup in the archive (issue 10): point-in-time recovery, the
//! end of the archive, a standby that follows the archive, a barman-cloud backup, and
//! the refusals, all against real PostgreSQL, Garage and barman-cloud.

mod common;

use common::wal::*;
use common::*;
use std::time::Duration;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// `pgwarden backup` on `pg`; returns the backup id.
fn backup(pg: &Instance) -> String {
    let (code, out) = pg.run_cli(&["backup"]);
    assert!(code.success(), "backup failed: {out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    info["backup_id"].as_str().unwrap().to_owned()
}

/// The timeline postgres writes on.
async fn timeline(pg: &Instance) -> String {
    pg.connect()
        .await
        .query_one(
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A primary archiving into `store` as server `name`, with a table `t` of 1000 rows
/// and one backup of it.
async fn source(tmp: &std::path::Path, store: &Store, name: &str) -> (Instance, String) {
    source_with(tmp, store, name, "").await
}

/// [`source`] with `conf` added to the instance's settings.
async fn source_with(
    tmp: &std::path::Path,
    store: &Store,
    name: &str,
    conf: &str,
) -> (Instance, String) {
    let pg = gzip_primary(tmp, store, name, conf);
    create_t(&pg, 1000).await;
    let id = backup(&pg);
    (pg, id)
}

fn wait_primary(pg: &mut Instance) {
    pg.wait_for("/primary", 200, Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitr_to_a_time_between_two_batches_gives_exactly_the_rows_before_it() {
    let tmp = test_dir();
    let store = Store::s3();
    let (src, _) = source(tmp.path(), &store, "src").await;
    let c = src.connect().await;
    c.batch_execute("INSERT INTO t SELECT g FROM generate_series(1001, 1100) g")
        .await
        .unwrap();
    // The commit time of the first batch, then a pause, then the second batch.
    let after_first: String = c
        .query_one(
            "SELECT (clock_timestamp() AT TIME ZONE 'UTC')::text || '+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.batch_execute("INSERT INTO t SELECT g FROM generate_series(1101, 1200) g")
        .await
        .unwrap();
    switch_and_wait_archived(&src).await;

    let mut pg = restoring_as(tmp.path(), &store, "src", "pitr");
    pg.set("PGWARDEN_RECOVERY_TARGET_TIME", &after_first);
    pg.start();
    wait_primary(&mut pg);
    pg.wait_ready();
    assert_eq!(
        count_t(&pg).await,
        1100,
        "exactly the rows committed before {after_first}"
    );
    assert_eq!(
        timeline(&pg).await,
        "00000002",
        "a new timeline after the target"
    );
    // A writable primary that archives under its own name, not into the source's.
    pg.connect()
        .await
        .batch_execute("INSERT INTO t VALUES (-1)")
        .await
        .unwrap();
    let seg = switch_and_wait_archived(&pg).await;
    assert!(seg.starts_with("00000002"), "{seg}");
    let conf = std::fs::read_to_string(pg.pgdata.join("postgresql.conf")).unwrap();
    assert!(conf.contains("recovery_target_time"), "{conf}");
    assert!(!pg.pgdata.join("recovery.signal").exists());

    // Restarted, it stays a primary with its rows: the target is not applied again.
    pg.stop();
    pg.start().wait_ready();
    wait_primary(&mut pg);
    assert_eq!(count_t(&pg).await, 1101);
    let conf = std::fs::read_to_string(pg.pgdata.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("recovery_target_time"), "{conf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_the_end_of_the_archive_has_every_committed_row() {
    let tmp = test_dir();
    let store = Store::fs();
    let (src, _) = source(tmp.path(), &store, "src").await;
    pgbench(&src, &["-i", "-s", "2", "--no-vacuum"]);
    src.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1001, 5000) g")
        .await
        .unwrap();
    switch_and_wait_archived(&src).await;
    let accounts: i64 = src
        .connect()
        .await
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);

    let mut pg = restoring_as(tmp.path(), &store, "src", "end");
    pg.start();
    wait_primary(&mut pg);
    pg.wait_ready();
    assert_eq!(count_t(&pg).await, 5000);
    let restored_accounts: i64 = pg
        .connect()
        .await
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(restored_accounts, accounts);
    let log = pg.log();
    assert!(
        log.contains("every restored file matches the backup manifest"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_past_the_end_of_the_archive_fails_clearly_and_never_promotes() {
    let tmp = test_dir();
    let store = Store::fs();
    let (src, _) = source(tmp.path(), &store, "src").await;
    switch_and_wait_archived(&src).await;
    let future: String = src
        .connect()
        .await
        .query_one(
            "SELECT ((now() + interval '1 day') AT TIME ZONE 'UTC')::text || '+00'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let mut pg = restoring_as(tmp.path(), &store, "src", "past");
    pg.set("PGWARDEN_RECOVERY_TARGET_TIME", &future);
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "must exit non-zero");
    let log = pg.log();
    assert!(
        log.contains("PGWARDEN_RECOVERY_TARGET_TIME: the archive ends before the recovery target"),
        "{log}"
    );
    assert!(
        !log.contains("selected new timeline"),
        "never promoted: {log}"
    );
    assert!(
        pg.pgdata.join("recovery.signal").exists(),
        "still in recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_restore_settings_are_refused_before_anything_is_touched() {
    let tmp = test_dir();
    let store = Store::fs();
    let (_src, id) = source(tmp.path(), &store, "src").await;
    let objects_before = archive_listing(&store);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![
                (
                    "PGWARDEN_RECOVERY_TARGET_TIME",
                    "2026-01-01 00:00:00+00".into(),
                ),
                ("PGWARDEN_RECOVERY_TARGET_LSN", "0/3000000".into()),
            ],
            "at most one recovery target",
        ),
        (
            vec![
                ("PGWARDEN_RESTORE_URL", String::new()),
                ("PGWARDEN_RECOVERY_TARGET_LSN", "0/3000000".into()),
            ],
            "PGWARDEN_RECOVERY_TARGET_LSN: a recovery target needs PGWARDEN_RESTORE_URL",
        ),
        (
            vec![("PGWARDEN_RESTORE_BACKUP_ID", "20200101T000000".into())],
            "PGWARDEN_RESTORE_BACKUP_ID: there is no backup 20200101T000000",
        ),
        (
            vec![("PGWARDEN_RECOVERY_TARGET_XID", "1234".into())],
            "PGWARDEN_RECOVERY_TARGET_XID: needs PGWARDEN_RESTORE_BACKUP_ID",
        ),
        (
            vec![("PGWARDEN_RESTORE_NAME", "nobody".into())],
            "no complete backup",
        ),
        (
            vec![("PGWARDEN_ARCHIVE_NAME", "src".into())],
            "PGWARDEN_ARCHIVE_NAME: a cluster restored from server",
        ),
    ];
    for (i, (settings, want)) in cases.into_iter().enumerate() {
        let mut pg = restoring_as(tmp.path(), &store, "src", &format!("bad{i}"));
        for (k, v) in &settings {
            pg.set(k, v.clone());
        }
        pg.start();
        let status = pg.wait_exit(Duration::from_secs(60));
        let log = pg.log();
        assert!(!status.success(), "{settings:?} must be refused");
        assert!(log.contains(want), "{settings:?}: want {want:?} in:\n{log}");
        assert!(!pg.pgdata.exists(), "{settings:?}: PGDATA was created");
    }
    assert_eq!(
        archive_listing(&store),
        objects_before,
        "the archive is untouched"
    );
    assert!(!id.is_empty());
}

/// Every file in a file archive, with its size.
fn archive_listing(store: &Store) -> Vec<(String, u64)> {
    let Store::Fs(d) = store else { unreachable!() };
    let mut out = Vec::new();
    let mut stack = vec![d.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().display().to_string(), e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_the_archive_then_promotes() {
    let tmp = test_dir();
    let store = Store::fs();
    let (src, _) = source_with(tmp.path(), &store, "src", "max_connections = 60\n").await;
    switch_and_wait_archived(&src).await;

    // A smaller standby (max_connections 40, below the source's 60) still replays:
    // pgwarden raises what recovery needs to the source's values.
    let mut dr = Instance::new(tmp.path(), "dr");
    dr.unset("POSTGRES_PASSWORD")
        .set("PGWARDEN_ROLE", "replica")
        .set("PGWARDEN_RESTORE_URL", store.url())
        .set("PGWARDEN_RESTORE_NAME", "src");
    dr.start();
    dr.wait_for("/replica", 200, Duration::from_secs(120));
    assert_eq!(count_t(&dr).await, 1000);
    let max: String = dr
        .connect()
        .await
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "60", "raised to the source's value for recovery");

    // Rows committed on the primary after the standby's bootstrap reach it through
    // the archive alone: there is no network path between them.
    src.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
        .await
        .unwrap();
    let seg = switch_and_wait_archived(&src).await;
    eventually(
        Duration::from_secs(90),
        "the standby replays the archived rows",
        || {
            let n = block_on(count_t(&dr));
            (n == 1500).then_some(()).ok_or(format!("{n} rows"))
        },
    );
    let st = dr.status();
    let daemon = st.archiver.daemon.expect("the WAL daemon's figures");
    let last = daemon
        .last_restored
        .expect("the last restored segment in /status");
    assert!(last.as_str() >= seg.as_str(), "{last} < {seg}");
    assert!(daemon.last_restored_age_seconds.is_some());
    assert!(dr
        .get("/metrics")
        .body
        .contains("pgwarden_restore_last_segment_age_seconds"));

    let (code, out) = dr.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    dr.wait_for("/primary", 200, Duration::from_secs(60));
    dr.connect()
        .await
        .batch_execute("INSERT INTO t VALUES (-1)")
        .await
        .unwrap();
    assert_eq!(count_t(&dr).await, 1501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwarden_bootstraps_from_a_barman_cloud_backup() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let src = gzip_primary(tmp.path(), &store, "bsrc", "");
    create_t(&src, 3000).await;
    // barman-cloud-backup reads PGDATA itself, as root beside the instance.
    let out = std::process::Command::new("barman-cloud-backup")
        .args(["--endpoint-url", &g.endpoint(), "--gzip"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &src.port.to_string(),
            "-U",
            "postgres",
        ])
        .arg(store.url())
        .arg("bsrc")
        .envs(g.env())
        .env("AWS_DEFAULT_REGION", "garage")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "barman-cloud-backup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    src.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(3001, 3500) g")
        .await
        .unwrap();
    switch_and_wait_archived(&src).await;

    let mut pg = restoring_as(tmp.path(), &store, "bsrc", "from-barman");
    pg.start();
    wait_primary(&mut pg);
    pg.wait_ready();
    assert_eq!(count_t(&pg).await, 3500);
    assert!(pg.log().contains("barman-cloud"), "the backup was barman's");
}
