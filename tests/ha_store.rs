//! The HA store against a real etcd: the leader key's lease semantics that failover
//! relies on, the bootstrap race, and what a stale holder is told.

mod common;

use common::etcd::Etcd;
use common::*;
use pgwarden::ha::etcd::EtcdStore;
use pgwarden::ha::store::{
    FailoverRequest, HistoryEntry, MemberRole, MemberState, Optime, Store, StoreError,
};
use std::time::Duration;

const RETRY: Duration = Duration::from_secs(3);

async fn store(etcd: &Etcd, cluster: &str) -> EtcdStore {
    EtcdStore::connect(&[etcd.url()], cluster, RETRY)
        .await
        .unwrap()
}

fn member(name: &str) -> MemberState {
    MemberState {
        name: name.into(),
        host: "127.0.0.1".into(),
        port: 5432,
        api_url: "http://127.0.0.1:8008".into(),
        role: MemberRole::Replica,
        timeline: Some(1),
        received_lsn: Some(100),
        replayed_lsn: Some(90),
        term: 0,
        streaming: true,
        tags: Default::default(),
    }
}

/// Waits, without a timing assertion, until a fresh read satisfies `check`.
async fn until_view(
    s: &EtcdStore,
    what: &str,
    check: impl Fn(&pgwarden::ha::store::ClusterView) -> bool,
) {
    let handle = tokio::runtime::Handle::current();
    let s = s.clone();
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(30), what, || {
            let v = handle.block_on(s.read()).map_err(|e| e.to_string())?;
            if check(&v) {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_two_contenders_acquires_the_leader() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let (la, lb) = (
        a.grant(Duration::from_secs(30)).await.unwrap(),
        b.grant(Duration::from_secs(30)).await.unwrap(),
    );
    let (ra, rb) = tokio::join!(a.acquire_leader("a", la), b.acquire_leader("b", lb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.is_some() != rb.is_some(), "a: {ra:?}, b: {rb:?}");
    let (winner, lease, term) = match (ra, rb) {
        (Some(t), None) => ("a", la, t),
        (None, Some(t)) => ("b", lb, t),
        _ => unreachable!(),
    };
    let view = a.read().await.unwrap();
    let leader = view.leader.unwrap();
    assert_eq!(
        (leader.name.as_str(), leader.lease, leader.term),
        (winner, lease, term)
    );
    // Asking again is idempotent for the holder and still refused to the other.
    let (w, l) = if winner == "a" { (&a, &b) } else { (&b, &a) };
    assert_eq!(w.acquire_leader(winner, lease).await.unwrap(), Some(term));
    let other = if winner == "a" { ("b", lb) } else { ("a", la) };
    assert_eq!(l.acquire_leader(other.0, other.1).await.unwrap(), None);
    // Another cluster's prefix is another race.
    let c = store(&etcd, "other").await;
    let lc = c.grant(Duration::from_secs(30)).await.unwrap();
    assert!(c.acquire_leader("c", lc).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_key_vanishes_after_the_ttl_once_renewal_stops_and_a_stale_holder_is_told() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let la = a.grant(Duration::from_secs(2)).await.unwrap();
    let term = a.acquire_leader("a", la).await.unwrap().unwrap();
    a.put_member(&member("a"), la).await.unwrap();
    a.keep_alive(la).await.unwrap();
    // No more keep-alives: etcd drops the lease, and with it both keys.
    until_view(&b, "the leader and member keys expire", |v| {
        v.leader.is_none() && v.members.is_empty()
    })
    .await;
    assert!(matches!(a.keep_alive(la).await, Err(StoreError::LeaseGone(l)) if l == la));
    assert!(matches!(
        a.put_member(&member("a"), la).await,
        Err(StoreError::LeaseGone(_))
    ));
    assert!(matches!(
        a.acquire_leader("a", la).await,
        Err(StoreError::LeaseGone(_))
    ));
    // The optime of the dead term can no longer be written by its holder.
    let optime = Optime {
        term,
        timeline: 1,
        lsn: 1,
    };
    assert!(!a.put_optime("a", optime).await.unwrap());
    // A new contender wins a later term.
    let lb = b.grant(Duration::from_secs(30)).await.unwrap();
    let term_b = b.acquire_leader("b", lb).await.unwrap().unwrap();
    assert!(term_b > term, "{term_b} after {term}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_holds_the_leader_past_its_ttl() {
    let etcd = Etcd::start();
    let a = store(&etcd, "c").await;
    let la = a.grant(Duration::from_secs(5)).await.unwrap();
    let term = a.acquire_leader("a", la).await.unwrap().unwrap();
    // Renewals a fifth of the TTL apart, spanning two TTLs: slack for a loaded machine.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.keep_alive(la).await.unwrap();
    }
    let leader = a.read().await.unwrap().leader.unwrap();
    assert_eq!((leader.name.as_str(), leader.term), ("a", term));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_the_leader_key_at_once_and_only_for_its_holder() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let (la, lb) = (
        a.grant(Duration::from_secs(60)).await.unwrap(),
        b.grant(Duration::from_secs(60)).await.unwrap(),
    );
    a.acquire_leader("a", la).await.unwrap().unwrap();
    assert!(!b.release_leader("b").await.unwrap(), "b released a's key");
    assert_eq!(b.read().await.unwrap().leader.unwrap().name, "a");
    assert!(a.release_leader("a").await.unwrap());
    // No wait for the 60 s lease: the key is gone now.
    assert_eq!(b.read().await.unwrap().leader, None);
    assert!(b.acquire_leader("b", lb).await.unwrap().is_some());
    // Releasing again (a retry) is not an error, and does not touch b's key.
    assert!(!a.release_leader("a").await.unwrap());
    assert_eq!(a.read().await.unwrap().leader.unwrap().name, "b");
    // Revoking a lease drops its keys at once too.
    b.put_member(&member("b"), lb).await.unwrap();
    b.revoke(lb).await.unwrap();
    let v = a.read().await.unwrap();
    assert_eq!((v.leader, v.members.len()), (None, 0));
    b.revoke(lb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initialize_key_is_won_by_exactly_one() {
    let etcd = Etcd::start();
    let stores = [
        store(&etcd, "c").await,
        store(&etcd, "c").await,
        store(&etcd, "c").await,
    ];
    let (r0, r1, r2) = tokio::join!(
        stores[0].initialize("n0"),
        stores[1].initialize("n1"),
        stores[2].initialize("n2")
    );
    let won: Vec<bool> = [r0, r1, r2].into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let winner = won.iter().position(|w| *w).unwrap();
    assert_eq!(
        stores[0].read().await.unwrap().initialize.as_deref(),
        Some(format!("n{winner}").as_str())
    );
    // A retry by the winner still says it won; the others still lost.
    assert!(stores[winner]
        .initialize(&format!("n{winner}"))
        .await
        .unwrap());
    assert!(!stores[(winner + 1) % 3].initialize("late").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_optime_and_history_are_published() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let (la, lb) = (
        a.grant(Duration::from_secs(60)).await.unwrap(),
        b.grant(Duration::from_secs(60)).await.unwrap(),
    );
    a.put_member(&member("a"), la).await.unwrap();
    let mut mb = member("b");
    mb.role = MemberRole::Primary;
    b.put_member(&mb, lb).await.unwrap();
    let term = b.acquire_leader("b", lb).await.unwrap().unwrap();
    let optime = Optime {
        term,
        timeline: 2,
        lsn: 4096,
    };
    assert!(b.put_optime("b", optime).await.unwrap());
    // Only the holder, in its term, records the position.
    assert!(!a
        .put_optime(
            "a",
            Optime {
                term,
                timeline: 2,
                lsn: 1
            }
        )
        .await
        .unwrap());
    assert!(!b
        .put_optime(
            "b",
            Optime {
                term: term - 1,
                timeline: 2,
                lsn: 1
            }
        )
        .await
        .unwrap());
    let entry = HistoryEntry {
        term,
        timeline: 2,
        lsn: 4000,
        leader: "b".into(),
        time: 1,
    };
    b.append_history(&entry).await.unwrap();
    b.append_history(&entry).await.unwrap();
    let v = a.read().await.unwrap();
    assert_eq!(v.members, vec![member("a"), mb]);
    assert_eq!(v.member("b").map(|m| m.role), Some(MemberRole::Primary));
    assert_eq!(v.optime, Some(optime));
    assert_eq!(v.history, vec![entry]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_wakes_on_a_leader_change() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let rev = a.read().await.unwrap().revision;
    // Nothing happens: the wait ends by its timeout and says so.
    assert!(!a
        .wait_change(rev, Duration::from_millis(300))
        .await
        .unwrap());
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.wait_change(rev, Duration::from_secs(60)).await }
    });
    let lb = b.grant(Duration::from_secs(60)).await.unwrap();
    b.acquire_leader("b", lb).await.unwrap().unwrap();
    assert!(waiter.await.unwrap().unwrap());
    // A change before the wait started is seen too: it starts from `rev`.
    b.release_leader("b").await.unwrap();
    assert!(a.wait_change(rev, Duration::from_secs(60)).await.unwrap());
    // A member key, rewritten every round by every member, does not wake anyone; a
    // switchover request does.
    let rev = a.read().await.unwrap().revision;
    b.put_member(&member("b"), lb).await.unwrap();
    assert!(!a
        .wait_change(rev, Duration::from_millis(300))
        .await
        .unwrap());
    let request = FailoverRequest {
        leader: "a".into(),
        candidate: Some("b".into()),
    };
    assert!(b.request_failover(&request).await.unwrap());
    assert!(a.wait_change(rev, Duration::from_secs(60)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_unavailable_not_a_hang() {
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}", free_port());
    let s = EtcdStore::connect(&[url], "c", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(s.read().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        s.grant(Duration::from_secs(5)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.keep_alive(1).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_is_a_key_every_member_reads() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    assert!(!b.read().await.unwrap().paused);
    a.set_pause(true).await.unwrap();
    assert!(b.read().await.unwrap().paused);
    // Idempotent both ways.
    a.set_pause(true).await.unwrap();
    b.set_pause(false).await.unwrap();
    b.set_pause(false).await.unwrap();
    assert!(!a.read().await.unwrap().paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_switchover_request_at_a_time() {
    let etcd = Etcd::start();
    let (a, b) = (store(&etcd, "c").await, store(&etcd, "c").await);
    let to = |c: &str| FailoverRequest {
        leader: "n1".into(),
        candidate: Some(c.into()),
    };
    assert!(a.request_failover(&to("n2")).await.unwrap());
    // A retry of the same request (its answer lost) reports it was recorded.
    assert!(a.request_failover(&to("n2")).await.unwrap());
    // Another request while one is under way is refused.
    assert!(!b.request_failover(&to("n3")).await.unwrap());
    assert_eq!(b.read().await.unwrap().failover, Some(to("n2")));
    a.clear_failover().await.unwrap();
    assert_eq!(b.read().await.unwrap().failover, None);
    assert!(b.request_failover(&to("n3")).await.unwrap());
    // A request made against n1 is done once n3 leads (or stale, n1 being gone): one
    // against the new leader replaces it instead of waiting for n3 to drop it.
    let next = FailoverRequest {
        leader: "n3".into(),
        candidate: Some("n1".into()),
    };
    assert!(a.request_failover(&next).await.unwrap());
    assert_eq!(b.read().await.unwrap().failover, Some(next));
}
