//! Stopping within the platform's grace: `docker stop` sends the image's STOPSIGNAL and
//! kills after 10 s, a pod deletion sends SIGTERM and kills after 30 s. With the default
//! settings SIGTERM is a fast shutdown, so open sessions do not hold it up, and a
//! shutdown that still hangs turns immediate before the platform's SIGKILL.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// The log written since `from`.
fn log_since(pg: &Instance, from: usize) -> String {
    pg.log()[from..].to_owned()
}

/// Stops with SIGTERM, expecting a clean exit; prints how long it took (a figure for
/// the docs, not a threshold).
fn sigterm_clean(pg: &mut Instance, what: &str) {
    let t = Instant::now();
    pg.signal(Signal::SIGTERM);
    let status = pg.wait_exit(Duration::from_secs(60));
    println!("SIGTERM with {what}: exited in {:?}", t.elapsed());
    assert_eq!(status.code(), Some(0), "log:\n{}", pg.log());
    assert!(
        pg.log().contains("received fast shutdown request"),
        "SIGTERM is a fast shutdown:\n{}",
        pg.log()
    );
}

/// The next start finds a cleanly shut down cluster: no crash recovery.
fn assert_clean_restart(pg: &mut Instance) {
    let from = pg.log().len();
    pg.start().wait_ready();
    let second = log_since(pg, from);
    assert!(!second.contains("redo starts"), "{second}");
    assert!(!second.contains("not properly shut down"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_session_is_a_clean_fast_shutdown() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "idle");
    pg.start().wait_ready();
    let idle = pg.connect().await;
    idle.batch_execute("SELECT 1").await.unwrap();
    sigterm_clean(&mut pg, "one idle session");
    assert!(idle.batch_execute("SELECT 1").await.is_err());
    assert!(!pg.log().contains("switching to immediate"));
    assert_clean_restart(&mut pg);
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_long_transaction_rolls_it_back_and_shuts_down_cleanly() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "longtx");
    pg.start().wait_ready();
    let setup = pg.connect().await;
    setup
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let tx = pg.connect().await;
    tx.batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    // A statement still running as well as an open transaction.
    let running = pg.connect().await;
    let sleeper = tokio::spawn(async move { running.batch_execute("SELECT pg_sleep(3600)").await });
    sigterm_clean(&mut pg, "an open transaction and a running statement");
    let err = sleeper.await.unwrap().unwrap_err();
    // 57P01 admin_shutdown: "terminating connection due to administrator command".
    assert!(
        err.code().map(|c| c.code()) == Some("57P01") || err.is_closed(),
        "{err:?}"
    );
    assert_clean_restart(&mut pg);
    let ids: Vec<i32> = pg
        .connect()
        .await
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1], "the open transaction was rolled back");
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_hangs_turns_immediate_after_the_stop_timeout() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "hang");
    pg.set("PGWARDEN_STOP_TIMEOUT", "2");
    pg.start().wait_ready();
    let client = pg.connect().await;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // A stopped backend cannot exit, so a fast shutdown waits for it forever.
    kill(Pid::from_raw(backend), Signal::SIGSTOP).unwrap();
    pg.signal(Signal::SIGTERM);
    let status = pg.wait_exit(Duration::from_secs(120));
    let log = pg.log();
    assert!(log.contains("switching to immediate shutdown"), "{log}");
    assert!(log.contains("received immediate shutdown request"), "{log}");
    // Whatever postgres's exit, pgwarden reports it rather than being killed.
    assert!(status.code().is_some(), "{status}");
    // The stopped backend is gone (postgres SIGKILLs children that ignore SIGQUIT).
    let _ = kill(Pid::from_raw(backend), Signal::SIGCONT);
    let from = pg.log().len();
    pg.start().wait_ready();
    assert!(
        log_since(&pg, from).contains("not properly shut down"),
        "an immediate shutdown leaves crash recovery to the next start"
    );
    pg.stop();
}

#[test]
fn a_smart_timeout_not_below_the_stop_timeout_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "badstop");
    pg.set("PGWARDEN_SMART_SHUTDOWN_TIMEOUT", "20")
        .set("PGWARDEN_STOP_TIMEOUT", "8");
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("PGWARDEN_SMART_SHUTDOWN_TIMEOUT") && out.contains("PGWARDEN_STOP_TIMEOUT"),
        "{out}"
    );
    assert!(!pg.pgdata.exists());
}
