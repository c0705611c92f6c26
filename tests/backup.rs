//! Base backups (issue 10): streamed into the archive in barman-cloud's layout, listed
//! by pgwarden and by barman-cloud, restored by barman-cloud with every committed
//! row, and never listed when interrupted.

mod common;

use common::wal::*;
use common::*;
use std::time::Duration;

/// `pgwarden backup` against the running instance.
fn backup(pg: &Instance) -> (bool, String) {
    let (code, out) = pg.run_cli(&["backup"]);
    (code.success(), out)
}

/// `pgwarden backup-list --json` with the instance's archive settings.
fn listed(pg: &Instance) -> Vec<serde_json::Value> {
    let (code, out) = pg.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A running primary archiving to a fresh Garage bucket as server `name`, in gzip,
/// which barman-cloud 3.4 reads (it has no zstd).
fn primary_on_s3(tmp: &std::path::Path, name: &str) -> (Store, Instance) {
    let store = Store::s3();
    let pg = gzip_primary(tmp, &store, name, "");
    (store, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_listed_by_both_tools_and_barman_cloud_restores_it() {
    let tmp = test_dir();
    let (store, pg) = primary_on_s3(tmp.path(), "bk");
    let Store::S3(g) = &store else { unreachable!() };
    pg.connect()
        .await
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();

    let (ok, out) = backup(&pg);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = info["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(info["status"], "DONE");
    let st = pg.status();
    let last = st.backup.last.expect("the last backup in /status");
    assert_eq!(
        (last.backup_id.as_str(), last.error.as_deref()),
        (id.as_str(), None)
    );
    assert!(last.size_bytes > 0);
    assert!(pg
        .get("/metrics")
        .body
        .contains("pgwarden_backup_last_size_bytes"));

    let ours = listed(&pg);
    assert_eq!(ours.len(), 1);
    assert_eq!(
        (ours[0]["backup_id"].as_str(), ours[0]["made_by"].as_str()),
        (Some(id.as_str()), Some("pgwarden"))
    );
    let url = format!("s3://{}/pgwarden-test", g.bucket);
    let theirs = common::barman::run(g, &["barman-cloud-backup-list", &url, "bk"]);
    assert!(theirs.contains(&id), "barman-cloud lists it: {theirs}");

    // Rows committed after the backup come back through the archived WAL.
    pg.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")
        .await
        .unwrap();
    switch_and_wait_archived(&pg).await;

    let dest = tmp.path().join("restored");
    common::barman::run(
        g,
        &[
            "barman-cloud-restore",
            &url,
            "bk",
            &id,
            &dest.display().to_string(),
        ],
    );
    let restored = common::barman::Recovering::start(tmp.path(), g, &url, "bk", &dest, &[]);
    restored.wait_promoted(tmp.path()).await;
    let rows = count_t(&restored.view(tmp.path())).await;
    assert_eq!(
        rows, 2000,
        "every committed row, by barman-cloud's restore of pgwarden's backup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_is_never_listed_and_the_next_one_succeeds() {
    let tmp = test_dir();
    let (store, mut pg) = primary_on_s3(tmp.path(), "killbk");
    let Store::S3(g) = &store else { unreachable!() };
    pgbench(&pg, &["-i", "-q", "-s", "15"]);
    let mut running = pg
        .command_for_test(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(60), "the backup streams", || {
        match pg.status().backup.running {
            Some(r) if r.progress.bytes > 20 << 20 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The pod dies: pgwarden (and the backup it runs) and every postgres process.
    pg.kill_pod();
    let _ = running.wait();
    pg.start().wait_ready();
    assert!(
        listed(&pg).is_empty(),
        "an interrupted backup is not listed"
    );
    let url = format!("s3://{}/pgwarden-test", g.bucket);
    let theirs = common::barman::run(
        g,
        &[
            "barman-cloud-backup-list",
            "--format",
            "json",
            &url,
            "killbk",
        ],
    );
    assert!(!theirs.contains("DONE"), "nor by barman-cloud: {theirs}");

    let (ok, out) = backup(&pg);
    assert!(ok, "{out}");
    assert_eq!(listed(&pg).len(), 1);
}

#[test]
fn backup_settings_are_checked_before_anything_is_touched() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "badbk");
    pg.set("PGWARDEN_BACKUP_COMPRESSION", "zstd");
    let (code, out) = pg.run_cli(&["run"]);
    assert!(!code.success());
    assert!(
        out.contains("PGWARDEN_BACKUP_COMPRESSION") && out.contains("gzip or none"),
        "{out}"
    );
    assert!(!pg.pgdata.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_without_an_archive_is_refused_clearly() {
    let tmp = test_dir();
    let mut pg = Instance::primary(tmp.path(), "noarchive");
    pg.start().wait_ready();
    let (ok, out) = backup(&pg);
    assert!(!ok);
    assert!(out.contains("PGWARDEN_ARCHIVE_URL"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_verify_names_a_missing_segment_and_the_backup_it_breaks() {
    let tmp = test_dir();
    let store = Store::fs();
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let mut pg = Instance::primary(tmp.path(), "verify");
    store.configure(&mut pg, "verify");
    pg.start().wait_ready();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let (ok, out) = backup(&pg);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (id, begin) = (
        info["backup_id"].as_str().unwrap().to_owned(),
        info["begin_wal"].as_str().unwrap().to_owned(),
    );
    for _ in 0..2 {
        client
            .batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
            .await
            .unwrap();
        switch_and_wait_archived(&pg).await;
    }
    let (code, out) = pg.run_cli(&["wal-verify"]);
    assert!(code.success(), "{out}");
    assert!(out.starts_with("OK:"), "{out}");

    // The backup's first segment goes missing: the backup cannot be restored.
    let object = root
        .path()
        .join("verify/wals")
        .join(&begin[..16])
        .join(format!("{begin}.zst"));
    std::fs::remove_file(&object).unwrap();
    let (code, out) = pg.run_cli(&["wal-verify", "--json"]);
    assert_eq!(code.code(), Some(1), "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["status"], "FAILURE");
    assert_eq!(report["missing"][0]["segment"], begin.as_str());
    assert_eq!(report["missing"][0]["unrestorable_backups"][0], id.as_str());
    let (code, out) = pg.run_cli(&["wal-verify"]);
    assert_eq!(code.code(), Some(1));
    assert!(
        out.contains(&format!("missing {begin}")) && out.contains(&id),
        "{out}"
    );
}
