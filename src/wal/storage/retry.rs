//! The one retry policy: a [`Storage`] wrapper that retries transient failures with
//! jittered exponential backoff until a deadline, and gives up at once when told to
//! (pgwarden is stopping).
//!
//! One wrapper serves one operation (a push, a restore): every storage call made
//! through it shares its deadline, so the operation as a whole answers within
//! `PGWARDEN_ARCHIVE_TIMEOUT` however many calls it makes.

use super::{Bytes, ObjectInfo, PutOutcome, Storage, StorageError};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// First pause between attempts; doubled each time up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// `inner`, retried within one deadline.
pub struct Retrying<'a, S> {
    inner: &'a S,
    budget: Duration,
    deadline: Instant,
    cancel: CancellationToken,
}

impl<'a, S: Storage> Retrying<'a, S> {
    /// Retries calls to `inner` until `budget` from now, or until `cancel` fires.
    pub fn new(inner: &'a S, budget: Duration, cancel: CancellationToken) -> Retrying<'a, S> {
        Retrying {
            inner,
            budget,
            deadline: Instant::now() + budget,
            cancel,
        }
    }

    async fn run<T, F, Fut>(&self, what: String, mut op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut delay = FIRST_DELAY;
        for attempt in 1u32.. {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = || StorageError::Timeout {
                what: what.clone(),
                secs: self.budget.as_secs().max(1),
            };
            if left.is_zero() {
                return Err(timeout());
            }
            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(StorageError::Cancelled(what)),
                r = tokio::time::timeout(left, op()) => r.unwrap_or_else(|_| Err(timeout())),
            };
            match result {
                Err(e) if e.is_transient() => {
                    let pause = jitter(delay);
                    if Instant::now() + pause >= self.deadline {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, retry_in_ms = pause.as_millis() as u64, "{what}: retrying");
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => return Err(StorageError::Cancelled(what)),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }
}

/// Spreads retries of many processes and files apart: 50% to 100% of `d`.
pub fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d / 2 + d.mul_f64((nanos % 1000) as f64 / 2000.0)
}

impl<S: Storage> Storage for Retrying<'_, S> {
    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        self.run(format!("upload {key}"), || {
            self.inner.put_new(key, body.clone(), sha256)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        self.run(format!("look up {key}"), || self.inner.head(key))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectInfo)>, StorageError> {
        self.run(format!("download {key}"), || self.inner.get(key))
            .await
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        self.run(format!("list {prefix}"), || self.inner.list(prefix, limit))
            .await
    }

    fn root_identity(&self) -> String {
        self.inner.root_identity()
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.run(format!("delete {key}"), || self.inner.delete(key))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// One scripted answer to `head`; `None` hangs.
    type Answer = Option<Result<Option<ObjectInfo>, StorageError>>;

    /// A storage that answers `head` from a script, one entry a call.
    struct Scripted {
        answers: Mutex<VecDeque<Answer>>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn new(answers: Vec<Option<Result<Option<ObjectInfo>, StorageError>>>) -> Scripted {
            Scripted {
                answers: Mutex::new(answers.into()),
                calls: Mutex::new(0),
            }
        }
        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    impl Storage for Scripted {
        async fn put_new(&self, _: &str, _: Bytes, _: &str) -> Result<PutOutcome, StorageError> {
            unimplemented!()
        }
        async fn head(&self, _: &str) -> Result<Option<ObjectInfo>, StorageError> {
            *self.calls.lock().unwrap() += 1;
            let next = self.answers.lock().unwrap().pop_front();
            match next {
                Some(Some(answer)) => answer,
                Some(None) => std::future::pending().await,
                None => Err(StorageError::Transient("script ran out".into())),
            }
        }
        async fn get(&self, _: &str) -> Result<Option<(Bytes, ObjectInfo)>, StorageError> {
            unimplemented!()
        }
        async fn list(&self, _: &str, _: usize) -> Result<Vec<ObjectInfo>, StorageError> {
            unimplemented!()
        }
        async fn delete(&self, _: &str) -> Result<(), StorageError> {
            unimplemented!()
        }
    }

    fn transient() -> Answer {
        Some(Err(StorageError::Transient("503 slow down".into())))
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let s = Scripted::new(vec![transient(), transient(), Some(Ok(None))]);
        let r = Retrying::new(&s, Duration::from_secs(10), CancellationToken::new());
        assert_eq!(r.head("k").await.unwrap(), None);
        assert_eq!(s.calls(), 3);
    }

    #[tokio::test]
    async fn a_fatal_failure_is_not_retried() {
        let s = Scripted::new(vec![Some(Err(StorageError::Fatal("403".into())))]);
        let r = Retrying::new(&s, Duration::from_secs(10), CancellationToken::new());
        assert!(matches!(r.head("k").await, Err(StorageError::Fatal(_))));
        assert_eq!(s.calls(), 1);
    }

    #[tokio::test]
    async fn a_hanging_storage_times_out_with_a_typed_error() {
        let s = Scripted::new(vec![None]);
        let r = Retrying::new(&s, Duration::from_millis(300), CancellationToken::new());
        let t0 = Instant::now();
        let e = r.head("k").await.unwrap_err();
        assert!(matches!(e, StorageError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("PGWARDEN_ARCHIVE_TIMEOUT"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_deadline_is_shared_by_every_call_and_ends_retries() {
        let s = Scripted::new((0..1000).map(|_| transient()).collect());
        let r = Retrying::new(&s, Duration::from_millis(700), CancellationToken::new());
        let t0 = Instant::now();
        assert!(matches!(r.head("a").await, Err(StorageError::Transient(_))));
        let calls = s.calls();
        assert!((2..10).contains(&calls), "{calls} attempts in 700 ms");
        // The budget is spent: the next call through the same wrapper fails fast.
        let _ = r.head("b").await;
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn cancelling_ends_a_hanging_call_and_a_backoff() {
        let cancel = CancellationToken::new();
        let s = Scripted::new(vec![None]);
        let r = Retrying::new(&s, Duration::from_secs(60), cancel.clone());
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.cancel();
        });
        let t0 = Instant::now();
        assert!(matches!(r.head("k").await, Err(StorageError::Cancelled(_))));
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Already cancelled: no attempt at all.
        let s = Scripted::new(vec![Some(Ok(None))]);
        let r = Retrying::new(&s, Duration::from_secs(60), cancel);
        assert!(matches!(r.head("k").await, Err(StorageError::Cancelled(_))));
        assert_eq!(s.calls(), 0);
    }
}
