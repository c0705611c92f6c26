//! Automatic failover with three pgwarden instances and a real etcd. Each instance runs
//! in a PID namespace of its own, as in a container: killing its pgwarden with SIGKILL
//! takes postgres down with it, so no orphaned primary outlives it.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::router::Router;
use common::*;
use ha::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden::ha::store::Store;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_over_the_old_primary_rejoins_and_a_planned_stop_hands_over() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();

    let checker = Checker::start(members.iter().map(addr).collect());
    // SIGKILL of the primary's pgwarden: its PID namespace, postgres included, dies.
    kill(Pid::from_raw(members[first].pid()), Signal::SIGKILL).unwrap();
    members[first].kill_hard();
    let second = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "a replica takes over",
            || match primaries(&members).as_slice() {
                [one] if *one != first => Ok(*one),
                p => Err(format!("primaries {p:?}\n{}", logs(&members))),
            },
        )
    });
    let follower = others.iter().copied().find(|o| *o != second).unwrap();
    tokio::task::block_in_place(|| {
        wait_streaming(
            &rt,
            &members[second],
            &format!("n{}", follower + 1),
            &members,
        )
    });
    assert_eq!(
        count(&members[second]).await,
        Some(100),
        "rows lost in the failover"
    );
    execute(
        &members[second],
        "INSERT INTO t SELECT generate_series(101, 150)",
    )
    .await;
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "new rows reach the follower",
            || match rt.block_on(count(&members[follower])) {
                Some(150) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    });
    // The old primary comes back: it starts as a standby of the new leader, rewound
    // past the fork if it had to be, and catches up.
    members[first].start();
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[second], &format!("n{}", first + 1), &members);
        eventually(
            Duration::from_secs(30),
            "the old primary catches up",
            || match rt.block_on(count(&members[first])) {
                Some(150) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    });
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    // The new leader's term is recorded in the store's history.
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    let name = |i: usize| format!("n{}", i + 1);
    let view = store.read().await.unwrap();
    assert_eq!(view.leader.map(|l| l.name), Some(name(second)));
    assert_eq!(
        view.history.last().map(|h| h.leader.clone()),
        Some(name(second))
    );

    // Each member shows the cluster as it read it: /status.ha, /cluster, /history.
    let metrics = members[second].get("/metrics").body;
    assert!(metrics.contains("pgwarden_ha_is_leader 1"), "{metrics}");
    let leader_status = members[second].status();
    let ha = leader_status.ha.expect("/status has an ha section");
    assert!(ha.is_leader && ha.last_renew_ok, "{ha:?}");
    assert_eq!(ha.leader, Some(name(second)));
    // The follower shows its last read, a round old at most: the rejoined member
    // appears in it by the next round.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "/cluster lists every member",
            || {
                let cluster: serde_json::Value =
                    serde_json::from_str(&members[follower].get("/cluster").body).unwrap();
                let listed: Vec<String> = cluster["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|m| m["name"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if cluster["leader"] == name(second) && listed.len() == 3 {
                    Ok(())
                } else {
                    Err(cluster.to_string())
                }
            },
        )
    });
    let (status, out) = members[follower].run_cli(&["list"]);
    assert!(status.success(), "{out}");
    assert!(out.contains(&format!("leader {}", name(second))), "{out}");
    assert!(out.contains(&format!("\n{} *", name(second))), "{out}");
    let history: serde_json::Value =
        serde_json::from_str(&members[follower].get("/history").body).unwrap();
    assert_eq!(
        history
            .as_array()
            .and_then(|h| h.last())
            .map(|e| e["leader"].clone()),
        Some(serde_json::json!(name(second)))
    );

    // A planned stop of the leader (SIGTERM, as a pod deletion): once postgres has
    // stopped, pgwarden revokes its lease, so the key does not wait for the TTL.
    kill(Pid::from_raw(inner_pid(&members[second])), Signal::SIGTERM).unwrap();
    let status = members[second].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", members[second].log());
    assert!(members[second].log().contains("HA: left the cluster"));
    let leader = store.read().await.unwrap().leader.map(|l| l.name);
    assert_ne!(
        leader,
        Some(name(second)),
        "the stopped leader still holds the key"
    );
    let third = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "another member leads",
            || match primaries(&members).as_slice() {
                [one] if *one != second => Ok(*one),
                p => Err(format!("primaries {p:?}\n{}", logs(&members))),
            },
        )
    });
    assert_eq!(count(&members[third]).await, Some(150), "rows lost");
    let rounds = checker.finish().await;
    assert!(rounds > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_from_the_store_fences_itself_and_nobody_promotes_until_it_returns() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let checker = Checker::start(members.iter().map(addr).collect());
    // A frozen etcd answers nothing (Patroni's way to test a store outage): the
    // primary cannot renew, and must stop accepting writes on its own.
    let etcd_pid = Pid::from_raw(etcd.pid());
    kill(etcd_pid, Signal::SIGSTOP).unwrap();
    wait_none_writable(&rt, &members);
    assert!(
        members[first].log().contains("fencing"),
        "{}",
        members[first].log()
    );
    // Read-only, not down: the fenced member restarts as a standby.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "the fenced member serves reads",
            || match rt.block_on(writable(&addr(&members[first]))) {
                Some(false) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    });
    kill(etcd_pid, Signal::SIGCONT).unwrap();
    // The store is back: one member leads again, the others follow it, nothing is lost.
    let leader = wait_one_leader_followed(&rt, &members);
    assert_eq!(count(&members[leader]).await, Some(100), "rows lost");
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialize_winner_that_died_before_leading_does_not_block_the_bootstrap() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    // A member won the initialize race and died before it took the leader key.
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(store.initialize("ghost").await.unwrap());
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    // bring_up checks that exactly one member ran initdb and the others cloned it.
    let first = bring_up(&mut members).await;
    assert!(
        members
            .iter()
            .any(|m| m.log().contains("abandoning its claim")),
        "{}",
        logs(&members)
    );
    let view = store.read().await.unwrap();
    assert_eq!(view.initialize, Some(format!("n{}", first + 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_of_three_lost_changes_nothing_and_the_quorum_lost_fences_the_primary() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcds = Etcd::start_cluster(3);
    let endpoints: Vec<String> = etcds.iter().map(|e| e.url()).collect();
    let tmp = test_dir();
    let mut members = cluster_on(tmp.path(), &endpoints.join(","), None);
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let checker = Checker::start(members.iter().map(addr).collect());
    // One member frozen (it answers nothing, its connections hang): the two others
    // still form a quorum, and the primary must go on as if nothing happened. A
    // follower: freezing etcd's raft leader starts an election (1 to 2 s with etcd's
    // defaults), during which no lease is renewed anywhere, and at these test timings
    // (retry_timeout 2 s) the primary may fence itself (docs/high-availability.md).
    let raft_leader = Etcd::leader_of(&etcds).await;
    let mut frozen: Vec<Pid> = etcds.iter().map(|e| Pid::from_raw(e.pid())).collect();
    frozen.swap(0, if raft_leader == 0 { 1 } else { 0 });
    kill(frozen[0], Signal::SIGSTOP).unwrap();
    let ttl = Duration::from_secs(6);
    tokio::time::sleep(3 * ttl).await;
    assert!(
        !members[first].log().contains("fencing"),
        "{}",
        logs(&members)
    );
    assert_eq!(primaries(&members), vec![first], "{}", logs(&members));
    for i in (0..3).filter(|i| *i != first) {
        assert!(checker.writable_rounds(i).is_empty(), "{}", logs(&members));
    }
    execute(&members[first], "INSERT INTO t VALUES (101)").await;
    // A second one frozen: no quorum, so no renewal anywhere. The primary fences
    // itself and nobody promotes.
    kill(frozen[1], Signal::SIGSTOP).unwrap();
    wait_none_writable(&rt, &members);
    assert!(
        members[first].log().contains("fencing"),
        "{}",
        members[first].log()
    );
    // The quorum is back: one leader, the others streaming from it, no row lost.
    kill(frozen[0], Signal::SIGCONT).unwrap();
    kill(frozen[1], Signal::SIGCONT).unwrap();
    let leader = wait_one_leader_followed(&rt, &members);
    assert_eq!(count(&members[leader]).await, Some(101), "rows lost");
    assert!(checker.finish().await > 0);
}

// One replica may have received a few kB more from the isolated primary than the other
// when the cut came, and the other may win the race; the old primary may have written
// WAL nobody received (a checkpoint, its immediate shutdown's recovery). Either member
// then replays past the winner's fork and rejoins through pg_rewind while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_primary_fences_itself_while_the_majority_elects_another() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: network and PID namespaces need root");
        return;
    }
    // Declared first, dropped last: the namespaces outlive the processes in them.
    let mut net = Router::new(&["etcd", "n1", "n2", "n3"]);
    let etcd = Etcd::start_at(Some(&net.ns("etcd")), &net.addr("etcd"));
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, Some(&net));
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let checker = Checker::start(members.iter().map(addr).collect());
    // Cut the primary off from etcd and both replicas: packets vanish, nothing is refused.
    let old = format!("n{}", first + 1);
    net.isolate(&old);
    // Committed where nobody receives it, before the primary fences itself (its lease
    // was renewed at most a loop_wait ago): it must rejoin through pg_rewind.
    execute(
        &members[first],
        "INSERT INTO t SELECT generate_series(1001, 1010)",
    )
    .await;
    // Another member leads; the old primary fenced itself: it serves reads, accepts
    // no writes.
    let second = wait_taken_over_and_fenced(&rt, &members, first);
    let follower = (0..3).find(|i| *i != first && *i != second).unwrap();
    tokio::task::block_in_place(|| {
        wait_streaming(
            &rt,
            &members[second],
            &format!("n{}", follower + 1),
            &members,
        )
    });
    assert_eq!(count(&members[second]).await, Some(100), "rows lost");
    execute(
        &members[second],
        "INSERT INTO t SELECT generate_series(101, 150)",
    )
    .await;
    // Healed: the old primary follows the new leader, without a restart of pgwarden.
    let pid_before = members[first].pid();
    net.heal();
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[second], &old, &members);
        eventually(
            Duration::from_secs(30),
            "the old primary catches up",
            || match rt.block_on(count(&members[first])) {
                Some(150) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    });
    assert_eq!(members[first].pid(), pid_before, "pgwarden was restarted");
    assert!(
        members[first].log().contains("rewinding this standby"),
        "{}",
        members[first].log()
    );
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_from_etcd_only_fences_itself_before_its_lease_expires_and_a_replica_takes_over(
) {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: network and PID namespaces need root");
        return;
    }
    // Declared first, dropped last: the namespaces outlive the processes in them.
    let mut net = Router::new(&["etcd", "n1", "n2", "n3"]);
    let etcd = Etcd::start_at(Some(&net.ns("etcd")), &net.addr("etcd"));
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, Some(&net));
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    execute(&members[first], "CREATE TABLE w (id int PRIMARY KEY)").await;
    let writer = Writer::start(members.iter().map(addr).collect());
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "rows written", || {
            match rt.block_on(ids(&members[first])).len() {
                n if n >= 50 => Ok(()),
                n => Err(format!("{n} rows")),
            }
        })
    });
    let checker = Checker::start(members.iter().map(addr).collect());
    // Every row committed on the primary before the cut (a superset of those
    // acknowledged before it): the replicas still stream from it, so none may be lost.
    let before = ids(&members[first]).await;
    // Cut the primary from etcd only: it still reaches both replicas, and they etcd.
    let old = format!("n{}", first + 1);
    // Still the one that leads: what follows is about the primary being cut.
    assert_eq!(primaries(&members), vec![first], "{}", logs(&members));
    net.cut(&old, "etcd");
    let cut_at = Instant::now();
    // Another member leads; the old primary fenced itself: read-only, and (checked
    // below) its last write accepted before its lease could expire.
    let second = wait_taken_over_and_fenced(&rt, &members, first);
    let ttl = Duration::from_secs(6);
    let last_old = checker.writable_rounds(first).last().copied();
    let first_new = checker.writable_rounds(second).first().copied();
    if let Some(last_old) = last_old {
        assert!(
            last_old < cut_at + ttl,
            "the old primary accepted writes {:?} after the cut\n{}",
            last_old - cut_at,
            logs(&members)
        );
        if let Some(first_new) = first_new {
            assert!(last_old < first_new, "{}", logs(&members));
        }
    }
    let acked = writer.finish().await;
    assert!(!acked.is_empty());
    let on_new = ids(&members[second]).await;
    let lost: Vec<i32> = before
        .iter()
        .filter(|i| !on_new.contains(i))
        .copied()
        .collect();
    assert!(lost.is_empty(), "rows lost: {lost:?}\n{}", logs(&members));
    // Healed: the old primary follows the new leader and catches up.
    net.heal();
    let follower = (0..3).find(|i| *i != first && *i != second).unwrap();
    tokio::task::block_in_place(|| {
        wait_streaming(
            &rt,
            &members[second],
            &format!("n{}", follower + 1),
            &members,
        );
        wait_streaming(&rt, &members[second], &old, &members);
    });
    let on_new = ids(&members[second]).await;
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "the old primary catches up",
            || {
                let on_old = rt.block_on(ids(&members[first]));
                if on_new.iter().all(|i| on_old.contains(i)) {
                    Ok(())
                } else {
                    Err(format!("{} of {} rows", on_old.len(), on_new.len()))
                }
            },
        )
    });
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_member_started_alone_after_two_failovers_never_promotes() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    let rt = tokio::runtime::Handle::current();
    // Patroni #2175 with p, s, t for n1, n2, n3: whoever bring_up made primary is p.
    let p = bring_up(&mut members).await;
    let s = (0..3).find(|i| *i != p).unwrap();
    let t = (0..3).find(|i| *i != p && *i != s).unwrap();
    let checker = Checker::start(members.iter().map(addr).collect());
    // s stops cleanly and misses what follows.
    kill(Pid::from_raw(inner_pid(&members[s])), Signal::SIGTERM).unwrap();
    let status = members[s].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", members[s].log());
    // p fails over to t (SIGKILL of p's PID namespace): a new term s never saw.
    kill(Pid::from_raw(members[p].pid()), Signal::SIGKILL).unwrap();
    members[p].kill_hard();
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(90), "t takes over", || {
            match rt.block_on(writable_members(&members)).as_slice() {
                [one] if *one == t => Ok(()),
                w => Err(format!("writable {w:?}\n{}", logs(&members))),
            }
        })
    });
    execute(
        &members[t],
        "INSERT INTO t SELECT generate_series(101, 150)",
    )
    .await;
    // t stops cleanly too: its lease is revoked, nobody leads.
    kill(Pid::from_raw(inner_pid(&members[t])), Signal::SIGTERM).unwrap();
    let status = members[t].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", members[t].log());
    // s alone, with no leader and a term behind: it must never accept writes.
    members[s].start();
    let ttl = Duration::from_secs(6);
    tokio::time::sleep(3 * ttl).await;
    assert!(
        checker.writable_rounds(s).is_empty(),
        "the stale member accepted writes\n{}",
        logs(&members)
    );
    assert!(
        members[s]
            .try_get("/primary")
            .is_none_or(|r| r.status != 200),
        "{}",
        logs(&members)
    );
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        store.read().await.unwrap().leader,
        None,
        "{}",
        logs(&members)
    );
    // t, with the newest data, comes back: it leads, s follows it and has every row t
    // acknowledged.
    members[t].start();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "t leads again",
            || match primaries(&members).as_slice() {
                [one] if *one == t => Ok(()),
                w => Err(format!("primaries {w:?}\n{}", logs(&members))),
            },
        );
        wait_streaming(&rt, &members[t], &format!("n{}", s + 1), &members);
        eventually(Duration::from_secs(30), "s catches up", || {
            match rt.block_on(count(&members[s])) {
                Some(150) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    });
    assert_eq!(count(&members[t]).await, Some(150), "rows lost");
    assert!(checker.writable_rounds(s).is_empty(), "{}", logs(&members));
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_is_fenced_by_its_dead_man_switch() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let checker = Checker::start(members.iter().map(addr).collect());
    // pgwarden itself stalls (a stopped process, a starved VM): it can neither renew nor
    // fence. Its dead-man switch, a process of its own, kills postgres at the deadline.
    let stalled = Pid::from_raw(inner_pid(&members[first]));
    kill(stalled, Signal::SIGSTOP).unwrap();
    let second = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(90), "another member leads", || match rt
            .block_on(writable_members(&members))
            .as_slice()
        {
            [one] if *one != first => Ok(*one),
            w => Err(format!("writable {w:?}\n{}", logs(&members))),
        })
    });
    assert!(
        members[first]
            .log()
            .contains("ha-deadman: the fence deadline passed"),
        "{}",
        members[first].log()
    );
    kill(stalled, Signal::SIGCONT).unwrap();
    // Woken, it finds its lease gone and follows the new leader.
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[second], &format!("n{}", first + 1), &members)
    });
    assert_eq!(count(&members[second]).await, Some(100), "rows lost");
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
    assert!(checker.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_load_loses_nothing_and_the_old_primary_follows_without_rewind() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let name = |i: usize| format!("n{}", i + 1);
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();

    // Patroni's health checks: the key holder is /leader, every streaming replica is
    // /async, nobody is /sync without synchronous mode.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "health codes", || {
            let got: Vec<(u16, u16, u16)> = members
                .iter()
                .map(|m| (code(m, "/leader"), code(m, "/sync"), code(m, "/async")))
                .collect();
            let want: Vec<(u16, u16, u16)> = (0..3)
                .map(|i| {
                    if i == first {
                        (200, 503, 503)
                    } else {
                        (503, 503, 200)
                    }
                })
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
    });

    // Refused at once, naming why, and nothing changes.
    let (status, out) = members[first].run_cli(&["switchover", "--to", "nobody"]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("nobody is not a member"), "{out}");
    let (status, out) = members[first].run_cli(&["switchover", "--to", &name(first)]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("already is the leader"), "{out}");
    // A fenced replica is not eligible.
    let fenced = others[1];
    let (status, out) = members[fenced].run_cli(&["fence"]);
    assert!(status.success(), "{out}");
    tokio::task::block_in_place(|| wait_cluster_role(&members[first], &name(fenced), "stopped"));
    let (status, out) = members[first].run_cli(&["switchover", "--to", &name(fenced)]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("is not running as a replica"), "{out}");
    // The member key says stopped as soon as postgres stops answering; the fence's
    // shutdown may still be under way, and is said so ("postgres is stopping").
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "the unfence accepted", || {
            let (status, out) = members[fenced].run_cli(&["unfence"]);
            match status.success() {
                true => Ok(()),
                false if out.contains("postgres is stopping") => Err(out),
                false => panic!("{out}"),
            }
        })
    });
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[first], &name(fenced), &members);
    });

    // The switchover itself, under a write load.
    execute(&members[first], "CREATE TABLE w (id int PRIMARY KEY)").await;
    let rewinds_before: Vec<usize> = members
        .iter()
        .map(|m| m.log().matches("pg_rewind").count())
        .collect();
    let checker = Checker::start(members.iter().map(addr).collect());
    let writer = Writer::start(members.iter().map(addr).collect());
    let to = others[0];
    // The leader checks a request against the members' keys, which a member writes
    // once a round: a replica that has just begun to stream may not show it yet, and
    // is refused as "not running as a replica" (seen on a loaded machine).
    tokio::task::block_in_place(|| wait_cluster_role(&members[first], &name(to), "replica"));
    let started = Instant::now();
    let (status, out) = members[first].run_cli(&["switchover", "--to", &name(to)]);
    eprintln!("switchover took {:?}", started.elapsed());
    assert!(status.success(), "{out}\n{}", logs(&members));
    assert!(
        out.contains(&format!("{} is the new leader", name(to))),
        "{out}"
    );
    // Writes resume on the new leader.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "writes on the new leader",
            || match rt.block_on(writable(&addr(&members[to]))) {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}\n{}", logs(&members))),
            },
        )
    });
    // The old primary streams from the new one, never rewound.
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[to], &name(first), &members);
        wait_streaming(&rt, &members[to], &name(fenced), &members);
    });
    let acked = writer.finish().await;
    let rounds = checker.finish().await;
    assert!(rounds > 0);
    let rewinds_after: Vec<usize> = members
        .iter()
        .map(|m| m.log().matches("pg_rewind").count())
        .collect();
    assert_eq!(rewinds_before, rewinds_after, "{}", logs(&members));
    let present = ids(&members[to]).await;
    let lost: Vec<&i32> = acked
        .iter()
        .filter(|i| present.binary_search(i).is_err())
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    assert!(!acked.is_empty());
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    let view = store.read().await.unwrap();
    assert_eq!(view.leader.map(|l| l.name), Some(name(to)));
    // The new leader drops the request once it is writable.
    assert_eq!(view.failover, None, "the request stays in the store");
    let metrics = members[to].get("/metrics").body;
    assert!(
        metrics.contains("pgwarden_ha_store_errors_total "),
        "{metrics}"
    );
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "health codes after", || {
            match (
                code(&members[to], "/leader"),
                code(&members[first], "/leader"),
                code(&members[first], "/async"),
            ) {
                (200, 503, 200) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    });

    // `pgwarden promote` on a replica in HA mode is a switchover to it, once the
    // member has published that it is on the new timeline and has seen the new term
    // by streaming from its leader (it is not eligible before).
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "n1 on the new timeline and term",
            || {
                let c: serde_json::Value =
                    serde_json::from_str(&members[first].get("/cluster").body).unwrap();
                let me = c["members"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["name"] == name(first)))
                    .map(|m| (m["timeline"].clone(), m["term"].clone()));
                match me {
                    Some((tl, term))
                        if tl == c["optime"]["timeline"] && term == c["optime"]["term"] =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?} {c}")),
                }
            },
        )
    });
    let (status, out) = members[first].run_cli(&["promote"]);
    assert!(status.success(), "{out}\n{}", logs(&members));
    assert!(
        out.contains(&format!("{} is the new leader", name(first))),
        "{out}\n{}",
        logs(&members)
    );
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[first], &name(to), &members);
    });
    let present = ids(&members[first]).await;
    assert!(acked.iter().all(|i| present.binary_search(i).is_ok()));
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_synchronous_mode_loses_no_acknowledged_row_when_the_primary_is_killed() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: PID namespaces need root");
        return;
    }
    let etcd = Etcd::start();
    let tmp = test_dir();
    let mut members = cluster(tmp.path(), &etcd, None);
    for m in members.iter_mut() {
        m.set("PGWARDEN_SYNC_MODE", "strict");
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let name = |i: usize| format!("n{}", i + 1);
    let store = pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "c", Duration::from_secs(3))
        .await
        .unwrap();
    // The leader records one synchronous standby once postgres confirms it.
    let synchronous = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "a synchronous standby recorded",
            || {
                let view = rt.block_on(store.read()).map_err(|e| e.to_string())?;
                match view.sync {
                    Some(s) if s.leader == name(first) && s.members.len() == 1 => {
                        Ok((0..3).find(|i| name(*i) == s.members[0]).unwrap())
                    }
                    other => Err(format!("{other:?}\n{}", logs(&members))),
                }
            },
        )
    });
    let other = (0..3).find(|i| *i != first && *i != synchronous).unwrap();
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), "/sync and /async", || {
            match (
                code(&members[synchronous], "/sync"),
                code(&members[synchronous], "/async"),
                code(&members[other], "/sync"),
                code(&members[other], "/async"),
                code(&members[first], "/sync"),
            ) {
                (200, 503, 503, 200, 503) => Ok(()),
                got => Err(format!("{got:?}")),
            }
        })
    });
    let sync_setting = client(&members[first].socket_dir, members[first].port)
        .await
        .unwrap()
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(sync_setting, format!("FIRST 1 (\"{}\")", name(synchronous)));

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
    // SIGKILL of the primary's pgwarden, postgres with it, in the middle of the load.
    kill(Pid::from_raw(members[first].pid()), Signal::SIGKILL).unwrap();
    members[first].kill_hard();
    let second = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(90),
            "a replica takes over",
            || match primaries(&members).as_slice() {
                [one] => Ok(*one),
                p => Err(format!("primaries {p:?}\n{}", logs(&members))),
            },
        )
    });
    assert_eq!(
        second, synchronous,
        "only the synchronous standby may be promoted"
    );
    // Writes go on once the other member streams from the new leader (strict mode:
    // a commit waits for a standby).
    tokio::task::block_in_place(|| {
        wait_streaming(&rt, &members[second], &name(other), &members);
    });
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
    // The new leader records the remaining member as its synchronous standby.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "the new leader's sync key", || {
            let view = rt.block_on(store.read()).map_err(|e| e.to_string())?;
            match view.sync {
                Some(s) if s.leader == name(second) && s.members == vec![name(other)] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    });
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
}
