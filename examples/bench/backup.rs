//! Base backups and the bootstrap from one, against pgBackRest, barman-cloud and
//! pg_basebackup on the same ~3 GB pgbench database (`PGWARDEN_BENCH_SCALE`), in the
//! same run. One pgwarden primary archives its WAL to Garage in gzip; every backup is
//! taken from it, one after the other, with a fast checkpoint, the WAL left to the
//! archive (`-X none`, as barman-cloud does), and the data in the page cache. Each is
//! the fastest of [`REPS`] runs (barman-cloud's gzip backup runs once): on a shared
//! machine the fastest is the least disturbed, and the median is printed beside it.
//! pgBackRest writes to a posix repository on the same disk with the same process
//! count and gzip level (see `pgbackrest.rs`). The limits: `pg_basebackup` to a local
//! disk, its tar sent to Garage in one `curl` PUT (what Garage itself takes in on this
//! machine), and gzip -1 of the tar on one core and on every core (pigz). Garage runs
//! on the same cores, so its CPU is shown for the rows that upload to it.
//!
//! `pgwarden backup` only calls the running `pgwarden run` over its control socket:
//! the work (pg_basebackup's stream, gzip, the upload) is done by `pgwarden run`, so
//! that process's CPU (its reaped children's included) and peak RSS, sampled from
//! /proc every 10 ms, are what the table shows.
//!
//! Then the time to a writable primary from a pgwarden gzip backup plus a fixed WAL
//! tail: pgwarden's bootstrap (`PGWARDEN_RESTORE_URL`) against `barman-cloud-restore`
//! and postgres recovering through `barman-cloud-wal-restore`; and the files alone
//! against `pgbackrest restore` of its own backup of the same data.
//!
//! `PGWARDEN_BENCH_PERF=<dir>` also writes `perf record -g` profiles of pgwarden (and
//! Garage) during the first backup of each kind, and of one more, unmeasured bootstrap.

use crate::harness::garage::Garage;
use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// pgbench scale (`PGWARDEN_BENCH_SCALE`, about 15 MB each): 200, a little over 3 GB,
/// the size issue 19 asks the figures for.
fn scale() -> String {
    std::env::var("PGWARDEN_BENCH_SCALE").unwrap_or_else(|_| "200".into())
}
/// The source server's name in the archive.
pub const SOURCE: &str = "src";
/// Runs of each backup but barman-cloud's gzip one (about 100 s by itself).
const REPS: usize = 3;

/// One measured run.
pub struct Row {
    pub tool: String,
    pub wall: f64,
    pub median: f64,
    pub cpu: f64,
    pub rss_mb: f64,
    pub stored_mb: f64,
    /// CPU seconds Garage spent meanwhile, for the rows that upload to it.
    pub garage_cpu: Option<f64>,
}

impl Row {
    fn from_cost(tool: &str, c: &Cost, stored: u64) -> Row {
        Row {
            tool: tool.to_owned(),
            wall: c.wall,
            median: c.wall,
            cpu: c.cpu,
            rss_mb: c.rss_kb as f64 / 1024.0,
            stored_mb: stored as f64 / 1e6,
            garage_cpu: None,
        }
    }
}

/// A pgwarden child that is stopped (SIGTERM, by its pid) however the bench ends,
/// a panic included.
pub struct Guard(pub Option<std::process::Child>);

impl Guard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            stop(&mut c);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A postgres that pg_ctl started in this data directory: stopped (SIGQUIT, by the pid
/// in its postmaster.pid) when dropped.
struct Postmaster(std::path::PathBuf);

impl Drop for Postmaster {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(self.0.join("postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<i32>().ok())
        else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let t = Instant::now();
        while nix::sys::signal::kill(pid, None).is_ok() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// CPU seconds of a running process and of its children it has reaped, from /proc.
pub fn cpu_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime: fields 14 to 17 of stat, 11 to 14 after the name.
    fields.get(11..15).map_or(0.0, |v| v.iter().sum::<f64>()) / 100.0
}

/// Samples a process's RSS every 10 ms until dropped; `peak()` is the largest seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(rss_kb(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(rss_kb(pid))
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak_kb(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Runs `body` (Python, after a boto3 client `s3` for Garage is made) with the
/// bucket and `prefix` as its arguments; returns what it printed (boto3, which
/// barman-cloud brings: the bench process itself holds no AWS settings).
fn boto3(garage: &Garage, what: &str, prefix: &str, body: &str) -> String {
    let script = format!(
        "import boto3, os, sys\n\
         s3 = boto3.client(\"s3\", endpoint_url=os.environ[\"AWS_ENDPOINT_URL\"], region_name=\"garage\")\n\
         {body}"
    );
    let out = Command::new("python3")
        .args(["-c", &script, &garage.bucket, prefix])
        .envs(garage.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each object under the prefix, in pages.
const EACH_OBJECT: &str = "for page in s3.get_paginator(\"list_objects_v2\").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]):\n    for o in page.get(\"Contents\", []):\n";

/// Stored bytes of each backup under `server`'s `base/`, by backup id.
fn stored_backups(garage: &Garage, server: &str) -> BTreeMap<String, u64> {
    let body = format!(
        "{EACH_OBJECT}        print(o[\"Key\"][len(sys.argv[2]):].split(\"/\")[0], o[\"Size\"])\n"
    );
    let listed = boto3(
        garage,
        "list the backups",
        &format!("bench/{server}/base/"),
        &body,
    );
    let mut sizes = BTreeMap::new();
    for line in listed.lines() {
        if let Some((id, size)) = line.split_once(' ') {
            *sizes.entry(id.to_owned()).or_insert(0) += size.parse::<u64>().unwrap_or(0);
        }
    }
    sizes
}

/// Removes backup `id` of `server` from Garage: an uncompressed backup of the whole
/// database, measured, is not kept (three of each would fill the disk at scale 200).
fn drop_backup(garage: &Garage, server: &str, id: &str) {
    let body =
        format!("{EACH_OBJECT}        s3.delete_object(Bucket=sys.argv[1], Key=o[\"Key\"])\n");
    boto3(
        garage,
        &format!("remove backup {id}"),
        &format!("bench/{server}/base/{id}/"),
        &body,
    );
}

/// The one backup id in `after` that `before` does not have, and its stored size.
fn new_backup(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> (String, u64) {
    let new: Vec<_> = after
        .iter()
        .filter(|(id, _)| !before.contains_key(*id))
        .collect();
    assert_eq!(new.len(), 1, "one new backup: {new:?}");
    (new[0].0.clone(), *new[0].1)
}

/// Seconds of day of a log line's `ts` (`...THH:MM:SS.ffffffZ`).
fn ts_seconds(ts: &str) -> Option<f64> {
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let time = time.split(['+', '-']).next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The first log line whose message contains each of `wants`, as seconds after the
/// log's first line.
pub fn milestones(log: &str, wants: &[&str]) -> Vec<(String, f64)> {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let Some(first) = lines.first().and_then(|v| ts_seconds(v["ts"].as_str()?)) else {
        return Vec::new();
    };
    wants
        .iter()
        .filter_map(|want| {
            let v = lines
                .iter()
                .find(|v| v["msg"].as_str().is_some_and(|m| m.contains(want)))?;
            Some((want.to_string(), ts_seconds(v["ts"].as_str()?)? - first))
        })
        .collect()
}

/// Switches to a new segment and waits until postgres has archived it.
pub fn switch_and_wait_archived(port: u16) {
    let last = psql(port, "postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let t0 = Instant::now();
    while psql(
        port,
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < last
    {
        // Generous: a scale-200 load is hundreds of segments, on a shared machine.
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "{last} not archived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn set_env(w: &mut Warden, key: &str, value: &str) {
    w.env.retain(|(k, _)| k != key);
    w.env.push((key.to_owned(), value.to_owned()));
}

/// `pgwarden backup` against the running `pgwarden run` (pid `pid`), which does the
/// work; with `perf` set, that process and Garage are profiled meanwhile.
pub fn pgwarden_backup(
    bin: &Path,
    w: &Warden,
    pid: u32,
    label: &str,
    perf: Option<(&Path, u32)>,
) -> (Row, String, String) {
    pgwarden_backup_with(bin, w, pid, label, perf, &[]).0
}

/// [`pgwarden_backup`] with more arguments (`--incremental`); also returns the
/// backup's JSON.
pub fn pgwarden_backup_with(
    bin: &Path,
    w: &Warden,
    pid: u32,
    label: &str,
    perf: Option<(&Path, u32)>,
    args: &[&str],
) -> ((Row, String, String), serde_json::Value) {
    let cpu0 = cpu_with_children(pid);
    let idle = rss_kb(pid);
    let profiler = perf.map(|(out, garage)| Profiler::start(out, &[pid, garage]));
    let sampler = RssSampler::start(pid);
    let t0 = Instant::now();
    let out = Command::new(bin)
        .arg("backup")
        .args(args)
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let peak = sampler.peak_kb();
    drop(profiler);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgwarden backup: {stdout}");
    let info: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let row = Row {
        tool: label.to_owned(),
        wall,
        median: wall,
        cpu: cpu_with_children(pid) - cpu0,
        rss_mb: peak as f64 / 1024.0,
        stored_mb: info["size"].as_u64().unwrap_or(0) as f64 / 1e6,
        garage_cpu: None,
    };
    let note = format!(
        "`pgwarden run`'s RSS around \"{label}\": {:.0} MB before, {:.0} MB at the peak, {:.0} MB after.",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss_kb(pid) as f64 / 1024.0
    );
    let id = info["backup_id"].as_str().unwrap().to_owned();
    ((row, id, note), info)
}

/// `perf record -g` of some processes, stopped (SIGINT, by its pid) when dropped.
struct Profiler(std::process::Child);

impl Profiler {
    fn start(out: &Path, pids: &[u32]) -> Profiler {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "-q", "-o"])
            .arg(out)
            .args(["-p", &pids.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf");
        std::thread::sleep(Duration::from_millis(300));
        Profiler(child)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// Runs `measure` `n` times; the fastest run, with the median time beside it and the
/// largest RSS of all. On a shared machine the fastest is the least disturbed.
fn best_of(n: usize, mut measure: impl FnMut(usize) -> Row) -> Row {
    let runs: Vec<Row> = (0..n).map(&mut measure).collect();
    let median = median(runs.iter().map(|r| r.wall).collect());
    let rss = runs.iter().map(|r| r.rss_mb).fold(0.0, f64::max);
    let mut best = runs
        .into_iter()
        .min_by(|a, b| a.wall.total_cmp(&b.wall))
        .unwrap();
    best.median = median;
    best.rss_mb = rss;
    best
}

/// The Garage server's pid, found by its configuration file in /proc.
pub fn garage_pid(garage: &Garage) -> Option<u32> {
    let conf = garage.dir.path().join("garage.toml").display().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.contains(&conf.as_bytes()) && args.contains(&&b"server"[..])).then_some(pid)
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sh -c` with pipefail, for the pipelines.
fn bash(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.args(["-o", "pipefail", "-c", script]);
    c
}

pub fn run(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-backup-");
    let garage = Garage::start();
    let gpid = garage_pid(&garage);
    let garage_cpu = || gpid.map_or(f64::NAN, proc_cpu);
    // PGWARDEN_BENCH_PERF=<dir>: perf profiles of pgwarden's first backup of each kind.
    let perf_dir = std::env::var_os("PGWARDEN_BENCH_PERF").map(std::path::PathBuf::from);
    let perf = |name: &str| -> Option<(std::path::PathBuf, u32)> {
        Some((perf_dir.as_ref()?.join(name), gpid?))
    };
    let url = format!("s3://{}/bench", garage.bucket);
    let archive_env = |name: &str| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = garage
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        e.push(("PGWARDEN_ARCHIVE_URL".into(), url.clone()));
        e.push(("PGWARDEN_ARCHIVE_NAME".into(), name.into()));
        e.push(("PGWARDEN_ARCHIVE_COMPRESSION".into(), "gzip".into()));
        e
    };

    let mut w = Warden::new(&tmp.path().join("source"));
    w.env.extend(archive_env(SOURCE));
    // `none` first; PGWARDEN_BACKUP_COMPRESSION is a setting of `pgwarden run`, which
    // is restarted with `gzip` after those.
    set_env(&mut w, "PGWARDEN_BACKUP_COMPRESSION", "none");
    std::fs::write(
        w.dir.join("user.conf"),
        "shared_buffers = 128MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n",
    )
    .unwrap();
    // pg_basebackup and barman-cloud-backup connect over TCP with the password.
    let hba = w.dir.join("user.hba");
    std::fs::write(
        &hba,
        "host replication postgres 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    set_env(&mut w, "PGWARDEN_USER_HBA", &hba.display().to_string());
    let mut child = Guard(Some(w.spawn(bin)));
    w.wait_ready(Duration::from_secs(120));
    let t0 = Instant::now();
    let scale = scale();
    let out = pgbench(w.port, &["-i", "-q", "-s", &scale, "-I", "dtGvp"]);
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let load = t0.elapsed().as_secs_f64();
    psql(w.port, "postgres", "CHECKPOINT");
    switch_and_wait_archived(w.port);
    let archived = t0.elapsed().as_secs_f64();
    let db_bytes: u64 = psql(
        w.port,
        "postgres",
        "SELECT sum(pg_database_size(oid)) FROM pg_database",
    )
    .parse()
    .unwrap();
    let load_before = loadavg();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());

    // The limit on a local disk first: its tar is also what pigz and curl send alone.
    let local = tmp.path().join("pg_basebackup");
    let mut rows = vec![best_of(REPS, |_| {
        let _ = std::fs::remove_dir_all(&local);
        let c = timed(
            Command::new("pg_basebackup")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-Ft", "-X", "none"])
                .args(["-c", "fast", "-p", &w.port.to_string(), "-D"])
                .arg(&local)
                .env("PGPASSWORD", "bench"),
        );
        Row::from_cost(
            "pg_basebackup -Ft -X none -D <local dir> (uncompressed, local disk, fsync)",
            &c,
            size(&local.join("base.tar")),
        )
    })];
    let tar = local.join("base.tar");
    let tar_bytes = size(&tar);
    let db_mb = tar_bytes as f64 / 1e6;
    // What Garage takes in on this machine: that tar in one PUT, no compression.
    let curl = |n: usize| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "--aws-sigv4",
            "aws:amz:garage:s3",
        ])
        .arg("--user")
        .arg(format!("{}:{}", garage.key_id, garage.secret))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T"])
        .arg(&tar)
        .arg(format!(
            "{}/{}/limit/base.tar.{n}",
            garage.endpoint(),
            garage.bucket
        ));
        c
    };
    match try_timed(&mut curl(0)) {
        Ok(_) => rows.push(best_of(REPS, |n| {
            let g0 = garage_cpu();
            let c = timed(&mut curl(n + 1));
            let mut r = Row::from_cost(
                "limit: that tar uploaded to Garage in one PUT (curl --aws-sigv4, unsigned payload)",
                &c,
                tar_bytes,
            );
            r.garage_cpu = Some(garage_cpu() - g0);
            r
        })),
        Err(e) => println!("(the curl upload to Garage failed, no row: {e})"),
    }

    let mut notes = Vec::new();
    let volume = tmp.path().join("volume");
    let pgwarden_rows = |w: &Warden, pid: u32, kind: &str, notes: &mut Vec<String>| {
        best_of(REPS, |n| {
            let g0 = garage_cpu();
            let to_volume = kind.contains("volume");
            let file: String = kind
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let p = perf(&format!("pgwarden-backup-{file}.perf.data")).filter(|_| n == 0);
            let (mut r, id, note) = pgwarden_backup(
                bin,
                w,
                pid,
                &format!("pgwarden backup, {kind} (work and RSS: the `pgwarden run` process)"),
                p.as_ref().map(|(f, g)| (f.as_path(), *g)),
            );
            r.garage_cpu = (!to_volume).then(|| garage_cpu() - g0);
            if kind == "none" {
                drop_backup(&garage, SOURCE, &id);
            }
            if to_volume {
                // Only this run's backup: the next one starts from the same free space.
                let _ = std::fs::remove_dir_all(volume.join(SOURCE).join("base").join(&id));
            }
            if n == 0 {
                notes.push(note);
            }
            r
        })
    };
    rows.push(pgwarden_rows(&w, child.id(), "none", &mut notes));
    child.stop();
    // Like with like for pg_basebackup's local-disk row: the same uncompressed backup to
    // an archive on the same disk (PGWARDEN_ARCHIVE_URL=file://), Garage out of the way.
    set_env(
        &mut w,
        "PGWARDEN_ARCHIVE_URL",
        &format!("file://{}", volume.display()),
    );
    std::fs::create_dir_all(&volume).unwrap();
    child = Guard(Some(w.spawn(bin)));
    w.wait_ready(Duration::from_secs(120));
    rows.push(pgwarden_rows(
        &w,
        child.id(),
        "none, to a volume on the same disk (fsync)",
        &mut notes,
    ));
    child.stop();
    let _ = std::fs::remove_dir_all(&volume);
    set_env(&mut w, "PGWARDEN_ARCHIVE_URL", &url);
    set_env(&mut w, "PGWARDEN_BACKUP_COMPRESSION", "gzip");
    child = Guard(Some(w.spawn(bin)));
    w.wait_ready(Duration::from_secs(120));
    rows.push(pgwarden_rows(&w, child.id(), "gzip", &mut notes));
    let pgbackrest = crate::pgbackrest::PgBackRest::setup(tmp.path(), &w, 2);
    if let Some(b) = &pgbackrest {
        rows.push(best_of(REPS, |_| {
            let (c, stored) = b.backup();
            Row::from_cost(
                "pgbackrest backup --type=full, gz level 1, --process-max=2, posix repo on the same disk (RSS: largest process)",
                &c,
                stored,
            )
        }));
    }

    for (label, flags, reps) in [
        (
            "barman-cloud-backup --gzip (its own level, not settable; RSS: largest process)",
            &["--gzip"][..],
            1,
        ),
        (
            "barman-cloud-backup, uncompressed (RSS: largest process)",
            &[][..],
            REPS,
        ),
    ] {
        rows.push(best_of(reps, |_| {
            let before = stored_backups(&garage, SOURCE);
            let g0 = garage_cpu();
            let c = timed(
                Command::new("barman-cloud-backup")
                    .args([
                        "--endpoint-url",
                        &garage.endpoint(),
                        "--immediate-checkpoint",
                    ])
                    .args(flags)
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &w.port.to_string(),
                        "-U",
                        "postgres",
                    ])
                    .args([url.as_str(), SOURCE])
                    .envs(garage.env())
                    .env("AWS_DEFAULT_REGION", "garage")
                    .env("PGPASSWORD", "bench"),
            );
            let garage_cpu = garage_cpu() - g0;
            let (id, stored) = new_backup(&before, &stored_backups(&garage, SOURCE));
            if flags.is_empty() {
                drop_backup(&garage, SOURCE, &id);
            }
            let mut r = Row::from_cost(label, &c, stored);
            r.garage_cpu = Some(garage_cpu);
            r
        }));
    }

    // pg_basebackup's tar on stdout, through gzip -1 on one core and pigz on two.
    let stream = format!(
        "pg_basebackup -h 127.0.0.1 -p {} -U postgres -Ft -X none -c fast -D -",
        w.port
    );
    let gz = tmp.path().join("base.tar.gz");
    let have_pigz = Command::new("pigz")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut pipelines = vec![(
        "pg_basebackup -Ft -X none -D - | gzip -1 > file".to_owned(),
        format!("{stream} | gzip -1 > {}", gz.display()),
    )];
    if have_pigz {
        pipelines.push((
            "limit: pg_basebackup -Ft -X none -D - | pigz -1 -p 2 > file".to_owned(),
            format!("{stream} | pigz -1 -p 2 > {}", gz.display()),
        ));
        pipelines.push((
            "limit: pigz -1 -p 2 of that tar alone, from the page cache".to_owned(),
            format!("pigz -1 -p 2 -c {} > {}", tar.display(), gz.display()),
        ));
    } else {
        println!("(pigz is not installed: `bash scripts/install-deps.sh --bench`)");
    }
    for (label, script) in &pipelines {
        rows.push(best_of(REPS, |_| {
            let c = timed(bash(script).env("PGPASSWORD", "bench"));
            Row::from_cost(label, &c, size(&gz))
        }));
    }
    let _ = std::fs::remove_file(&gz);
    let _ = std::fs::remove_dir_all(&local);

    println!(
        "\n## Base backups: pgbench -i -s {scale}, {:.0} MB of databases ({:.0} MB as pg_basebackup's tar), to Garage on 127.0.0.1\n",
        db_bytes as f64 / 1e6,
        db_mb
    );
    println!(
        "pgbench -i took {load:.0} s, and {:.0} s more until its WAL was archived in gzip. \
         Each backup is the fastest of {REPS} (barman-cloud --gzip: one run), one after the other, \
         from the same primary. Load average before: {load_before}; after: {}.\n",
        archived - load,
        loadavg()
    );
    println!(
        "| tool | s (best) | s (median) | MB/s of database | CPU s | Garage CPU s | peak RSS MB | stored MB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {} | {:.0} | {:.0} |",
            r.tool,
            r.wall,
            r.median,
            db_mb / r.wall,
            r.cpu,
            r.garage_cpu.map_or("-".to_owned(), |c| format!("{c:.1}")),
            r.rss_mb,
            r.stored_mb
        );
    }
    println!();
    for n in &notes {
        println!("{n}");
    }
    let wall = |prefix: &str| {
        rows.iter()
            .find(|r| r.tool.starts_with(prefix))
            .map_or(f64::NAN, |r| r.wall)
    };
    let pw_gzip = wall("pgwarden backup, gzip");
    let pw_none = wall("pgwarden backup, none (");
    let pw_volume = wall("pgwarden backup, none, to a volume");
    let peak = rows
        .iter()
        .filter(|r| r.tool.starts_with("pgwarden"))
        .map(|r| r.rss_mb)
        .fold(0.0, f64::max);
    println!("\n| ratio | value | target |");
    println!("|---|---|---|");
    println!(
        "| pgwarden gzip vs pgBackRest full, gz 1, 2 processes (time) | {:.2}x faster | >= 1x |",
        wall("pgbackrest backup") / pw_gzip
    );
    println!(
        "| pgwarden gzip vs barman-cloud-backup --gzip (time) | {:.1}x faster | >= 3x |",
        wall("barman-cloud-backup --gzip") / pw_gzip
    );
    println!(
        "| pgwarden none vs pg_basebackup to a local disk (speed) | {:.2}x | >= 0.9x |",
        wall("pg_basebackup -Ft -X none -D <local") / pw_none
    );
    println!(
        "| pgwarden none to a volume on the same disk vs pg_basebackup to a local disk (speed, like with like) | {:.2}x | >= 0.9x |",
        wall("pg_basebackup -Ft -X none -D <local") / pw_volume
    );
    println!(
        "| pgwarden none vs curl's one PUT of the tar to Garage (speed) | {:.2}x | for reference |",
        wall("limit: that tar uploaded") / pw_none
    );
    println!(
        "| pgwarden gzip vs pg_basebackup piped to pigz -1 -p 2 (speed) | {:.2}x | >= 0.8x (within 20%) |",
        wall("limit: pg_basebackup -Ft -X none -D - | pigz") / pw_gzip
    );
    println!(
        "| pgwarden gzip vs pigz -1 -p 2 of the tar alone (speed) | {:.2}x | for reference |",
        wall("limit: pigz -1 -p 2 of that tar") / pw_gzip
    );
    println!("| peak RSS of `pgwarden run` during a backup | {peak:.0} MB | <= 100 MB |");

    // The backup the restores start from, then the same WAL for both to replay.
    let (_, id, _) = pgwarden_backup(bin, &w, child.id(), "restored", None);
    let out = pgbench(w.port, &["-n", "-c", "2", "-t", "5000"]);
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    switch_and_wait_archived(w.port);
    child.stop();
    let perf = perf_dir
        .as_ref()
        .map(|d| d.join("pgwarden-restore.perf.data"));
    let extracted = restore(
        bin,
        tmp.path(),
        &garage,
        &url,
        &id,
        &archive_env("restored"),
        perf.as_deref(),
    );
    if let Some(b) = &pgbackrest {
        // pgBackRest's last full, of the same data before the pgbench run: the files
        // only, as pgwarden's "backup extracted" (which also counts its start and the
        // checks before it).
        let c = b.restore(&tmp.path().join("pgbackrest-restored"));
        println!(
            "| pgwarden's backup extracted ({extracted:.1} s) vs pgbackrest restore, 2 processes ({:.1} s, CPU {:.1} s, peak RSS {:.0} MB) (time) | {:.2}x faster | >= 1x |",
            c.wall,
            c.cpu,
            c.rss_kb as f64 / 1024.0,
            c.wall / extracted
        );
        let _ = std::fs::remove_dir_all(tmp.path().join("pgbackrest-restored"));
    }
}

/// What a bootstrap from a backup took.
pub struct Bootstrap {
    /// Seconds from pgwarden's start until `/primary` answers 200.
    pub total: f64,
    /// Seconds into its log when the backup was extracted.
    pub extracted: f64,
    /// CPU seconds of `pgwarden run` and its reaped children.
    pub cpu: f64,
    /// Peak RSS of `pgwarden run`, KiB.
    pub peak_kb: u64,
    /// Milestones of its log, seconds from its first line.
    pub phases: Vec<(String, f64)>,
    /// WAL files it restored from the archive.
    pub segments: usize,
}

/// `pgwarden run` bootstrapping an empty PGDATA in `dir` from backup `id` of server
/// [`SOURCE`] at `url`, until it is a writable primary; then stopped.
pub fn bootstrap(
    bin: &Path,
    dir: &Path,
    url: &str,
    id: &str,
    env: &[(String, String)],
) -> Bootstrap {
    let mut w = Warden::new(dir);
    w.env.extend(env.iter().cloned());
    set_env(&mut w, "PGWARDEN_NAME", "restored");
    set_env(&mut w, "PGWARDEN_RESTORE_URL", url);
    set_env(&mut w, "PGWARDEN_RESTORE_NAME", SOURCE);
    set_env(&mut w, "PGWARDEN_RESTORE_BACKUP_ID", id);
    let t0 = Instant::now();
    let mut child = Guard(Some(w.spawn(bin)));
    let pid = child.id();
    let sampler = RssSampler::start(pid);
    let primary = || matches!(pgwarden::http::client::get(&pgwarden::http::client::Target::Tcp(w.http), "/primary"), Ok(r) if r.status == 200);
    while !primary() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the restored pgwarden is not a primary; see {}/log",
            w.dir.display()
        );
        assert!(
            child.0.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the restored pgwarden exited; see {}/log",
            w.dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pw_total = t0.elapsed().as_secs_f64();
    let peak = sampler.peak_kb();
    let cpu = cpu_with_children(pid);
    assert_eq!(
        psql(w.port, "postgres", "SELECT pg_is_in_recovery()"),
        "f",
        "not in recovery"
    );
    let log = std::fs::read_to_string(w.dir.join("log")).unwrap_or_default();
    let phases = milestones(
        &log,
        &[
            "restoring a base backup",
            "backup extracted",
            "every restored file matches the backup manifest",
            "starting PostgreSQL",
            "redo done",
            "selected new timeline",
            "database system is ready to accept connections",
        ],
    );
    let pw_segments = log.matches("restored log file").count();
    let extracted = phases
        .iter()
        .find(|(m, _)| m == "backup extracted")
        .map_or(f64::NAN, |(_, t)| *t);
    child.stop();

    Bootstrap {
        total: pw_total,
        extracted,
        cpu,
        peak_kb: peak,
        phases,
        segments: pw_segments,
    }
}

/// Time to a writable primary from that gzip backup: pgwarden's bootstrap
/// against barman-cloud-restore and postgres recovering through barman-cloud-wal-restore;
/// returns the seconds pgwarden took to the backup extracted.
fn restore(
    bin: &Path,
    dir: &Path,
    garage: &Garage,
    url: &str,
    id: &str,
    env: &[(String, String)],
    perf: Option<&Path>,
) -> f64 {
    let Bootstrap {
        total: pw_total,
        extracted,
        cpu,
        peak_kb: peak,
        phases,
        segments: pw_segments,
    } = bootstrap(bin, &dir.join("restored"), url, id, env);

    // barman-cloud: the same backup into an empty directory, then postgres recovers
    // with barman-cloud-wal-restore as its restore_command, to the end of the archive.
    let dest = dir.join("barman-restored");
    let sock = dir.join("barman-sock");
    std::fs::create_dir_all(&sock).unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let t0 = Instant::now();
    let fetch = timed(
        Command::new("barman-cloud-restore")
            .args(["--endpoint-url", &garage.endpoint(), url, SOURCE, id])
            .arg(&dest)
            .envs(garage.env())
            .env("AWS_DEFAULT_REGION", "garage"),
    );
    let port = free_port();
    std::fs::write(
        dest.join("postgresql.conf"),
        format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_buffers = 128MB\n\
             restore_command = 'barman-cloud-wal-restore --endpoint-url {} {url} {SOURCE} %f %p'\n\
             hba_file = '{d}/pg_hba.conf'\nident_file = '{d}/pg_ident.conf'\n",
            sock.display(),
            garage.endpoint(),
            d = dest.display(),
        ),
    )
    .unwrap();
    std::fs::write(dest.join("postgresql.auto.conf"), "").unwrap();
    std::fs::write(dest.join("recovery.signal"), "").unwrap();
    std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        pgwarden::fsutil::chown_tree(
            &dest,
            pgwarden::fsutil::Owner {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            },
        )
        .unwrap();
    }
    let log = dir.join("barman-restored.log");
    std::fs::write(&log, "").unwrap();
    if let Ok(Some(u)) = nix::unistd::User::from_name("postgres") {
        let _ = nix::unistd::chown(&log, Some(u.uid), Some(u.gid));
    }
    let mut pg_ctl = Command::new(bindir().join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(&dest)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"])
        .envs(garage.env())
        .env("AWS_DEFAULT_REGION", "garage");
    run_as_postgres(&mut pg_ctl);
    let out = pg_ctl.output().unwrap();
    assert!(
        out.status.success(),
        "pg_ctl start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_ctl has gone; postgres runs by itself, stopped by its pid from here on.
    let postmaster = Postmaster(dest.clone());
    let started = t0.elapsed().as_secs_f64();
    while psql(port, "postgres", "SELECT pg_is_in_recovery()") != "f" {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "barman-cloud's restore did not finish recovery; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let barman_total = t0.elapsed().as_secs_f64();
    drop(postmaster);
    let barman_segments = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("restored log file")
        .count();

    println!("\n## Time to a writable primary from a pgwarden gzip backup, then `pgbench -t 5000 -c 2`, to the end of the archive\n");
    println!("| tool | s to a primary out of recovery | of which fetching and unpacking the backup | CPU s | peak RSS MB |");
    println!("|---|---|---|---|---|");
    println!(
        "| pgwarden run, PGWARDEN_RESTORE_URL (start to /primary 200; CPU and RSS: `pgwarden run` and its reaped children) | {pw_total:.1} | {extracted:.1} | {cpu:.1} | {:.0} |",
        peak as f64 / 1024.0
    );
    println!(
        "| barman-cloud-restore, then postgres with restore_command = barman-cloud-wal-restore (until pg_is_in_recovery() is false; CPU and RSS: barman-cloud-restore) | {barman_total:.1} | {:.1} | {:.1} | {:.0} |",
        fetch.wall,
        fetch.cpu,
        fetch.rss_kb as f64 / 1024.0
    );
    println!(
        "\n(barman-cloud's postgres was started {started:.1} s in; recovery took the rest. \
         WAL files restored from the archive: {pw_segments} by pgwarden's, {barman_segments} by barman-cloud's.)\n"
    );
    println!("pgwarden's log, seconds from its first line:\n");
    for (m, t) in &phases {
        println!("- {t:.1} s: {m}");
    }
    println!();
    println!("| ratio | value | target |");
    println!("|---|---|---|");
    println!(
        "| pgwarden bootstrap vs barman-cloud-restore + recovery (time) | {:.1}x faster | >= 3x |",
        barman_total / pw_total
    );
    println!(
        "| pgwarden's backup extracted vs barman-cloud-restore (time) | {:.1}x faster | >= 5x |",
        fetch.wall / extracted
    );

    if let Some(out) = perf {
        profiled_restore(bin, dir, url, id, env, out);
    }
    extracted
}

/// The same bootstrap again, unmeasured, under `perf record` (children included).
fn profiled_restore(
    bin: &Path,
    dir: &Path,
    url: &str,
    id: &str,
    env: &[(String, String)],
    out: &Path,
) {
    let mut w = Warden::new(&dir.join("restored-perf"));
    w.env.extend(env.iter().cloned());
    for (k, v) in [
        ("PGWARDEN_NAME", "restored-perf"),
        ("PGWARDEN_ARCHIVE_NAME", "restored-perf"),
        ("PGWARDEN_RESTORE_URL", url),
        ("PGWARDEN_RESTORE_NAME", SOURCE),
        ("PGWARDEN_RESTORE_BACKUP_ID", id),
    ] {
        set_env(&mut w, k, v);
    }
    let mut perf = Command::new("perf")
        .args(["record", "-F", "499", "-g", "-q", "-o"])
        .arg(out)
        .arg("--")
        .arg(bin)
        .arg("run")
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(w.dir.join("log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf");
    let t0 = Instant::now();
    while !matches!(pgwarden::http::client::get(&pgwarden::http::client::Target::Tcp(w.http), "/primary"), Ok(r) if r.status == 200)
        && t0.elapsed() < Duration::from_secs(300)
        && perf.try_wait().ok().flatten().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // pgwarden is perf's child: stop it by its pid, and perf ends with it.
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", perf.id()))
        .unwrap_or_default();
    for pid in kids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = perf.wait();
    println!("(perf profile of a pgwarden bootstrap: {})", out.display());
}
