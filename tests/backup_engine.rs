//! pgwarden's own backup engine (issue 19, part 1): several workers each write a
//! part, a restore of the parts holds every row and passes pg_verifybackup against
//! the backup's manifest, and a damaged page fails the backup, named by file and
//! block, with nothing listed. (barman-cloud-restore restoring a multi-part backup
//! is tests/backup.rs's.)

mod common;

use common::wal::*;
use common::*;

fn listed(pg: &Instance) -> Vec<serde_json::Value> {
    let (code, out) = pg.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "backup-list: {out}");
    serde_json::from_str::<serde_json::Value>(out.trim())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_parts_restore_every_row_and_a_damaged_page_fails_the_backup() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut src = Instance::primary(tmp.path(), "src");
    store.configure(&mut src, "src");
    src.set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip")
        .set("PGWARDEN_BACKUP_JOBS", "3");
    src.start().wait_ready();
    create_t(&src, 200_000).await;
    let c = src.connect().await;
    c.batch_execute("CREATE TABLE u AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
        .await
        .unwrap();

    let (code, out) = src.run_cli(&["backup"]);
    assert!(code.success(), "{out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = info["backup_id"].as_str().unwrap().to_owned();
    // Three workers, each its own part, and the last part (pg_control, backup_label,
    // the manifest).
    let (cfg, backend) = store.open("src").await;
    let dir = format!("{}/base/{id}/", cfg.base());
    let mut parts: Vec<String> = pgwarden::wal::storage::Storage::list(&backend, &dir, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap().to_owned())
        .filter(|n| n.starts_with("data"))
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        vec![
            "data.tar.gz",
            "data_0001.tar.gz",
            "data_0002.tar.gz",
            "data_0003.tar.gz"
        ]
    );
    let committed_after: i64 = 7;
    c.batch_execute(&format!(
        "INSERT INTO t SELECT g FROM generate_series(1, {committed_after}) g"
    ))
    .await
    .unwrap();
    switch_and_wait_archived(&src).await;

    let mut restored = restoring(tmp.path(), &store, "src");
    restored.start().wait_ready();
    assert_eq!(count_t(&restored).await, 200_000 + committed_after);
    let u: i64 = restored
        .connect()
        .await
        .query_one("SELECT count(*) FROM u", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(u, 50_000);
    assert!(
        !restored
            .log()
            .contains("do not match the backup's manifest"),
        "the manifest checks"
    );
    drop(restored);

    // A byte flipped in the middle of t's first page, with postgres stopped, as a
    // failing disk would.
    let node: String = c
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("CHECKPOINT").await.unwrap();
    drop(c);
    src.stop();
    let file = src.pgdata.join(&node);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4000] ^= 0xFF;
    std::fs::write(&file, bytes).unwrap();
    src.start().wait_ready();
    let (code, out) = src.run_cli(&["backup"]);
    assert!(!code.success(), "a damaged page fails the backup: {out}");
    assert!(
        out.contains("1 page failed checksum verification")
            && out.contains(&format!("{node} block 0 (stored checksum")),
        "{out}"
    );
    assert_eq!(listed(&src).len(), 1, "nothing new was listed");
    let left: Vec<String> =
        pgwarden::wal::storage::Storage::list(&backend, &format!("{}/base/", cfg.base()), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !k.contains(&id))
            .collect();
    assert!(left.is_empty(), "the failed backup left nothing: {left:?}");
}
