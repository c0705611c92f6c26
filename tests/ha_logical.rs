//! Logical replication across a switchover (PostgreSQL 17+ failover slots): a logical
//! slot created with `failover => true` on the leader is synchronized to the standby,
//! the consumer continues from the new leader where it left off, and the old leader
//! rejoins as a standby that synchronizes the slot in turn. Two pgwarden members on a
//! real etcd, each PID 1 of its own PID namespace, in synchronous mode `on`.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::*;
use ha::*;
use std::time::Duration;

/// The changes `slot` returns on `pg` now (consumed), as test_decoding prints them.
async fn changes(pg: &Instance, slot: &str) -> Vec<String> {
    let c = client(&pg.socket_dir, pg.port).await.expect("connect");
    // A failover slot waits for the standbys in synchronized_standby_slots: bounded, so
    // that a wait that never ends fails the test rather than hanging it.
    c.batch_execute("SET statement_timeout = '60s'")
        .await
        .unwrap();
    c.query(
        "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)
         WHERE data LIKE 'table public.l:%'",
        &[&slot],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// One text value of `sql` on `pg`, `None` when it does not answer or has no row.
async fn value(pg: &Instance, sql: &str) -> Option<String> {
    let c = client(&pg.socket_dir, pg.port).await?;
    c.query_opt(sql, &[]).await.ok()?.map(|r| r.get(0))
}

fn inserted(id: i32) -> String {
    format!("table public.l: INSERT: id[integer]:{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_consumer_continues_from_the_new_leader_after_a_switchover() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    if pg_major() < 17 {
        eprintln!(
            "skipped: failover slots need PostgreSQL 17 or later, these binaries are {}",
            pg_major()
        );
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = members_on(tmp.path(), &etcd.url(), None, &["n1", "n2"]);
    for m in members.iter_mut() {
        m.set("PGWARDEN_SYNC_MODE", "on");
        add_user_conf(m, "wal_level = logical\n");
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let other = 1 - first;
    let name = |i: usize| format!("n{}", i + 1);

    // The leader makes logical senders wait for its synchronous standby.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "the standby's slot in synchronized_standby_slots",
            || match rt.block_on(value(
                &members[first],
                "SELECT current_setting('synchronized_standby_slots')",
            )) {
                Some(v) if v == name(other) => Ok(()),
                v => Err(format!("{v:?}\n{}", logs(&members))),
            },
        )
    });

    execute(&members[first], "CREATE TABLE l (id int)").await;
    execute(
        &members[first],
        "SELECT pg_create_logical_replication_slot('sub', 'test_decoding', false, false, true)",
    )
    .await;
    // The standby's copy is usable (persistent) only once the slot on the leader has
    // moved past the oldest catalog rows the standby still has: a consumer at work
    // moves it. Running transactions logged, then consumed, move it here.
    let ready = "SELECT (synced AND NOT temporary)::text FROM pg_replication_slots
                 WHERE slot_name = 'sub'";
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(120),
            "the slot ready on the standby",
            || {
                rt.block_on(async {
                    let _ = value(&members[first], "SELECT pg_log_standby_snapshot()::text").await;
                    assert_eq!(changes(&members[first], "sub").await, Vec::<String>::new());
                    match value(&members[other], ready).await.as_deref() {
                        Some("true") => Ok(()),
                        v => Err(format!("{v:?}\n{}", logs(&members))),
                    }
                })
            },
        )
    });

    execute(&members[first], "INSERT INTO l VALUES (1)").await;
    assert_eq!(changes(&members[first], "sub").await, vec![inserted(1)]);
    let consumed = value(
        &members[first],
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sub'",
    )
    .await
    .expect("the slot's position");
    // Committed, not consumed: the consumer must get it from the new leader.
    execute(&members[first], "INSERT INTO l VALUES (2)").await;
    // The standby's copy follows the consumer (its worker polls every 200 ms to 30 s).
    let caught_up = format!(
        "SELECT (confirmed_flush_lsn >= '{consumed}')::text
         FROM pg_replication_slots WHERE slot_name = 'sub'"
    );
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "the standby's copy caught up",
            || match rt.block_on(value(&members[other], &caught_up)).as_deref() {
                Some("true") => Ok(()),
                v => Err(format!("{v:?}\n{}", logs(&members))),
            },
        )
    });

    // In synchronous mode only a recorded synchronous standby takes a switchover: the
    // member asked refuses it by its last read of the cluster, or the leader, by its
    // own, drops it ("dropped the request"); both mean "not yet", until the sync
    // record names the other member. That read is up to a round old: right after its
    // clone the standby may not be published as a running replica yet.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the switchover accepted", || {
            let (status, out) = members[first].run_cli(&["switchover", "--to", &name(other)]);
            match status.success() {
                true => Ok(()),
                false
                    if out.contains("is not a synchronous standby")
                        || out.contains("is not running as a replica")
                        || out.contains("dropped the request") =>
                {
                    Err(out)
                }
                false => panic!("{out}\n{}", logs(&members)),
            }
        })
    });
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "writes on the new leader",
            || match rt.block_on(writable(&addr(&members[other]))) {
                Some(true) => Ok(()),
                v => Err(format!("{v:?}\n{}", logs(&members))),
            },
        )
    });
    let behind = value(
        &members[other],
        &format!(
            "SELECT (confirmed_flush_lsn < '{consumed}')::text
             FROM pg_replication_slots WHERE slot_name = 'sub'"
        ),
    )
    .await;
    assert_eq!(
        behind.as_deref(),
        Some("false"),
        "the slot on the new leader"
    );
    execute(&members[other], "INSERT INTO l VALUES (3)").await;
    assert_eq!(
        changes(&members[other], "sub").await,
        vec![inserted(2), inserted(3)],
        "the consumer continues where it left off"
    );

    // The old leader follows, drops the slot it created as the leader, and
    // synchronizes the new leader's.
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[other], &name(first), &members);
        eventually(
            Duration::from_secs(120),
            "the slot synchronized on the old leader",
            || {
                rt.block_on(async {
                    let _ = value(&members[other], "SELECT pg_log_standby_snapshot()::text").await;
                    assert_eq!(changes(&members[other], "sub").await, Vec::<String>::new());
                    match value(&members[first], ready).await.as_deref() {
                        Some("true") => Ok(()),
                        v => Err(format!("{v:?}\n{}", logs(&members))),
                    }
                })
            },
        )
    });
    let log = members[first].log();
    assert!(
        log.contains("dropped a logical failover slot left from when this member was the primary"),
        "{log}"
    );
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
}
