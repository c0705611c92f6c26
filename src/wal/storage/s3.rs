//! `s3://bucket/prefix` through aws-sdk-s3.
//!
//! Credentials, region and endpoint come from the standard chain (environment,
//! profile, web identity / IRSA, `AWS_ENDPOINT_URL`). A custom endpoint switches to
//! path-style addressing so that MinIO and Garage work without extra flags. Every
//! request has a timeout; the SDK retries transient failures with jittered backoff.

use super::{Bytes, ObjectInfo, PutOutcome, Storage, StorageError, SHA256_META};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::sync::atomic::{AtomicU8, Ordering};
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
    /// Whether the server enforces `If-None-Match: *` on PUT ([`UNKNOWN`] until the
    /// first upload probes it). AWS S3 and MinIO do; Garage 2.5 ignores it.
    conditional: Arc<AtomicU8>,
    /// The endpoint and bucket, naming the server a verdict was learned from.
    server: String,
}

const UNKNOWN: u8 = 0;
const ENFORCED: u8 = 1;
const IGNORED: u8 = 2;

impl S3Storage {
    /// Builds a client from the standard AWS configuration chain.
    pub async fn new(bucket: &str, sse: Sse, request_timeout: Duration) -> S3Storage {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(request_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        // Keys in the environment come first in the default chain, which takes them
        // whenever both are set. Naming that provider directly skips building the
        // rest of the chain, whose web-identity provider builds an STS client, which
        // reads and parses the system's whole certificate store (290 files here) on
        // every one-shot wal-archive.
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY") {
            loader = loader.credentials_provider(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            );
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            conf = conf.region(aws_sdk_s3::config::Region::new("us-east-1"));
        }
        if shared.endpoint_url().is_some() {
            conf = conf.force_path_style(true);
        }
        // A plain-HTTP endpoint (MinIO or Garage beside the database) needs no TLS, and
        // the default client loads the certificate store when it is built (above).
        // The shared configuration keeps the default client: credential providers
        // (STS, SSO) still reach AWS over TLS.
        if shared
            .endpoint_url()
            .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
        {
            conf = conf.http_client(aws_smithy_http_client::Builder::new().build_http());
        }
        let server = format!(
            "{}/{bucket}",
            shared.endpoint_url().unwrap_or("aws").trim_end_matches('/')
        );
        S3Storage {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_owned(),
            sse,
            conditional: Arc::new(AtomicU8::new(UNKNOWN)),
            server: server.replace(char::is_whitespace, "%20"),
        }
    }

    /// The endpoint and bucket this client writes to (no whitespace): what a verdict
    /// about the server's conditional writes is remembered under.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// What this client knows of the server's `If-None-Match: *` on PUT: `Some(true)`
    /// enforced, `Some(false)` ignored or rejected, `None` not known yet.
    pub fn conditional_writes(&self) -> Option<bool> {
        match self.conditional.load(Ordering::Relaxed) {
            ENFORCED => Some(true),
            IGNORED => Some(false),
            _ => None,
        }
    }

    /// Takes the verdict an earlier process learned of this server instead of probing
    /// again (the probe is three requests). A server taken for enforcing that rejects
    /// a conditional PUT still switches this client to the careful path.
    pub fn assume_conditional_writes(&self, enforced: bool) {
        let verdict = if enforced { ENFORCED } else { IGNORED };
        self.conditional.store(verdict, Ordering::Relaxed);
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

    /// Whether the server refuses a second `If-None-Match: *` PUT of one key, found
    /// out once per process with a probe object beside the archive's objects (under
    /// `<prefix>/<server>/`), then deleted. An inconclusive probe (an outage, a
    /// permission) is not remembered, and the careful path is taken meanwhile.
    async fn enforces_conditions(&self, near: &str) -> bool {
        match self.conditional.load(Ordering::Relaxed) {
            ENFORCED => return true,
            IGNORED => return false,
            _ => {}
        }
        let base = near
            .split_once("/wals/")
            .map(|(b, _)| b)
            .unwrap_or_else(|| near.rsplit_once('/').map(|(d, _)| d).unwrap_or(""));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let probe = format!(
            "{base}{}pgwarden-conditional-probe-{}-{nanos}",
            if base.is_empty() { "" } else { "/" },
            std::process::id()
        );
        let body = Bytes::from_static(b"probe");
        let first = self.put(&probe, &body, "probe", true).await;
        let second = match first {
            Ok(()) => Some(self.put(&probe, &body, "probe", true).await),
            Err(_) => None,
        };
        if first.is_ok() {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&probe)
                .send()
                .await;
        }
        let verdict = match second {
            Some(Err(e)) if status(&e) == Some(412) => ENFORCED,
            Some(Ok(())) => {
                tracing::warn!(
                    bucket = %self.bucket,
                    "the S3 server ignores If-None-Match on PUT: each upload claims its name first \
                     (three more requests); give each cluster its own PGWARDEN_ARCHIVE_NAME"
                );
                IGNORED
            }
            Some(Err(e)) if matches!(status(&e), Some(400) | Some(501)) => IGNORED,
            _ => UNKNOWN,
        };
        self.conditional.store(verdict, Ordering::Relaxed);
        verdict == ENFORCED
    }

    async fn put(
        &self,
        key: &str,
        body: &Bytes,
        sha256: &str,
        conditional: bool,
    ) -> Result<(), SdkError<aws_sdk_s3::operation::put_object::PutObjectError>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            // Bytes is reference-counted: the SDK's own retries copy nothing.
            .body(ByteStream::from(body.clone()))
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

/// An S3 multipart upload under way.
pub struct S3Upload {
    storage: S3Storage,
    key: String,
    upload_id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
    /// Parts being uploaded, oldest first.
    pending: std::collections::VecDeque<tokio::task::JoinHandle<PartResult>>,
    next_number: i32,
    size: u64,
}

type PartResult = Result<aws_sdk_s3::types::CompletedPart, StorageError>;

/// Parts uploaded at once: the next one goes while the server digests the last.
const PARTS_IN_FLIGHT: usize = 2;

impl S3Storage {
    /// Starts a multipart upload of `key`.
    pub async fn begin_upload(&self, key: &str) -> Result<S3Upload, StorageError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        if let Some(alg) = &self.sse.algorithm {
            req = req.server_side_encryption(alg.as_str().into());
        }
        if let Some(kms) = &self.sse.kms_key_id {
            req = req.ssekms_key_id(kms);
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", key, e))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        Ok(S3Upload {
            storage: self.clone(),
            key: key.to_owned(),
            upload_id,
            parts: Vec::new(),
            pending: Default::default(),
            next_number: 1,
            size: 0,
        })
    }

    /// Deletes `key` (S3 answers success when it is not there).
    async fn delete_object(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("DELETE", key, e))
    }

    /// Writes `key` on a server that ignores `If-None-Match`, where a PUT cannot
    /// refuse to replace: of writers of different contents, only one that found
    /// itself alone among the claims on `key` writes it.
    ///
    /// A writer PUTs its claim (a new, empty object named by the time and its
    /// content's SHA-256), then LISTs the claims. Alone, it looks at `key` once more,
    /// writes it, and withdraws its claim only once the object is there; with a
    /// rival, it withdraws its claim, pauses and starts again. Two writers cannot both
    /// be alone: the one whose claim landed second lists after both claims landed and
    /// sees the other's, unless the other already withdrew it, which it does only
    /// after its object landed, and then the second's look at `key` finds that object.
    /// No timing is assumed. Claims of the same content are not rivals (a retry, the
    /// daemon and a one-shot pushing one file). A claim left by a crashed writer
    /// counts for [`CLAIM_STALE`]: until then another content waits or fails.
    async fn put_claimed(
        &self,
        key: &str,
        body: &Bytes,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        let claims = claims_prefix(key);
        let mut pause = CLAIM_PAUSE;
        for _ in 0..CLAIM_ROUNDS {
            let mine = format!("{claims}{:013}-{sha256}", unix_ms());
            self.put(&mine, &Bytes::new(), sha256, false)
                .await
                .map_err(|e| classify("PUT", &mine, e))?;
            let listed = match self.list(&claims, 1000).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = self.delete_object(&mine).await;
                    return Err(e);
                }
            };
            let now = unix_ms();
            let rival = listed.iter().any(|o| {
                o.key
                    .strip_prefix(claims.as_str())
                    .and_then(|c| c.split_once('-'))
                    .and_then(|(ms, sha)| Some((ms.parse::<u64>().ok()?, sha)))
                    .is_some_and(|(ms, sha)| {
                        sha != sha256 && now.saturating_sub(ms) < CLAIM_STALE.as_millis() as u64
                    })
            });
            if !rival {
                let outcome = match self.head_object(key).await? {
                    Some(info) => PutOutcome::Exists(info),
                    None => {
                        self.put(key, body, sha256, false)
                            .await
                            .map_err(|e| classify("PUT", key, e))?;
                        PutOutcome::Created
                    }
                };
                // The object is there: this content's claims (this one, and any a
                // crashed attempt left) have done their work. A failed DELETE leaves a
                // claim that only holds a rival back until it is stale.
                for o in listed
                    .iter()
                    .filter(|o| o.key.ends_with(sha256) && o.key != mine)
                {
                    let _ = self.delete_object(&o.key).await;
                }
                let _ = self.delete_object(&mine).await;
                return Ok(outcome);
            }
            self.delete_object(&mine).await?;
            tokio::time::sleep(super::retry::jitter(pause)).await;
            pause *= 2;
            if let Some(info) = self.head_object(key).await? {
                return Ok(PutOutcome::Exists(info));
            }
        }
        Err(StorageError::Transient(format!(
            "S3 PUT {key}: another writer of different content claims it"
        )))
    }
}

/// How many times a writer that meets a rival's claim withdraws and tries again
/// before reporting a transient failure (about 6 s of pauses).
const CLAIM_ROUNDS: u32 = 8;
/// The first pause after meeting a rival's claim; doubled each round, jittered.
const CLAIM_PAUSE: Duration = Duration::from_millis(50);
/// Age after which a claim no longer holds a rival back: a writer that crashed
/// between its claim and its withdrawal. Far above any push's own deadline.
const CLAIM_STALE: Duration = Duration::from_secs(600);

/// Where the claims on `key` are kept: a `claims/` folder beside the server's
/// `wals/` and `base/`, not inside them, so that nothing listing those folders
/// (barman-cloud included) meets a claim.
fn claims_prefix(key: &str) -> String {
    let split = ["/wals/", "/base/"]
        .iter()
        .filter_map(|f| key.rfind(f).map(|i| (i, *f)))
        .max_by_key(|(i, _)| *i);
    match split {
        Some((i, folder)) => format!(
            "{}/claims/{}{}/",
            &key[..i],
            &folder[1..],
            &key[i + folder.len()..]
        ),
        None => format!("{key}.claims/"),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl S3Upload {
    /// Starts uploading the next part (the SDK retries it on transient errors), and
    /// returns once fewer than `PARTS_IN_FLIGHT` are under way.
    pub async fn part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let number = self.next_number;
        self.next_number += 1;
        self.size += data.len() as u64;
        let (client, bucket) = (self.storage.client.clone(), self.storage.bucket.clone());
        let (key, upload_id) = (self.key.clone(), self.upload_id.clone());
        self.pending.push_back(tokio::spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| classify("UploadPart", &key, e))?;
            Ok(aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        }));
        while self.pending.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Waits for the oldest part under way.
    async fn settle_one(&mut self) -> Result<(), StorageError> {
        let Some(handle) = self.pending.pop_front() else {
            return Ok(());
        };
        let part = handle
            .await
            .map_err(|e| StorageError::Transient(format!("UploadPart {}: {e}", self.key)))??;
        self.parts.push(part);
        Ok(())
    }

    /// Completes the upload: the object appears whole.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        while !self.pending.is_empty() {
            if let Err(e) = self.settle_one().await {
                self.abort().await;
                return Err(e);
            }
        }
        let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let result = self
            .storage
            .client
            .complete_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(done)
            .send()
            .await;
        match result {
            Ok(_) => Ok(self.size),
            Err(e) => {
                let err = classify("CompleteMultipartUpload", &self.key, e);
                self.abort().await;
                Err(err)
            }
        }
    }

    /// Aborts the upload, so its parts do not linger (best effort: a bucket lifecycle
    /// rule for incomplete uploads catches what a killed process leaves).
    pub async fn abort(self) {
        for handle in &self.pending {
            handle.abort();
        }
        let _ = self
            .storage
            .client
            .abort_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

impl S3Storage {
    /// Opens `key` for reading in chunks; `None` when it does not exist.
    pub async fn download(&self, key: &str) -> Result<Option<ByteStream>, StorageError> {
        Ok(self.get_object(key).await?.map(|out| out.body))
    }

    /// Reads `key` from byte `from` on, up to `until` (exclusive; a ranged GET), and
    /// its ETag. With `etag`, only
    /// if the object is still that version: `If-Match` asks the store, and the ETag it
    /// answers with is compared too (for a store that ignores the condition). A
    /// changed object is [`StorageError::Fatal`]; `None` when it no longer exists.
    pub async fn download_range(
        &self,
        key: &str,
        from: u64,
        until: Option<u64>,
        etag: Option<&str>,
    ) -> Result<Option<(ByteStream, String)>, StorageError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        match until {
            Some(end) if end > from => req = req.range(format!("bytes={from}-{}", end - 1)),
            _ if from > 0 => req = req.range(format!("bytes={from}-")),
            _ => {}
        }
        if let Some(tag) = etag {
            req = req.if_match(tag);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) if status(&e) == Some(412) => {
                return Err(StorageError::Fatal(format!(
                "S3 GET {key}: the object changed since its download began (ETag is no longer {})",
                etag.unwrap_or("-")
            )))
            }
            Err(e) => return Err(classify("GET", key, e)),
        };
        let got = out.e_tag.clone().unwrap_or_default();
        if let Some(tag) = etag {
            if got != tag {
                return Err(StorageError::Fatal(format!(
                    "S3 GET {key}: the object changed since its download began (ETag {tag}, now {got})"
                )));
            }
        }
        Ok(Some((out.body, got)))
    }

    /// GET of `key`, the body not read yet; `None` when it does not exist.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StorageError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify("GET", key, e)),
        }
    }
}

impl Storage for S3Storage {
    async fn put_new(
        &self,
        key: &str,
        body: Bytes,
        sha256: &str,
    ) -> Result<PutOutcome, StorageError> {
        if self.enforces_conditions(key).await {
            // The conditional PUT alone decides, atomically, who creates the object; a
            // HEAD only when it reports the object is there.
            return match self.put(key, &body, sha256, true).await {
                Ok(()) => Ok(PutOutcome::Created),
                // Another conditional write of this key is under way (AWS's
                // ConditionalRequestConflict): try again, the next answer is 412 or 200.
                Err(e) if status(&e) == Some(409) => Err(StorageError::Transient(format!(
                    "S3 PUT {key}: a concurrent write of the same key: {}",
                    error_chain(&e)
                ))),
                Err(e) if status(&e) == Some(412) => match self.head_object(key).await? {
                    Some(info) => Ok(PutOutcome::Exists(info)),
                    None => Err(StorageError::Transient(format!(
                        "S3 PUT {key}: precondition failed, but the object is gone"
                    ))),
                },
                Err(e) if matches!(status(&e), Some(400) | Some(501)) => {
                    tracing::warn!(error = %error_chain(&e), "the S3 server rejects conditional PUTs; checking before and after each PUT instead");
                    self.conditional.store(IGNORED, Ordering::Relaxed);
                    Err(StorageError::Transient(format!(
                        "S3 PUT {key}: conditional PUT rejected"
                    )))
                }
                Err(e) => Err(classify("PUT", key, e)),
            };
        }
        // A server that ignores If-None-Match (Garage 2.5) cannot refuse a second
        // writer, and no look-write-look can exclude one: a racer that looked before
        // our PUT landed may land its own after any settle time (a process held by a
        // loaded CPU; both were then told "archived"). So writers claim the key first.
        if let Some(info) = self.head_object(key).await? {
            return Ok(PutOutcome::Exists(info));
        }
        self.put_claimed(key, &body, sha256).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        self.head_object(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.delete_object(key).await
    }

    async fn get(&self, key: &str) -> Result<Option<(Bytes, ObjectInfo)>, StorageError> {
        let Some(out) = self.get_object(key).await? else {
            return Ok(None);
        };
        let sha256 = out.metadata().and_then(|m| m.get(SHA256_META)).cloned();
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::Transient(format!("S3 GET {key}: reading the body: {e}")))?
            .into_bytes();
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

#[cfg(test)]
mod tests {
    use super::claims_prefix;

    #[test]
    fn claims_live_beside_the_archives_folders_not_in_them() {
        for (key, claims) in [
            (
                "p/srv/wals/0000000100000000/000000010000000000000002.zst",
                "p/srv/claims/wals/0000000100000000/000000010000000000000002.zst/",
            ),
            (
                "srv/base/20260101T000000/backup.running",
                "srv/claims/base/20260101T000000/backup.running/",
            ),
            // A prefix that itself holds a `wals` folder: the server's own counts.
            (
                "a/wals/b/srv/base/X/backup.info",
                "a/wals/b/srv/claims/base/X/backup.info/",
            ),
            ("srv/pgwarden-identity", "srv/pgwarden-identity.claims/"),
        ] {
            assert_eq!(claims_prefix(key), claims, "{key}");
        }
    }
}
