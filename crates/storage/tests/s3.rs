//! The driver suite against a real S3 service (Ceph RGW in the test run), plus what only a
//! shared object store shows: an upload started through one gateway and continued through
//! another, and a throttled service answered with `Unavailable`, not a failure.
//!
//! Needs `TEST_S3_ENDPOINT`, `TEST_S3_ENDPOINT_B` (a second gateway of the same cluster),
//! `TEST_S3_ACCESS_KEY`, `TEST_S3_SECRET_KEY`, `TEST_S3_BUCKET` and `TEST_S3_REGION`:
//!
//! ```sh
//! scripts/services.sh start rgw /tmp/berth-services && . /tmp/berth-services/env
//! cargo test -p berth-storage --test s3
//! ```
//!
//! Without them the tests pass with a notice, except under `CI=true`, where they fail.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use oci::{Digest, UploadId};
use storage::s3::{S3Options, S3Store};
use storage::{BlobStore, StorageError};

const NOT_CONFIGURED: &str = "S3 not configured: run scripts/services.sh start rgw DIR and source DIR/env";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Options for the test bucket under a fresh prefix, or `None` (after a notice) without S3.
fn options(endpoint_var: &str) -> Option<S3Options> {
    let Some(endpoint) = env(endpoint_var) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{NOT_CONFIGURED} ({endpoint_var} is unset and CI=true)");
        let notice = format!("\n*** SKIPPED, NOT TESTED ON S3: {NOT_CONFIGURED} ({endpoint_var} is unset) ***\n");
        let _ = std::io::stderr().write_all(notice.as_bytes());
        return None;
    };
    let var = |n: &str| env(n).unwrap_or_else(|| panic!("{n} must be set with {endpoint_var}"));
    let mut o = S3Options::new(var("TEST_S3_BUCKET"), var("TEST_S3_REGION"));
    o.endpoint = Some(endpoint);
    o.path_style = true;
    o.access_key_id = Some(var("TEST_S3_ACCESS_KEY"));
    o.secret_access_key = Some(var("TEST_S3_SECRET_KEY"));
    o.prefix = format!("test-{}", uuid::Uuid::new_v4());
    o.part_size = 5 << 20;
    Some(o)
}

#[tokio::test]
async fn passes_the_driver_suite() {
    let Some(o) = options("TEST_S3_ENDPOINT") else { return };
    let store = S3Store::open(&o).expect("open");
    store.check().await.expect("bucket reachable");
    storage::testsuite::run(Arc::new(store)).await;
}

#[tokio::test]
async fn passes_the_large_upload_suite() {
    let Some(o) = options("TEST_S3_ENDPOINT") else { return };
    let part = o.part_size as usize;
    storage::testsuite::run_large(Arc::new(S3Store::open(&o).expect("open")), part).await;
}

#[tokio::test]
async fn an_upload_continues_through_another_gateway() {
    let Some(a) = options("TEST_S3_ENDPOINT") else { return };
    let mut b = a.clone();
    b.endpoint = Some(env("TEST_S3_ENDPOINT_B").expect("TEST_S3_ENDPOINT_B must be set with TEST_S3_ENDPOINT"));
    let (a, b) = (S3Store::open(&a).expect("open a"), S3Store::open(&b).expect("open b"));
    let id: UploadId = "00000000-0000-4000-8000-0000000000a1".parse().expect("id");
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 253) as u8).collect();
    // Alternate gateways per chunk: a part sent through one, a tail through the other.
    let mut state = Vec::new();
    let mut offset = 0u64;
    for (i, chunk) in data.chunks(3 << 20).enumerate() {
        let store: &dyn BlobStore = if i % 2 == 0 { &a } else { &b };
        let mut w = store.upload_writer(&id, offset, &state).await.expect("writer");
        w.write(Bytes::copy_from_slice(chunk)).await.expect("write");
        state = w.finish().await.expect("finish");
        offset += chunk.len() as u64;
    }
    let d = Digest::sha256_of(&data);
    b.commit_upload(&id, offset, &state, &d).await.expect("commit through b");
    let back: Vec<Bytes> = a.get(&d, None).await.expect("get through a").try_collect().await.expect("read");
    assert!(back.concat() == data);
    a.delete(&d).await.expect("delete");
}

#[tokio::test]
async fn presigned_urls_fetch_the_blob_without_credentials() {
    let Some(o) = options("TEST_S3_ENDPOINT") else { return };
    let store = S3Store::open(&o).expect("open");
    let id: UploadId = "00000000-0000-4000-8000-0000000000b1".parse().expect("id");
    let mut w = store.upload_writer(&id, 0, &[]).await.expect("writer");
    w.write(Bytes::from_static(b"presigned bytes")).await.expect("write");
    let state = w.finish().await.expect("finish");
    let d = Digest::sha256_of(b"presigned bytes");
    store.commit_upload(&id, 15, &state, &d).await.expect("commit");
    let url = store.presigned_get(&d, Duration::from_secs(60)).await.expect("sign").expect("a URL");
    let resp = reqwest::get(&url).await.expect("fetch");
    assert_eq!(resp.status(), 200, "{url}");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"presigned bytes");
    // An unsigned request for the same object is refused: the bucket is not public.
    let bare = url.split('?').next().expect("url").to_owned();
    assert_eq!(reqwest::get(&bare).await.expect("fetch").status(), 403);
}

#[tokio::test]
async fn an_unreachable_service_is_unavailable_not_a_failure() {
    let Some(mut o) = options("TEST_S3_ENDPOINT") else { return };
    // A port nothing listens on: connection refused on every retry.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    o.endpoint = Some(format!("http://127.0.0.1:{port}"));
    o.max_retries = 2;
    o.retry_timeout = Duration::from_secs(5);
    let store = S3Store::open(&o).expect("open");
    let d = Digest::sha256_of(b"x");
    assert!(matches!(store.stat(&d).await, Err(StorageError::Unavailable(_))));
    assert!(matches!(store.get(&d, None).await.err(), Some(StorageError::Unavailable(_))));
}

/// A stand-in S3 that answers every request `503 SlowDown`, counting them.
async fn throttling_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                let mut got = Vec::new();
                // Read one request's headers (the requests under test carry no body).
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let resp = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_throttling_service_is_retried_then_unavailable() {
    let (url, count) = throttling_server().await;
    let mut o = S3Options::new("bucket", "us-east-1");
    o.endpoint = Some(url);
    o.path_style = true;
    o.access_key_id = Some("k".into());
    o.secret_access_key = Some("s".into());
    o.max_retries = 3;
    o.retry_timeout = Duration::from_secs(10);
    let store = S3Store::open(&o).expect("open");
    let d = Digest::sha256_of(b"x");
    let err = store.get(&d, None).await.err().expect("a throttled get fails");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4, "the first attempt and three retries");
    let id: UploadId = "00000000-0000-4000-8000-0000000000c1".parse().expect("id");
    let w = store.upload_writer(&id, 0, &[]).await.expect("writer");
    // An empty finish sends nothing; a commit must write and is throttled.
    let state = w.finish().await.expect("finish");
    assert!(matches!(store.commit_upload(&id, 0, &state, &Digest::sha256_of(b"")).await, Err(StorageError::Unavailable(_))));
}
