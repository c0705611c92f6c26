//! WAL archiving and restore against real components: PostgreSQL, and Garage for S3 or
//! a directory for the file backend.

mod common;

use common::garage::Garage;
use common::*;
use pgwarden::wal::storage::Storage;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An archive location plus the environment a client needs for it.
enum Store {
    S3(Garage),
    Fs(tempfile::TempDir),
}

impl Store {
    fn s3() -> Store {
        Store::S3(Garage::start())
    }
    fn fs() -> Store {
        let d = test_dir();
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        Store::Fs(d)
    }
    fn url(&self) -> String {
        match self {
            Store::S3(g) => format!("s3://{}/pgwarden-test", g.bucket),
            Store::Fs(d) => format!("file://{}", d.path().display()),
        }
    }
    fn configure(&self, pg: &mut Instance, server: &str) {
        pg.set("PGWARDEN_ARCHIVE_URL", self.url())
            .set("PGWARDEN_ARCHIVE_NAME", server);
        if let Store::S3(g) = self {
            for (k, v) in g.env() {
                pg.set(k, v);
            }
        }
    }
    /// The library's view of the archive, to inspect what was stored.
    async fn open(
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
        let backend = cfg.open().await.unwrap();
        (cfg, backend)
    }
}

fn bindir() -> PathBuf {
    pgwarden::settings::resolve_bindir(None, None).unwrap()
}

fn pgbench(pg: &Instance, args: &[&str]) {
    let out = Command::new(bindir().join("pgbench"))
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
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
async fn switch_and_wait_archived(pg: &Instance) -> String {
    let client = pg.connect().await;
    let seg: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let last: String = row.get(0);
        if last.as_str() >= seg.as_str() && last.len() == 24 {
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

/// Every segment from the first archived to `last` is in the archive.
async fn assert_contiguous(store: &Store, server: &str, last: &str) {
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
fn base_backup(pg: &Instance, dest: &Path) {
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

async fn archive_then_restore_a_new_cluster(store: Store) {
    let tmp = test_dir();
    let mut primary = Instance::primary(tmp.path(), "wal-primary");
    store.configure(&mut primary, "cluster1");
    primary.start().wait_ready();
    pgbench(&primary, &["-i", "-q", "-s", "2"]);
    switch_and_wait_archived(&primary).await;

    let restored_dir = tmp.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    let backup = restored_dir.join("data");
    base_backup(&primary, &backup);

    // Work after the base backup, under load, then every row committed must come back.
    pgbench(&primary, &["-c", "2", "-t", "300", "-n"]);
    let client = primary.connect().await;
    client
        .batch_execute("CREATE TABLE after_backup AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let history: i64 = client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 600);
    let last = switch_and_wait_archived(&primary).await;
    let failed: i64 = client
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "log:\n{}", primary.log());
    assert_contiguous(&store, "cluster1", &last).await;
    primary.stop();

    // A new cluster from the base backup plus the archive: recovery to the end (latest).
    std::fs::write(backup.join("recovery.signal"), "").unwrap();
    let mut restored = Instance::new(tmp.path(), "restored");
    store.configure(&mut restored, "cluster1");
    restored.pgdata = backup.clone();
    restored.set("PGDATA", backup.display().to_string());
    // Ready (read-only) comes once consistent; primary once the archive is replayed.
    restored
        .start()
        .wait_for("/primary", 200, Duration::from_secs(120));
    assert!(
        restored.log().contains("restored"),
        "WAL came from the archive"
    );
    let client = restored.connect().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM after_backup", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    let h: i64 = client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(h, 600, "every committed transaction is back");
    assert_eq!(restored.status().role, pgwarden::settings::Role::Primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_archive_then_restore_a_new_cluster() {
    archive_then_restore_a_new_cluster(Store::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_archive_then_restore_a_new_cluster() {
    archive_then_restore_a_new_cluster(Store::fs()).await;
}

/// A real finished segment copied out of a running cluster's pg_wal.
async fn real_segment(tmp: &Path) -> (String, Vec<u8>) {
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

async fn cli_faults(store: Store) {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let mut cli = Instance::new(tmp.path(), "cli");
    store.configure(&mut cli, "faults");
    let work = tmp.path().join("pgdata-like/pg_wal");
    std::fs::create_dir_all(&work).unwrap();
    let seg = work.join(&name);
    std::fs::write(&seg, &data).unwrap();
    let seg_arg = seg.display().to_string();

    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success(), "{out}");
    assert!(out.contains("Uploaded"), "{out}");
    // Pushing the same content again succeeds without uploading.
    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success() && out.contains("AlreadyArchived"), "{out}");
    // Different content under the same name is refused, and the archive keeps the first.
    let mut other = data.clone();
    other[100_000] ^= 0xFF;
    std::fs::write(&seg, &other).unwrap();
    let (code, out) = cli.run_cli(&["wal-archive", &seg_arg]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(out.contains("refusing to overwrite"), "{out}");

    // Restore is byte for byte.
    let dest = tmp.path().join("restored-seg");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
    assert!(code.success(), "{out}");
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "restored file differs"
    );

    // A missing file: exit 1, and no file.
    let missing = tmp.path().join("missing");
    let (code, out) = cli.run_cli(&[
        "wal-restore",
        "0000000100000000000000EE",
        &missing.display().to_string(),
    ]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(!missing.exists());

    // A corrupted object is refused and %p is not created.
    let (cfg, _) = store.open("faults").await;
    let key = format!(
        "{}.zst",
        pgwarden::wal::names::WalName::parse(&name)
            .unwrap()
            .key(&cfg.base())
    );
    let garbage = zstd::bulk::compress(&vec![7u8; data.len()], 1).unwrap();
    match &store {
        Store::Fs(d) => std::fs::write(d.path().join(&key), &garbage).unwrap(),
        Store::S3(g) => raw_put(g, &key, garbage).await,
    }
    let corrupt_dest = tmp.path().join("corrupt");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &corrupt_dest.display().to_string()]);
    assert!(!code.success(), "{out}");
    assert!(out.contains("corrupt"), "{out}");
    assert!(!corrupt_dest.exists(), "a refused object leaves no file");
}

/// Overwrites an object behind pgwarden's back, as a broken disk or a bad actor would.
async fn raw_put(g: &Garage, key: &str, body: Vec<u8>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_push_and_fetch_refuse_conflicts_corruption_and_report_missing() {
    cli_faults(Store::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_push_and_fetch_refuse_conflicts_corruption_and_report_missing() {
    cli_faults(Store::fs()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_within_the_timeout() {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let seg = tmp.path().join(&name);
    std::fs::write(&seg, data).unwrap();
    let mut cli = Instance::new(tmp.path(), "unreachable");
    cli.set("PGWARDEN_ARCHIVE_URL", "s3://nowhere/x")
        .set("PGWARDEN_ARCHIVE_TIMEOUT", "3")
        .set(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .set("AWS_ACCESS_KEY_ID", "GKnothing")
        .set("AWS_SECRET_ACCESS_KEY", "nothing")
        .set("AWS_REGION", "garage");
    let t0 = Instant::now();
    let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
    assert_eq!(code.code(), Some(1), "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "it must not hang: {:?}",
        t0.elapsed()
    );
    // Outside standby mode a storage failure aborts recovery rather than ending it early.
    let (code, out) = cli.run_cli(&[
        "wal-restore",
        &name,
        &tmp.path().join("x").display().to_string(),
    ]);
    assert_eq!(code.code(), Some(255), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_of_another_cluster_is_refused() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut cli = Instance::new(tmp.path(), "mix");
    store.configure(&mut cli, "shared-name");
    for (i, dir) in ["one", "two"].iter().enumerate() {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (name, data) = real_segment(&d).await;
        let seg = d.join("pgdata/pg_wal").join(&name);
        std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
        std::fs::write(&seg, data).unwrap();
        let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
        if i == 0 {
            assert!(code.success(), "{out}");
        } else {
            assert_eq!(code.code(), Some(1), "{out}");
            assert!(out.contains("refusing to mix"), "{out}");
        }
    }
}
