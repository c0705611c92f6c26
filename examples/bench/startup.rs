//! Issue 2's figures: idle RSS, time to ready against `pg_ctl start -w`, and what
//! probes cost postgres.

use crate::harness::*;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;

pub fn run(bin: &std::path::Path) {
    let tmp = temp_dir("pgwarden-bench-");
    let w = Warden::new(tmp.path());
    // Bootstrap once, then stop: every measurement starts on an existing PGDATA.
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(120));
    stop(&mut child);

    println!("\n## Start-up and idle cost (existing PGDATA, shared_buffers=128MB, {ROUNDS} rounds, median)\n");
    let mut warden_ms = Vec::new();
    let mut idle_rss = 0;
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        let mut child = w.spawn(bin);
        w.wait_ready(Duration::from_secs(60));
        warden_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if i == 0 {
            std::thread::sleep(Duration::from_secs(3));
            idle_rss = rss_kb(child.id());
        }
        stop(&mut child);
    }

    let pg_ctl = bindir().join("pg_ctl");
    let mut pgctl_ms = Vec::new();
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let st = run_as_postgres(
            Command::new(&pg_ctl)
                .args(["start", "-w", "-s", "-l", "/dev/null", "-D"])
                .arg(&w.pgdata),
        )
        .status()
        .unwrap();
        pgctl_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(st.success(), "pg_ctl start failed");
        run_as_postgres(
            Command::new(&pg_ctl)
                .args(["stop", "-w", "-s", "-m", "fast", "-D"])
                .arg(&w.pgdata),
        )
        .status()
        .unwrap();
    }
    let (wm, pm) = (median(warden_ms.clone()), median(pgctl_ms.clone()));
    println!("| measure | pgwarden | pg_ctl start -w | target |");
    println!("|---|---|---|---|");
    println!("| start to ready (ms, median) | {wm:.0} | {pm:.0} | within 100 ms of pg_ctl (diff {:+.0} ms) |", wm - pm);
    println!(
        "| start to ready (ms, min..max) | {:.0}..{:.0} | {:.0}..{:.0} | |",
        warden_ms.iter().cloned().fold(f64::MAX, f64::min),
        warden_ms.iter().cloned().fold(0.0, f64::max),
        pgctl_ms.iter().cloned().fold(f64::MAX, f64::min),
        pgctl_ms.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| supervisor idle RSS (MB) | {:.1} | n/a | <= 15 MB |",
        idle_rss as f64 / 1024.0
    );

    probe_load(bin, &w);
    metrics_load(bin, &w);
}

/// Scrapes /metrics 100 times a second for 10 s, with every statement postgres runs
/// logged, and counts them.
fn metrics_load(bin: &std::path::Path, w: &Warden) {
    let conf = w.dir.join("user.conf");
    let saved = std::fs::read_to_string(&conf).unwrap_or_default();
    std::fs::write(&conf, format!("{saved}log_statement = 'all'\n")).unwrap();
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(60));
    let log = w.dir.join("log");
    // Simple-protocol statements log as "statement: ...", prepared ones as "execute ...".
    let statements = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.matches("\"msg\":\"statement: ").count() + text.matches("\"msg\":\"execute ").count()
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = statements();
    let http = w.http;
    let t0 = Instant::now();
    let load = std::thread::spawn(move || {
        let target = pgwarden::http::client::Target::Tcp(http);
        let mut lat = Vec::new();
        for i in 0..1000u32 {
            let due = t0 + Duration::from_millis(10 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let s = Instant::now();
            let r = pgwarden::http::client::get(&target, "/metrics").unwrap();
            assert_eq!(r.status, 200);
            lat.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        lat
    });
    let lat = load.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let during = statements() - before;
    println!("\n## /metrics at 100 scrapes/s for 10 s\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| scrapes | 1000 in {secs:.1} s | |");
    println!(
        "| scrape latency p50 / p99 (ms) | {:.2} / {:.2} | |",
        percentile(lat.clone(), 0.5),
        percentile(lat, 0.99)
    );
    println!(
        "| statements postgres ran meanwhile (log_statement = all) | {during}, the monitor's once-a-second refresh: {:.2} per scrape | 0 added per scrape |",
        during as f64 / 1000.0
    );
    stop(&mut child);
    std::fs::write(&conf, saved).unwrap();
}

/// Hits /readyz 500 times a second for 10 s and watches pg_stat_activity meanwhile.
fn probe_load(bin: &std::path::Path, w: &Warden) {
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(60));
    // psql's own session is one of the client backends; template1 keeps the sampling out
    // of the postgres database's transaction count.
    let count = || {
        psql(
            w.port,
            "template1",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .parse::<i64>()
        .unwrap_or(0)
            - 1
    };
    let before = count();
    let http = w.http;
    let load = std::thread::spawn(move || {
        let target = pgwarden::http::client::Target::Tcp(http);
        let t0 = Instant::now();
        let mut lat = Vec::new();
        let mut ok = 0;
        for i in 0..5000u32 {
            let due = t0 + Duration::from_micros(2000 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let s = Instant::now();
            if matches!(pgwarden::http::client::get(&target, "/readyz"), Ok(r) if r.status == 200) {
                ok += 1;
            }
            lat.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        (ok, t0.elapsed(), lat)
    });
    let mut max_during = before;
    let mut rss_max = 0;
    while !load.is_finished() {
        max_during = max_during.max(count());
        rss_max = rss_max.max(rss_kb(child.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, took, lat) = load.join().unwrap();
    let after = count();
    let secs = took.as_secs_f64();
    println!("\n## /readyz at 500 requests/s for 10 s\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| requests answered 200 | {ok} of 5000 in {secs:.1} s ({:.0}/s) | |",
        5000.0 / secs
    );
    println!(
        "| probe latency p50 / p99 (ms) | {:.2} / {:.2} | |",
        percentile(lat.clone(), 0.5),
        percentile(lat, 0.99)
    );
    println!("| client backends before / max during / after | {before} / {max_during} / {after} | unchanged |");
    println!(
        "| supervisor peak RSS under load (MB) | {:.1} | |",
        rss_max as f64 / 1024.0
    );
    stop(&mut child);
}
