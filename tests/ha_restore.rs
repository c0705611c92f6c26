//! Restore under HA and replicas seeded from the archive (issue 17): a new cluster on
//! etcd bootstraps from a backup of another cluster (one member restores, the others
//! clone it; a restore that fails gives the initialize key up), archives into its own
//! archive only, and with PGWARDEN_CLONE_FROM=archive
//! a member added later is seeded from that archive's latest backup, while one that
//! finds no backup there falls back to pg_basebackup. Real PostgreSQL and etcd.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::wal::*;
use common::*;
use ha::*;
use pgwarden::ha::etcd::EtcdStore;
use pgwarden::ha::store::Store as _;
use std::time::Duration;

/// The log lines of `pg` that contain `needle`.
fn lines_with(pg: &Instance, needle: &str) -> Vec<String> {
    pg.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Waits until `pg` has `rows` rows in table `t`.
fn wait_rows(rt: &tokio::runtime::Handle, pg: &Instance, rows: i64, all: &[Instance]) {
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the rows reach it", || {
            match rt.block_on(count(pg)) {
                Some(n) if n == rows => Ok(()),
                other => Err(format!("{other:?}\n{}", logs(all))),
            }
        })
    });
}

// Each test has a runtime of its own; the HA tests' turn is held across its awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_backup_archives_apart_and_seeds_replicas_from_its_archive() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let rt = tokio::runtime::Handle::current();
    let tmp = test_dir();
    // The source: a standalone primary with 1000 rows and a backup in archive A.
    let source = Store::fs();
    let mut src = Instance::primary(tmp.path(), "src");
    source.configure(&mut src, "src");
    src.start().wait_ready();
    create_t(&src, 1000).await;
    take_backup(&src);
    // A clean stop archives the last segment; from then on nothing may write into A.
    src.stop();
    let source_before = tree(source.root());

    let own = Store::fs();
    let etcd = Etcd::start();
    // A restore that cannot recover (its target is past the end of A) initializes
    // nothing: the member says why and exits, gives up the initialize key for another
    // to try, and leaves PGDATA to be rebuilt from clean.
    let mut failed = members_on(tmp.path(), &etcd.url(), None, &["n0"])
        .pop()
        .unwrap();
    own.configure(&mut failed, "c");
    failed
        .set("PGWARDEN_RESTORE_URL", source.url())
        .set("PGWARDEN_RESTORE_NAME", "src")
        .set("PGWARDEN_RECOVERY_TARGET_TIME", "2999-01-01 00:00:00+00");
    failed.start();
    let status = tokio::task::block_in_place(|| failed.wait_exit(Duration::from_secs(120)));
    assert!(!status.success(), "{}", failed.log());
    for needle in [
        "restoring the cluster from a backup as its first leader",
        "PGWARDEN_RECOVERY_TARGET_TIME: the archive ends before the recovery target",
        "removed the initialize key after a failed bootstrap",
    ] {
        assert!(
            !lines_with(&failed, needle).is_empty(),
            "{needle}\n{}",
            failed.log()
        );
    }
    assert!(
        !failed.pgdata.join("PG_VERSION").exists(),
        "{}",
        failed.log()
    );
    let store = EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(5))
        .await
        .unwrap();
    let view = store.read().await.unwrap();
    assert_eq!(
        (view.initialize, view.leader),
        (None, None),
        "{}",
        failed.log()
    );

    // A new cluster restored from A, archiving into B. Every member may seed itself
    // from B; when the second one comes, B has no backup yet.
    let mut members = members_on(tmp.path(), &etcd.url(), None, &["n1", "n2"]);
    for m in members.iter_mut() {
        own.configure(m, "c");
        m.set("PGWARDEN_RESTORE_URL", source.url())
            .set("PGWARDEN_RESTORE_NAME", "src")
            .set("PGWARDEN_CLONE_FROM", "archive");
    }
    for m in members.iter_mut() {
        m.start();
    }
    let leader = wait_one_leader_followed(&rt, &members);
    let other = 1 - leader;
    let restorers: Vec<usize> = (0..2)
        .filter(|i| {
            !lines_with(
                &members[*i],
                "restoring the cluster from a backup as its first leader",
            )
            .is_empty()
        })
        .collect();
    assert_eq!(restorers, [leader], "{}", logs(&members));
    assert!(
        !lines_with(&members[leader], "backup extracted").is_empty(),
        "{}",
        members[leader].log()
    );
    assert_eq!(count(&members[leader]).await, Some(1000), "rows restored");
    wait_rows(&rt, &members[other], 1000, &members);
    // The other member found no backup in B: it cloned the leader, and said why.
    let why = lines_with(&members[other], "the archive cannot seed this replica");
    assert!(
        why.len() == 1 && why[0].contains("no complete backup"),
        "{why:?}\n{}",
        members[other].log()
    );
    assert!(
        !lines_with(&members[other], "copying the primary with pg_basebackup").is_empty(),
        "{}",
        members[other].log()
    );

    // The restored cluster archives its writes into B, never into A (a write first:
    // a switch right after the clone's would close no segment).
    execute(
        &members[leader],
        "INSERT INTO t SELECT g FROM generate_series(1001, 1050) g",
    )
    .await;
    let seg = switch_and_wait_archived(&members[leader]).await;
    archived(own.root(), "c", &seg);
    // A backup of the cluster into B, then rows it does not hold.
    let backup_id = take_backup(&members[leader])["backup_id"]
        .as_str()
        .unwrap()
        .to_owned();
    execute(
        &members[leader],
        "INSERT INTO t SELECT g FROM generate_series(1051, 1100) g",
    )
    .await;
    switch_and_wait_archived(&members[leader]).await;

    // A member added later, with an empty PGDATA: seeded from B's latest backup and
    // its WAL, then streaming from the leader, without pg_basebackup.
    let mut third = members_on(tmp.path(), &etcd.url(), None, &["n3"])
        .pop()
        .unwrap();
    own.configure(&mut third, "c");
    third
        .set("PGWARDEN_RESTORE_URL", source.url())
        .set("PGWARDEN_RESTORE_NAME", "src")
        .set("PGWARDEN_CLONE_FROM", "archive");
    third.start();
    members.push(third);
    tokio::task::block_in_place(|| wait_streaming(&rt, &members[leader], "n3", &members));
    wait_rows(&rt, &members[2], 1100, &members);
    let seeded = lines_with(&members[2], "seeding this replica from the archive");
    assert!(
        seeded.len() == 1 && seeded[0].contains(&backup_id),
        "{seeded:?}\n{}",
        members[2].log()
    );
    assert!(
        lines_with(&members[2], "copying the primary with pg_basebackup").is_empty(),
        "{}",
        members[2].log()
    );
    // The other members follow the same leader still.
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[leader], &format!("n{}", other + 1), &members)
    });

    assert_eq!(
        tree(source.root()),
        source_before,
        "the source archive changed\n{}",
        logs(&members)
    );
}
