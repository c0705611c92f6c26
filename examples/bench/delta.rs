//! Delta restore: rebuilding a replica that missed 1% of the writes, against seeding a
//! new replica from the same backup into an empty directory, on a pgbench database of
//! `PGWARDEN_BENCH_SCALE` (default 200: about 3 GB), gzip, 2 jobs, Garage on
//! the same cores.
//!
//! 1. A primary archiving to Garage; `pgbench -i`; a full backup.
//! 2. A replica seeded from that backup (`PGWARDEN_CLONE_FROM=archive`), then stopped.
//! 3. On the primary, 1% of `pgbench_accounts`' rows updated (a contiguous range of
//!    `aid`, as in the incremental section: random rows would touch nearly every page,
//!    and every file-level or block-level tool would copy them all), a CHECKPOINT,
//!    and a second full backup.
//! 4. The stale replica's cluster discarded (what `pgwarden reinit` or a failed rewind
//!    does) and the replica started again: it restores the second backup over its own
//!    files. Then a new replica seeded from the same backup into an empty directory.
//!
//! Both are measured from the seed's start to the restored files checked, from their
//! logs, and to /readyz.

use crate::backup::{
    milestones, pgwarden_backup, set_env, switch_and_wait_archived, Guard, SOURCE,
};
use crate::harness::*;
use crate::incremental::Source;
use std::path::Path;
use std::time::{Duration, Instant};

const SEEDING: &str = "seeding this replica from the archive";
const CHECKED: &str = "every restored file matches the backup manifest";
const DELTA: &str = "delta restore: keeping the files";

/// What one seed took, from the replica's log.
struct Seed {
    /// Seconds from the seed's start to the files checked.
    restore: f64,
    /// Seconds from the start of `pgwarden run` to /readyz.
    ready: f64,
    /// The delta's log line, when it was one.
    delta: Option<serde_json::Value>,
    cpu: f64,
    peak_kb: u64,
}

fn replica(dir: &Path, primary: &Warden, env: &[(String, String)]) -> Warden {
    let mut r = Warden::new(dir);
    r.env.retain(|(k, _)| k != "POSTGRES_PASSWORD");
    r.env.extend(env.iter().cloned());
    for (k, v) in [
        ("PGWARDEN_ROLE", "replica"),
        ("PGWARDEN_PRIMARY_HOST", "127.0.0.1"),
        ("PGWARDEN_PRIMARY_PORT", &primary.port.to_string()),
        ("PGWARDEN_REPLICATION_PASSWORD", "bench-repl"),
        ("PGWARDEN_CLONE_FROM", "archive"),
        ("PGWARDEN_ARCHIVE_NAME", SOURCE),
    ] {
        set_env(&mut r, k, v);
    }
    r
}

/// Starts `r` (its PGDATA empty, or a discarded cluster) and waits for /readyz.
fn seed(bin: &Path, r: &Warden, name: &str) -> Seed {
    let mut r2 = r.clone();
    set_env(&mut r2, "PGWARDEN_NAME", name);
    let from = std::fs::metadata(r.dir.join("log")).map_or(0, |m| m.len() as usize);
    let t0 = Instant::now();
    let mut child = Guard(Some(r2.spawn(bin)));
    let pid = child.id();
    let sampler = crate::backup::RssSampler::start(pid);
    r2.wait_ready(Duration::from_secs(1800));
    let ready = t0.elapsed().as_secs_f64();
    let peak_kb = sampler.peak_kb();
    let cpu = crate::backup::cpu_with_children(pid);
    child.stop();
    let log = std::fs::read_to_string(r.dir.join("log")).unwrap_or_default();
    let log = &log[from..];
    let at = milestones(log, &[SEEDING, CHECKED]);
    let t = |m: &str| {
        at.iter()
            .find(|(w, _)| w == m)
            .map_or(f64::NAN, |(_, t)| *t)
    };
    let delta = log
        .lines()
        .filter(|l| l.contains(DELTA))
        .find_map(|l| serde_json::from_str(l).ok());
    Seed {
        restore: t(CHECKED) - t(SEEDING),
        ready,
        delta,
        cpu,
        peak_kb,
    }
}

pub fn run(bin: &Path) {
    let Source {
        tmp,
        garage: _garage,
        env,
        w: p,
        child: mut primary,
        scale,
        accounts,
        db_mb,
        ..
    } = Source::start(
        bin,
        "delta",
        &[("PGWARDEN_REPLICATION_PASSWORD", "bench-repl")],
    );
    let pid = primary.id();
    pgwarden_backup(bin, &p, pid, "first", None);

    // The replica, seeded from the first backup, then stopped.
    let r = replica(&tmp.path().join("stale"), &p, &env);
    seed(bin, &r, "stale");

    // 1% of the rows change; the second backup.
    let hi = accounts / 100;
    psql(
        p.port,
        "postgres",
        &format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 1 AND {hi}"
        ),
    );
    psql(p.port, "postgres", "CHECKPOINT");
    let (_, second, _) = pgwarden_backup(bin, &p, pid, "second", None);
    switch_and_wait_archived(p.port);
    let load = crate::backup::loadavg();

    // The stale replica rebuilt over its own files; then a new one from empty.
    pgwarden::bootstrap::discard(&r.pgdata).expect("discard the stale replica's cluster");
    let delta = seed(bin, &r, "stale");
    let fresh = seed(bin, &replica(&tmp.path().join("fresh"), &p, &env), "fresh");
    primary.stop();

    println!("\n## Delta restore (`pgbench -i -s {scale}`: {db_mb:.0} MB, {accounts} accounts; 1% of the rows updated since the replica's copy; backup {second}, gzip, 2 jobs; Garage on the same cores; load average {load})\n");
    println!("| seed of a replica from the archive's latest backup | s, seed start to files checked | s, start to /readyz | CPU s (pgwarden run) | peak RSS MB |");
    println!("|---|---|---|---|---|");
    for (what, s) in [
        ("delta, over the stale replica's own files", &delta),
        ("whole, into an empty directory", &fresh),
    ] {
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} | {:.0} |",
            s.restore,
            s.ready,
            s.cpu,
            s.peak_kb as f64 / 1024.0
        );
    }
    if let Some(d) = &delta.delta {
        let mb = |k: &str| d[k].as_u64().unwrap_or(0) as f64 / 1e6;
        println!(
            "\nThe delta kept {} files ({:.0} MB), wrote {:.1} MB of {} files, read {:.1} MB of the backup's {:.0} MB in {} ranged reads, removed {} files; comparing the files took {:.2} s.",
            d["kept_files"], mb("kept_bytes"), mb("fetched_bytes"), d["fetched_files"],
            mb("read_bytes"), mb("stored_bytes"), d["reads"], d["removed_files"],
            d["seconds"].as_f64().unwrap_or(f64::NAN)
        );
    } else {
        println!(
            "\n(the stale replica was not restored with a delta: see {}/log)",
            r.dir.display()
        );
    }
    println!();
    println!("| ratio | value | target |");
    println!("|---|---|---|");
    println!(
        "| delta restore / whole restore (seed start to files checked) | {:.2} | <= 0.2 |",
        delta.restore / fresh.restore
    );
    if let Some(d) = &delta.delta {
        println!(
            "| bytes read by the delta / the backup's | {:.3} | |",
            d["read_bytes"].as_f64().unwrap_or(f64::NAN)
                / d["stored_bytes"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
