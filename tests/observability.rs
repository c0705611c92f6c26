//! Metrics, the control API, live reload, fencing and structured logs, against a real
//! PostgreSQL (and Debian's promtool).

mod common;

use common::*;
use pgwarden::http::client::{request, Target};
use pgwarden::state::State;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn metrics(pg: &Instance) -> String {
    let r = pg.get("/metrics");
    assert_eq!(r.status, 200);
    r.body
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_show_a_paused_replicas_lag() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "m-primary");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "m-replica", &a);
    b.start().wait_ready();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pm = metrics(&a);
    promtool_check(&pm);
    promtool_check(&metrics(&b));
    assert_eq!(value(&pm, "pgwarden_postgres_up"), Some(1.0));
    assert_eq!(value(&pm, "pgwarden_role{role=\"primary\"}"), Some(1.0));
    assert_eq!(value(&pm, "pgwarden_state{state=\"running\"}"), Some(1.0));
    assert_eq!(value(&pm, "pgwarden_replicas_connected"), Some(1.0));
    assert_eq!(
        value(&pm, "pgwarden_slot_active{slot_name=\"m_replica\"}"),
        Some(1.0)
    );
    assert_eq!(value(&pm, "pgwarden_timeline"), Some(1.0));
    assert!(pm.contains("pgwarden_build_info{version="));
    assert_eq!(value(&metrics(&b), "pgwarden_in_recovery"), Some(1.0));

    // Pause replay on the replica and write: the primary sees the lag grow.
    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    a.connect()
        .await
        .batch_execute("CREATE TABLE lag AS SELECT g FROM generate_series(1, 100000) g")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let lag = value(
            &metrics(&a),
            "pgwarden_replication_lag_bytes{application_name=\"m-replica\"}",
        )
        .unwrap_or(0.0);
        if lag > 1_000_000.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lag in /metrics:\n{}",
            metrics(&a)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_needs_the_token_and_secrets_stay_secret() {
    let tmp = test_dir();
    let token = "test-token-0123456789";
    let mut pg = Instance::primary(tmp.path(), "api");
    pg.set("PGWARDEN_API_TOKEN", token);
    pg.start().wait_ready();
    let tcp = Target::Tcp(pg.http);
    let call = |headers: &[(&str, &str)]| {
        request(&tcp, "POST", "/checkpoint", headers)
            .unwrap()
            .status
    };
    assert_eq!(call(&[]), 401);
    assert_eq!(
        call(&[("Authorization", "Bearer wrong-token-0123456789")]),
        401
    );
    assert_eq!(
        call(&[("Authorization", token)]),
        401,
        "the Bearer scheme is required"
    );
    let auth = format!("Bearer {token}");
    assert_eq!(call(&[("Authorization", &auth)]), 200);
    assert_eq!(pg.get("/readyz").status, 200, "probes need no token");
    // /switchover is a control route like the others; with HA off there is no cluster.
    let switchover = |headers: &[(&str, &str)]| {
        request(&tcp, "POST", "/switchover", headers)
            .unwrap()
            .status
    };
    assert_eq!(switchover(&[]), 401);
    assert_eq!(switchover(&[("Authorization", &auth)]), 404);
    let (code, out) = pg.run_cli(&["switchover"]);
    assert!(
        !code.success() && out.contains("PGWARDEN_HA is off"),
        "{out}"
    );

    // Without a token configured the control API is off, the probes on.
    let mut open = Instance::new(tmp.path(), "noapi");
    open.start().wait_ready();
    assert_eq!(
        request(&Target::Tcp(open.http), "POST", "/checkpoint", &[])
            .unwrap()
            .status,
        403
    );
    assert_eq!(open.get("/readyz").status, 200);
    // The local socket needs no token.
    let (code, out) = open.run_cli(&["checkpoint"]);
    assert!(code.success(), "{out}");

    for text in [pg.get("/status").body, pg.get("/metrics").body, pg.log()] {
        for secret in [token, PASSWORD, REPLICATION_PASSWORD] {
            assert!(!text.contains(secret), "a secret leaked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_is_applied_live_and_a_bad_one_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "live");
    // A ConfigMap volume: the file is reached through a "..data" symlink that kubelet
    // swaps atomically to a new directory on every update.
    let cm = pg.dir.join("configmap");
    let v1 = cm.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(
        v1.join("user.conf"),
        "shared_buffers = 16MB\nmax_connections = 40\nwork_mem = 4MB\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/user.conf", cm.join("user.conf")).unwrap();
    pg.set(
        "PGWARDEN_USER_CONF",
        cm.join("user.conf").display().to_string(),
    );
    pg.start().wait_ready();
    let client = pg.connect().await;
    let pid = pg.postmaster_pid();
    let swap = |version: &str, text: &str| {
        let dir = cm.join(format!("..{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("user.conf"), text).unwrap();
        std::os::unix::fs::symlink(format!("..{version}"), cm.join("..data.tmp")).unwrap();
        std::fs::rename(cm.join("..data.tmp"), cm.join("..data")).unwrap();
    };
    swap(
        "v2",
        "shared_buffers = 16MB\nmax_connections = 40\nwork_mem = 12MB\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        if v == "12MB" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "work_mem is still {v}; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        pg.postmaster_pid(),
        pid,
        "applied with a reload, not a restart"
    );

    // A parameter that needs a restart is reported, not applied behind the user's back.
    swap(
        "v3",
        "shared_buffers = 24MB\nmax_connections = 40\nwork_mem = 12MB\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pg.status().pending_restart {
        assert!(Instant::now() < deadline, "pending_restart never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(value(&metrics(&pg), "pgwarden_pending_restart"), Some(1.0));

    // An invalid change is refused: the running configuration stays, the error shows,
    // the pod stays ready.
    swap("v4", "work_mem = banana\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.status().config_error.is_none() {
        assert!(Instant::now() < deadline, "the bad change was not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = pg.status();
    assert!(
        st.config_error
            .as_deref()
            .unwrap_or("")
            .contains("work_mem"),
        "{:?}",
        st.config_error
    );
    assert_eq!(pg.get("/readyz").status, 200);
    let v: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(v, "12MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_survives_a_restart_until_unfenced() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "fence");
    pg.start().wait_ready();
    pg.connect()
        .await
        .batch_execute("CREATE TABLE kept AS SELECT 1 AS x")
        .await
        .unwrap();
    let (code, out) = pg.run_cli(&["fence"]);
    assert!(code.success(), "{out}");
    pg.wait_for("/readyz", 503, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.status().state != State::Fenced {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.get("/healthz").status, 200, "a fenced pod is alive");
    assert!(pg.postmaster_pid().is_none(), "postgres is stopped");

    pg.stop();
    pg.start();
    pg.wait_for("/healthz", 200, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pg.status().state,
        State::Fenced,
        "the fence survives a restart of pgwarden"
    );
    assert_eq!(pg.get("/readyz").status, 503);
    assert_eq!(
        pg.get("/startupz").status,
        200,
        "the startup probe must not kill a pod fenced on purpose"
    );

    let (code, out) = pg.run_cli(&["unfence"]);
    assert!(code.success(), "{out}");
    pg.wait_ready();
    let x: i32 = pg
        .connect()
        .await
        .query_one("SELECT x FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_checkpoints_first_and_is_not_a_crash() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "restart");
    pg.start().wait_ready();
    let old = pg.postmaster_pid();
    let before = pg.log().len();
    let (code, out) = pg.run_cli(&["restart"]);
    assert!(code.success(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = pg.status();
        if st.ready && st.pid.is_some() && st.pid != old {
            assert_eq!(st.restarts, 0, "a planned restart is not a crash");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back after the restart; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = pg.log()[before..].to_owned();
    let forced = log
        .find("checkpoint starting: immediate force wait")
        .expect("a CHECKPOINT before the restart");
    let shutdown = log
        .find("received fast shutdown request")
        .expect("a fast shutdown");
    assert!(forced < shutdown, "the CHECKPOINT comes first");
}

/// Polls `/healthz` as a kubelet would, as fast as it answers, until told to stop;
/// returns every answer that was not 200.
fn watch_liveness(
    pg: &Instance,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u16, String)>> {
    let target = Target::Tcp(pg.http);
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match pgwarden::http::client::get(&target, "/healthz") {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push((r.status, r.body)),
                Err(e) => failures.push((0, e.to_string())),
            }
        }
        failures
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_stays_up_through_a_restart_and_a_fence() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "alive");
    // A smart shutdown that waits for the open session below, so that the exiting
    // pgwarden can be seen failing liveness (SIGTERM is otherwise a fast shutdown,
    // over in a fraction of a second).
    pg.set("PGWARDEN_SMART_SHUTDOWN_TIMEOUT", "5");
    pg.start().wait_ready();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_liveness(&pg, stop.clone());

    let old = pg.postmaster_pid();
    let (code, out) = pg.run_cli(&["restart"]);
    assert!(code.success(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = pg.status();
        if st.ready && st.pid.is_some() && st.pid != old {
            break;
        }
        assert!(Instant::now() < deadline, "not back; log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out) = pg.run_cli(&["fence"]);
    assert!(code.success(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.status().state != State::Fenced {
        assert!(Instant::now() < deadline, "not fenced; log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out) = pg.run_cli(&["unfence"]);
    assert!(code.success(), "{out}");
    pg.wait_ready();

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures = watcher.join().unwrap();
    assert!(
        failures.is_empty(),
        "/healthz failed during a planned restart or a fence: {failures:?}"
    );

    // Only pgwarden's own end fails liveness.
    let client = pg.connect().await;
    client.batch_execute("SELECT 1").await.unwrap();
    pg.signal(nix::sys::signal::Signal::SIGTERM);
    pg.wait_for("/healthz", 503, Duration::from_secs(5));
    drop(client);
    let status = pg.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "log:\n{}", pg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_log_records_are_structured_json() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "logs");
    // postgres logs DDL statements, so the ALTER ROLE below reaches the log.
    std::fs::write(
        &pg.user_conf,
        "shared_buffers = 16MB\nmax_connections = 40\nlog_statement = 'ddl'\n",
    )
    .unwrap();
    pg.start().wait_ready();
    let client = pg.connect().await;
    let _ = client.batch_execute("SELECT * FROM no_such_table").await;
    let _ = client
        .batch_execute("ALTER ROLE postgres PASSWORD 'a-new-secret-1234'")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = json_lines(&pg.log());
    let err = lines
        .iter()
        .find(|l| l["logger"] == "postgres" && l["sqlstate"] == "42P01")
        .unwrap_or_else(|| panic!("no structured error line in:\n{}", pg.log()));
    assert_eq!(err["level"], "error");
    assert_eq!(err["user"], "postgres");
    assert_eq!(err["database"], "postgres");
    assert!(err["msg"].as_str().unwrap().contains("no_such_table"));
    assert!(
        pg.log().contains("PASSWORD '***'"),
        "the logged statement is there, redacted:\n{}",
        pg.log()
    );
    assert!(
        !pg.log().contains("a-new-secret-1234"),
        "a password in a statement is redacted"
    );
}

/// A self-signed certificate for 127.0.0.1, made with openssl.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_probes_and_the_control_api() {
    let tmp = test_dir();
    let (cert, key) = self_signed(tmp.path());
    let mut pg = Instance::new(tmp.path(), "tls");
    pg.set("PGWARDEN_TLS_CERT", cert.display().to_string())
        .set("PGWARDEN_TLS_KEY", key.display().to_string())
        .set("PGWARDEN_API_TOKEN", "tls-token-0123456789");
    pg.via_socket = true;
    pg.start().wait_ready();
    let base = format!("https://{}", pg.http);
    let cacert = cert.display().to_string();
    assert_eq!(
        curl(&["--cacert", &cacert, &format!("{base}/readyz")]),
        "200"
    );
    assert_eq!(
        curl(&[
            "--cacert",
            &cacert,
            "-X",
            "POST",
            &format!("{base}/checkpoint")
        ]),
        "401"
    );
    assert_eq!(
        curl(&[
            "--cacert",
            &cacert,
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer tls-token-0123456789",
            &format!("{base}/checkpoint")
        ]),
        "200"
    );
    // Plain HTTP gets no answer from the HTTPS port.
    let plain = pgwarden::http::client::get(&Target::Tcp(pg.http), "/readyz");
    assert!(
        plain.map(|r| r.status != 200).unwrap_or(true),
        "plain HTTP must not be served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_pending_applies_a_restart_only_parameter() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "pending");
    pg.set("PGWARDEN_RESTART_ON_PENDING", "true");
    pg.start().wait_ready();
    let old = pg.postmaster_pid();
    std::fs::write(
        &pg.user_conf,
        "shared_buffers = 24MB\nmax_connections = 40\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if pg.postmaster_pid().is_some()
            && pg.postmaster_pid() != old
            && pg.get("/readyz").status == 200
        {
            let v: String = pg
                .connect()
                .await
                .query_one("SHOW shared_buffers", &[])
                .await
                .unwrap()
                .get(0);
            if v == "24MB" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "shared_buffers was not applied by a restart; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pg.status().restarts, 0, "a planned restart is not a crash");
}

async fn show(pg: &Instance, name: &str) -> String {
    pg.connect()
        .await
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_system_cannot_take_back_what_pgwarden_owns() {
    let tmp = test_dir();
    let archive = scratch_dir(tmp.path());
    let mut pg = Instance::new(tmp.path(), "autoconf");
    pg.set(
        "PGWARDEN_ARCHIVE_URL",
        format!("file://{}", archive.display()),
    );
    pg.start().wait_ready();
    let archive_command = show(&pg, "archive_command").await;
    assert!(archive_command.contains("wal-archive"), "{archive_command}");
    assert_eq!(
        value(&metrics(&pg), "pgwarden_auto_conf_overrides_total"),
        Some(0.0)
    );

    // A superuser turns archiving into a no-op, the way that silently loses WAL, and
    // changes something that is theirs to change.
    let client = pg.connect().await;
    for sql in [
        "ALTER SYSTEM SET archive_command = '/bin/true'",
        "ALTER SYSTEM SET work_mem = '7MB'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let auto_conf = pg.pgdata.join("postgresql.auto.conf");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = pg.status();
        let reported = st
            .config_error
            .as_deref()
            .is_some_and(|e| e.contains("archive_command"));
        if reported && show(&pg, "archive_command").await == archive_command {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archive_command = {:?}, config_error = {:?}; log:\n{}",
            show(&pg, "archive_command").await,
            st.config_error,
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&auto_conf).unwrap();
    assert!(!text.contains("archive_command"), "{text}");
    assert_eq!(
        show(&pg, "work_mem").await,
        "7MB",
        "the user's own change stays"
    );
    let m = metrics(&pg);
    assert_eq!(value(&m, "pgwarden_auto_conf_overrides_total"), Some(1.0));
    assert_eq!(value(&m, "pgwarden_config_error"), Some(1.0));
    assert!(pg
        .log()
        .lines()
        .any(|l| l.contains("ALTER SYSTEM") && l.contains("\"level\":\"error\"")));

    // Through `pgwarden reload` too, and a conninfo's password is never reported.
    client
        .batch_execute("ALTER SYSTEM SET primary_conninfo = 'host=elsewhere password=hunter2'")
        .await
        .unwrap();
    let (code, out) = pg.run_cli(&["reload"]);
    assert!(code.success(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&auto_conf)
        .unwrap()
        .contains("work_mem")
        || std::fs::read_to_string(&auto_conf)
            .unwrap()
            .contains("primary_conninfo")
    {
        assert!(Instant::now() < deadline, "log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (A reload clears config_error, so the count and the log are what last.)
    assert_eq!(
        value(&metrics(&pg), "pgwarden_auto_conf_overrides_total"),
        Some(2.0)
    );
    assert!(pg
        .log()
        .lines()
        .any(|l| l.contains("primary_conninfo") && l.contains("\"level\":\"error\"")));
    assert!(!pg.log().contains("hunter2"), "a password reached the log");

    // With postgres stopped, a port in the file would move postgres elsewhere: the next
    // start takes it out before postgres reads it.
    pg.stop();
    let mut text = std::fs::read_to_string(&auto_conf).unwrap();
    text.push_str("port = '1'\n");
    std::fs::write(&auto_conf, text).unwrap();
    pg.start().wait_ready();
    assert_eq!(show(&pg, "port").await, pg.port.to_string());
    let st = pg.status();
    assert!(
        st.config_error
            .as_deref()
            .is_some_and(|e| e.contains("port")),
        "{:?}",
        st.config_error
    );
    assert!(!std::fs::read_to_string(&auto_conf)
        .unwrap()
        .contains("port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_metrics_come_from_the_monitor() {
    let tmp = test_dir();
    let mut pg = Instance::primary(tmp.path(), "dash");
    pg.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "dash-replica", &pg);
    b.start().wait_ready();
    // A transaction left open, a rollback and a temporary file.
    let open = pg.connect().await;
    open.batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let client = pg.connect().await;
    client
        .batch_execute("BEGIN; CREATE TABLE gone (x int); ROLLBACK")
        .await
        .unwrap();
    client
        .batch_execute("SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s")
        .await
        .unwrap();

    // The monitor refreshes once a second and database sizes every 15 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    let m = loop {
        let m = metrics(&pg);
        let ready = value(&m, "pgwarden_database_size_bytes{datname=\"postgres\"}").is_some()
            && value(&m, "pgwarden_oldest_transaction_age_seconds").unwrap_or(0.0) >= 1.0
            && value(
                &m,
                "pgwarden_database_temp_bytes_total{datname=\"postgres\"}",
            )
            .unwrap_or(0.0)
                > 0.0;
        if ready {
            break m;
        }
        assert!(Instant::now() < deadline, "metrics never complete:\n{m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    promtool_check(&m);
    promtool_check(&metrics(&b));
    let v = |series: &str| value(&m, series).unwrap_or_else(|| panic!("no {series} in:\n{m}"));
    assert_eq!(v("pgwarden_max_connections"), 40.0);
    assert!(v("pgwarden_connections{datname=\"postgres\",state=\"idle in transaction\"}") >= 1.0);
    assert!(v("pgwarden_database_size_bytes{datname=\"postgres\"}") > 1_000_000.0);
    assert!(v("pgwarden_database_xact_commits_total{datname=\"postgres\"}") > 0.0);
    assert!(v("pgwarden_database_xact_rollbacks_total{datname=\"postgres\"}") >= 1.0);
    assert_eq!(
        v("pgwarden_database_deadlocks_total{datname=\"postgres\"}"),
        0.0
    );
    assert!(m.contains("pgwarden_database_conflicts_total{datname=\"postgres\"}"));
    assert!(v("pgwarden_database_xid_age{datname=\"template0\"}") >= 0.0);
    assert!(v("pgwarden_slot_safe_wal_size_bytes{slot_name=\"dash_replica\"}") > 0.0);
    assert_eq!(
        v("pgwarden_slot_info{slot_name=\"dash_replica\",slot_type=\"physical\",wal_status=\"reserved\"}"),
        1.0
    );
    // Every major has them all: 17 moved the checkpoint figures to pg_stat_checkpointer
    // and buffers_backend to pg_stat_io.
    for name in [
        "pgwarden_checkpoints_timed_total",
        "pgwarden_checkpoints_requested_total",
        "pgwarden_checkpoint_write_seconds_total",
        "pgwarden_checkpoint_sync_seconds_total",
        "pgwarden_checkpoint_buffers_written_total",
        "pgwarden_bgwriter_buffers_written_total",
        "pgwarden_bgwriter_maxwritten_clean_total",
        "pgwarden_backend_buffers_written_total",
        "pgwarden_buffers_allocated_total",
    ] {
        assert!(v(name) >= 0.0, "{name} on PostgreSQL {}", pg_major());
    }
    // The replica's base backup requested one.
    assert!(v("pgwarden_checkpoints_requested_total") >= 1.0, "{m}");
    let started = v("pgwarden_postgres_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now,
        "{started} vs {now}"
    );
    assert!(
        m.contains(&format!(
            "pgwarden_postgres_info{{version=\"{}.",
            pg_major()
        )),
        "{m}"
    );
    assert!(v("process_resident_memory_bytes") > 1_000_000.0);
    assert!(v("process_open_fds") > 0.0);
    assert!(v("process_cpu_seconds_total") > 0.0);
    assert!(v("process_start_time_seconds") > now - 600.0);
    let bm = metrics(&b);
    assert!(value(
        &bm,
        "pgwarden_database_conflicts_total{datname=\"postgres\"}"
    )
    .is_some());
    drop(open);

    // /status shows a slot nobody uses: since when (PostgreSQL 17 and later), and an
    // active one as in use.
    client
        .batch_execute("SELECT pg_create_physical_replication_slot('idle_slot', true)")
        .await
        .unwrap();
    let slots = eventually(Duration::from_secs(10), "the idle slot in /status", || {
        let slots = pg.status().slots;
        match slots.iter().any(|s| s.name == "idle_slot") {
            true => Ok(slots),
            false => Err(format!("{slots:?}")),
        }
    });
    for slot in &slots {
        let idle = slot.name == "idle_slot";
        assert_eq!(slot.active, !idle, "{slot:?}");
        assert_eq!(
            slot.inactive_since.is_some(),
            idle && pg_major() >= 17,
            "{slot:?}"
        );
        assert_eq!(slot.invalidation_reason, None, "{slot:?}");
    }
}
