//! What the loop asks the other members over their HTTP API: whether one still runs
//! as a primary, and how far each has received WAL (their member keys can be a round
//! old).

use super::Ha;
use crate::ha::decide::Me;
use std::time::Duration;

impl Ha {
    /// The name of another member whose HTTP API answers `/primary` with 200, asking
    /// every member ever seen at once, each for at most a second. Unreachable members
    /// do not count: the leader key's compare-and-set decides among the rest.
    pub(super) async fn a_primary_answers(&self) -> Option<String> {
        let others = self
            .known_apis
            .iter()
            .filter(|(name, _)| **name != self.name)
            .map(|(n, u)| (n.clone(), u.clone()));
        ask(others, "/primary")
            .await
            .into_iter()
            .find(|(_, r)| r.status == 200)
            .map(|(name, _)| name)
    }

    /// A rival (see [`crate::ha::decide::rivals`]) whose current position, asked over its
    /// HTTP API, beats this member's: its member key may be a round old. The candidate
    /// of a switchover wins ties, and yields only to a rival strictly ahead of it (see
    /// [`crate::ha::decide::yields_to`]).
    pub(super) async fn a_rival_is_ahead(&self, me: &Me) -> Option<(String, u64)> {
        // A manual failover promotes its candidate whatever the others have: the
        // operator asked, knowing.
        if crate::ha::decide::manual_failover(&self.view) == Some(self.name.as_str()) {
            return None;
        }
        let candidate = self
            .view
            .failover
            .as_ref()
            .and_then(|f| f.candidate.as_deref());
        let rivals = crate::ha::decide::rivals(&self.view, me, self.rules());
        let published = |name: &str| rivals.iter().find(|m| m.name == name);
        let timeline = |name: &str| published(name).and_then(|m| m.timeline);
        let priority = |name: &str| published(name).map_or(1, |m| m.tags.failover_priority);
        let asked = rivals.iter().map(|m| (m.name.clone(), m.api_url.clone()));
        // The timeline is the one the rival published (the one it replays); only its
        // position moves between rounds.
        ask(asked, "/status")
            .await
            .into_iter()
            .find_map(|(name, r)| {
                let lsn = received_in_status(&r.body)?;
                let wins = crate::ha::decide::yields_to(
                    &name,
                    priority(&name),
                    timeline(&name),
                    Some(lsn),
                    me,
                    candidate,
                );
                wins.then_some((name, lsn))
            })
    }
}

/// GETs `path` from every member's HTTP API at once, each for at most a second;
/// returns the answers that came back with a status code.
pub(super) async fn ask(
    members: impl Iterator<Item = (String, String)>,
    path: &'static str,
) -> Vec<(String, crate::http::client::Response)> {
    call_all(members, "GET", path, None, Duration::from_secs(1)).await
}

/// POSTs `path` to every member at once, each for at most two seconds, with the
/// `Authorization` header when given; returns the status codes that came back.
pub(super) async fn post(
    members: impl Iterator<Item = (String, String)>,
    path: &str,
    authorization: Option<&str>,
) -> Vec<(String, u16)> {
    call_all(members, "POST", path, authorization, Duration::from_secs(2))
        .await
        .into_iter()
        .map(|(name, r)| (name, r.status))
        .collect()
}

/// One request to every member's HTTP API (`(name, base URL)`) at once, each for at
/// most `within`; the answers that came back with a status code.
async fn call_all(
    members: impl Iterator<Item = (String, String)>,
    method: &'static str,
    path: &str,
    authorization: Option<&str>,
    within: Duration,
) -> Vec<(String, crate::http::client::Response)> {
    let mut calls = tokio::task::JoinSet::new();
    for (name, url) in members {
        let Some(hostport) = url.strip_prefix("http://").map(str::to_owned) else {
            continue;
        };
        let (path, auth) = (path.to_owned(), authorization.map(str::to_owned));
        calls.spawn(async move {
            let call = tokio::task::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                let addr = hostport.to_socket_addrs().ok()?.next()?;
                let target = crate::http::client::Target::Tcp(addr);
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("Authorization", a)])
                    .unwrap_or_default();
                crate::http::client::request_with_timeout(&target, method, &path, &headers, within)
                    .ok()
            });
            match tokio::time::timeout(within, call).await {
                Ok(Ok(Some(r))) => Some((name, r)),
                _ => None,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Ok(Some(answer)) = done {
            out.push(answer);
        }
    }
    out
}

/// The WAL received that a member's `/status` reports (`lsn.received`).
pub(super) fn received_in_status(body: &str) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let text = doc.get("lsn")?.get("received")?.as_str()?;
    crate::backup::info::Lsn::parse(text).map(|l| l.0)
}

#[cfg(test)]
mod tests {
    use super::received_in_status;

    #[test]
    fn the_received_position_is_read_from_a_members_status() {
        let body = r#"{"role":"replica","lsn":{"current":null,"received":"0/3000148","replayed":"0/3000100"}}"#;
        assert_eq!(received_in_status(body), Some(0x3000148));
        assert_eq!(received_in_status(r#"{"lsn":{"received":null}}"#), None);
        assert_eq!(received_in_status("not json"), None);
    }
}
