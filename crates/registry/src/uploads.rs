//! Blob reads, uploads (monolithic, chunked, streamed), mounts and blob deletes.
//!
//! Every byte received is hashed on the way to storage. The session's sha256 state is saved with
//! it after each chunk, so the final PUT verifies without re-reading; a client that closes with a
//! digest of another algorithm (sha512) is verified by re-reading the stored bytes once. A blob
//! is committed in storage only after its digest is verified, and recorded in the database only
//! after the commit returns, so neither a crash nor bad input can make a partial blob visible.

use bytes::Bytes;
use futures::StreamExt;
use oci::{Algorithm, ByteRange, Digest, Hasher, RepoName, UploadId};
use storage::{ByteStream, UploadWriter};

use crate::events::EventFacts;
use crate::{Error, Registry, Result};

/// The media type events report for blobs.
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub id: UploadId,
    /// Bytes accepted so far.
    pub offset: u64,
}

/// An open blob read.
pub struct BlobRead {
    /// Size of the whole blob.
    pub size: u64,
    /// The part being returned, when a satisfiable range was asked for.
    pub range: Option<ByteRange>,
    pub body: ByteStream,
}

/// Marks a session busy on this node for the life of one request.
struct BusyGuard {
    registry: Registry,
    id: UploadId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.registry.inner.busy_uploads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

/// How long a push waits for a garbage collection to finish deleting the digest it pushes,
/// and how often it looks.
const COLLECTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const COLLECTING_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Bytes gathered before they are hashed off the request's task.
const HASH_BATCH: usize = 1 << 20;

/// Hashes a stream in batches on the blocking pool, one batch in flight, so that receiving,
/// hashing and writing proceed in parallel on a large upload. Bodies smaller than one batch are
/// hashed in place (a thread hand-off would cost more than the hashing).
struct HashPipe {
    /// The hasher, when no batch is in flight.
    hasher: Option<Hasher>,
    /// The batch being hashed; it hands the hasher back.
    pending: Option<tokio::task::JoinHandle<Hasher>>,
    batch: Vec<Bytes>,
    batch_len: usize,
}

impl HashPipe {
    fn new(hasher: Hasher) -> HashPipe {
        HashPipe { hasher: Some(hasher), pending: None, batch: Vec::new(), batch_len: 0 }
    }

    async fn take(&mut self) -> Result<Hasher> {
        match self.pending.take() {
            Some(h) => h.await.map_err(|e| Error::Internal(format!("hashing task failed: {e}"))),
            None => Ok(self.hasher.take().expect("the pipe holds its hasher or a pending batch")),
        }
    }

    async fn update(&mut self, chunk: &Bytes) -> Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk.clone());
        if self.batch_len >= HASH_BATCH {
            let mut hasher = self.take().await?;
            let batch = std::mem::take(&mut self.batch);
            self.batch_len = 0;
            self.pending = Some(tokio::task::spawn_blocking(move || {
                batch.iter().for_each(|b| hasher.update(b));
                hasher
            }));
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Hasher> {
        let mut hasher = self.take().await?;
        self.batch.iter().for_each(|b| hasher.update(b));
        Ok(hasher)
    }
}

/// Copy `body` into `writer`, hashing it with `hasher`; returns the hasher and the byte count.
async fn pump(body: &mut ByteStream, hasher: Hasher, writer: &mut dyn UploadWriter) -> Result<(Hasher, u64)> {
    let mut pipe = HashPipe::new(hasher);
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Body(e.to_string()))?;
        pipe.update(&chunk).await?;
        n += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    Ok((pipe.finish().await?, n))
}

impl Registry {
    fn busy(&self, id: &UploadId) -> Result<BusyGuard> {
        let mut busy = self.inner.busy_uploads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !busy.insert(id.clone()) {
            return Err(Error::UploadInvalid("another request is writing to this upload".into()));
        }
        Ok(BusyGuard { registry: self.clone(), id: id.clone() })
    }

    /// The session `id` of `repo`, if it exists and has not expired.
    async fn session(&self, repo: &RepoName, id: &UploadId) -> Result<meta::UploadSession> {
        let s = self.inner.meta.upload(id).await?.ok_or(Error::UploadUnknown)?;
        let idle = s.updated_at.elapsed().unwrap_or_default();
        if s.repository != *repo || idle > self.inner.config.upload_expiry {
            return Err(Error::UploadUnknown);
        }
        Ok(s)
    }

    /// Size of `digest` if `repo` holds it (no storage call: the database knows).
    pub async fn blob_stat(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        self.inner.meta.blob_in_repo(repo, digest).await?.ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    /// Open `digest` of `repo` for reading, honouring a `Range` header.
    pub async fn blob_get(&self, repo: &RepoName, digest: &Digest, range_header: Option<&str>) -> Result<BlobRead> {
        let size = self.blob_stat(repo, digest).await?;
        let range = match range_header.map(|h| oci::range::parse_range(h, size)).transpose() {
            Ok(r) => r.flatten(),
            Err(_) => return Err(Error::RangeNotSatisfiable { size }),
        };
        let body = match self.inner.blobs.get(digest, range).await {
            Ok(b) => b,
            Err(storage::StorageError::NotFound) => {
                tracing::error!(%digest, "blob recorded in metadata is missing from storage");
                return Err(Error::BlobUnknown(digest.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        if range.is_none() {
            self.pulled(EventFacts { action: "pull", repo, digest: Some(digest.to_string()), tag: None, media_type: Some(BLOB_MEDIA_TYPE.into()), size: Some(size), from: None });
        }
        Ok(BlobRead { size, range, body })
    }

    /// A URL the client can fetch `digest` of `repo` from directly, when redirects are enabled
    /// and the storage driver can sign one. Signing is local: no storage request is made.
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let Some(expiry) = self.inner.config.blob_redirect else { return Ok(None) };
        let size = self.blob_stat(repo, digest).await?;
        let url = self.inner.blobs.presigned_get(digest, expiry).await?;
        if url.is_some() {
            self.pulled(EventFacts { action: "pull", repo, digest: Some(digest.to_string()), tag: None, media_type: Some(BLOB_MEDIA_TYPE.into()), size: Some(size), from: None });
        }
        Ok(url)
    }

    /// Unlink `digest` from `repo`. The bytes stay until garbage collection finds no user.
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.require_delete()?;
        let events = [self.event(EventFacts { action: "delete", repo, digest: Some(digest.to_string()), tag: None, media_type: Some(BLOB_MEDIA_TYPE.into()), size: None, from: None })];
        if self.inner.meta.unlink_blob(repo, digest, &events).await? {
            self.committed(&events);
            Ok(())
        } else {
            Err(Error::BlobUnknown(digest.clone()))
        }
    }

    /// Open an upload session.
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadState> {
        let id: UploadId = uuid::Uuid::new_v4().to_string().parse().map_err(|_| Error::Internal("uuid".into()))?;
        self.inner.meta.create_upload(&id, repo, &Hasher::new(Algorithm::Sha256).save()).await?;
        Ok(UploadState { id, offset: 0 })
    }

    /// Cross-repository mount. `Ok(false)` when the blob is not available to mount (the caller
    /// then opens an ordinary upload session, as the spec asks).
    pub async fn blob_mount(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>) -> Result<bool> {
        let events = [self.event(EventFacts { action: "mount", repo, digest: Some(digest.to_string()), tag: None, media_type: Some(BLOB_MEDIA_TYPE.into()), size: None, from })];
        let mounted = self.inner.meta.mount_blob(repo, digest, from, &events).await?.is_some();
        if mounted {
            self.committed(&events);
        }
        Ok(mounted)
    }

    /// Where session `id` stands.
    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadState> {
        let s = self.session(repo, id).await?;
        Ok(UploadState { id: s.id, offset: s.offset })
    }

    /// Cancel session `id` and discard its bytes.
    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let _guard = self.busy(id)?;
        let s = self.session(repo, id).await?;
        self.inner.meta.delete_upload(id).await?;
        self.inner.blobs.abort_upload(id, &s.driver_state).await?;
        Ok(())
    }

    /// Append `body` to session `id`. With `range` (a `Content-Range`), the chunk must start at
    /// the session's offset and carry exactly that many bytes.
    pub async fn upload_chunk(&self, repo: &RepoName, id: &UploadId, range: Option<ByteRange>, body: ByteStream) -> Result<UploadState> {
        let _guard = self.busy(id)?;
        let s = self.session(repo, id).await?;
        let (hasher, driver_state, n) = self.append(&s, range, body, false).await?;
        let offset = s.offset + n;
        let update = meta::UploadUpdate {
            id,
            expected_offset: s.offset,
            offset,
            hash_state: &hasher.save(),
            driver_state: &driver_state,
        };
        match self.inner.meta.update_upload(&update).await {
            Ok(()) => Ok(UploadState { id: id.clone(), offset }),
            Err(meta::MetaError::Conflict) => Err(Error::RangeInvalid { offset: s.offset }),
            Err(e) => Err(e.into()),
        }
    }

    /// Write `body` after what session `s` holds; returns the hash state, driver state and the
    /// number of bytes written. Nothing is recorded: the caller updates or finishes the session.
    /// `last`: the caller commits right away, so the driver may keep the tail in memory.
    async fn append(&self, s: &meta::UploadSession, range: Option<ByteRange>, mut body: ByteStream, last: bool) -> Result<(Hasher, Vec<u8>, u64)> {
        if let Some(r) = range
            && r.start != s.offset
        {
            return Err(Error::RangeInvalid { offset: s.offset });
        }
        let hasher = Hasher::restore(Algorithm::Sha256, &s.hash_state).map_err(|e| Error::Internal(e.to_string()))?;
        let mut writer = self.inner.blobs.upload_writer(&s.id, s.offset, &s.driver_state).await?;
        let (hasher, n) = pump(&mut body, hasher, writer.as_mut()).await?;
        let driver_state = if last { writer.finish_last().await? } else { writer.finish().await? };
        if let Some(r) = range
            && n != r.len()
        {
            return Err(Error::SizeInvalid(format!("Content-Range announced {} bytes, the body had {n}", r.len())));
        }
        Ok((hasher, driver_state, n))
    }

    /// Close session `id` as blob `digest`, appending `body` first if there is one.
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<ByteRange>,
        body: Option<ByteStream>,
    ) -> Result<u64> {
        let _guard = self.busy(id)?;
        let s = self.session(repo, id).await?;
        let (hasher, driver_state, size) = match body {
            Some(body) => {
                let (h, d, n) = self.append(&s, range, body, true).await?;
                (h, d, s.offset + n)
            }
            None => {
                let h = Hasher::restore(Algorithm::Sha256, &s.hash_state).map_err(|e| Error::Internal(e.to_string()))?;
                (h, s.driver_state.clone(), s.offset)
            }
        };
        let actual = if digest.algorithm() == Algorithm::Sha256 {
            hasher.finish()
        } else {
            self.rehash(id, size, &driver_state, digest.algorithm()).await?
        };
        if actual != *digest {
            return Err(Error::DigestMismatch { expected: digest.clone(), actual });
        }
        self.admit_blob(repo, id, digest, size, &driver_state, true).await?;
        self.commit(repo, id, digest, size, &driver_state, true).await?;
        Ok(size)
    }

    /// Upload a whole blob in one request (`POST ?digest=`).
    pub async fn upload_whole(&self, repo: &RepoName, digest: &Digest, mut body: ByteStream) -> Result<u64> {
        let id: UploadId = uuid::Uuid::new_v4().to_string().parse().map_err(|_| Error::Internal("uuid".into()))?;
        let result = async {
            let mut writer = self.inner.blobs.upload_writer(&id, 0, &[]).await?;
            let (hasher, n) = pump(&mut body, Hasher::new(digest.algorithm()), writer.as_mut()).await?;
            Ok::<_, Error>((hasher, n, writer.finish_last().await?))
        }
        .await;
        let (hasher, size, driver_state) = match result {
            Ok(r) => r,
            Err(e) => {
                self.discard(&id, &[]).await;
                return Err(e);
            }
        };
        let actual = hasher.finish();
        if actual != *digest {
            self.discard(&id, &driver_state).await;
            return Err(Error::DigestMismatch { expected: digest.clone(), actual });
        }
        self.admit_blob(repo, &id, digest, size, &driver_state, false).await?;
        self.commit(repo, &id, digest, size, &driver_state, false).await?;
        Ok(size)
    }

    async fn discard(&self, id: &UploadId, driver_state: &[u8]) {
        if let Err(e) = self.inner.blobs.abort_upload(id, driver_state).await {
            tracing::warn!(upload = %id, error = %e, "could not discard upload; the janitor will retry");
        }
    }

    async fn rehash(&self, id: &UploadId, size: u64, driver_state: &[u8], algorithm: Algorithm) -> Result<Digest> {
        let mut h = Hasher::new(algorithm);
        let mut stream = self.inner.blobs.read_upload(id, size, driver_state).await?;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|e| Error::Internal(format!("re-reading upload: {e}")))?;
            h.update(&chunk);
        }
        Ok(h.finish())
    }

    /// Make the verified upload the blob `digest` and link it to `repo`.
    ///
    /// A blob already recorded (many clients push the same base layers) is linked under a
    /// share lock and the upload discarded; otherwise the upload is committed in storage and
    /// then recorded, unless a garbage collection deleted the digest in between (see
    /// `meta::gc`): then the client is told to retry.
    async fn commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest, size: u64, driver_state: &[u8], has_session: bool) -> Result<()> {
        let events = [self.event(EventFacts { action: "push", repo, digest: Some(digest.to_string()), tag: None, media_type: Some(BLOB_MEDIA_TYPE.into()), size: Some(size), from: None })];
        let session = has_session.then_some(id);
        let mut waited = std::time::Duration::ZERO;
        loop {
            match self.inner.meta.link_existing(repo, digest, None, Some(size), session, &events).await? {
                meta::Dedup::Linked(_) => self.discard(id, driver_state).await,
                meta::Dedup::Absent { mark } => {
                    self.inner.blobs.commit_upload(id, size, driver_state, digest).await?;
                    self.inner.meta.link_new(repo, digest, size, Some(mark), session, &events).await?;
                }
                // A collection is deleting this digest's old bytes: storing ours now could be
                // undone by that delete. It takes moments; past a bound, the client retries.
                meta::Dedup::Collecting if waited < COLLECTING_WAIT => {
                    tokio::time::sleep(COLLECTING_POLL).await;
                    waited += COLLECTING_POLL;
                    continue;
                }
                meta::Dedup::Collecting => return Err(Error::Unavailable(format!("{digest} is being garbage collected; retry the upload"))),
            }
            break;
        }
        self.committed(&events);
        Ok(())
    }
}

/// A stream over one buffer, for callers that hold small bodies in memory.
pub fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}
