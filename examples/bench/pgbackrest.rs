//! pgBackRest (Debian's 2.45) as the reference for full backups and restores: a posix
//! repository on the same disk, the same process count and codec level as pgwarden's
//! (`--process-max=2 --compress-type=gz --compress-level=1`), `start-fast` like
//! pgwarden's fast checkpoint, and no archive check (pgwarden archives the WAL).

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgBackRest {
    conf: PathBuf,
    repo: PathBuf,
}

impl PgBackRest {
    /// Configures a repository under `dir` for the cluster `w` runs, and creates the
    /// stanza; `None` (said) when pgBackRest is missing or refuses.
    pub fn setup(dir: &Path, w: &Warden, processes: usize) -> Option<PgBackRest> {
        let root = dir.join("pgbackrest");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let conf = root.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-path={r}/repo\nlog-path={r}/log\nlock-path={r}/lock\n\
                 log-level-console=warn\nlog-level-file=off\ncompress-type=gz\ncompress-level=1\n\
                 process-max={processes}\nstart-fast=y\narchive-check=n\nrepo1-retention-full=99\n\n\
                 [bench]\npg1-path={pg}\npg1-port={port}\npg1-socket-path={sock}\npg1-user=postgres\n",
                r = root.display(),
                pg = w.pgdata.display(),
                port = w.port,
                sock = w.dir.join("sock").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let b = PgBackRest {
            conf,
            repo: root.join("repo"),
        };
        match b.command(&["stanza-create"]).output() {
            Ok(out) if out.status.success() => Some(b),
            Ok(out) => {
                println!(
                    "(pgBackRest skipped: stanza-create failed: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("(pgBackRest skipped: {e}; `bash scripts/install-deps.sh --bench`)");
                None
            }
        }
    }

    /// `pgbackrest <args>` as the postgres user (through runuser when root, so that
    /// /usr/bin/time still counts every process of it).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbackrest"]);
            c
        } else {
            Command::new("pgbackrest")
        };
        c.arg(format!("--config={}", self.conf.display()))
            .arg("--stanza=bench")
            .args(args)
            .env("PGPASSWORD", "bench");
        c
    }

    /// A full backup; its cost and the bytes it stored.
    pub fn backup(&self) -> (Cost, u64) {
        let before = du(&self.repo.join("backup"));
        let c = timed(&mut self.command(&["backup", "--type=full"]));
        (c, du(&self.repo.join("backup")).saturating_sub(before))
    }

    /// Restores the latest backup into `dest` (made empty, owned by postgres): the
    /// files only, no recovery.
    pub fn restore(&self, dest: &Path) -> Cost {
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest).unwrap();
        std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        if let Ok(Some(u)) = nix::unistd::User::from_name("postgres") {
            nix::unistd::chown(dest, Some(u.uid), Some(u.gid)).unwrap();
        }
        timed(&mut self.command(&[
            "restore",
            &format!("--pg1-path={}", dest.display()),
            "--type=none",
        ]))
    }
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
