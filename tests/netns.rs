//! Replication across network namespaces that the test creates: the primary accepts
//! replication only from PGWARDEN_ALLOWED_NETWORK.

mod common;

use common::*;
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces: `a` (the primary) linked to `b` on one subnet and to `c` on
/// another. Removed on drop, which also removes the veth pairs.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn new(tag: &str, x: u32) -> Net {
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|n| format!("pgwt{tag}{n}"))
            .collect();
        let net = Net {
            names: names.clone(),
        };
        for n in &names {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        let (a, b, c) = (&names[0], &names[1], &names[2]);
        for (peer, subnet, la, lp) in [
            (b, 254, format!("pw{tag}ab"), format!("pw{tag}ba")),
            (c, 253, format!("pw{tag}ac"), format!("pw{tag}ca")),
        ] {
            ip(&["link", "add", &la, "type", "veth", "peer", "name", &lp]);
            ip(&["link", "set", &la, "netns", a]);
            ip(&["link", "set", &lp, "netns", peer]);
            ip(&[
                "-n",
                a,
                "addr",
                "add",
                &format!("10.{subnet}.{x}.1/24"),
                "dev",
                &la,
            ]);
            ip(&[
                "-n",
                peer,
                "addr",
                "add",
                &format!("10.{subnet}.{x}.2/24"),
                "dev",
                &lp,
            ]);
            ip(&["-n", a, "link", "set", &la, "up"]);
            ip(&["-n", peer, "link", "set", &lp, "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// IDENTIFY_SYSTEM over a replication connection, from inside namespace `ns`.
fn replicate_from(ns: &str, host: &str, port: u16) -> (bool, String) {
    let psql = pg_bindir().join("psql");
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(psql)
        .args(["-XAtc", "IDENTIFY_SYSTEM", "-d"])
        .arg(format!("host={host} port={port} user=replicator dbname=replication replication=true connect_timeout=5"))
        .env("PGPASSWORD", REPLICATION_PASSWORD)
        .output()
        .unwrap();
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
async fn replication_is_accepted_only_from_the_allowed_network() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let x = std::process::id() % 250 + 1;
    let tag = format!("{}", std::process::id() % 10000);
    let net = Net::new(&tag, x);
    let (ns_a, ns_b, ns_c) = (
        net.names[0].clone(),
        net.names[1].clone(),
        net.names[2].clone(),
    );
    let tmp = test_dir();

    let mut primary = Instance::primary(tmp.path(), "ns-primary");
    primary.netns = Some(ns_a.clone());
    primary.set("PGWARDEN_ALLOWED_NETWORK", format!("10.254.{x}.0/24"));
    primary.start().wait_ready();

    // The replica, on the allowed subnet, bootstraps and streams.
    let mut replica = Instance::replica_of(tmp.path(), "ns-replica", &primary);
    replica.netns = Some(ns_b.clone());
    replica.set("PGWARDEN_PRIMARY_HOST", format!("10.254.{x}.1"));
    replica.start().wait_ready();
    assert_eq!(replica.get("/replica").status, 200);
    // The primary's /status lists the replica at its own address (after a monitor refresh).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = primary.status();
        if st.replication.first().and_then(|r| r.client_addr.clone())
            == Some(format!("10.254.{x}.2"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let (ok, out) = replicate_from(&ns_b, &format!("10.254.{x}.1"), primary.port);
    assert!(
        ok,
        "a replication connection from the allowed network is accepted: {out}"
    );
    let (ok, out) = replicate_from(&ns_c, &format!("10.253.{x}.1"), primary.port);
    assert!(
        !ok,
        "a replication connection from outside PGWARDEN_ALLOWED_NETWORK must be refused: {out}"
    );
    assert!(
        out.contains("no pg_hba.conf entry for replication connection")
            && out.contains(&format!("10.253.{x}.2")),
        "{out}"
    );
    drop(replica);
    drop(primary);
}
