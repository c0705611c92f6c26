//! What a backup lists, it restores (issue 17, holes 3, 5, 6 and 8), against real
//! PostgreSQL and Garage:
//!
//! - two members that start a backup in the same second each get an id of their own,
//!   and each `backup.info` describes its own data; racing claims of one id on Garage,
//!   which ignores `If-None-Match`, have exactly one winner;
//! - a backup whose times contradict the archive's WAL positions (a clock behind) is
//!   refused, naming the backup it contradicts;
//! - a deletion cut short is never listed and the next retention run finishes it; a
//!   directory left without `backup.info` goes once it is past the lease; a backup
//!   being taken on another member keeps the WAL it needs;
//! - a backup with a part missing in the middle is refused at restore, naming it.

mod common;

use common::wal::*;
use common::*;
use pgwarden::backup::BackupInfo;
use pgwarden::wal::storage::{Backend, Bytes, PutOutcome, Storage};
use std::collections::BTreeSet;
use std::time::Duration;

/// The listed backups' ids, from `pgwarden backup-list --json`.
fn listed(pg: &Instance) -> Vec<String> {
    let (code, out) = pg.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "backup-list: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn keys(backend: &Backend, prefix: &str) -> BTreeSet<String> {
    backend
        .list(prefix, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

async fn info(backend: &Backend, base: &str, id: &str) -> BackupInfo {
    let (body, _) = backend
        .get(&format!("{base}/base/{id}/backup.info"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no backup.info for {id}"));
    BackupInfo::parse(id, &String::from_utf8_lossy(&body)).unwrap()
}

async fn put(backend: &Backend, key: &str, body: impl Into<Vec<u8>>) {
    let body = Bytes::from(body.into());
    let sha = pgwarden::wal::sha256_hex(&body);
    backend.put_new(key, body, &sha).await.unwrap();
}

/// The SHA-256 of a stored object, read in chunks.
async fn stored_sha(backend: &Backend, key: &str) -> String {
    use sha2::Digest;
    let mut d = backend.download(key).await.unwrap().unwrap();
    let mut h = sha2::Sha256::new();
    while let Some(chunk) = d.chunk().await.unwrap() {
        h.update(&chunk);
    }
    pgwarden::wal::hex(&h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_of_two_members_keep_their_own_ids_and_retention_cleans_up_safely() {
    let tmp = test_dir();
    let store = Store::s3();
    // One worker each: this test is about ids, and two members' parallel uploads
    // plus the primary's archiving saturate this Garage on a loaded 2-core machine.
    let mut primary = Instance::primary(tmp.path(), "src");
    store.configure(&mut primary, "src");
    primary
        .set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip")
        .set("PGWARDEN_BACKUP_JOBS", "1");
    primary.start().wait_ready();
    create_t(&primary, 1000).await;
    let mut replica = Instance::replica_of(tmp.path(), "standby", &primary);
    store.configure(&mut replica, "src");
    replica
        .set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip")
        .set("PGWARDEN_BACKUP_JOBS", "1");
    replica.start().wait_ready();
    let (cfg, backend) = store.open("src").await;
    let base = cfg.base();

    // Both members back up at once. A standby's backup ends where it has replayed:
    // the primary switches segments meanwhile so that its last one gets archived
    // (every few seconds: each switch is a segment for the archiver to upload).
    let (a, b) = (
        primary.command_for_test(&["backup"]),
        replica.command_for_test(&["backup"]),
    );
    let run = |mut cmd: std::process::Command| {
        std::thread::spawn(move || {
            let out = cmd.output().unwrap();
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let (ta, tb) = (run(a), run(b));
    let switcher = primary.connect().await;
    while !(ta.is_finished() && tb.is_finished()) {
        let _ = switcher
            .batch_execute("INSERT INTO t VALUES (0); SELECT pg_switch_wal()")
            .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    assert!(ra.0.success(), "the primary's backup: {}", ra.1);
    assert!(rb.0.success(), "the standby's backup: {}", rb.1);
    let ids = listed(&primary);
    assert_eq!(ids.len(), 2, "two backups, two ids: {ids:?}");
    for id in &ids {
        let i = info(&backend, &base, id).await;
        // Every part is the one its backup.info describes.
        let parts = i.extra.get("parts_sha256").expect("parts_sha256");
        for part in parts.split(',') {
            let (name, sha) = part.split_once(':').unwrap();
            let key = format!("{base}/base/{id}/{name}");
            assert_eq!(
                stored_sha(&backend, &key).await,
                sha,
                "backup.info of {id} describes its own {name}"
            );
        }
        assert!(
            !keys(&backend, &format!("{base}/base/{id}/"))
                .await
                .iter()
                .any(|k| k.ends_with("backup.running")),
            "no running marker left behind"
        );
    }
    let (first, second) = (ids[0].clone(), ids[1].clone());
    let first_info = info(&backend, &base, &first).await;

    // A backup listed by a member whose clock runs two hours ahead of this one's,
    // which ended in the WAL before the next backup begins.
    let ahead = first_info.clone();
    let text = ahead
        .render("/x")
        .replace(&first_info.begin_time, "2099-01-01 00:00:00.000000+00:00");
    put(
        &backend,
        &format!("{base}/base/20990101T000000/backup.info"),
        text,
    )
    .await;
    let (code, out) = primary.run_cli(&["backup"]);
    assert!(
        !code.success(),
        "a backup whose times contradict the WAL: {out}"
    );
    assert!(
        out.contains("backup 20990101T000000 ended at WAL")
            && out.contains("this member's clock is behind")
            && out.contains("the backup is not listed"),
        "{out}"
    );
    assert_eq!(listed(&primary).len(), 3, "nothing new was listed");
    backend
        .delete(&format!("{base}/base/20990101T000000/backup.info"))
        .await
        .unwrap();

    // A third backup, then state as a kill would leave it:
    // - the first backup's deletion cut short right after its marker went in;
    // - a directory without backup.info from eight days ago (never finished);
    // - a backup under way on another member since the second backup's start.
    let (code, out) = primary.run_cli(&["backup"]);
    assert!(code.success(), "{out}");
    let third = listed(&primary).last().unwrap().clone();
    put(
        &backend,
        &format!("{base}/base/{first}/backup.deleting"),
        "deleting\n",
    )
    .await;
    assert_eq!(listed(&primary), vec![second.clone(), third.clone()]);
    let orphan =
        pgwarden::backup::backup_id(std::time::SystemTime::now() - Duration::from_secs(8 * 86_400));
    put(
        &backend,
        &format!("{base}/base/{orphan}/data.tar.gz"),
        "junk",
    )
    .await;
    let running_id = pgwarden::backup::backup_id(std::time::SystemTime::now());
    let second_info = info(&backend, &base, &second).await;
    let marker = pgwarden::backup::marker::Running {
        token: "theirs".into(),
        begin_wal: second_info.begin_wal.clone(),
        host: "elsewhere".into(),
        parent: None,
    };
    put(
        &backend,
        &format!("{base}/base/{running_id}/backup.running"),
        marker.render(),
    )
    .await;
    let wal_before = keys(&backend, &format!("{base}/wals/")).await;

    let (code, out) = primary.run_cli(&["backup-delete", "--retention", "REDUNDANCY 1"]);
    assert!(code.success(), "{out}");
    assert!(
        out.contains(&format!("deleted 1 backup ({second})"))
            && out.contains("2 leftover directories"),
        "{out}"
    );
    assert!(keys(&backend, &format!("{base}/base/{first}/"))
        .await
        .is_empty());
    assert!(keys(&backend, &format!("{base}/base/{orphan}/"))
        .await
        .is_empty());
    assert_eq!(
        keys(&backend, &format!("{base}/base/{running_id}/"))
            .await
            .len(),
        1,
        "a backup under way is left alone"
    );
    assert_eq!(listed(&primary), vec![third.clone()]);
    // Without the running backup, deleting the second would free the WAL from its
    // begin to the third's; the running one needs it.
    let wal_after = keys(&backend, &format!("{base}/wals/")).await;
    let needed: Vec<&String> = wal_before
        .iter()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap();
            name.len() >= 24 && name[..24] >= *second_info.begin_wal.as_str()
        })
        .collect();
    assert!(!needed.is_empty());
    for k in needed {
        assert!(wal_after.contains(k), "{k} is kept for the running backup");
    }
    drop(replica);
    racing_claims_of_one_backup_id_have_one_winner(&backend, &base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_a_part_missing_in_the_middle_is_refused_at_restore() {
    let tmp = test_dir();
    let store = Store::fs();
    let mut src = Instance::primary(tmp.path(), "src");
    store.configure(&mut src, "src");
    // Two workers: data.tar.gz and data_0001.tar.gz, then the last part, data_0002.
    src.set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip")
        .set("PGWARDEN_BACKUP_JOBS", "2");
    src.start().wait_ready();
    create_t(&src, 1000).await;
    let (code, out) = src.run_cli(&["backup"]);
    assert!(code.success(), "{out}");
    let id = listed(&src)[0].clone();
    let (cfg, backend) = store.open("src").await;
    let dir = format!("{}/base/{id}", cfg.base());
    // A part lost in the middle. (A barman backup.info does not record how many
    // parts there are: only their continuity tells.)
    backend
        .delete(&format!("{dir}/data_0001.tar.gz"))
        .await
        .unwrap();
    let (text, _) = backend
        .get(&format!("{dir}/backup.info"))
        .await
        .unwrap()
        .unwrap();
    let barman: String = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| !l.starts_with("# data_parts"))
        .map(|l| format!("{l}\n"))
        .collect();
    backend.delete(&format!("{dir}/backup.info")).await.unwrap();
    put(&backend, &format!("{dir}/backup.info"), barman).await;

    let mut pg = restoring(tmp.path(), &store, "src");
    pg.start();
    let status = pg.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "must exit non-zero");
    let log = pg.log();
    assert!(
        log.contains(&format!(
            "backup {id} cannot be restored whole: data part data_0001.tar.gz is missing"
        )),
        "{log}"
    );
    assert!(!pg.pgdata.join("PG_VERSION").exists(), "no PGDATA was made");
}

/// A backup's id is its own because its `backup.running` marker is created once
/// (`put_new`), whoever else writes a marker there at the same moment. On Garage,
/// which ignores `If-None-Match`, that rests on claims, not on timing: of three
/// members' markers written at once, exactly one is told `Created`, and the marker
/// stored is the winner's. (On the test's own Garage: the S3 settings are process
/// environment, which a second Garage in a parallel test would change under it.)
async fn racing_claims_of_one_backup_id_have_one_winner(backend: &Backend, base: &str) {
    for round in 0..5 {
        let key = format!("{base}/base/20000101T00000{round}/backup.running");
        let body = |i: usize| format!("{{\"token\":\"{round}-{i}\"}}");
        let racers: Vec<_> = (0..3)
            .map(|i| {
                let (backend, key, body) = (backend.clone(), key.clone(), body(i));
                tokio::spawn(async move {
                    let sha = pgwarden::wal::sha256_hex(body.as_bytes());
                    (i, backend.put_new(&key, Bytes::from(body), &sha).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            let (i, outcome) = racer.await.unwrap();
            match outcome.unwrap_or_else(|e| panic!("round {round}, racer {i}: {e}")) {
                PutOutcome::Created => winners.push(i),
                PutOutcome::Exists(_) => {}
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (stored, _) = backend.get(&key).await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stored),
            body(winners[0]),
            "round {round}"
        );
    }
}
