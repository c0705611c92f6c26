//! Delta restore and resumable downloads (issue 19, items 3 and 4), against real
//! PostgreSQL and Garage.
//!
//! - A part's download cut midway (a TCP proxy in front of Garage closes the
//!   connection) resumes from the byte received, and is refused when the object
//!   changed in between.
//! - A replica rebuilt from the archive (`pgwarden reinit`, PGWARDEN_CLONE_FROM=archive)
//!   keeps the files that match the latest backup's manifest and fetches the rest; so
//!   does a diverged former primary whose rewind failed; a directory of another
//!   cluster is refused, untouched.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::garage::Garage;
use common::wal::*;
use common::*;
use ha::{count, execute};
use pgwarden::bootstrap::restore::{delta, extract};
use pgwarden::wal::storage::{Backend, Storage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy in front of Garage that, when armed, closes the next connection once it
/// has passed `cut` bytes of responses, then holds new connections until `open`; and
/// that, when slowed, passes responses at a set rate.
struct CuttingProxy {
    port: u16,
    cut: Arc<AtomicU64>,
    cuts: Arc<tokio::sync::Notify>,
    gate: tokio::sync::watch::Sender<bool>,
    /// Bytes a second the responses pass at (0: as fast as they come).
    rate: Arc<AtomicU64>,
}

impl CuttingProxy {
    async fn start(upstream: u16) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(tokio::sync::Notify::new());
        let (gate, gate_rx) = tokio::sync::watch::channel(true);
        let rate = Arc::new(AtomicU64::new(0));
        let (c, n, r) = (cut.clone(), cuts.clone(), rate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut open = gate_rx.clone();
                let (cut, cuts, rate) = (c.clone(), n.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = open.wait_for(|o| *o).await;
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    // Any connection, also one the client keeps alive in its pool:
                    // the first response bytes after arming start the count.
                    let down = async {
                        let mut budget: Option<u64> = None;
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = sr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return false;
                            }
                            if budget.is_none() {
                                budget = Some(cut.swap(0, Ordering::SeqCst)).filter(|b| *b > 0);
                            }
                            let n = budget.map_or(n, |b| n.min(b as usize));
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return false;
                            }
                            let rate = rate.load(Ordering::SeqCst);
                            if rate > 0 {
                                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64))
                                    .await;
                            }
                            if let Some(b) = budget.as_mut() {
                                *b -= n as u64;
                                if *b == 0 {
                                    return true;
                                }
                            }
                        }
                    };
                    let cut_here = tokio::select! { _ = up => false, c = down => c };
                    if cut_here {
                        cuts.notify_one();
                    }
                });
            }
        });
        CuttingProxy {
            port,
            cut,
            cuts,
            gate,
            rate,
        }
    }

    /// Cuts the next connection after `bytes` of response; new connections wait until
    /// [`CuttingProxy::open`] when `hold`.
    fn arm(&self, bytes: u64, hold: bool) {
        self.cut.store(bytes, Ordering::SeqCst);
        if hold {
            // Held only after the cut connection was let through.
            let gate = self.gate.clone();
            let cuts = self.cuts.clone();
            tokio::spawn(async move {
                cuts.notified().await;
                gate.send_replace(false);
            });
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Passes responses at `bytes_per_second` (0: at full speed).
    fn slow_to(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::SeqCst);
    }
}

/// Bytes that do not compress, so that the tar.gz is about as large.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A single-member gzip tar of `files`, as the backup engine writes a part.
fn tar_gz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    let mut tar = tar::Builder::new(gz);
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// The S3 backend as pgwarden opens it, through `endpoint`.
async fn s3_through(g: &Garage, endpoint: &str) -> Backend {
    for (k, v) in g.env() {
        std::env::set_var(k, v);
    }
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
    let args = pgwarden::wal::ArchiveArgs {
        archive_url: Some(format!("s3://{}/pgwarden-test", g.bucket)),
        archive_compression: "gzip".into(),
        archive_name: Some("p".into()),
        archive_timeout: 30,
        ..Default::default()
    };
    pgwarden::wal::ArchiveConfig::from_args(&args, "p")
        .unwrap()
        .unwrap()
        .open(None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_midway_resumes_and_a_part_changed_meanwhile_is_refused() {
    let g = Garage::start();
    let proxy =
        CuttingProxy::start(g.endpoint().rsplit(':').next().unwrap().parse().unwrap()).await;
    let s3 = s3_through(&g, &format!("http://127.0.0.1:{}", proxy.port)).await;
    let files = [
        ("base/1/1", noise(3 << 20, 1)),
        ("base/1/2", noise(1 << 20, 2)),
        ("PG_VERSION", b"18\n".to_vec()),
    ];
    let part = tar_gz(&files);
    let key = "pgwarden-test/p/base/20260101T000000/data.tar.gz";
    s3.put_new(key, part.clone().into(), &"0".repeat(64))
        .await
        .unwrap();

    // Cut twice, a third of the way in and again: the restore completes, byte for byte,
    // and its progress counts each byte of the part once.
    let tmp = test_dir();
    let dest = tmp.path().join("resumed");
    proxy.arm(part.len() as u64 / 3, false);
    let progress = Arc::new(pgwarden::progress::Progress::default());
    let ex = tokio::spawn({
        let (s3, dest, progress) = (s3.clone(), dest.clone(), progress.clone());
        async move {
            extract::extract(
                &s3,
                key,
                extract::TarCompression::Gzip,
                &progress,
                &Default::default(),
                &dest,
            )
            .await
        }
    });
    proxy.cuts.notified().await;
    proxy.arm(part.len() as u64 / 4, false);
    let (sha, size) = ex.await.unwrap().expect("the cut download resumes");
    tokio::time::timeout(Duration::from_secs(5), proxy.cuts.notified())
        .await
        .expect("the resumed download was cut again");
    assert_eq!(size, part.len() as u64);
    assert_eq!(progress.done(), part.len() as u64);
    assert_eq!(
        sha,
        pgwarden::wal::hex(&<sha2::Sha256 as sha2::Digest>::digest(&part))
    );
    for (name, body) in &files {
        assert!(
            std::fs::read(dest.join(name)).unwrap() == *body,
            "{name} differs"
        );
    }

    // Cut, and the object replaced before the download resumes: refused, never spliced.
    let dest = tmp.path().join("changed");
    proxy.arm(part.len() as u64 / 3, true);
    let ex = tokio::spawn({
        let (s3, dest) = (s3.clone(), dest.clone());
        async move {
            extract::extract(
                &s3,
                key,
                extract::TarCompression::Gzip,
                &Default::default(),
                &Default::default(),
                &dest,
            )
            .await
        }
    });
    // The gate closes once the cut is seen; then the object changes behind it.
    eventually(
        Duration::from_secs(30),
        "the proxy cut the download",
        || match *proxy.gate.borrow() {
            false => Ok(()),
            true => Err("not yet".into()),
        },
    );
    raw_put(&g, key, tar_gz(&[("base/1/1", noise(3 << 20, 9))])).await;
    proxy.open();
    let e = format!(
        "{:#}",
        ex.await.unwrap().expect_err("a changed part is refused")
    );
    assert!(e.contains("changed since its download began"), "{e}");

    // A volume's file replaced between two reads: refused too.
    let vol = test_dir();
    let fs = Backend::Fs(
        pgwarden::wal::storage::fs::FsStorage::new(vol.path().to_path_buf(), None).unwrap(),
    );
    fs.put_new("k", part.clone().into(), &"0".repeat(64))
        .await
        .unwrap();
    let (_, version) = fs
        .download_range("k", 0, None, None)
        .await
        .unwrap()
        .unwrap();
    let read = |store: Backend, key: &'static str, from, until, version: Option<String>| async move {
        let (mut d, _) = store
            .download_range(key, from, until, version.as_deref())
            .await
            .unwrap()
            .unwrap();
        let mut got = Vec::new();
        while let Some(b) = d.chunk().await.unwrap() {
            got.extend_from_slice(&b);
        }
        got
    };
    let got = read(fs.clone(), "k", 10, None, Some(version.clone())).await;
    assert!(got == part[10..], "a ranged read returns the rest");
    // A bounded range, on a volume and on S3 (what a delta restore reads).
    let got = read(fs.clone(), "k", 10, Some(30), Some(version.clone())).await;
    assert!(got == part[10..30], "a bounded read returns its bytes");
    let bounded = "pgwarden-test/p/bounded";
    s3.put_new(bounded, part.clone().into(), &"0".repeat(64))
        .await
        .unwrap();
    let got = read(s3.clone(), bounded, 7, Some(1000), None).await;
    assert!(got == part[7..1000], "a bounded S3 read returns its bytes");
    fs.delete("k").await.unwrap();
    fs.put_new("k", b"another".to_vec().into(), &"0".repeat(64))
        .await
        .unwrap();
    let Err(e) = fs.download_range("k", 10, None, Some(&version)).await else {
        panic!("a replaced file is read on");
    };
    assert!(
        e.to_string().contains("changed since its download began"),
        "{e}"
    );
}

/// Field `key` of the last (JSON) log line containing `needle`.
fn field(log: &str, needle: &str, key: &str) -> Option<u64> {
    let line = log.lines().rfind(|l| l.contains(needle))?;
    serde_json::from_str::<serde_json::Value>(line).ok()?[key].as_u64()
}

fn wait_rows(rt: &tokio::runtime::Handle, pg: &Instance, rows: i64) {
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(90), "the rows reach it", || {
            match rt.block_on(count(pg)) {
                Some(n) if n == rows => Ok(()),
                other => Err(format!("{other:?}\n{}", pg.log())),
            }
        })
    });
}

/// What a delta restore in `log` must have done: downloaded less than a quarter of the
/// backup (ranged reads of what differs), and checked the result against the manifest.
fn assert_read_little_and_checked(log: &str) {
    let delta = "delta restore: keeping the files";
    let (read, stored) = (
        field(log, delta, "read_bytes").unwrap_or_else(|| panic!("{log}")),
        field(log, delta, "stored_bytes").unwrap_or_else(|| panic!("{log}")),
    );
    assert!(
        read * 4 < stored,
        "a delta read {read} of the backup's {stored} bytes: {log}"
    );
    let after = &log[log.find(delta).unwrap_or(0)..];
    assert!(
        after.contains("every restored file matches the backup manifest"),
        "{log}"
    );
}

/// Waits for `needle` in `pg`'s log after `from`.
fn wait_log(pg: &Instance, from: usize, needle: &str, timeout: Duration) {
    eventually(timeout, needle, || {
        match pg.log()[from..].contains(needle) {
            true => Ok(()),
            false => Err(pg.log()[from..].to_string()),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_restores_a_stale_replica_and_a_diverged_former_primary_and_refuses_another_cluster()
{
    let rt = tokio::runtime::Handle::current();
    let tmp = test_dir();
    let store = Store::s3();
    let mut p = Instance::primary(tmp.path(), "p");
    store.configure(&mut p, "c");
    p.start().wait_ready();
    create_t(&p, 1000).await;
    // A table the later writes never touch: what a delta keeps, most of the backup
    // (rows that do not repeat, so that it is also most of the stored bytes: a ranged
    // read runs from a seek point to the last window it needs, taking what lies
    // between, and when the backup was mostly catalogs, five reads over the catalogs
    // either side changed were once 27% of it).
    // Nor does autovacuum touch them: a first vacuum rewrites every page's header, on
    // one side of a divergence and not the other.
    execute(
        &p,
        "ALTER TABLE t SET (autovacuum_enabled = off);
         CREATE TABLE still WITH (autovacuum_enabled = off) AS
           SELECT g, md5(g::text) || md5((-g)::text) || md5((7 * g)::text) AS pad
           FROM generate_series(1, 100000) g;
         CHECKPOINT",
    )
    .await;
    take_backup(&p);

    // A replica seeded from that backup, then stopped while the primary moves on.
    let mut r = Instance::replica_of(tmp.path(), "r", &p);
    store.configure(&mut r, "c");
    r.set("PGWARDEN_CLONE_FROM", "archive");
    r.start().wait_ready();
    wait_rows(&rt, &r, 1000);
    r.stop();
    execute(
        &p,
        "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g",
    )
    .await;
    take_backup(&p);
    execute(
        &p,
        "INSERT INTO t SELECT g FROM generate_series(1501, 1600) g",
    )
    .await;
    r.start().wait_ready();

    // reinit: the discarded replica is kept aside and restored over with a delta.
    let from = r.log().len();
    let started = std::time::Instant::now();
    let (code, out) = r.run_cli(&["reinit"]);
    assert!(code.success(), "{out}");
    wait_log(
        &r,
        from,
        "reinit: cloned the primary again",
        Duration::from_secs(120),
    );
    let reinit_secs = started.elapsed().as_secs_f64();
    r.wait_ready();
    wait_rows(&rt, &r, 1600);
    let log = r.log()[from..].to_string();
    assert!(log.contains("kept aside for a delta restore"), "{log}");
    let delta = "delta restore: keeping the files";
    let (kept, fetched) = (
        field(&log, delta, "kept_files").unwrap_or_else(|| panic!("{log}")),
        field(&log, delta, "fetched_files").unwrap(),
    );
    let (read, stored) = (
        field(&log, delta, "read_bytes").unwrap(),
        field(&log, delta, "stored_bytes").unwrap(),
    );
    eprintln!(
        "stale replica: kept {kept} files ({} bytes), fetched {fetched} files ({} bytes), {} bytes written, \
         {read} of the backup's {stored} bytes read; reinit {reinit_secs:.1}s",
        field(&log, delta, "kept_bytes").unwrap(),
        field(&log, delta, "fetched_bytes").unwrap(),
        field(&log, "backup extracted", "written").unwrap(),
    );
    assert!(
        kept > 100 && fetched >= 2,
        "kept {kept}, fetched {fetched}: {log}"
    );
    assert_read_little_and_checked(&log);

    // A diverged former primary: r promoted, p written to after that; p's rewind then
    // fails (r denies it pg_ls_dir), and PGWARDEN_REWIND_FAILED=reclone rebuilds p from
    // r's backup, with a delta over its own data.
    let before = r.log().len();
    let (code, out) = r.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    wait_log(
        &r,
        before,
        "the replication role is set up",
        Duration::from_secs(60),
    );
    execute(
        &r,
        "INSERT INTO t SELECT g FROM generate_series(1601, 1700) g",
    )
    .await;
    execute(
        &r,
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) FROM replicator",
    )
    .await;
    take_backup(&r);
    execute(
        &p,
        "INSERT INTO t SELECT g FROM generate_series(-100, -1) g",
    )
    .await;
    p.stop();
    p.follow(&r)
        .set("PGWARDEN_CLONE_FROM", "archive")
        .set("PGWARDEN_REWIND_FAILED", "reclone");
    // Its rewind fails; it is rebuilt from r's backup, over its own data.
    let from = p.log().len();
    p.start();
    p.wait_ready();
    wait_rows(&rt, &p, 1700);
    let log = p.log()[from..].to_string();
    let kept = field(&log, delta, "kept_files").unwrap_or_else(|| panic!("{log}"));
    eprintln!(
        "diverged former primary: kept {kept} files, fetched {} files, read {} of {} bytes",
        field(&log, delta, "fetched_files").unwrap(),
        field(&log, delta, "read_bytes").unwrap(),
        field(&log, delta, "stored_bytes").unwrap()
    );
    assert!(kept > 100, "{log}");
    assert_read_little_and_checked(&log);
    // 1700 rows, none of them the former primary's own (g < 0).
    let c = ha::client(&p.socket_dir, p.port).await.unwrap();
    let diverged: i64 = c
        .query_one("SELECT count(*) FROM t WHERE g < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(diverged, 0, "the former primary's own writes are gone");

    // A directory of another cluster: refused, naming why, untouched.
    let other = tmp.path().join("other");
    initdb_with(&pg_bindir(), &other);
    let before = tree(&other);
    let system_id: i64 = ha::client(&r.socket_dir, r.port)
        .await
        .unwrap()
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);
    let e = delta::check_copy(&other, system_id as u64, pg_major())
        .expect_err("another cluster is refused")
        .to_string();
    assert!(
        e.contains("holds the cluster with system identifier")
            && e.contains(&format!("the backup is of {system_id}")),
        "{e}"
    );
    assert_eq!(tree(&other), before, "the other cluster is untouched");
}

/// A bootstrap from a backup says how far it is while it runs (issue 19, item 7):
/// `/status` names the backup and has the bytes of its objects read so far, their
/// total (the objects' size in the archive), the rate and the time left; `/metrics`
/// has the same. A proxy slows the download so that the restore lasts seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_shows_its_progress_in_status_and_metrics() {
    let rt = tokio::runtime::Handle::current();
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else {
        unreachable!("an S3 store")
    };
    let mut p = Instance::primary(tmp.path(), "p");
    store.configure(&mut p, "c");
    p.start().wait_ready();
    create_t(&p, 1000).await;
    // Hex digits compress to about half: a data part of megabytes.
    execute(
        &p,
        "CREATE TABLE noise AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h \
         FROM generate_series(1, 150000) g; CHECKPOINT",
    )
    .await;
    let info = take_backup(&p);
    let id = info["backup_id"].as_str().unwrap().to_owned();
    // Its data parts' size in the archive (read from backup.info, not listed here: the
    // S3 settings are process environment, shared with the parallel tests).
    let stored = info["size"].as_u64().unwrap();
    assert!(stored > 2 << 20, "a backup of megabytes: {stored} bytes");

    let proxy =
        CuttingProxy::start(g.endpoint().rsplit(':').next().unwrap().parse().unwrap()).await;
    // About four seconds of download whatever the machine: the samples below see it
    // under way.
    proxy.slow_to(stored / 4);
    let mut r = restoring_as(tmp.path(), &store, "c", "r");
    r.set(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    );
    r.start();
    let under_way = tokio::task::block_in_place(|| {
        let mut seen = None;
        eventually(
            Duration::from_secs(120),
            "the restore under way in /status",
            || {
                let body = r.try_get("/status").ok_or("pgwarden is not up yet")?.body;
                let doc: pgwarden::http::StatusDoc =
                    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
                match doc.restore {
                    Some(run) if run.progress.bytes > 0 && run.progress.bytes < stored => {
                        let metrics = r.get("/metrics").body;
                        seen = Some((run, metrics));
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            },
        );
        seen.unwrap()
    });
    let (run, metrics) = under_way;
    assert_eq!(run.backup_id, id);
    assert_eq!(
        run.progress.total_bytes, stored,
        "the total is the objects' size"
    );
    assert!(run.progress.bytes_per_second > 0.0, "{run:?}");
    assert!(
        run.progress.seconds_left.is_some_and(|s| s > 0.0),
        "{run:?}"
    );
    assert!(metrics.contains("pgwarden_restore_running 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("pgwarden_restore_total_bytes {stored}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgwarden_restore_read_bytes "),
        "{metrics}"
    );

    // Once it is done, no restore is shown, and every row is there.
    proxy.slow_to(0);
    r.wait_for("/primary", 200, Duration::from_secs(120));
    wait_rows(&rt, &r, 1000);
    assert!(r.status().restore.is_none());
    let metrics = r.get("/metrics").body;
    assert!(metrics.contains("pgwarden_restore_running 0"), "{metrics}");
    assert!(
        !metrics.contains("pgwarden_restore_total_bytes"),
        "{metrics}"
    );
}
