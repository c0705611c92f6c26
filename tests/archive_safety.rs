//! Archive safety (issue 9): the daemon lends no root powers, corrupt objects are
//! refused whatever their codec and metadata, concurrent pushes of one name have one
//! winner, shutdown is bounded whatever the archive does, objects are readable by
//! postgres, an unmounted archive volume is refused, a second pgwarden is refused,
//! no secret reaches postgres, and each segment is uploaded once.

mod common;

use common::wal::*;
use common::*;
use nix::sys::signal::Signal;
use pgwarden::http::client::{self, Target};
use pgwarden::wal::storage::Storage;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn post(pg: &Instance, route: &str) -> client::Response {
    client::request(
        &Target::Unix(pg.socket_dir.join("pgwarden.sock")),
        "POST",
        route,
        &[],
    )
    .unwrap_or_else(|e| panic!("POST {route}: {e}"))
}

fn enc(p: &Path) -> String {
    client::encode(&p.display().to_string())
}

/// Every key under the server's `wals/`.
async fn archived_names(store: &Store, server: &str) -> Vec<String> {
    let (cfg, backend) = store.open(server).await;
    backend
        .list(&format!("{}/wals/", cfg.base()), 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// The defect: the daemon, running as root, archived a symlink to a root-only file
/// and restored a file anywhere it was told, for whoever reached its socket (postgres,
/// or a SQL superuser through COPY … TO PROGRAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_touches_only_the_instances_own_wal_files() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = Instance::primary(tmp.path(), "confined");
    store.configure(&mut pg, "confined");
    pg.start().wait_ready();
    let seg = switch_and_wait_archived(&pg).await;

    let private = tmp.path().join("root-only");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = private.join("secret");
    std::fs::write(&secret, "the root password is hunter2").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wal = pg.pgdata.join("pg_wal");

    // Archive a symlink, named as a segment, to the root-only file.
    let link = wal.join("0000000100000000000000F1");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let r = post(&pg, &format!("/wal/archive?path={}", enc(&link)));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("symlink"), "{}", r.body);
    // Archive a file outside pg_wal.
    let outside = private.join("0000000100000000000000F2");
    std::fs::copy(wal.join(&seg), &outside).unwrap_or_else(|_| {
        std::fs::write(&outside, b"x").unwrap();
        0
    });
    let r = post(&pg, &format!("/wal/archive?path={}", enc(&outside)));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("outside the WAL directory"), "{}", r.body);
    let r = post(
        &pg,
        &format!(
            "/wal/archive?path={}",
            enc(&wal.join("../../root-only/0000000100000000000000F2"))
        ),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    if postgres_ids().is_some() {
        // A file in pg_wal that postgres does not own (a hard link to a root file).
        let rootfile = wal.join("0000000100000000000000F3");
        std::fs::write(&rootfile, b"root's").unwrap();
        let r = post(&pg, &format!("/wal/archive?path={}", enc(&rootfile)));
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(r.body.contains("not to the postgres user"), "{}", r.body);
    }
    let names = archived_names(&store, "confined").await;
    assert!(
        !names.iter().any(|k| k.contains("0000000100000000000000F")),
        "nothing of those reached the archive: {names:?}"
    );

    // Restore outside PGDATA, through a symlinked directory, or with "..".
    let escape = wal.join("escape");
    std::os::unix::fs::symlink(&private, &escape).unwrap();
    for dest in [
        private.join("stolen"),
        escape.join("stolen-via-link"),
        wal.join("../../root-only/stolen-via-dotdot"),
    ] {
        let r = post(
            &pg,
            &format!("/wal/restore?name={seg}&dest={}&prefetch=false", enc(&dest)),
        );
        assert_eq!(r.status, 422, "{}: {}", dest.display(), r.body);
    }
    let left: Vec<_> = std::fs::read_dir(&private)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "nothing was written there: {left:?}");

    // The same attack as a SQL superuser: COPY … TO PROGRAM runs pgwarden as postgres.
    let client = pg.connect().await;
    let stolen = private.join("via-sql");
    let e = client
        .batch_execute(&format!(
            "COPY (SELECT 1) TO PROGRAM '{} wal-restore {seg} {}'",
            bin(),
            stolen.display()
        ))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("program"), "{e:?}");
    assert!(!stolen.exists());

    // The legitimate path still works: a file directly in pg_wal.
    let r = post(
        &pg,
        &format!(
            "/wal/restore?name={seg}&dest={}&prefetch=false",
            enc(&wal.join("RECOVERYXLOG"))
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    std::fs::remove_file(wal.join("RECOVERYXLOG")).unwrap();
    for f in [&link, &escape] {
        std::fs::remove_file(f).unwrap();
    }
    let _ = std::fs::remove_file(wal.join("0000000100000000000000F3"));
}

/// Flips one bit of `data` inside a WAL record (not a page header, not zero fill).
fn flip_in_a_record(data: &mut [u8]) -> usize {
    let pos = (100_000..data.len())
        .find(|&i| i % 8192 >= 64 && data[i] != 0)
        .expect("a non-zero byte in a record");
    data[pos] ^= 0x08;
    pos
}

/// The defect: a zstd object without its SHA-256 (metadata lost, or written by
/// another tool) restored a flipped bit with exit 0, and recovery ended early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_objects_are_refused_with_or_without_metadata() {
    let tmp = test_dir();
    let store = Store::fs();
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let (name, data) = real_segment(tmp.path()).await;
    let work = tmp.path().join("src/pg_wal");
    std::fs::create_dir_all(&work).unwrap();
    let seg = work.join(&name);
    std::fs::write(&seg, &data).unwrap();

    for codec in ["zstd", "gzip", "none"] {
        let mut cli = Instance::new(tmp.path(), &format!("cli-{codec}"));
        store.configure(&mut cli, codec);
        cli.set("PGWARDEN_ARCHIVE_COMPRESSION", codec);
        let (code, out) = cli.run_cli(&["wal-archive", &seg.display().to_string()]);
        assert!(code.success(), "{out}");
        let (cfg, _) = store.open(codec).await;
        let ext = match codec {
            "zstd" => ".zst",
            "gzip" => ".gz",
            _ => "",
        };
        let key = format!(
            "{}{ext}",
            pgwarden::wal::names::WalName::parse(&name)
                .unwrap()
                .key(&cfg.base())
        );
        let object = root.path().join(&key);
        // The checksum record is lost: the object must still prove itself.
        std::fs::remove_file(format!("{}.sha256", object.display())).unwrap();
        let dest = tmp.path().join(format!("restored-{codec}"));
        let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
        assert!(code.success(), "{codec}: {out}");
        assert!(
            std::fs::read(&dest).unwrap() == data,
            "{codec}: restored file differs"
        );

        // One flipped bit: refused, exit 255 (recovery aborts, never ends early), no file.
        let mut body = std::fs::read(&object).unwrap();
        if codec == "none" {
            flip_in_a_record(&mut body);
        } else {
            let mid = body.len() / 2;
            body[mid] ^= 0x08;
        }
        std::fs::write(&object, &body).unwrap();
        let bad = tmp.path().join(format!("corrupt-{codec}"));
        let (code, out) = cli.run_cli(&["wal-restore", &name, &bad.display().to_string()]);
        assert_eq!(code.code(), Some(255), "{codec}: {out}");
        assert!(out.contains("corrupt"), "{codec}: {out}");
        assert!(!bad.exists(), "{codec}: a refused object leaves no file");
    }

    // zstd written without a frame checksum (older pgwarden), metadata lost: the WAL
    // records' own CRCs establish integrity, and catch a flipped bit.
    let mut cli = Instance::new(tmp.path(), "cli-old");
    store.configure(&mut cli, "old");
    let (cfg, _) = store.open("old").await;
    let key = format!(
        "{}.zst",
        pgwarden::wal::names::WalName::parse(&name)
            .unwrap()
            .key(&cfg.base())
    );
    let object = root.path().join(&key);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, zstd::bulk::compress(&data, 1).unwrap()).unwrap();
    let dest = tmp.path().join("restored-old");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
    assert!(code.success(), "{out}");
    let mut flipped = data.clone();
    flip_in_a_record(&mut flipped);
    std::fs::write(&object, zstd::bulk::compress(&flipped, 1).unwrap()).unwrap();
    let bad = tmp.path().join("corrupt-old");
    let (code, out) = cli.run_cli(&["wal-restore", &name, &bad.display().to_string()]);
    assert_eq!(code.code(), Some(255), "{out}");
    assert!(out.contains("CRC"), "{out}");
    assert!(!bad.exists());
}

/// Real WAL, many segments, uncompressed and without metadata (as barman-cloud
/// writes without --gzip): every record's CRC checks out, and a new cluster recovers
/// from it. Guards against the record check refusing good WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_wal_without_any_checksum_passes_the_record_check() {
    let tmp = test_dir();
    let store = Store::fs();
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let mut pg = Instance::primary(tmp.path(), "plain");
    store.configure(&mut pg, "plain");
    pg.set("PGWARDEN_ARCHIVE_COMPRESSION", "none");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "3"]);
    pgbench(&pg, &["-n", "-T", "3", "-c", "2"]);
    let last = switch_and_wait_archived(&pg).await;
    pg.stop();
    let (cfg, _) = store.open("plain").await;
    let mut segments = Vec::new();
    for key in archived_names(&store, "plain").await {
        if key.ends_with(".sha256") {
            continue;
        }
        let path = root.path().join(&key);
        let _ = std::fs::remove_file(format!("{}.sha256", path.display()));
        if let Some(n) = key
            .rsplit('/')
            .next()
            .and_then(pgwarden::wal::names::WalName::parse)
        {
            segments.push(n);
        }
    }
    assert!(segments.len() >= 3, "{segments:?}");
    let scratch = tempfile::tempdir().unwrap();
    let dir = pgwarden::wal::local::LocalDir::open(scratch.path(), None).unwrap();
    let (_, backend) = store.open("plain").await;
    for n in &segments {
        pgwarden::wal::restore::fetch(&cfg, &backend, n, &dir, "x")
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", n.name));
    }
    assert!(segments.iter().any(|n| n.name == last));

    // Into a cluster's pg_wal, only WAL of the cluster's major is restored: postgres
    // would take another major's page for the end of WAL.
    let (other, _) = other_major_bindir();
    for (major, ok) in [(pg_major(), true), (other, false)] {
        let cluster = tempfile::tempdir().unwrap();
        std::fs::write(cluster.path().join("PG_VERSION"), format!("{major}\n")).unwrap();
        std::fs::create_dir(cluster.path().join("pg_wal")).unwrap();
        let dir =
            pgwarden::wal::local::LocalDir::open(&cluster.path().join("pg_wal"), None).unwrap();
        let got =
            pgwarden::wal::restore::fetch(&cfg, &backend, &segments[0], &dir, "RECOVERYXLOG").await;
        match ok {
            true => got.unwrap(),
            false => {
                let e = got.unwrap_err().to_string();
                assert!(
                    e.contains(&format!("PostgreSQL {}'s", pg_major()))
                        && e.contains(&format!("this cluster is PostgreSQL {other}")),
                    "{e}"
                );
                assert!(!cluster.path().join("pg_wal/RECOVERYXLOG").exists());
            }
        }
    }
}

/// The defect: two different pushes of one name both succeeded on a file archive,
/// and the object and its checksum could disagree.
async fn concurrent_pushes_have_one_winner(store: Store) {
    let tmp = test_dir();
    let (name, data) = real_segment(tmp.path()).await;
    let mut other = data.clone();
    flip_in_a_record(&mut other);
    let mut files = Vec::new();
    for (i, content) in [&data, &other].into_iter().enumerate() {
        let dir = tmp.path().join(format!("writer{i}/pg_wal"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&name), content).unwrap();
        files.push(dir.join(&name));
    }
    for round in 0..15 {
        let server = format!("race{round}");
        let mut cli = Instance::new(tmp.path(), &server);
        store.configure(&mut cli, &server);
        // Started together: spawn both before waiting for either.
        let spawned: Vec<_> = files
            .iter()
            .map(|f| {
                Command::new(bin())
                    .args(["wal-archive", &f.display().to_string()])
                    .env_clear()
                    .envs(&cli.env)
                    .env("PGWARDEN_ARCHIVE_NAME", format!("{server}-b"))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = spawned
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let wins: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
        let text = |i: usize| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&outs[i].stdout),
                String::from_utf8_lossy(&outs[i].stderr)
            )
        };
        assert_eq!(wins.len(), 1, "round {round}: {}\n{}", text(0), text(1));
        let loser = 1 - wins[0];
        assert!(
            text(loser).contains("refusing to overwrite"),
            "round {round}: {}",
            text(loser)
        );
        // The object is the winner's, and verifies (its checksum record agrees).
        let dest = tmp.path().join(format!("restored-{round}"));
        cli.set("PGWARDEN_ARCHIVE_NAME", format!("{server}-b"));
        let (code, out) = cli.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
        assert!(code.success(), "round {round}: {out}");
        let winner = if wins[0] == 0 { &data } else { &other };
        assert!(std::fs::read(&dest).unwrap() == *winner, "round {round}");
        // No claim outlives the pushes (on a server that ignores If-None-Match).
        let (cfg, backend) = store.open(&format!("{server}-b")).await;
        let claims = backend
            .list(&format!("{}/claims/", cfg.base()), 10)
            .await
            .unwrap();
        assert!(claims.is_empty(), "round {round}: {claims:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_concurrent_pushes_of_one_name_have_one_winner() {
    concurrent_pushes_have_one_winner(Store::fs()).await;
}

/// Garage 2.5 ignores `If-None-Match` (pgwarden finds that out with a probe and
/// warns): there each writer claims the name before writing it. The defect: the
/// careful path was look, write, settle, look again; on a loaded machine one writer's
/// PUT landed after the other's second look, and both were told "archived".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_concurrent_pushes_of_one_name_have_one_winner() {
    concurrent_pushes_have_one_winner(Store::s3()).await;
}

/// An endpoint that accepts connections and never answers, for as long as the test.
struct BlackHole {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        BlackHole { port, stop }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The defect: with an S3 endpoint that accepts connections and never answers, a
/// SIGTERM took 75.9 s; Kubernetes kills at 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_grace_period_when_the_archive_never_answers() {
    let tmp = test_dir();
    let hole = BlackHole::start();
    let mut pg = Instance::primary(tmp.path(), "blackhole");
    pg.set("PGWARDEN_ARCHIVE_URL", "s3://bucket/x")
        .set(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", hole.port),
        )
        .set("AWS_ACCESS_KEY_ID", "GKtest")
        .set("AWS_SECRET_ACCESS_KEY", "test-secret")
        .set("AWS_REGION", "garage");
    pg.start().wait_ready();
    pg.connect()
        .await
        .batch_execute(
            "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal()",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "archiving under way", || {
        let st = pg.status();
        match st.archiver.ready_files {
            Some(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let t0 = Instant::now();
    pg.signal(Signal::SIGTERM);
    let status = pg.wait_exit(Duration::from_secs(120));
    let took = t0.elapsed();
    assert!(status.success(), "log:\n{}", pg.log());
    assert!(
        took < Duration::from_secs(30),
        "SIGTERM took {took:?}, past Kubernetes' default grace period; log:\n{}",
        pg.log()
    );
    // postgres shut down cleanly: the files are still .ready, for the next start.
    let ready = std::fs::read_dir(pg.pgdata.join("pg_wal/archive_status"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".ready")
        })
        .count();
    assert!(ready > 0, "nothing archived, nothing lost");
}

/// The defect: objects on a volume were 0600 root, so `wal-restore` as postgres
/// (a restore job, a replica bootstrap) could not read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_archive_objects_are_readable_by_the_run_as_user() {
    let Some((uid, gid)) = postgres_ids() else {
        return;
    };
    let tmp = test_dir();
    let store = Store::fs();
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let mut pg = Instance::primary(tmp.path(), "readable");
    store.configure(&mut pg, "readable");
    pg.start().wait_ready();
    let seg = switch_and_wait_archived(&pg).await;
    pg.stop();
    for key in archived_names(&store, "readable").await {
        let m = std::fs::metadata(root.path().join(&key)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o640), "{key}");
    }
    let out_dir = scratch_dir(tmp.path());
    let dest = out_dir.join("restored");
    let out = Command::new(bin())
        .args(["wal-restore", &seg, &dest.display().to_string()])
        .env_clear()
        .envs(
            pg.env
                .iter()
                .filter(|(k, _)| k.as_str() != "PGWARDEN_SOCKET_DIR"),
        )
        .uid(uid)
        .gid(gid)
        .current_dir(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), uid);
}

/// The defect: with the archive volume not mounted, pgwarden archived into the empty
/// mount point, and the identity check remembered in PGDATA was never repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmounted_archive_volume_is_refused_not_written() {
    let tmp = test_dir();
    let mount = tmp.path().join("archive");
    std::fs::create_dir(&mount).unwrap();
    std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut pg = Instance::primary(tmp.path(), "mount");
    pg.set(
        "PGWARDEN_ARCHIVE_URL",
        format!("file://{}", mount.display()),
    )
    .set("PGWARDEN_ARCHIVE_NAME", "mount");
    pg.start().wait_ready();
    switch_and_wait_archived(&pg).await;
    pg.stop();

    // The volume is gone; an empty directory stands at its mount point.
    let real = tmp.path().join("archive.real");
    std::fs::rename(&mount, &real).unwrap();
    std::fs::create_dir(&mount).unwrap();
    std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o777)).unwrap();
    pg.start().wait_ready();
    pg.connect()
        .await
        .batch_execute("CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal()")
        .await
        .unwrap();
    let error = eventually(Duration::from_secs(60), "archiving refused", || {
        let st = pg.status();
        match st.archiver.daemon.and_then(|d| d.last_error) {
            Some(e) => Ok(e),
            None => Err(format!("{:?}", pg.status().archiver)),
        }
    });
    assert!(error.contains("is the archive volume mounted"), "{error}");
    assert_eq!(
        std::fs::read_dir(&mount).unwrap().count(),
        0,
        "nothing was written to the empty mount point"
    );

    // Mounted again, and restarted: archiving resumes with nothing missing.
    pg.stop();
    std::fs::remove_dir(&mount).unwrap();
    std::fs::rename(&real, &mount).unwrap();
    pg.start().wait_ready();
    let last = switch_and_wait_archived(&pg).await;
    let files = std::fs::read_dir(mount.join("mount/wals").join(&last[..16]))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(files.iter().any(|f| f.starts_with(&last)), "{files:?}");
}

/// The defect: a second pgwarden on a PGDATA whose postmaster still ran counted the
/// lock-file refusals as crashes, crash-looped, and removed the first one's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pgwarden_on_a_running_pgdata_is_refused_and_touches_nothing() {
    let tmp = test_dir();
    let mut first = Instance::primary(tmp.path(), "first");
    first.start().wait_ready();
    let socket = first.socket_dir.join("pgwarden.sock");
    let socket_ino = std::fs::metadata(&socket).unwrap().ino();
    let conf_before = std::fs::read(first.pgdata.join("postgresql.conf")).unwrap();

    let mut second = Instance::primary(tmp.path(), "second");
    second
        .set("PGDATA", first.pgdata.display().to_string())
        .set(
            "PGWARDEN_SOCKET_DIR",
            first.socket_dir.display().to_string(),
        );
    second.start();
    let status = second.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = second.log();
    assert!(log.contains("in use by a running postmaster"), "{log}");
    assert!(!log.contains("crash"), "{log}");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        socket_ino,
        "the socket is the first one's"
    );
    assert_eq!(
        std::fs::read(first.pgdata.join("postgresql.conf")).unwrap(),
        conf_before
    );
    assert_eq!(first.get("/readyz").status, 200);
    assert_eq!(first.status().restarts, 0);
}

/// The defect: AWS credentials were in the environment of every postgres backend,
/// readable by any SQL superuser from /proc/<pid>/environ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_postgres_processes_and_archiving_still_works() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let mut pg = Instance::primary(tmp.path(), "secrets");
    store.configure(&mut pg, "secrets");
    pg.start().wait_ready();
    // Archiving (and its restore side) works through the daemon, which holds them.
    switch_and_wait_archived(&pg).await;
    let _session = pg.connect().await;
    let postmaster = pg.postmaster_pid().unwrap();
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    assert!(pids.len() >= 4, "postmaster and its children: {pids:?}");
    for pid in pids {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        assert!(!env.contains(&g.secret), "pid {pid} holds the AWS secret");
        assert!(
            !env.contains(PASSWORD),
            "pid {pid} holds the superuser password"
        );
    }
    // The check can fail: pgwarden itself does hold the secret.
    let own = std::fs::read(format!("/proc/{}/environ", pg.pid())).unwrap();
    assert!(String::from_utf8_lossy(&own).contains(&g.secret));
}

/// The defect: the uploader raced postgres's calls and pushed most segments twice,
/// and retried a failing file every 100 ms with a warning each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_segment_is_uploaded_once_and_a_failing_file_backs_off() {
    let tmp = test_dir();
    let store = Store::s3();
    let mut pg = Instance::primary(tmp.path(), "once");
    store.configure(&mut pg, "once");
    pg.start().wait_ready();
    pgbench(&pg, &["-i", "-q", "-s", "4"]);
    pgbench(&pg, &["-n", "-T", "5", "-c", "2"]);
    let last = switch_and_wait_archived(&pg).await;
    assert_contiguous(&store, "once", &last).await;
    let segments = archived_names(&store, "once")
        .await
        .iter()
        .filter(|k| k.ends_with(".zst"))
        .count() as u64;
    let d = pg.status().archiver.daemon.expect("daemon figures");
    assert_eq!(d.uploads, segments, "one upload per archived file: {d:?}");
    assert!(d.archived >= segments, "{d:?}");
    let metrics = pg.get("/metrics").body;
    assert!(
        metrics.contains(&format!("pgwarden_archive_uploads_total {segments}")),
        "{metrics}"
    );

    // A file that conflicts with what the archive holds fails; the daemon backs off
    // and logs it once, not every 100 ms.
    let client = pg.connect().await;
    // Some WAL first: at a segment boundary pg_walfile_name names the previous one.
    client
        .batch_execute("CREATE TABLE conflict AS SELECT 1 AS x")
        .await
        .unwrap();
    let next: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    let (cfg, backend) = store.open("once").await;
    let key = format!(
        "{}.zst",
        pgwarden::wal::names::WalName::parse(&next)
            .unwrap()
            .key(&cfg.base())
    );
    let garbage = pgwarden::wal::compress::Codec::Zstd
        .compress(b"not that segment")
        .unwrap();
    backend
        .put_new(&key, garbage.into(), &"0".repeat(64))
        .await
        .unwrap();
    let before = pg
        .log()
        .matches("archiving failed; retrying with backoff")
        .count();
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let d = pg.status().archiver.daemon.unwrap();
    assert!(d.failures >= 2, "{d:?}");
    assert!(d.failures < 30, "backed off, not every 100 ms: {d:?}");
    let warned = pg
        .log()
        .matches("archiving failed; retrying with backoff")
        .count()
        - before;
    assert_eq!(warned, 1, "logged once per state change");
    assert!(pg
        .get("/metrics")
        .body
        .contains("pgwarden_archive_daemon_failures_total"));
}
