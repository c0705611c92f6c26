//! Incremental backups (issue 19, part 2): a chain of a full backup and two
//! incrementals restores every committed row (files changed, added by a database
//! copied file by file, dropped and truncated), passes pg_verifybackup against the
//! newest manifest and pg_amcheck; an incremental uploads a fraction of a
//! full; barman-cloud refuses it instead of restoring half a cluster; a full that an
//! incremental builds on is not deleted, and a chain whose full was removed by hand is
//! refused at restore, naming it. On PostgreSQL 17+ the changed blocks come from the
//! server's WAL summaries, before 17 from page LSNs: the same assertions hold for both.

mod common;

use common::wal::*;
use common::*;
use pgwarden::wal::storage::Storage;
use std::time::Duration;

fn backup(pg: &Instance, incremental: bool) -> serde_json::Value {
    let args: &[&str] = if incremental {
        &["backup", "--incremental"]
    } else {
        &["backup"]
    };
    let (code, out) = pg.run_cli(args);
    assert!(code.success(), "{args:?}: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The log lines of `log` that say an incremental read the server's WAL summaries.
fn summaries_read(log: &str) -> Vec<serde_json::Value> {
    json_lines(log)
        .into_iter()
        .filter(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("incremental: the server's WAL summaries name"))
        })
        .collect()
}

async fn count(pg: &Instance, db: &str, sql: &str) -> i64 {
    pg.connect_as("postgres", PASSWORD, db)
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql} on {db}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_incrementals_restores_every_row_and_keeps_its_full() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let mut src = gzip_primary(tmp.path(), &store, "src", "");
    let c = src.connect().await;
    // No autovacuum on t: a vacuum marks every page all-visible, WAL-logged, so that
    // an incremental after it rightly reads every window of t, and the assertions on
    // what I2 skips would depend on when autovacuum came round (it once did, between
    // I1 and I2, on a loaded machine).
    c.batch_execute(
        "CREATE TABLE t (g int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g;
         CREATE TABLE gone AS SELECT g FROM generate_series(1, 10000) g;
         CREATE TABLE shrinks AS SELECT g FROM generate_series(1, 50000) g;",
    )
    .await
    .unwrap();

    // An incremental with nothing to build on is a full one, and says why.
    let full_began = std::time::Instant::now();
    let full = backup(&src, true);
    let full_id = full["backup_id"].as_str().unwrap().to_owned();
    assert!(
        full["extra"]["full_because"]
            .as_str()
            .is_some_and(|w| w.contains("no backup yet")),
        "{full:#}"
    );
    let full_size = full["size"].as_u64().unwrap();

    // 5% of t's rows change; a table goes, another is truncated by VACUUM.
    // (One statement a call: VACUUM and CREATE DATABASE refuse a transaction block.)
    for sql in [
        "UPDATE t SET pad = repeat('y', 200) WHERE g % 20 = 0",
        "DROP TABLE gone",
        "DELETE FROM shrinks WHERE g > 1000",
        "VACUUM shrinks",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    // A file counts as unchanged only if last written two seconds or more before its
    // parent began: I1 begins three seconds after the full at least, so that the files
    // initdb wrote (the template databases) count for I2.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(full_began.elapsed()));
    let i1 = backup(&src, true);
    let i1_id = i1["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(i1["extra"]["incremental_of"], full_id.as_str(), "{i1:#}");
    let i1_size = i1["size"].as_u64().unwrap();
    assert!(
        i1_size * 2 < full_size,
        "an incremental after changing 5% of the rows stores {i1_size} bytes, a full {full_size}"
    );

    // A database copied file by file from its template (its pages keep the
    // template's old LSNs: only "not in the parent" sends them), and more rows.
    for sql in [
        "CREATE DATABASE copied STRATEGY file_copy",
        "INSERT INTO t SELECT g, 'z' FROM generate_series(100001, 101000) g",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    src.connect_as("postgres", PASSWORD, "copied")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE c AS SELECT g FROM generate_series(1, 777) g")
        .await
        .unwrap();
    let i2 = backup(&src, true);
    let i2_id = i2["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(i2["extra"]["incremental_of"], i1_id.as_str(), "{i2:#}");
    // The files untouched since before I1 began (the template databases) were not
    // even read: same length and modification time as I1 listed them. The restore
    // below checks every one against I2's manifest.
    let skipped = json_lines(&src.log())
        .into_iter()
        .find(|l| {
            l["backup_id"] == i2_id.as_str()
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("incremental: files unchanged"))
        })
        .unwrap_or_else(|| panic!("I2 read every file: {}", src.log()));
    assert!(skipped["files"].as_u64().unwrap() > 100, "{skipped}");
    // On PostgreSQL 17+ the server's WAL summaries named the changed blocks of both
    // incrementals (a database copied file by file is in them as a whole); before 17,
    // page LSNs did.
    let by_summaries = summaries_read(&src.log()).len();
    let want = if pg_major() >= 17 { 2 } else { 0 };
    assert_eq!(by_summaries, want, "{}", src.log());
    if pg_major() >= 17 {
        // I2's rows went to the end of t: its file changed, but the 1 MiB windows
        // before them did not, and were not read (their checksums are I1's; the
        // restore's pg_verifybackup below checks the whole file's).
        assert!(
            skipped["window_bytes"].as_u64().unwrap() >= 8 << 20,
            "{skipped}"
        );
    } else {
        assert_eq!(skipped["window_bytes"], 0, "{skipped}");
    }
    // A file whose checksum is partly the parent's has no modification time in the
    // manifest, so the next incremental cannot take it as read and unchanged.
    let t_path: String = c
        .query_one("SELECT pg_relation_filepath('t')", &[])
        .await
        .unwrap()
        .get(0);
    let (cfg, backend) = store.open("src").await;
    let key = format!("{}/base/{i2_id}/backup_manifest", cfg.base());
    let (body, _) = backend.get(&key).await.unwrap().expect("I2's manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let t_entry = manifest["Files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Path"] == t_path.as_str())
        .unwrap_or_else(|| panic!("{t_path} not in I2's manifest"))
        .clone();
    let epoch = t_entry["Last-Modified"]
        .as_str()
        .is_some_and(|m| m.starts_with("1970-01-01"));
    assert_eq!(epoch, pg_major() >= 17, "{t_entry}");
    c.batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(101001, 101010) g")
        .await
        .unwrap();
    switch_and_wait_archived(&src).await;

    // The list says what each is; barman-cloud lists the incremental but refuses to
    // restore it (its data is not in data.tar*).
    let (code, table) = src.run_cli(&["backup-list"]);
    assert!(code.success(), "{table}");
    assert!(
        table.contains(&format!("incremental on {i1_id} (pgwarden only)")),
        "{table}"
    );
    let url = format!("s3://{}/pgwarden-test", g.bucket);
    let dest = tmp.path().join("barman-restored");
    let (ok, out) = common::barman::try_run(
        g,
        &[
            "barman-cloud-restore",
            &url,
            "src",
            &i2_id,
            &dest.display().to_string(),
        ],
    );
    assert!(
        !ok,
        "barman-cloud-restore must refuse an incremental: {out}"
    );

    // The full backup an incremental builds on cannot be deleted.
    let (code, out) = src.run_cli(&["backup-delete", "--backup-id", &full_id]);
    assert!(!code.success(), "{out}");
    assert!(
        out.contains(&format!(
            "backup {full_id} is needed by the incremental backup {i1_id} built on it"
        )),
        "{out}"
    );

    // The chain restored: every row, the dropped table gone, the copied database
    // there; pg_verifybackup checked the reconstruction against I2's manifest.
    let mut restored = restoring_as(tmp.path(), &store, "src", "restored");
    // Promoted at the end of the archive (pg_amcheck below installs its extension).
    restored
        .start()
        .wait_for("/primary", 200, std::time::Duration::from_secs(120));
    let log = restored.log();
    assert!(log.contains("restoring its chain"), "{log}");
    assert_eq!(
        count(&restored, "postgres", "SELECT count(*) FROM t").await,
        101_010
    );
    assert_eq!(
        count(
            &restored,
            "postgres",
            "SELECT count(*) FROM t WHERE pad = repeat('y', 200)"
        )
        .await,
        5000
    );
    assert_eq!(
        count(&restored, "postgres", "SELECT count(*) FROM shrinks").await,
        1000
    );
    assert_eq!(
        count(
            &restored,
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'gone'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&restored, "copied", "SELECT count(*) FROM c").await,
        777
    );
    // pg_amcheck on every database of the restored chain (what a drill runs).
    let out = std::process::Command::new(bindir().join("pg_amcheck"))
        .args(["--all", "--heapallindexed", "--install-missing"])
        .args([
            "--maintenance-db=template1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &restored.port.to_string()])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(restored);

    // The full removed by hand: the chain is refused, naming it; nothing written.
    src.stop();
    let (cfg, backend) = store.open("src").await;
    let info = format!("{}/base/{full_id}/backup.info", cfg.base());
    backend.delete(&info).await.unwrap();
    let mut broken = restoring_as(tmp.path(), &store, "src", "broken");
    broken.set("PGWARDEN_RESTORE_BACKUP_ID", &i2_id);
    broken.start();
    let status = broken.wait_exit(std::time::Duration::from_secs(60));
    assert!(!status.success());
    let log = broken.log();
    assert!(
        log.contains(&format!(
            "backup {i1_id} is incremental and builds on backup {full_id}, which is not in the archive"
        )),
        "{log}"
    );
    assert!(
        std::fs::read_dir(&broken.pgdata)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "PGDATA untouched"
    );

    // Scheduled incrementals with a full cadence: the newest backup's chain is broken
    // now, so the first is full (saying why), the next builds on it.
    src.set("PGWARDEN_BACKUP_SCHEDULE", "3s; full every 7d");
    src.start().wait_ready();
    let chain = eventually(
        std::time::Duration::from_secs(120),
        "two scheduled backups",
        || {
            let (code, out) = src.run_cli(&["backup-list", "--json"]);
            let all: Vec<serde_json::Value> =
                serde_json::from_str(out.trim()).map_err(|e| format!("{code}: {e}: {out}"))?;
            let new: Vec<serde_json::Value> = all
                .into_iter()
                .filter(|b| {
                    ![&i1_id, &i2_id].contains(&&b["backup_id"].as_str().unwrap_or("").to_owned())
                })
                .collect();
            if new.len() >= 2 {
                Ok(new)
            } else {
                Err(format!("{} new so far", new.len()))
            }
        },
    );
    assert!(
        chain[0]["extra"]["full_because"]
            .as_str()
            .is_some_and(|w| w.contains(&format!(
                "builds on backup {full_id}, which is not in the archive"
            ))),
        "{:#}",
        chain[0]
    );
    assert_eq!(
        chain[1]["extra"]["incremental_of"], chain[0]["backup_id"],
        "{:#}",
        chain[1]
    );
}

/// Waits until `sql` counts `want` on `pg`.
fn wait_count(rt: &tokio::runtime::Handle, pg: &Instance, sql: &str, want: i64) {
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(90), sql, || {
            match rt.block_on(count(pg, "postgres", sql)) {
                n if n == want => Ok(()),
                n => Err(format!("{n}, not {want}")),
            }
        })
    });
}

/// A failover does not end the chain: the new primary, a standby when the full was
/// taken on the old primary, follows its WAL summaries across the timeline switch
/// (PostgreSQL 17+) and builds an incremental on that full, where a multi-terabyte
/// cluster would otherwise take a new full after every failover. Restored, the chain
/// has every row, checked by pg_verifybackup against its manifest. Before 17 there
/// are no summaries, and a full is taken, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_new_primary_builds_on_the_old_primarys_full() {
    let rt = tokio::runtime::Handle::current();
    let tmp = test_dir();
    let store = Store::s3();
    let mut p = gzip_primary(tmp.path(), &store, "src", "");
    // The standby first: it summarizes the WAL it replays from its own start on, so
    // that its summaries reach back past the full taken below.
    let mut r = Instance::replica_of(tmp.path(), "r", &p);
    store.configure(&mut r, "src");
    r.set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip");
    r.start().wait_ready();
    p.connect()
        .await
        .batch_execute(
            // No autovacuum (see the test above): what changes is what this test writes.
            "CREATE TABLE t (g int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off);
             INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g;
             CREATE TABLE still WITH (autovacuum_enabled = off) AS
               SELECT g, md5(g::text) || md5((-g)::text) || md5((7 * g)::text) AS pad
               FROM generate_series(1, 100000) g;",
        )
        .await
        .unwrap();
    let full = backup(&p, false);
    let full_id = full["backup_id"].as_str().unwrap().to_owned();
    p.connect()
        .await
        .batch_execute("UPDATE t SET pad = repeat('y', 200) WHERE g % 20 = 0")
        .await
        .unwrap();
    let updated = "SELECT count(*) FROM t WHERE pad = repeat('y', 200)";
    wait_count(&rt, &r, updated, 2500);

    // The failover: the old primary gone, the standby promoted (timeline 2).
    p.stop();
    let (code, out) = r.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    r.wait_for("/primary", 200, Duration::from_secs(60));
    r.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g, 'after' FROM generate_series(50001, 51000) g")
        .await
        .unwrap();
    let inc = backup(&r, true);
    if pg_major() >= 17 {
        assert_eq!(
            inc["extra"]["incremental_of"],
            full_id.as_str(),
            "{inc:#}\n{}",
            r.log()
        );
        // `still` (most of the full, gzip or not: its rows do not repeat) was not
        // written since the full: an incremental of what the summaries name is smaller
        // by far.
        assert!(
            inc["size"].as_u64().unwrap() * 2 < full["size"].as_u64().unwrap(),
            "{inc:#}\n{full:#}"
        );
        // The summaries of both timelines: timeline 1 from the full's start to the
        // switch, timeline 2 from there to the incremental's start.
        let read = summaries_read(&r.log())
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("the summaries were not used: {}", r.log()));
        assert!(read["summaries"].as_u64().unwrap() >= 2, "{read}");
    } else {
        let why = format!("PostgreSQL {} has no WAL summaries", pg_major());
        assert!(
            inc["extra"]["full_because"]
                .as_str()
                .is_some_and(|w| w.contains(&why)),
            "{inc:#}"
        );
    }
    r.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g, 'later' FROM generate_series(51001, 51010) g")
        .await
        .unwrap();
    switch_and_wait_archived(&r).await;

    let mut restored = restoring_as(tmp.path(), &store, "src", "restored");
    restored
        .start()
        .wait_for("/primary", 200, Duration::from_secs(120));
    let log = restored.log();
    assert_eq!(
        log.contains("restoring its chain"),
        pg_major() >= 17,
        "{log}"
    );
    assert!(
        log.contains("every restored file matches the backup manifest"),
        "{log}"
    );
    for (sql, want) in [
        ("SELECT count(*) FROM t", 51_010),
        (updated, 2500),
        ("SELECT count(*) FROM still", 100_000),
    ] {
        assert_eq!(count(&restored, "postgres", sql).await, want, "{sql}");
    }
}
