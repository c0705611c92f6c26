//! Tablespaces in base backups and restores: `pgwarden backup` stores each tablespace
//! as barman-cloud does (`<oid>.tar.gz` beside `data.tar.gz`, `tablespaces=` in
//! `backup.info`); pgwarden restores it where `PGWARDEN_RESTORE_TABLESPACES` maps it,
//! `barman-cloud-restore --tablespace` restores it too; a drill restores
//! barman-cloud's backup of the same cluster into its scratch directory; a location
//! that is not empty, or a bad mapping, is refused before PGDATA is created; what an
//! interrupted restore left in a location is cleared by the next start. Real
//! PostgreSQL, Garage and barman-cloud.

mod common;

use common::barman::Recovering;
use common::wal::*;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// A directory the postgres user owns (tests run as root in CI), mode 0700.
fn owned_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if let Some((uid, gid)) = postgres_ids() {
        pgwarden::fsutil::chown_tree(p, pgwarden::fsutil::Owner { uid, gid }).unwrap();
    }
}

/// The rows of table `tt` (the one in the tablespace) and where its file is, relative
/// to PGDATA.
async fn tt(pg: &Instance) -> (i64, String) {
    let row = pg
        .connect()
        .await
        .query_one("SELECT count(*), pg_relation_filepath('tt') FROM tt", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `pgwarden run` of `pg` must refuse, leaving PGDATA uncreated; returns its output.
fn refused(pg: &Instance, what: &str) -> String {
    let (status, out) = pg.run_cli(&["run"]);
    assert!(!status.success(), "{what}: expected a refusal:\n{out}");
    assert!(!pg.pgdata.exists(), "{what}: PGDATA was created:\n{out}");
    out
}

/// A command running beside the test; ended with SIGTERM (a drill then removes what
/// it made) if the test fails before it is waited for.
struct Background(Option<std::process::Child>);

impl Background {
    fn spawn(mut cmd: std::process::Command) -> Background {
        use std::process::Stdio;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Background(Some(cmd.spawn().unwrap()))
    }

    fn finish(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablespace_is_restored_where_it_is_mapped_by_pgwarden_barman_cloud_and_a_drill() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let src = gzip_primary(tmp.path(), &store, "ts", "");
    let live = tmp.path().join("live-ts");
    owned_dir(&live);
    let c = src.connect().await;
    c.batch_execute(&format!(
        "CREATE TABLESPACE fast LOCATION '{}'",
        live.display()
    ))
    .await
    .unwrap();
    c.batch_execute(
        "CREATE TABLE tt TABLESPACE fast AS SELECT g FROM generate_series(1, 5000) g;
         CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g",
    )
    .await
    .unwrap();
    let oid: i64 = c
        .query_one(
            "SELECT oid::int8 FROM pg_tablespace WHERE spcname = 'fast'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (_, src_file) = tt(&src).await;
    let prefix = format!("pg_tblspc/{oid}/");
    let in_space = src_file
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{src_file} is not in the tablespace"));

    let info = take_backup(&src);
    let id = info["backup_id"].as_str().unwrap().to_owned();
    let (cfg, backend) = store.open("ts").await;
    let dir = format!("{}/base/{id}/", cfg.base());
    let names: Vec<String> = pgwarden::wal::storage::Storage::list(&backend, &dir, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert!(
        names.contains(&"data.tar.gz".to_owned()) && names.contains(&format!("{oid}.tar.gz")),
        "barman-cloud's layout: {names:?}"
    );
    let (text, _) = pgwarden::wal::storage::Storage::get(&backend, &format!("{dir}backup.info"))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&text).into_owned();
    let want = format!("\ntablespaces=[('fast', {oid}, '{}')]\n", live.display());
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
    let url = store.url();
    let listed = common::barman::run(g, &["barman-cloud-backup-list", &url, "ts"]);
    assert!(listed.contains(&id), "barman-cloud lists it: {listed}");
    // barman-cloud's own backup of the cluster records the tablespace in the same
    // words (barman-cloud-backup reads PGDATA itself, as root beside the instance).
    common::barman::run(
        g,
        &[
            "barman-cloud-backup",
            "--gzip",
            "-h",
            "127.0.0.1",
            "-p",
            &src.port.to_string(),
            "-U",
            "postgres",
            &url,
            "ts",
        ],
    );
    let (code, out) = src.run_cli(&["backup-list", "--json"]);
    assert!(code.success(), "{out}");
    let backups: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let barman_id = backups
        .iter()
        .find(|b| b["made_by"] == "barman-cloud")
        .and_then(|b| b["backup_id"].as_str())
        .unwrap_or_else(|| panic!("barman-cloud's backup is listed: {out}"))
        .to_owned();
    let (theirs, _) = pgwarden::wal::storage::Storage::get(
        &backend,
        &format!("{}/base/{barman_id}/backup.info", cfg.base()),
    )
    .await
    .unwrap()
    .unwrap();
    let theirs = String::from_utf8_lossy(&theirs).into_owned();
    assert!(theirs.contains(&want), "barman-cloud wrote:\n{theirs}");
    // Rows after the backup come back through the archived WAL.
    c.batch_execute("INSERT INTO tt SELECT g FROM generate_series(5001, 5500) g")
        .await
        .unwrap();
    switch_and_wait_archived(&src).await;

    // Refused before PGDATA is created: a bad mapping, a tablespace the backup does
    // not have, the original location (the live cluster's, not empty), and a mapped
    // location that is not empty, which is left as it was.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir_all(occupied.join("sub")).unwrap();
    std::fs::write(occupied.join("sub/keep.txt"), b"mine").unwrap();
    let occupied_before = tree(&occupied);
    let cases: Vec<(Option<String>, Vec<String>)> = vec![
        (
            Some("fast=/somewhere".into()),
            vec![
                "PGWARDEN_RESTORE_TABLESPACES".into(),
                "NAME:LOCATION".into(),
            ],
        ),
        (
            Some("fast:relative/dir".into()),
            vec![
                "PGWARDEN_RESTORE_TABLESPACES".into(),
                "absolute path".into(),
            ],
        ),
        (
            Some("slow:/somewhere".into()),
            vec![
                "PGWARDEN_RESTORE_TABLESPACES".into(),
                "the backup has no tablespace".into(),
                "(it has fast)".into(),
            ],
        ),
        (
            None,
            vec![
                format!(
                    "would be restored into {}, which is not empty",
                    live.display()
                ),
                "PGWARDEN_RESTORE_TABLESPACES=fast:/path".into(),
            ],
        ),
        (
            Some(format!("fast:{}", occupied.display())),
            vec![format!(
                "would be restored into {}, which is not empty (it holds sub)",
                occupied.display()
            )],
        ),
    ];
    for (i, (mapping, wants)) in cases.into_iter().enumerate() {
        let mut pg = restoring_as(tmp.path(), &store, "ts", &format!("refused{i}"));
        if let Some(m) = &mapping {
            pg.set("PGWARDEN_RESTORE_TABLESPACES", m);
        }
        let out = refused(&pg, &format!("{mapping:?}"));
        for want in wants {
            assert!(out.contains(&want), "{mapping:?}: want {want:?} in:\n{out}");
        }
    }
    assert_eq!(
        tree(&occupied),
        occupied_before,
        "the occupied location is untouched"
    );

    // A drill restores the tablespace into its scratch directory (the original
    // location is the live cluster's), and removes it afterwards; it runs meanwhile.
    // It restores barman-cloud's backup: pgwarden reads barman's tablespace layout.
    let mut cmd = src.command_for_test(&["restore-drill", "--json", "--backup-id", &barman_id]);
    cmd.env("PGWARDEN_DRILL_SQL", "SELECT count(*) = 5500 FROM tt");
    let drill = Background::spawn(cmd);

    // pgwarden restores it where it is mapped, while barman-cloud restores it too.
    let moved = tmp.path().join("moved-ts");
    let mut pg = restoring_as(tmp.path(), &store, "ts", "restored");
    pg.set("PGWARDEN_RESTORE_BACKUP_ID", &id);
    pg.set(
        "PGWARDEN_RESTORE_TABLESPACES",
        format!("fast:{}", moved.display()),
    );
    // As a restore interrupted by a crash leaves things: the staging directory, linked
    // to the location it had begun to fill. This start clears both and restores.
    let half = pgwarden::pgdata::staging_dir(&pg.pgdata).join(&prefix[..prefix.len() - 1]);
    std::fs::create_dir_all(half.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&moved, &half).unwrap();
    // What a bootstrap with these binaries writes there: its major's directory.
    let half_restored = format!("PG_{}_0", pg_major());
    std::fs::create_dir_all(moved.join(&half_restored)).unwrap();
    std::fs::write(moved.join(&half_restored).join("half-restored"), b"x").unwrap();
    pg.start();

    // barman-cloud-restore --tablespace restores pgwarden's backup, and postgres
    // recovers it.
    let dest = tmp.path().join("barman-restored");
    let theirs = tmp.path().join("barman-ts");
    common::barman::run(
        g,
        &[
            "barman-cloud-restore",
            "--tablespace",
            &format!("fast:{}", theirs.display()),
            &url,
            "ts",
            &id,
            &dest.display().to_string(),
        ],
    );
    assert_eq!(
        std::fs::read_link(dest.join(&prefix[..prefix.len() - 1])).unwrap(),
        theirs
    );
    let restored = Recovering::start(tmp.path(), g, &url, "ts", &dest, &[&theirs]);
    restored.wait_promoted(tmp.path()).await;
    let (rows, _) = tt(&restored.view(tmp.path())).await;
    assert_eq!(rows, 5500, "barman-cloud's restore of pgwarden's backup");
    assert!(theirs.join(in_space).is_file());
    drop(restored);

    pg.wait_for("/primary", 200, Duration::from_secs(120));
    pg.wait_ready();
    let (rows, file) = tt(&pg).await;
    assert_eq!(rows, 5500, "every row of the tablespace's table");
    assert_eq!(file, src_file);
    assert!(
        moved.join(in_space).is_file(),
        "{file} is under {}",
        moved.display()
    );
    assert_eq!(
        std::fs::read_link(pg.pgdata.join(&prefix[..prefix.len() - 1])).unwrap(),
        moved
    );
    assert!(!pg.pgdata.join("tablespace_map").exists());
    assert!(
        !moved.join(&half_restored).exists(),
        "the interrupted restore's files are gone"
    );
    if let Some((uid, _)) = postgres_ids() {
        assert_eq!(
            std::fs::metadata(&moved).unwrap().uid(),
            uid,
            "the run-as user owns it"
        );
    }
    drop(pg);

    let out = drill.finish();
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success() && result["ok"] == true,
        "the drill: {result}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restoring at the original location would have been refused (it is not
    // empty): the drill put the tablespace in its scratch directory, and removed it.
    let scratch = src.pgdata.parent().unwrap().join("pgwarden-drill");
    let logged = String::from_utf8_lossy(&out.stderr);
    let at = scratch.join(format!("tablespaces/{oid}"));
    assert!(
        logged.contains(&format!("\"location\":\"{}\"", at.display())),
        "the drill restored the tablespace into {}:\n{logged}",
        at.display()
    );
    assert!(!at.exists(), "the drill removed its tablespaces");
    assert_eq!(tt(&src).await.0, 5500, "the live cluster is intact");
}
