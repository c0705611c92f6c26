//! Issue 3's figure: starting a replica of a ~1 GB primary until /readyz answers 200,
//! against a plain `pg_basebackup -R` plus `pg_ctl start -w` of the same primary.

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// pgbench scale 70 is about 1 GB of tables and indexes.
const SCALE: &str = "70";

pub fn run(bin: &Path) {
    let tmp = temp_dir("pgwarden-bench-replica-");
    let mut p = Warden::new(&tmp.path().join("primary"));
    std::fs::create_dir_all(&p.dir).unwrap();
    p.env
        .push(("PGWARDEN_REPLICATION_PASSWORD".into(), "bench-repl".into()));
    let mut primary = p.spawn(bin);
    p.wait_ready(Duration::from_secs(120));
    let t0 = Instant::now();
    let st = pgbench(p.port, &["-i", "-q", "-s", SCALE]);
    assert!(
        st.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let size = psql(
        p.port,
        "postgres",
        "SELECT pg_size_pretty(pg_database_size('postgres'))",
    );
    println!(
        "\n## Replica start to ready, primary of {size} (pgbench -s {SCALE}, built in {:.0} s)\n",
        t0.elapsed().as_secs_f64()
    );

    let mut plain = Vec::new();
    let mut warden = Vec::new();
    for round in 0..2 {
        plain.push(plain_replica(&p, &tmp.path().join(format!("plain{round}"))));
        warden.push(warden_replica(
            bin,
            &p,
            &tmp.path().join(format!("warden{round}")),
        ));
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (w, pl) = (avg(&warden), avg(&plain));
    println!("| measure | pgwarden replica | pg_basebackup -R + pg_ctl start -w | target |");
    println!("|---|---|---|---|");
    println!(
        "| start to ready (s, mean of 2) | {w:.2} | {pl:.2} | within 10% ({:+.1}%) |",
        (w / pl - 1.0) * 100.0
    );
    println!("| rounds (s) | {} | {} | |", fmt(&warden), fmt(&plain));
    stop(&mut primary);
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn drop_slot(p: &Warden, slot: &str) {
    psql(p.port, "postgres", &format!("SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'"));
}

fn warden_replica(bin: &Path, p: &Warden, dir: &Path) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut w = Warden::new(dir);
    w.env.retain(|(k, _)| k != "POSTGRES_PASSWORD");
    w.env.extend([
        ("PGWARDEN_ROLE".into(), "replica".into()),
        ("PGWARDEN_PRIMARY_HOST".into(), "127.0.0.1".into()),
        ("PGWARDEN_PRIMARY_PORT".into(), p.port.to_string()),
        ("PGWARDEN_REPLICATION_PASSWORD".into(), "bench-repl".into()),
        ("PGWARDEN_NAME".into(), "benchreplica".into()),
    ]);
    let t0 = Instant::now();
    let mut child = w.spawn(bin);
    w.wait_ready(Duration::from_secs(1800));
    let took = t0.elapsed().as_secs_f64();
    stop(&mut child);
    drop_slot(p, "benchreplica");
    let _ = std::fs::remove_dir_all(dir);
    took
}

fn plain_replica(p: &Warden, dir: &Path) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let data = dir.join("data");
    let port = free_port().to_string();
    let bindir = bindir();
    let t0 = Instant::now();
    let st = run_as_postgres(
        Command::new(bindir.join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args([
                "-X",
                "stream",
                "--checkpoint=fast",
                "-R",
                "-C",
                "-S",
                "plainreplica",
                "-h",
                "127.0.0.1",
                "-U",
                "replicator",
                "-p",
                &p.port.to_string(),
            ])
            .env("PGPASSWORD", "bench-repl"),
    )
    .output()
    .unwrap();
    assert!(
        st.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // The copied postgresql.conf points at the primary's port, sockets and hba file.
    let opts = format!(
        "-p {port} -c unix_socket_directories={dir} -c hba_file={data}/pg_hba.conf -c ident_file={data}/pg_ident.conf",
        dir = dir.display(),
        data = data.display()
    );
    let st = run_as_postgres(
        Command::new(bindir.join("pg_ctl"))
            .args(["start", "-w", "-s", "-l"])
            .arg(dir.join("log"))
            .arg("-o")
            .arg(&opts)
            .arg("-D")
            .arg(&data),
    )
    .status()
    .unwrap();
    let took = t0.elapsed().as_secs_f64();
    assert!(
        st.success(),
        "pg_ctl start failed; see {}",
        dir.join("log").display()
    );
    run_as_postgres(
        Command::new(bindir.join("pg_ctl"))
            .args(["stop", "-w", "-s", "-m", "fast", "-D"])
            .arg(&data),
    )
    .status()
    .unwrap();
    drop_slot(p, "plainreplica");
    let _ = std::fs::remove_dir_all(dir);
    took
}
