//! A replica whose pg_rewind fails (`PGWARDEN_REWIND_FAILED`) and `pgwarden reinit`,
//! against real PostgreSQL. pg_rewind is made to fail deterministically by revoking, on
//! the new primary, a function it needs from the replication role: `pg_ls_dir` fails
//! it before it changes anything, `pg_read_binary_file` once it has begun to copy.

mod common;

use common::wal::Store;
use common::*;
use std::time::Duration;

async fn count(pg: &Instance, sql: &str) -> i64 {
    pg.connect().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// a (primary) and b (its replica); b promoted, a written to after that, then stopped:
/// a must be rewound to follow b. `revoke` is taken from the replication role on b.
/// Both archive to `archive` when given.
async fn diverged_pair(
    parent: &std::path::Path,
    revoke: &str,
    archive: Option<&Store>,
) -> (Instance, Instance) {
    let mut a = Instance::primary(parent, "pg-a");
    if let Some(store) = archive {
        store.configure(&mut a, "pg");
    }
    a.start().wait_ready();
    a.connect()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, origin text)")
        .await
        .unwrap();
    let mut b = Instance::replica_of(parent, "pg-b", &a);
    if let Some(store) = archive {
        store.configure(&mut b, "pg");
    }
    b.start().wait_ready();
    eventually(Duration::from_secs(10), "b replays the table", || {
        match b.status().lsn.replayed {
            Some(_) => Ok(()),
            None => Err("not yet".into()),
        }
    });
    let before = b.log().len();
    let (code, out) = b.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    // The promoted b grants the replication role what pg_rewind needs, once: the
    // revoke below must come after that.
    eventually(
        Duration::from_secs(30),
        "b set up the replication role",
        || match b.log()[before..].contains("the replication role is set up") {
            true => Ok(()),
            false => Err("not yet".into()),
        },
    );
    let bc = b.connect().await;
    bc.batch_execute("INSERT INTO items SELECT g, 'b' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    bc.batch_execute(&format!(
        "REVOKE EXECUTE ON FUNCTION {revoke} FROM replicator"
    ))
    .await
    .unwrap();
    a.connect()
        .await
        .batch_execute("INSERT INTO items VALUES (1000, 'a-diverged')")
        .await
        .unwrap();
    a.stop();
    a.follow(&b);
    (a, b)
}

/// The replica state `a` reports: `rewind_failed` in /status and its metric.
fn rewind_failed(a: &Instance) -> (Option<String>, bool) {
    let metrics = a.get("/metrics").body;
    let flagged = metrics
        .lines()
        .any(|l| l.trim() == "pgwarden_rewind_failed 1");
    (a.status().rewind_failed, flagged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_that_changed_nothing_keeps_the_data_and_reinit_rebuilds_the_replica() {
    let tmp = test_dir();
    // With an archive: a kept standby that looked for its primary's newer timeline
    // there ("requested timeline 2 is not a child of this server's history") stopped
    // at every start, and pgwarden restarted it in a loop.
    let store = Store::fs();
    let (mut a, b) = diverged_pair(
        tmp.path(),
        "pg_catalog.pg_ls_dir(text, boolean, boolean)",
        Some(&store),
    )
    .await;
    a.start().wait_ready();
    // pgwarden stays up (no exit at every start): a runs on its own data as a standby
    // that does not follow b, and says why.
    let (why, flagged) = rewind_failed(&a);
    let why = why.expect("/status rewind_failed");
    assert!(why.contains("pg_rewind could not rejoin"), "{why}");
    assert!(why.contains("had not changed PGDATA"), "{why}");
    assert!(flagged, "pgwarden_rewind_failed is not 1");
    assert_eq!(a.get("/replica").status, 200);
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        1,
        "the kept data is a's own"
    );
    // Pinned to its own timeline: it never stopped on b's, which the archive holds.
    assert_eq!(a.status().restarts, 0, "{}", a.log());
    assert!(!a.log().contains("is not a child of this server's history"));
    // reinit on the primary is refused, naming why.
    let (code, out) = b.run_cli(&["reinit"]);
    assert!(!code.success() && out.contains("only a standby"), "{out}");
    // reinit on a: cloned from b, following it.
    let (code, out) = a.run_cli(&["reinit"]);
    assert!(code.success(), "{out}");
    eventually(Duration::from_secs(60), "a cloned b again", || {
        match a.log().contains("reinit: cloned the primary again") {
            true => Ok(()),
            false => Err("not yet".into()),
        }
    });
    a.wait_ready();
    eventually(Duration::from_secs(60), "a streams from b", || {
        match a.status().receiver.and_then(|r| r.status) {
            Some(s) if s == "streaming" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'b'").await,
        100
    );
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        0
    );
    assert_eq!(rewind_failed(&a), (None, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_that_failed_while_copying_holds_postgres_until_reinit() {
    let tmp = test_dir();
    // Both archive: the rebuilt a must archive once promoted (below).
    let store = Store::fs();
    let (mut a, mut b) = diverged_pair(
        tmp.path(),
        "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
        Some(&store),
    )
    .await;
    // Held counts as started (the startup probe must not kill a held pod).
    a.start()
        .wait_for("/startupz", 200, Duration::from_secs(60));
    eventually(Duration::from_secs(60), "a is held", || {
        let st = a.status();
        match (&st.rewind_failed, st.state) {
            (Some(_), pgwarden::state::State::Fenced) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let why = a.status().rewind_failed.unwrap_or_default();
    assert!(why.contains("had begun to copy"), "{why}");
    assert!(
        a.log().contains("pgwarden reinit"),
        "the log names the way out"
    );
    // Held, not crashing: pgwarden still answers a while later, still held.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.status().state, pgwarden::state::State::Fenced);
    let (code, out) = a.run_cli(&["reinit"]);
    assert!(code.success(), "{out}");
    a.wait_ready();
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'b'").await,
        100
    );
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        0
    );

    // The rebuilt a, promoted, archives: its WAL daemon works in the pg_wal the reinit
    // made, not in the one it replaced (which held nothing of the new timeline).
    b.stop();
    let (code, out) = a.run_cli(&["promote"]);
    assert!(code.success(), "{out}\n{}", a.log());
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    let timeline = promoted["timeline"].as_u64().expect("timeline");
    assert_eq!(timeline, 3, "{out}");
    a.wait_for("/primary", 200, Duration::from_secs(30));
    let seg = wal::switch_and_wait_archived(&a).await;
    assert!(seg.starts_with("00000003"), "{seg}");
    wal::archived(store.root(), "pg", &seg);
    let history = format!("{timeline:08X}.history");
    let wals = store.root().join("pg/wals");
    let archived: Vec<String> = std::fs::read_dir(&wals)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        archived.iter().any(|n| n.starts_with(&history)),
        "{history} is not in {}: {archived:?}",
        wals.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclone_discards_a_replica_that_cannot_be_rewound_and_clones_the_primary() {
    let tmp = test_dir();
    let (mut a, _b) = diverged_pair(
        tmp.path(),
        "pg_catalog.pg_ls_dir(text, boolean, boolean)",
        None,
    )
    .await;
    a.set("PGWARDEN_REWIND_FAILED", "reclone");
    a.start().wait_ready();
    assert!(
        a.log().contains("PGWARDEN_REWIND_FAILED=reclone"),
        "{}",
        a.log()
    );
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'b'").await,
        100
    );
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        0
    );
    assert_eq!(rewind_failed(&a), (None, false));
}

#[test]
fn a_bad_rewind_policy_is_refused_naming_the_setting() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "pg-a");
    a.set("PGWARDEN_REWIND_FAILED", "delete-everything");
    let (code, out) = a.run_cli(&["config"]);
    assert!(!code.success(), "{out}");
    assert!(out.contains("PGWARDEN_REWIND_FAILED"), "{out}");
    assert!(!a.pgdata.exists(), "PGDATA was created");
}
