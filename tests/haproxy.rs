//! Patroni's health checks: every check path and alias for GET, HEAD and OPTIONS,
//! `?lag=`, 404 for unknown paths, and a real HAProxy (Debian's `haproxy` package)
//! running Patroni's documented configuration against a primary and a replica.

mod common;

use common::*;
use pgwarden::http::client::{request, Target};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The status of `path` for each of GET, HEAD and OPTIONS; they must agree.
fn code(pg: &Instance, path: &str) -> u16 {
    let target = Target::Tcp(pg.http);
    let codes: Vec<u16> = ["GET", "HEAD", "OPTIONS"]
        .iter()
        .map(|m| {
            request(&target, m, path, &[])
                .unwrap_or_else(|e| panic!("{m} {path}: {e}"))
                .status
        })
        .collect();
    assert!(
        codes.iter().all(|c| *c == codes[0]),
        "GET, HEAD and OPTIONS {path} disagree: {codes:?}"
    );
    codes[0]
}

/// One HAProxy process, stopped by pid when dropped.
struct Haproxy {
    child: Child,
    stats: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    fn start(dir: &Path, config: &str) -> Haproxy {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .expect("haproxy (Debian package haproxy)");
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        // -db: stay in the foreground, so that the pid is HAProxy's own.
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start haproxy");
        Haproxy {
            child,
            stats: dir.join("haproxy.sock"),
            log,
        }
    }

    /// `(proxy, server) -> status` from `show stat` on the stats socket.
    fn states(&self) -> Option<Vec<(String, String, String)>> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.stats).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
                .map(|f| (f[px].to_owned(), f[sv].to_owned(), f[st].to_owned()))
                .collect(),
        )
    }

    /// Waits until every `(proxy, server)` in `want` has the status given ("UP" or
    /// "DOWN"), failing with HAProxy's view after `timeout`.
    fn wait_for(&self, want: &[(&str, &str, &str)], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.states().unwrap_or_default();
            let matches = want.iter().all(|(px, sv, st)| {
                got.iter()
                    .any(|(p, s, status)| p == px && s == sv && status.starts_with(st))
            });
            if matches {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not reach {want:?}; it shows {got:?}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Patroni's documented HAProxy configuration (docs/haproxy.cfg in Patroni), with one
/// more listener for `/read-only` and one for `/replica?lag=`, pointed at `servers`
/// (`name`, postgres port, HTTP port).
fn patroni_config(dir: &Path, servers: &[(&str, u16, u16)], max_lag: &str) -> String {
    let listen = |name: &str, check: &str| {
        let mut s = format!(
            "listen {name}\n    bind 127.0.0.1:{}\n    option httpchk {check}\n    http-check expect status 200\n    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions\n",
            free_port()
        );
        for (sv, port, http) in servers {
            s += &format!("    server {sv} 127.0.0.1:{port} maxconn 100 check port {http}\n");
        }
        s + "\n"
    };
    format!(
        "global\n    maxconn 100\n    stats socket {} mode 600 level admin\n\n\
         defaults\n    log global\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 5s\n\n{}{}{}{}",
        dir.join("haproxy.sock").display(),
        listen("primary", "OPTIONS /primary"),
        listen("replicas", "OPTIONS /replica"),
        listen("read_only", "OPTIONS /read-only"),
        listen("replicas_lag", &format!("OPTIONS /replica?lag={max_lag}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_patronis_configuration_routes_to_the_right_backends() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "hx-primary");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "hx-replica", &a);
    b.start().wait_ready();

    // Every check path and alias, for GET, HEAD and OPTIONS alike.
    let paths = [
        ("/primary", 200, 503),
        ("/master", 200, 503),
        ("/leader", 200, 503),
        ("/read-write", 200, 503),
        ("/replica", 503, 200),
        ("/standby", 503, 200),
        ("/read-only", 200, 200),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
        ("/healthz", 200, 200),
        ("/readyz", 200, 200),
        ("/startupz", 200, 200),
        ("/replica?lag=1GB", 503, 200),
        ("/read-only?lag=16MB", 200, 200),
        ("/no-such-path", 404, 404),
        ("/primaryy", 404, 404),
    ];
    for (path, on_primary, on_replica) in paths {
        assert_eq!(code(&a, path), on_primary, "{path} on the primary");
        assert_eq!(code(&b, path), on_replica, "{path} on the replica");
    }
    assert_eq!(code(&b, "/replica?lag=banana"), 400);
    let r = b.get("/replica?lag=16parsecs");
    assert!(
        r.body.contains("lag="),
        "the error names the setting: {}",
        r.body
    );

    let dir = tmp.path().join("haproxy");
    std::fs::create_dir_all(&dir).unwrap();
    let servers = [
        ("hx-primary", a.port, a.http.port()),
        ("hx-replica", b.port, b.http.port()),
    ];
    let hx = Haproxy::start(&dir, &patroni_config(&dir, &servers, "1MB"));
    let timeout = Duration::from_secs(90);
    hx.wait_for(
        &[
            ("primary", "hx-primary", "UP"),
            ("primary", "hx-replica", "DOWN"),
            ("replicas", "hx-primary", "DOWN"),
            ("replicas", "hx-replica", "UP"),
            ("read_only", "hx-primary", "UP"),
            ("read_only", "hx-replica", "UP"),
            ("replicas_lag", "hx-primary", "DOWN"),
            ("replicas_lag", "hx-replica", "UP"),
        ],
        timeout,
    );

    // Pause replay on the replica and write some 10 MB on the primary: the replica is now
    // far behind, and only the check with a lag bound takes it out.
    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    a.connect()
        .await
        .batch_execute("CREATE TABLE behind AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g")
        .await
        .unwrap();
    b.wait_for("/replica?lag=1MB", 503, Duration::from_secs(30));
    assert_eq!(code(&b, "/replica?lag=1GB"), 200);
    assert_eq!(code(&b, "/read-only?lag=1MB"), 503);
    assert_eq!(
        code(&b, "/replica"),
        200,
        "without a bound, lag does not matter"
    );
    hx.wait_for(
        &[
            ("replicas_lag", "hx-replica", "DOWN"),
            ("replicas", "hx-replica", "UP"),
            ("primary", "hx-primary", "UP"),
        ],
        timeout,
    );

    b.connect()
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    hx.wait_for(&[("replicas_lag", "hx-replica", "UP")], timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_with_or_without_a_token() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "hx-404");
    pg.start().wait_ready();
    let tcp = Target::Tcp(pg.http);
    // Without PGWARDEN_API_TOKEN the control API is refused, but only on its own paths.
    assert_eq!(
        request(&tcp, "POST", "/checkpoint", &[]).unwrap().status,
        403
    );
    assert_eq!(request(&tcp, "GET", "/promte", &[]).unwrap().status, 404);
    assert_eq!(request(&tcp, "POST", "/nope", &[]).unwrap().status, 404);
    assert_eq!(code(&pg, "/primary/"), 404);
}
