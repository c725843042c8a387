//! A backing service that is overloaded or unreachable is reported as `503 UNAVAILABLE` with
//! `Retry-After`, never as a 500: clients (docker, containerd) back off and retry those.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::StatusCode;
use oci::{ByteRange, Digest, UploadId};
use registry::{Registry, RegistryConfig};
use storage::{BlobStore, ByteStream, StorageError, StoredUpload, UploadWriter};
use support::TestRegistry;

/// The filesystem store, answering `Unavailable` (as the S3 driver does once its retries of a
/// throttled or failing service are spent) while `down` is set.
struct Flaky {
    inner: storage::fs::FsStore,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> storage::Result<()> {
        if self.down.load(Ordering::SeqCst) { Err(StorageError::Unavailable("503 SlowDown after 10 retries".into())) } else { Ok(()) }
    }
}

#[async_trait]
impl BlobStore for Flaky {
    fn driver(&self) -> &'static str {
        "flaky"
    }
    async fn stat(&self, d: &Digest) -> storage::Result<Option<u64>> {
        self.check()?;
        self.inner.stat(d).await
    }
    async fn get(&self, d: &Digest, r: Option<ByteRange>) -> storage::Result<ByteStream> {
        self.check()?;
        self.inner.get(d, r).await
    }
    async fn delete(&self, d: &Digest) -> storage::Result<()> {
        self.check()?;
        self.inner.delete(d).await
    }
    async fn list(&self) -> storage::Result<Vec<Digest>> {
        self.check()?;
        self.inner.list().await
    }
    async fn presigned_get(&self, d: &Digest, e: Duration) -> storage::Result<Option<String>> {
        self.inner.presigned_get(d, e).await
    }
    async fn upload_writer(&self, id: &UploadId, offset: u64, state: &[u8]) -> storage::Result<Box<dyn UploadWriter>> {
        self.check()?;
        self.inner.upload_writer(id, offset, state).await
    }
    async fn read_upload(&self, id: &UploadId, size: u64, state: &[u8]) -> storage::Result<ByteStream> {
        self.check()?;
        self.inner.read_upload(id, size, state).await
    }
    async fn commit_upload(&self, id: &UploadId, size: u64, state: &[u8], d: &Digest) -> storage::Result<()> {
        self.check()?;
        self.inner.commit_upload(id, size, state, d).await
    }
    async fn abort_upload(&self, id: &UploadId, state: &[u8]) -> storage::Result<()> {
        self.inner.abort_upload(id, state).await
    }
    async fn list_uploads(&self) -> storage::Result<Vec<StoredUpload>> {
        self.inner.list_uploads().await
    }
}

async fn flaky_registry() -> (TestRegistry, Arc<AtomicBool>, meta::MetaStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let down = Arc::new(AtomicBool::new(false));
    let blobs = Flaky { inner: storage::fs::FsStore::open(dir.path(), false).expect("fs"), down: down.clone() };
    let meta = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("sqlite");
    let registry = Registry::new(meta.clone(), Arc::new(blobs), RegistryConfig::default());
    (TestRegistry { router: server::router(registry.clone()), registry, dir }, down, meta)
}

fn assert_unavailable(r: &support::Resp, what: &str) {
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"), "{what}");
    assert_eq!(r.error_code(), "UNAVAILABLE", "{what}");
    assert!(!String::from_utf8_lossy(&r.body).contains("SlowDown"), "{what}: backend details stay in the log");
}

#[tokio::test]
async fn storage_trouble_is_a_503_with_retry_after_then_recovers() {
    let (t, down, _meta) = flaky_registry().await;
    let d = t.push_blob("app", b"layer bytes").await;
    down.store(true, Ordering::SeqCst);
    assert_unavailable(&t.get(&format!("/v2/app/blobs/{d}")).await, "blob GET");
    let fresh = support::sha256(b"other bytes");
    let r = t.req("POST", &format!("/v2/app/blobs/uploads/?digest={fresh}"), &[], &b"other bytes"[..]).await;
    assert_unavailable(&r, "monolithic upload");
    // HEAD is answered by the database alone: storage trouble does not touch it.
    assert_eq!(t.req("HEAD", &format!("/v2/app/blobs/{d}"), &[], "").await.status, StatusCode::OK);
    down.store(false, Ordering::SeqCst);
    assert_eq!(t.get(&format!("/v2/app/blobs/{d}")).await.body.as_ref(), b"layer bytes");
    let r = t.req("POST", &format!("/v2/app/blobs/uploads/?digest={fresh}"), &[], &b"other bytes"[..]).await;
    assert_eq!(r.status, StatusCode::CREATED, "the retried upload succeeds");
}

#[tokio::test]
async fn a_database_that_went_away_is_a_503() {
    let (t, _down, meta) = flaky_registry().await;
    meta.close().await;
    assert_unavailable(&t.get("/v2/app/tags/list").await, "tags list with the database gone");
}
