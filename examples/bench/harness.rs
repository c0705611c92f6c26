//! Shared helpers: temp dirs, free ports, running pgwarden and postgres tools.

/// The same Garage harness the tests use (the bench does not pause it).
#[allow(dead_code)]
#[path = "../../tests/common/garage.rs"]
pub mod garage;

/// The tests' deadline loop, which the etcd harness uses too.
#[path = "../../tests/common/poll.rs"]
mod poll;
pub use poll::eventually;

/// The same etcd harness the HA tests use.
#[allow(dead_code)]
#[path = "../../tests/common/etcd.rs"]
pub mod etcd;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pg = Command::new(bindir().join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs, {pg}")
}

/// PGWARDEN_PG_BINDIR's binaries when set (as pgwarden itself takes them from the
/// environment), else the newest Debian major's.
pub fn bindir() -> PathBuf {
    let explicit = std::env::var_os("PGWARDEN_PG_BINDIR").map(PathBuf::from);
    pgwarden::settings::resolve_bindir(explicit.as_deref(), None).expect("PostgreSQL binaries")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The unprivileged user postgres tools run as when the bench runs as root.
pub fn run_as_postgres(cmd: &mut Command) -> &mut Command {
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user");
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw()).current_dir("/");
    }
    cmd
}

/// A pgwarden instance's environment.
#[derive(Clone)]
pub struct Warden {
    pub dir: PathBuf,
    pub pgdata: PathBuf,
    pub port: u16,
    pub http: std::net::SocketAddr,
    pub env: Vec<(String, String)>,
}

impl Warden {
    pub fn new(dir: &Path) -> Warden {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = free_port();
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let conf = dir.join("user.conf");
        std::fs::write(&conf, "shared_buffers = 128MB\n").unwrap();
        let pgdata = dir.join("data");
        let env = vec![
            ("PGDATA".into(), pgdata.display().to_string()),
            ("PGPORT".into(), port.to_string()),
            ("POSTGRES_PASSWORD".into(), "bench".into()),
            (
                "PGWARDEN_SOCKET_DIR".into(),
                dir.join("sock").display().to_string(),
            ),
            ("PGWARDEN_HTTP_ADDR".into(), http.to_string()),
            (
                "PGWARDEN_INITDB_DIR".into(),
                dir.join("none").display().to_string(),
            ),
            ("PGWARDEN_NAME".into(), "bench".into()),
            ("PGWARDEN_USER_CONF".into(), conf.display().to_string()),
            ("PGWARDEN_LOG_FORMAT".into(), "json".into()),
        ];
        Warden {
            dir: dir.to_path_buf(),
            pgdata,
            port,
            http,
            env,
        }
    }

    pub fn spawn(&self, bin: &Path) -> Child {
        self.spawn_command(Command::new(bin))
    }

    /// Spawns `cmd run` (`cmd` being pgwarden, or a command that execs it) with this
    /// instance's environment, appending to its log.
    pub fn spawn_command(&self, mut cmd: Command) -> Child {
        cmd.arg("run")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("log"))
                    .unwrap(),
            )
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    pub fn ready(&self) -> bool {
        matches!(pgwarden::http::client::get(&pgwarden::http::client::Target::Tcp(self.http), "/readyz"), Ok(r) if r.status == 200)
    }

    pub fn wait_ready(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        while !self.ready() {
            assert!(
                t0.elapsed() < timeout,
                "pgwarden not ready; see {}/log",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        t0.elapsed()
    }
}

/// Runs pgbench with `args` against the postgres database on `port`.
pub fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(bindir().join("pgbench"))
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "postgres",
        ])
        .env("PGPASSWORD", "bench")
        .output()
        .unwrap()
}

/// Runs one SQL statement as the superuser over TCP; returns its single value.
pub fn psql(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new(bindir().join("psql"))
        .args([
            "-XAtqc",
            sql,
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-d",
            db,
        ])
        .env("PGPASSWORD", "bench")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stops a pgwarden child with SIGTERM and waits.
pub fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Resident set size of a process, in kB, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Wall seconds, CPU seconds and peak RSS (kB) of one command, from GNU time.
pub struct Cost {
    pub wall: f64,
    pub cpu: f64,
    pub rss_kb: u64,
}

pub fn timed(cmd: &mut Command) -> Cost {
    try_timed(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// [`timed`], with a failure returned instead of a panic.
pub fn try_timed(cmd: &mut Command) -> Result<Cost, String> {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "PGWARDEN_TIME %e %U %S %M"])
        .arg(prog)
        .args(args);
    for (k, v) in envs {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let out = t.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {err}",
            t.get_args().collect::<Vec<_>>()
        ));
    }
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("PGWARDEN_TIME"))
        .unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(Cost {
        wall: f[0],
        cpu: f[1] + f[2],
        rss_kb: f[3] as u64,
    })
}

/// [`timed`] with microsecond CPU figures: the command runs directly and its
/// resource usage comes from wait4 (user + system of it and the children it waited
/// for; its peak RSS). GNU time prints CPU in hundredths, too coarse for commands
/// that take a few tens of milliseconds.
pub fn timed_precise(cmd: &mut Command) -> Cost {
    let t0 = Instant::now();
    // Reaped by wait4 below, which std's Child cannot do and still report usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; both pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{:?} failed",
        cmd.get_args().collect::<Vec<_>>()
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        rss_kb: usage.ru_maxrss as u64,
    }
}

/// CPU seconds (user + system) a running process has used, from /proc.
pub fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
