//! The HA tests' harness, shared by tests/ha_failover.rs and tests/ha_races.rs: members
//! of a cluster on a real etcd, each pgwarden PID 1 of a PID namespace of its own (as in a
//! container: SIGKILL of it takes postgres down with it), and the probes and checkers
//! the tests read them with. Included by each of those files with
//! `#[path = "common/ha.rs"] mod ha;` next to `mod common;`.
#![allow(dead_code)]

use crate::common::etcd::Etcd;
use crate::common::router::Router;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Two clusters at once are too much for a small CI machine: these tests take turns,
/// whatever the test threads, and across test processes too (`make test` runs the
/// suite on two majors at once): the turn is an exclusive `flock` on a file of the
/// build's own temporary directory, released when the returned value is dropped (or
/// the process dies). Each test has a runtime of its own, so holding the turn across
/// its awaits blocks only other tests.
pub fn one_at_a_time() -> nix::fcntl::Flock<std::fs::File> {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ha-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()))
}

/// Three members of cluster `c`, not started, with the tests' short timing, on
/// loopback (`net` None) or each in its network namespace of `net`.
pub fn cluster(parent: &std::path::Path, etcd: &Etcd, net: Option<&Router>) -> Vec<Instance> {
    cluster_on(parent, &etcd.url(), net)
}

/// [`cluster`] on the etcd `endpoints` (comma-separated URLs).
pub fn cluster_on(
    parent: &std::path::Path,
    endpoints: &str,
    net: Option<&Router>,
) -> Vec<Instance> {
    members_on(parent, endpoints, net, &["n1", "n2", "n3"])
}

/// Members `names` of cluster `c` on the etcd `endpoints`, not started, with the tests'
/// short timing (TTL 6 s, loop_wait 1 s, retry_timeout 2 s), on loopback (`net` None)
/// or each in the network namespace of `net` named after it.
pub fn members_on(
    parent: &std::path::Path,
    endpoints: &str,
    net: Option<&Router>,
    names: &[&str],
) -> Vec<Instance> {
    members_timed(parent, endpoints, net, names, (6, 1, 2))
}

/// [`members_on`] with `timing`: TTL, loop_wait and retry_timeout, in seconds.
pub fn members_timed(
    parent: &std::path::Path,
    endpoints: &str,
    net: Option<&Router>,
    names: &[&str],
    timing: (u32, u32, u32),
) -> Vec<Instance> {
    let (ttl, loop_wait, retry) = (
        timing.0.to_string(),
        timing.1.to_string(),
        timing.2.to_string(),
    );
    names
        .iter()
        .map(|name| {
            let mut pg = Instance::new(parent, name);
            for (k, v) in [
                ("PGWARDEN_HA", "etcd"),
                ("PGWARDEN_CLUSTER", "c"),
                ("PGWARDEN_ETCD_ENDPOINTS", endpoints),
                ("PGWARDEN_HA_TTL", ttl.as_str()),
                ("PGWARDEN_HA_LOOP_WAIT", loop_wait.as_str()),
                ("PGWARDEN_HA_RETRY_TIMEOUT", retry.as_str()),
                ("PGWARDEN_ADVERTISE_HOST", "127.0.0.1"),
                ("PGWARDEN_REPLICATION_PASSWORD", REPLICATION_PASSWORD),
            ] {
                pg.set(k, v);
            }
            // pgwarden is PID 1 of a new PID namespace; SIGKILL of unshare kills it,
            // and with it every process of the namespace.
            let mut prefix: Vec<String> = Vec::new();
            if let Some(net) = net {
                prefix.extend(["ip", "netns", "exec"].map(String::from));
                prefix.push(net.ns(name));
                pg.set("PGWARDEN_ADVERTISE_HOST", net.addr(name));
                pg.set("PGWARDEN_ALLOWED_NETWORK", net.network());
                // Probes go through the control socket, which no partition cuts.
                pg.via_socket = true;
            }
            prefix.extend(["unshare", "--pid", "--kill-child", "--mount-proc"].map(String::from));
            pg.exec_prefix = prefix;
            pg
        })
        .collect()
}

/// A superuser connection over the unix socket (peer authentication as root, mapped
/// by pgwarden): it reaches a member whatever network namespace or partition it is in.
pub async fn client(socket_dir: &std::path::Path, port: u16) -> Option<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1));
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(2), cfg.connect(tokio_postgres::NoTls))
            .await
            .ok()?
            .ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Where a member's postgres answers: socket directory and port.
pub type Addr = (std::path::PathBuf, u16);

pub fn addr(pg: &Instance) -> Addr {
    (pg.socket_dir.clone(), pg.port)
}

/// The pid of pgwarden itself, the child of the `unshare` the harness started: signals
/// other than SIGKILL must go to it, as unshare does not forward them.
pub fn inner_pid(pg: &Instance) -> i32 {
    let p = pg.pid();
    let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

/// Stops a member as a pod deletion does (SIGTERM to pgwarden inside its namespace)
/// and waits for its clean exit.
pub fn stop_member(pg: &mut Instance) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inner_pid(pg)),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = pg.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", pg.log());
}

/// Whether postgres at `a` accepts writes, or `None` when it does not answer.
pub async fn writable(a: &Addr) -> Option<bool> {
    let client = client(&a.0, a.1).await?;
    let row = client
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// Runs `sql` on `pg`, which must answer.
pub async fn execute(pg: &Instance, sql: &str) {
    client(&pg.socket_dir, pg.port)
        .await
        .expect("connect over the socket")
        .batch_execute(sql)
        .await
        .unwrap();
}

/// One sampling round: when it ended, and the members that accepted writes in it.
pub type Round = (Instant, Vec<usize>);

/// Samples every member in turn until stopped; each round records who was writable.
pub struct Checker {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    pub fn start(addrs: Vec<Addr>) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let mut w = Vec::new();
                for (idx, a) in addrs.iter().enumerate() {
                    if writable(a).await == Some(true) {
                        w.push(idx);
                    }
                }
                r.lock().unwrap().push((Instant::now(), w));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Checker { stop, rounds, task }
    }

    /// When each round in which member `i` accepted writes ended, so far.
    pub fn writable_rounds(&self, i: usize) -> Vec<Instant> {
        let rounds = self.rounds.lock().unwrap();
        rounds
            .iter()
            .filter(|(_, w)| w.contains(&i))
            .map(|(at, _)| *at)
            .collect()
    }

    /// Stops sampling; panics if two members were ever writable in one round.
    pub async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let rounds = self.rounds.lock().unwrap();
        for (at, w) in rounds.iter() {
            assert!(
                w.len() <= 1,
                "two writable primaries at {at:?}: members {w:?}"
            );
        }
        rounds.len()
    }
}

pub fn primaries(members: &[Instance]) -> Vec<usize> {
    (0..members.len())
        .filter(|i| {
            members[*i]
                .try_get("/primary")
                .is_some_and(|r| r.status == 200)
        })
        .collect()
}

/// Every member's log, after a summary of each one's last pgwarden events: a CI
/// excerpt keeps the head of a failure's output and a backtrace its tail, and what
/// pgwarden decided is what a failure needs first.
pub fn logs(members: &[Instance]) -> String {
    let mut out = String::from("==== the last pgwarden events of each member (full logs below)\n");
    for m in members {
        let log = m.log();
        let events: Vec<String> = log.lines().filter_map(event).collect();
        out.push_str(&format!("-- {}\n", m.dir.display()));
        for e in &events[events.len().saturating_sub(8)..] {
            out.push_str(e);
            out.push('\n');
        }
    }
    for m in members {
        out.push_str(&format!("==== {}\n{}", m.dir.display(), m.log()));
    }
    out
}

/// One line of a member's log as a short event: pgwarden's own records (time, message,
/// then their fields) and its dead-man switch's plain lines; `None` for postgres's.
fn event(line: &str) -> Option<String> {
    let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        return Some(line.chars().take(240).collect());
    };
    if o.get("logger").and_then(|l| l.as_str()) != Some("pgwarden") {
        return None;
    }
    let field = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let ts = field(o.remove("ts"));
    let msg = field(o.remove("msg"));
    for k in ["level", "logger", "target"] {
        o.remove(k);
    }
    let rest: Vec<String> = o
        .into_iter()
        .map(|(k, v)| format!("{k}={}", field(Some(v))))
        .collect();
    let line = format!("{} {msg} {}", ts.get(11..23).unwrap_or(&ts), rest.join(" "));
    Some(line.chars().take(240).collect())
}

/// Waits until `observer`'s `/cluster` (its HA loop's last read of the store, a round
/// old at most) shows member `name` with `role`: what a user checks with `pgwarden
/// list` before asking anything of that member.
pub fn wait_cluster_role(observer: &Instance, name: &str, role: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("/cluster shows {name} as {role}"),
        || {
            let c: serde_json::Value =
                serde_json::from_str(&observer.try_get("/cluster").ok_or("no answer")?.body)
                    .map_err(|e| e.to_string())?;
            let got = c["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == name))
                .map(|m| m["role"].clone());
            match got {
                Some(r) if r == role => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
}

/// Waits until `primary` has `replica` streaming from it.
pub fn wait_streaming(
    rt: &tokio::runtime::Handle,
    primary: &Instance,
    replica: &str,
    all: &[Instance],
) {
    eventually(
        Duration::from_secs(90),
        &format!("{replica} streams"),
        || {
            let n: i64 = rt.block_on(async {
            let Some(c) = client(&primary.socket_dir, primary.port).await else {
                return 0;
            };
            c.query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&replica],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
        });
            if n == 1 {
                Ok(())
            } else {
                Err(format!("not streaming yet\n{}", logs(all)))
            }
        },
    );
}

/// Waits until a member other than `old` is the only primary and `old` serves reads
/// but accepts no writes, having logged that it fenced itself; returns the new one.
pub fn wait_taken_over_and_fenced(
    rt: &tokio::runtime::Handle,
    members: &[Instance],
    old: usize,
) -> usize {
    let new = tokio::task::block_in_place(|| {
        let new =
            eventually(
                Duration::from_secs(90),
                "another member takes over",
                || match primaries(members).as_slice() {
                    [one] if *one != old => Ok(*one),
                    p => Err(format!("primaries {p:?}\n{}", logs(members))),
                },
            );
        eventually(
            Duration::from_secs(30),
            "the old primary is read-only",
            || match rt.block_on(writable(&addr(&members[old]))) {
                Some(false) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        new
    });
    assert!(
        members[old].log().contains("fencing"),
        "the old primary did not log that it fenced itself\n{}",
        logs(members)
    );
    new
}

/// Waits until every member answers and none accepts writes (one too slow to answer
/// proves nothing).
pub fn wait_none_writable(rt: &tokio::runtime::Handle, members: &[Instance]) {
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(60), "no member accepts writes", || {
            let w: Vec<Option<bool>> = members
                .iter()
                .map(|m| rt.block_on(writable(&addr(m))))
                .collect();
            if w.iter().all(|w| *w == Some(false)) {
                Ok(())
            } else {
                Err(format!("writable: {w:?}\n{}", logs(members)))
            }
        })
    });
}

/// Waits for exactly one primary with every other member streaming from it; returns
/// its index.
pub fn wait_one_leader_followed(rt: &tokio::runtime::Handle, members: &[Instance]) -> usize {
    tokio::task::block_in_place(|| {
        let leader = eventually(
            Duration::from_secs(90),
            "a leader again",
            || match primaries(members).as_slice() {
                [one] => Ok(*one),
                p => Err(format!("primaries {p:?}\n{}", logs(members))),
            },
        );
        for o in (0..members.len()).filter(|i| *i != leader) {
            wait_streaming(rt, &members[leader], &format!("n{}", o + 1), members);
        }
        leader
    })
}

pub async fn count(pg: &Instance) -> Option<i64> {
    let c = client(&pg.socket_dir, pg.port).await?;
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Starts the members (three, or any number) together on empty volumes and waits until
/// one is primary with every other streaming from it and holding table `t` (100 rows).
/// Exactly one ran initdb. Returns the primary's index.
pub async fn bring_up(members: &mut [Instance]) -> usize {
    for m in members.iter_mut() {
        m.start();
    }
    let rt = tokio::runtime::Handle::current();
    let first = tokio::task::block_in_place(|| {
        eventually(
            Duration::from_secs(180),
            "one primary, the others replicas",
            || {
                let p = primaries(members);
                let replicas = members
                    .iter()
                    .filter(|m| m.try_get("/replica").is_some_and(|r| r.status == 200))
                    .count();
                match (p.as_slice(), replicas) {
                    ([one], r) if r + 1 == members.len() => Ok(*one),
                    _ => Err(format!(
                        "primaries {p:?}, replicas {replicas}\n{}",
                        logs(members)
                    )),
                }
            },
        )
    });
    let initdbs = members
        .iter()
        .filter(|m| m.log().contains("running initdb"))
        .count();
    assert_eq!(initdbs, 1, "{}", logs(members));
    let others: Vec<usize> = (0..members.len()).filter(|i| *i != first).collect();
    tokio::task::block_in_place(|| {
        for o in &others {
            wait_streaming(&rt, &members[first], &format!("n{}", o + 1), members);
        }
    });
    execute(
        &members[first],
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await;
    tokio::task::block_in_place(|| {
        for o in &others {
            eventually(
                Duration::from_secs(30),
                "the rows reach the replica",
                || match rt.block_on(count(&members[*o])) {
                    Some(100) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
    });
    first
}

/// The members whose postgres accepts writes, asked over their sockets (a stopped
/// pgwarden cannot answer HTTP).
pub async fn writable_members(members: &[Instance]) -> Vec<usize> {
    let mut w = Vec::new();
    for (i, m) in members.iter().enumerate() {
        if writable(&addr(m)).await == Some(true) {
            w.push(i);
        }
    }
    w
}

/// Inserts rows 1, 2, 3... one by one into table `w` of whichever member accepts
/// them, until stopped; returns the ids whose INSERT was acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<i32>>,
}

impl Writer {
    pub fn start(addrs: Vec<Addr>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut clients: Vec<Option<tokio_postgres::Client>> =
                addrs.iter().map(|_| None).collect();
            let mut id = 1;
            while !s.load(Ordering::SeqCst) {
                for (i, a) in addrs.iter().enumerate() {
                    if clients[i].is_none() {
                        clients[i] = client(&a.0, a.1).await;
                    }
                    let Some(c) = &clients[i] else { continue };
                    match c.execute("INSERT INTO w VALUES ($1)", &[&id]).await {
                        Ok(_) => {
                            acked.push(id);
                            break;
                        }
                        // Read-only, or gone: reconnect next time.
                        Err(_) => clients[i] = None,
                    }
                }
                id += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        });
        Writer { stop, task }
    }

    pub async fn finish(self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// The ids in table `w` of `pg`.
pub async fn ids(pg: &Instance) -> Vec<i32> {
    let c = client(&pg.socket_dir, pg.port).await.expect("connect");
    c.query("SELECT id FROM w ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn code(pg: &Instance, path: &str) -> u16 {
    pg.get(path).status
}

/// What one sampling round saw: the leader key read before and after probing each
/// member's postgres in turn (`Err` when etcd did not answer), and whether each
/// accepted writes (`None`: it did not answer).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub before: Result<Option<String>, String>,
    pub writable: Vec<Option<bool>>,
    pub after: Result<Option<String>, String>,
}

/// Samples every 50 ms, on a thread of its own, the leader key in etcd and whether each
/// member's postgres accepts writes (`SELECT NOT pg_is_in_recovery()` over its unix
/// socket), until stopped. The thread enters network namespace `netns` first when etcd
/// is only reachable there (the sockets are files: they are reached from anywhere).
pub struct KeySampler {
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeySampler {
    pub fn start(endpoints: &[String], netns: Option<&str>, members: &[Instance]) -> KeySampler {
        let names: Vec<String> = members
            .iter()
            .map(|m| m.env["PGWARDEN_NAME"].clone())
            .collect();
        let addrs: Vec<Addr> = members.iter().map(addr).collect();
        let (endpoints, netns) = (endpoints.to_vec(), netns.map(String::from));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                enter_netns(&ns);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = loop {
                    match pgwarden::ha::etcd::EtcdStore::connect(
                        &endpoints,
                        "c",
                        Duration::from_secs(2),
                    )
                    .await
                    {
                        Ok(store) => break store,
                        Err(_) if s.load(Ordering::SeqCst) => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                while !s.load(Ordering::SeqCst) {
                    let before = leader(&store).await;
                    let mut writable_now = Vec::new();
                    for a in &addrs {
                        writable_now.push(writable(a).await);
                    }
                    let after = leader(&store).await;
                    out.lock().unwrap().push(Sample {
                        at: Instant::now(),
                        before,
                        writable: writable_now,
                        after,
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        KeySampler {
            names,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The rounds in which a member accepted writes while the leader key, read before
    /// and after it was asked, did not name it either time; or two members accepted
    /// writes. Rounds in which etcd did not answer prove nothing and are skipped.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let first = self.samples().first().map(|s| s.at);
        for s in self.samples() {
            let since = first.map(|f| s.at - f).unwrap_or_default();
            let writers: Vec<&String> = s
                .writable
                .iter()
                .zip(&self.names)
                .filter(|(w, _)| **w == Some(true))
                .map(|(_, n)| n)
                .collect();
            if writers.len() > 1 {
                out.push(format!("{since:?} in: {writers:?} all accept writes"));
            }
            let (Ok(before), Ok(after)) = (&s.before, &s.after) else {
                continue;
            };
            for w in writers {
                if before.as_ref() != Some(w) && after.as_ref() != Some(w) {
                    out.push(format!(
                        "{since:?} in: {w} accepts writes while the leader key names {before:?} before and {after:?} after"
                    ));
                }
            }
        }
        out
    }

    /// The last sample, if any.
    pub fn last(&self) -> Option<Sample> {
        self.samples.lock().unwrap().last().cloned()
    }

    /// Whether any read of the leader key named `name`.
    pub fn key_named(&self, name: &str) -> bool {
        self.samples().iter().any(|s| {
            [&s.before, &s.after]
                .iter()
                .any(|k| matches!(k, Ok(Some(n)) if n == name))
        })
    }

    /// Whether member `i` ever accepted writes.
    pub fn ever_writable(&self, i: usize) -> bool {
        self.samples()
            .iter()
            .any(|s| s.writable.get(i) == Some(&Some(true)))
    }

    /// The last sample in which the key was read both times and agreed: its holder and
    /// which members accepted writes.
    pub fn last_agreed(&self) -> Option<(Option<String>, Vec<Option<bool>>)> {
        self.samples()
            .iter()
            .rev()
            .find_map(|s| match (&s.before, &s.after) {
                (Ok(b), Ok(a)) if a == b => Some((a.clone(), s.writable.clone())),
                _ => None,
            })
    }

    /// Stops sampling; returns how many rounds were taken.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the sampler panicked");
        }
        self.samples.lock().unwrap().len()
    }
}

impl Drop for KeySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The leader key's holder, as one linearizable read of the store sees it.
async fn leader(store: &pgwarden::ha::etcd::EtcdStore) -> Result<Option<String>, String> {
    use pgwarden::ha::store::Store;
    match tokio::time::timeout(Duration::from_secs(2), store.read()).await {
        Ok(Ok(view)) => Ok(view.leader.map(|l| l.name)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Moves the calling thread (only it) into network namespace `ns` (made by `ip netns`).
fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
    // SAFETY: setns on a descriptor we own; it changes this thread's namespace only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Whether the harness's child for `pg` (its `unshare`) has exited: it stays a zombie
/// until waited for.
pub fn has_exited(pg: &Instance) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pg.pid())).unwrap_or_default();
    match stat.rfind(')') {
        Some(i) => stat[i + 1..].trim_start().starts_with('Z'),
        None => true,
    }
}

/// Starts `pg` again if its pgwarden has exited, as its pod's restart policy would;
/// true if it did.
pub fn restart_if_exited(pg: &mut Instance) -> bool {
    if !has_exited(pg) {
        return false;
    }
    let status = pg.wait_exit(Duration::from_secs(5));
    eprintln!("{} exited ({status}); starting it again", pg.dir.display());
    pg.start();
    true
}

/// Appends `lines` to `pg`'s user configuration (applied at its next start).
pub fn add_user_conf(pg: &Instance, lines: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&pg.user_conf)
        .unwrap();
    f.write_all(lines.as_bytes()).unwrap();
}

/// The timeline postgres at `pg` writes (a primary).
pub async fn timeline(pg: &Instance) -> u32 {
    let c = client(&pg.socket_dir, pg.port).await.expect("connect");
    let tl: i32 = c
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tl as u32
}
