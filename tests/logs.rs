//! Logs that alert: records of pgwarden's children come out at their own level,
//! every form of a password literal is redacted, and text logs carry no colour codes
//! when they do not go to a terminal. Against a real PostgreSQL.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Every form of a password literal in a role statement, each with its own secret.
const FORMS: &[(&str, &str)] = &[
    (
        "CREATE ROLE password_admin PASSWORD 'plain-1111'",
        "plain-1111",
    ),
    ("CREATE ROLE r_quote PASSWORD 'it''s-2222'", "s-2222"),
    (
        "CREATE ROLE r_dollar PASSWORD $$dollar-3333$$",
        "dollar-3333",
    ),
    (
        "CREATE ROLE r_tag PASSWORD $pw$tagged-4444$pw$",
        "tagged-4444",
    ),
    (
        "CREATE ROLE r_escape PASSWORD E'esc\\'aped-5555'",
        "aped-5555",
    ),
    ("CREATE ROLE r_unicode PASSWORD U&'uni-6666'", "uni-6666"),
    (
        "ALTER ROLE r_quote WITH ENCRYPTED PaSsWoRd 'mixed-7777'",
        "mixed-7777",
    ),
    (
        "CREATE ROLE r_lines LOGIN PASSWORD\n  'next-line-8888'",
        "next-line-8888",
    ),
    (
        "ALTER ROLE r_lines PASSWORD 'multi\nline-9999'",
        "line-9999",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_a_password_literal_is_redacted() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "redact");
    std::fs::write(
        &pg.user_conf,
        "shared_buffers = 16MB\nmax_connections = 40\nlog_statement = 'ddl'\n",
    )
    .unwrap();
    pg.start().wait_ready();
    let client = pg.connect().await;
    for (sql, _) in FORMS {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // A failing statement is logged again as the STATEMENT of its error.
    let _ = client
        .batch_execute("ALTER ROLE no_such_role PASSWORD 'in-error-0000'")
        .await
        .unwrap_err();
    let secrets = FORMS
        .iter()
        .map(|(_, s)| *s)
        .chain(["in-error-0000"])
        .collect::<Vec<_>>();
    // Wait until the last statement has been logged, then look at everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pg.log().contains("no_such_role") {
        assert!(Instant::now() < deadline, "log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = pg.log();
    json_lines(&log);
    for secret in &secrets {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
    for form in [
        "PASSWORD '***'",
        "$$***$$",
        "$pw$***$pw$",
        "E'***'",
        "U&'***'",
    ] {
        assert!(
            log.contains(form),
            "the statement is logged, redacted as {form}:\n{log}"
        );
    }
    assert!(
        log.contains("CREATE ROLE password_admin"),
        "a role named password_* is still shown:\n{log}"
    );
}

/// A primary whose archive, a directory, is replaced by a plain file once it runs, so
/// that archive_command fails; returns it after a WAL switch.
async fn failing_archive(tmp: &std::path::Path, name: &str, format: &str) -> Instance {
    let archive = scratch_dir(tmp).join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::set_permissions(
        &archive,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut pg = Instance::new(tmp, name);
    pg.set(
        "PGWARDEN_ARCHIVE_URL",
        format!("file://{}", archive.display()),
    )
    .set("PGWARDEN_ARCHIVE_TIMEOUT", "1")
    .set("PGWARDEN_LOG_FORMAT", format);
    pg.start().wait_ready();
    // Nothing can be stored under a plain file, not even by root.
    std::fs::remove_dir_all(&archive).unwrap();
    std::fs::write(&archive, "not a directory").unwrap();
    pg.connect()
        .await
        .batch_execute("CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal()")
        .await
        .unwrap();
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_command_is_an_error_line_in_text_logs_too() {
    let tmp = test_dir();
    let mut pg = failing_archive(tmp.path(), "childtext", "text").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        if let Some(l) = pg.log().lines().find(|l| l.contains("wal-archive failed")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "log:\n{}", pg.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(line.contains(" ERROR "), "{line}");
    assert!(line.contains(" file="), "its own fields: {line}");
    assert!(!line.contains('{'), "no nested JSON: {line}");
    assert!(!pg.log().contains('\u{1b}'), "no colour codes");
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_command_logs_an_error_record_of_pgwarden() {
    let tmp = test_dir();
    let pg = failing_archive(tmp.path(), "childlog", "json").await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let lines = json_lines(&pg.log());
        if let Some(r) = lines.into_iter().find(|l| {
            l["logger"] == "pgwarden"
                && l["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("wal-archive failed"))
        }) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no error record of wal-archive; log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["level"], "error", "{record}");
    assert!(
        record["file"].as_str().is_some(),
        "its own fields: {record}"
    );
    assert!(
        record["error"].as_str().is_some(),
        "its own fields: {record}"
    );
    let nested = json_lines(&pg.log()).into_iter().find(|l| {
        l["logger"] == "postgres"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("wal-archive failed"))
    });
    assert!(
        nested.is_none(),
        "a child record came out as postgres's: {nested:?}"
    );
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let tmp = test_dir();
    let mut pg = Instance::new(tmp.path(), "text");
    // A fresh PGDATA without a password: refused, through the log.
    pg.set("PGWARDEN_LOG_FORMAT", "text")
        .unset("POSTGRES_PASSWORD");
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success());
    assert!(out.contains("POSTGRES_PASSWORD"), "{out}");
    assert!(out.contains("ERROR"), "a text record: {out}");
    assert!(!out.contains('\u{1b}'), "colour codes in {out:?}");
}
