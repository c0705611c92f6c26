//! The bootstrap of a primary: init scripts run once, and an interrupted bootstrap is
//! detected and redone from clean, never mistaken for a valid PGDATA.

mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn write_script(dir: &Path, name: &str, text: &str, mode: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

async fn tables(pg: &Instance, db: &str) -> Vec<String> {
    let client = pg.connect_as("postgres", PASSWORD, db).await.unwrap();
    client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_scripts_run_once_in_name_order() {
    let tmp = test_dir();
    let scratch = scratch_dir(tmp.path());
    let mut pg = Instance::new(tmp.path(), "scripts");
    pg.set("POSTGRES_DB", "app");
    let init = pg.dir.join("initdb.d");
    write_script(
        &init,
        "01-schema.sql",
        "CREATE TABLE a (id int PRIMARY KEY);\nINSERT INTO a VALUES (1);\n",
        0o644,
    );
    std::fs::write(
        init.join("02-more.sql.gz"),
        gzip("CREATE TABLE b (id int REFERENCES a);\n"),
    )
    .unwrap();
    let runs = scratch.join("runs.log");
    write_script(
        &init,
        "03-sourced.sh",
        &format!("echo \"sourced as $(id -un) db=$PGDATABASE\" >> {}\npsql -v ON_ERROR_STOP=1 -c 'CREATE TABLE c (id int)'\n", runs.display()),
        0o644,
    );
    write_script(
        &init,
        "04-exec.sh",
        &format!("#!/bin/sh\necho executed >> {}\n", runs.display()),
        0o755,
    );
    write_script(&init, "README.txt", "ignored\n", 0o644);
    pg.start().wait_ready();
    assert_eq!(tables(&pg, "app").await, vec!["a", "b", "c"]);
    let expected_user = if is_root() {
        "postgres".to_owned()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    };
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        format!("sourced as {expected_user} db=app\nexecuted\n")
    );

    pg.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(pg.wait_exit(Duration::from_secs(30)).success());
    pg.start().wait_ready();
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        2,
        "scripts ran again on restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_killed_during_init_scripts_is_redone_from_clean() {
    let tmp = test_dir();
    let scratch = scratch_dir(tmp.path());
    let mut pg = Instance::new(tmp.path(), "killscripts");
    let init = pg.dir.join("initdb.d");
    write_script(
        &init,
        "01-table.sql",
        "CREATE TABLE once (id int);\n",
        0o644,
    );
    let started = scratch.join("slow-started");
    write_script(
        &init,
        "02-slow.sh",
        &format!("touch {}\nsleep 60\n", started.display()),
        0o644,
    );
    pg.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            Instant::now() < deadline,
            "the slow script never started; log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // As when the container dies: pgwarden and its process group, at once.
    pg.kill_hard();
    assert!(
        !pg.pgdata.join("PG_VERSION").exists(),
        "an unfinished bootstrap must not look complete"
    );

    std::fs::remove_file(init.join("02-slow.sh")).unwrap();
    let before = pg.log().len();
    pg.start().wait_ready();
    let second = pg.log()[before..].to_owned();
    assert!(second.contains("interrupted"), "{second}");
    // CREATE TABLE would have failed had the first attempt's table survived.
    assert_eq!(tables(&pg, "postgres").await, vec!["once"]);
    assert!(!pg.pgdata.join(".pgwarden-staging").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_killed_during_initdb_is_redone_from_clean() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "killinitdb");
    pg.start();
    let staging = pg.pgdata.join(".pgwarden-staging");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staging.join("base").exists() {
        assert!(
            Instant::now() < deadline,
            "initdb never started; log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    pg.kill_hard();
    assert!(!pg.pgdata.join("PG_VERSION").exists());

    let before = pg.log().len();
    pg.start().wait_ready();
    assert!(
        pg.log()[before..].contains("interrupted"),
        "{}",
        &pg.log()[before..]
    );
    let client = pg.connect().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_database", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_script_stops_the_bootstrap_and_names_the_script() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "badscript");
    let init = pg.dir.join("initdb.d");
    write_script(
        &init,
        "01-broken.sql",
        "CREATE TABLE ok (id int);\nSELECT * FROM missing_table;\n",
        0o644,
    );
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = pg.log();
    assert!(
        log.contains("01-broken.sql") && log.contains("missing_table"),
        "{log}"
    );
    assert!(!pg.pgdata.join("PG_VERSION").exists());

    write_script(&init, "01-broken.sql", "CREATE TABLE ok (id int);\n", 0o644);
    pg.start().wait_ready();
    assert_eq!(tables(&pg, "postgres").await, vec!["ok"]);
}
