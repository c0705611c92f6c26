//! The [`Store`] on etcd v3 (gRPC, through the `etcd-client` crate).
//!
//! Keys live under `/pgwarden/<cluster>/`: `leader` and `members/<name>` bound to the
//! member's lease, `optime`, `initialize` and `history` not. Every read is linearizable
//! (etcd's default): a partitioned etcd member must not feed a primary a stale view in
//! which it still leads (Patroni #308). Each call is retried until `retry_timeout`.
//!
//! There is one client per endpoint, and a call that fails or does not answer in its
//! share of `retry_timeout` goes to the next endpoint: a frozen or partitioned etcd
//! member holds a connection open and answers nothing, and one client balancing over
//! every endpoint kept sending to it until the leader fenced itself, though the two
//! other members still formed a quorum.

use super::store::{
    ClusterView, FailoverRequest, HistoryEntry, Leader, LeaseId, MemberState, Optime, Store,
    StoreError, SyncState, Term,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// An etcd-backed store for one cluster.
#[derive(Clone)]
pub struct EtcdStore {
    /// One client per endpoint, in the order given.
    clients: Arc<Vec<Client>>,
    /// The endpoint that answered last: the next call starts there.
    current: Arc<std::sync::atomic::AtomicUsize>,
    prefix: String,
    retry_timeout: Duration,
    /// Calls that failed after their retries, shared by every clone of this client.
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The key prefix of `cluster`.
pub fn prefix(cluster: &str) -> String {
    format!("/pgwarden/{cluster}/")
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EtcdStore {
    /// A client for `endpoints`. Connections are made lazily, so an etcd that is down
    /// now is not an error here: calls fail with [`StoreError::Unavailable`] instead.
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        retry_timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(retry_timeout.min(Duration::from_secs(2)))
            // HTTP/2 pings notice a dead connection without waiting for a call.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let options = Some(options.clone());
            clients.push(Client::connect([e], options).await.map_err(unavailable)?);
        }
        if clients.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoint".into()));
        }
        Ok(EtcdStore {
            clients: Arc::new(clients),
            current: Arc::default(),
            prefix: prefix(cluster),
            retry_timeout,
            errors: Arc::default(),
        })
    }

    /// How many calls failed after their retries (a lost lease is not counted: it is
    /// an answer, not an outage), for `pgwarden_ha_store_errors_total`.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The client of the endpoint that answered last.
    fn client(&self) -> Client {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// [`Store::keep_alive`] within `within` rather than `retry_timeout`: a leader's
    /// renewal that must not run past the moment it has to decide to fence.
    pub async fn keep_alive_within(
        &self,
        lease: LeaseId,
        within: Duration,
    ) -> Result<(), StoreError> {
        self.retry_within("lease keep-alive", within, |mut c| async move {
            // Opening the keep-alive stream sends one request and waits for its answer,
            // which is the renewal; the stream is dropped after it. An answer with a TTL
            // of 0 (the lease no longer exists) comes back as an error naming it.
            match c.lease_keep_alive(lease).await {
                Ok(_) => Ok(()),
                Err(etcd_client::Error::LeaseKeepAliveError(m))
                    if m.contains("lease not found") =>
                {
                    Err(StoreError::LeaseGone(lease))
                }
                Err(e) => Err(classify(e, lease)),
            }
        })
        .await
    }

    /// Runs `op` until it succeeds or `retry_timeout` has passed: [`Self::retry_within`].
    async fn retry<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.retry_within(what, self.retry_timeout, op).await
    }

    /// Runs `op` until it succeeds or `within` has passed, each attempt on the next
    /// endpoint and within its share of the time, so that every endpoint is tried
    /// before the time is up. A share is at least half a second (or all of `within`
    /// when shorter): a budget below that per endpoint tries fewer of them, and the
    /// next call starts with the endpoint after the last that failed. Only transport
    /// failures are retried; every operation given here is idempotent.
    async fn retry_within<T, F, Fut>(
        &self,
        what: &'static str,
        within: Duration,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + within;
        let n = self.clients.len();
        let share = (within / n as u32).max(Duration::from_millis(500).min(within));
        let mut pause = Duration::from_millis(100);
        let mut tried = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = op(self.clients[i].clone());
            let error = match tokio::time::timeout(left.min(share), attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e @ StoreError::LeaseGone(_))) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => {
                    StoreError::Unavailable(format!("no answer within {:?}", left.min(share)))
                }
            };
            // Next time (and next attempt), the next endpoint; unless another call
            // moved on already.
            let _ =
                self.current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
            tried += 1;
            // Pause only once every endpoint failed in a row.
            let wait = if tried % n == 0 {
                pause
            } else {
                Duration::ZERO
            };
            if Instant::now() + wait >= deadline {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
            debug!(op = what, endpoint = i, error = %error, "etcd call failed; retrying");
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Cluster-wide jobs (a scheduled restore drill): `jobs/<job>` names the member running
/// one, bound to a lease of the job's own, so that it goes when that member does;
/// `jobs/<job>/last` records the last run for every member's schedule.
impl EtcdStore {
    /// Creates `jobs/<job>` naming `holder`, bound to `lease`, unless it exists. Returns
    /// the holder now: `holder` when this call (or an earlier attempt of it whose
    /// answer was lost) won.
    pub async fn acquire_job(
        &self,
        job: &str,
        holder: &str,
        lease: LeaseId,
    ) -> Result<Option<String>, StoreError> {
        let key = self.key(&format!("jobs/{job}"));
        self.retry("acquire job", |mut c| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        holder,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await.map_err(|e| classify(e, lease))?;
                if r.succeeded() {
                    return Ok(Some(holder.to_owned()));
                }
                for op in r.op_responses() {
                    if let TxnOpResponse::Get(g) = op {
                        if let Some(kv) = g.kvs().first() {
                            return Ok(Some(String::from_utf8_lossy(kv.value()).into_owned()));
                        }
                    }
                }
                // Gone between the compare and the read: the next attempt decides.
                Ok(None)
            }
        })
        .await
    }

    /// Records the last run of `job`.
    pub async fn put_job_last(&self, job: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = self.key(&format!("jobs/{job}/last"));
        self.retry("put job record", |mut c| {
            let key = key.clone();
            async move {
                c.put(key, value, None).await.map_err(unavailable)?;
                Ok(())
            }
        })
        .await
    }

    /// The last run of `job`, as recorded.
    pub async fn job_last(&self, job: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.key(&format!("jobs/{job}/last"));
        self.retry("read job record", |mut c| {
            let key = key.clone();
            async move {
                let r = c.get(key, None).await.map_err(unavailable)?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
        })
        .await
    }
}

/// etcd answers a write bound to an expired lease with NotFound "requested lease not
/// found"; that is a lost lease, not an outage.
fn classify(e: etcd_client::Error, lease: LeaseId) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found") => {
            StoreError::LeaseGone(lease)
        }
        _ => unavailable(e),
    }
}

impl Store for EtcdStore {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        self.retry("lease grant", |mut c| async move {
            let r = c.lease_grant(secs, None).await.map_err(unavailable)?;
            if !r.error().is_empty() {
                return Err(StoreError::Unavailable(r.error().to_owned()));
            }
            Ok(r.id())
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.keep_alive_within(lease, self.retry_timeout).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.retry("lease revoke", |mut c| async move {
            match c.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // Already gone is what we wanted.
                Err(e) => match classify(e, lease) {
                    StoreError::LeaseGone(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn read(&self) -> Result<ClusterView, StoreError> {
        let prefix = self.prefix.clone();
        let r = self
            .retry("read", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                        .map_err(unavailable)
                }
            })
            .await?;
        let mut view = ClusterView {
            revision: r.header().map(|h| h.revision()).unwrap_or_default(),
            ..ClusterView::default()
        };
        for kv in r.kvs() {
            let Some(name) = kv.key().strip_prefix(self.prefix.as_bytes()) else {
                continue;
            };
            let name = String::from_utf8_lossy(name);
            let value = kv.value();
            match name.as_ref() {
                "leader" => {
                    view.leader = Some(Leader {
                        name: String::from_utf8_lossy(value).into_owned(),
                        term: kv.create_revision(),
                        lease: kv.lease(),
                    })
                }
                "initialize" => view.initialize = Some(String::from_utf8_lossy(value).into_owned()),
                "optime" => view.optime = parse(&name, value),
                "history" => view.history = parse(&name, value).unwrap_or_default(),
                "failover" => view.failover = parse(&name, value),
                "sync" => view.sync = parse(&name, value),
                "pause" => view.paused = value == b"true",
                "failsafe" => view.failsafe = parse(&name, value),
                n if n.starts_with("members/") => {
                    if let Some(m) = parse::<MemberState>(&name, value) {
                        view.members.push(m);
                    }
                }
                _ => {}
            }
        }
        view.members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(view)
    }

    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<Option<Term>, StoreError> {
        let key = self.key("leader");
        self.retry("acquire leader", |mut c| {
            let key = key.clone();
            async move {
                // Create only if absent; otherwise read who holds it, so that a retry of
                // an attempt that did win (answer lost) still reports the win.
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(key.clone(), name, Some(PutOptions::new().with_lease(lease))),
                        TxnOp::get(key.clone(), None),
                    ])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await.map_err(|e| classify(e, lease))?;
                for op in r.op_responses() {
                    if let TxnOpResponse::Get(g) = op {
                        if let Some(kv) = g.kvs().first() {
                            let won = kv.value() == name.as_bytes() && kv.lease() == lease;
                            return Ok(won.then(|| kv.create_revision()));
                        }
                    }
                }
                Ok(None)
            }
        })
        .await
    }

    async fn release_leader(&self, name: &str) -> Result<bool, StoreError> {
        let key = self.key("leader");
        self.retry("release leader", |mut c| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, name)])
                    .and_then([TxnOp::delete(key.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await.map_err(unavailable)?;
                if r.succeeded() {
                    return Ok(true);
                }
                // Not ours: fine if nobody holds it (a retry after our delete).
                let absent = r.op_responses().iter().all(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().is_empty(),
                    _ => true,
                });
                Ok(absent)
            }
        })
        .await
    }

    async fn put_member(&self, state: &MemberState, lease: LeaseId) -> Result<(), StoreError> {
        let key = self.key(&format!("members/{}", state.name));
        let value = serde_json::to_vec(state).map_err(unavailable)?;
        self.retry("put member", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(|e| classify(e, lease))?;
                Ok(())
            }
        })
        .await
    }

    async fn initialize(&self, value: &str) -> Result<bool, StoreError> {
        let key = self.key("initialize");
        self.retry("initialize", |mut c| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value, None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await.map_err(unavailable)?;
                if r.succeeded() {
                    return Ok(true);
                }
                Ok(r.op_responses().iter().any(|op| match op {
                    TxnOpResponse::Get(g) => {
                        g.kvs().iter().any(|kv| kv.value() == value.as_bytes())
                    }
                    _ => false,
                }))
            }
        })
        .await
    }

    async fn clear_initialize(&self, winner: &str) -> Result<bool, StoreError> {
        let key = self.key("initialize");
        self.retry("clear initialize", |mut c| {
            let key = key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, winner)])
                    .and_then([TxnOp::delete(key.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = c.txn(txn).await.map_err(unavailable)?;
                // Not deleted: fine if it is gone anyway (a retry after our delete).
                Ok(r.succeeded()
                    || r.op_responses().iter().all(|op| match op {
                        TxnOpResponse::Get(g) => g.kvs().is_empty(),
                        _ => true,
                    }))
            }
        })
        .await
    }

    async fn put_optime(&self, name: &str, optime: Optime) -> Result<bool, StoreError> {
        let (leader, key) = (self.key("leader"), self.key("optime"));
        let value = serde_json::to_vec(&optime).map_err(unavailable)?;
        self.retry("put optime", |mut c| {
            let (leader, key, value) = (leader.clone(), key.clone(), value.clone());
            async move {
                let txn = Txn::new()
                    .when([
                        Compare::value(leader.clone(), CompareOp::Equal, name),
                        Compare::create_revision(leader, CompareOp::Equal, optime.term),
                    ])
                    .and_then([TxnOp::put(key, value, None)]);
                Ok(c.txn(txn).await.map_err(unavailable)?.succeeded())
            }
        })
        .await
    }

    async fn put_sync(&self, state: &SyncState) -> Result<bool, StoreError> {
        let (leader, key) = (self.key("leader"), self.key("sync"));
        let value = serde_json::to_vec(state).map_err(unavailable)?;
        let (name, term) = (state.leader.clone(), state.term);
        self.retry("put sync", |mut c| {
            let (leader, key, value, name) =
                (leader.clone(), key.clone(), value.clone(), name.clone());
            async move {
                let txn = Txn::new()
                    .when([
                        Compare::value(leader.clone(), CompareOp::Equal, name),
                        Compare::create_revision(leader, CompareOp::Equal, term),
                    ])
                    .and_then([TxnOp::put(key, value, None)]);
                Ok(c.txn(txn).await.map_err(unavailable)?.succeeded())
            }
        })
        .await
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let key = self.key("history");
        self.retry("append history", |mut c| {
            let key = key.clone();
            async move {
                // Read-modify-write guarded by the key's revision; a concurrent writer
                // makes the compare fail and the loop read again.
                loop {
                    let r = c.get(key.clone(), None).await.map_err(unavailable)?;
                    let (mut list, rev) = match r.kvs().first() {
                        Some(kv) => (
                            parse::<Vec<HistoryEntry>>("history", kv.value()).unwrap_or_default(),
                            kv.mod_revision(),
                        ),
                        None => (Vec::new(), 0),
                    };
                    // Idempotent: a retry after a lost answer must not add it twice.
                    if list.iter().any(|e| e.term == entry.term) {
                        return Ok(());
                    }
                    list.push(entry.clone());
                    let value = serde_json::to_vec(&list).map_err(unavailable)?;
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.clone(), value, None)]);
                    if c.txn(txn).await.map_err(unavailable)?.succeeded() {
                        return Ok(());
                    }
                }
            }
        })
        .await
    }

    async fn request_failover(&self, request: &FailoverRequest) -> Result<bool, StoreError> {
        let key = self.key("failover");
        let value = serde_json::to_vec(request).map_err(unavailable)?;
        self.retry("request failover", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                loop {
                    let current = c.get(key.clone(), None).await.map_err(unavailable)?;
                    // Absent: create it. Present and made against another leader:
                    // done or stale, replaced if nobody changed it meanwhile.
                    let compare = match current.kvs().first() {
                        None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        Some(kv) if kv.value() == value.as_slice() => return Ok(true),
                        Some(kv) => match parse::<FailoverRequest>("failover", kv.value()) {
                            Some(old) if old.leader == request.leader => return Ok(false),
                            _ => Compare::mod_revision(
                                key.clone(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            ),
                        },
                    };
                    let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                        key.clone(),
                        value.clone(),
                        None,
                    )]);
                    if c.txn(txn).await.map_err(unavailable)?.succeeded() {
                        return Ok(true);
                    }
                }
            }
        })
        .await
    }

    async fn clear_failover(&self) -> Result<(), StoreError> {
        let key = self.key("failover");
        self.retry("clear failover", |mut c| {
            let key = key.clone();
            async move {
                c.delete(key, None).await.map_err(unavailable)?;
                Ok(())
            }
        })
        .await
    }

    async fn put_failsafe(
        &self,
        members: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let key = self.key("failsafe");
        let value = serde_json::to_vec(members).map_err(unavailable)?;
        self.retry("put failsafe", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, None).await.map_err(unavailable)?;
                Ok(())
            }
        })
        .await
    }

    async fn set_pause(&self, paused: bool) -> Result<(), StoreError> {
        let key = self.key("pause");
        self.retry("set pause", |mut c| {
            let key = key.clone();
            async move {
                match paused {
                    true => c.put(key, "true", None).await.map(|_| ()),
                    false => c.delete(key, None).await.map(|_| ()),
                }
                .map_err(unavailable)
            }
        })
        .await
    }

    async fn wait_change(&self, revision: i64, timeout: Duration) -> Result<bool, StoreError> {
        // One watch on the range from `failover` to `leader` inclusive: between them sort
        // only `history` and `initialize`, which change as rarely and matter as much;
        // `members/`, `optime` and `sync`, rewritten every round, are outside it.
        let (from, mut to) = (self.key("failover"), self.key("leader").into_bytes());
        to.push(0);
        let mut client = self.client();
        let wait = async move {
            let mut stream = client
                .watch(
                    from,
                    Some(
                        WatchOptions::new()
                            .with_range(to)
                            .with_start_revision(revision + 1),
                    ),
                )
                .await
                .map_err(unavailable)?;
            loop {
                match stream.message().await.map_err(unavailable)? {
                    Some(r) if r.canceled() => {
                        // Compacted past `revision`: something changed, read again.
                        return Ok(true);
                    }
                    Some(r) => {
                        if r.events()
                            .iter()
                            .any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
                        {
                            return Ok(true);
                        }
                    }
                    None => return Err(StoreError::Unavailable("watch stream ended".into())),
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Ok(false),
        }
    }
}

/// Parses a JSON value; a value another version or a human wrote wrongly is reported
/// and skipped rather than stopping the loop.
fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(key, error = %e, "ignoring an unreadable value in etcd");
            None
        }
    }
}
