//! Major upgrades at start (`PGWARDEN_UPGRADE=on`), from Debian's PostgreSQL 15 to the
//! run's major (18 in `make test`): the data after, a failure that leaves 15 as it was,
//! and kills at the dangerous moments. See docs/upgrades.md.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::wal::Store;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The old binaries, or `None` (and why, printed) when this run cannot upgrade.
fn old_bindir() -> Option<PathBuf> {
    let old = PathBuf::from("/usr/lib/postgresql/15/bin");
    if pg_major() <= 15 {
        eprintln!(
            "skipped: the upgrade tests go from PostgreSQL 15 to the run's major, which is {}",
            pg_major()
        );
        return None;
    }
    if !old.join("postgres").is_file() {
        eprintln!(
            "skipped: PostgreSQL 15 is not installed at {} (apt-get install postgresql-15)",
            old.display()
        );
        return None;
    }
    Some(old)
}

/// A primary on PostgreSQL 15 with pg_stat_statements preloaded.
fn primary_on_15(parent: &Path, name: &str, old: &Path) -> Instance {
    let mut pg = Instance::primary(parent, name);
    pg.set("PGWARDEN_PG_BINDIR", old.display().to_string());
    let conf = std::fs::read_to_string(&pg.user_conf).unwrap();
    std::fs::write(
        &pg.user_conf,
        format!("{conf}shared_preload_libraries = 'pg_stat_statements'\n"),
    )
    .unwrap();
    pg
}

/// Switches `pg` to the run's binaries, with the upgrade on.
fn to_new_major(pg: &mut Instance) {
    pg.set("PGWARDEN_PG_BINDIR", pg_bindir().display().to_string())
        .set("PGWARDEN_UPGRADE", "on");
}

async fn query_i64(pg: &Instance, sql: &str) -> i64 {
    pg.connect()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn work_dirs(pg: &Instance) -> Vec<PathBuf> {
    [
        pgwarden::upgrade::state::beside(&pg.pgdata),
        pg.pgdata.join(pgwarden::upgrade::state::INSIDE),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

fn marker_phase(pg: &Instance) -> String {
    let work = work_dirs(pg);
    let text = std::fs::read_to_string(work[0].join("state")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("phase="))
        .unwrap()
        .to_owned()
}

fn pg_version(pg: &Instance) -> String {
    std::fs::read_to_string(pg.pgdata.join("PG_VERSION"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Waits until the log says the upgrade paused `times` times (a test hook), so the
/// kill that follows lands exactly there.
fn wait_paused(pg: &Instance, times: usize) {
    eventually(Duration::from_secs(180), "the upgrade pauses", || {
        let n = pg.log().matches("upgrade paused for a test").count();
        if n >= times {
            Ok(())
        } else if pg.log().contains("upgrade of PGDATA from") {
            panic!("the upgrade failed; log:\n{}", pg.log())
        } else {
            Err(format!("{n} pauses"))
        }
    });
}

/// Rows, a role, an extension that needs updating and preloading, and a replica: all
/// there after the upgrade, which archives under its own server name and takes its
/// first base backup there; the replica clones the upgraded primary again.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_and_its_replica_come_through_an_upgrade() {
    let Some(old) = old_bindir() else { return };
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = primary_on_15(tmp.path(), "up", &old);
    store.configure(&mut pg, "up");
    pg.start().wait_ready();
    let mut replica = Instance::replica_of(tmp.path(), "uprep", &pg);
    replica.set("PGWARDEN_PG_BINDIR", old.display().to_string());
    replica.start().wait_ready();
    {
        let c = pg.connect().await;
        c.batch_execute(
            "CREATE EXTENSION pg_stat_statements;
             CREATE ROLE app LOGIN PASSWORD 'app-password';
             CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 1000) i;
             GRANT SELECT ON t TO app;
             SELECT pg_switch_wal();",
        )
        .await
        .unwrap();
    }
    // The old cluster has archived under the old name (its marker is there).
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "a segment of 15 archived",
            || match rt.block_on(query_i64(
                &pg,
                "SELECT archived_count FROM pg_stat_archiver",
            )) {
                0 => Err("nothing archived yet".into()),
                _ => Ok(()),
            },
        )
    });
    replica.stop();
    pg.stop();

    to_new_major(&mut pg);
    pg.start()
        .wait_for("/readyz", 200, Duration::from_secs(300));
    assert_eq!(
        query_i64(
            &pg,
            "SELECT current_setting('server_version_num')::bigint / 10000"
        )
        .await,
        i64::from(pg_major())
    );
    assert_eq!(query_i64(&pg, "SELECT count(*) FROM t").await, 1000);
    let app = pg
        .connect_as("app", "app-password", "postgres")
        .await
        .unwrap();
    let n: i64 = app
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);

    // What is left of the upgrade runs once it is up: the extension updated (as
    // update_extensions.sql says), statistics, the backup, the old cluster removed.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(240), "the upgrade finishes", || {
            if work_dirs(&pg).is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "work directory still there; log tail: {}",
                    pg.log()
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
            }
        })
    });
    assert_eq!(
        query_i64(
            &pg,
            "SELECT count(*) FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname \
             WHERE e.extname = 'pg_stat_statements' AND e.extversion = a.default_version"
        )
        .await,
        1,
        "pg_stat_statements is at the new major's version"
    );
    assert!(query_i64(&pg, "SELECT count(*) FROM pg_stat_statements").await > 0);
    assert!(
        query_i64(&pg, "SELECT count(*) FROM pg_stats WHERE tablename = 't'").await > 0,
        "statistics were rebuilt"
    );
    // The new cluster archives under its own name, never into the old cluster's.
    let (cfg, backend) = store.open(&format!("up-pg{}", pg_major())).await;
    let listed = pgwarden::backup::list::list(&backend, &cfg.base())
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the upgraded cluster's first backup: {listed:?}"
    );
    let (old_cfg, old_backend) = store.open("up").await;
    use pgwarden::wal::storage::Storage;
    let key = |c: &pgwarden::wal::ArchiveConfig| format!("{}/pgwarden-system-identifier", c.base());
    let old_id = old_backend
        .get(&key(&old_cfg))
        .await
        .unwrap()
        .map(|(b, _)| b);
    let new_id = backend.get(&key(&cfg)).await.unwrap().map(|(b, _)| b);
    assert!(old_id.is_some() && new_id.is_some() && old_id != new_id);

    // The replica's copy is of 15: it clones the upgraded primary again.
    to_new_major(&mut replica);
    replica
        .start()
        .wait_for("/readyz", 200, Duration::from_secs(180));
    let r = replica.connect().await;
    let n: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    assert!(replica
        .log()
        .contains("giving up this replica's PostgreSQL 15 copy"));
    replica.stop();
    pg.stop();
}

/// An extension whose library the new major lacks (adminpack left PostgreSQL in 17):
/// pg_upgrade --check refuses, pgwarden says so and why, and the old cluster starts
/// again with the old binaries, untouched.
#[test]
fn a_failed_upgrade_leaves_the_old_cluster_as_it_was() {
    let Some(old) = old_bindir() else { return };
    let tmp = test_dir();
    let mut pg = primary_on_15(tmp.path(), "fail", &old);
    pg.start().wait_ready();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        pg.connect()
            .await
            .batch_execute(
                "CREATE EXTENSION adminpack; CREATE TABLE t AS SELECT generate_series(1, 10) i;",
            )
            .await
            .unwrap();
    });
    pg.stop();

    to_new_major(&mut pg);
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(300));
    assert!(!status.success());
    let log = pg.log();
    for needle in [
        "pg_upgrade --check failed",
        "adminpack",
        "PGDATA holds the PostgreSQL 15 cluster as before",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(work_dirs(&pg).is_empty());
    assert_eq!(pg_version(&pg), "15");
    // pg_upgrade --check starts and stops the old server (a new checkpoint), so
    // pg_control is not byte for byte the same; it is there, not renamed.
    assert!(pg.pgdata.join("global/pg_control").is_file());

    pg.set("PGWARDEN_PG_BINDIR", old.display().to_string())
        .set("PGWARDEN_UPGRADE", "off");
    pg.start().wait_ready();
    rt.block_on(async { assert_eq!(query_i64(&pg, "SELECT count(*) FROM t").await, 10) });
    pg.stop();
}

/// A crashed old cluster is recovered first. Killed where link mode is most delicate
/// (pg_upgrade done, the old pg_control renamed, nothing moved yet), the old cluster is put back and starts with the old
/// binaries; killed half-way through the move, the next start finishes it; killed
/// before the steps after the first start, they run at the next.
#[test]
fn a_killed_upgrade_is_undone_or_finished_at_the_next_start() {
    let Some(old) = old_bindir() else { return };
    let tmp = test_dir();
    let mut pg = primary_on_15(tmp.path(), "kill", &old);
    pg.start().wait_ready();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        pg.connect()
            .await
            .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 100) i;")
            .await
            .unwrap();
    });
    // The old cluster dies rather than stops: pg_upgrade needs a clean shutdown, which
    // the upgrade makes first (its WAL replayed: the rows are there at the end).
    pg.kill_pod();

    // 1. pg_upgrade has linked the files and renamed pg_control: killed there.
    to_new_major(&mut pg);
    pg.set("PGWARDEN_TEST_PAUSE_UPGRADE_AT", "upgraded");
    pg.start();
    wait_paused(&pg, 1);
    pg.kill_pod();
    assert!(pg
        .log()
        .contains("not shut down cleanly; replaying its WAL"));
    assert_eq!(marker_phase(&pg), "prepare");
    assert!(pg.pgdata.join("global/pg_control.old").exists());
    assert!(!pg.pgdata.join("global/pg_control").exists());

    // The old binaries, upgrade off: the upgrade is undone and 15 runs.
    pg.set("PGWARDEN_PG_BINDIR", old.display().to_string())
        .set("PGWARDEN_UPGRADE", "off")
        .unset("PGWARDEN_TEST_PAUSE_UPGRADE_AT");
    pg.start().wait_ready();
    rt.block_on(async {
        assert_eq!(query_i64(&pg, "SELECT count(*) FROM t").await, 100);
        assert_eq!(
            query_i64(
                &pg,
                "SELECT current_setting('server_version_num')::bigint / 10000"
            )
            .await,
            15
        );
    });
    assert!(work_dirs(&pg).is_empty());
    pg.stop();

    // 2. Killed half-way through moving the new cluster in.
    to_new_major(&mut pg);
    pg.set("PGWARDEN_TEST_PAUSE_UPGRADE_AT", "swap-in");
    pg.start();
    wait_paused(&pg, 2);
    pg.kill_pod();
    assert_eq!(marker_phase(&pg), "swap-in");
    assert_eq!(pg_version(&pg), "15", "the commit point is not reached");

    // 3. The next start finishes the move and starts 18; killed before the steps after.
    pg.set("PGWARDEN_TEST_PAUSE_UPGRADE_AT", "started");
    pg.start();
    wait_paused(&pg, 3);
    assert_eq!(marker_phase(&pg), "started");
    pg.kill_pod();

    // 4. The last start does what was left.
    pg.unset("PGWARDEN_TEST_PAUSE_UPGRADE_AT");
    pg.start().wait_ready();
    rt.block_on(async {
        assert_eq!(query_i64(&pg, "SELECT count(*) FROM t").await, 100);
        assert_eq!(
            query_i64(
                &pg,
                "SELECT current_setting('server_version_num')::bigint / 10000"
            )
            .await,
            i64::from(pg_major())
        );
    });
    eventually(Duration::from_secs(180), "the upgrade finishes", || {
        if work_dirs(&pg).is_empty() {
            Ok(())
        } else {
            Err("work directory still there".into())
        }
    });
    assert!(pg.log().contains("upgrade complete"));
    pg.stop();
}

/// Under HA: refused unless paused; paused, the last leader upgrades and the other
/// member, started first with the new binaries, waits for it and clones it again.
#[tokio::test(flavor = "multi_thread")]
async fn an_ha_cluster_is_upgraded_by_its_leader_and_the_replica_follows() {
    let Some(old) = old_bindir() else { return };
    let _turn = ha::one_at_a_time();
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = ha::members_on(tmp.path(), &etcd.url(), None, &["n1", "n2"]);
    for m in members.iter_mut() {
        m.set("PGWARDEN_PG_BINDIR", old.display().to_string());
    }
    let leader = ha::bring_up(&mut members).await;
    let replica = 1 - leader;

    // Not paused: a member with the new binaries refuses to start, touching nothing.
    ha::stop_member(&mut members[replica]);
    to_new_major(&mut members[replica]);
    members[replica].start();
    assert!(!members[replica]
        .wait_exit(Duration::from_secs(60))
        .success());
    assert!(members[replica].log().contains("pgwarden pause"));
    assert_eq!(pg_version(&members[replica]), "15");

    let (status, out) = members[leader].run_cli(&["pause"]);
    assert!(status.success(), "{out}");
    ha::stop_member(&mut members[leader]);
    to_new_major(&mut members[leader]);
    members[replica].start();
    members[leader].start();
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(300),
            "the leader runs the new major",
            || match rt.block_on(ha::writable(&ha::addr(&members[leader]))) {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}\n{}", ha::logs(&members))),
            },
        );
        ha::wait_streaming(
            &rt,
            &members[leader],
            &format!("n{}", replica + 1),
            &members,
        );
    });
    let major = |m: &Instance| {
        let a = ha::addr(m);
        async move {
            let c = ha::client(&a.0, a.1).await?;
            let v: String = c
                .query_one("SHOW server_version_num", &[])
                .await
                .ok()?
                .get(0);
            v.parse::<u32>().ok().map(|v| v / 10_000)
        }
    };
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "the new major and the rows on both",
            || {
                let got: Vec<_> = members
                    .iter()
                    .map(|m| (rt.block_on(major(m)), rt.block_on(ha::count(m))))
                    .collect();
                let want = (Some(pg_major()), Some(100));
                if got.iter().all(|g| *g == want) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
    });
    let (status, out) = members[leader].run_cli(&["resume"]);
    assert!(status.success(), "{out}");
    for i in [replica, leader] {
        ha::stop_member(&mut members[i]);
    }
}
