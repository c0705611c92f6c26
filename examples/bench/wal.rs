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
}

pub fn run(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-wal-");
    let garage = Garage::start();
    let (corpus, src) = corpus(bin, tmp.path());
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(corpus.join("pg_wal"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    };
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
    daemon_drain(bin, tmp.path(), &garage, barman_per_seg);
    drop(src);
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

/// Makes ~48 segments of real WAL with pgbench; returns a directory holding pg_wal/<segments>.
fn corpus(bin: &Path, dir: &Path) -> (PathBuf, Warden) {
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
        < SEGMENTS + 2
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
    for n in names.iter().rev().take(SEGMENTS) {
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

/// postgres archiving through the daemon: a backlog drains, then sustained pgbench.
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

    // Sustained: pgbench at full speed, .ready backlog sampled every 2 s.
    let port = w.port;
    let load = std::thread::spawn(move || pgbench(port, &["-c", "4", "-j", "2", "-T", "30", "-n"]));
    let mut samples = Vec::new();
    while !load.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        samples.push(status()["archiver"]["ready_files"].as_u64().unwrap_or(0));
    }
    let out = load.join().unwrap();
    let tps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_owned();
    println!("| sustained pgbench -c 4 -T 30 with archiving: .ready backlog every 2 s | {samples:?} (max {}, target steady state <= 2) |", samples.iter().max().unwrap_or(&0));
    println!("| pgbench during that run | {tps} |");
    stop(&mut child);
}
