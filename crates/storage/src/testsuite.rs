//! The behaviour every [`BlobStore`] driver must show. Each driver's tests call [`run`] on a fresh
//! store; a new driver is done when this passes against the real service it talks to.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use oci::{ByteRange, Digest, UploadId};

use crate::{BlobStore, StorageError};

fn id(n: u8) -> UploadId {
    format!("00000000-0000-4000-8000-0000000000{n:02x}").parse().expect("valid id")
}

async fn read_all(store: &dyn BlobStore, d: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.get(d, range).await.expect("get").try_collect().await.expect("read");
    chunks.concat()
}

async fn upload(store: &dyn BlobStore, upload: &UploadId, parts: &[&[u8]]) -> (Digest, u64) {
    let mut offset = 0u64;
    let mut state = Vec::new();
    let mut all = Vec::new();
    for part in parts {
        let mut w = store.upload_writer(upload, offset, &state).await.expect("writer");
        // Feed in small pieces to exercise buffering.
        for piece in part.chunks(7919) {
            w.write(Bytes::copy_from_slice(piece)).await.expect("write");
        }
        state = w.finish().await.expect("finish");
        offset += part.len() as u64;
        all.extend_from_slice(part);
    }
    let d = Digest::sha256_of(&all);
    store.commit_upload(upload, offset, &state, &d).await.expect("commit");
    (d, offset)
}

/// Run every check against `store`, panicking on the first failure.
pub async fn run(store: Arc<dyn BlobStore>) {
    let s = store.as_ref();

    // Multi-part upload, larger than one I/O chunk, then full and ranged reads.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (d, size) = upload(s, &id(1), &[&big[..1_234_567], &big[1_234_567..]]).await;
    assert_eq!(size, big.len() as u64);
    assert_eq!(s.stat(&d).await.expect("stat"), Some(size));
    assert_eq!(read_all(s, &d, None).await, big);
    let r = ByteRange { start: 1_000_000, end: 2_500_000 };
    assert_eq!(read_all(s, &d, Some(r)).await, &big[1_000_000..=2_500_000]);
    assert!(s.list().await.expect("list").contains(&d));

    // The same content committed again keeps one readable copy.
    let (d2, _) = upload(s, &id(2), &[&big]).await;
    assert_eq!(d2, d);
    assert_eq!(read_all(s, &d, None).await.len(), big.len());

    // An empty blob.
    let (empty, size) = upload(s, &id(3), &[]).await;
    assert_eq!(size, 0);
    assert_eq!(s.stat(&empty).await.expect("stat"), Some(0));
    assert!(read_all(s, &empty, None).await.is_empty());

    // A writer reopened at the accepted offset discards bytes a failed request left behind.
    let u = id(4);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    w.write(Bytes::from_static(b"abc")).await.expect("write");
    let state = w.finish().await.expect("finish");
    let mut w = s.upload_writer(&u, 3, &state).await.expect("writer");
    w.write(Bytes::from_static(b"GARBAGE")).await.expect("write");
    drop(w.finish().await.expect("finish"));
    let mut w = s.upload_writer(&u, 3, &state).await.expect("writer");
    w.write(Bytes::from_static(b"def")).await.expect("write");
    let state = w.finish().await.expect("finish");
    let back: Vec<Bytes> = s.read_upload(&u, 6, &state).await.expect("read upload").try_collect().await.expect("read");
    assert_eq!(back.concat(), b"abcdef");
    let d3 = Digest::sha256_of(b"abcdef");
    s.commit_upload(&u, 6, &state, &d3).await.expect("commit");
    assert_eq!(read_all(s, &d3, None).await, b"abcdef");

    // A writer cannot skip ahead of what is held.
    let u = id(5);
    let r = async {
        let mut w = s.upload_writer(&u, 10, &[]).await?;
        w.write(Bytes::from_static(b"x")).await?;
        w.finish().await
    }
    .await;
    assert!(matches!(r, Err(StorageError::OffsetMismatch { .. })), "skipping ahead must fail");
    let r = async { s.upload_writer(&u, 10, &[]).await?.finish().await }.await;
    assert!(matches!(r, Err(StorageError::OffsetMismatch { .. })), "even without bytes");

    // Abort removes an upload; aborting twice is fine.
    let u = id(6);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    w.write(Bytes::from_static(b"x")).await.expect("write");
    let state = w.finish().await.expect("finish");
    assert!(s.list_uploads().await.expect("list uploads").iter().any(|x| x.id == u));
    s.abort_upload(&u, &state).await.expect("abort");
    s.abort_upload(&u, &state).await.expect("abort twice");
    assert!(!s.list_uploads().await.expect("list uploads").iter().any(|x| x.id == u));

    // Delete, and reads of what is absent.
    s.delete(&d3).await.expect("delete");
    s.delete(&d3).await.expect("delete twice");
    assert_eq!(s.stat(&d3).await.expect("stat"), None);
    assert!(matches!(s.get(&d3, None).await, Err(StorageError::NotFound)));
}
