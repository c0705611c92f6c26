//! Retention and scheduled backups (issue 10): `pgwarden backup-delete` selects the
//! backups and WAL that `barman-cloud-backup-delete` selects, on a catalogue of
//! pgwarden's and barman-cloud's backups, keep annotations included; deleting leaves
//! an archive both tools list alike and whose remaining backups have all their WAL;
//! `PGWARDEN_BACKUP_SCHEDULE` takes backups under `pgwarden run` and the retention
//! policy runs after each.

mod common;

use common::garage::Garage;
use common::wal::*;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Backups and WAL keys a deletion selects.
#[derive(Debug, PartialEq, Eq)]
struct Selected {
    backups: BTreeSet<String>,
    wal: BTreeSet<String>,
}

impl Selected {
    fn of(keys: impl Iterator<Item = String>) -> Selected {
        let mut s = Selected {
            backups: BTreeSet::new(),
            wal: BTreeSet::new(),
        };
        for key in keys {
            if let Some(dir) = key.strip_suffix("/backup.info") {
                s.backups.insert(dir.rsplit('/').next().unwrap().to_owned());
            } else if key.contains("/wals/") {
                s.wal.insert(key);
            }
        }
        s
    }
}

/// What `barman-cloud-backup-delete --dry-run` would delete: the quoted keys of its
/// "Skipping deletion of objects [...]" lines.
fn barman_selects(g: &Garage, url: &str, server: &str, policy: &str) -> Selected {
    let out = common::barman::run(
        g,
        &[
            "barman-cloud-backup-delete",
            "--dry-run",
            "-r",
            policy,
            url,
            server,
        ],
    );
    Selected::of(
        out.lines()
            .filter(|l| l.starts_with("Skipping deletion of objects"))
            .flat_map(|l| {
                l.split('\'')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            }),
    )
}

/// What `pgwarden backup-delete --dry-run` would delete, from its lines.
fn pgwarden_selects(pg: &Instance, args: &[&str]) -> Selected {
    let mut argv = vec!["backup-delete", "--dry-run"];
    argv.extend_from_slice(args);
    let (code, out) = pg.run_cli(&argv);
    assert!(code.success(), "{argv:?}: {out}");
    assert!(out.contains("nothing was deleted (--dry-run)"), "{out}");
    Selected::of(
        out.lines()
            .filter_map(|l| l.strip_prefix("would delete "))
            // Keys have no spaces; the closing line has.
            .filter(|l| !l.contains(' '))
            .map(str::to_owned),
    )
}

/// `pgwarden backup-list --json`: the ids, oldest first.
fn listed(pg: &Instance) -> Vec<String> {
    let (code, out) = pg.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "{out}");
    let v: Vec<serde_json::Value> =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `pgwarden backup`; returns the new backup's id and begin_wal.
fn backup(pg: &Instance) -> (String, String) {
    let (code, out) = pg.run_cli(&["backup"]);
    assert!(code.success(), "{out}");
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (
        info["backup_id"].as_str().unwrap().to_owned(),
        info["begin_wal"].as_str().unwrap().to_owned(),
    )
}

/// Some writes and a finished, archived segment between backups, so that each has
/// WAL of its own.
async fn some_wal(pg: &Instance) {
    pg.connect()
        .await
        .batch_execute("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    switch_and_wait_archived(pg).await;
}

/// A primary archiving in gzip (barman-cloud 3.4 reads no zstd) with a table.
async fn primary(tmp: &std::path::Path, store: &Store, name: &str) -> Instance {
    let pg = gzip_primary(tmp, store, name, "");
    create_t(&pg, 1000).await;
    pg
}

/// Every key under `prefix` in the archive.
async fn keys(store: &Store, server: &str, prefix: &str) -> BTreeSet<String> {
    use pgwarden::wal::storage::Storage;
    let (cfg, backend) = store.open(server).await;
    backend
        .list(&format!("{}/{prefix}", cfg.base()), usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_selects_what_barman_cloud_selects_and_deletes_it() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let url = format!("s3://{}/pgwarden-test", g.bucket);
    let pg = primary(tmp.path(), &store, "ret").await;

    // Four backups, the second one barman-cloud's, each with WAL after it.
    let mut ids = vec![backup(&pg).0];
    some_wal(&pg).await;
    let before: BTreeSet<String> = listed(&pg).into_iter().collect();
    // barman-cloud names its backup after the current second, and would write into
    // an existing directory of the same name.
    eventually(
        Duration::from_secs(5),
        "the clock passes the last id",
        || match pgwarden::backup::backup_id(std::time::SystemTime::now()) {
            now if now > ids[0] => Ok(()),
            now => Err(now),
        },
    );
    let port = pg.port.to_string();
    common::barman::run(
        g,
        &[
            "barman-cloud-backup",
            "-z",
            "--immediate-checkpoint",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            &url,
            "ret",
        ],
    );
    let now: BTreeSet<String> = listed(&pg).into_iter().collect();
    let theirs: Vec<&String> = now.difference(&before).collect();
    assert_eq!(theirs.len(), 1, "barman-cloud's backup is listed: {now:?}");
    ids.push(theirs[0].clone());
    some_wal(&pg).await;
    ids.push(backup(&pg).0);
    some_wal(&pg).await;
    ids.push(backup(&pg).0);
    some_wal(&pg).await;
    assert_eq!(listed(&pg), ids, "four backups, oldest first");
    let (code, out) = pg.run_cli(&["backup-list"]);
    assert!(code.success() && out.contains("barman-cloud"), "{out}");

    let parity = |policy: &str| {
        let theirs = barman_selects(g, &url, "ret", policy);
        let ours = pgwarden_selects(&pg, &["--retention", policy]);
        assert_eq!(
            ours, theirs,
            "{policy}: pgwarden and barman-cloud select alike"
        );
        ours
    };
    for (policy, deleted) in [
        ("REDUNDANCY 1", &ids[..3]),
        ("redundancy 2", &ids[..2]),
        ("REDUNDANCY 3", &ids[..1]),
        ("REDUNDANCY 4", &ids[..0]),
        ("RECOVERY WINDOW OF 1 DAYS", &ids[..0]),
    ] {
        let s = parity(policy);
        let want: BTreeSet<String> = deleted.iter().cloned().collect();
        assert_eq!(s.backups, want, "{policy}");
        assert_eq!(s.wal.is_empty(), deleted.is_empty(), "{policy}: {s:?}");
    }

    // Keep annotations, written by barman-cloud, read by both.
    common::barman::run(
        g,
        &[
            "barman-cloud-backup-keep",
            "--target",
            "full",
            &url,
            "ret",
            &ids[0],
        ],
    );
    let s = parity("REDUNDANCY 1");
    assert_eq!(s.backups, ids[1..3].iter().cloned().collect());
    assert!(
        s.wal.is_empty(),
        "an older keep:full backup needs all the WAL after it"
    );
    let (code, out) = pg.run_cli(&["backup-delete", "--backup-id", &ids[0]]);
    assert_eq!(code.code(), Some(2), "a kept backup is refused: {out}");
    assert!(out.contains("keep annotation"), "{out}");
    common::barman::run(
        g,
        &[
            "barman-cloud-backup-keep",
            "--release",
            &url,
            "ret",
            &ids[0],
        ],
    );
    common::barman::run(
        g,
        &[
            "barman-cloud-backup-keep",
            "--target",
            "standalone",
            &url,
            "ret",
            &ids[0],
        ],
    );
    let s = parity("REDUNDANCY 2");
    assert_eq!(s.backups, BTreeSet::from([ids[1].clone()]));
    assert!(
        !s.wal.is_empty(),
        "past a standalone backup's own range, WAL goes"
    );
    common::barman::run(
        g,
        &[
            "barman-cloud-backup-keep",
            "--release",
            &url,
            "ret",
            &ids[0],
        ],
    );

    // Recovery windows need backups of different ages: a copy of the catalogue,
    // under another server name, with end times rewritten days into the past.
    let (cfg, backend) = store.open("ret").await;
    let prefix = cfg.base().trim_end_matches("ret").to_owned();
    for (i, id) in ids.iter().enumerate() {
        use pgwarden::wal::storage::Storage;
        let key = format!("{}/base/{id}/backup.info", cfg.base());
        let (body, _) = backend.get(&key).await.unwrap().unwrap();
        let age_days = [40u64, 20, 10, 1][i];
        let end = std::time::SystemTime::now() - Duration::from_secs(age_days * 86_400);
        let text: String = String::from_utf8_lossy(&body)
            .lines()
            .map(|l| {
                if l.starts_with("end_time=") {
                    format!("end_time={}\n", pgwarden::backup::barman_time(end))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        raw_put(
            g,
            &format!("{prefix}win/base/{id}/backup.info"),
            text.into_bytes(),
        )
        .await;
    }
    for key in keys(&store, "ret", "wals/").await {
        let rest = key.split_once("/wals/").unwrap().1;
        raw_put(g, &format!("{prefix}win/wals/{rest}"), b"copy".to_vec()).await;
    }
    let mut win = Instance::new(tmp.path(), "win");
    store.configure(&mut win, "win");
    for (policy, deleted) in [
        ("RECOVERY WINDOW OF 5 DAYS", &ids[..2]),
        ("RECOVERY WINDOW OF 2 WEEKS", &ids[..1]),
        ("recovery window of 1 month", &ids[..0]),
        ("RECOVERY WINDOW OF 0 DAYS", &ids[..3]),
    ] {
        let theirs = barman_selects(g, &url, "win", policy);
        let ours = pgwarden_selects(&win, &["--retention", policy]);
        assert_eq!(ours, theirs, "{policy}");
        assert_eq!(ours.backups, deleted.iter().cloned().collect(), "{policy}");
    }

    // Now for real: both tools then list the same two backups, and every segment
    // they need is there.
    let wal_before = keys(&store, "ret", "wals/").await;
    let planned = parity("REDUNDANCY 2");
    let (code, out) = pg.run_cli(&["backup-delete", "--retention", "REDUNDANCY 2"]);
    assert!(code.success(), "{out}");
    assert!(out.contains("deleted 2 backups"), "{out}");
    assert_eq!(listed(&pg), ids[2..].to_vec());
    let theirs = common::barman::run(
        g,
        &["barman-cloud-backup-list", "--format", "json", &url, "ret"],
    );
    let theirs: serde_json::Value = serde_json::from_str(theirs.trim()).unwrap();
    let theirs: Vec<&str> = theirs["backups_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        theirs,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for id in &ids[..2] {
        assert!(
            keys(&store, "ret", &format!("base/{id}/")).await.is_empty(),
            "{id} is gone"
        );
    }
    let wal_after = keys(&store, "ret", "wals/").await;
    assert_eq!(
        wal_before
            .difference(&wal_after)
            .cloned()
            .collect::<BTreeSet<_>>(),
        planned.wal,
        "exactly the planned WAL went"
    );
    let (code, out) = pg.run_cli(&["wal-verify"]);
    assert!(code.success() && out.starts_with("OK:"), "{out}");
    // Nothing is left for the same policy.
    let again = parity("REDUNDANCY 2");
    assert!(
        again.backups.is_empty() && again.wal.is_empty(),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_is_deleted_by_id_and_the_last_one_is_refused() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = primary(tmp.path(), &store, "byid").await;
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(backup(&pg));
        some_wal(&pg).await;
    }
    pg.stop();
    let ids: Vec<String> = taken.iter().map(|(id, _)| id.clone()).collect();
    let wal_before = keys(&store, "byid", "wals/").await;

    // The middle one: A still recovers through its WAL, so no WAL goes.
    let (code, out) = pg.run_cli(&["backup-delete", "--backup-id", &ids[1]]);
    assert!(code.success(), "{out}");
    assert!(
        out.contains(&format!("deleted 1 backup ({}) and 0 WAL files", ids[1])),
        "{out}"
    );
    assert_eq!(listed(&pg), vec![ids[0].clone(), ids[2].clone()]);
    assert!(keys(&store, "byid", &format!("base/{}/", ids[1]))
        .await
        .is_empty());
    assert_eq!(keys(&store, "byid", "wals/").await, wal_before);

    // The oldest: the WAL before the next one's first segment goes.
    let dry = pgwarden_selects(&pg, &["--backup-id", &ids[0]]);
    assert_eq!(dry.backups, BTreeSet::from([ids[0].clone()]));
    let next_begin = &taken[2].1;
    assert!(!dry.wal.is_empty());
    for key in &dry.wal {
        let name = key.rsplit('/').next().unwrap();
        assert!(name < next_begin.as_str(), "{name} is before {next_begin}");
    }
    let (code, out) = pg.run_cli(&["backup-delete", "--backup-id", &ids[0]]);
    assert!(code.success(), "{out}");
    assert_eq!(listed(&pg), vec![ids[2].clone()]);
    let wal_after = keys(&store, "byid", "wals/").await;
    assert_eq!(
        wal_before
            .difference(&wal_after)
            .cloned()
            .collect::<BTreeSet<_>>(),
        dry.wal
    );
    let (code, out) = pg.run_cli(&["wal-verify"]);
    assert!(code.success(), "{out}");

    // The last one is refused, and nothing changes.
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let before = tree(root.path());
    let (code, out) = pg.run_cli(&["backup-delete", "--backup-id", &ids[2]]);
    assert_eq!(code.code(), Some(2), "{out}");
    assert!(out.contains("only DONE backup"), "{out}");
    assert_eq!(tree(root.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_or_an_unknown_id_is_refused_and_touches_nothing() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = primary(tmp.path(), &store, "refuse").await;
    backup(&pg);
    some_wal(&pg).await;
    backup(&pg);
    // Stopped: nothing else writes to the archive while it is compared.
    pg.stop();
    let Store::Fs(root) = &store else {
        unreachable!()
    };
    let before = tree(root.path());
    let cases: &[(&[&str], &str)] = &[
        (&["--retention", "REDUNDANCY"], "--retention"),
        (&["--retention", "KEEP 2"], "not a retention policy"),
        (
            &["--retention", "RECOVERY WINDOW OF 7 HOURS"],
            "not a retention policy",
        ),
        (
            &["--retention", "REDUNDANCY 0"],
            "would delete every backup",
        ),
        (&["--backup-id", "20000101T000000"], "not in the archive"),
        (&[], "--retention"),
        (
            &["--retention", "REDUNDANCY 1", "--backup-id", "x"],
            "cannot be used with",
        ),
    ];
    for (args, says) in cases {
        let mut argv = vec!["backup-delete"];
        argv.extend_from_slice(args);
        let (code, out) = pg.run_cli(&argv);
        assert_eq!(code.code(), Some(2), "{argv:?}: {out}");
        assert!(out.contains(says), "{argv:?} says {says:?}: {out}");
        assert!(!out.contains("deleted "), "{argv:?}: {out}");
    }
    assert_eq!(tree(root.path()), before, "the archive is as it was");
    assert_eq!(listed(&pg).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_takes_backups_and_retention_runs_after_each() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = Instance::primary(tmp.path(), "sched");
    store.configure(&mut pg, "sched");
    pg.set("PGWARDEN_BACKUP_SCHEDULE", "3s")
        .set("PGWARDEN_BACKUP_RETENTION", "REDUNDANCY 1");
    pg.start().wait_ready();

    // An empty archive gets a backup as soon as the instance is ready.
    let first = eventually(
        Duration::from_secs(120),
        "a scheduled backup",
        || match listed(&pg).as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        },
    );
    let st = pg.status();
    assert_eq!(st.backup.schedule.as_deref(), Some("3s"));
    assert!(st.backup.next_scheduled.is_some(), "{:?}", st.backup);
    // The next one replaces it: REDUNDANCY 1 runs after each backup.
    let second = eventually(
        Duration::from_secs(120),
        "a second backup, the first deleted",
        || match listed(&pg).as_slice() {
            [one] if *one != first => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        },
    );
    let run = pg
        .status()
        .backup
        .retention
        .expect("a retention run in /status");
    assert_eq!(
        (run.policy.as_str(), run.error.as_deref()),
        ("REDUNDANCY 1", None)
    );
    assert!(second > first);
    let log = pg.log();
    assert!(
        json_lines(&log)
            .iter()
            .any(|l| l["msg"] == "retention applied" && l["policy"] == "REDUNDANCY 1"),
        "{log}"
    );
    pg.stop();
    let (code, out) = pg.run_cli(&["wal-verify"]);
    assert!(code.success(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_backup_applies_the_retention_policy_too() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut pg = Instance::primary(tmp.path(), "postret");
    store.configure(&mut pg, "postret");
    pg.set("PGWARDEN_BACKUP_RETENTION", "redundancy 1");
    pg.start().wait_ready();
    let (first, _) = backup(&pg);
    // Something to archive between the two: a switch with nothing written after a
    // backup is no switch, and the helper would wait for a segment that never comes.
    pg.connect()
        .await
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    switch_and_wait_archived(&pg).await;
    let (second, _) = backup(&pg);
    // `pgwarden backup` answers once the retention after the backup is done.
    assert_eq!(listed(&pg), vec![second]);
    let st = pg.status().backup;
    let run = st.retention.expect("a retention run in /status");
    assert_eq!(run.deleted_backups, vec![first]);
    assert!(run.deleted_wal > 0, "{run:?}");
    assert_eq!(st.schedule, None);
    assert_eq!(st.next_scheduled, None);
}

#[test]
fn bad_schedule_or_retention_settings_are_refused_at_start() {
    let tmp = test_dir();
    let archive = test_dir();
    let url = format!("file://{}", archive.path().display());
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "PGWARDEN_BACKUP_SCHEDULE",
            "every day",
            true,
            "PGWARDEN_BACKUP_SCHEDULE",
        ),
        ("PGWARDEN_BACKUP_SCHEDULE", "0 25 * * *", true, "hour"),
        ("PGWARDEN_BACKUP_SCHEDULE", "6", true, "unit"),
        (
            "PGWARDEN_BACKUP_SCHEDULE",
            "6h",
            false,
            "PGWARDEN_ARCHIVE_URL",
        ),
        (
            "PGWARDEN_BACKUP_RETENTION",
            "REDUNDANCY two",
            true,
            "PGWARDEN_BACKUP_RETENTION",
        ),
        (
            "PGWARDEN_BACKUP_RETENTION",
            "REDUNDANCY 1",
            false,
            "PGWARDEN_ARCHIVE_URL",
        ),
        ("PGWARDEN_BACKUP_TARGET", "standby", true, "prefer-standby"),
    ];
    for (i, (var, value, with_archive, says)) in cases.iter().enumerate() {
        let mut pg = Instance::new(tmp.path(), &format!("bad{i}"));
        if *with_archive {
            pg.set("PGWARDEN_ARCHIVE_URL", &url);
        }
        pg.set(var, *value);
        let (code, out) = pg.run_cli(&["run"]);
        assert!(!code.success(), "{var}={value}: {out}");
        assert!(
            out.contains(var) && out.contains(says),
            "{var}={value}: {out}"
        );
        assert!(!pg.pgdata.exists(), "{var}={value}: PGDATA untouched");
    }
}
