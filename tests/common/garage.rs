//! A real single-node Garage S3 server on 127.0.0.1, one per test, with its own bucket
//! and a key generated here. Killed by pid on drop.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Garage {
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    conf: PathBuf,
    child: Option<Child>,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The garage binary: `PGWARDEN_GARAGE_BIN`, or where `scripts/install-garage.sh`
/// installs it (`${PGWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgwarden}/garage`).
pub fn garage_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGWARDEN_GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let set = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = set("PGWARDEN_CACHE").unwrap_or_else(|| {
        set("XDG_CACHE_HOME")
            .unwrap_or_else(|| set("HOME").unwrap_or_else(|| "/root".into()).join(".cache"))
            .join("pgwarden")
    });
    let p = cache.join("garage/bin/garage");
    assert!(
        p.exists(),
        "garage is not installed at {}; run `bash scripts/install-garage.sh`",
        p.display()
    );
    p
}

impl Garage {
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-garage-")
            .tempdir()
            .unwrap();
        let (rpc, s3, admin) = (super::free_port(), super::free_port(), super::free_port());
        let conf = dir.path().join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                d = dir.path().display(),
                secret = random_hex(32)
            ),
        )
        .unwrap();
        let mut g = Garage {
            s3_port: s3,
            bucket: "wal".into(),
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            conf,
            dir,
            child: None,
        };
        g.spawn();
        // `node id` answers from local files; `status` needs the RPC listener up.
        g.cli_retry(&["status"]);
        let node = g.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_owned();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        g.cli(&["layout", "apply", "--version", "1"]);
        let (key_id, secret) = (g.key_id.clone(), g.secret.clone());
        g.cli(&["key", "import", "--yes", "-n", "test", &key_id, &secret]);
        g.cli(&["bucket", "create", "wal"]);
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", "wal", "--key", "test",
        ]);
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("garage.log")).unwrap();
        self.child = Some(
            Command::new(garage_bin())
                .args(["-c"])
                .arg(&self.conf)
                .arg("server")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start garage"),
        );
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(garage_bin())
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "garage {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_retry(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (an outage); [`Garage::resume`] brings it back on the same ports.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn resume(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The environment a client needs (standard AWS variables only).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "garage".into()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.pause();
    }
}
