//! The S3 driver (AWS S3, Ceph RGW, Garage, MinIO), over `object_store`.
//!
//! Layout under the configured key prefix (this comment is the one description of it):
//!
//! ```text
//! blobs/<algorithm>/<first two hex chars>/<hex>   a complete, verified blob
//! uploads/<upload id>/seg-<uuid>                  a tail of an upload shorter than one part
//! uploads/<upload id>/data                        the multipart object an upload is assembled in
//! ```
//!
//! Any node can continue any upload, because everything a writer needs is in the session's
//! driver state ([`UploadState`], kept in the metadata database) or in the bucket: the S3
//! multipart upload id, the ETags of the parts sent so far, and the tail segments. S3 parts must
//! be at least 5 MiB except the last, while clients send chunks of any size (ORAS sends 64 KiB),
//! so a request's bytes that do not fill a part are stored as a segment object and sent as part of
//! the next part, or as the last part on commit.
//!
//! Nothing a committed session state refers to is ever overwritten: segments have unique names,
//! and a part number is reused only by a writer continuing from a state that does not list it.
//! Two writers racing on one session (a misbehaving client talking to two nodes at once) cannot
//! corrupt a blob: the database's compare-and-set on the offset lets one of them record its
//! state, and S3 refuses to complete a multipart upload whose listed ETags do not match the parts
//! it holds.
//!
//! Commit: a blob smaller than a part is written to its content address in one PUT (when it
//! arrives in one request, straight from memory: `finish_last` keeps the tail in the state it
//! hands to the commit, and nothing else touches the bucket). A larger one
//! completes the multipart upload and is copied server-side to its content address (objects over
//! S3's 5 GiB copy limit are streamed through instead). Incomplete multipart uploads left by a
//! crashed node are not visible to `list_uploads`: give the bucket an
//! `AbortIncompleteMultipartUpload` lifecycle rule (docs/deployment.md).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use oci::{ByteRange, Digest, UploadId};
use serde::{Deserialize, Serialize};

use crate::{BlobInfo, BlobStore, ByteStream, Result, StorageError, StoredUpload, UploadWriter};

/// S3's smallest part (except the last one).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest object S3 copies in one request.
const MAX_COPY: u64 = 5 << 30;
/// Parts of one upload sent at once. Bounds a writer's memory to about (this + 1) parts.
const PARTS_IN_FLIGHT: usize = 2;

/// How to reach the bucket. Credentials left out come from the usual AWS chain: the `AWS_*`
/// environment variables, a web identity token (EKS), container credentials (ECS) or the
/// instance metadata service.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    pub region: String,
    /// `http(s)://host:port` of an S3-compatible service; `None` for AWS.
    pub endpoint: Option<String>,
    /// Address the bucket as `endpoint/bucket/key` rather than `bucket.endpoint/key` (RGW,
    /// MinIO and Garage usually want this).
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Key prefix for everything berth stores, so a bucket can be shared ("" for none).
    pub prefix: String,
    /// Size of the parts a large upload is sent in (at least 5 MiB).
    pub part_size: u64,
    /// Attempts after the first for a throttled (429, 503 SlowDown), failed (5xx) or
    /// disconnected request, with exponential backoff.
    pub max_retries: usize,
    /// Give up retrying one request after this long.
    pub retry_timeout: Duration,
}

impl S3Options {
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            region: region.into(),
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            prefix: String::new(),
            part_size: 16 << 20,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
        }
    }
}

#[derive(Debug)]
struct Inner {
    s3: AmazonS3,
    prefix: String,
    part_size: u64,
}

/// An S3 bucket (or a prefix of one) as a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

/// What a session keeps between requests (serialized into the session's driver state).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct UploadState {
    /// The S3 multipart upload, once the upload has reached one part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    /// ETags of parts 1..=n.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parts: Vec<String>,
    /// Bytes in those parts.
    #[serde(default)]
    part_bytes: u64,
    /// Bytes received after the last part, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    segments: Vec<Segment>,
    /// Segment objects already sent inside a part: deleted on commit (not before, since an
    /// earlier recorded state may still name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spent: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Segment {
    name: String,
    len: u64,
}

impl UploadState {
    fn parse(state: &[u8]) -> Result<UploadState> {
        if state.is_empty() {
            return Ok(UploadState::default());
        }
        serde_json::from_slice(state).map_err(|e| StorageError::Backend(format!("unreadable S3 upload state: {e}")))
    }

    /// A state from `finish` or `finish_last`: the recorded part and the in-memory tail.
    fn parse_with_tail(state: &[u8]) -> Result<(UploadState, Bytes)> {
        let Some(rest) = state.strip_prefix(INLINE_MAGIC) else { return Ok((UploadState::parse(state)?, Bytes::new())) };
        let bad = || StorageError::Backend("unreadable S3 upload state (inline tail)".into());
        let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad())?;
        if rest.len() < len {
            return Err(bad());
        }
        let (json, tail) = rest.split_at(len);
        Ok((UploadState::parse(json)?, Bytes::copy_from_slice(tail)))
    }

    fn held(&self) -> u64 {
        self.part_bytes + self.segments.iter().map(|s| s.len).sum::<u64>()
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("upload state serializes")
    }

    /// The state with an in-memory tail appended (see `finish_last`).
    fn encode_with_tail(&self, tail: &[Bytes]) -> Vec<u8> {
        let json = self.encode();
        let tail_len: usize = tail.iter().map(Bytes::len).sum();
        let mut out = Vec::with_capacity(INLINE_MAGIC.len() + 8 + json.len() + tail_len);
        out.extend_from_slice(INLINE_MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        tail.iter().for_each(|b| out.extend_from_slice(b));
        out
    }

}

/// Marks a state carrying its tail in memory (never valid JSON, which starts with `{`).
const INLINE_MAGIC: &[u8] = b"berth-s3-inline\n";

/// Was this failure worth telling the client to retry (throttling, a 5xx, a dropped connection)?
/// object_store keeps its status-carrying error type private, so the status is read from the
/// message it formats ("Server returned non-2xx status code: 503 ...").
fn transient(e: &object_store::Error) -> bool {
    let text = e.to_string();
    if text.contains("status code: 5") || text.contains("status code: 429") || text.contains("SlowDown") {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<object_store::client::HttpError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

fn map_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        e if transient(&e) => StorageError::Unavailable(e.to_string()),
        e => StorageError::Backend(e.to_string()),
    }
}

fn io_error(e: object_store::Error) -> io::Error {
    io::Error::other(e)
}

impl S3Store {
    /// Connect to the bucket. Nothing is sent until the first request; [`S3Store::check`]
    /// verifies that the bucket is reachable.
    pub fn open(opts: &S3Options) -> Result<S3Store> {
        if opts.part_size < MIN_PART_SIZE {
            return Err(StorageError::Backend(format!("part size {} is below S3's minimum of 5 MiB", opts.part_size)));
        }
        // from_env(): credentials and settings not given here follow the AWS chain.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&opts.bucket)
            .with_region(&opts.region)
            .with_virtual_hosted_style_request(!opts.path_style)
            // TLS already protects the payload; signing it would hash every byte a second time.
            .with_unsigned_payload(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig { init_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(10), base: 2.0 },
                max_retries: opts.max_retries,
                retry_timeout: opts.retry_timeout,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    // A blob read streams for as long as the client takes: bound inactivity,
                    // not the whole request.
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(60))
                    .with_pool_max_idle_per_host(64),
            );
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &opts.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &opts.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(t) = &opts.session_token {
            b = b.with_token(t);
        }
        let s3 = b.build().map_err(|e| StorageError::Backend(format!("S3 configuration: {e}")))?;
        let prefix = opts.prefix.trim_matches('/').to_owned();
        Ok(S3Store { inner: Arc::new(Inner { s3, prefix, part_size: opts.part_size }) })
    }

    /// One cheap request proving the bucket is reachable with these credentials.
    pub async fn check(&self) -> Result<()> {
        let probe = self.key("blobs/.probe");
        match self.inner.s3.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    fn key(&self, rel: &str) -> Path {
        if self.inner.prefix.is_empty() { Path::from(rel) } else { Path::from(format!("{}/{rel}", self.inner.prefix)) }
    }

    fn blob_key(&self, d: &Digest) -> Path {
        let hex = d.hex();
        self.key(&format!("blobs/{}/{}/{hex}", d.algorithm().as_str(), &hex[..2]))
    }

    fn upload_dir(&self, id: &UploadId) -> Path {
        self.key(&format!("uploads/{}", id.as_str()))
    }

    fn staging_key(&self, id: &UploadId) -> Path {
        self.key(&format!("uploads/{}/data", id.as_str()))
    }

    fn segment_key(&self, id: &UploadId, name: &str) -> Path {
        self.key(&format!("uploads/{}/{name}", id.as_str()))
    }

    /// The tail segments' bytes, in order.
    async fn read_segments(&self, id: &UploadId, segments: &[Segment]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(segments.len());
        for s in segments {
            let bytes = self.inner.s3.get(&self.segment_key(id, &s.name)).await.map_err(map_err)?.bytes().await.map_err(map_err)?;
            if bytes.len() as u64 != s.len {
                return Err(StorageError::Backend(format!("upload {id}: segment {} holds {} bytes, expected {}", s.name, bytes.len(), s.len)));
            }
            out.push(bytes);
        }
        Ok(out)
    }

    /// Remove every object of an upload (segments, the staging object).
    async fn remove_upload_objects(&self, id: &UploadId) -> Result<()> {
        let dir = self.upload_dir(id);
        let keys: Vec<Path> = self.inner.s3.list(Some(&dir)).map_ok(|m| m.location).try_collect().await.map_err(map_err)?;
        for k in keys {
            match self.inner.s3.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(())
    }

    /// Send the tail as the last part and complete the multipart upload into the staging
    /// object. Idempotent: an upload already completed (by a re-hash read) is left as it is.
    async fn complete(&self, id: &UploadId, st: &UploadState, tail: &Bytes, size: u64) -> Result<Path> {
        let staging = self.staging_key(id);
        let mp = st.multipart.clone().ok_or_else(|| StorageError::Backend("no multipart upload".into()))?;
        if let Ok(meta) = self.inner.s3.head(&staging).await
            && meta.size == size
        {
            return Ok(staging);
        }
        let mut parts: Vec<PartId> = st.parts.iter().map(|e| PartId { content_id: e.clone() }).collect();
        if !st.segments.is_empty() || !tail.is_empty() {
            let mut last = self.read_segments(id, &st.segments).await?;
            last.push(tail.clone());
            let part = self.inner.s3.put_part(&staging, &mp, parts.len(), PutPayload::from_iter(last)).await.map_err(map_err)?;
            parts.push(part);
        }
        self.inner.s3.complete_multipart(&staging, &mp, parts).await.map_err(map_err)?;
        Ok(staging)
    }

    /// Copy an object too large for one server-side copy by streaming it through.
    async fn stream_copy(&self, from: &Path, to: &Path) -> Result<()> {
        let mut body = self.inner.s3.get(from).await.map_err(map_err)?.into_stream();
        let mp = self.inner.s3.create_multipart(to).await.map_err(map_err)?;
        let mut parts = Vec::new();
        let mut buf: Vec<Bytes> = Vec::new();
        let mut buf_len = 0u64;
        loop {
            let next = body.next().await.transpose().map_err(map_err)?;
            if let Some(b) = &next {
                buf_len += b.len() as u64;
                buf.push(b.clone());
            }
            if (buf_len >= self.inner.part_size || next.is_none()) && buf_len > 0 {
                let payload = PutPayload::from_iter(std::mem::take(&mut buf));
                buf_len = 0;
                parts.push(self.inner.s3.put_part(to, &mp, parts.len(), payload).await.map_err(map_err)?);
            }
            if next.is_none() {
                break;
            }
        }
        self.inner.s3.complete_multipart(to, &mp, parts).await.map_err(map_err)?;
        Ok(())
    }
}

struct S3Writer {
    store: S3Store,
    id: UploadId,
    state: UploadState,
    /// Bytes of this request not yet sent anywhere.
    pending: Vec<Bytes>,
    pending_len: u64,
    /// Parts being sent, oldest first, with their sizes.
    in_flight: std::collections::VecDeque<(tokio::task::JoinHandle<object_store::Result<PartId>>, u64)>,
}

impl S3Writer {
    fn staging(&self) -> Path {
        self.store.staging_key(&self.id)
    }

    /// Record the oldest part in flight once S3 has it.
    async fn settle_one(&mut self) -> Result<()> {
        if let Some((task, len)) = self.in_flight.pop_front() {
            let part = task.await.map_err(|e| StorageError::Backend(format!("part upload task failed: {e}")))?.map_err(map_err)?;
            self.state.parts.push(part.content_id);
            self.state.part_bytes += len;
        }
        Ok(())
    }

    /// Send the tail segments and the pending bytes as the next part.
    async fn send_part(&mut self) -> Result<()> {
        let staging = self.staging();
        let mp = match &self.state.multipart {
            Some(mp) => mp.clone(),
            None => {
                let mp = self.store.inner.s3.create_multipart(&staging).await.map_err(map_err)?;
                self.state.multipart = Some(mp.clone());
                mp
            }
        };
        let mut payload = self.store.read_segments(&self.id, &self.state.segments).await?;
        let mut len: u64 = self.state.segments.iter().map(|s| s.len).sum();
        // The segment objects stay until commit or abort: the session's recorded state may
        // still refer to them if this request fails.
        let spent: Vec<String> = self.state.segments.drain(..).map(|seg| seg.name).collect();
        self.state.spent.extend(spent);
        payload.append(&mut self.pending);
        len += self.pending_len;
        self.pending_len = 0;
        if self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        let idx = self.state.parts.len() + self.in_flight.len();
        let s3 = self.store.inner.s3.clone();
        let task = tokio::spawn(async move { s3.put_part(&staging, &mp, idx, PutPayload::from_iter(payload)).await });
        self.in_flight.push_back((task, len));
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // A request that failed: its parts in flight are not recorded, so stop sending them.
        for (task, _) in &self.in_flight {
            task.abort();
        }
    }
}

#[async_trait]
impl UploadWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.pending_len += chunk.len() as u64;
        self.pending.push(chunk);
        let tail: u64 = self.state.segments.iter().map(|s| s.len).sum();
        if tail + self.pending_len >= self.store.inner.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn finish_last(mut self: Box<Self>) -> Result<Vec<u8>> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        // The tail (less than a part) stays in memory for the commit that follows.
        let tail = std::mem::take(&mut self.pending);
        Ok(self.state.encode_with_tail(&tail))
    }

    async fn finish(mut self: Box<Self>) -> Result<Vec<u8>> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        if self.pending_len > 0 {
            let name = format!("seg-{}", uuid::Uuid::new_v4());
            let payload = PutPayload::from_iter(std::mem::take(&mut self.pending));
            self.store.inner.s3.put(&self.store.segment_key(&self.id, &name), payload).await.map_err(map_err)?;
            self.state.segments.push(Segment { name, len: self.pending_len });
            self.pending_len = 0;
        }
        Ok(self.state.encode())
    }
}

fn digest_of_key(key: &Path) -> Option<Digest> {
    let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_owned()).collect();
    // ..., <algorithm>, <xx>, <hex>
    match parts.as_slice() {
        [.., alg, _, hex] => format!("{alg}:{hex}").parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl BlobStore for S3Store {
    fn driver(&self) -> &'static str {
        "s3"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.inner.s3.head(&self.blob_key(digest)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn inspect(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        match self.inner.s3.head(&self.blob_key(digest)).await {
            Ok(m) => Ok(Some(BlobInfo { size: m.size, modified: Some(SystemTime::from(m.last_modified)) })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream> {
        let opts = GetOptions { range: range.map(|r| GetRange::Bounded(r.start..r.end + 1)), ..GetOptions::default() };
        let got = self.inner.s3.get_opts(&self.blob_key(digest), opts).await.map_err(map_err)?;
        Ok(Box::pin(got.into_stream().map_err(io_error)))
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        match self.inner.s3.delete(&self.blob_key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn list(&self) -> Result<Vec<Digest>> {
        let prefix = self.key("blobs");
        let keys: Vec<Path> = self.inner.s3.list(Some(&prefix)).map_ok(|m| m.location).try_collect().await.map_err(map_err)?;
        Ok(keys.iter().filter_map(digest_of_key).collect())
    }

    async fn presigned_get(&self, digest: &Digest, expiry: Duration) -> Result<Option<String>> {
        let url = self.inner.s3.signed_url(http::Method::GET, &self.blob_key(digest), expiry).await.map_err(map_err)?;
        Ok(Some(url.to_string()))
    }

    async fn upload_writer(&self, id: &UploadId, offset: u64, state: &[u8]) -> Result<Box<dyn UploadWriter>> {
        if state.starts_with(INLINE_MAGIC) {
            return Err(StorageError::Backend("a state from finish_last cannot be continued".into()));
        }
        let state = UploadState::parse(state)?;
        let held = state.held();
        if held != offset {
            return Err(StorageError::OffsetMismatch { held, offset });
        }
        Ok(Box::new(S3Writer { store: self.clone(), id: id.clone(), state, pending: Vec::new(), pending_len: 0, in_flight: Default::default() }))
    }

    async fn read_upload(&self, id: &UploadId, size: u64, state: &[u8]) -> Result<ByteStream> {
        let (st, tail) = UploadState::parse_with_tail(state)?;
        let held = st.held() + tail.len() as u64;
        if held != size {
            return Err(StorageError::OffsetMismatch { held, offset: size });
        }
        if st.multipart.is_none() {
            let mut segments = self.read_segments(id, &st.segments).await?;
            segments.push(tail);
            return Ok(Box::pin(futures::stream::iter(segments.into_iter().map(Ok))));
        }
        // Parts of an unfinished multipart upload cannot be read: finish it. The commit that
        // follows finds it finished.
        let staging = self.complete(id, &st, &tail, size).await?;
        let got = self.inner.s3.get(&staging).await.map_err(map_err)?;
        Ok(Box::pin(got.into_stream().map_err(io_error)))
    }

    async fn commit_upload(&self, id: &UploadId, size: u64, state: &[u8], digest: &Digest) -> Result<()> {
        let (st, tail) = UploadState::parse_with_tail(state)?;
        let held = st.held() + tail.len() as u64;
        if held != size {
            return Err(StorageError::OffsetMismatch { held, offset: size });
        }
        let dest = self.blob_key(digest);
        if st.multipart.is_none() {
            let mut payload = self.read_segments(id, &st.segments).await?;
            payload.push(tail);
            self.inner.s3.put(&dest, PutPayload::from_iter(payload)).await.map_err(map_err)?;
        } else {
            let staging = self.complete(id, &st, &tail, size).await?;
            if size <= MAX_COPY {
                self.inner.s3.copy(&staging, &dest).await.map_err(map_err)?;
            } else {
                self.stream_copy(&staging, &dest).await?;
            }
        }
        // The blob is in place. Remove what the state names (no listing needed); bytes an
        // earlier failed request on the session left are the janitor's once the session is gone.
        let names = st.segments.iter().map(|seg| &seg.name).chain(&st.spent);
        let mut leftovers: Vec<Path> = names.map(|name| self.segment_key(id, name)).collect();
        if st.multipart.is_some() {
            leftovers.push(self.staging_key(id));
        }
        for key in leftovers {
            if let Err(e) = self.inner.s3.delete(&key).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(upload = %id, error = %e, "could not remove a committed upload's object; the janitor will");
            }
        }
        Ok(())
    }

    async fn abort_upload(&self, id: &UploadId, state: &[u8]) -> Result<()> {
        let st = UploadState::parse_with_tail(state).map(|(st, _)| st).unwrap_or_default();
        if let Some(mp) = &st.multipart {
            match self.inner.s3.abort_multipart(&self.staging_key(id), mp).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        self.remove_upload_objects(id).await
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>> {
        let prefix = self.key("uploads");
        let depth = prefix.parts().count();
        let mut newest: HashMap<UploadId, SystemTime> = HashMap::new();
        let mut listing = self.inner.s3.list(Some(&prefix));
        while let Some(m) = listing.next().await {
            let m = m.map_err(map_err)?;
            let Some(id) = m.location.parts().nth(depth).and_then(|p| p.as_ref().parse::<UploadId>().ok()) else { continue };
            let t = SystemTime::from(m.last_modified);
            let e = newest.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
        Ok(newest.into_iter().map(|(id, modified)| StoredUpload { id, modified }).collect())
    }
}
