//! `s3://bucket/prefix` through aws-sdk-s3.
//!
//! Credentials, region and endpoint come from the standard chain (environment,
//! profile, web identity / IRSA, `AWS_ENDPOINT_URL`). A custom endpoint switches to
//! path-style addressing so that MinIO and Garage work without extra flags. Every
//! request has a timeout; the SDK retries transient failures with jittered backoff.

use super::{ObjectInfo, PutOutcome, Storage, StorageError, SHA256_META};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Server-side encryption settings.
#[derive(Debug, Clone, Default)]
pub struct Sse {
    /// `AES256` or `aws:kms`.
    pub algorithm: Option<String>,
    /// KMS key for `aws:kms`.
    pub kms_key_id: Option<String>,
}

/// An S3 bucket and key prefix.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    sse: Sse,
    /// Some S3-compatible servers reject `If-None-Match` on PUT; then pgwarden relies
    /// on the HEAD it always does first.
    conditional_put: Arc<AtomicBool>,
}

impl S3Storage {
    /// Builds a client from the standard AWS configuration chain.
    pub async fn new(bucket: &str, sse: Sse, request_timeout: Duration) -> S3Storage {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(request_timeout)
            .build();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if shared.endpoint_url().is_some() {
            conf = conf.force_path_style(true);
        }
        S3Storage {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_owned(),
            sse,
            conditional_put: Arc::new(AtomicBool::new(true)),
        }
    }

    async fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                sha256: out.metadata().and_then(|m| m.get(SHA256_META)).cloned(),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify("HEAD", key, e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: &[u8],
        sha256: &str,
        conditional: bool,
    ) -> Result<(), SdkError<aws_sdk_s3::operation::put_object::PutObjectError>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .metadata(SHA256_META, sha256);
        if conditional {
            req = req.if_none_match("*");
        }
        if let Some(alg) = &self.sse.algorithm {
            req = req.server_side_encryption(alg.as_str().into());
        }
        if let Some(kms) = &self.sse.kms_key_id {
            req = req.ssekms_key_id(kms);
        }
        req.send().await.map(|_| ())
    }
}

fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Sorts an SDK error into transient (retry) or fatal (stop).
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    key: &str,
    e: SdkError<E>,
) -> StorageError {
    let code = status(&e);
    let detail = match &e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!(
                "{} {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("")
            )
        }
        other => error_chain(other),
    };
    let msg = format!(
        "S3 {op} {key}: {}{}",
        code.map(|c| format!("HTTP {c} ")).unwrap_or_default(),
        detail.trim()
    );
    match (&e, code) {
        (SdkError::ConstructionFailure(_), _) => StorageError::Fatal(msg),
        (_, Some(c)) if c == 429 || c >= 500 => StorageError::Transient(msg),
        (_, Some(c)) if (400..500).contains(&c) => StorageError::Fatal(msg),
        _ => StorageError::Transient(msg),
    }
}

/// The SDK's Display for dispatch and timeout failures is terse; include the source.
fn error_chain<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Storage for S3Storage {
    async fn put_new(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        if let Some(info) = self.head_object(key).await? {
            return Ok(PutOutcome::Exists(info));
        }
        let conditional = self.conditional_put.load(Ordering::Relaxed);
        match self.put(key, &body, sha256, conditional).await {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if status(&e) == Some(412) => match self.head_object(key).await? {
                Some(info) => Ok(PutOutcome::Exists(info)),
                None => Err(StorageError::Transient(format!(
                    "S3 PUT {key}: precondition failed, but the object is gone"
                ))),
            },
            Err(e) if conditional && matches!(status(&e), Some(400) | Some(501)) => {
                tracing::warn!(error = %error_chain(&e), "the S3 server rejects conditional PUTs; relying on HEAD before PUT");
                self.conditional_put.store(false, Ordering::Relaxed);
                self.put(key, &body, sha256, false)
                    .await
                    .map_err(|e| classify("PUT", key, e))?;
                Ok(PutOutcome::Created)
            }
            Err(e) => Err(classify("PUT", key, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        self.head_object(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ObjectInfo)>, StorageError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(classify("GET", key, e)),
        };
        let sha256 = out.metadata().and_then(|m| m.get(SHA256_META)).cloned();
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Transient(format!("S3 GET {key}: reading the body: {e}")))?
            .into_bytes()
            .to_vec();
        let info = ObjectInfo {
            key: key.to_owned(),
            size: body.len() as u64,
            sha256,
        };
        Ok(Some((body, info)))
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(limit.min(1000) as i32);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(|e| classify("LIST", prefix, e))?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    out.push(ObjectInfo {
                        key: key.to_owned(),
                        size: obj.size().unwrap_or(0).max(0) as u64,
                        sha256: None,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) && out.len() < limit => {
                    token = Some(t.to_owned())
                }
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
