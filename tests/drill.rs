//! Restore drills (issue 17): `pgwarden restore-drill` proves that a backup restores,
//! reports what it recovered and what failed, removes what it made, and never writes
//! into the archive; `PGWARDEN_DRILL_SCHEDULE` runs it under `pgwarden run`; the last
//! result shows in `/status` and `/metrics`, also after a restart. Real PostgreSQL and
//! an archive on a volume, one source instance for every case; the cluster-wide drill
//! key on a real etcd.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::wal::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

/// `pgwarden restore-drill --json <args>` with `pg`'s settings and `env`: its exit,
/// its JSON result (`Null` when it printed none) and its stderr.
fn drill(pg: &Instance, env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, Value, String) {
    let mut argv = vec!["restore-drill", "--json"];
    argv.extend_from_slice(args);
    let mut cmd = pg.command_for_test(&argv);
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run pgwarden restore-drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The log goes to stderr: stdout is the result alone.
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if json.is_null() {
        err.push_str(&format!("\nstdout:\n{stdout}"));
    }
    (out.status, json, err)
}

/// What is in the drill directory: between drills, the record alone.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The value of an unlabelled metric.
fn metric(pg: &Instance, name: &str) -> Option<f64> {
    let body = pg.get("/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_proves_a_backup_reports_failures_and_leaves_nothing_behind() {
    let tmp = test_dir();
    let store = Store::fs();
    let (mut pg, info, segs) = backup_then_segments(tmp.path(), &store, 3).await;
    // The last commit, and a time before it.
    let mut client = pg.connect().await;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (0)", &[]).await.unwrap();
    let began: f64 = tx
        .query_one("SELECT extract(epoch FROM now())::float8", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    switch_and_wait_archived(&pg).await;
    let rows = count_t(&pg).await;
    let dir = pg.dir.join("pgwarden-drill");

    // A good backup: restored, recovered to the end of the archive, checked.
    let sql = format!("SELECT count(*) = {rows} FROM t");
    let (status, r, err) = drill(&pg, &[("PGWARDEN_DRILL_SQL", &sql)], &[]);
    assert!(status.success(), "the drill failed: {r:#}\n{err}");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["backup_id"], info["backup_id"], "{r:#}");
    assert_eq!(r["target"], "end of archive");
    assert_eq!(r["recovered_to_source"], "last_transaction", "{r:#}");
    let recovered_to = r["recovered_to_unix"].as_f64().unwrap();
    assert!(
        recovered_to >= began,
        "recovered to {recovered_to}, before the last commit (begun at {began}): {r:#}"
    );
    assert!(r["duration_seconds"].as_f64().unwrap() > 0.0, "{r:#}");
    let checks: Vec<(&str, bool)> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [("pg_amcheck", true), ("PGWARDEN_DRILL_SQL", true)],
        "{r:#}"
    );
    assert_eq!(entries(&dir), ["last-drill.json"], "only the record stays");

    // The running pgwarden shows it, though another process ran it.
    let st = pg.status().drill.expect("/status has drill");
    let last = st.record.last.expect("a last drill");
    assert!(last.ok && last.trigger == "command", "{last:?}");
    assert_eq!(st.record.successes, 1);
    let ended = last.ended_unix;
    assert_eq!(
        metric(&pg, "pgwarden_drill_last_success_timestamp_seconds"),
        Some(ended)
    );
    assert_eq!(metric(&pg, "pgwarden_drill_failures_total"), Some(0.0));
    assert_eq!(metric(&pg, "pgwarden_drill_last_failed"), Some(0.0));
    assert!(metric(&pg, "pgwarden_drill_recovered_to_timestamp_seconds").unwrap() >= began);
    assert!(metric(&pg, "pgwarden_drill_last_duration_seconds").unwrap() > 0.0);

    // A segment in the middle of the archive goes: the drill fails naming it, and
    // writes nothing into the archive.
    pg.stop();
    let hole = segs[1].clone();
    let object = archived(store.root(), "src", &hole);
    let aside = tmp.path().join("aside");
    std::fs::rename(&object, &aside).unwrap();
    let before = tree(store.root());
    let (status, r, err) = drill(&pg, &[], &[]);
    assert_eq!(status.code(), Some(1), "{r:#}\n{err}");
    assert_eq!(r["failed_step"], "recover", "{r:#}");
    assert!(
        err.contains(&format!("WAL segment {hole} is missing from the archive")),
        "the missing segment is named: {err}"
    );
    assert_eq!(tree(store.root()), before, "the archive is unchanged");
    assert_eq!(entries(&dir), ["last-drill.json"]);
    std::fs::rename(&aside, &object).unwrap();

    // No room: the drill is refused, saying how much it needs. A tiny file system on
    // the drill directory, in a mount namespace of the drill's own.
    if is_root() {
        let tiny = tmp.path().join("tiny");
        std::fs::create_dir(&tiny).unwrap();
        let mut small = Instance::new(tmp.path(), "unused");
        small.env = pg.env.clone();
        small.exec_prefix = [
            "unshare",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=4m tmpfs \"$0\" && exec \"$@\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([tiny.display().to_string()])
        .collect();
        let dir_env = tiny.display().to_string();
        let (status, r, err) = drill(&small, &[("PGWARDEN_DRILL_DIR", &dir_env)], &[]);
        assert_eq!(status.code(), Some(1), "{r:#}\n{err}");
        assert_eq!(r["failed_step"], "room", "{r:#}");
        let want = format!("PGWARDEN_DRILL_DIR: {} has ", tiny.display());
        assert!(
            err.contains(&want) && err.contains("needs") && err.contains("make room"),
            "{err}"
        );
        assert!(entries(&tiny).is_empty(), "nothing written under the mount");
    }

    // Under `pgwarden run`, the schedule drills, and the record outlived the restart.
    // Its SQL check returns false: the drill fails, saying so, in /status and /metrics.
    pg.set("PGWARDEN_DRILL_SCHEDULE", "1s")
        .set("PGWARDEN_DRILL_SQL", "SELECT count(*) = 0 FROM t");
    pg.start().wait_ready();
    let st = pg.status().drill.expect("/status has drill");
    assert_eq!(st.schedule.as_deref(), Some("1s"));
    assert_eq!(st.record.successes, 1, "{st:?}");
    assert!(st.record.failures >= 1, "the hole's drill: {st:?}");
    let last = eventually(Duration::from_secs(300), "a scheduled drill", || {
        let st = pg.status().drill.ok_or("no drill section")?;
        match st.record.last {
            Some(l) if l.trigger == "schedule" => Ok(l),
            other => Err(format!("last drill: {other:?}")),
        }
    });
    assert_eq!(last.failed_step.as_deref(), Some("sql"), "{last:?}");
    assert!(
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("PGWARDEN_DRILL_SQL: it returned false")),
        "{last:?}"
    );
    assert!(last.duration_seconds.is_some(), "it recovered: {last:?}");
    assert!(metric(&pg, "pgwarden_drill_failures_total").unwrap() >= 2.0);
    assert_eq!(metric(&pg, "pgwarden_drill_last_failed"), Some(1.0));
    assert_eq!(
        metric(&pg, "pgwarden_drill_last_success_timestamp_seconds"),
        Some(ended),
        "the last success is still the first drill"
    );
    // Stopping pgwarden stops a drill under way and removes what it made.
    pg.stop();
    assert_eq!(entries(&dir), ["last-drill.json"], "{}", pg.log());
}

// Each test has a runtime of its own; the HA tests' turn is held across its awaits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ha_a_replica_runs_the_scheduled_drills() {
    let _turn = ha::one_at_a_time();
    let tmp = test_dir();
    let store = Store::fs();
    let etcd = common::etcd::Etcd::start();
    let mut members = ha::members_on(tmp.path(), &etcd.url(), None, &["n1", "n2"]);
    for m in members.iter_mut() {
        store.configure(m, "c");
        m.set("PGWARDEN_DRILL_SCHEDULE", "* * * * *");
    }
    let primary = ha::bring_up(&mut members).await;
    // Until the replica is up the cluster has none, and a drill due then is the
    // primary's to run (and to fail: there is no backup yet).
    let both_up = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let replica = 1 - primary;
    take_backup(&members[primary]);
    let last = eventually(
        Duration::from_secs(300),
        "a scheduled drill on the replica",
        || {
            let st = members[replica].status().drill.ok_or("no drill section")?;
            match st.record.last_success.clone() {
                Some(l) if l.trigger == "schedule" => Ok(l),
                _ => Err(format!(
                    "{st:?}\n{}",
                    members[replica]
                        .log()
                        .lines()
                        .filter(|l| l.contains("drill"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )),
            }
        },
    );
    assert!(last.recovered_to.is_some(), "{last:?}");
    let st = members[primary].status().drill.expect("/status has drill");
    assert!(
        st.record
            .last
            .as_ref()
            .is_none_or(|l| l.started_unix < both_up),
        "the primary never drilled once the replica was up: {st:?}"
    );
    assert!(
        st.waiting.as_deref().is_some_and(|w| w.contains("primary")),
        "the primary says why it leaves it: {st:?}"
    );
    // The members go with the test: each is PID 1 of a namespace that dropping it kills,
    // drills and all.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_at_a_time_holds_the_clusters_drill_key() {
    use pgwarden::ha::store::Store as _;
    let etcd = common::etcd::Etcd::start();
    let store =
        pgwarden::ha::etcd::EtcdStore::connect(&[etcd.url()], "drill-test", Duration::from_secs(5))
            .await
            .unwrap();
    let a = store.grant(Duration::from_secs(30)).await.unwrap();
    let b = store.grant(Duration::from_secs(30)).await.unwrap();
    let holder = |r: Option<String>| r.unwrap_or_default();
    assert_eq!(
        holder(store.acquire_job("drill", "pg-1", a).await.unwrap()),
        "pg-1"
    );
    // A retry of a win whose answer was lost still reports the win.
    assert_eq!(
        holder(store.acquire_job("drill", "pg-1", a).await.unwrap()),
        "pg-1"
    );
    assert_eq!(
        holder(store.acquire_job("drill", "pg-2", b).await.unwrap()),
        "pg-1"
    );
    // The holder's lease goes (its drill ended, or the member died): the key goes.
    store.revoke(a).await.unwrap();
    assert_eq!(
        holder(store.acquire_job("drill", "pg-2", b).await.unwrap()),
        "pg-2"
    );
    assert_eq!(store.job_last("drill").await.unwrap(), None);
    store
        .put_job_last("drill", b"{\"member\":\"pg-2\"}")
        .await
        .unwrap();
    assert_eq!(
        store.job_last("drill").await.unwrap().as_deref(),
        Some(&b"{\"member\":\"pg-2\"}"[..])
    );
}

#[test]
fn bad_drill_arguments_and_settings_are_refused_naming_them() {
    let tmp = test_dir();
    let pg = Instance::new(tmp.path(), "nothing");
    // (environment, arguments, what the refusal names)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (&[], &[], "PGWARDEN_ARCHIVE_URL"),
        (&[], &["--backup-id", "latest"], "--backup-id"),
        (&[], &["--target-time", "yesterday"], "--target-time"),
        (
            &[("PGWARDEN_DRILL_DIR", "relative")],
            &[],
            "PGWARDEN_DRILL_DIR",
        ),
    ];
    for (env, args, named) in cases {
        let (status, _, err) = drill(&pg, env, args);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
        assert!(err.contains("nothing was restored"), "{err}");
    }
    assert!(!pg.pgdata.exists(), "PGDATA untouched");
    assert!(
        !pg.dir.join("pgwarden-drill").exists(),
        "no drill directory made"
    );
}
