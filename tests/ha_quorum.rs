//! Quorum commit (`PGWARDEN_SYNC_MODE=quorum`) with three pgwarden members, a real etcd
//! and real PostgreSQL, each member in a PID namespace of its own.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::*;
use ha::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden::ha::store::Store;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_loses_no_acknowledged_row_when_the_primary_is_killed() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    for m in members.iter_mut() {
        m.set("PGWARDEN_SYNC_MODE", "quorum");
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let name = |i: usize| format!("n{}", i + 1);
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    // Steady state: both replicas named, any one of them confirms a commit, and a
    // voter must see one other voter not ahead of it to be promoted.
    let mut voters: Vec<String> = others.iter().map(|i| name(*i)).collect();
    voters.sort();
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the quorum recorded", || {
            let view = rt.block_on(store.read()).map_err(|e| e.to_string())?;
            match view.sync {
                Some(s)
                    if s.leader == name(first) && s.members == voters && s.quorum == Some(1) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}\n{}", logs(&members))),
            }
        })
    });
    let setting = client(&members[first].socket_dir, members[first].port)
        .await
        .unwrap()
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(
        setting,
        format!("ANY 1 (\"{}\", \"{}\")", voters[0], voters[1])
    );

    execute(&members[first], "CREATE TABLE w (id int PRIMARY KEY)").await;
    let checker = Checker::start(members.iter().map(addr).collect());
    let writer = Writer::start(members.iter().map(addr).collect());
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "rows written", || {
            match rt.block_on(ids(&members[first])).len() {
                n if n >= 50 => Ok(()),
                n => Err(format!("{n} rows")),
            }
        })
    });
    kill(Pid::from_raw(members[first].pid()), Signal::SIGKILL).unwrap();
    members[first].kill_hard();
    let second = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "a voter takes over",
            || match primaries(&members).as_slice() {
                [one] => Ok(*one),
                p => Err(format!("primaries {p:?}\n{}", logs(&members))),
            },
        )
    });
    assert!(others.contains(&second));
    let before = ids(&members[second]).await.len();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "writes on the new leader",
            || match rt.block_on(ids(&members[second])).len() {
                n if n > before => Ok(()),
                n => Err(format!("{n} rows\n{}", logs(&members))),
            },
        )
    });
    let acked = writer.finish().await;
    assert!(checker.finish().await > 0);
    let present = ids(&members[second]).await;
    let lost: Vec<&i32> = acked
        .iter()
        .filter(|i| present.binary_search(i).is_err())
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    // The new leader names the remaining member: ANY 1 of it, quorum 0.
    let third = (0..3).find(|i| *i != first && *i != second).unwrap();
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the new leader's quorum", || {
            let view = rt.block_on(store.read()).map_err(|e| e.to_string())?;
            match view.sync {
                Some(s)
                    if s.leader == name(second)
                        && s.members == vec![name(third)]
                        && s.quorum == Some(0) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}\n{}", logs(&members))),
            }
        })
    });
}
