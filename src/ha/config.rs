//! High-availability settings (`PGWARDEN_HA=etcd` and its companions), validated before
//! anything is touched. With `PGWARDEN_HA` unset or `off` nothing here is used.

use clap::Args;
use std::time::Duration;

/// The HA settings as flags and environment variables.
#[derive(Args, Debug, Clone)]
pub struct HaArgs {
    /// `off` (default) or `etcd`: automatic failover, the role decided by the leader key.
    #[arg(long, env = "PGWARDEN_HA", default_value = "off")]
    pub ha: String,
    /// Cluster name: the key prefix in the store, shared by every member.
    #[arg(long, env = "PGWARDEN_CLUSTER")]
    pub cluster: Option<String>,
    /// etcd client URLs, comma-separated: `http://host:2379,...`.
    #[arg(long, env = "PGWARDEN_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// Seconds the leader key lives without renewal.
    #[arg(long, env = "PGWARDEN_HA_TTL", default_value_t = 30)]
    pub ha_ttl: u64,
    /// Seconds between two rounds of the HA loop.
    #[arg(long, env = "PGWARDEN_HA_LOOP_WAIT", default_value_t = 10)]
    pub ha_loop_wait: u64,
    /// Seconds a store operation may spend retrying before the round counts as failed.
    #[arg(long, env = "PGWARDEN_HA_RETRY_TIMEOUT", default_value_t = 10)]
    pub ha_retry_timeout: u64,
    /// Address other members and clients use for this instance (default: the host name).
    #[arg(long, env = "PGWARDEN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// A replica further behind the last leader position never promotes itself (bytes,
    /// or a size such as 1MB).
    #[arg(long, env = "PGWARDEN_MAX_LAG_ON_FAILOVER", default_value = "1MB")]
    pub max_lag_on_failover: String,
    /// `off`, `on` or `strict`: only a synchronous standby may be promoted.
    #[arg(long, env = "PGWARDEN_SYNC_MODE", default_value = "off")]
    pub sync_mode: String,
    /// Number of synchronous standbys (`FIRST n`).
    #[arg(long, env = "PGWARDEN_SYNC_NODE_COUNT", default_value_t = 1)]
    pub sync_node_count: u32,
    /// Seconds the leader key's holder may keep it while its postgres does not run
    /// writable (fenced, starting, in a long crash recovery, promoting) before it
    /// releases the key to a member that can (Patroni's `primary_start_timeout`).
    #[arg(long, env = "PGWARDEN_PRIMARY_START_TIMEOUT", default_value_t = 300)]
    pub primary_start_timeout: u64,
    /// `true`: this member is never promoted (it neither races nor takes a switchover).
    #[arg(long, env = "PGWARDEN_NOFAILOVER", default_value = "false")]
    pub nofailover: String,
    /// Breaks ties between members at the same WAL position, higher first; 0 or less
    /// means nofailover.
    #[arg(
        long,
        env = "PGWARDEN_FAILOVER_PRIORITY",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub failover_priority: i32,
    /// `true`: this member is never named a synchronous standby.
    #[arg(long, env = "PGWARDEN_NOSYNC", default_value = "false")]
    pub nosync: String,
    /// `on`: with etcd unreachable, the primary keeps running while every member
    /// confirms it over HTTP (Patroni's failsafe_mode). Set it alike on every member.
    #[arg(long, env = "PGWARDEN_FAILSAFE", default_value = "off")]
    pub failsafe: String,
}

impl Default for HaArgs {
    /// The documented defaults, as clap would fill them in.
    fn default() -> Self {
        HaArgs {
            ha: "off".into(),
            cluster: None,
            etcd_endpoints: None,
            ha_ttl: 30,
            ha_loop_wait: 10,
            ha_retry_timeout: 10,
            advertise_host: None,
            max_lag_on_failover: "1MB".into(),
            sync_mode: "off".into(),
            sync_node_count: 1,
            primary_start_timeout: 300,
            nofailover: "false".into(),
            failover_priority: 1,
            nosync: "false".into(),
            failsafe: "off".into(),
        }
    }
}

/// A boolean setting: `true`/`false` (also `on`/`off`, `1`/`0`, `yes`/`no`).
fn flag(setting: &'static str, value: &str) -> Result<bool, (&'static str, String)> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" | "" => Ok(false),
        other => Err((setting, format!("{other:?} is not true or false"))),
    }
}

/// Synchronous replication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication.
    Off,
    /// Synchronous when a standby is there, standalone otherwise.
    On,
    /// Writes block rather than go unreplicated.
    Strict,
    /// `ANY k (...)`: a commit waits for any `k` of the named standbys, and only a
    /// member known to hold every acknowledged commit is promoted.
    Quorum,
}

/// Validated HA settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// Cluster name, the key prefix.
    pub cluster: String,
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Lease time to live.
    pub ttl: Duration,
    /// Time between two rounds of the loop.
    pub loop_wait: Duration,
    /// Bound on one store operation with its retries.
    pub retry_timeout: Duration,
    /// Host other members connect to.
    pub advertise_host: String,
    /// Largest lag, in bytes, behind the last leader position a replica may promote with.
    pub max_lag_on_failover: u64,
    /// Synchronous replication.
    pub sync_mode: SyncMode,
    /// Synchronous standbys wanted.
    pub sync_node_count: u32,
    /// How long the key holder keeps the key while postgres does not run writable.
    pub primary_start_timeout: Duration,
    /// This member's tags, published in its member key.
    pub tags: crate::ha::store::Tags,
    /// Failsafe mode.
    pub failsafe: bool,
}

/// Time a fenced primary keeps in hand before its lease can expire anywhere: it must have
/// stopped accepting writes by then (Patroni's watchdog `safety_margin`, 5 s at the
/// default ttl, scaled down for the short ttls of tests).
fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 6).min(Duration::from_secs(5))
}

impl HaConfig {
    /// Validates the arguments; `Ok(None)` when HA is off. Errors name the setting.
    /// `host_name` is the default advertised address.
    pub fn from_args(
        a: &HaArgs,
        host_name: &str,
    ) -> Result<Option<HaConfig>, (&'static str, String)> {
        match a.ha.as_str() {
            "" | "off" => return Ok(None),
            "etcd" => {}
            other => return Err(("PGWARDEN_HA", format!("{other:?} is not off or etcd"))),
        }
        let cluster = a.cluster.clone().unwrap_or_default();
        if cluster.is_empty() {
            return Err((
                "PGWARDEN_CLUSTER",
                "PGWARDEN_HA=etcd needs a cluster name, shared by every member".into(),
            ));
        }
        // The name becomes one path segment of every key: keep it plain.
        if !cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "PGWARDEN_CLUSTER",
                format!("{cluster:?} may hold only letters, digits, '-', '_' and '.'"),
            ));
        }
        let endpoints = parse_endpoints(a.etcd_endpoints.as_deref().unwrap_or(""))
            .map_err(|m| ("PGWARDEN_ETCD_ENDPOINTS", m))?;
        for (setting, v) in [
            ("PGWARDEN_HA_TTL", a.ha_ttl),
            ("PGWARDEN_HA_LOOP_WAIT", a.ha_loop_wait),
            ("PGWARDEN_HA_RETRY_TIMEOUT", a.ha_retry_timeout),
        ] {
            if v == 0 {
                return Err((setting, "must be at least 1 second".into()));
            }
            // etcd keeps lease TTLs in an int64 of seconds; a day is plenty.
            if v > 86_400 {
                return Err((setting, format!("{v} s is more than a day")));
            }
        }
        let (ttl, lw, rt) = (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout);
        if lw + 2 * rt > ttl {
            return Err((
                "PGWARDEN_HA_TTL",
                format!(
                    "{ttl} s is less than PGWARDEN_HA_LOOP_WAIT + 2 × PGWARDEN_HA_RETRY_TIMEOUT \
                     ({lw} + 2 × {rt} = {} s): a primary could not tell it lost its lease before \
                     the lease expired",
                    lw + 2 * rt
                ),
            ));
        }
        let ttl = Duration::from_secs(ttl);
        let config = HaConfig {
            cluster,
            endpoints,
            ttl,
            loop_wait: Duration::from_secs(lw),
            retry_timeout: Duration::from_secs(rt),
            advertise_host: String::new(),
            max_lag_on_failover: 0,
            sync_mode: SyncMode::Off,
            sync_node_count: 1,
            primary_start_timeout: Duration::from_secs(300),
            tags: Default::default(),
            failsafe: false,
        };
        if config.stop_budget() < Duration::from_secs(1) {
            return Err((
                "PGWARDEN_HA_TTL",
                format!(
                    "{} s leaves a fenced primary {} ms to stop postgres (ttl − loop_wait − \
                     retry_timeout − {} ms safety margin); at least 1 s is needed",
                    ttl.as_secs(),
                    config.stop_budget().as_millis(),
                    safety_margin(ttl).as_millis()
                ),
            ));
        }
        let advertise_host = a
            .advertise_host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| host_name.to_owned());
        if advertise_host.is_empty()
            || advertise_host.contains(|c: char| c.is_whitespace() || c.is_control())
            || advertise_host.contains(['/', '\'', '\\', '"'])
        {
            return Err((
                "PGWARDEN_ADVERTISE_HOST",
                format!("{advertise_host:?} is not a host name or address"),
            ));
        }
        let max_lag_on_failover =
            crate::http::lag::parse_lag(&a.max_lag_on_failover).map_err(|_| {
                (
                    "PGWARDEN_MAX_LAG_ON_FAILOVER",
                    format!(
                        "{:?} is not bytes or a size such as 1MB",
                        a.max_lag_on_failover
                    ),
                )
            })?;
        let sync_mode = match a.sync_mode.as_str() {
            "" | "off" => SyncMode::Off,
            "on" => SyncMode::On,
            "strict" => SyncMode::Strict,
            "quorum" => SyncMode::Quorum,
            other => {
                return Err((
                    "PGWARDEN_SYNC_MODE",
                    format!("{other:?} is not off, on, strict or quorum"),
                ))
            }
        };
        if a.sync_node_count == 0 {
            return Err(("PGWARDEN_SYNC_NODE_COUNT", "must be at least 1".into()));
        }
        if a.primary_start_timeout > 86_400 {
            return Err((
                "PGWARDEN_PRIMARY_START_TIMEOUT",
                format!("{} s is more than a day", a.primary_start_timeout),
            ));
        }
        let failsafe = flag("PGWARDEN_FAILSAFE", &a.failsafe)?;
        // A leader kept by failsafe mode confirms itself once a round: a round with
        // etcd down (a renewal spending retry_timeout, the members' answers up to 2 s,
        // loop_wait) must end before the fence deadline of the last confirmation.
        if failsafe && Duration::from_secs(lw + rt + 2) >= config.fence_deadline() {
            return Err((
                "PGWARDEN_FAILSAFE",
                format!(
                    "needs PGWARDEN_HA_LOOP_WAIT + PGWARDEN_HA_RETRY_TIMEOUT + 2 s ({} s) below the fence deadline, ttl less its margin ({:.1} s): raise PGWARDEN_HA_TTL",
                    lw + rt + 2,
                    config.fence_deadline().as_secs_f64()
                ),
            ));
        }
        Ok(Some(HaConfig {
            advertise_host,
            max_lag_on_failover,
            sync_mode,
            sync_node_count: a.sync_node_count,
            primary_start_timeout: Duration::from_secs(a.primary_start_timeout),
            tags: crate::ha::store::Tags {
                nofailover: flag("PGWARDEN_NOFAILOVER", &a.nofailover)?,
                failover_priority: a.failover_priority,
                nosync: flag("PGWARDEN_NOSYNC", &a.nosync)?,
            },
            failsafe,
            ..config
        }))
    }

    /// Time from the last successful renewal after which a primary starts fencing: one
    /// loop and one full retry have failed (Patroni's budget).
    pub fn demote_after(&self) -> Duration {
        self.loop_wait + self.retry_timeout
    }

    /// Time from the last successful renewal by which postgres must accept no more
    /// writes: the lease cannot have expired in etcd before `ttl`, less a margin.
    pub fn fence_deadline(&self) -> Duration {
        self.ttl.saturating_sub(safety_margin(self.ttl))
    }

    /// How long a promotion may take before the key holder gives it up (fencing
    /// postgres, then releasing the key): replay of a backlog, or held by a query
    /// conflict. The lease is renewed meanwhile.
    pub fn promote_timeout(&self) -> Duration {
        (self.ttl * 2).max(Duration::from_secs(60))
    }

    /// What a fencing primary has to stop postgres in.
    pub fn stop_budget(&self) -> Duration {
        self.fence_deadline().saturating_sub(self.demote_after())
    }

    /// The latest time from the last renewal at which the key holder's loop decides to
    /// fence when its renewals fail: half the stop budget before the fence deadline,
    /// which leaves the other half to stop postgres.
    pub fn decide_by(&self) -> Duration {
        self.fence_deadline().saturating_sub(self.stop_budget() / 2)
    }

    /// How long the key holder's renewal may wait for etcd, `since` its last renewal
    /// (or failsafe confirmation): `retry_timeout`, but not past [`Self::decide_by`]
    /// (by at most a quarter of the stop budget, so that a late round still tries).
    /// A round that starts a usual `loop_wait` after a renewal gets all of
    /// `retry_timeout`; a later one, after a slow round, less.
    pub fn renew_within(&self, since: Duration) -> Duration {
        let floor = self.retry_timeout.min(self.stop_budget() / 4);
        self.decide_by()
            .saturating_sub(since)
            .clamp(floor, self.retry_timeout.max(floor))
    }

    /// When the next round comes after one that kept postgres possibly writable
    /// although its renewal failed (it failed before `demote_after`), `since` the last
    /// renewal: in time for a whole renewal to end by [`Self::decide_by`], at once if
    /// that time has come, and never later than `loop_wait`. Without this, a renewal
    /// that failed a moment before `demote_after` left the decision to fence a whole
    /// `loop_wait` plus `retry_timeout` later, past the fence deadline: to the
    /// watchdog. No tight loop: a failed renewal lasts at least its first retry pause
    /// (100 ms), and the rounds that come at once end at `demote_after`, where the
    /// loop fences. (A round that finds postgres slow to answer spends up to
    /// `retry_timeout` asking it before it decides; the watchdog covers that.)
    pub fn next_round_in(&self, since: Duration) -> Duration {
        self.decide_by()
            .saturating_sub(self.retry_timeout)
            .saturating_sub(since)
            .min(self.loop_wait)
    }

    /// How long after the fence deadline the dead-man switch kills postgres: half the
    /// safety margin, still before the lease can expire. A live pgwarden fences first
    /// (its loop, or its watchdog at the deadline), in order and in its log; the switch
    /// is the backstop for a pgwarden that cannot.
    pub fn deadman_grace(&self) -> Duration {
        safety_margin(self.ttl) / 2
    }
}

/// Splits and checks `PGWARDEN_ETCD_ENDPOINTS`.
fn parse_endpoints(text: &str) -> Result<Vec<String>, String> {
    let endpoints: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(
            "PGWARDEN_HA=etcd needs at least one etcd URL, such as http://etcd:2379".into(),
        );
    }
    for e in &endpoints {
        if e.starts_with("https://") {
            return Err(format!(
                "{e:?}: TLS to etcd is not supported yet; use http://"
            ));
        }
        let Some(rest) = e.strip_prefix("http://") else {
            return Err(format!("{e:?} is not an http://host:port URL"));
        };
        let hostport = rest.trim_end_matches('/');
        let port_ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok || hostport.contains(['/', '@']) {
            return Err(format!("{e:?} is not an http://host:port URL"));
        }
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> HaArgs {
        HaArgs {
            ha: "etcd".into(),
            cluster: Some("pg".into()),
            etcd_endpoints: Some("http://127.0.0.1:2379".into()),
            ..HaArgs::default()
        }
    }

    #[test]
    fn off_is_none() {
        for v in ["", "off"] {
            let a = HaArgs {
                ha: v.into(),
                ..HaArgs::default()
            };
            assert_eq!(HaConfig::from_args(&a, "h"), Ok(None), "{v:?}");
        }
        // With HA off nothing else is looked at, even nonsense.
        let a = HaArgs {
            ha_ttl: 0,
            sync_mode: "banana".into(),
            ..HaArgs::default()
        };
        assert_eq!(HaConfig::from_args(&a, "h"), Ok(None));
    }

    #[test]
    fn defaults() {
        let c = HaConfig::from_args(&on(), "pg-0").unwrap().unwrap();
        assert_eq!(c.cluster, "pg");
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379".to_owned()]);
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.loop_wait, Duration::from_secs(10));
        assert_eq!(c.retry_timeout, Duration::from_secs(10));
        assert_eq!(c.advertise_host, "pg-0");
        assert_eq!(c.max_lag_on_failover, 1 << 20);
        assert_eq!(c.sync_mode, SyncMode::Off);
        assert_eq!(c.sync_node_count, 1);
        // 30 s ttl: fence from 20 s, stopped by 25 s.
        assert_eq!(c.demote_after(), Duration::from_secs(20));
        assert_eq!(c.fence_deadline(), Duration::from_secs(25));
        assert_eq!(c.stop_budget(), Duration::from_secs(5));
    }

    #[test]
    fn table() {
        type Edit = fn(&mut HaArgs);
        // (what, edit, Ok or the variable the error names)
        let cases: &[(&str, Edit, Result<(), &str>)] = &[
            ("etcd", |_| {}, Ok(())),
            (
                "unknown backend",
                |a| a.ha = "consul".into(),
                Err("PGWARDEN_HA"),
            ),
            ("no cluster", |a| a.cluster = None, Err("PGWARDEN_CLUSTER")),
            (
                "empty cluster",
                |a| a.cluster = Some("".into()),
                Err("PGWARDEN_CLUSTER"),
            ),
            (
                "slash in cluster",
                |a| a.cluster = Some("a/b".into()),
                Err("PGWARDEN_CLUSTER"),
            ),
            (
                "no endpoints",
                |a| a.etcd_endpoints = None,
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "blank endpoints",
                |a| a.etcd_endpoints = Some(" , ".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "no scheme",
                |a| a.etcd_endpoints = Some("etcd:2379".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "https",
                |a| a.etcd_endpoints = Some("https://etcd:2379".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "no port",
                |a| a.etcd_endpoints = Some("http://etcd".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "bad port",
                |a| a.etcd_endpoints = Some("http://etcd:99999".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "userinfo",
                |a| a.etcd_endpoints = Some("http://u:p@etcd:2379".into()),
                Err("PGWARDEN_ETCD_ENDPOINTS"),
            ),
            (
                "three endpoints",
                |a| {
                    a.etcd_endpoints =
                        Some("http://a:2379, http://b:2379,http://[::1]:2379/".into())
                },
                Ok(()),
            ),
            ("ttl 0", |a| a.ha_ttl = 0, Err("PGWARDEN_HA_TTL")),
            (
                "loop_wait 0",
                |a| a.ha_loop_wait = 0,
                Err("PGWARDEN_HA_LOOP_WAIT"),
            ),
            (
                "retry 0",
                |a| a.ha_retry_timeout = 0,
                Err("PGWARDEN_HA_RETRY_TIMEOUT"),
            ),
            ("ttl huge", |a| a.ha_ttl = 1 << 40, Err("PGWARDEN_HA_TTL")),
            // loop_wait + 2 × retry_timeout ≤ ttl: 10 + 2 × 10 = 30.
            ("rule at the edge", |a| a.ha_ttl = 30, Ok(())),
            (
                "rule broken by ttl",
                |a| a.ha_ttl = 29,
                Err("PGWARDEN_HA_TTL"),
            ),
            (
                "rule broken by loop_wait",
                |a| a.ha_loop_wait = 11,
                Err("PGWARDEN_HA_TTL"),
            ),
            (
                "rule broken by retry",
                |a| a.ha_retry_timeout = 11,
                Err("PGWARDEN_HA_TTL"),
            ),
            // Stop budget = ttl − ttl/6 (at most 5 s) − loop_wait − retry_timeout ≥ 1 s.
            // The tests' timing, 6/1/2: 6 − 1 − 3 = 2 s.
            (
                "test timing",
                |a| (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 1, 2),
                Ok(()),
            ),
            // 6/2/2: 6 − 1 − 4 = 1 s, just enough.
            (
                "budget one second",
                |a| (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 2, 2),
                Ok(()),
            ),
            // 6/4/1 keeps the rule (4 + 2 ≤ 6) but leaves 6 − 1 − 5 = 0 s.
            (
                "no stop budget",
                |a| (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 4, 1),
                Err("PGWARDEN_HA_TTL"),
            ),
            // 3/1/1: 3 − 0.5 − 2 = 0.5 s.
            (
                "half a second",
                |a| (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (3, 1, 1),
                Err("PGWARDEN_HA_TTL"),
            ),
            (
                "advertise host",
                |a| a.advertise_host = Some("10.0.0.5".into()),
                Ok(()),
            ),
            (
                "advertise blank",
                |a| a.advertise_host = Some("".into()),
                Ok(()),
            ),
            (
                "advertise space",
                |a| a.advertise_host = Some("a b".into()),
                Err("PGWARDEN_ADVERTISE_HOST"),
            ),
            (
                "advertise quote",
                |a| a.advertise_host = Some("a'b".into()),
                Err("PGWARDEN_ADVERTISE_HOST"),
            ),
            (
                "advertise newline",
                |a| a.advertise_host = Some("a\nb".into()),
                Err("PGWARDEN_ADVERTISE_HOST"),
            ),
            ("lag bytes", |a| a.max_lag_on_failover = "0".into(), Ok(())),
            (
                "lag unit",
                |a| a.max_lag_on_failover = "16MB".into(),
                Ok(()),
            ),
            (
                "lag bad",
                |a| a.max_lag_on_failover = "lots".into(),
                Err("PGWARDEN_MAX_LAG_ON_FAILOVER"),
            ),
            (
                "lag negative",
                |a| a.max_lag_on_failover = "-1".into(),
                Err("PGWARDEN_MAX_LAG_ON_FAILOVER"),
            ),
            ("sync on", |a| a.sync_mode = "on".into(), Ok(())),
            ("sync strict", |a| a.sync_mode = "strict".into(), Ok(())),
            ("sync quorum", |a| a.sync_mode = "quorum".into(), Ok(())),
            (
                "sync bad",
                |a| a.sync_mode = "majority".into(),
                Err("PGWARDEN_SYNC_MODE"),
            ),
            (
                "sync count 0",
                |a| a.sync_node_count = 0,
                Err("PGWARDEN_SYNC_NODE_COUNT"),
            ),
            (
                "failsafe at the defaults",
                |a| a.failsafe = "on".into(),
                Ok(()),
            ),
            (
                "failsafe with no time for a confirmation round",
                |a| {
                    a.failsafe = "on".into();
                    (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 1, 2);
                },
                Err("PGWARDEN_FAILSAFE"),
            ),
            (
                "failsafe not a boolean",
                |a| a.failsafe = "maybe".into(),
                Err("PGWARDEN_FAILSAFE"),
            ),
            (
                "nofailover not a boolean",
                |a| a.nofailover = "sometimes".into(),
                Err("PGWARDEN_NOFAILOVER"),
            ),
            ("nosync on", |a| a.nosync = "true".into(), Ok(())),
            ("priority 0", |a| a.failover_priority = 0, Ok(())),
        ];
        for (what, edit, want) in cases {
            let mut a = on();
            edit(&mut a);
            let got = HaConfig::from_args(&a, "pg-0");
            match (want, &got) {
                (Ok(()), Ok(Some(_))) => {}
                (Err(setting), Err((named, message))) => {
                    assert_eq!(setting, named, "{what}: {message}");
                    assert!(!message.is_empty(), "{what}");
                }
                _ => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn test_timing_budget() {
        let mut a = on();
        (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 1, 2);
        let c = HaConfig::from_args(&a, "h").unwrap().unwrap();
        assert_eq!(c.demote_after(), Duration::from_secs(3));
        assert_eq!(c.fence_deadline(), Duration::from_secs(5));
        assert_eq!(c.stop_budget(), Duration::from_secs(2));
        assert_eq!(c.deadman_grace(), Duration::from_millis(500));
        assert_eq!(c.advertise_host, "h");
    }

    /// The key holder's loop decides to fence between `demote_after` and `decide_by`,
    /// wherever in its loop etcd stopped answering, and a round that takes a while to
    /// act on a Lead does not push the decision past the fence deadline.
    #[test]
    fn a_failed_renewal_never_defers_the_fence_past_decide_by() {
        let ms = Duration::from_millis;
        for (ttl, loop_wait, retry) in [(6, 1, 2), (30, 10, 10), (15, 1, 2), (60, 5, 20)] {
            let mut a = on();
            (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (ttl, loop_wait, retry);
            let c = HaConfig::from_args(&a, "h").unwrap().unwrap();
            assert!(c.demote_after() < c.decide_by(), "ttl {ttl}");
            assert!(c.decide_by() < c.fence_deadline(), "ttl {ttl}");
            // A round that starts at `since`, renews in vain and, below demote_after,
            // leads for `act` before it waits for the next: every start from 0 to
            // demote_after, by 10 ms.
            for act in [ms(0), ms(100), c.stop_budget() / 4] {
                for start in (0..=c.demote_after().as_millis() as u64).step_by(10) {
                    let mut since = ms(start);
                    let mut rounds = 0;
                    loop {
                        since += c.renew_within(since);
                        if since >= c.demote_after() {
                            break;
                        }
                        since += act;
                        since += c.next_round_in(since);
                        rounds += 1;
                        assert!(rounds < 100, "ttl {ttl}, start {start} ms: no decision");
                    }
                    assert!(
                        since <= c.decide_by(),
                        "ttl {ttl}, start {start} ms, act {act:?}: decided at {since:?}"
                    );
                }
            }
            // A usual round, a loop_wait after the last renewal, renews for all of
            // retry_timeout.
            assert_eq!(
                c.renew_within(c.loop_wait + ms(100)),
                c.retry_timeout,
                "ttl {ttl}"
            );
        }
        let mut a = on();
        (a.ha_ttl, a.ha_loop_wait, a.ha_retry_timeout) = (6, 1, 2);
        let c = HaConfig::from_args(&a, "h").unwrap().unwrap();
        assert_eq!(c.decide_by(), ms(4000));
        // (since the last renewal, renewal budget, next round in) at ttl 6, loop 1, retry 2
        let cases = [
            (0, 2000, 1000),
            (1000, 2000, 1000),
            (1500, 2000, 500),
            (2400, 1600, 0),
            (2900, 1100, 0),
            (3000, 1000, 0),
            (3600, 500, 0),
            (4500, 500, 0),
        ];
        for (since, budget, next) in cases {
            assert_eq!(c.renew_within(ms(since)), ms(budget), "since {since}");
            assert_eq!(c.next_round_in(ms(since)), ms(next), "since {since}");
        }
    }
}
