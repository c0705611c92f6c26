//! Failsafe mode (`PGWARDEN_FAILSAFE=on`) against a real etcd and three pgwarden
//! members, each in a PID namespace of its own: with etcd frozen, the primary keeps
//! accepting writes while every member confirms it, and fences itself as soon as one
//! cannot; with etcd back, the same member leads again without a failover.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::*;
use ha::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_frozen_the_primary_runs_on_while_every_member_confirms_it() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    // TTL 10: a round with etcd down (a 2 s renewal attempt, the members' answers,
    // loop_wait) must fit in a fence deadline (pgwarden refuses a tighter timing).
    let mut members = members_timed(
        tmp.path(),
        &etcd.url(),
        None,
        &["n1", "n2", "n3"],
        (10, 1, 2),
    );
    for m in members.iter_mut() {
        m.set("PGWARDEN_FAILSAFE", "on");
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    // The leader records the member list for failsafe mode once a round; give it one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checker = Checker::start(members.iter().map(addr).collect());

    let etcd_pid = Pid::from_raw(etcd.pid());
    kill(etcd_pid, Signal::SIGSTOP).unwrap();
    // Three TTLs without etcd: the primary keeps taking writes all along.
    let until = Instant::now() + Duration::from_secs(30);
    let mut id = 1000;
    while Instant::now() < until {
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id})");
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            client(&members[first].socket_dir, members[first].port)
                .await?
                .batch_execute(&sql)
                .await
                .ok()
        })
        .await;
        assert!(
            matches!(done, Ok(Some(()))),
            "a write failed {}s into the etcd outage:\n{}",
            30 - until.saturating_duration_since(Instant::now()).as_secs(),
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        members[first]
            .log()
            .contains("every member keeps this leader"),
        "{}",
        members[first].log()
    );

    // One member stops answering (its pgwarden frozen): the leader can no longer be
    // kept, and fences itself.
    let other = (first + 1) % 3;
    let frozen = Pid::from_raw(inner_pid(&members[other]));
    kill(frozen, Signal::SIGSTOP).unwrap();
    wait_none_writable(&rt, &members);
    assert!(
        members[first].log().contains("does not keep this leader"),
        "{}",
        members[first].log()
    );
    kill(frozen, Signal::SIGCONT).unwrap();
    kill(etcd_pid, Signal::SIGCONT).unwrap();

    // etcd is back: one leader, the others following, every acknowledged row there.
    let leader = wait_one_leader_followed(&rt, &members);
    let rows = count(&members[leader]).await.unwrap_or(0);
    assert_eq!(rows, 100 + (id - 1000) as i64, "rows lost");
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_failsafe_a_member_refuses_to_keep_a_leader() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = members_timed(tmp.path(), &etcd.url(), None, &["n1", "n2"], (10, 1, 2));
    let first = bring_up(&mut members).await;
    let other = 1 - first;
    // 502: failsafe mode is off there (the leader then fences as usual).
    let r = pgwarden::http::client::request(
        &pgwarden::http::client::Target::Tcp(members[other].http),
        "POST",
        "/failsafe?leader=n9",
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("PGWARDEN_FAILSAFE"), "{}", r.body);
}
