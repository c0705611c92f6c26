//! Streaming replicas managed by pgwarden, against real PostgreSQL: bootstrap by
//! pg_basebackup, read-only standbys, slots, promotion, pg_rewind rejoin, re-pointing.

mod common;

use common::*;
use pgwarden::settings::Role;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

async fn count(pg: &Instance, sql: &str) -> i64 {
    pg.connect().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Polls `sql` on `pg` until it returns `want`, failing after `timeout`.
async fn eventually(pg: &Instance, sql: &str, want: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client = pg.connect().await;
    loop {
        // Until the table's creation is replayed, the query fails: not yet, not wrong.
        let got = match client.query_one(sql, &[]).await {
            Ok(row) => row.get::<_, i64>(0).to_string(),
            Err(e) => e.to_string(),
        };
        if got == want.to_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} on {} is {got}, not {want}; log:\n{}",
            pg.env["PGWARDEN_NAME"],
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_two_replicas_replicate_promote_and_rejoin() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "pg-a");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "pg-b", &a);
    let mut c = Instance::replica_of(tmp.path(), "pg-c", &a);
    b.start();
    c.start();
    b.wait_ready();
    c.wait_ready();

    for r in [&b, &c] {
        assert_eq!(r.get("/replica").status, 200);
        assert_eq!(r.get("/primary").status, 503);
        let st = r.status();
        assert_eq!(st.role, Role::Replica);
        assert!(
            st.lsn.received.is_some() && st.lsn.replayed.is_some(),
            "{st:?}"
        );
    }
    assert_eq!(a.get("/primary").status, 200);
    assert_eq!(a.get("/replica").status, 503);

    // The seed guide's validation: 10,000 rows visible on both replicas within 5 s.
    let client = a.connect().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, origin text); INSERT INTO items SELECT g, 'a' FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    for r in [&b, &c] {
        eventually(
            r,
            "SELECT count(*) FROM items",
            10_000,
            Duration::from_secs(5),
        )
        .await;
    }
    let err = b
        .connect()
        .await
        .batch_execute("INSERT INTO items VALUES (0, 'b')")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err:?}"
    );

    // Both stream with the right application_name, through active slots.
    let rows = client
        .query(
            "SELECT application_name, state FROM pg_stat_replication ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![
            ("pg-b".into(), "streaming".into()),
            ("pg-c".into(), "streaming".into())
        ]
    );
    let slots = client
        .query(
            "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, bool)> = slots.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("pg_b".into(), true), ("pg_c".into(), true)]);
    // /status on the primary shows them too (the monitor refreshes every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = a.status();
    let names: Vec<&str> = st
        .replication
        .iter()
        .map(|r| r.application_name.as_str())
        .collect();
    assert_eq!(names, vec!["pg-b", "pg-c"]);
    assert!(st
        .replication
        .iter()
        .all(|r| r.state.as_deref() == Some("streaming") && r.lag_bytes.is_some()));
    assert!(
        st.slots
            .iter()
            .all(|s| s.active && s.retained_bytes.is_some()),
        "{:?}",
        st.slots
    );
    let st = b.status();
    assert_eq!(
        st.receiver.as_ref().and_then(|r| r.status.as_deref()),
        Some("streaming")
    );

    // Promote b: writable, on a new timeline.
    let (code, out) = b.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(promoted["timeline"], 2, "{out}");
    let bc = b.connect().await;
    bc.batch_execute("INSERT INTO items SELECT g, 'b' FROM generate_series(10001, 10100) g")
        .await
        .unwrap();
    b.wait_for("/primary", 200, Duration::from_secs(10));
    // Promoting a primary is refused.
    let (code, out) = b.run_cli(&["promote"]);
    assert!(!code.success() && out.contains("not a standby"), "{out}");

    // The old primary writes on after the failover: its history diverges, and so does
    // c's, which still streams from it.
    client
        .batch_execute("INSERT INTO items VALUES (20000, 'a-diverged')")
        .await
        .unwrap();
    eventually(
        &c,
        "SELECT count(*) FROM items WHERE id = 20000",
        1,
        Duration::from_secs(5),
    )
    .await;
    drop(client);

    // The old primary rejoins b through pg_rewind.
    a.stop();
    let before = a.log().len();
    a.follow(&b).start().wait_ready();
    let rejoin_log = a.log()[before..].to_owned();
    assert!(rejoin_log.contains("rewinding to rejoin"), "{rejoin_log}");
    assert_eq!(a.get("/replica").status, 200);
    eventually(
        &a,
        "SELECT count(*) FROM items WHERE origin = 'b'",
        100,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        count(&a, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        0
    );

    // c, re-pointed at b, follows the new timeline.
    c.stop();
    c.follow(&b).start().wait_ready();
    eventually(
        &c,
        "SELECT count(*) FROM items WHERE origin = 'b'",
        100,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        count(&c, "SELECT count(*) FROM items WHERE origin = 'a-diverged'").await,
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status().timeline != Some(2) {
        assert!(
            Instant::now() < deadline,
            "c's /status never reached timeline 2: {:?}",
            c.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // b restarts with its old settings (a replica of a): on-disk state wins, it stays a
    // primary and says so.
    b.stop();
    let before = b.log().len();
    b.start().wait_ready();
    assert!(
        b.log()[before..].contains("it stays a primary"),
        "{}",
        &b.log()[before..]
    );
    assert_eq!(b.get("/primary").status, 200);
    bc_insert_and_check(&b, &a, &c).await;
}

async fn bc_insert_and_check(b: &Instance, a: &Instance, c: &Instance) {
    b.connect()
        .await
        .batch_execute("INSERT INTO items VALUES (30000, 'b-again')")
        .await
        .unwrap();
    for r in [a, c] {
        eventually(
            r,
            "SELECT count(*) FROM items WHERE id = 30000",
            1,
            Duration::from_secs(10),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_recreates_its_lost_slot() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "slot-a");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "slot-b", &a);
    b.start().wait_ready();
    b.stop();
    let client = a.connect().await;
    client
        .batch_execute("SELECT pg_drop_replication_slot('slot_b')")
        .await
        .unwrap();
    b.start().wait_ready();
    eventually(
        &a,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_b' AND active",
        1,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_base_backup_is_redone_and_reuses_its_slot() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "kb-a");
    a.start().wait_ready();
    // Some data, so that the copy takes a moment.
    a.connect()
        .await
        .batch_execute("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g")
        .await
        .unwrap();
    let mut b = Instance::replica_of(tmp.path(), "kb-b", &a);
    b.start();
    let staging = b.pgdata.join(".pgwarden-staging");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staging.join("base").exists() {
        assert!(
            Instant::now() < deadline,
            "the base backup never started; log:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    b.kill_hard();
    assert!(
        !b.pgdata.join("PG_VERSION").exists(),
        "a partial copy must not look like a data directory"
    );

    let before = b.log().len();
    b.start().wait_ready();
    let second = b.log()[before..].to_owned();
    assert!(second.contains("interrupted"), "{second}");
    assert!(
        second.contains("reusing it"),
        "the slot from the first attempt is reused:\n{second}"
    );
    assert_eq!(count(&b, "SELECT count(*) FROM big").await, 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_not_ready_when_a_lag_bound_is_set() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "lag-a");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "lag-b", &a);
    b.set("PGWARDEN_READY_MAX_LAG", "1048576");
    b.start().wait_ready();
    // Pause replay; the receiver keeps receiving, so replay lag grows past 1 MiB.
    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    a.connect()
        .await
        .batch_execute("CREATE TABLE fill AS SELECT g, repeat('y', 100) AS pad FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    b.wait_for("/readyz", 503, Duration::from_secs(20));
    let st = b.status();
    assert!(
        st.not_ready_reason
            .as_deref()
            .unwrap_or("")
            .contains("PGWARDEN_READY_MAX_LAG"),
        "{st:?}"
    );
    assert!(st.lag.bytes.unwrap_or(0) > 1_048_576, "{st:?}");
    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    b.wait_for("/readyz", 200, Duration::from_secs(20));
}
