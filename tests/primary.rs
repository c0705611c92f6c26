//! `pgwarden run` as a primary, end to end, against a real PostgreSQL.

mod common;

use common::*;
use nix::sys::signal::Signal;
use pgwarden::settings::Role;
use pgwarden::state::State;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_a_primary_that_serves_probes_and_password_logins() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "p1");
    pg.set("POSTGRES_DB", "app");
    pg.start().wait_ready();

    for (path, code) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/startupz", 200),
        ("/primary", 200),
        ("/replica", 503),
    ] {
        assert_eq!(pg.get(path).status, code, "{path}");
    }
    let st = pg.status();
    assert_eq!(st.role, Role::Primary);
    assert_eq!(st.state, State::Running);
    assert_eq!(st.pid, pg.postmaster_pid());
    assert!(
        st.version
            .as_deref()
            .unwrap_or("")
            .starts_with(char::is_numeric),
        "{:?}",
        st.version
    );
    assert_eq!(st.timeline, Some(1));
    assert!(st.lsn.current.is_some());

    // The password works over TCP, a wrong one does not, and POSTGRES_DB exists.
    let client = pg
        .connect_as("postgres", PASSWORD, "app")
        .await
        .expect("password login to POSTGRES_DB");
    let row = client.query_one("SHOW data_checksums", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "on");
    let enc = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'app'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(enc.get::<_, String>(0), "UTF8");
    let Err(err) = pg.connect_as("postgres", "wrong", "postgres").await else {
        panic!("a wrong password must be refused");
    };
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("password authentication failed"), "{err:?}");

    // `pgwarden status` prints the same document through the control socket.
    let (code, out) = pg.run_cli(&["status"]);
    assert!(code.success(), "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("status prints JSON");
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["role"], "primary");

    if is_root() {
        // Started as root: postgres runs as PGWARDEN_RUN_AS and owns a 0700 PGDATA.
        let pm = pg.postmaster_pid().unwrap();
        let uid = std::fs::metadata(format!("/proc/{pm}")).unwrap().uid();
        let postgres_uid = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert_eq!(uid, postgres_uid, "postmaster runs as the run-as user");
        for dir in [&pg.pgdata, &pg.socket_dir] {
            let meta = std::fs::metadata(dir).unwrap();
            assert_eq!(meta.uid(), postgres_uid, "{} owner", dir.display());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o700,
                "{} mode",
                dir.display()
            );
        }
    }

    // Every line on stdout is JSON, with a logger field telling postgres from pgwarden.
    let lines = json_lines(&pg.log());
    assert!(lines.iter().any(|l| l["logger"] == "postgres"));
    assert!(lines.iter().any(|l| l["logger"] == "pgwarden"));
    assert!(!pg.log().contains(PASSWORD), "the password is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_postgres_after_a_crash_and_keeps_the_data() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "crash");
    pg.start().wait_ready();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)")
        .await
        .unwrap();
    drop(client);

    let old = pg.postmaster_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).unwrap();
    // Ready again, with a new postmaster.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = pg.status();
        if st.ready && st.pid.is_some() && st.pid != Some(old) {
            assert_eq!(st.restarts, 1);
            assert!(
                st.last_exit.as_deref().unwrap_or("").contains("signal 9"),
                "{:?}",
                st.last_exit
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after the crash; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = pg.connect().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_non_zero_after_too_many_crashes() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "crashloop");
    pg.set("PGWARDEN_MAX_CRASHES", "2");
    pg.start().wait_ready();
    let first = pg.postmaster_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    // Wait for the restart, then crash it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let st = pg.status();
        match st.pid {
            Some(pid) if st.state == State::Running && pid != first => break pid,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no restart; log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), Signal::SIGKILL).unwrap();
    let status = pg.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "log:\n{}", pg.log());
    assert!(pg.log().contains("keeps crashing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_a_restart_keeps_the_data() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "term");
    pg.start().wait_ready();
    let client = pg.connect().await;
    client
        .batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();
    drop(client);

    pg.signal(Signal::SIGTERM);
    let status = pg.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{}", pg.log());
    let control = std::process::Command::new(pg_bindir().join("pg_controldata"))
        .arg(&pg.pgdata)
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout);
    assert!(
        control.contains("Database cluster state:               shut down\n"),
        "{control}"
    );

    let before = pg.log();
    pg.start().wait_ready();
    let client = pg.connect().await;
    let x: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    let second_run = pg.log()[before.len()..].to_owned();
    assert!(
        !second_run.contains("running initdb"),
        "no re-initialisation:\n{second_run}"
    );
    assert!(second_run.contains("using the existing data directory"));
    assert!(
        !second_run.contains("redo starts"),
        "no crash recovery after a clean shutdown:\n{second_run}"
    );
    assert!(
        !second_run.contains("not properly shut down"),
        "{second_run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_shutdown_turns_fast_after_its_bound() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "smart");
    pg.set("PGWARDEN_SMART_SHUTDOWN_TIMEOUT", "1");
    pg.start().wait_ready();
    // An idle client would hold a smart shutdown forever.
    let client = pg.connect().await;
    client.batch_execute("SELECT 1").await.unwrap();
    pg.signal(Signal::SIGTERM);
    pg.wait_for("/healthz", 503, Duration::from_secs(5));
    let status = pg.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", pg.log());
    assert!(pg.log().contains("switching to fast shutdown"));
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "the client was disconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_is_fast_and_sigquit_is_immediate() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "fastquit");
    pg.start().wait_ready();
    let _idle = pg.connect().await;
    pg.signal(Signal::SIGINT);
    assert_eq!(
        pg.wait_exit(Duration::from_secs(30)).code(),
        Some(0),
        "log:\n{}",
        pg.log()
    );
    assert!(pg.log().contains("fast shutdown request"));

    let before = pg.log().len();
    pg.start().wait_ready();
    pg.signal(Signal::SIGQUIT);
    pg.wait_exit(Duration::from_secs(30));
    assert!(pg.log()[before..].contains("immediate shutdown request"));
    // An immediate shutdown skips the checkpoint, so the next start recovers.
    let before = pg.log().len();
    pg.start().wait_ready();
    assert!(
        pg.log()[before..].contains("not properly shut down"),
        "{}",
        &pg.log()[before..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_grandchild_leaves_no_zombie() {
    let tmp = test_dir();
    let scratch = scratch_dir(tmp.path());
    let mut pg = Instance::new(tmp.path(), "reaper");
    pg.start().wait_ready();
    let pidfile = scratch.join("sleep.pid");
    // The backend's shell starts `sleep` in the background and exits at once: the sleep
    // is orphaned and re-parented to pgwarden, which must reap it when it ends.
    let client = pg.connect().await;
    client
        .batch_execute(&format!(
            "COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; sleep 1 & echo $! > {}'",
            pidfile.display()
        ))
        .await
        .unwrap_or_else(|e| panic!("COPY TO PROGRAM failed: {e:?}"));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ppid = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map(|p| p.trim().parse::<i32>().unwrap());
    assert_eq!(
        ppid,
        Some(pg.pid()),
        "the orphan was re-parented to pgwarden:\n{status}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the orphan was not reaped:\n{state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_never_open_connections() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "probes");
    pg.start().wait_ready();
    let client = pg.connect().await;
    let count = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'";
    let before: i64 = client.query_one(count, &[]).await.unwrap().get(0);
    let http = pg.http;
    let hammer = std::thread::spawn(move || {
        let target = pgwarden::http::client::Target::Tcp(http);
        let mut max_seen = 0;
        for i in 0..500 {
            let path = if i % 2 == 0 { "/readyz" } else { "/status" };
            let r = pgwarden::http::client::get(&target, path).unwrap();
            max_seen = max_seen.max(r.status);
        }
        max_seen
    });
    let mut max_during = before;
    while !hammer.is_finished() {
        let n: i64 = client.query_one(count, &[]).await.unwrap().get(0);
        max_during = max_during.max(n);
    }
    assert_eq!(hammer.join().unwrap(), 200);
    let after: i64 = client.query_one(count, &[]).await.unwrap().get(0);
    assert_eq!(
        (max_during, after),
        (before, before),
        "probes added backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rerenders_and_reloads() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "hup");
    pg.start().wait_ready();
    let client = pg.connect().await;
    let pid_before = pg.postmaster_pid();
    std::fs::write(
        &pg.user_conf,
        "shared_buffers = 16MB\nmax_connections = 40\nwork_mem = '7MB'\n",
    )
    .unwrap();
    pg.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        if v == "7MB" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "work_mem is still {v}; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.postmaster_pid(), pid_before, "a reload, not a restart");

    // An invalid change is refused and the running configuration kept.
    std::fs::write(&pg.user_conf, "work_mem = banana\n").unwrap();
    pg.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let conf = std::fs::read_to_string(pg.pgdata.join("postgresql.conf")).unwrap();
    assert!(conf.contains("work_mem = '7MB'"), "{conf}");
    assert!(pg.log().contains("reload refused"));
    assert_eq!(pg.get("/readyz").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_run_pg_basebackup_and_user_ident_maps_work_over_the_socket() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "local");
    let hba = pg.dir.join("hba.conf");
    std::fs::write(&hba, "local all app_user peer map=staff\n").unwrap();
    let ident = pg.dir.join("ident.conf");
    // Whoever runs the tests (root in CI) may log in as app_user over the socket.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    std::fs::write(&ident, format!("# staff\nstaff {me} app_user\n")).unwrap();
    pg.set("PGWARDEN_USER_HBA", hba.display().to_string())
        .set("PGWARDEN_USER_IDENT", ident.display().to_string());
    pg.start().wait_ready();
    pg.connect()
        .await
        .batch_execute("CREATE ROLE app_user LOGIN")
        .await
        .unwrap();

    // What an operator runs by hand in the pod: a base backup over the unix socket.
    let target = scratch_dir(tmp.path()).join("backup");
    let out = std::process::Command::new(pg_bindir().join("pg_basebackup"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "stream",
            "-D",
        ])
        .arg(&target)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup over the socket: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(target.join("PG_VERSION").exists());

    let out = std::process::Command::new(pg_bindir().join("psql"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "app_user",
            "-d",
            "postgres",
            "-XAtc",
            "SELECT current_user",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "app_user",
        "peer login through the user's map: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
