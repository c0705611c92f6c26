//! Scheduled backups under HA (issue 17): every member runs `PGWARDEN_BACKUP_SCHEDULE`,
//! and each due time makes one backup, taken on the streaming replica
//! (`PGWARDEN_BACKUP_TARGET=prefer-standby`, the default), on the primary once no
//! replica is healthy. Two members on a real etcd, an archive on a volume.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::wal::*;
use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The schedule: short, so that the test sees three due times.
const EVERY: u64 = 15;

/// The DONE backups in the archive, as `pgwarden backup-list --json` lists them.
fn listed(pg: &Instance) -> Vec<Value> {
    let (code, out) = pg.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "{out}");
    let all: Vec<Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    all.into_iter().filter(|b| b["status"] == "DONE").collect()
}

fn member(b: &Value) -> &str {
    b["extra"]["member"].as_str().unwrap_or_default()
}

/// A backup's begin time, in seconds since the epoch.
fn began(b: &Value) -> f64 {
    let t = pgwarden::civil::parse_barman_time(b["begin_time"].as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// Each test has a runtime of its own; the HA tests' turn is held across its awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_on_the_standby_once_per_due_time_and_fall_back_to_the_primary() {
    let _turn = ha::one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let tmp = test_dir();
    let store = Store::fs();
    let etcd = common::etcd::Etcd::start();
    let mut members = ha::members_on(tmp.path(), &etcd.url(), None, &["n1", "n2"]);
    for m in members.iter_mut() {
        store.configure(m, "c");
        m.set("PGWARDEN_BACKUP_SCHEDULE", format!("{EVERY}s"));
    }
    let primary = ha::bring_up(&mut members).await;
    let replica = 1 - primary;
    let (pname, rname) = (format!("n{}", primary + 1), format!("n{}", replica + 1));

    // A standby's backup ends where it has replayed, in a segment only the primary
    // archives: a busy primary switches segments often (an idle one every
    // archive_timeout, 60 s, too long for this test).
    let stop = Arc::new(AtomicBool::new(false));
    let switcher = {
        let (stop, dir, port) = (
            stop.clone(),
            members[primary].socket_dir.clone(),
            members[primary].port,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some(c) = ha::client(&dir, port).await {
                    let _ = c
                        .batch_execute("INSERT INTO t VALUES (0); SELECT pg_switch_wal()")
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        })
    };

    // A due time once the replica streams: the replica takes it.
    let on_standby = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(120),
            "a scheduled backup taken on the replica",
            || {
                let all = listed(&members[primary]);
                all.iter()
                    .find(|b| member(b) == rname)
                    .cloned()
                    .ok_or_else(|| format!("{all:#?}\n{}", ha::logs(&members)))
            },
        )
    });
    assert!(
        on_standby["backup_label"]
            .as_str()
            .is_some_and(|l| l.contains("BACKUP FROM: standby")),
        "{on_standby}"
    );
    let st = members[primary].status().backup;
    assert_eq!(
        st.scheduled_on.as_deref(),
        Some(rname.as_str()),
        "the primary names the member that takes the scheduled backups: {st:?}"
    );

    // The replica goes: the next due time's backup is the primary's.
    ha::stop_member(&mut members[replica]);
    let on_primary = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "a scheduled backup on the primary once the replica is gone",
            || {
                listed(&members[primary])
                    .into_iter()
                    .find(|b| member(b) == pname && began(b) > began(&on_standby))
                    .ok_or_else(|| members[primary].log())
            },
        )
    });
    assert!(
        on_primary["backup_label"]
            .as_str()
            .is_some_and(|l| l.contains("BACKUP FROM: primary")),
        "{on_primary}"
    );
    stop.store(true, Ordering::SeqCst);
    switcher.await.unwrap();
    let st = members[primary].status().backup;
    assert_eq!(st.scheduled_on.as_deref(), Some(pname.as_str()), "{st:?}");

    // One backup a due time: consecutive backups began at least the interval apart
    // (less a second: a member counts from its own last attempt to the second).
    let all = listed(&members[primary]);
    let mut times: Vec<f64> = all.iter().map(began).collect();
    times.sort_by(f64::total_cmp);
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= EVERY as f64 - 1.0,
            "two backups for one due time: {all:#?}"
        );
    }
    // What the backups need is all in the archive, and the standby's backup restores.
    let (code, out) = members[primary].run_cli(&["wal-verify"]);
    assert!(code.success(), "{out}");
    let id = on_standby["backup_id"].as_str().unwrap();
    let mut drill =
        members[primary].command_for_test(&["restore-drill", "--json", "--backup-id", id]);
    drill.env("PGWARDEN_DRILL_SQL", "SELECT count(*) > 100 FROM t");
    let out = drill.output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && r["ok"] == true,
        "the drill of {id}: {r:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
