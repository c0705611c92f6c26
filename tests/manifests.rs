//! The Kubernetes manifests in deploy/kubernetes are what people would deploy: they pass
//! the Kubernetes schema (kubernetes-validate, which ships the schemas, so this runs
//! offline), every pod passes Pod Security "restricted", and the router's HAProxy
//! configuration is one HAProxy accepts.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFESTS: &[&str] = &[
    "deploy/kubernetes/cluster.yaml",
    "deploy/kubernetes/router.yaml",
    "deploy/kubernetes/restore.yaml",
    "deploy/kubernetes/ha.yaml",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The virtualenv scripts/install-deps.sh installs kubernetes-validate into.
fn venv() -> PathBuf {
    if let Ok(v) = std::env::var("PGWARDEN_TOOLS_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    Path::new(&home).join(".cache/pgwarden/venv")
}

fn tool(name: &str) -> PathBuf {
    let p = venv().join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-deps.sh",
        p.display()
    );
    p
}

/// Every document of a manifest, as JSON (PyYAML comes with kubernetes-validate).
fn documents(path: &str) -> Vec<Value> {
    let out = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(repo(path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn all_documents() -> Vec<Value> {
    MANIFESTS.iter().flat_map(|m| documents(m)).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn manifests_pass_the_kubernetes_schema_strictly() {
    let out = Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .args(MANIFESTS.iter().map(|m| repo(m)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 17, "{text}");
}

/// The checks of the Pod Security Standards' "restricted" profile that a manifest can
/// fail (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
fn restricted_violations(name: &str, pod: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let psc = &pod["securityContext"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            bad.push(format!("{name}: {host}"));
        }
    }
    if psc["seccompProfile"]["type"] != "RuntimeDefault" {
        bad.push(format!("{name}: seccompProfile is not RuntimeDefault"));
    }
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        if !kinds.iter().all(|k| VOLUMES.contains(&k.as_str())) {
            bad.push(format!("{name}: volume {kinds:?}"));
        }
    }
    for c in pod["containers"].as_array().unwrap() {
        let cname = format!("{name}/{}", c["name"].as_str().unwrap());
        let csc = &c["securityContext"];
        let non_root = csc["runAsNonRoot"] == true || psc["runAsNonRoot"] == true;
        let uid = csc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64());
        if !non_root || !matches!(uid, Some(u) if u > 0) {
            bad.push(format!(
                "{cname}: needs runAsNonRoot and a numeric runAsUser above 0"
            ));
        }
        if csc["allowPrivilegeEscalation"] != false {
            bad.push(format!("{cname}: allowPrivilegeEscalation is not false"));
        }
        if csc["privileged"] == true {
            bad.push(format!("{cname}: privileged"));
        }
        let drops = csc["capabilities"]["drop"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !drops.iter().any(|d| d == "ALL") {
            bad.push(format!("{cname}: capabilities do not drop ALL"));
        }
        for add in csc["capabilities"]["add"].as_array().into_iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                bad.push(format!("{cname}: adds {add}"));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p.get("hostPort").is_some() {
                bad.push(format!("{cname}: hostPort"));
            }
        }
        if c["resources"]["limits"]["memory"].is_null() {
            bad.push(format!("{cname}: no memory limit"));
        }
    }
    bad
}

#[test]
fn every_pod_passes_pod_security_restricted() {
    let docs = all_documents();
    let mut pods = 0;
    let mut bad = Vec::new();
    for d in &docs {
        let pod = &d["spec"]["template"]["spec"];
        if pod.is_object() {
            pods += 1;
            bad.extend(restricted_violations(
                d["metadata"]["name"].as_str().unwrap(),
                pod,
            ));
        }
    }
    assert_eq!(
        pods, 7,
        "pg-primary, pg-replica, pg-router, pg-restored, pg-dr, etcd and pg-ha"
    );
    assert!(bad.is_empty(), "{bad:#?}");

    // The checker itself catches what it should.
    let mut loose = named(&docs, "StatefulSet", "pg-primary")["spec"]["template"]["spec"].clone();
    loose["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = true.into();
    loose["securityContext"]["runAsUser"] = 0.into();
    loose["volumes"][0] = serde_json::json!({"name": "h", "hostPath": {"path": "/"}});
    assert_eq!(restricted_violations("loose", &loose).len(), 3);
}

#[test]
fn a_primary_two_replicas_and_their_services() {
    let docs = all_documents();
    let primary = named(&docs, "StatefulSet", "pg-primary");
    let replicas = named(&docs, "StatefulSet", "pg-replica");
    assert_eq!(primary["spec"]["replicas"], 1);
    assert_eq!(replicas["spec"]["replicas"], 2);
    for sts in [primary, replicas] {
        let pod = &sts["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        // A memory-backed /dev/shm.
        let shm = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/dev/shm")
            .expect("/dev/shm mounted");
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == shm["name"])
            .unwrap();
        assert_eq!(vol["emptyDir"]["medium"], "Memory");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 8,
            "above PGWARDEN_STOP_TIMEOUT"
        );
    }
    let env = |sts: &Value, name: &str| -> Option<String> {
        sts["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(str::to_owned))
    };
    assert_eq!(env(replicas, "PGWARDEN_ROLE").as_deref(), Some("replica"));
    assert_eq!(
        env(replicas, "PGWARDEN_PRIMARY_HOST").as_deref(),
        Some("pg-primary-0.pg")
    );
    // No password in the manifests: they come from a Secret made by hand.
    let text: String = MANIFESTS
        .iter()
        .map(|m| std::fs::read_to_string(repo(m)).unwrap())
        .collect();
    assert!(!text.contains("kind: Secret"));
    named(&docs, "PodDisruptionBudget", "pg");
    named(&docs, "PodDisruptionBudget", "pg-router");
    for svc in ["pg-rw", "pg-ro"] {
        assert_eq!(
            named(&docs, "Service", svc)["spec"]["selector"]["app.kubernetes.io/name"],
            "pg-router"
        );
    }
}

#[test]
fn an_ha_cluster_on_a_three_member_etcd() {
    let docs = documents("deploy/kubernetes/ha.yaml");
    let etcd = named(&docs, "StatefulSet", "etcd");
    let pg = named(&docs, "StatefulSet", "pg-ha");
    assert_eq!(etcd["spec"]["replicas"], 3);
    assert_eq!(pg["spec"]["replicas"], 3);
    // Members started one by one would wait for a quorum (etcd) or for the initialize
    // race (pgwarden) that needs the others.
    for sts in [etcd, pg] {
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
        let svc = named(
            &docs,
            "Service",
            sts["spec"]["serviceName"].as_str().unwrap(),
        );
        assert_eq!(svc["spec"]["clusterIP"], "None");
        assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    }
    let c = &pg["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| -> String {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} not set"))
            .to_owned()
    };
    assert_eq!(env("PGWARDEN_HA"), "etcd");
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["name"] != "PGWARDEN_ROLE" && e["name"] != "PGWARDEN_PRIMARY_HOST"));
    // Every etcd member is listed, by the names its StatefulSet gives them.
    let endpoints = env("PGWARDEN_ETCD_ENDPOINTS");
    for i in 0..3 {
        assert!(
            endpoints.contains(&format!("http://etcd-{i}.etcd:2379")),
            "{endpoints}"
        );
    }
    assert_eq!(env("PGWARDEN_ADVERTISE_HOST"), "$(PGWARDEN_NAME).pg-ha");
    // The timing pgwarden itself would accept: loop_wait + 2 × retry_timeout ≤ ttl.
    let n = |k: &str| env(k).parse::<u64>().unwrap();
    assert!(
        n("PGWARDEN_HA_LOOP_WAIT") + 2 * n("PGWARDEN_HA_RETRY_TIMEOUT") <= n("PGWARDEN_HA_TTL")
    );
    let args: Vec<&str> = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let initial = args
        .iter()
        .find_map(|a| a.strip_prefix("--initial-cluster="))
        .unwrap();
    assert_eq!(initial.split(',').count(), 3, "{initial}");
}

/// The router's configuration, as HAProxy will read it.
fn router_config() -> String {
    let docs = documents("deploy/kubernetes/router.yaml");
    named(&docs, "ConfigMap", "pg-router")["data"]["haproxy.cfg"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_router_configuration_is_valid_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, router_config()).unwrap();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HAProxy started by a test, stopped by pid when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which instance a connection through `port` reaches, and whether it is in recovery.
async fn reached(port: u16) -> Option<(i32, bool)> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(PASSWORD)
        .dbname("postgres")
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect(tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT current_setting('port')::int, pg_is_in_recovery()",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// Waits until a connection through `port` reaches `want` (None: no server at all).
async fn eventually_reaches(port: u16, want: Option<(i32, bool)>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = reached(port).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} reaches {got:?}, expected {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The router's own configuration, pointed at local instances instead of pod names,
/// follows the roles: the read-write port reaches whichever instance is the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_the_roles_through_the_checks() {
    let tmp = test_dir();
    let mut a = Instance::primary(tmp.path(), "router-a");
    a.start().wait_ready();
    let mut b = Instance::replica_of(tmp.path(), "router-b", &a);
    b.start().wait_ready();

    let (rw, ro) = (free_port(), free_port());
    let mut cfg = String::new();
    for line in router_config().lines() {
        let t = line.trim_start();
        let line = if t == "bind :5432" {
            format!("    bind 127.0.0.1:{rw}")
        } else if t == "bind :5433" {
            format!("    bind 127.0.0.1:{ro}")
        } else if t.starts_with("server pg-replica-1 ") {
            continue;
        } else if let Some(rest) = t.strip_prefix("server ") {
            let pod = rest.split_whitespace().next().unwrap();
            let inst = if pod == "pg-primary-0" { &a } else { &b };
            format!(
                "    server {pod} 127.0.0.1:{} port {}",
                inst.port,
                inst.http.port()
            )
        } else {
            line.to_owned()
        };
        cfg.push_str(&line);
        cfg.push('\n');
    }
    let path = tmp.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy"),
    );

    eventually_reaches(rw, Some((a.port as i32, false))).await;
    eventually_reaches(ro, Some((b.port as i32, true))).await;

    // A manual failover: the old primary stops, the replica is promoted.
    a.stop();
    let (code, out) = b.run_cli(&["promote"]);
    assert!(code.success(), "{out}");
    eventually_reaches(rw, Some((b.port as i32, false))).await;
    eventually_reaches(ro, None).await;
    b.stop();
}
