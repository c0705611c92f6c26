//! Helpers for the WAL tests: an archive location (Garage or a directory), real WAL
//! segments, and switching/waiting on the archiver.

use super::garage::Garage;
use super::*;
use pgwarden::wal::storage::Storage;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An archive location plus the environment a client needs for it.
pub enum Store {
    S3(Garage),
    Fs(tempfile::TempDir),
}

impl Store {
    pub fn s3() -> Store {
        Store::S3(Garage::start())
    }
    pub fn fs() -> Store {
        let d = test_dir();
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        Store::Fs(d)
    }
    /// The directory of a volume archive.
    pub fn root(&self) -> &Path {
        match self {
            Store::Fs(d) => d.path(),
            Store::S3(_) => panic!("an archive on a volume has a root; this one is in S3"),
        }
    }
    pub fn url(&self) -> String {
        match self {
            Store::S3(g) => format!("s3://{}/pgwarden-test", g.bucket),
            Store::Fs(d) => format!("file://{}", d.path().display()),
        }
    }
    pub fn configure(&self, pg: &mut Instance, server: &str) {
        pg.set("PGWARDEN_ARCHIVE_URL", self.url())
            .set("PGWARDEN_ARCHIVE_NAME", server);
        if let Store::S3(g) = self {
            for (k, v) in g.env() {
                pg.set(k, v);
            }
        }
    }
    /// The library's view of the archive, to inspect what was stored.
    pub async fn open(
        &self,
        server: &str,
    ) -> (
        pgwarden::wal::ArchiveConfig,
        pgwarden::wal::storage::Backend,
    ) {
        if let Store::S3(g) = self {
            for (k, v) in g.env() {
                std::env::set_var(k, v);
            }
        }
        let args = pgwarden::wal::ArchiveArgs {
            archive_url: Some(self.url()),
            archive_compression: "zstd".into(),
            archive_name: Some(server.into()),
            archive_timeout: 30,
            ..Default::default()
        };
        let cfg = pgwarden::wal::ArchiveConfig::from_args(&args, server)
            .unwrap()
            .unwrap();
        let backend = cfg.open(None).await.unwrap();
        (cfg, backend)
    }
}

/// The run's PostgreSQL binaries (see [`super::pg_bindir`]).
pub fn bindir() -> PathBuf {
    super::pg_bindir()
}

pub fn pgbench(pg: &Instance, args: &[&str]) {
    pgbench_port(pg.port, args);
}

/// pgbench against the postgres database on `port` (usable from another thread).
pub fn pgbench_port(port: u16, args: &[&str]) {
    let out = Command::new(bindir().join("pgbench"))
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Switches to a new segment and waits until the finished one is archived; returns it.
pub async fn switch_and_wait_archived(pg: &Instance) -> String {
    switch_and_wait_archived_within(pg, Duration::from_secs(60)).await
}

/// Like [`switch_and_wait_archived`], with a deadline for slow cases (an outage).
pub async fn switch_and_wait_archived_within(pg: &Instance, timeout: Duration) -> String {
    let client = pg.connect().await;
    // A switch on a segment nothing was written to does nothing (just after a backup,
    // which ends with a switch): postgres returns the position after that segment's
    // header, which pg_walfile_name names as the empty segment, never archived. The
    // segment finished last is then the one before.
    let seg: String = client
        .query_one(
            "SELECT CASE WHEN (pg_walfile_name_offset(l)).file_offset <= 40 \
                         THEN pg_walfile_name(l - 41) ELSE pg_walfile_name(l) END \
             FROM (SELECT pg_switch_wal() AS l) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let last: String = row.get(0);
        // After a backup the last archived file may be its `.backup` file, named after
        // the segment it started in and archived after that segment.
        if last.get(..24).is_some_and(|l| l >= seg.as_str()) {
            return seg;
        }
        assert!(
            Instant::now() < deadline,
            "{seg} not archived (last {last}, failures {}); log:\n{}",
            row.get::<_, i64>(1),
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Downloads and verifies every archived segment: none may be partial or corrupt.
pub async fn assert_all_restorable(store: &Store, server: &str) -> usize {
    let (cfg, backend) = store.open(server).await;
    let objects = backend
        .list(&format!("{}/wals/", cfg.base()), 100_000)
        .await
        .unwrap();
    let mut n = 0;
    let scratch = tempfile::tempdir().unwrap();
    let dir = pgwarden::wal::local::LocalDir::open(scratch.path(), None).unwrap();
    for o in objects {
        let Some((name, _)) = o
            .key
            .rsplit('/')
            .next()
            .and_then(pgwarden::wal::compress::split_codec)
        else {
            continue;
        };
        pgwarden::wal::restore::fetch(&cfg, &backend, &name, &dir, "restored")
            .await
            .unwrap_or_else(|e| panic!("{} is not a valid archived file: {e}", o.key));
        n += 1;
    }
    n
}

/// Every segment from the first archived to `last` is in the archive.
pub async fn assert_contiguous(store: &Store, server: &str, last: &str) {
    let (cfg, backend) = store.open(server).await;
    let objects = backend
        .list(&format!("{}/wals/", cfg.base()), 100_000)
        .await
        .unwrap();
    let mut segnos: Vec<u64> = objects
        .iter()
        .filter_map(|o| pgwarden::wal::compress::split_codec(o.key.rsplit('/').next()?))
        .filter(|(n, _)| n.kind == pgwarden::wal::names::WalKind::Segment)
        .map(|(n, _)| n.segno(16 << 20).unwrap())
        .collect();
    segnos.sort();
    let last = pgwarden::wal::names::WalName::parse(last)
        .unwrap()
        .segno(16 << 20)
        .unwrap();
    assert_eq!(
        segnos.last(),
        Some(&last),
        "the last switched segment is archived"
    );
    let expected: Vec<u64> = (segnos[0]..=last).collect();
    assert_eq!(segnos, expected, "no segment is missing");
}

/// `pg_basebackup -X none` of `pg`: the WAL it needs must come from the archive.
pub fn base_backup(pg: &Instance, dest: &Path) {
    let out = Command::new(bindir().join("pg_basebackup"))
        .arg("-D")
        .arg(dest)
        .args([
            "-X",
            "none",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "replicator",
        ])
        .env("PGPASSWORD", REPLICATION_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real finished segment copied out of a running cluster's pg_wal.
pub async fn real_segment(tmp: &Path) -> (String, Vec<u8>) {
    let mut pg = Instance::new(tmp, "segsource");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "1"]);
    let client = pg.connect().await;
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let data = std::fs::read(pg.pgdata.join("pg_wal").join(&name)).unwrap();
    (name, data)
}

/// An instance, not started, whose empty PGDATA is to be restored from server `from`
/// of `store` (it archives nowhere).
pub fn restoring(tmp: &Path, store: &Store, from: &str) -> Instance {
    let mut pg = Instance::primary(tmp, "restored");
    pg.set("PGWARDEN_RESTORE_URL", store.url())
        .set("PGWARDEN_RESTORE_NAME", from);
    pg
}

/// An instance `name`, not started, whose empty PGDATA is to be restored from server
/// `from` of `store`, archiving into `store` as `name`.
pub fn restoring_as(tmp: &Path, store: &Store, from: &str, name: &str) -> Instance {
    let mut pg = Instance::primary(tmp, name);
    store.configure(&mut pg, name);
    pg.set("PGWARDEN_RESTORE_URL", store.url())
        .set("PGWARDEN_RESTORE_NAME", from);
    pg
}

/// Overwrites an object behind pgwarden's back, as a broken disk or a bad actor would.
pub async fn raw_put(g: &Garage, key: &str, body: Vec<u8>) {
    let creds = aws_sdk_s3::config::Credentials::new(&g.key_id, &g.secret, None, None, "test");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("garage"))
        .endpoint_url(g.endpoint())
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
        .put_object()
        .bucket(&g.bucket)
        .key(key)
        .metadata("pgwarden-sha256", "0".repeat(64))
        .body(body.into())
        .send()
        .await
        .unwrap();
}

/// A running primary archiving into `store` as server `name`, in gzip (barman-cloud
/// 3.4 reads no zstd), with `conf` added to its settings.
pub fn gzip_primary(tmp: &Path, store: &Store, name: &str, conf: &str) -> Instance {
    let mut pg = Instance::primary(tmp, name);
    let mut text = std::fs::read_to_string(&pg.user_conf).unwrap();
    text.push_str(conf);
    std::fs::write(&pg.user_conf, text).unwrap();
    store.configure(&mut pg, name);
    pg.set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip");
    pg.start().wait_ready();
    pg
}

/// Creates table `t` holding 1 to `rows`.
pub async fn create_t(pg: &Instance, rows: i64) {
    pg.connect()
        .await
        .batch_execute(&format!(
            "CREATE TABLE t AS SELECT g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
}

/// The rows in table `t`.
pub async fn count_t(pg: &Instance) -> i64 {
    pg.connect()
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

/// The archived object of segment `seg` of server `server` in the volume `root`.
pub fn archived(root: &Path, server: &str, seg: &str) -> PathBuf {
    let dir = root.join(server).join("wals").join(&seg[..16]);
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name == seg
                || (name.starts_with(&format!("{seg}."))
                    && !name.contains(".backup")
                    && !name.ends_with(".sha256"))
        })
        .unwrap_or_else(|| panic!("{seg} is not in {}", dir.display()))
}

/// `pgwarden backup` on `pg`; returns the backup's JSON.
pub fn take_backup(pg: &Instance) -> serde_json::Value {
    let (code, out) = pg.run_cli(&["backup"]);
    assert!(code.success(), "backup failed: {out}");
    serde_json::from_str(out.trim()).unwrap()
}

/// A primary archiving (gzip) to `store` as server `src`, with a backup and then `n` more segments, each with
/// 100 more rows of `t`; returns it and the segments archived after the backup.
pub async fn backup_then_segments(
    tmp: &Path,
    store: &Store,
    n: usize,
) -> (Instance, serde_json::Value, Vec<String>) {
    let pg = gzip_primary(tmp, store, "src", "");
    create_t(&pg, 1000).await;
    let info = take_backup(&pg);
    let mut segs = Vec::new();
    for i in 0..n as i64 {
        pg.connect()
            .await
            .batch_execute(&format!(
                "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
                1001 + i * 100,
                1000 + (i + 1) * 100
            ))
            .await
            .unwrap();
        segs.push(switch_and_wait_archived(&pg).await);
    }
    (pg, info, segs)
}
