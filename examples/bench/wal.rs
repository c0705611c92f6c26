//! archive_command and restore_command speed against barman-cloud and pgBackRest on
//! the same real WAL, in the same run. Like is compared with like, and each table says
//! how: the same target (Garage for barman-cloud, a local directory for pgBackRest,
//! whose S3 driver needs TLS), the same codec and level where the tool lets one choose
//! it, and every process's CPU (the daemon's included). The limits are printed too:
//! `zstd -1` alone on each segment, and a plain copy with fsync.

use crate::harness::garage::Garage;
use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SEGMENTS: usize = 48;
const SEG_MB: f64 = 16.0;

/// Prints a comparison table, each tool against barman-cloud's time per segment.
fn print_rows(rows: &[Row], barman_per_seg: f64) {
    println!("| tool | s/segment | MB/s | CPU s (all) | peak RSS MB | vs barman-cloud |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.3} | {:.1} | {:.2} | {:.1} | {:.1}x |",
            r.tool,
            r.per_seg,
            SEG_MB / r.per_seg,
            r.cpu,
            r.rss_mb,
            barman_per_seg / r.per_seg
        );
    }
}

struct Row {
    tool: String,
    per_seg: f64,
    cpu: f64,
    rss_mb: f64,
}

fn row(tool: &str, costs: &[Cost]) -> Row {
    let n = costs.len() as f64;
    Row {
        tool: tool.to_owned(),
        per_seg: costs.iter().map(|c| c.wall).sum::<f64>() / n,
        cpu: costs.iter().map(|c| c.cpu).sum(),
        rss_mb: costs.iter().map(|c| c.rss_kb).max().unwrap_or(0) as f64 / 1024.0,
    }
}

/// Only the daemon section: backlog drain and sustained load.
pub fn run_daemon(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-wal-");
    let garage = Garage::start();
    println!("\n## WAL archiving through the daemon, to Garage on 127.0.0.1");
    daemon_drain(bin, tmp.path(), &garage, f64::NAN);
    daemon_sustained(bin, tmp.path(), &garage);
}

pub fn run(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-wal-");
    let garage = Garage::start();
    let (corpus, src) = corpus(bin, tmp.path(), SEGMENTS);
    let names = corpus_names(&corpus);
    let mb = names.len() as f64 * SEG_MB;
    println!("\n## WAL archive and restore: {} real segments ({mb:.0} MB) from pgbench, to Garage on 127.0.0.1\n", names.len());
    compression_levels(&corpus, &names);

    // pgwarden in-process: one process per segment, as archive_command runs.
    let pw_env = |server: &str, codec: &str| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = garage
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        e.push((
            "PGWARDEN_ARCHIVE_URL".into(),
            format!("s3://{}/bench", garage.bucket),
        ));
        e.push(("PGWARDEN_ARCHIVE_NAME".into(), server.into()));
        e.push(("PGWARDEN_ARCHIVE_COMPRESSION".into(), codec.into()));
        e
    };
    let mut rows = Vec::new();
    for (label, server, codec) in [
        ("pgwarden wal-archive, zstd (default)", "pw-zstd", "zstd"),
        ("pgwarden wal-archive, gzip", "pw-gzip", "gzip"),
    ] {
        let costs: Vec<Cost> = names
            .iter()
            .map(|n| {
                timed(
                    Command::new(bin)
                        .arg("wal-archive")
                        .arg(corpus.join("pg_wal").join(n))
                        .envs(pw_env(server, codec)),
                )
            })
            .collect();
        rows.push(row(label, &costs));
    }
    // The same codec and level as pgBackRest below, to a local directory as it is.
    let fs_archive = tmp.path().join("fs-archive");
    std::fs::create_dir_all(&fs_archive).unwrap();
    let fs_costs: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new(bin)
                    .arg("wal-archive")
                    .arg(corpus.join("pg_wal").join(n))
                    .env(
                        "PGWARDEN_ARCHIVE_URL",
                        format!("file://{}", fs_archive.display()),
                    )
                    .env("PGWARDEN_ARCHIVE_NAME", "pw-fs")
                    .env("PGWARDEN_ARCHIVE_COMPRESSION", "zstd"),
            )
        })
        .collect();
    let fs_row = row("pgwarden wal-archive, zstd 1, local directory", &fs_costs);
    let barman: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new("barman-cloud-wal-archive")
                    .args([
                        "--gzip",
                        "--endpoint-url",
                        &garage.endpoint(),
                        &format!("s3://{}/bench", garage.bucket),
                        "barman",
                    ])
                    .arg(corpus.join("pg_wal").join(n))
                    .envs(garage.env())
                    .env("AWS_DEFAULT_REGION", "garage"),
            )
        })
        .collect();
    rows.push(row(
        "barman-cloud-wal-archive --gzip (its own gzip level, not settable)",
        &barman,
    ));
    let barman_per_seg = rows
        .iter()
        .find(|r| r.tool.starts_with("barman"))
        .map(|r| r.per_seg)
        .unwrap_or(f64::NAN);
    println!("Sequential pushes to Garage, one process per segment (archive_command style):\n");
    print_rows(&rows, barman_per_seg);

    let mut local = vec![fs_row];
    if let Some(r) = pgbackrest_rows(tmp.path(), &src, &corpus, &names) {
        local.push(r);
    }
    local.extend(limit_rows(tmp.path(), &corpus, &names));
    println!("\nSequential pushes to a local directory, zstd level 1 for both tools, beside the limits:\n");
    print_rows(&local, barman_per_seg);

    restore_rows(bin, tmp.path(), &garage, &names, &pw_env("pw-zstd", "zstd"));
    push_against_limits(bin, &corpus, &names[..PUSH_SEGMENTS + 1], &garage);
    daemon_drain(bin, tmp.path(), &garage, barman_per_seg);
    drop(src);
    daemon_sustained(bin, tmp.path(), &garage);
}

/// Segments of the one-shot push measurement, as in issue 19 (one more warms up).
const PUSH_SEGMENTS: usize = 16;

/// Issue 19's figures for wal-rus on the same kind of segments and server (it is not
/// installed here): wall s, CPU s, peak RSS MB per segment.
const WAL_RUS: &str = "0.066–0.086 s wall, 0.047–0.056 s CPU, 17 MB";

/// Only issue 19's measurements: the one-shot push against `zstd -1` on the same
/// segments, and the daemon under the fastest write load (a few minutes).
pub fn run_push(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-wal-");
    let garage = Garage::start();
    let (corpus, src) = corpus(bin, tmp.path(), PUSH_SEGMENTS + 1);
    drop(src);
    let names = corpus_names(&corpus);
    println!("\n## WAL push and sustained archiving, to Garage on 127.0.0.1\n");
    push_against_limits(bin, &corpus, &names, &garage);
    daemon_sustained(bin, tmp.path(), &garage);
}

/// The segment names of a corpus, in order.
fn corpus_names(corpus: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(corpus.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// min–median–max of `f` over `costs`.
fn spread(costs: &[Cost], f: impl Fn(&Cost) -> f64, digits: usize) -> String {
    let v: Vec<f64> = costs.iter().map(f).collect();
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{min:.digits$}–{:.digits$}–{max:.digits$}",
        median(v.clone())
    )
}

/// One `wal-archive` process per segment (no daemon: the in-process push), each
/// beside `zstd -1` on the same segment, interleaved so that both see the same
/// machine. The first push of a fresh archive (identity marker, the server's
/// capabilities) is shown apart.
fn push_against_limits(bin: &Path, corpus: &Path, names: &[String], garage: &Garage) {
    let out = corpus.join("zstd-out");
    let env: Vec<(String, String)> = garage
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain([
            (
                "PGWARDEN_ARCHIVE_URL".to_owned(),
                format!("s3://{}/bench", garage.bucket),
            ),
            ("PGWARDEN_ARCHIVE_NAME".to_owned(), "push".to_owned()),
        ])
        .collect();
    let push = |n: &str| {
        timed_precise(
            Command::new(bin)
                .arg("wal-archive")
                .arg(corpus.join("pg_wal").join(n))
                .envs(env.iter().cloned()),
        )
    };
    let first = push(&names[0]);
    let (mut pw, mut zs) = (Vec::new(), Vec::new());
    for n in &names[1..] {
        pw.push(push(n));
        zs.push(timed_precise(
            Command::new("zstd")
                .args(["-1", "-q", "-f", "--no-progress", "-o"])
                .arg(&out)
                .arg(corpus.join("pg_wal").join(n)),
        ));
    }
    let ratio: Vec<f64> = pw
        .iter()
        .zip(&zs)
        .map(|(p, z)| p.cpu / z.cpu.max(0.001))
        .collect();
    println!(
        "One-shot push (`wal-archive` without a daemon, one process per segment, zstd 1) of {} real segments, min–median–max per segment:\n",
        pw.len()
    );
    println!("| per segment | pgwarden wal-archive to Garage | zstd -1 alone, to a file | wal-rus (issue 19; not installed here) |");
    println!("|---|---|---|---|");
    println!(
        "| wall s | {} | {} | 0.066–0.086 |",
        spread(&pw, |c| c.wall, 3),
        spread(&zs, |c| c.wall, 3)
    );
    println!(
        "| CPU s, user+sys of the process and its children | {} | {} | 0.047–0.056 |",
        spread(&pw, |c| c.cpu, 3),
        spread(&zs, |c| c.cpu, 3)
    );
    println!(
        "| peak RSS MB | {} | {} | 17 |",
        spread(&pw, |c| c.rss_kb as f64 / 1024.0, 1),
        spread(&zs, |c| c.rss_kb as f64 / 1024.0, 1)
    );
    println!(
        "\npgwarden CPU / zstd -1 CPU on the same segment: median {:.2}x, max {:.2}x (target <= 1.1x). \
         First push to a fresh archive (marker, server capabilities): {:.3} s wall, {:.3} s CPU. \
         wal-rus per issue 19, on its machine: {WAL_RUS}.",
        median(ratio.clone()),
        ratio.iter().cloned().fold(0.0, f64::max),
        first.wall,
        first.cpu
    );
}

/// The daemon under the fastest write load pgbench makes on these cores: bulk
/// inserts (2000 rows of 200 bytes a transaction) from 2 clients, synchronous_commit
/// off. Reports WAL generated and archived per second, and the `.ready` backlog
/// postgres sees, counted in archive_status every 250 ms.
fn daemon_sustained(bin: &Path, dir: &Path, garage: &Garage) {
    const SECONDS: u32 = 30;
    let mut w = Warden::new(&dir.join("sustained"));
    w.env
        .extend(garage.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
    w.env.push((
        "PGWARDEN_ARCHIVE_URL".into(),
        format!("s3://{}/bench", garage.bucket),
    ));
    w.env
        .push(("PGWARDEN_ARCHIVE_NAME".into(), "sustained".into()));
    std::fs::write(
        w.dir.join("user.conf"),
        "shared_buffers = 128MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\nsynchronous_commit = off\n",
    )
    .unwrap();
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(120));
    let status_dir = w.pgdata.join("pg_wal/archive_status");
    let ready = || {
        std::fs::read_dir(&status_dir)
            .map(|rd| {
                rd.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    let wait_drained = || {
        let t = Instant::now();
        while ready() > 0 && t.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(50));
        }
        t.elapsed().as_secs_f64()
    };
    psql(
        w.port,
        "postgres",
        "CREATE TABLE bulk (id int, pad text); SELECT pg_switch_wal()",
    );
    let script = w.dir.join("bulk.sql");
    std::fs::write(
        &script,
        "INSERT INTO bulk SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g;\n",
    )
    .unwrap();
    wait_drained();
    let lsn = || -> f64 {
        psql(w.port, "postgres", "SELECT pg_current_wal_lsn() - '0/0'")
            .parse()
            .unwrap_or(f64::NAN)
    };
    let archived = || -> f64 {
        psql(
            w.port,
            "postgres",
            "SELECT archived_count FROM pg_stat_archiver",
        )
        .parse()
        .unwrap_or(f64::NAN)
    };
    let (lsn0, arch0, cpu0, t0) = (lsn(), archived(), proc_cpu(child.id()), Instant::now());
    let port = w.port;
    let script_arg = script.display().to_string();
    let load = std::thread::spawn(move || {
        pgbench(
            port,
            &[
                "-c",
                "2",
                "-j",
                "2",
                "-T",
                &SECONDS.to_string(),
                "-n",
                "-f",
                &script_arg,
            ],
        )
    });
    let mut samples = Vec::new();
    while !load.is_finished() {
        samples.push(ready() as f64);
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = load.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let (lsn1, arch1, cpu1) = (lsn(), archived(), proc_cpu(child.id()));
    let left = ready();
    let drain = wait_drained();
    let tps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_owned();
    let seg = SEG_MB * 1024.0 * 1024.0;
    let generated = (lsn1 - lsn0) / seg / secs;
    let archived_rate = (arch1 - arch0) / secs;
    let max = samples.iter().cloned().fold(0.0, f64::max);
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    println!(
        "\nThe daemon under pgbench -c 2 -j 2 -T {SECONDS} of bulk inserts (2000 rows of 200 bytes a transaction), synchronous_commit off (the highest WAL rate here):\n"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| pgbench | {tps} |");
    println!(
        "| WAL generated | {generated:.2} segments/s ({:.1} MB/s) |",
        generated * SEG_MB
    );
    println!(
        "| archived (postgres's archived_count) | {archived_rate:.2} segments/s, {:.2}x the generation rate |",
        archived_rate / generated
    );
    println!(
        "| `.ready` backlog every 250 ms ({} samples) | max {max:.0}, mean {mean:.2} (target max <= 2) |",
        samples.len()
    );
    println!("| backlog when the load stopped, drained in | {left} segments, {drain:.2} s |");
    println!(
        "| pgwarden CPU (daemon included) | {:.3} s per segment generated |",
        (cpu1 - cpu0) / ((lsn1 - lsn0) / seg).max(1.0)
    );
    stop(&mut child);
}

/// Compression codecs and levels on the corpus, in memory on one core: the figures
/// behind the default (zstd level 1).
fn compression_levels(corpus: &Path, names: &[String]) {
    use std::io::Write;
    let data: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(corpus.join("pg_wal").join(n)).unwrap())
        .collect();
    let total: usize = data.iter().map(|d| d.len()).sum();
    println!("Compression of the corpus in memory, one core:\n");
    println!("| codec | level | ratio | compress MB/s | decompress MB/s |");
    println!("|---|---|---|---|---|");
    let report = |codec: &str,
                  level: i32,
                  compress: &dyn Fn(&[u8]) -> Vec<u8>,
                  decompress: &dyn Fn(&[u8]) -> Vec<u8>| {
        let t = Instant::now();
        let packed: Vec<Vec<u8>> = data.iter().map(|d| compress(d)).collect();
        let ct = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for p in &packed {
            std::hint::black_box(decompress(p));
        }
        let dt = t.elapsed().as_secs_f64();
        let size: usize = packed.iter().map(|p| p.len()).sum();
        let mb = total as f64 / 1e6;
        println!(
            "| {codec} | {level} | {:.2} | {:.0} | {:.0} |",
            total as f64 / size as f64,
            mb / ct,
            mb / dt
        );
    };
    for level in [1, 3, 6] {
        report(
            "zstd",
            level,
            &|d| zstd::bulk::compress(d, level).unwrap(),
            &|p| zstd::bulk::decompress(p, 1 << 30).unwrap(),
        );
    }
    for level in [1, 6] {
        report(
            "gzip (zlib-rs)",
            level,
            &|d| {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(level as u32),
                );
                e.write_all(d).unwrap();
                e.finish().unwrap()
            },
            &|p| {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(p), &mut out).unwrap();
                out
            },
        );
    }
    println!();
}

/// Makes `segments` segments of real WAL with pgbench; returns a directory holding
/// pg_wal/<segments>.
fn corpus(bin: &Path, dir: &Path, segments: usize) -> (PathBuf, Warden) {
    let w = Warden::new(&dir.join("source"));
    std::fs::write(w.dir.join("user.conf"), "shared_buffers = 128MB\nwal_keep_size = 4GB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n").unwrap();
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(120));
    let load = |args: &[&str]| {
        let out = pgbench(w.port, args);
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    load(&["-i", "-q", "-s", "25"]);
    let current = || {
        psql(
            w.port,
            "postgres",
            "SELECT pg_walfile_name(pg_current_wal_lsn())",
        )
    };
    while std::fs::read_dir(w.pgdata.join("pg_wal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().len() == 24)
                .unwrap_or(false)
        })
        .count()
        < segments + 2
    {
        load(&["-c", "2", "-T", "10", "-n"]);
    }
    let cur = current();
    psql(w.port, "postgres", "SELECT pg_switch_wal()");
    let out = dir.join("corpus");
    std::fs::create_dir_all(out.join("pg_wal")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(w.pgdata.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.as_str() < cur.as_str())
        .collect();
    names.sort();
    for n in names.iter().rev().take(segments) {
        std::fs::copy(w.pgdata.join("pg_wal").join(n), out.join("pg_wal").join(n)).unwrap();
    }
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        out.join("pg_wal"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    stop(&mut child);
    (out, w)
}

/// pgbackrest archive-push to a posix repository, zstd level 1 like pgwarden's default.
fn pgbackrest_rows(dir: &Path, src: &Warden, corpus: &Path, names: &[String]) -> Option<Row> {
    let repo = dir.join("pgbackrest");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::set_permissions(&repo, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let conf = repo.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={r}/repo\nlog-path={r}/log\nlock-path={r}/lock\nlog-level-console=warn\nlog-level-file=off\ncompress-type=zst\ncompress-level=1\n\n[bench]\npg1-path={pg}\n",
            r = repo.display(),
            pg = src.pgdata.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let as_pg = |args: &[&str]| {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench")
            .args(args);
        run_as_postgres(&mut c);
        c
    };
    // stanza-create needs the cluster up; pg1-path's cluster is stopped now, so create
    // the stanza offline with --no-online, then push.
    let out = as_pg(&["--no-online", "stanza-create"]).output().unwrap();
    if !out.status.success() {
        println!(
            "(pgBackRest skipped: stanza-create failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let costs: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(&mut as_pg(&[
                "archive-push",
                &corpus.join("pg_wal").join(n).display().to_string(),
            ]))
        })
        .collect();
    Some(row("pgbackrest archive-push, zst 1, posix repo", &costs))
}

/// What no archiver can beat on the same segments: `zstd -1` alone (the CPU floor of
/// a zstd push), and a copy with fsync (the I/O floor of any push to a local disk).
fn limit_rows(dir: &Path, corpus: &Path, names: &[String]) -> Vec<Row> {
    let out = dir.join("limits");
    std::fs::create_dir_all(&out).unwrap();
    let mut rows = Vec::new();
    if Command::new("zstd").arg("--version").output().is_ok() {
        let costs: Vec<Cost> = names
            .iter()
            .map(|n| {
                timed(
                    Command::new("zstd")
                        .args(["-1", "-q", "-f", "--no-progress", "-o"])
                        .arg(out.join("seg.zst"))
                        .arg(corpus.join("pg_wal").join(n)),
                )
            })
            .collect();
        rows.push(row("limit: zstd -1 alone, to a file", &costs));
    }
    let costs: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new("dd")
                    .arg(format!("if={}", corpus.join("pg_wal").join(n).display()))
                    .arg(format!("of={}", out.join("seg").display()))
                    .args(["bs=1M", "conv=fsync", "status=none"]),
            )
        })
        .collect();
    rows.push(row("limit: copy with fsync (dd conv=fsync)", &costs));
    rows
}

/// Sequential restore_command calls for every segment, in order.
fn restore_rows(
    bin: &Path,
    dir: &Path,
    garage: &Garage,
    names: &[String],
    pw_env: &[(String, String)],
) {
    let dest = dir.join("restore-dest");
    std::fs::create_dir_all(&dest).unwrap();
    let mut rows = Vec::new();
    let inproc: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new(bin)
                    .args(["wal-restore", n])
                    .arg(dest.join("x"))
                    .envs(pw_env.iter().cloned()),
            )
        })
        .collect();
    rows.push(row("pgwarden wal-restore, in-process", &inproc));

    // Through a running pgwarden's daemon, with prefetch.
    let w = Warden::new(&dir.join("restorer"));
    let mut w = w;
    w.env.extend(pw_env.iter().cloned());
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(120));
    let sock = w
        .env
        .iter()
        .find(|(k, _)| k == "PGWARDEN_SOCKET_DIR")
        .map(|(_, v)| v.clone())
        .unwrap();
    // The daemon writes only into its own instance's pg_wal (as postgres's
    // restore_command does during recovery, under the name RECOVERYXLOG).
    let recoveryxlog = w.pgdata.join("pg_wal/RECOVERYXLOG");
    let daemon_cpu_before = proc_cpu(child.id());
    let mut daemon: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new(bin)
                    .args(["wal-restore", n])
                    .arg(&recoveryxlog)
                    .envs(pw_env.iter().cloned())
                    .env("PGWARDEN_SOCKET_DIR", &sock),
            )
        })
        .collect();
    // The daemon does the fetching: its CPU belongs to this row, spread over the calls.
    let daemon_cpu = proc_cpu(child.id()) - daemon_cpu_before;
    for c in daemon.iter_mut() {
        c.cpu += daemon_cpu / names.len() as f64;
    }
    stop(&mut child);
    rows.push(row(
        "pgwarden wal-restore, through the daemon with prefetch (daemon CPU included)",
        &daemon,
    ));
    let barman: Vec<Cost> = names
        .iter()
        .map(|n| {
            timed(
                Command::new("barman-cloud-wal-restore")
                    .args([
                        "--endpoint-url",
                        &garage.endpoint(),
                        &format!("s3://{}/bench", garage.bucket),
                        "barman",
                        n,
                    ])
                    .arg(dest.join("z"))
                    .envs(garage.env())
                    .env("AWS_DEFAULT_REGION", "garage"),
            )
        })
        .collect();
    rows.push(row("barman-cloud-wal-restore", &barman));
    let barman_per_seg = rows.last().map(|r| r.per_seg).unwrap_or(f64::NAN);
    println!("\nSequential restores of the same segments, in order (restore_command style):\n");
    print_rows(&rows, barman_per_seg);
}

/// postgres archiving through the daemon: a backlog drains.
fn daemon_drain(bin: &Path, dir: &Path, garage: &Garage, barman_per_seg: f64) {
    let mut w = Warden::new(&dir.join("drain"));
    w.env
        .extend(garage.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
    w.env.push((
        "PGWARDEN_ARCHIVE_URL".into(),
        format!("s3://{}/bench", garage.bucket),
    ));
    w.env.push(("PGWARDEN_ARCHIVE_NAME".into(), "drain".into()));
    std::fs::write(
        w.dir.join("user.conf"),
        "shared_buffers = 128MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n",
    )
    .unwrap();
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(120));
    let status = || -> serde_json::Value {
        let r =
            pgwarden::http::client::get(&pgwarden::http::client::Target::Tcp(w.http), "/status")
                .unwrap();
        serde_json::from_str(&r.body).unwrap()
    };
    // Hold postgres's archiver so that a backlog builds; the daemon uploads meanwhile.
    let archiver: i32 = psql(
        w.port,
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'",
    )
    .parse()
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(archiver);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let gen = pgbench(w.port, &["-i", "-q", "-s", "25"]);
    assert!(gen.status.success());
    let last = psql(
        w.port,
        "postgres",
        "SELECT pg_walfile_name(pg_switch_wal())",
    );
    let backlog = status()["archiver"]["ready_files"].as_u64().unwrap_or(0);
    // Wait until the daemon has uploaded the whole backlog.
    while status()["archiver"]["daemon"]["queue"]
        .as_u64()
        .unwrap_or(1)
        > 0
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let uploaded_at = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    while psql(
        w.port,
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < last
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let drain = t1.elapsed().as_secs_f64();
    let d = status()["archiver"]["daemon"].clone();
    println!(
        "\nThrough the daemon, as postgres calls archive_command ({} uploads in parallel):\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| backlog built by pgbench -i -s 25 with the archiver held | {backlog} segments |");
    println!("| generation plus daemon upload of the backlog | {uploaded_at:.1} s |");
    // Answering an already-uploaded file is not a push: no ratio against barman-cloud.
    println!("| postgres's archive_command calls answered by the warm daemon, the files already uploaded | {drain:.2} s, {:.4} s/call |", drain / backlog.max(1) as f64);
    let end_to_end = (uploaded_at + drain) / backlog.max(1) as f64;
    println!(
        "| end to end, from the start of generation until postgres has archived the last segment | {:.3} s/segment, {:.0}x barman-cloud's |",
        end_to_end,
        barman_per_seg / end_to_end
    );
    println!(
        "| answered from an upload / pushed directly | {} / {} |",
        d["answered_from_upload"], d["archived_direct"]
    );
    println!(
        "| uploads per archived file | {} uploads for {} archived files |",
        d["uploads"], d["archived"]
    );

    stop(&mut child);
}
