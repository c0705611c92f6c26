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
            &["PGWARDEN_USER_CONF", "work_mem"],
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
