//! barman-cloud (Debian's barman-cli-cloud) and pgwarden read each other's archives:
//! same layout, same names, gzip (barman-cloud 3.4 has no zstd).

mod common;

use common::wal::*;
use common::*;
use std::process::Command;

fn barman(store_env: &[(&'static str, String)], args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .envs(store_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AWS_DEFAULT_REGION", "garage")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (is barman-cli-cloud installed?)", args[0]));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barman_cloud_and_pgwarden_read_each_others_archives() {
    let tmp = test_dir();
    let store = Store::s3();
    let Store::S3(g) = &store else { unreachable!() };
    let env = g.env();
    let endpoint = g.endpoint();
    let (name, data) = real_segment(tmp.path()).await;
    let seg = tmp.path().join("pgdata/pg_wal").join(&name);
    std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
    std::fs::write(&seg, &data).unwrap();
    let seg_arg = seg.display().to_string();

    // barman-cloud archives; pgwarden restores byte for byte and recognises the same
    // content as already archived (no checksum metadata: it compares the contents).
    let url = format!("s3://{}/barman-wrote", g.bucket);
    let (ok, out) = barman(
        &env,
        &[
            "barman-cloud-wal-archive",
            "--gzip",
            "--endpoint-url",
            &endpoint,
            &url,
            "srv-b",
            &seg_arg,
        ],
    );
    assert!(ok, "barman-cloud-wal-archive: {out}");
    let mut pw = Instance::new(tmp.path(), "reader");
    store.configure(&mut pw, "srv-b");
    pw.set("PGWARDEN_ARCHIVE_URL", &url)
        .set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip");
    let dest = tmp.path().join("from-barman");
    let (code, out) = pw.run_cli(&["wal-restore", &name, &dest.display().to_string()]);
    assert!(code.success(), "{out}");
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "pgwarden restored other bytes than barman archived"
    );
    let (code, out) = pw.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success() && out.contains("AlreadyArchived"), "{out}");

    // pgwarden archives; barman-cloud restores byte for byte.
    let url = format!("s3://{}/pgwarden-wrote", g.bucket);
    let mut pw = Instance::new(tmp.path(), "writer");
    store.configure(&mut pw, "srv-p");
    pw.set("PGWARDEN_ARCHIVE_URL", &url)
        .set("PGWARDEN_ARCHIVE_COMPRESSION", "gzip");
    let (code, out) = pw.run_cli(&["wal-archive", &seg_arg]);
    assert!(code.success(), "{out}");
    let dest = tmp.path().join("from-pgwarden");
    let (ok, out) = barman(
        &env,
        &[
            "barman-cloud-wal-restore",
            "--endpoint-url",
            &endpoint,
            &url,
            "srv-p",
            &name,
            &dest.display().to_string(),
        ],
    );
    assert!(ok, "barman-cloud-wal-restore: {out}");
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "barman restored other bytes than pgwarden archived"
    );
}
