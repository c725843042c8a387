//! A [`BlobStore`] wrapper that times every operation of the store it wraps and reports each one
//! to an [`Observer`], so metrics can be kept without this crate knowing any metrics library.
//!
//! Reported operations: `stat`, `get` (the time to open the stream, not to read it), `delete`,
//! `delete_many` (one report per call),
//! `list`, `inspect`, `presigned_get`, `upload_writer` (the time to open the writer), `read_upload` (to open
//! the stream), `commit_upload`, `abort_upload` and `list_uploads`. Failures are also logged at
//! debug level; the caller decides what else to do with them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oci::{ByteRange, Digest, UploadId};

use crate::{BlobInfo, BlobStore, ByteStream, Result, StorageError, StoredUpload, UploadWriter};

/// Receives `(driver, operation, duration, ok)` once per store operation.
pub type Observer = Arc<dyn Fn(&'static str, &'static str, Duration, bool) + Send + Sync>;

/// `inner`, with every operation timed and reported to the observer.
#[derive(Clone)]
pub struct Instrumented {
    inner: Arc<dyn BlobStore>,
    observer: Observer,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn BlobStore>, observer: Observer) -> Instrumented {
        Instrumented { inner, observer }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn BlobStore> {
        &self.inner
    }

    async fn timed<T>(&self, operation: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let result = f.await;
        let elapsed = start.elapsed();
        let driver = self.inner.driver();
        if let Err(e) = &result {
            tracing::debug!(driver, operation, error = %e, duration_ms = elapsed.as_secs_f64() * 1000.0, "storage operation failed");
        }
        (self.observer)(driver, operation, elapsed, result.is_ok());
        result
    }
}

#[async_trait]
impl BlobStore for Instrumented {
    fn driver(&self) -> &'static str {
        self.inner.driver()
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        self.timed("stat", self.inner.stat(digest)).await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream> {
        self.timed("get", self.inner.get(digest, range)).await
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        self.timed("delete", self.inner.delete(digest)).await
    }

    async fn delete_many(&self, digests: Vec<Digest>) -> Vec<(Digest, StorageError)> {
        // One observation per call, failed if any blob could not be removed.
        let start = Instant::now();
        let failed = self.inner.delete_many(digests).await;
        if let Some((d, e)) = failed.first() {
            tracing::debug!(driver = self.inner.driver(), failures = failed.len(), first = %d, error = %e, "storage operation failed");
        }
        (self.observer)(self.inner.driver(), "delete_many", start.elapsed(), failed.is_empty());
        failed
    }

    async fn list(&self) -> Result<Vec<Digest>> {
        self.timed("list", self.inner.list()).await
    }

    async fn inspect(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        self.timed("inspect", self.inner.inspect(digest)).await
    }

    async fn presigned_get(&self, digest: &Digest, expiry: Duration) -> Result<Option<String>> {
        self.timed("presigned_get", self.inner.presigned_get(digest, expiry)).await
    }

    async fn upload_writer(&self, id: &UploadId, offset: u64, state: &[u8]) -> Result<Box<dyn UploadWriter>> {
        self.timed("upload_writer", self.inner.upload_writer(id, offset, state)).await
    }

    async fn read_upload(&self, id: &UploadId, size: u64, state: &[u8]) -> Result<ByteStream> {
        self.timed("read_upload", self.inner.read_upload(id, size, state)).await
    }

    async fn commit_upload(&self, id: &UploadId, size: u64, state: &[u8], digest: &Digest) -> Result<()> {
        self.timed("commit_upload", self.inner.commit_upload(id, size, state, digest)).await
    }

    async fn abort_upload(&self, id: &UploadId, state: &[u8]) -> Result<()> {
        self.timed("abort_upload", self.inner.abort_upload(id, state)).await
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>> {
        self.timed("list_uploads", self.inner.list_uploads()).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::StorageError;
    use crate::fs::FsStore;

    type Seen = Arc<Mutex<HashMap<(&'static str, &'static str, bool), usize>>>;

    fn recording() -> (Observer, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let observer: Observer = Arc::new(move |driver, op, _elapsed, ok| {
            *s.lock().expect("lock").entry((driver, op, ok)).or_default() += 1;
        });
        (observer, seen)
    }

    #[tokio::test]
    async fn wrapped_fs_store_passes_the_suite_and_reports_every_operation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FsStore::open(dir.path(), false).expect("fs store");
        let (observer, seen) = recording();
        let store = Arc::new(Instrumented::new(Arc::new(fs), observer));
        assert_eq!(store.driver(), "filesystem");
        crate::testsuite::run(store.clone()).await;
        // The suite does not ask for a presigned URL; do it here so every operation is seen.
        let missing = Digest::sha256_of(b"never stored");
        assert_eq!(store.presigned_get(&missing, Duration::from_secs(60)).await.expect("presign"), None);

        let seen = seen.lock().expect("lock").clone();
        for op in [
            "stat",
            "get",
            "delete",
            "list",
            "presigned_get",
            "upload_writer",
            "read_upload",
            "commit_upload",
            "abort_upload",
            "list_uploads",
        ] {
            assert!(seen.get(&("filesystem", op, true)).copied().unwrap_or(0) > 0, "{op} was not reported as a success: {seen:?}");
        }
    }

    #[tokio::test]
    async fn failures_are_reported_as_not_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = FsStore::open(dir.path(), false).expect("fs store");
        let (observer, seen) = recording();
        let store = Instrumented::new(Arc::new(fs), observer);
        let missing = Digest::sha256_of(b"never stored");
        assert!(matches!(store.get(&missing, None).await, Err(StorageError::NotFound)));
        assert_eq!(store.stat(&missing).await.expect("stat"), None);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.get(&("filesystem", "get", false)), Some(&1), "{seen:?}");
        assert_eq!(seen.get(&("filesystem", "stat", true)), Some(&1), "{seen:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
}
