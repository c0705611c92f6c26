//! A real single-member etcd on 127.0.0.1, one per test, with its own data dir and
//! ports. Killed by pid on drop. The binary comes from Debian's `etcd-server`
//! (scripts/install-deps.sh); the system service it may install is never used.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    /// The address it listens on.
    pub host: String,
    child: Option<Child>,
}

/// The etcd binary: `PGWARDEN_ETCD_BIN`, or Debian's.
pub fn etcd_bin() -> PathBuf {
    let p = std::env::var("PGWARDEN_ETCD_BIN")
        .map_or_else(|_| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    assert!(
        p.exists(),
        "etcd is not installed at {}; run `bash scripts/install-deps.sh`",
        p.display()
    );
    p
}

impl Etcd {
    /// On 127.0.0.1.
    pub fn start() -> Etcd {
        Etcd::start_at(None, "127.0.0.1")
    }

    /// On `host`, inside network namespace `netns` if given (then readiness is read
    /// from its log, as the test process cannot reach it).
    pub fn start_at(netns: Option<&str>, host: &str) -> Etcd {
        let (client, peer) = (super::free_port(), super::free_port());
        let peer_url = format!("http://{host}:{peer}");
        let e = Etcd::spawn("t", netns, host, client, peer, &format!("t={peer_url}"));
        e.wait_ready(netns.is_some());
        e
    }

    /// A cluster of `n` members on 127.0.0.1, started together (each waits for the
    /// others to form the first quorum).
    pub fn start_cluster(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (super::free_port(), super::free_port()))
            .collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("t{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                Etcd::spawn(
                    &format!("t{i}"),
                    None,
                    "127.0.0.1",
                    *client,
                    *peer,
                    &initial,
                )
            })
            .collect();
        for m in &members {
            m.wait_ready(false);
        }
        members
    }

    fn spawn(
        name: &str,
        netns: Option<&str>,
        host: &str,
        client_port: u16,
        peer: u16,
        initial_cluster: &str,
    ) -> Etcd {
        // /dev/shm: etcd fsyncs its WAL on every write, which is slow on a shared disk.
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-etcd-")
            .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm"
            } else {
                "/tmp"
            })
            .unwrap();
        let mut e = Etcd {
            client_port,
            host: host.to_owned(),
            dir,
            child: None,
        };
        let log = std::fs::File::create(e.dir.path().join("etcd.log")).unwrap();
        let client_url = e.url();
        let peer_url = format!("http://{host}:{peer}");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd_bin());
                c
            }
            None => Command::new(etcd_bin()),
        };
        let child = cmd
            .args(["--name", name, "--data-dir"])
            .arg(e.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", initial_cluster])
            // The environment of a developer's shell must not reconfigure it.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        e.child = Some(child);
        e
    }

    /// Waits until it serves clients: from its log when `from_log` (another network
    /// namespace), else by its /health.
    fn wait_ready(&self, from_log: bool) {
        if from_log {
            super::eventually(Duration::from_secs(30), "etcd is ready", || {
                let log = self.log();
                if log.contains("ready to serve client requests") {
                    Ok(())
                } else {
                    Err(log)
                }
            });
            return;
        }
        use pgwarden::http::client::{request_with_timeout, Target};
        let target = Target::Tcp(([127, 0, 0, 1], self.client_port).into());
        super::eventually(Duration::from_secs(30), "etcd answers /health", || {
            match request_with_timeout(&target, "GET", "/health", &[], Duration::from_secs(2)) {
                Ok(r) if r.status == 200 && r.body.contains("true") => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// The index in `members` (one cluster) of the raft leader, as the members say.
    pub async fn leader_of(members: &[Etcd]) -> usize {
        for (i, m) in members.iter().enumerate() {
            let mut c = etcd_client::Client::connect([m.url()], None).await.unwrap();
            let st = c.status().await.unwrap();
            if st.header().map(|h| h.member_id()) == Some(st.leader()) {
                return i;
            }
        }
        panic!("no etcd member says it leads");
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
