//! Incremental backups and the restore of their chains, on a pgbench database of
//! `PGWARDEN_BENCH_SCALE` (default 200: about 3 GB), gzip, 2 jobs, Garage on
//! the same cores.
//!
//! 1. A full backup.
//! 2. Three rounds of: update 5% of `pgbench_accounts`' rows (a contiguous range of
//!    `aid`, as a day's business touching recent rows would), then an incremental.
//!    The blocks that changed are counted independently of pgwarden: a CRC-32C of
//!    every 8 KiB block of every file under `base/` before and after the round (after
//!    a CHECKPOINT), the blocks that differ or are new. (Random rows instead would
//!    touch nearly every page: at ~60 rows a page, 5% of rows at random leave few
//!    pages unchanged, and any block-level incremental sends them all.)
//! 3. A full backup of the same data, then a bootstrap from it and from the chain (the
//!    full and the three incrementals): time to a writable primary and to the backup
//!    extracted.

use crate::backup::{
    bootstrap, garage_pid, pgwarden_backup_with, set_env, switch_and_wait_archived, Guard, SOURCE,
};
use crate::harness::garage::Garage;
use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const BLOCK: usize = 8192;

/// A CRC-32C of every block of every file under `dir`, by path.
fn block_sums(dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let sums = bytes.chunks(BLOCK).map(crc32c::crc32c).collect();
            out.insert(p.strip_prefix(dir).unwrap().display().to_string(), sums);
        }
    }
    out
}

/// Blocks of `after` that differ from `before` or are new.
fn changed_blocks(before: &BTreeMap<String, Vec<u32>>, after: &BTreeMap<String, Vec<u32>>) -> u64 {
    after
        .iter()
        .map(|(path, sums)| match before.get(path) {
            None => sums.len() as u64,
            Some(old) => sums
                .iter()
                .enumerate()
                .filter(|(i, s)| old.get(*i) != Some(s))
                .count() as u64,
        })
        .sum()
}

/// A pgwarden primary archiving in gzip to a Garage of its own, with gzip backups by
/// 2 jobs, loaded with `pgbench -i -s PGWARDEN_BENCH_SCALE` (default 200) and its WAL
/// archived: what the incremental and delta sections start from.
pub struct Source {
    pub tmp: tempfile::TempDir,
    pub garage: Garage,
    pub url: String,
    /// The archive's settings, for the members restored from it.
    pub env: Vec<(String, String)>,
    pub w: Warden,
    pub child: Guard,
    pub scale: String,
    pub accounts: i64,
    pub db_mb: f64,
}

impl Source {
    /// Starts it in a temp dir named after `name`, with `settings` besides.
    pub fn start(bin: &Path, name: &str, settings: &[(&str, &str)]) -> Source {
        let scale = std::env::var("PGWARDEN_BENCH_SCALE").unwrap_or_else(|_| "200".into());
        let tmp = temp_dir(&format!("pgwarden-bench-{name}-"));
        let garage = Garage::start();
        let url = format!("s3://{}/bench", garage.bucket);
        let mut env: Vec<(String, String)> = garage
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.push(("PGWARDEN_ARCHIVE_URL".into(), url.clone()));
        env.push(("PGWARDEN_ARCHIVE_COMPRESSION".into(), "gzip".into()));
        env.push(("PGWARDEN_BACKUP_COMPRESSION".into(), "gzip".into()));
        env.push(("PGWARDEN_BACKUP_JOBS".into(), "2".into()));
        let mut w = Warden::new(&tmp.path().join("source"));
        w.env.extend(env.iter().cloned());
        set_env(&mut w, "PGWARDEN_ARCHIVE_NAME", SOURCE);
        for (k, v) in settings {
            set_env(&mut w, k, v);
        }
        std::fs::write(
            w.dir.join("user.conf"),
            "shared_buffers = 128MB\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\n",
        )
        .unwrap();
        let child = Guard(Some(w.spawn(bin)));
        w.wait_ready(Duration::from_secs(120));
        let out = pgbench(w.port, &["-i", "-q", "-s", &scale, "-I", "dtGvp"]);
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        psql(w.port, "postgres", "CHECKPOINT");
        switch_and_wait_archived(w.port);
        let accounts: i64 = psql(w.port, "postgres", "SELECT count(*) FROM pgbench_accounts")
            .parse()
            .unwrap();
        let db_mb: f64 = psql(w.port, "postgres", "SELECT pg_database_size('postgres')")
            .parse::<f64>()
            .unwrap()
            / 1e6;
        Source {
            tmp,
            garage,
            url,
            env,
            w,
            child,
            scale,
            accounts,
            db_mb,
        }
    }
}

pub fn run(bin: &Path) {
    let Source {
        tmp,
        garage,
        url,
        env,
        w,
        mut child,
        scale,
        accounts,
        db_mb,
    } = Source::start(bin, "incr", &[]);
    let pid = child.id();
    let gpid = garage_pid(&garage);
    let garage_cpu = || gpid.map_or(f64::NAN, proc_cpu);
    println!("\n## Incremental backups (`pgbench -i -s {scale}`: {db_mb:.0} MB, {accounts} accounts; gzip, 2 jobs; Garage on the same cores; load average {})\n", crate::backup::loadavg());

    let backup = |label: &str, args: &[&str]| {
        let g0 = garage_cpu();
        let ((mut row, id, _), info) = pgwarden_backup_with(bin, &w, pid, label, None, args);
        row.garage_cpu = Some(garage_cpu() - g0);
        (row, id, info)
    };
    let (full, full_id, _) = backup("full", &[]);
    let base = w.pgdata.join("base");
    let mut sums = block_sums(&base);
    let mut rows = vec![(full, None::<u64>)];
    let mut last_id = full_id.clone();
    let step = accounts / 20;
    for round in 0..3 {
        let (lo, hi) = (round * step + 1, (round + 1) * step);
        psql(
            w.port,
            "postgres",
            &format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {hi}"),
        );
        psql(w.port, "postgres", "CHECKPOINT");
        let now = block_sums(&base);
        let changed = changed_blocks(&sums, &now);
        sums = now;
        let (row, id, info) = backup(
            &format!("incremental {} (5% of the rows updated)", round + 1),
            &["--incremental"],
        );
        assert_eq!(
            info["extra"]["incremental_of"],
            last_id.as_str(),
            "{info:#}"
        );
        last_id = id;
        rows.push((row, Some(changed)));
    }
    let chain_id = last_id.clone();
    let (same, same_id, _) = backup("full, of the same data as the chain", &[]);
    rows.push((same, None));
    psql(w.port, "postgres", "SELECT pg_switch_wal()");
    switch_and_wait_archived(w.port);
    child.stop();

    println!("| backup | s | CPU s (pgwarden run) | Garage CPU s | peak RSS MB | stored MB | changed blocks (MB) | stored / changed |");
    println!("|---|---|---|---|---|---|---|---|");
    for (r, changed) in &rows {
        let (changed_txt, ratio) = match changed {
            Some(c) => {
                let mb = *c as f64 * BLOCK as f64 / 1e6;
                (format!("{c} ({mb:.0})"), format!("{:.2}", r.stored_mb / mb))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {changed_txt} | {ratio} |",
            r.tool,
            r.wall,
            r.cpu,
            r.garage_cpu.unwrap_or(f64::NAN),
            r.rss_mb,
            r.stored_mb
        );
    }
    let full_wall = rows[0].0.wall;
    let incr: Vec<&(crate::backup::Row, Option<u64>)> =
        rows.iter().filter(|(_, c)| c.is_some()).collect();
    let worst_time = incr
        .iter()
        .map(|(r, _)| r.wall / full_wall)
        .fold(0.0, f64::max);
    let worst_bytes = incr
        .iter()
        .map(|(r, c)| r.stored_mb / (c.unwrap_or(1) as f64 * BLOCK as f64 / 1e6))
        .fold(0.0, f64::max);
    println!();

    let env_restore: Vec<(String, String)> = env.clone();
    let from_full = bootstrap(
        bin,
        &tmp.path().join("from-full"),
        &url,
        &same_id,
        &env_restore,
    );
    let from_chain = bootstrap(
        bin,
        &tmp.path().join("from-chain"),
        &url,
        &chain_id,
        &env_restore,
    );
    println!("| restore (bootstrap to a writable primary) | s to /primary 200 | of which the backup fetched and written | CPU s | peak RSS MB |");
    println!("|---|---|---|---|---|");
    for (what, b) in [
        ("the full of the same data", &from_full),
        ("the chain: full + 3 incrementals", &from_chain),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.0} |",
            b.total,
            b.extracted,
            b.cpu,
            b.peak_kb as f64 / 1024.0
        );
    }
    println!();
    println!("| ratio | value | target |");
    println!("|---|---|---|");
    println!("| incremental time / full time (worst of 3) | {worst_time:.2} | <= 0.3 |");
    println!("| incremental stored bytes / changed blocks' bytes (worst of 3; gzip) | {worst_bytes:.2} | <= 1.2 |");
    println!(
        "| chain restore / full restore (time to a primary) | {:.2} | <= 1.2 |",
        from_chain.total / from_full.total
    );
    println!(
        "| chain restore / full restore (backup fetched and written) | {:.2} | |",
        from_chain.extracted / from_full.extracted
    );
}
