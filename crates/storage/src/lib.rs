//! Blob bytes: the [`BlobStore`] trait and its drivers.
//!
//! A blob store holds content-addressed blobs and the bytes of uploads in progress. It knows
//! nothing about HTTP, SQL, repositories or manifests, and it does not verify digests: the
//! registry engine hashes every byte on its way in and commits an upload under a digest only
//! after checking it. A driver's job is to make that commit atomic, so a blob is either entirely
//! present under its digest or absent, whatever crashes when.

pub mod fs;
pub mod instrumented;
pub mod s3;
pub mod testsuite;

use std::io;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use oci::{ByteRange, Digest, UploadId};

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The blob or upload is not in the store.
    #[error("not found")]
    NotFound,
    /// An upload was continued at an offset the store does not hold bytes up to.
    #[error("upload holds {held} bytes, cannot write at offset {offset}")]
    OffsetMismatch { held: u64, offset: u64 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A driver-specific failure (object storage errors and the like).
    #[error("{0}")]
    Backend(String),
    /// The backing service is overloaded or unreachable, and stayed so through the driver's
    /// retries (S3 throttling, 5xx, a dropped connection). The client may retry the request.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// An upload left in the store, for reclaiming abandoned ones.
#[derive(Debug, Clone)]
pub struct StoredUpload {
    pub id: UploadId,
    pub modified: SystemTime,
}

/// What [`BlobStore::inspect`] tells about a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
    /// When the blob was last written (committed), if the driver can tell.
    pub modified: Option<SystemTime>,
}

/// Appends bytes to an upload. Bytes written are not part of any blob until
/// [`BlobStore::commit_upload`]; a writer dropped without [`UploadWriter::finish`] may leave
/// some of them behind, which the next writer at the session's recorded offset discards.
#[async_trait]
pub trait UploadWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Flush what was written and return the driver state to keep with the session (opaque to
    /// the caller; the filesystem driver needs none, an object store keeps its part list).
    async fn finish(self: Box<Self>) -> Result<Vec<u8>>;

    /// Like [`UploadWriter::finish`], for the last request of an upload: the state returned is
    /// passed straight to [`BlobStore::commit_upload`] (or `read_upload`, then commit) by this
    /// process and never stored with the session, so a driver may keep the unflushed tail in
    /// memory inside it instead of writing it out (an object store then commits a small blob
    /// in one PUT).
    async fn finish_last(self: Box<Self>) -> Result<Vec<u8>> {
        self.finish().await
    }
}

/// Deletes [`BlobStore::delete_many`] keeps in flight at once, by default.
pub const DELETES_IN_FLIGHT: usize = 16;

/// Content-addressed blob storage. Held as `Arc<dyn BlobStore>`.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Driver name, for logs and metrics.
    fn driver(&self) -> &'static str;

    /// Size of a stored blob, or `None`.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Read a blob, or the inclusive `range` of it.
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream>;

    /// Remove a blob. Removing an absent blob is not an error.
    async fn delete(&self, digest: &Digest) -> Result<()>;

    /// Remove many blobs (garbage collection); returns those that could not be removed, with
    /// why. Removing an absent blob is not an error. Drivers override it where a batch is
    /// cheaper than its parts: the filesystem removes a batch of files per blocking task
    /// rather than handing each file to a thread.
    async fn delete_many(&self, digests: Vec<Digest>) -> Vec<(Digest, StorageError)> {
        use futures::StreamExt;
        futures::stream::iter(digests)
            .map(|d| async move { self.delete(&d).await.err().map(|e| (d, e)) })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Every stored blob (for scrubs and orphan collection, never on a request path).
    async fn list(&self) -> Result<Vec<Digest>>;

    /// Size and write time of a stored blob, or `None` (for scrubs: an unrecorded blob's age
    /// tells a crash's leftovers from a push about to record it). Without a write time from
    /// the driver, such a blob is never deleted.
    async fn inspect(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        Ok(self.stat(digest).await?.map(|size| BlobInfo { size, modified: None }))
    }

    /// A URL a client can fetch the blob from directly, if the driver can issue one.
    async fn presigned_get(&self, _digest: &Digest, _expiry: Duration) -> Result<Option<String>> {
        Ok(None)
    }

    /// Open a writer continuing upload `id` at `offset` (the number of bytes the session has
    /// accepted so far). `state` is what the previous writer's `finish` returned, or empty.
    async fn upload_writer(&self, id: &UploadId, offset: u64, state: &[u8]) -> Result<Box<dyn UploadWriter>>;

    /// Read back the first `size` bytes of an upload in progress. Used only when the final digest
    /// uses another algorithm than the one hashed while receiving (the session cannot know in
    /// advance whether the client will close it with a sha512 digest).
    async fn read_upload(&self, id: &UploadId, size: u64, state: &[u8]) -> Result<ByteStream>;

    /// Make the first `size` bytes of upload `id` the blob `digest`, atomically, and remove the
    /// upload. The caller has verified that those bytes hash to `digest`. Committing a digest
    /// that is already stored keeps one copy.
    async fn commit_upload(&self, id: &UploadId, size: u64, state: &[u8], digest: &Digest) -> Result<()>;

    /// Discard an upload. Discarding an absent upload is not an error.
    async fn abort_upload(&self, id: &UploadId, state: &[u8]) -> Result<()>;

    /// Uploads present in the store, to reclaim those no session refers to any more.
    async fn list_uploads(&self) -> Result<Vec<StoredUpload>>;
}
