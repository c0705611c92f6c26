//! Every wrong setting is refused before anything is touched: a clear error naming the
//! setting, a non-zero exit, and PGDATA exactly as it was.

mod common;

use common::*;
use std::path::Path;

/// Runs `pgwarden run` expecting it to refuse; returns its output.
fn refused(pg: &Instance) -> String {
    let before = tree(&pg.pgdata);
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success(), "expected a refusal, got success:\n{out}");
    assert_eq!(tree(&pg.pgdata), before, "PGDATA was touched:\n{out}");
    out
}

fn assert_mentions(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(out.contains(n), "expected {n:?} in:\n{out}");
    }
}

#[test]
fn a_fresh_pgdata_without_a_password_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "nopw");
    pg.unset("POSTGRES_PASSWORD");
    let out = refused(&pg);
    assert_mentions(&out, &["POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"]);
    assert!(!pg.pgdata.exists());
}

#[test]
fn an_unknown_role_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "role");
    pg.set("PGWARDEN_ROLE", "leader");
    assert_mentions(&refused(&pg), &["PGWARDEN_ROLE", "leader"]);
}

#[test]
fn a_fragment_setting_owned_parameters_is_refused_with_every_line() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "owned");
    std::fs::write(
        &pg.user_conf,
        "work_mem = 8MB\nlisten_addresses = 'localhost'\nport = 6000\narchive_command = 'cp %p /x'\nwal_level = minimal\nrestart_after_crash = on\nlog_destination = 'csvlog'\n",
    )
    .unwrap();
    let out = refused(&pg);
    assert_mentions(
        &out,
        &[
            "PGWARDEN_USER_CONF",
            "line 2: listen_addresses",
            "line 3: port",
            "line 4: archive_command",
            "line 5: wal_level",
            "line 6: restart_after_crash",
            "line 7: log_destination",
        ],
    );
    assert!(!out.contains("line 1"), "work_mem is the user's:\n{out}");
}

#[test]
fn a_malformed_fragment_is_refused() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "malformed");
    std::fs::write(&pg.user_conf, "work_mem = '8MB\nshared_buffers\n").unwrap();
    assert_mentions(
        &refused(&pg),
        &["PGWARDEN_USER_CONF", "line 1: unterminated", "line 2"],
    );
}

#[test]
fn a_fragment_value_postgres_rejects_is_refused() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "badvalue");
    std::fs::write(&pg.user_conf, "work_mem = banana\n").unwrap();
    assert_mentions(
        &refused(&pg),
        &[
            "PGWARDEN_USER_CONF",
            "invalid value for parameter \\\"work_mem\\\"",
            "banana",
        ],
    );
    std::fs::write(&pg.user_conf, "no_such_parameter = 1\n").unwrap();
    assert_mentions(
        &refused(&pg),
        &[
            "PGWARDEN_USER_CONF",
            "unrecognized configuration parameter",
            "no_such_parameter",
        ],
    );
}

#[test]
fn a_value_with_a_newline_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "newline");
    pg.set("POSTGRES_DB", "app\nlisten_addresses='*'");
    assert_mentions(&refused(&pg), &["POSTGRES_DB", "newline"]);
    let mut pg = Instance::new(tmp.path(), "newline2");
    std::fs::write(&pg.user_conf, "application_name = 'a\\nb'\n").unwrap();
    pg.set("POSTGRES_DB", "app");
    assert_mentions(&refused(&pg), &["PGWARDEN_USER_CONF", "newline"]);
}

#[test]
fn a_malformed_hba_line_is_refused() {
    let tmp = test_dir();
    for (i, (rule, want)) in [
        ("host all all 10.0.0.0/40 scram-sha-256", "prefix"),
        ("host all all 10.0.0.0/8 letmein", "method"),
        ("host all", "address"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pg = Instance::new(tmp.path(), &format!("hba{i}"));
        let hba = pg.dir.join("hba.conf");
        std::fs::write(
            &hba,
            format!("# ok\nhost all all 10.0.0.0/8 scram-sha-256\n{rule}\n"),
        )
        .unwrap();
        pg.set("PGWARDEN_USER_HBA", hba.display().to_string());
        assert_mentions(&refused(&pg), &["PGWARDEN_USER_HBA", "line 3", want]);
    }
}

#[test]
fn a_pgdata_of_another_major_version_is_refused() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "oldmajor");
    std::fs::create_dir_all(pg.pgdata.join("base")).unwrap();
    std::fs::write(pg.pgdata.join("PG_VERSION"), "9\n").unwrap();
    assert_mentions(&refused(&pg), &["PGDATA", "PostgreSQL 9", "pg_upgrade"]);
}

/// A real cluster of the other tested major (15 under 18's binaries, 18 under 15's):
/// refused before anything is touched, naming both majors and the way out.
#[test]
fn a_real_pgdata_of_the_other_tested_major_is_refused_untouched() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "othermajor");
    let (other, other_bindir) = other_major_bindir();
    initdb_with(&other_bindir, &pg.pgdata);
    let out = refused(&pg);
    assert_mentions(
        &out,
        &[
            "PGDATA",
            &format!("holds a PostgreSQL {other} cluster"),
            &format!("are PostgreSQL {}", pg_major()),
            "PGWARDEN_PG_BINDIR",
            "pg_upgrade",
        ],
    );
    assert!(!pg.pgdata.join("postgresql.conf.orig").exists());
}

#[test]
fn a_missing_bindir_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "nobin");
    pg.set("PGWARDEN_PG_BINDIR", "/nonexistent/bin");
    assert_mentions(&refused(&pg), &["PGWARDEN_PG_BINDIR", "/nonexistent/bin"]);
}

#[test]
fn a_pgdata_holding_something_else_is_never_touched() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "foreign");
    std::fs::create_dir_all(&pg.pgdata).unwrap();
    std::fs::write(pg.pgdata.join("precious.txt"), "do not delete").unwrap();
    assert_mentions(
        &refused(&pg),
        &["PGDATA", "precious.txt", "not a PostgreSQL data directory"],
    );
}

#[test]
fn an_http_port_in_use_fails_start_up_with_a_clear_message() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "bind");
    let _taken = std::net::TcpListener::bind(pg.http).unwrap();
    assert_mentions(&refused(&pg), &["PGWARDEN_HTTP_ADDR", &pg.http.to_string()]);
    assert!(!Path::new(&pg.pgdata).exists());
}

#[test]
fn config_prints_the_files_and_writes_nothing() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "config");
    let hba = pg.dir.join("hba.conf");
    std::fs::write(&hba, "host app app 10.1.0.0/16 scram-sha-256\n").unwrap();
    pg.set("PGWARDEN_USER_HBA", hba.display().to_string());
    let (status, out) = pg.run_cli(&["config"]);
    assert!(status.success(), "{out}");
    assert_mentions(
        &out,
        &[
            "postgresql.conf <==",
            "shared_buffers = '16MB'",
            &format!("port = '{}'", pg.port),
            "wal_level = 'replica'",
            "hot_standby = 'on'",
            "pg_hba.conf <==",
            "host app app 10.1.0.0/16 scram-sha-256",
            "host all all all scram-sha-256",
            "local replication \"postgres\" peer map=pgwarden",
            "pg_ident.conf <==",
        ],
    );
    assert!(!out.contains(" trust"), "nothing is trusted:\n{out}");
    assert!(!pg.pgdata.exists(), "config wrote nothing");
}

#[test]
fn replica_settings_are_refused_before_any_copy() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "r-nohost");
    pg.set("PGWARDEN_ROLE", "replica")
        .set("PGWARDEN_REPLICATION_PASSWORD", "x");
    assert_mentions(&refused(&pg), &["PGWARDEN_PRIMARY_HOST"]);
    assert!(!pg.pgdata.exists());

    let mut pg = Instance::new(tmp.path(), "r-nopw");
    pg.set("PGWARDEN_ROLE", "replica")
        .set("PGWARDEN_PRIMARY_HOST", "127.0.0.1");
    assert_mentions(&refused(&pg), &["PGWARDEN_REPLICATION_PASSWORD", "_FILE"]);
    assert!(!pg.pgdata.exists());

    let mut pg = Instance::new(tmp.path(), "r-name");
    pg.set("PGWARDEN_ROLE", "replica")
        .set("PGWARDEN_PRIMARY_HOST", "127.0.0.1")
        .set("PGWARDEN_REPLICATION_PASSWORD", "x")
        .set("PGWARDEN_NAME", "--..--");
    assert_mentions(&refused(&pg), &["PGWARDEN_NAME", "slot name"]);
    assert!(!pg.pgdata.exists());

    let mut pg = Instance::new(tmp.path(), "r-net");
    pg.set("PGWARDEN_ALLOWED_NETWORK", "10.0.0.0/99");
    assert_mentions(&refused(&pg), &["PGWARDEN_ALLOWED_NETWORK"]);
}

#[test]
fn a_bad_clone_source_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "r-clone");
    pg.set("PGWARDEN_ROLE", "replica")
        .set("PGWARDEN_PRIMARY_HOST", "127.0.0.1")
        .set("PGWARDEN_REPLICATION_PASSWORD", "x")
        .set("PGWARDEN_CLONE_FROM", "bogus");
    assert_mentions(
        &refused(&pg),
        &["PGWARDEN_CLONE_FROM", "bogus", "primary or archive"],
    );
    assert!(!pg.pgdata.exists());
    // The cluster's own archive is where the backup comes from: without one, refused.
    pg.set("PGWARDEN_CLONE_FROM", "archive");
    assert_mentions(
        &refused(&pg),
        &["PGWARDEN_CLONE_FROM", "PGWARDEN_ARCHIVE_URL"],
    );
    assert!(!pg.pgdata.exists());
}

#[test]
fn a_binary_the_run_as_user_cannot_execute_is_refused_when_archiving() {
    if !is_root() {
        eprintln!("skipped: only root drops privileges");
        return;
    }
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "privbin");
    let archive = tmp.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    pg.set(
        "PGWARDEN_ARCHIVE_URL",
        format!("file://{}", archive.display()),
    );
    // A copy of pgwarden in a directory only root can enter.
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let copy = private.join("pgwarden");
    std::fs::copy(bin(), &copy).unwrap();
    let out = std::process::Command::new(&copy)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&pg.env)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert_mentions(
        &text,
        &["PGWARDEN_ARCHIVE_URL", "cannot execute", "private/pgwarden"],
    );
    assert!(!pg.pgdata.exists());
}

#[test]
fn bad_tls_settings_are_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "tls-half");
    pg.set("PGWARDEN_TLS_CERT", pg.user_conf.display().to_string());
    assert_mentions(&refused(&pg), &["PGWARDEN_TLS_KEY"]);
    let mut pg = Instance::new(tmp.path(), "tls-garbage");
    // Files that exist but hold no PEM certificate or key.
    let not_pem = pg.user_conf.display().to_string();
    pg.set("PGWARDEN_TLS_CERT", &not_pem)
        .set("PGWARDEN_TLS_KEY", &not_pem);
    assert_mentions(&refused(&pg), &["PGWARDEN_TLS_CERT"]);
}

/// Each of these used to pass the checks and fail only at the first start after
/// initdb, leaving a half-made cluster behind.
#[test]
fn errors_postgres_would_find_after_initdb_are_caught_before() {
    let tmp = test_dir();

    let pg = Instance::new(tmp.path(), "preload");
    std::fs::write(
        &pg.user_conf,
        "shared_buffers = 16MB\nshared_preload_libraries = 'pg_stat_statements, no_such_extension'\n",
    )
    .unwrap();
    let out = refused(&pg);
    assert_mentions(
        &out,
        &["PGWARDEN_USER_CONF", "no_such_extension", "not installed"],
    );
    assert!(
        !out.contains("pg_stat_statements,"),
        "an installed library is fine:\n{out}"
    );
    assert!(!pg.pgdata.exists());

    let mut pg = Instance::new(tmp.path(), "clientcert");
    let hba = pg.dir.join("hba.conf");
    std::fs::write(
        &hba,
        "hostssl all all 10.0.0.0/8 scram-sha-256 clientcert=bogus\n",
    )
    .unwrap();
    pg.set("PGWARDEN_USER_HBA", hba.display().to_string());
    assert_mentions(
        &refused(&pg),
        &["PGWARDEN_USER_HBA", "line 1", "clientcert=bogus"],
    );
    assert!(!pg.pgdata.exists());

    let mut pg = Instance::new(tmp.path(), "noarchivedir");
    let missing = tmp.path().join("not-mounted");
    pg.set(
        "PGWARDEN_ARCHIVE_URL",
        format!("file://{}", missing.display()),
    );
    assert_mentions(
        &refused(&pg),
        &["PGWARDEN_ARCHIVE_URL", "not-mounted", "not a directory"],
    );
    assert!(!pg.pgdata.exists() && !missing.exists());
}

#[test]
fn every_bad_line_of_every_user_file_is_reported_at_once() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "alllines");
    std::fs::write(
        &pg.user_conf,
        "work_mem = '4MB\nport = 6000\nshared_buffers = 16MB\nx = 1 2\narchive_command = 'cp %p /x'\n",
    )
    .unwrap();
    let hba = pg.dir.join("hba.conf");
    std::fs::write(
        &hba,
        "host all all 10.0.0.0/8 scram-sha-256\nhost all all 10.0.0.0/33 md5\nlocal all all wat\n",
    )
    .unwrap();
    let ident = pg.dir.join("ident.conf");
    std::fs::write(&ident, "staff alice\npgwarden root app\nstaff bob app\n").unwrap();
    pg.set("PGWARDEN_USER_HBA", hba.display().to_string())
        .set("PGWARDEN_USER_IDENT", ident.display().to_string());
    let out = refused(&pg);
    assert_mentions(
        &out,
        &[
            "PGWARDEN_USER_CONF",
            "line 1: unterminated",
            "line 2: port is set by pgwarden",
            "line 4:",
            "line 5: archive_command",
            "PGWARDEN_USER_HBA",
            "line 2:",
            "line 3:",
            "PGWARDEN_USER_IDENT",
            "line 1: expected MAPNAME",
            "line 2: the map name",
        ],
    );
    assert!(!out.contains("line 3: shared_buffers"), "{out}");
}

#[test]
fn ha_timing_that_breaks_the_ttl_rule_is_refused() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "hattl");
    for (k, v) in [
        ("PGWARDEN_HA", "etcd"),
        ("PGWARDEN_CLUSTER", "c1"),
        // Nothing listens there: the settings are refused before any connection.
        ("PGWARDEN_ETCD_ENDPOINTS", "http://127.0.0.1:9"),
        ("PGWARDEN_REPLICATION_PASSWORD", "rep"),
        ("PGWARDEN_HA_TTL", "20"),
    ] {
        pg.set(k, v);
    }
    assert_mentions(
        &refused(&pg),
        &[
            "PGWARDEN_HA_TTL",
            "PGWARDEN_HA_LOOP_WAIT + 2 × PGWARDEN_HA_RETRY_TIMEOUT",
        ],
    );
    pg.set("PGWARDEN_HA_TTL", "30");
    pg.set("PGWARDEN_ROLE", "replica");
    assert_mentions(&refused(&pg), &["PGWARDEN_ROLE", "leader key"]);
    pg.unset("PGWARDEN_ROLE");
    pg.set("PGWARDEN_SYNC_MODE", "strict");
    let conf = tmp.path().join("sync.conf");
    std::fs::write(&conf, "synchronous_standby_names = '*'\n").unwrap();
    pg.set("PGWARDEN_USER_CONF", conf.display().to_string());
    assert_mentions(
        &refused(&pg),
        &["synchronous_standby_names", "PGWARDEN_SYNC_NODE_COUNT"],
    );
}

#[test]
fn failover_slots_are_set_up_under_ha_on_17_and_later_and_not_contradicted() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "fslots");
    for (k, v) in [
        ("PGWARDEN_HA", "etcd"),
        ("PGWARDEN_CLUSTER", "c1"),
        // Nothing listens there: `config` and the refusals never connect.
        ("PGWARDEN_ETCD_ENDPOINTS", "http://127.0.0.1:9"),
        ("PGWARDEN_REPLICATION_PASSWORD", "rep"),
    ] {
        pg.set(k, v);
    }
    let conf = tmp.path().join("logical.conf");
    std::fs::write(&conf, "wal_level = logical\n").unwrap();
    pg.set("PGWARDEN_USER_CONF", conf.display().to_string());
    let (status, out) = pg.run_cli(&["config"]);
    assert!(status.success(), "{out}");
    let lines = [
        "sync_replication_slots = 'on'",
        "hot_standby_feedback = 'on'",
        "host postgres \"replicator\"",
    ];
    if pg_major() < 17 {
        for l in lines {
            assert!(!out.contains(l), "{l} on {}:\n{out}", pg_major());
        }
        return;
    }
    assert_mentions(&out, &lines);
    // Opted out: nothing of it.
    std::fs::write(&conf, "wal_level = logical\nsync_replication_slots = off\n").unwrap();
    let (status, out) = pg.run_cli(&["config"]);
    assert!(status.success(), "{out}");
    assert!(!out.contains("hot_standby_feedback"), "{out}");
    // What would break it is refused, naming the file and the parameter.
    std::fs::write(&conf, "wal_level = logical\nhot_standby_feedback = off\n").unwrap();
    assert_mentions(
        &refused(&pg),
        &[
            "PGWARDEN_USER_CONF",
            "hot_standby_feedback = off",
            "sync_replication_slots = off",
        ],
    );
    pg.set("PGWARDEN_SYNC_MODE", "on");
    std::fs::write(
        &conf,
        "wal_level = logical\nsynchronized_standby_slots = 'n2'\n",
    )
    .unwrap();
    assert_mentions(
        &refused(&pg),
        &[
            "PGWARDEN_USER_CONF",
            "synchronized_standby_slots is set by pgwarden",
        ],
    );
}
