//! The fault harness of issue 16 (`make chaos`): three pgwarden members on a three-member
//! etcd, each member and each etcd member in a network namespace of its own behind a
//! router namespace, each pgwarden PID 1 of a PID namespace of its own (SIGKILL of it
//! takes its postgres down too), under a steady write load, through a seeded random
//! sequence of faults: kill -9 of a pgwarden (restarted, as its pod would be) or of its
//! postgres, SIGSTOP of a pgwarden, a clean stop and restart, a member cut off from etcd
//! and/or from the other members (blackhole rules in the router), an etcd member frozen
//! or cut off, the etcd quorum lost, a switchover through a member's CLI, and the replay
//! of a replica held back by a standby query conflict (the primary killed meanwhile, at
//! times).
//!
//! A quarter of the steps, on average, are two faults that overlap: the second begins
//! while the first is in force, aimed at the roles as they are then (a new leader that
//! is stopped cleanly before it recorded a synchronous standby, say).
//!
//! After each step is healed the cluster must come back within [`RECOVERY_BOUND`] to one
//! primary with both other members streaming from it (answering within 5 s), a
//! synchronous standby recorded (in synchronous mode) and the write load acknowledged
//! again, and stay so for [`STABLE`]; at the end both replicas hold exactly the rows
//! of the primary. Members' APIs listen on their own addresses, so that the members
//! reach each other's as in pods, and each member has a /dev/shm of its own.
//! Throughout, a checker
//! samples every member every 50 ms and no round may see two writable, and a sampler
//! reads the leader key around its own probes: no member may accept writes while the
//! key names someone else or nobody. With `CHAOS_SYNC` `on` (the default), `strict` or
//! `quorum`, every acknowledged id must be on the primary after every step and at the
//! end; with `off` the loss is reported, not failed on.
//!
//! `CHAOS_SEED` (default [`DEFAULT_SEED`]) seeds the schedule, `CHAOS_FAULTS` (default
//! 4) is its number of steps: the first steps of a seed are the same whatever the
//! number. The seed, the schedule and the command that replays it are printed at the
//! start and on failure; a failed run also keeps every member's and etcd member's log
//! and the steps taken under `/var/tmp/pgwarden-chaos/`. A replay draws the same faults
//! against the same roles (the primary, replica #k in name order); the timing of the
//! processes is not replayed. `CHAOS_SYNC` sets `PGWARDEN_SYNC_MODE` (`on`, `off`,
//! `strict`, `quorum`); `CHAOS_WAL_LEVEL=logical` runs with `wal_level = logical` and a
//! logical slot created with `failover` on the first primary (PostgreSQL 17+), so that
//! the failover-slot steps of the loop run through every fault; `CHAOS_DRY_RUN=1`
//! prints the schedule only; `CHAOS_KEEP_LOGS=1` keeps the logs of a run that passed too.

mod common;
#[path = "common/ha.rs"]
mod ha;

use common::etcd::etcd_bin;
use common::router::Router;
use common::*;
use ha::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const NAMES: [&str; 3] = ["n1", "n2", "n3"];
const ETCD: [&str; 3] = ["e1", "e2", "e3"];
/// TTL, loop_wait, retry_timeout.
const TIMING: (u32, u32, u32) = (10, 1, 2);
/// How long the recovered state must hold before the next step.
const STABLE: Duration = Duration::from_secs(5);
/// The seed of the default run (CI's): its first four steps are a clean stop of the
/// primary, the replay of a replica held while the primary is killed, the primary cut
/// from one replica, and the etcd quorum lost.
const DEFAULT_SEED: u64 = 14;
/// From the heal to one primary, both others streaming from it and a write acknowledged
/// (then held for [`STABLE`]).
const RECOVERY_BOUND: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------
// The schedule

/// splitmix64: a tiny seeded generator, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn who(&mut self) -> Who {
        if self.below(2) == 0 {
            Who::Primary
        } else {
            Who::Replica(self.index(2))
        }
    }

    fn fault(&mut self) -> Fault {
        // Relative weights of the kinds, in the order of the match below.
        const WEIGHTS: [u64; 10] = [3, 1, 2, 2, 3, 1, 1, 1, 2, 2];
        let mut pick = self.below(WEIGHTS.iter().sum());
        let mut kind = 0;
        while pick >= WEIGHTS[kind] {
            pick -= WEIGHTS[kind];
            kind += 1;
        }
        match kind {
            0 => Fault::Kill {
                who: self.who(),
                down: self.between(0, 15),
            },
            1 => Fault::KillPostgres { who: self.who() },
            2 => Fault::Freeze {
                who: self.who(),
                secs: self.between(2, 25),
            },
            3 => Fault::Stop {
                who: self.who(),
                down: self.between(0, 10),
            },
            4 => {
                let who = self.who();
                let cut = match self.below(5) {
                    0 => Cut::Etcd,
                    1 => Cut::EtcdMajority(self.index(3)),
                    2 => Cut::Peers,
                    3 => Cut::OnePeer(self.index(2)),
                    _ => Cut::Everything,
                };
                Fault::Partition {
                    who,
                    cut,
                    secs: self.between(3, 30),
                }
            }
            5 => Fault::EtcdFreeze {
                k: self.index(3),
                secs: self.between(3, 25),
            },
            6 => Fault::EtcdIsolate {
                k: self.index(3),
                secs: self.between(3, 25),
            },
            7 => Fault::EtcdQuorumLoss {
                keep: self.index(3),
                secs: self.between(3, 25),
            },
            8 => Fault::Switchover {
                via: self.who(),
                to: if self.below(3) == 0 {
                    None
                } else {
                    Some(self.index(2))
                },
            },
            _ => Fault::SlowReplay {
                replica: self.index(2),
                secs: self.between(3, 30),
                kill_primary: self.below(3) == 0,
            },
        }
    }
}

/// A member named by its role when the fault starts: the primary, or the `k`th of the
/// two others in name order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Primary,
    Replica(usize),
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Who::Primary => write!(f, "the primary"),
            Who::Replica(k) => write!(f, "replica #{k}"),
        }
    }
}

/// What a partitioned member is cut from.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Every etcd member.
    Etcd,
    /// Two etcd members: it still reaches `e<k+1>`, which is in the majority.
    EtcdMajority(usize),
    /// Both other members.
    Peers,
    /// The `k`th of the two other members in name order.
    OnePeer(usize),
    /// Etcd and the other members.
    Everything,
}

#[derive(Clone, Debug)]
enum Fault {
    /// SIGKILL of the pgwarden (its PID namespace, postgres included, dies), started
    /// again `down` seconds later.
    Kill {
        who: Who,
        down: u64,
    },
    /// SIGKILL of the postmaster; pgwarden stays and restarts it.
    KillPostgres {
        who: Who,
    },
    /// SIGSTOP of the pgwarden for `secs` (postgres and its dead-man switch run on).
    Freeze {
        who: Who,
        secs: u64,
    },
    /// SIGTERM of the pgwarden, started again `down` seconds after it exited.
    Stop {
        who: Who,
        down: u64,
    },
    Partition {
        who: Who,
        cut: Cut,
        secs: u64,
    },
    /// SIGSTOP of one etcd member.
    EtcdFreeze {
        k: usize,
        secs: u64,
    },
    /// One etcd member cut from every other host.
    EtcdIsolate {
        k: usize,
        secs: u64,
    },
    /// SIGSTOP of the two etcd members other than `keep`.
    EtcdQuorumLoss {
        keep: usize,
        secs: u64,
    },
    /// `pgwarden switchover [--to replica #k]` through `via`'s CLI.
    Switchover {
        via: Who,
        to: Option<usize>,
    },
    /// Replay held on replica #`replica` for `secs`: a REPEATABLE READ transaction
    /// there against a committed `LOCK TABLE` of the primary, with
    /// `max_standby_streaming_delay = -1`; the primary killed for that time if
    /// `kill_primary`.
    SlowReplay {
        replica: usize,
        secs: u64,
        kill_primary: bool,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fault::Kill { who, down } => {
                write!(
                    f,
                    "kill -9 of {who}'s pgwarden, started again after {down} s"
                )
            }
            Fault::KillPostgres { who } => write!(f, "kill -9 of {who}'s postmaster"),
            Fault::Freeze { who, secs } => write!(f, "SIGSTOP of {who}'s pgwarden for {secs} s"),
            Fault::Stop { who, down } => write!(
                f,
                "SIGTERM of {who}'s pgwarden, started again {down} s after it exits"
            ),
            Fault::Partition { who, cut, secs } => {
                let from = match cut {
                    Cut::Etcd => "every etcd member".to_owned(),
                    Cut::EtcdMajority(k) => {
                        format!("two etcd members (it still reaches {})", ETCD[*k])
                    }
                    Cut::Peers => "both other members".to_owned(),
                    Cut::OnePeer(k) => format!("other member #{k}"),
                    Cut::Everything => "etcd and both other members".to_owned(),
                };
                write!(f, "{who} cut from {from} for {secs} s")
            }
            Fault::EtcdFreeze { k, secs } => write!(f, "etcd {} frozen for {secs} s", ETCD[*k]),
            Fault::EtcdIsolate { k, secs } => write!(f, "etcd {} cut off for {secs} s", ETCD[*k]),
            Fault::EtcdQuorumLoss { keep, secs } => {
                let frozen: Vec<&str> = (0..3).filter(|i| i != keep).map(|i| ETCD[i]).collect();
                write!(
                    f,
                    "etcd quorum lost: {} frozen for {secs} s",
                    frozen.join(" and ")
                )
            }
            Fault::Switchover { via, to } => match to {
                Some(k) => write!(f, "switchover to replica #{k} through {via}'s CLI"),
                None => write!(f, "switchover (no candidate named) through {via}'s CLI"),
            },
            Fault::SlowReplay {
                replica,
                secs,
                kill_primary,
            } => write!(
                f,
                "replay held on replica #{replica} for {secs} s{}",
                if *kill_primary {
                    ", the primary killed for that time"
                } else {
                    ""
                }
            ),
        }
    }
}

impl Fault {
    /// How long it lasts before it is healed (the time a killed or stopped member
    /// stays down).
    fn secs(&self) -> u64 {
        match self {
            Fault::Kill { down, .. } | Fault::Stop { down, .. } => *down,
            Fault::Freeze { secs, .. }
            | Fault::Partition { secs, .. }
            | Fault::EtcdFreeze { secs, .. }
            | Fault::EtcdIsolate { secs, .. }
            | Fault::EtcdQuorumLoss { secs, .. }
            | Fault::SlowReplay { secs, .. } => *secs,
            Fault::KillPostgres { .. } | Fault::Switchover { .. } => 0,
        }
    }
}

/// One step of the schedule: a fault, or two that overlap (the second `gap` seconds
/// after the first began, aimed at the roles as they are then).
#[derive(Clone, Debug)]
enum Step {
    One(Fault),
    Two { first: Fault, gap: u64, then: Fault },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Step::One(x) => write!(f, "{x}"),
            Step::Two { first, gap, then } => write!(f, "{first}; {gap} s in, {then}"),
        }
    }
}

impl Rng {
    fn step(&mut self) -> Step {
        if self.below(4) == 0 {
            let first = self.fault();
            let gap = self.between(0, first.secs().max(1));
            let then = self.fault();
            Step::Two { first, gap, then }
        } else {
            Step::One(self.fault())
        }
    }
}

fn plan(seed: u64, n: usize) -> Vec<Step> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.step()).collect()
}

struct Settings {
    seed: u64,
    faults: usize,
    sync: String,
    /// `wal_level = logical` and a failover slot (`CHAOS_WAL_LEVEL=logical`).
    logical: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let seed = var("CHAOS_SEED").map_or(DEFAULT_SEED, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("CHAOS_SEED={v:?}: {e}"))
        });
        let faults = var("CHAOS_FAULTS").map_or(4, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("CHAOS_FAULTS={v:?}: {e}"))
        });
        let sync = var("CHAOS_SYNC").map_or_else(|| "on".to_owned(), |v| v.trim().to_owned());
        assert!(
            ["on", "off", "strict", "quorum"].contains(&sync.as_str()),
            "CHAOS_SYNC={sync:?}: on, off, strict or quorum"
        );
        let logical = match var("CHAOS_WAL_LEVEL").as_deref().map(str::trim) {
            None | Some("replica") => false,
            Some("logical") => true,
            Some(v) => panic!("CHAOS_WAL_LEVEL={v:?}: replica or logical"),
        };
        Settings {
            seed,
            faults,
            sync,
            logical,
        }
    }

    fn replay(&self) -> String {
        let mut sync = if self.sync == "on" {
            String::new()
        } else {
            format!(" CHAOS_SYNC={}", self.sync)
        };
        if self.logical {
            sync += " CHAOS_WAL_LEVEL=logical";
        }
        format!(
            "CHAOS_SEED={} CHAOS_FAULTS={}{sync} cargo test --test chaos -- --nocapture",
            self.seed, self.faults
        )
    }

    fn describe(&self, faults: &[Step]) -> String {
        let mut s = format!(
            "chaos: seed {}, {} steps, PGWARDEN_SYNC_MODE={}; replay with:\n  {}\nschedule:\n",
            self.seed,
            faults.len(),
            self.sync,
            self.replay()
        );
        for (i, f) in faults.iter().enumerate() {
            s.push_str(&format!("  {:>3}. {f}\n", i + 1));
        }
        s
    }
}

// ---------------------------------------------------------------------------------
// What the run did, and what a failure leaves behind

/// Wall-clock time of day, UTC, as in pgwarden's JSON log (`ts`).
fn wall(at: SystemTime) -> String {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// The wall-clock time of `at`, an instant in the past.
fn wall_of(at: Instant) -> String {
    wall(SystemTime::now() - at.elapsed())
}

/// Every step the run took, printed as it goes and again on failure.
#[derive(Clone)]
struct Journal {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Journal {
    fn new() -> Journal {
        Journal {
            start: Instant::now(),
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn note(&self, what: impl AsRef<str>) {
        let line = format!(
            "[{:>7.1}s {}] {}",
            self.start.elapsed().as_secs_f64(),
            wall(SystemTime::now()),
            what.as_ref()
        );
        eprintln!("{line}");
        self.lines.lock().unwrap().push(line);
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// On a failure (a panic while it is dropped): prints the seed, the schedule, the replay
/// command and the steps taken, keeps every log under /var/tmp/pgwarden-chaos/ and
/// prints the end of each member's log. Dropped before the processes and the temp dir.
struct FailureReport {
    header: String,
    seed: u64,
    journal: Journal,
    logs: Vec<(String, PathBuf)>,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if !failed && std::env::var_os("CHAOS_KEEP_LOGS").is_none() {
            return;
        }
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let keep = PathBuf::from(format!("/var/tmp/pgwarden-chaos/seed{}-{stamp}", self.seed));
        let kept = std::fs::create_dir_all(&keep).is_ok();
        let mut tails = String::new();
        for (name, path) in &self.logs {
            if kept {
                let _ = std::fs::copy(path, keep.join(format!("{name}.log")));
            }
            if name.starts_with('n') {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(60);
                tails.push_str(&format!(
                    "==== {name}: the last {} lines of {}\n{}\n",
                    lines.len() - from,
                    path.display(),
                    lines[from..].join("\n")
                ));
            }
        }
        if kept {
            let _ = std::fs::write(
                keep.join("journal.txt"),
                format!("{}\n{}\n", self.header, self.journal.text()),
            );
        }
        if !failed {
            eprintln!("logs kept in {}", keep.display());
            return;
        }
        eprintln!(
            "\n{tails}\nCHAOS FAILED\n{}steps:\n{}\nlogs kept in {}\n",
            self.header,
            self.journal.text(),
            if kept {
                keep.display().to_string()
            } else {
                "(could not create /var/tmp/pgwarden-chaos)".to_owned()
            }
        );
    }
}

// ---------------------------------------------------------------------------------
// The etcd cluster: three members, each in its network namespace

/// One etcd member in network namespace `ns`, listening on its host's address, killed
/// by pid on drop (SIGKILL also ends a stopped process).
struct EtcdNode {
    name: String,
    url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl EtcdNode {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("etcd runs").id() as i32)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A three-member etcd on hosts e1..e3 of `net`, started together; returns once each
/// serves clients.
fn start_etcd(net: &Router) -> Vec<EtcdNode> {
    let initial = ETCD
        .iter()
        .map(|e| format!("{e}=http://{}:2380", net.addr(e)))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<EtcdNode> = ETCD
        .iter()
        .map(|e| {
            // /dev/shm: etcd fsyncs its WAL on every write, slow on a shared disk.
            let dir = tempfile::Builder::new()
                .prefix("pgwarden-chaos-etcd-")
                .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
                    "/dev/shm"
                } else {
                    "/tmp"
                })
                .unwrap();
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let host = net.addr(e);
            let (client, peer) = (format!("http://{host}:2379"), format!("http://{host}:2380"));
            // `ip netns exec` execs in place: the pid is etcd's.
            let child = Command::new("ip")
                .args(["netns", "exec", &net.ns(e)])
                .arg(etcd_bin())
                .args(["--name", e, "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .env_clear()
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            EtcdNode {
                name: e.to_string(),
                url: client,
                dir,
                child: Some(child),
            }
        })
        .collect();
    for n in &nodes {
        eventually(Duration::from_secs(60), "etcd serves clients", || {
            let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            if log.contains("ready to serve client requests") {
                Ok(())
            } else {
                Err(format!("{}:\n{log}", n.name))
            }
        });
    }
    nodes
}

// ---------------------------------------------------------------------------------
// The write load

/// Inserts ids 1, 2, 3... one by one into table `w` of whichever member accepts them
/// (the one that took the last first), as `ha::Writer` does, with the acknowledged ids
/// readable while it runs. An INSERT that does not answer within 10 s (a commit waiting
/// for a synchronous standby that is gone) is given up: its outcome is unknown, it is
/// not counted as acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    /// Each acknowledged id, and when its INSERT answered.
    acked: Arc<Mutex<Vec<(i32, Instant)>>>,
    last_tried: Arc<AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addrs: Vec<Addr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let last_tried = Arc::new(AtomicI32::new(0));
        let (s, out, tried) = (stop.clone(), acked.clone(), last_tried.clone());
        let task = tokio::spawn(async move {
            let mut clients: Vec<Option<tokio_postgres::Client>> =
                addrs.iter().map(|_| None).collect();
            let mut first = 0;
            let mut id = 1;
            while !s.load(Ordering::SeqCst) {
                let mut accepted = false;
                for i in (0..addrs.len()).map(|k| (first + k) % addrs.len()) {
                    if clients[i].as_ref().is_some_and(|c| c.is_closed()) {
                        clients[i] = None;
                    }
                    if clients[i].is_none() {
                        clients[i] = client(&addrs[i].0, addrs[i].1).await;
                    }
                    let Some(c) = &clients[i] else { continue };
                    tried.store(id, Ordering::SeqCst);
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        c.execute("INSERT INTO w VALUES ($1)", &[&id]),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            out.lock().unwrap().push((id, Instant::now()));
                            first = i;
                            accepted = true;
                            break;
                        }
                        // Read-only: ask the next one (the connection stays).
                        Ok(Err(_)) => {}
                        // Stuck: its outcome is unknown; a new connection next time.
                        Err(_) => clients[i] = None,
                    }
                }
                id += 1;
                // Nobody accepts writes: no need to fill every log with refusals.
                let pause = if accepted { 10 } else { 100 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
        Load {
            stop,
            acked,
            last_tried,
            task,
        }
    }

    fn acked(&self) -> Vec<i32> {
        self.acked.lock().unwrap().iter().map(|a| a.0).collect()
    }

    /// The longest time between `from` and now without an acknowledged write.
    fn longest_gap(&self, from: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for (_, at) in acked.iter().filter(|(_, at)| *at >= from) {
            gap = gap.max(*at - prev);
            prev = *at;
        }
        gap.max(prev.elapsed())
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops; returns the acknowledged ids and the last id tried.
    async fn finish(self) -> (Vec<i32>, i32) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().iter().map(|a| a.0).collect();
        (acked, self.last_tried.load(Ordering::SeqCst))
    }
}

// ---------------------------------------------------------------------------------
// Probes

fn others(i: usize) -> Vec<usize> {
    (0..3).filter(|j| *j != i).collect()
}

fn resolve(who: Who, leader: usize) -> usize {
    match who {
        Who::Primary => leader,
        Who::Replica(k) => others(leader)[k],
    }
}

/// The status code of `GET path` over the member's control socket, answered within 3 s.
fn code_within(pg: &Instance, path: &str) -> Option<u16> {
    use pgwarden::http::client::{request_with_timeout, Target};
    let target = Target::Unix(pg.socket_dir.join("pgwarden.sock"));
    request_with_timeout(&target, "GET", path, &[], Duration::from_secs(3))
        .ok()
        .map(|r| r.status)
}

/// The application names streaming from `pg` that answered in the last 5 s (under the
/// write load a standby answers every flush; a connection stuck in TCP retransmission
/// after a partition still shows as streaming, with an old reply).
async fn streaming_from(pg: &Instance) -> Result<Vec<String>, String> {
    let c = client(&pg.socket_dir, pg.port)
        .await
        .ok_or("no connection")?;
    let rows = tokio::time::timeout(
        Duration::from_secs(5),
        c.query(
            "SELECT application_name FROM pg_stat_replication \
             WHERE state = 'streaming' AND reply_time > now() - interval '5 s'",
            &[],
        ),
    )
    .await
    .map_err(|_| "pg_stat_replication: no answer".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The ids in table `w` of `pg`, or why not.
async fn try_ids(pg: &Instance) -> Result<Vec<i32>, String> {
    let c = client(&pg.socket_dir, pg.port)
        .await
        .ok_or("no connection")?;
    let rows = tokio::time::timeout(
        Duration::from_secs(30),
        c.query("SELECT id FROM w ORDER BY id", &[]),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The ids in table `w` of `pg`, asked again for `limit` while it does not answer.
async fn ids_within(pg: &Instance, limit: Duration) -> Vec<i32> {
    let since = Instant::now();
    loop {
        match try_ids(pg).await {
            Ok(ids) => return ids,
            Err(e) if since.elapsed() > limit => {
                panic!("the ids on {}: {e}", pg.dir.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs `sql` on `pg` within `limit`.
async fn run_sql(pg: &Instance, sql: &str, limit: Duration) -> Result<(), String> {
    let c = client(&pg.socket_dir, pg.port)
        .await
        .ok_or("no connection")?;
    tokio::time::timeout(limit, c.batch_execute(sql))
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
        .map_err(|e| e.to_string())
}

/// The host pid of `pg`'s postmaster: the child of its pgwarden whose pid in the PID
/// namespace is the one postmaster.pid names (that file holds the namespace's pid).
fn postmaster_host_pid(pg: &Instance) -> Option<i32> {
    let ns_pid = pg.postmaster_pid()?;
    let warden = inner_pid(pg);
    for task in std::fs::read_dir(format!("/proc/{warden}/task")).ok()? {
        let children =
            std::fs::read_to_string(task.ok()?.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace() {
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
            let inner = status
                .lines()
                .find(|l| l.starts_with("NSpid:"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|p| p.parse::<i32>().ok());
            if inner == Some(ns_pid) {
                return c.parse().ok();
            }
        }
    }
    None
}

/// Runs `pgwarden <args>` with `pg`'s environment (in its namespaces) for at most
/// `limit`; kills it by pid past that. Returns (success, output).
fn run_cli_within(pg: &Instance, args: &[&str], limit: Duration) -> Result<(bool, String), String> {
    let out_path = pg.dir.join("cli.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = pg
        .command_for_test(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run pgwarden");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            return Ok((status.success(), text.trim().to_owned()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            return Err(format!(
                "`pgwarden {}` did not answer within {limit:?}: {}",
                args.join(" "),
                text.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rounds of the checker in which more than one member accepted writes.
fn double_rounds(checker: &Checker) -> Vec<(Instant, Vec<usize>)> {
    let mut by_round: BTreeMap<Instant, Vec<usize>> = BTreeMap::new();
    for i in 0..3 {
        for at in checker.writable_rounds(i) {
            by_round.entry(at).or_default().push(i);
        }
    }
    by_round.into_iter().filter(|(_, w)| w.len() > 1).collect()
}

// ---------------------------------------------------------------------------------
// Faults

struct Ctx<'a> {
    members: &'a mut [Instance],
    etcds: &'a [EtcdNode],
    net: &'a mut Router,
    journal: &'a Journal,
    /// Switchovers the cluster refused (with the CLI's answer), outside compound steps.
    refused: Vec<String>,
    /// Clean stops that did not exit 0.
    unclean: Vec<String>,
    /// Synchronous mode (`on`, `strict` or `quorum`).
    sync: bool,
    /// Members whose pgwarden is down (killed or stopped, not started again yet).
    down: [bool; 3],
    /// Members whose pgwarden is stopped (SIGSTOP): the pid of the `unshare` it runs
    /// under and its own.
    frozen: [Option<(i32, i32)>; 3],
    /// Partitions in force: the router's rules are removed when the last one ends.
    partitions: usize,
    /// How many faults hold each etcd member stopped.
    etcd_frozen: [usize; 3],
    /// Inside a compound step (a refused switchover is no surprise there).
    compound: bool,
}

fn name(i: usize) -> &'static str {
    NAMES[i]
}

async fn sleep_s(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

/// How a fault in progress ends.
enum Undo {
    Nothing,
    /// Start the member's pgwarden again.
    Start(usize),
    /// SIGCONT of the member's pgwarden.
    Cont(usize),
    /// Remove the partition.
    Heal,
    /// SIGCONT of these etcd members.
    EtcdCont(Vec<usize>),
    /// End the reader holding back replay on `on`, and start `restart` again.
    Reader {
        reader: tokio_postgres::Client,
        on: usize,
        restart: Option<usize>,
    },
}

impl Ctx<'_> {
    fn kill_member(&mut self, i: usize) {
        kill(Pid::from_raw(self.members[i].pid()), Signal::SIGKILL).unwrap();
        self.members[i].kill_hard();
        self.down[i] = true;
        // SIGKILL ends a stopped process too: nothing to continue any more.
        self.frozen[i] = None;
        self.journal.note(format!(
            "  {}: pgwarden killed (SIGKILL of its PID namespace)",
            name(i)
        ));
    }

    fn start_member(&mut self, i: usize) {
        self.members[i].start();
        self.down[i] = false;
        self.journal.note(format!("  {}: started again", name(i)));
    }

    /// Whether member `i`'s pgwarden runs and is not stopped; notes why not.
    fn live(&self, i: usize, f: &Fault) -> bool {
        let why = if self.down[i] {
            "down"
        } else if self.frozen[i].is_some() {
            "stopped"
        } else {
            return true;
        };
        self.journal
            .note(format!("  skipped ({f}): {}'s pgwarden is {why}", name(i)));
        false
    }

    /// The member that answers `/primary` now, if exactly one does (asked of the
    /// members that run and are not stopped).
    fn current_leader(&self) -> Option<usize> {
        let p: Vec<usize> = (0..3)
            .filter(|i| !self.down[*i] && self.frozen[*i].is_none())
            .filter(|i| code_within(&self.members[*i], "/primary") == Some(200))
            .collect();
        match p.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Runs `step` with `leader` leading, and heals it.
    async fn run(&mut self, step: &Step, leader: usize) {
        match step {
            Step::One(f) => {
                let undo = self.begin(f, leader).await;
                sleep_s(f.secs()).await;
                self.end(undo).await;
            }
            Step::Two { first, gap, then } => {
                self.compound = true;
                let a_at = Instant::now();
                let a = self.begin(first, leader).await;
                let a_end = a_at + Duration::from_secs(first.secs());
                tokio::time::sleep_until((a_at + Duration::from_secs(*gap)).into()).await;
                // The second fault aims at the roles as they are now.
                let now = self.current_leader();
                self.journal.note(format!(
                    "  then, with {} leading: {then}",
                    now.map_or("nobody known", name)
                ));
                let b_at = Instant::now();
                let b = self.begin(then, now.unwrap_or(leader)).await;
                let b_end = b_at + Duration::from_secs(then.secs());
                let mut ends = [(a_end, a), (b_end, b)];
                ends.sort_by_key(|(at, _)| *at);
                for (at, undo) in ends {
                    tokio::time::sleep_until(at.into()).await;
                    self.end(undo).await;
                }
                self.compound = false;
            }
        }
    }

    /// Starts fault `f` with `leader` leading; returns how it ends.
    async fn begin(&mut self, f: &Fault, leader: usize) -> Undo {
        match f {
            Fault::Kill { who, .. } => {
                let i = resolve(*who, leader);
                if self.down[i] {
                    return Undo::Nothing;
                }
                self.kill_member(i);
                Undo::Start(i)
            }
            Fault::KillPostgres { who } => {
                let i = resolve(*who, leader);
                if !self.live(i, f) {
                    return Undo::Nothing;
                }
                match postmaster_host_pid(&self.members[i]) {
                    Some(pid) => {
                        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
                        self.journal
                            .note(format!("  {}: postmaster (pid {pid}) killed", name(i)));
                    }
                    None => self.journal.note(format!(
                        "  {}: no postmaster found, nothing killed",
                        name(i)
                    )),
                }
                Undo::Nothing
            }
            Fault::Freeze { who, .. } => {
                let i = resolve(*who, leader);
                if !self.live(i, f) {
                    return Undo::Nothing;
                }
                let inner = inner_pid(&self.members[i]);
                kill(Pid::from_raw(inner), Signal::SIGSTOP).unwrap();
                self.frozen[i] = Some((self.members[i].pid(), inner));
                self.journal
                    .note(format!("  {}: pgwarden stopped", name(i)));
                Undo::Cont(i)
            }
            Fault::Stop { who, .. } => {
                let i = resolve(*who, leader);
                if !self.live(i, f) {
                    return Undo::Nothing;
                }
                let stopped = Instant::now();
                kill(Pid::from_raw(inner_pid(&self.members[i])), Signal::SIGTERM).unwrap();
                while !has_exited(&self.members[i]) {
                    assert!(
                        stopped.elapsed() < Duration::from_secs(120),
                        "{} did not exit within 120 s of SIGTERM",
                        name(i)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let status = self.members[i].wait_exit(Duration::from_secs(5));
                self.down[i] = true;
                self.journal.note(format!(
                    "  {}: exited ({status}) {:.1?} after SIGTERM",
                    name(i),
                    stopped.elapsed()
                ));
                if !status.success() {
                    self.unclean.push(format!("{}: {status}", name(i)));
                }
                Undo::Start(i)
            }
            Fault::Partition { who, cut, .. } => {
                let i = resolve(*who, leader);
                let x = name(i);
                let from: Vec<&str> = match cut {
                    Cut::Etcd => ETCD.to_vec(),
                    Cut::EtcdMajority(keep) => {
                        (0..3).filter(|k| k != keep).map(|k| ETCD[k]).collect()
                    }
                    Cut::Peers => others(i).into_iter().map(name).collect(),
                    Cut::OnePeer(k) => vec![name(others(i)[*k])],
                    Cut::Everything => ETCD
                        .iter()
                        .copied()
                        .chain(others(i).into_iter().map(name))
                        .collect(),
                };
                for h in &from {
                    self.net.cut(x, h);
                }
                self.partitions += 1;
                self.journal
                    .note(format!("  {x} cut from {}", from.join(", ")));
                Undo::Heal
            }
            Fault::EtcdFreeze { k, .. } => self.freeze_etcd(vec![*k]),
            Fault::EtcdIsolate { k, .. } => {
                self.net.isolate(ETCD[*k]);
                self.partitions += 1;
                self.journal
                    .note(format!("  {} cut from every host", ETCD[*k]));
                Undo::Heal
            }
            Fault::EtcdQuorumLoss { keep, .. } => {
                self.freeze_etcd((0..3).filter(|k| k != keep).collect())
            }
            Fault::Switchover { via, to } => {
                let v = resolve(*via, leader);
                if !self.live(v, f) {
                    return Undo::Nothing;
                }
                let target = to.map(|k| name(others(leader)[k]));
                self.switchover(v, target).await;
                Undo::Nothing
            }
            Fault::SlowReplay {
                replica,
                kill_primary,
                ..
            } => {
                let r = others(leader)[*replica];
                if !self.live(r, f) || !self.live(leader, f) {
                    return Undo::Nothing;
                }
                let reader = client(&self.members[r].socket_dir, self.members[r].port).await;
                let Some(reader) = reader else {
                    self.journal
                        .note(format!("  {}: no connection, nothing held", name(r)));
                    return Undo::Nothing;
                };
                // Bounded: with replay already held on this replica by an overlapping
                // fault, the startup process queues for its lock on t and this read
                // queues behind it until that fault is undone, which (the faults being
                // applied in turn) would never come.
                let began = match tokio::time::timeout(
                    Duration::from_secs(10),
                    reader.batch_execute(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t",
                    ),
                )
                .await
                {
                    Ok(began) => began,
                    Err(_) => {
                        self.journal.note(format!(
                            "  {}: the read waits behind replay already held; nothing more held",
                            name(r)
                        ));
                        return Undo::Nothing;
                    }
                };
                let locked = run_sql(
                    &self.members[leader],
                    "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT",
                    Duration::from_secs(20),
                )
                .await;
                self.journal.note(format!(
                    "  reader on {}: {:?}; LOCK TABLE t on {}: {:?}",
                    name(r),
                    began.map_err(|e| e.to_string()),
                    name(leader),
                    locked
                ));
                // The replica's startup process waits on the lock.
                let mut waits = false;
                let since = Instant::now();
                while since.elapsed() < Duration::from_secs(10) {
                    let n: Option<i64> = async {
                        client(&self.members[r].socket_dir, self.members[r].port)
                            .await?
                            .query_one(
                                "SELECT count(*) FROM pg_stat_activity \
                                 WHERE backend_type = 'startup' AND wait_event_type = 'Lock'",
                                &[],
                            )
                            .await
                            .ok()
                            .map(|row| row.get(0))
                    }
                    .await;
                    if n == Some(1) {
                        waits = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                self.journal.note(format!(
                    "  {}: replay {}",
                    name(r),
                    if waits {
                        "waits on the lock"
                    } else {
                        "not seen waiting within 10 s"
                    }
                ));
                let restart = if *kill_primary && !self.down[leader] {
                    self.kill_member(leader);
                    Some(leader)
                } else {
                    None
                };
                Undo::Reader {
                    reader,
                    on: r,
                    restart,
                }
            }
        }
    }

    fn freeze_etcd(&mut self, ks: Vec<usize>) -> Undo {
        for k in &ks {
            if self.etcd_frozen[*k] == 0 {
                kill(self.etcds[*k].pid(), Signal::SIGSTOP).unwrap();
            }
            self.etcd_frozen[*k] += 1;
        }
        let names: Vec<&str> = ks.iter().map(|k| ETCD[*k]).collect();
        self.journal
            .note(format!("  etcd {} stopped", names.join(" and ")));
        Undo::EtcdCont(ks)
    }

    /// `pgwarden switchover [--to target]` through member `v`'s CLI. A request the
    /// cluster cannot take yet (412: the candidate not published as eligible yet) is
    /// made again for 30 s. In synchronous mode only the synchronous standby may be
    /// named: another is refused by design, and the request is made again without a
    /// candidate.
    async fn switchover(&mut self, v: usize, target: Option<&str>) {
        let mut args = vec!["switchover"];
        if let Some(t) = target {
            args.extend(["--to", t]);
        }
        let first = Instant::now();
        loop {
            let asked = Instant::now();
            let answer = run_cli_within(&self.members[v], &args, Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("{e}"));
            self.journal.note(format!(
                "  `pgwarden {}` on {} answered in {:.1?} ({}): {}",
                args.join(" "),
                name(v),
                asked.elapsed(),
                if answer.0 { "ok" } else { "refused" },
                answer.1
            ));
            if answer.0 {
                return;
            }
            if answer.1.contains("is not a synchronous standby") && args.len() > 1 {
                args.truncate(1);
                continue;
            }
            if first.elapsed() > Duration::from_secs(30) {
                if !self.compound {
                    self.refused.push(format!(
                        "`pgwarden {}` on {}: {}",
                        args.join(" "),
                        name(v),
                        answer.1
                    ));
                }
                return;
            }
            sleep_s(2).await;
        }
    }

    /// Ends a fault begun by [`Ctx::begin`].
    async fn end(&mut self, undo: Undo) {
        match undo {
            Undo::Nothing => {}
            Undo::Start(i) => {
                if self.down[i] {
                    self.start_member(i);
                }
            }
            Undo::Cont(i) => {
                // Only the very process stopped (not killed since, nor replaced).
                if let Some((outer, inner)) = self.frozen[i].take() {
                    if !self.down[i] && self.members[i].pid() == outer {
                        kill(Pid::from_raw(inner), Signal::SIGCONT).unwrap();
                        self.journal
                            .note(format!("  {}: pgwarden continued", name(i)));
                    }
                }
            }
            Undo::Heal => {
                self.partitions -= 1;
                if self.partitions == 0 {
                    self.net.heal();
                    self.journal.note("  partitions healed");
                }
            }
            Undo::EtcdCont(ks) => {
                for k in &ks {
                    self.etcd_frozen[*k] -= 1;
                    if self.etcd_frozen[*k] == 0 {
                        kill(self.etcds[*k].pid(), Signal::SIGCONT).unwrap();
                        self.journal.note(format!("  etcd {} continued", ETCD[*k]));
                    }
                }
            }
            Undo::Reader {
                reader,
                on,
                restart,
            } => {
                let done =
                    tokio::time::timeout(Duration::from_secs(5), reader.batch_execute("COMMIT"))
                        .await;
                drop(reader);
                self.journal.note(format!(
                    "  {}: reader ended ({})",
                    name(on),
                    match done {
                        Ok(Ok(())) => "committed".to_owned(),
                        Ok(Err(e)) => format!("it had been cut off: {e}"),
                        Err(_) => "no answer to COMMIT, connection dropped".to_owned(),
                    }
                ));
                if let Some(i) = restart {
                    if self.down[i] {
                        self.start_member(i);
                    }
                }
            }
        }
    }

    /// Waits, restarting any pgwarden that exited (as its pod would be), for one
    /// primary with both others streaming from it and a write acknowledged since the
    /// heal, holding for [`STABLE`] (a fault's effect can come after the heal: a
    /// primary that could not renew during an etcd outage fences itself a round or
    /// two after etcd is back). Returns the primary and the time from the heal to the
    /// start of that stable stretch, or what was missing at the bound.
    async fn recover(&mut self, load: &Load) -> Result<(usize, Duration), String> {
        let healed = Instant::now();
        let acked_at_heal = load.count();
        let mut stable: Option<(Instant, usize)> = None;
        loop {
            for i in 0..3 {
                if restart_if_exited(&mut self.members[i]) {
                    self.journal.note(format!(
                        "  {}: its pgwarden had exited; started again",
                        name(i)
                    ));
                }
            }
            match (self.state(load, acked_at_heal).await, stable) {
                (Ok(l), Some((since, was))) if l == was => {
                    if since.elapsed() >= STABLE {
                        return Ok((l, since - healed));
                    }
                }
                (Ok(l), _) => stable = Some((Instant::now(), l)),
                (Err(why), _) => {
                    if stable.take().is_some() {
                        self.journal
                            .note(format!("  the recovered state did not hold: {why}"));
                    }
                    if healed.elapsed() > RECOVERY_BOUND {
                        return Err(why);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn state(&self, load: &Load, acked_at_heal: usize) -> Result<usize, String> {
        let codes: Vec<Option<u16>> = self
            .members
            .iter()
            .map(|m| code_within(m, "/primary"))
            .collect();
        let p: Vec<usize> = (0..3).filter(|i| codes[*i] == Some(200)).collect();
        let [l] = p.as_slice() else {
            return Err(format!("/primary answers {codes:?}"));
        };
        let l = *l;
        if writable(&addr(&self.members[l])).await != Some(true) {
            return Err(format!("{} answers /primary but is not writable", name(l)));
        }
        let streaming = streaming_from(&self.members[l]).await?;
        for o in others(l) {
            if !streaming.iter().any(|s| s == name(o)) {
                return Err(format!(
                    "{} leads; {} does not stream from it (streaming: {streaming:?})",
                    name(l),
                    name(o)
                ));
            }
        }
        // In synchronous mode the leader has recorded a synchronous standby (until it
        // does, nobody else may be promoted: the next fault would test nothing).
        if self.sync {
            let recorded = others(l)
                .into_iter()
                .filter(|o| code_within(&self.members[*o], "/sync") == Some(200))
                .count();
            if recorded == 0 {
                return Err(format!(
                    "{} leads, both others stream; no synchronous standby recorded yet",
                    name(l)
                ));
            }
        }
        if load.count() <= acked_at_heal {
            return Err(format!(
                "{} leads, both others stream; no write acknowledged since the heal",
                name(l)
            ));
        }
        Ok(l)
    }
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_keep_one_primary_and_every_acknowledged_commit() {
    let _turn = one_at_a_time();
    if !is_root() {
        eprintln!("skipped: network and PID namespaces need root");
        return;
    }
    let settings = Settings::from_env();
    let faults = plan(settings.seed, settings.faults);
    let header = settings.describe(&faults);
    eprintln!("{header}");
    if std::env::var_os("CHAOS_DRY_RUN").is_some() {
        return;
    }
    let strict_loss = settings.sync != "off";

    // Declared first, dropped last: the namespaces outlive the processes in them.
    let mut net = Router::new(&["e1", "e2", "e3", "n1", "n2", "n3"]);
    let etcds = start_etcd(&net);
    let endpoints: Vec<String> = etcds.iter().map(|e| e.url.clone()).collect();
    let tmp = test_dir();
    let mut members = members_timed(tmp.path(), &endpoints.join(","), Some(&net), &NAMES, TIMING);
    for (i, m) in members.iter_mut().enumerate() {
        // The API on the member's own address, as in a pod: the other members ask it
        // (`/primary` before racing, `/status` of rivals, the switchover's candidate).
        // On 127.0.0.1 of its namespace nobody else could reach it.
        let api = format!("{}:{}", net.addr(name(i)), m.http.port());
        m.set("PGWARDEN_HTTP_ADDR", api);
        // A /dev/shm of its own (the PID namespace has a mount namespace of its own):
        // the dynamic shared memory of a postgres killed with its namespace would
        // otherwise stay behind in the host's /dev/shm. `sh` execs pgwarden, which
        // stays PID 1.
        m.exec_prefix.extend(
            [
                "sh",
                "-c",
                "mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm && exec \"$0\" \"$@\"",
            ]
            .map(String::from),
        );
        m.set("PGWARDEN_SYNC_MODE", settings.sync.as_str());
        // Replay waits for a conflicting standby query as long as it runs.
        add_user_conf(
            m,
            "max_standby_streaming_delay = -1\nmax_standby_archive_delay = -1\n",
        );
        if settings.logical {
            add_user_conf(m, "wal_level = logical\n");
        }
    }
    let journal = Journal::new();
    // Dropped before the members and the temp dir: it still finds their logs.
    let _report = FailureReport {
        header: header.clone(),
        seed: settings.seed,
        journal: journal.clone(),
        logs: members
            .iter()
            .enumerate()
            .map(|(i, m)| (name(i).to_owned(), m.log_path.clone()))
            .chain(etcds.iter().map(|e| (e.name.clone(), e.log_path())))
            .collect(),
    };
    let run_started = Instant::now();

    let mut leader = bring_up(&mut members).await;
    execute(&members[leader], "CREATE TABLE w (id int PRIMARY KEY)").await;
    if settings.logical {
        // Never consumed: it holds WAL back on every leader for the run, which a
        // few minutes of this load can afford, and is synchronized to the standbys.
        execute(
            &members[leader],
            "SELECT pg_create_logical_replication_slot('chaos', 'test_decoding', false, false, true)",
        )
        .await;
    }
    journal.note(format!(
        "up in {:.1?}: {} leads",
        run_started.elapsed(),
        name(leader)
    ));
    let checker = Checker::start(members.iter().map(addr).collect());
    let sampler_started = SystemTime::now();
    let sampler = KeySampler::start(&endpoints, Some(net.router.as_str()), &members);
    let load = Load::start(members.iter().map(addr).collect());
    {
        let since = Instant::now();
        while load.count() < 20 {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the write load does not get through\n{}",
                logs(&members)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut ctx = Ctx {
        members: &mut members,
        etcds: &etcds,
        net: &mut net,
        journal: &journal,
        refused: Vec::new(),
        unclean: Vec::new(),
        sync: strict_loss,
        down: [false; 3],
        frozen: [None; 3],
        partitions: 0,
        etcd_frozen: [0; 3],
        compound: false,
    };
    // The steady state every fault starts from.
    leader = match ctx.recover(&load).await {
        Ok((l, took)) => {
            journal.note(format!("steady after {took:.1?}: {} leads", name(l)));
            l
        }
        Err(why) => panic!("no steady state after the start: {why}"),
    };
    let mut longest = (Duration::ZERO, 0);
    let mut outage = (Duration::ZERO, 0);
    let mut lost_per_fault: Vec<(usize, usize)> = Vec::new();
    for (n, f) in faults.iter().enumerate() {
        journal.note(format!(
            "step {}/{}: {f} ({} leads)",
            n + 1,
            faults.len(),
            name(leader)
        ));
        let step_began = Instant::now();
        ctx.run(f, leader).await;
        let (l, took) = match ctx.recover(&load).await {
            Ok(r) => r,
            Err(why) => panic!(
                "step {} ({f}): no recovery within {RECOVERY_BOUND:?} of the heal: {why}",
                n + 1
            ),
        };
        leader = l;
        if took > longest.0 {
            longest = (took, n + 1);
        }
        let gap = load.longest_gap(step_began);
        if gap > outage.0 {
            outage = (gap, n + 1);
        }
        // Every id acknowledged so far (read first) is on the primary.
        let acked = load.acked();
        let present = ids_within(&ctx.members[leader], Duration::from_secs(15)).await;
        let lost: Vec<i32> = acked
            .iter()
            .copied()
            .filter(|i| present.binary_search(i).is_err())
            .collect();
        journal.note(format!(
            "recovered in {:.1?}: {} leads, both others stream from it; {} acknowledged, {} of them missing on it; writes stalled for {:.1?} at most",
            took,
            name(leader),
            acked.len(),
            lost.len(),
            gap
        ));
        if !lost.is_empty() {
            lost_per_fault.push((n + 1, lost.len()));
            assert!(
                !strict_loss,
                "step {} ({f}): {} acknowledged ids missing on the primary {}: {:?}",
                n + 1,
                lost.len(),
                name(leader),
                &lost[..lost.len().min(50)]
            );
        }
        let doubles = double_rounds(&checker);
        assert!(
            doubles.is_empty(),
            "step {} ({f}): two writable members in one round: {}",
            n + 1,
            doubles
                .iter()
                .map(|(at, w)| format!(
                    "{} {:?}",
                    wall_of(*at),
                    w.iter().map(|i| name(*i)).collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let violations = sampler.violations();
        assert!(
            violations.is_empty(),
            "step {} ({f}): writable without the leader key (times since the sampler started at {}):\n{}",
            n + 1,
            wall(sampler_started),
            violations.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let (refused, unclean) = (ctx.refused.clone(), ctx.unclean.clone());
    drop(ctx);
    let (acked, last_tried) = load.finish().await;
    let present = ids_within(&members[leader], Duration::from_secs(15)).await;
    let lost: Vec<i32> = acked
        .iter()
        .copied()
        .filter(|i| present.binary_search(i).is_err())
        .collect();
    // Both replicas replay to exactly the primary's rows (none kept a branch of its own).
    for o in others(leader) {
        let since = Instant::now();
        loop {
            let theirs = try_ids(&members[o]).await;
            if theirs.as_ref() == Ok(&present) {
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{} does not converge to the rows of the primary {} ({} rows): {}",
                name(o),
                name(leader),
                present.len(),
                match theirs {
                    Ok(t) => format!(
                        "{} rows, {} of the primary's missing, {} not on the primary",
                        t.len(),
                        present
                            .iter()
                            .filter(|i| t.binary_search(i).is_err())
                            .count(),
                        t.iter()
                            .filter(|i| present.binary_search(i).is_err())
                            .count()
                    ),
                    Err(e) => e,
                }
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    journal.note(format!(
        "both replicas hold exactly the {} rows of the primary {}",
        present.len(),
        name(leader)
    ));
    let phantom: Vec<i32> = present
        .iter()
        .copied()
        .filter(|i| *i > last_tried)
        .collect();
    let rounds = checker.finish().await;
    let violations = sampler.violations();
    let samples = sampler.finish();
    for r in &refused {
        journal.note(format!("refused switchover: {r}"));
    }
    for u in &unclean {
        journal.note(format!("clean stop that did not exit 0: {u}"));
    }
    journal.note(format!(
        "{} checker rounds, {samples} key samples; loss by step: {lost_per_fault:?}",
        rounds
    ));
    let injected: usize = faults
        .iter()
        .map(|s| match s {
            Step::One(_) => 1,
            Step::Two { .. } => 2,
        })
        .sum();
    eprintln!(
        "chaos summary: seed {}, sync {}, {} faults in {} steps, {} acknowledged writes, {} lost, longest recovery {:.1} s (step {}), longest write stall {:.1} s (step {}), {} switchovers refused, {:.0} s in all",
        settings.seed,
        settings.sync,
        injected,
        faults.len(),
        acked.len(),
        lost.len(),
        longest.0.as_secs_f64(),
        longest.1,
        outage.0.as_secs_f64(),
        outage.1,
        refused.len(),
        run_started.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "writable without the leader key:\n{}",
        violations.join("\n")
    );
    assert!(
        phantom.is_empty(),
        "ids never written are on {}: {phantom:?}",
        name(leader)
    );
    assert!(!acked.is_empty(), "no write was acknowledged");
    if strict_loss {
        assert!(
            lost.is_empty(),
            "{} acknowledged ids missing on the final primary {}: {:?}",
            lost.len(),
            name(leader),
            &lost[..lost.len().min(50)]
        );
    }
}
