//! The WAL daemon under faults: an S3 outage during load, pgwarden killed mid-upload,
//! wal-archive killed mid-upload. Nothing may be lost, and nothing partial may pass.

mod common;

use common::wal::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_during_load_loses_no_segment_and_the_backlog_is_uploaded_ahead() {
    let tmp = test_dir();
    let mut store = Store::s3();
    let mut pg = Instance::primary(tmp.path(), "outage");
    store.configure(&mut pg, "outage");
    // Short retries, so each failing archive_command call returns quickly.
    pg.set("PGWARDEN_ARCHIVE_TIMEOUT", "5");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "1"]);
    switch_and_wait_archived(&pg).await;

    let Store::S3(garage) = &mut store else {
        unreachable!()
    };
    garage.pause();
    let port = pg.port;
    let load = std::thread::spawn(move || pgbench_port(port, &["-c", "2", "-T", "45", "-n"]));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        pg.connect()
            .await
            .batch_execute("SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    load.join().unwrap();
    let st = pg.status();
    assert!(
        st.archiver.ready_files.unwrap_or(0) >= 2,
        "a backlog built up during the outage: {:?}",
        st.archiver
    );
    assert_eq!(
        pg.get("/readyz").status,
        200,
        "postgres keeps serving while the archive is down"
    );
    let Store::S3(garage) = &mut store else {
        unreachable!()
    };
    garage.resume();

    // postgres retries on its own schedule (up to a minute after three failures).
    let last = switch_and_wait_archived_within(&pg, Duration::from_secs(180)).await;
    assert_contiguous(&store, "outage", &last).await;
    let daemon = pg
        .status()
        .archiver
        .daemon
        .expect("daemon figures in /status");
    assert!(daemon.failures > 0, "the outage was seen: {daemon:?}");
    assert!(
        daemon.answered_from_upload > 0,
        "the backlog was uploaded ahead, so archive_command was answered at once: {daemon:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_pgwarden_mid_upload_loses_nothing_and_leaves_nothing_partial() {
    let tmp = test_dir();
    let store = Store::s3();
    let mut pg = Instance::primary(tmp.path(), "killd");
    store.configure(&mut pg, "killd");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "4"]);
    // Kill everything (as a container dies) while the archiver is busy.
    pg.connect()
        .await
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    let postmaster = pg.postmaster_pid().unwrap();
    pg.kill_hard();
    let _ = kill(Pid::from_raw(postmaster), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{postmaster}")).exists() && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.start().wait_ready();
    let last = switch_and_wait_archived(&pg).await;
    assert_contiguous(&store, "killd", &last).await;
    let n = assert_all_restorable(&store, "killd").await;
    assert!(n >= 3, "{n} files archived");
}

async fn kill_wal_archive_mid_upload(store: Store) {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let mut cli = Instance::new(tmp.path(), "killcli");
    store.configure(&mut cli, "killcli");
    let seg = tmp.path().join("pgdata/pg_wal").join(&name);
    std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
    std::fs::write(&seg, &data).unwrap();
    let dest = tmp.path().join("restored");
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80] {
        let mut child = std::process::Command::new(bin())
            .args(["wal-archive", &seg.display().to_string()])
            .env_clear()
            .envs(&cli.env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the moment of death: the file is either absent or whole and valid.
        let _ = std::fs::remove_file(&dest);
        let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
        match code.code() {
            Some(0) => assert!(
                std::fs::read(&dest).unwrap() == data,
                "after a kill at {delay_ms} ms a restore returned other bytes"
            ),
            Some(1) => assert!(!dest.exists()),
            other => panic!("after a kill at {delay_ms} ms: exit {other:?}: {out}"),
        }
    }
    let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
    assert!(code.success(), "{out}");
    let _ = std::fs::remove_file(&dest);
    let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
    assert!(code.success(), "{out}");
    assert!(std::fs::read(&dest).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killing_wal_archive_mid_upload_is_harmless() {
    kill_wal_archive_mid_upload(Store::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_killing_wal_archive_mid_upload_is_harmless() {
    kill_wal_archive_mid_upload(Store::fs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_out_an_unreachable_archive() {
    let tmp = test_dir();
    let mut store = Store::s3();
    let mut pg = Instance::primary(tmp.path(), "stopdown");
    store.configure(&mut pg, "stopdown");
    pg.start().wait_ready();
    let Store::S3(garage) = &mut store else {
        unreachable!()
    };
    garage.pause();
    pg.connect()
        .await
        .batch_execute(
            "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.status().archiver.ready_files.unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no archiving under way");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // postgres's shutdown waits for its archiver, which tries each file three times:
    // with the full retry budget per call that would be minutes, past any grace period.
    pg.signal(Signal::SIGTERM);
    let status = pg.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "log:\n{}", pg.log());
}
