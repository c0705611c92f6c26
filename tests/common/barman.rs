//! barman-cloud (Debian's barman-cli-cloud) against a Garage archive: run its
//! commands, and start postgres on what `barman-cloud-restore` restored, recovering
//! through `barman-cloud-wal-restore` (barman-cloud writes no recovery settings: the
//! caller does, as CloudNativePG does).

use super::garage::Garage;
use super::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a barman-cloud command against `g` (`--endpoint-url` added; the test
/// instances' password for `barman-cloud-backup`'s connection); returns whether it
/// succeeded and its output.
pub fn try_run(g: &Garage, args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(["--endpoint-url", &g.endpoint()])
        .args(&args[1..])
        .envs(g.env())
        .env("AWS_DEFAULT_REGION", "garage")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (is barman-cli-cloud installed?)", args[0]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// [`try_run`], failing the test when the command fails; returns its output.
pub fn run(g: &Garage, args: &[&str]) -> String {
    let (ok, text) = try_run(g, args);
    assert!(ok, "{args:?}: {text}");
    text
}

/// postgres recovering a backup `barman-cloud-restore` put in `dest`; stopped (by the
/// pid in its postmaster.pid) when dropped.
pub struct Recovering {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    pub dest: PathBuf,
    /// Its server log.
    pub log: PathBuf,
}

impl Recovering {
    /// Starts postgres on `dest` with `recovery.signal` and a `restore_command` reading
    /// server `server` of `url` in `g` with barman-cloud-wal-restore. `also_owned`: more
    /// directories postgres must own (restored tablespaces, which are not under
    /// `dest`). `tmp` must be a test directory.
    pub fn start(
        tmp: &Path,
        g: &Garage,
        url: &str,
        server: &str,
        dest: &Path,
        also_owned: &[&Path],
    ) -> Recovering {
        let port = free_port();
        let sock = scratch_dir(tmp);
        let log = tmp.join(format!(
            "{}.log",
            dest.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(
            dest.join("postgresql.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 restore_command = 'barman-cloud-wal-restore --endpoint-url {} {url} {server} %f %p'\n\
                 hba_file = '{}/pg_hba.conf'\nident_file = '{}/pg_ident.conf'\n",
                sock.display(),
                g.endpoint(),
                dest.display(),
                dest.display()
            ),
        )
        .unwrap();
        std::fs::write(dest.join("postgresql.auto.conf"), "").unwrap();
        std::fs::write(dest.join("recovery.signal"), "").unwrap();
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut pg_ctl = Command::new(pg_bindir().join("pg_ctl"));
        pg_ctl
            .args(["-D", &dest.display().to_string(), "-l"])
            .arg(&log)
            .args(["-w", "-t", "120", "start"])
            .envs(g.env())
            .env("AWS_DEFAULT_REGION", "garage");
        if let Some((uid, gid)) = postgres_ids() {
            let owner = pgwarden::fsutil::Owner { uid, gid };
            for d in std::iter::once(dest).chain(also_owned.iter().copied()) {
                pgwarden::fsutil::chown_tree(d, owner).unwrap();
            }
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
            pg_ctl.uid(uid).gid(gid);
        }
        let out = pg_ctl.output().unwrap();
        let r = Recovering {
            port,
            dest: dest.to_path_buf(),
            log,
        };
        assert!(
            out.status.success(),
            "pg_ctl: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            r.log()
        );
        r
    }

    /// Its server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A view of it as an [`Instance`], to connect to it (the restored cluster has the
    /// source's password).
    pub fn view(&self, tmp: &Path) -> Instance {
        let mut v = Instance::new(tmp, &format!("{}-view", self.port));
        v.port = self.port;
        v
    }

    /// Waits until recovery has ended and the server accepts writes.
    pub async fn wait_promoted(&self, tmp: &Path) {
        let v = self.view(tmp);
        let client = v.connect().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let r = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
            match r {
                Ok(row) if !row.get::<_, bool>(0) => return,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "recovery did not end: {other:?}\n{}",
                    self.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Recovering {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dest.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
    }
}
