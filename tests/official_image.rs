//! What a Compose file or a Kubernetes manifest written for the official `postgres`
//! image passes as `command:`/`args:` works unchanged with pgwarden as the entrypoint.

mod common;

use common::*;

async fn show(pg: &Instance, name: &str) -> String {
    let client = pg.connect().await;
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_c_settings_are_the_user_layer_and_win_over_the_fragment() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "cmdline");
    // The harness's fragment sets max_connections = 40; the command line comes later.
    pg.start_with(&[
        "postgres",
        "-c",
        "max_connections=200",
        "--log-min-duration-statement=250",
    ])
    .wait_ready();
    assert_eq!(show(&pg, "max_connections").await, "200");
    assert_eq!(show(&pg, "log_min_duration_statement").await, "250ms");
    let conf = std::fs::read_to_string(pg.pgdata.join("postgresql.conf")).unwrap();
    assert!(
        conf.contains("# Command line (pgwarden postgres -c ...)\nmax_connections = '200'\n"),
        "{conf}"
    );
    pg.stop();

    // `command: ["-c", "..."]`: a leading option means postgres, as in the official image.
    pg.start_with(&["-c", "max_connections=150"]).wait_ready();
    assert_eq!(show(&pg, "max_connections").await, "150");
    assert_eq!(show(&pg, "log_min_duration_statement").await, "-1");
    pg.stop();
}

#[test]
fn owned_or_invalid_command_line_settings_are_refused_before_pgdata_is_touched() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "cmdline-bad");
    for (args, needles) in [
        (
            &["postgres", "-c", "port=6000", "-c", "max_connections=200"][..],
            &["postgres -c", "-c port=6000", "set PGPORT instead"][..],
        ),
        (
            &["postgres", "-c", "work_mem=banana"],
            &["PGWARDEN_USER_CONF or postgres -c", "work_mem"],
        ),
        (
            &["postgres", "-c", "max_connections"],
            &["expected -c name=value"],
        ),
        (&["postgres", "-i"], &["-i", "-c name=value"]),
    ] {
        let (status, out) = pg.run_cli(args);
        assert!(!status.success(), "{args:?} was accepted:\n{out}");
        for n in needles {
            assert!(out.contains(n), "{args:?}: expected {n:?} in:\n{out}");
        }
        assert!(!pg.pgdata.exists(), "{args:?} created PGDATA:\n{out}");
    }
}

#[test]
fn any_other_command_is_executed_as_is() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "exec");
    let (status, out) = pg.run_cli(&["sh", "-c", "echo hello from $0; exit 7", "sh"]);
    assert_eq!(status.code(), Some(7), "{out}");
    assert_eq!(out.trim(), "hello from sh");

    let (status, out) = pg.run_cli(&["postgres", "--version"]);
    assert!(status.success(), "{out}");
    assert!(out.starts_with("postgres (PostgreSQL) "), "{out}");

    let (status, out) = pg.run_cli(&["no-such-command-here"]);
    assert_eq!(status.code(), Some(127), "{out}");
    assert!(out.contains("no-such-command-here"), "{out}");
    assert!(!pg.pgdata.exists());
}

fn write_file(path: &std::path::Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn xz(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("xz")
        .args(["--compress", "--stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xz (xz-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_environment_and_init_script_conventions_work() {
    let tmp = test_dir();
    let scratch = scratch_dir(tmp.path());
    let mut pg = Instance::new(tmp.path(), "officialenv");
    let secrets = pg.dir.join("secrets");
    write_file(&secrets.join("user"), b"admin\n", 0o644);
    write_file(&secrets.join("db"), b"appdb\n", 0o644);
    write_file(
        &secrets.join("password"),
        format!("{PASSWORD}\n").as_bytes(),
        0o644,
    );
    write_file(&secrets.join("initdb-args"), b"--wal-segsize=32\n", 0o644);
    let waldir = scratch.join("wal");
    pg.unset("POSTGRES_PASSWORD")
        .set(
            "POSTGRES_USER_FILE",
            secrets.join("user").display().to_string(),
        )
        .set("POSTGRES_DB_FILE", secrets.join("db").display().to_string())
        .set(
            "POSTGRES_PASSWORD_FILE",
            secrets.join("password").display().to_string(),
        )
        .set(
            "POSTGRES_INITDB_ARGS_FILE",
            secrets.join("initdb-args").display().to_string(),
        )
        .set("POSTGRES_INITDB_WALDIR", waldir.display().to_string());

    let init = pg.dir.join("initdb.d");
    write_file(
        &init.join("01-role.sql"),
        b"CREATE ROLE app LOGIN; CREATE SCHEMA app AUTHORIZATION app;\n",
        0o644,
    );
    // Sourced, as the official image documents: its helpers, and other roles over the socket.
    let seen = scratch.join("seen");
    write_file(
        &init.join("02-sourced.sh"),
        format!(
            "psql -v ON_ERROR_STOP=1 --username app --dbname \"$POSTGRES_DB\" -c 'CREATE TABLE app.owned_by_app (id int)'\n\
             \"${{psql[@]}}\" <<-'EOSQL'\n\tCREATE TABLE via_psql_array (id int);\nEOSQL\n\
             docker_process_sql -c 'CREATE TABLE via_helper (id int)'\n\
             echo \"user=$POSTGRES_USER db=$POSTGRES_DB password=$POSTGRES_PASSWORD\" > {seen}\n",
            seen = seen.display()
        )
        .as_bytes(),
        0o644,
    );
    write_file(
        &init.join("03-data.sql.xz"),
        &xz("CREATE TABLE from_xz (id int);\n"),
        0o644,
    );
    write_file(
        &init.join("04-data.sql.zst"),
        &zstd::encode_all(&b"CREATE TABLE from_zst (id int);\n"[..], 3).unwrap(),
        0o644,
    );
    // A background job that holds the script's output open until the server is up: the
    // bootstrap must not wait for it, or the server would never come up.
    let release = scratch.join("release");
    write_file(
        &init.join("05-background.sh"),
        format!(
            "#!/bin/sh\n( while [ ! -e {release} ]; do sleep 0.1; done; echo background job done ) &\necho started a background job\n",
            release = release.display()
        )
        .as_bytes(),
        0o755,
    );
    // Edits of the configuration, as the official image's documentation shows them.
    write_file(
        &init.join("06-edit-conf.sh"),
        b"echo \"shared_preload_libraries = 'pg_stat_statements'\" >> \"$PGDATA/postgresql.conf\"\n\
          echo 'host all app 192.168.0.0/16 scram-sha-256' >> \"$PGDATA/pg_hba.conf\"\n",
        0o644,
    );
    pg.start();
    // Ends the background job whatever happens below.
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _release = Release(release.clone());
    pg.wait_ready();
    std::fs::write(&release, "").unwrap();

    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("user=admin db=appdb password={PASSWORD}")
    );
    let client = pg.connect_as("admin", PASSWORD, "appdb").await.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename || ':' || tableowner FROM pg_tables \
             WHERE schemaname IN ('public', 'app') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        vec![
            "app.owned_by_app:app",
            "public.from_xz:admin",
            "public.from_zst:admin",
            "public.via_helper:admin",
            "public.via_psql_array:admin",
        ]
    );
    let segsize: String = client
        .query_one("SHOW wal_segment_size", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(segsize, "32MB", "POSTGRES_INITDB_ARGS_FILE was used");
    assert_eq!(
        std::fs::read_link(pg.pgdata.join("pg_wal")).unwrap(),
        waldir
    );
    assert!(waldir.join("archive_status").is_dir());
    // The init script's configuration edits are in force, not overwritten.
    client
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    let statements: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(statements > 0, "pg_stat_statements is preloaded");
    assert!(pg.log().contains("init scripts changed the configuration"));
    // Other roles over the socket were for the bootstrap only.
    assert!(!pg.pgdata.join("pg_hba.bootstrap.conf").exists());
    let hba = std::fs::read_to_string(pg.pgdata.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    assert!(
        hba.contains("host all app 192.168.0.0/16 scram-sha-256"),
        "{hba}"
    );
    assert!(pg.connect_as("app", "", "appdb").await.is_err());
    pg.stop();

    // Still in force at the next start, when pgwarden renders everything again.
    pg.start().wait_ready();
    let client = pg.connect_as("admin", PASSWORD, "appdb").await.unwrap();
    let preload: String = client
        .query_one("SHOW shared_preload_libraries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(preload, "pg_stat_statements");
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_auth_method_trust_needs_no_password_and_warns() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "trust");
    // As with the official image: `-e POSTGRES_PASSWORD= -e POSTGRES_HOST_AUTH_METHOD=trust`.
    pg.set("POSTGRES_PASSWORD", "")
        .set("POSTGRES_HOST_AUTH_METHOD", "trust");
    pg.start().wait_ready();
    let client = pg.connect_as("postgres", "", "postgres").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    assert!(
        pg.log()
            .contains("POSTGRES_HOST_AUTH_METHOD=trust: anyone who can reach port"),
        "{}",
        pg.log()
    );
    pg.stop();
}

#[test]
fn wrong_official_variables_are_refused_before_pgdata_is_touched() {
    let tmp = test_dir();
    let user_file = tmp.path().join("user");
    std::fs::write(&user_file, "admin\n").unwrap();
    type Case<'a> = (Vec<(&'a str, String)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("POSTGRES_USER", "admin".into()),
                ("POSTGRES_USER_FILE", user_file.display().to_string()),
            ],
            &["POSTGRES_USER", "POSTGRES_USER_FILE", "use one"],
        ),
        (
            vec![("POSTGRES_DB_FILE", "/nonexistent/db".into())],
            &["POSTGRES_DB", "/nonexistent/db"],
        ),
        (
            vec![("POSTGRES_HOST_AUTH_METHOD", "banana".into())],
            &["POSTGRES_HOST_AUTH_METHOD", "banana"],
        ),
        (
            vec![("POSTGRES_INITDB_WALDIR", "relative/wal".into())],
            &["POSTGRES_INITDB_WALDIR", "absolute"],
        ),
    ];
    for (i, (vars, needles)) in cases.into_iter().enumerate() {
        let mut pg = Instance::new(tmp.path(), &format!("badenv{i}"));
        for (k, v) in &vars {
            pg.set(k, v.clone());
        }
        let (status, out) = pg.run_cli(&["run"]);
        assert!(!status.success(), "{vars:?} accepted:\n{out}");
        for n in needles {
            assert!(out.contains(n), "{vars:?}: expected {n:?} in:\n{out}");
        }
        assert!(!pg.pgdata.exists(), "{vars:?}");
    }
}

/// A PGDATA as the official image leaves it: initdb's files, then the settings and rules
/// a user or an init script added by hand.
fn official_pgdata(pg: &Instance) -> (String, String) {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&pg.pgdata).unwrap();
    let pwfile = pg.dir.join("pwfile");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let mut cmd = std::process::Command::new(pg_bindir().join("initdb"));
    cmd.arg("-D")
        .arg(&pg.pgdata)
        .arg("--username=postgres")
        .arg("--pwfile")
        .arg(&pwfile)
        .stdout(std::process::Stdio::null());
    if is_root() {
        let u = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        for p in [&pg.pgdata, &pwfile] {
            nix::unistd::chown(p.as_path(), Some(u.uid), Some(u.gid)).unwrap();
        }
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw()).current_dir("/");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let append = |name: &str, text: &str| {
        let p = pg.pgdata.join(name);
        let mut all = std::fs::read_to_string(&p).unwrap();
        all.push_str(text);
        std::fs::write(&p, &all).unwrap();
        all
    };
    let conf = append(
        "postgresql.conf",
        "listen_addresses = '*'\ntimezone = 'Europe/Paris'\nmax_connections = 300\n\
         shared_preload_libraries = 'pg_stat_statements'\n",
    );
    let hba = append(
        "pg_hba.conf",
        "\nhost all all all scram-sha-256\nhost all app 10.0.0.0/8 scram-sha-256\n",
    );
    (conf, hba)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_pgdata_keeps_its_settings_and_rules() {
    let tmp = test_dir();
    let mut pg = Instance::primary(tmp.path(), "adopt");
    let (conf, hba) = official_pgdata(&pg);
    pg.unset("PGWARDEN_USER_CONF");
    pg.start().wait_ready();
    assert_eq!(show(&pg, "max_connections").await, "300");
    assert_eq!(show(&pg, "timezone").await, "Europe/Paris");
    assert_eq!(
        show(&pg, "shared_preload_libraries").await,
        "pg_stat_statements"
    );
    assert_eq!(show(&pg, "listen_addresses").await, "*");
    // The originals are kept, byte for byte, beside the rendered files.
    assert_eq!(
        std::fs::read_to_string(pg.pgdata.join("postgresql.conf.orig")).unwrap(),
        conf
    );
    assert_eq!(
        std::fs::read_to_string(pg.pgdata.join("pg_hba.conf.orig")).unwrap(),
        hba
    );
    let rendered_hba = std::fs::read_to_string(pg.pgdata.join("pg_hba.conf")).unwrap();
    assert!(
        rendered_hba.contains("host all app 10.0.0.0/8 scram-sha-256"),
        "{rendered_hba}"
    );
    assert!(
        !rendered_hba.contains("127.0.0.1/32 trust"),
        "initdb's trust rules are not carried over:\n{rendered_hba}"
    );
    let log = pg.log();
    assert!(log.contains("adopting it"), "{log}");
    assert!(
        log.contains("not carried over") && log.contains("listen_addresses = '*'"),
        "{log}"
    );

    // A replica copies the adopted files with its base backup and runs with the same
    // settings from its first start (a hot standby refuses fewer connections).
    let mut replica = Instance::replica_of(tmp.path(), "adopt-replica", &pg);
    replica.unset("PGWARDEN_USER_CONF");
    replica.start().wait_ready();
    let client = replica.connect().await;
    let row = client
        .query_one(
            "SELECT current_setting('max_connections'), current_setting('timezone'), pg_is_in_recovery()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, bool>(2)
        ),
        ("300".to_owned(), "Europe/Paris".to_owned(), true)
    );
    replica.stop();
    pg.stop();

    // With a fragment, the fragment wins where both set a parameter, and the log says so.
    pg.set("PGWARDEN_USER_CONF", pg.user_conf.display().to_string());
    let from = pg.log().len();
    pg.start().wait_ready();
    assert_eq!(show(&pg, "max_connections").await, "40");
    assert_eq!(show(&pg, "timezone").await, "Europe/Paris");
    let second = pg.log()[from..].to_owned();
    assert!(
        second.contains("PGWARDEN_USER_CONF wins over postgresql.conf.orig"),
        "{second}"
    );
    assert!(!second.contains("adopting it"), "adopted once:\n{second}");
    pg.stop();
}

/// OpenShift's restricted SCC: a random UID from the namespace's range, group 0, no
/// passwd entry, and the image's `/var/run/postgresql` (mode 3777, not ours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arbitrary_uid_without_a_passwd_entry_bootstraps_and_serves() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        eprintln!("skipped: switching to an arbitrary UID needs root");
        return;
    }
    assert!(
        pgwarden::nss::find_library().is_some(),
        "libnss_wrapper.so is missing: run scripts/install-deps.sh"
    );
    // A fresh UID each run, in OpenShift's range, that /etc/passwd does not know.
    let uid = loop {
        let candidate = 1_000_650_000 + (std::process::id() % 10_000) + rand_offset();
        if nix::unistd::User::from_uid(candidate.into())
            .unwrap()
            .is_none()
        {
            break candidate;
        }
    };
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "arbitrary");
    // The volume: group 0 writable, as OpenShift prepares it.
    nix::unistd::chown(pg.dir.as_path(), Some(uid.into()), Some(0.into())).unwrap();
    std::fs::set_permissions(&pg.dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    std::fs::set_permissions(&pg.user_conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(&pg.socket_dir).unwrap();
    std::fs::set_permissions(&pg.socket_dir, std::fs::Permissions::from_mode(0o3777)).unwrap();
    pg.exec_prefix = [
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        "--regid=0".to_owned(),
        "--clear-groups".to_owned(),
    ]
    .to_vec();
    // The official image's PGDATA (not ours, mode 1777) cannot be used: postgres must
    // own it. Refused before anything is touched, saying what to do.
    let theirs = pg.dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    pg.set("PGDATA", theirs.display().to_string());
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("PGDATA") && out.contains("subdirectory"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    pg.set("PGDATA", pg.pgdata.display().to_string());

    pg.start().wait_ready();
    assert_eq!(show(&pg, "max_connections").await, "40");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&pg.pgdata).unwrap().uid(), uid);
    let log = pg.log();
    assert!(log.contains("nss_wrapper"), "{log}");
    assert!(
        log.contains("using a socket directory of another user as it is"),
        "{log}"
    );
    // The local verbs work too (peer authentication through the wrapper's name).
    let (status, out) = pg.run_cli(&["status"]);
    assert!(status.success(), "{out}");
    assert!(out.contains("\"running\""), "{out}");
    pg.stop();
    // And again on the existing PGDATA.
    pg.start().wait_ready();
    pg.stop();
}

/// A few bits of the clock, so that parallel runs pick different UIDs.
fn rand_offset() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 10_000
}

#[test]
fn a_postgresql_conf_that_cannot_be_adopted_is_refused_untouched() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "adopt-bad");
    official_pgdata(&pg);
    let conf = pg.pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("work_mem = '4MB\n");
    std::fs::write(&conf, text).unwrap();
    let before = tree(&pg.pgdata);
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("PGDATA") && out.contains("cannot be adopted") && out.contains("unterminated"),
        "{out}"
    );
    assert_eq!(tree(&pg.pgdata), before, "PGDATA was touched:\n{out}");
}
