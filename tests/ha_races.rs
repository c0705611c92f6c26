//! Races around a failover, black-box: real PostgreSQL, a real etcd, each pgwarden PID 1
//! of a PID namespace of its own (SIGKILL of it takes its postgres down too). A sampler
//! reads the leader key and every member's writability every 50 ms throughout: a member
//! that accepts writes while the key, read before and after asking it, names someone
//! else or nobody is a split brain waiting to happen.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::Etcd;
use common::router::Router;
use common::*;
use ha::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The replica's promotion cannot finish while a query holds back the replay of WAL it
/// received (`max_standby_*_delay = -1`: replay waits for it forever), here for longer
/// than pgwarden's local statement timeout (10 s) and than the TTL. Whatever pgwarden
/// does meanwhile (wait, give up and release the key, fence), postgres must never accept
/// writes unless the leader key names this member, and once the query ends the member
/// leads, with every row committed before the kill.
///
/// TTL 15 s (loop_wait 1 s, retry_timeout 2 s): a promoting member's fence deadline,
/// ttl − ttl/6 = 12.5 s after its last renewal, comes after the statement timeout. At the
/// other tests' TTL of 6 s (deadline 5 s) the dead-man switch kills postgres, and the
/// query holding replay back with it, before anything else can happen. The old primary
/// is cut off when it is killed, as a dead host answers nothing: asking it whether it
/// still runs as a primary takes the full second a member waits before racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_promotion_never_leaves_a_member_writable_without_the_leader_key() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: network and PID namespaces need root");
        return;
    }
    // Declared first, dropped last: the namespaces outlive the processes in them.
    let mut net = Router::new(&["etcd", "n1", "n2"]);
    let etcd = Etcd::start_at(Some(&net.ns("etcd")), &net.addr("etcd"));
    let tmp = test_dir();
    // Two members: once the primary is killed, the conflicted replica is the only one
    // that can win.
    let mut members = members_timed(
        tmp.path(),
        &etcd.url(),
        Some(&net),
        &["n1", "n2"],
        (15, 1, 2),
    );
    for m in &members {
        add_user_conf(
            m,
            "max_standby_streaming_delay = -1\nmax_standby_archive_delay = -1\n",
        );
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    let w = 1 - first;

    // On the replica, a repeatable-read transaction that has read t, kept open...
    let reader = client(&members[w].socket_dir, members[w].port)
        .await
        .expect("connect to the replica");
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t")
        .await
        .unwrap();
    // ...and on the primary a committed ACCESS EXCLUSIVE lock on t, whose replay must
    // wait for it, then rows committed after it.
    execute(
        &members[first],
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT; \
         INSERT INTO t SELECT generate_series(101, 200)",
    )
    .await;
    let end: String = client(&members[first].socket_dir, members[first].port)
        .await
        .expect("connect to the primary")
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // The replica has received all of it and its replay waits on the lock.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "the replica received everything and its replay waits for the reader",
            || {
                let row = rt.block_on(async {
                    client(&members[w].socket_dir, members[w].port)
                        .await?
                        .query_one(
                            "SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn,
                                    pg_last_wal_replay_lsn() < $1::text::pg_lsn,
                                    (SELECT count(*) FROM pg_stat_activity
                                     WHERE backend_type = 'startup' AND wait_event_type = 'Lock')",
                            &[&end],
                        )
                        .await
                        .ok()
                        .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1), r.get::<_, i64>(2)))
                });
                match row {
                    Some((true, true, 1)) => Ok(()),
                    other => Err(format!(
                        "(received, replay behind, startup waits) {other:?}"
                    )),
                }
            },
        )
    });

    let sampler = KeySampler::start(&[etcd.url()], Some(&net.ns("etcd")), &members);
    // SIGKILL of the primary's pgwarden: its PID namespace, postgres included, dies;
    // its host answers nothing any more.
    kill(Pid::from_raw(members[first].pid()), Signal::SIGKILL).unwrap();
    members[first].kill_hard();
    net.isolate(&name(first));
    let killed = Instant::now();
    // The conflict holds until the replica's first promotion attempt is over (the key,
    // once it named the replica, names it no longer), or 20 s after it took the key.
    let mut took: Option<Instant> = None;
    let why = loop {
        let holder = sampler.last().and_then(|s| s.after.ok());
        match (&holder, took) {
            (Some(Some(h)), None) if *h == name(w) => took = Some(Instant::now()),
            (Some(h), Some(_)) if h.as_deref() != Some(name(w).as_str()) => {
                break format!("the key names {h:?} again");
            }
            (_, Some(t)) if t.elapsed() > Duration::from_secs(20) => {
                break "20 s after it took the key".to_owned();
            }
            _ => {}
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "{} never took the key\n{}",
            name(w),
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let reader_alive = reader.batch_execute("COMMIT").await.is_ok();
    eprintln!(
        "the conflict ended {:?} after the kill ({why}); the reader {}",
        killed.elapsed(),
        if reader_alive {
            "was still there"
        } else {
            "had been cut off"
        }
    );

    // Now the replica leads: writable, and named by the key.
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            "the replica leads once the reader is gone",
            || match sampler.last_agreed() {
                Some((Some(h), writable)) if h == name(w) && writable[w] == Some(true) => Ok(()),
                other => Err(format!("(key, writable) {other:?}")),
            },
        )
    });
    // Sampled for at least 40 s after the kill, and 10 s after it leads.
    let until = (killed + Duration::from_secs(40)).max(Instant::now() + Duration::from_secs(10));
    tokio::time::sleep_until(until.into()).await;
    let violations = sampler.violations();
    let rounds = sampler.finish();
    assert!(rounds > 100, "only {rounds} sampling rounds");
    assert!(
        violations.is_empty(),
        "after the kill (sampling started just before it):\n{}\n{}",
        violations.join("\n"),
        logs(&members)
    );
    assert_eq!(
        count(&members[w]).await,
        Some(200),
        "rows committed before the kill are missing\n{}",
        logs(&members)
    );
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
}

/// A primary cut off from its replicas (not from etcd) commits rows nobody receives,
/// then is cut from etcd too: it fences itself and another member takes over. It has no
/// data checksums and runs with `wal_log_hints = off`, so pg_rewind cannot bring it back:
/// healed, it stays ahead of the leader's fork on its own timeline. When the new leader
/// dies, the clean replica must take over, never the diverged member (which would throw
/// away every row the new leader acknowledged, however much WAL it has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_former_primary_never_beats_a_clean_replica() {
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
    for m in &members {
        add_user_conf(m, "wal_log_hints = off\n");
    }
    let rt = tokio::runtime::Handle::current();
    let first = bring_up(&mut members).await;
    // p diverges: n1, unless n1 ran initdb. A replica now: stopped cleanly, its data
    // checksums turned off (initdb turned them on), started again.
    let p = if first == 0 { 1 } else { 0 };
    kill(Pid::from_raw(inner_pid(&members[p])), Signal::SIGTERM).unwrap();
    let status = members[p].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", members[p].log());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(pg_bin("pg_checksums"))
        .arg("--disable")
        .arg("-D")
        .arg(&members[p].pgdata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_checksums: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    members[p].start();
    tokio::task::block_in_place(|| wait_streaming(&rt, &members[first], &name(p), &members));
    // It becomes the primary by a switchover (no rewind needed: it has all the WAL),
    // asked again while the leader's view does not show it as an eligible replica yet
    // (a refusal changes nothing).
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            &format!("a switchover to {}", name(p)),
            || match members[first].run_cli(&["switchover", "--to", &name(p)]) {
                (status, _) if status.success() => Ok(()),
                (_, out) => Err(format!("{out}\n{}", logs(&members))),
            },
        )
    });
    let others: Vec<usize> = (0..3).filter(|i| *i != p).collect();
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(60),
            &format!("{} leads", name(p)),
            || match (
                primaries(&members).as_slice(),
                rt.block_on(writable(&addr(&members[p]))),
            ) {
                ([one], Some(true)) if *one == p => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        for o in &others {
            wait_streaming(&rt, &members[p], &name(*o), &members);
        }
    });
    // The premise: pg_rewind cannot run against it.
    for (setting, want) in [("data_checksums", "off"), ("wal_log_hints", "off")] {
        let got: String = client(&members[p].socket_dir, members[p].port)
            .await
            .unwrap()
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, want, "{setting} on {}", name(p));
    }

    // Cut from the replicas only: it still leads, and commits rows nobody receives,
    // over two WAL segments (a standby reports where it asks to stream from, the start
    // of a segment).
    for o in &others {
        net.cut(&name(p), &name(*o));
    }
    execute(
        &members[p],
        "INSERT INTO t SELECT generate_series(1001, 21000); SELECT pg_switch_wal(); \
         INSERT INTO t VALUES (21001); SELECT pg_switch_wal(); INSERT INTO t VALUES (21002)",
    )
    .await;
    // Then from etcd too: it fences itself, another member takes over.
    net.cut(&name(p), "etcd");
    let s = wait_taken_over_and_fenced(&rt, &members, p);
    let t = (0..3).find(|i| *i != p && *i != s).unwrap();
    tokio::task::block_in_place(|| wait_streaming(&rt, &members[s], &name(t), &members));
    // Rows the new leader acknowledges.
    execute(
        &members[s],
        "INSERT INTO t SELECT generate_series(101, 150)",
    )
    .await;
    tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(30),
            "the new leader's rows reach the clean replica",
            || match rt.block_on(count(&members[t])) {
                Some(150) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    });
    let s_timeline = timeline(&members[s]).await;
    // p learns the new timeline's history from the new leader's WAL sender when it
    // tries to stream from it: from then on it sees itself on that timeline.
    let history = members[p]
        .pgdata
        .join(format!("pg_wal/{s_timeline:08X}.history"));
    assert!(!history.exists());

    let sampler = KeySampler::start(&[etcd.url()], Some(&net.ns("etcd")), &members);
    net.heal();
    // The new leader dies as soon as p has reached it (p has its timeline's history),
    // or p's pgwarden gave up, or after 30 s.
    let healed = Instant::now();
    let why = loop {
        if history.exists() {
            break "it has the new timeline's history";
        }
        if has_exited(&members[p]) {
            break "its pgwarden exited";
        }
        if healed.elapsed() > Duration::from_secs(30) {
            break "30 s passed";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    kill(Pid::from_raw(members[s].pid()), Signal::SIGKILL).unwrap();
    members[s].kill_hard();
    eprintln!(
        "killed the new leader {} {:?} after the heal: {why}",
        name(s),
        healed.elapsed()
    );

    // The clean replica takes over; p, restarted whenever its pgwarden exits (as its
    // pod would be), never does.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        restart_if_exited(&mut members[p]);
        let writable_t = writable(&addr(&members[t])).await == Some(true);
        if writable_t && primaries(&members) == vec![t] {
            if let Some((Some(holder), _)) = sampler.last_agreed() {
                if holder == name(t) {
                    break;
                }
            }
        }
        if sampler.key_named(&name(p)) || sampler.ever_writable(p) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not take over\n{}",
            name(t),
            logs(&members)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays so for a while.
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle {
        restart_if_exited(&mut members[p]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let violations = sampler.violations();
    let (p_led, p_wrote) = (sampler.key_named(&name(p)), sampler.ever_writable(p));
    let rounds = sampler.finish();
    assert!(rounds > 0);
    assert!(
        !p_led && !p_wrote,
        "the diverged member {} took over (held the key: {p_led}, accepted writes: {p_wrote})\n{}",
        name(p),
        logs(&members)
    );
    assert!(
        violations.is_empty(),
        "{}\n{}",
        violations.join("\n"),
        logs(&members)
    );
    let final_primary = primaries(&members);
    assert_eq!(final_primary, vec![t], "{}", logs(&members));
    let present = ids_in_t(&members[t]).await;
    let lost: Vec<i32> = (101..=150).filter(|i| !present.contains(i)).collect();
    assert!(
        lost.is_empty(),
        "rows the new leader acknowledged are missing on {}: {lost:?}",
        name(t)
    );
    assert!(
        !present.contains(&1001),
        "the diverged member's rows are on {}",
        name(t)
    );
    if std::env::var("HA_TEST_LOGS").is_ok() {
        eprintln!("{}", logs(&members));
    }
}

/// The ids in table `t` of `pg`.
async fn ids_in_t(pg: &Instance) -> Vec<i32> {
    let c = client(&pg.socket_dir, pg.port).await.expect("connect");
    c.query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A PostgreSQL program of this run: from `PGWARDEN_PG_BINDIR` when set (the instances
/// get it too), else PostgreSQL 15's.
fn pg_bin(name: &str) -> std::path::PathBuf {
    std::env::var_os("PGWARDEN_PG_BINDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("/usr/lib/postgresql/15/bin"),
            std::path::PathBuf::from,
        )
        .join(name)
}
