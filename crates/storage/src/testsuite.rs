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
    let info = s.inspect(&d).await.expect("inspect").expect("a stored blob");
    assert_eq!(info.size, size);
    let recent = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).is_ok_and(|a| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).is_ok_and(|now| now.abs_diff(a) < std::time::Duration::from_secs(3600)));
    assert!(info.modified.is_none_or(recent), "{info:?}: written just now (give or take a clock skew)");

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

    // The last request of an upload may keep its tail in memory for the commit (finish_last).
    let u = id(7);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    w.write(Bytes::from_static(b"hello ")).await.expect("write");
    let state = w.finish().await.expect("finish");
    let mut w = s.upload_writer(&u, 6, &state).await.expect("writer");
    w.write(Bytes::from_static(b"world")).await.expect("write");
    let state = w.finish_last().await.expect("finish last");
    let back: Vec<Bytes> = s.read_upload(&u, 11, &state).await.expect("read upload").try_collect().await.expect("read");
    assert_eq!(back.concat(), b"hello world");
    let hw = Digest::sha256_of(b"hello world");
    s.commit_upload(&u, 11, &state, &hw).await.expect("commit");
    assert_eq!(read_all(s, &hw, None).await, b"hello world");
    assert!(!s.list_uploads().await.expect("list uploads").iter().any(|x| x.id == u), "nothing left of a committed upload");
    let u = id(8);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    w.write(Bytes::from_static(b"in one go")).await.expect("write");
    let state = w.finish_last().await.expect("finish last");
    let one = Digest::sha256_of(b"in one go");
    s.commit_upload(&u, 9, &state, &one).await.expect("commit");
    assert_eq!(read_all(s, &one, None).await, b"in one go");

    // Delete, and reads of what is absent.
    s.delete(&d3).await.expect("delete");
    s.delete(&d3).await.expect("delete twice");
    assert_eq!(s.stat(&d3).await.expect("stat"), None);
    assert_eq!(s.inspect(&d3).await.expect("inspect"), None);
    assert!(matches!(s.get(&d3, None).await, Err(StorageError::NotFound)));

    // Many at once (garbage collection), absent ones included; the others stay.
    let failed = s.delete_many(vec![hw.clone(), d3.clone(), one.clone()]).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(s.stat(&hw).await.expect("stat"), None);
    assert_eq!(s.stat(&one).await.expect("stat"), None);
    assert!(s.list().await.expect("list").contains(&d2), "a blob not named stays");
}

/// Uploads larger than an object store's part: chunks of very different sizes (a tiny first
/// chunk, one larger than a part, a run of 64 KiB chunks as ORAS sends them), a writer that
/// fails halfway and is retried, a re-read of a multi-part upload (the sha512 close), and an
/// abort of one. `part` is the driver's part size (any value for drivers without parts).
pub async fn run_large(store: Arc<dyn BlobStore>, part: usize) {
    let s = store.as_ref();
    let total = 2 * part + part / 2 + 12_345;
    let data: Vec<u8> = (0..total as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut chunks: Vec<&[u8]> = vec![&data[..100]];
    let big_end = 100 + part + 1_000;
    chunks.push(&data[100..big_end]);
    let mut at = big_end;
    for _ in 0..20 {
        chunks.push(&data[at..at + 65_536]);
        at += 65_536;
    }
    chunks.push(&data[at..]);

    let u = id(0x21);
    let mut offset = 0u64;
    let mut state = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        if i == 2 {
            // A request that dies after sending most of a chunk: nothing of it is recorded.
            let mut w = s.upload_writer(&u, offset, &state).await.expect("writer");
            for piece in data[..part + 7].chunks(65_536) {
                w.write(Bytes::copy_from_slice(piece)).await.expect("write");
            }
            drop(w);
        }
        let mut w = s.upload_writer(&u, offset, &state).await.expect("writer");
        for piece in chunk.chunks(40_000) {
            w.write(Bytes::copy_from_slice(piece)).await.expect("write");
        }
        // The last request keeps its tail for the commit, as the registry's final PUT does.
        state = if i + 1 == chunks.len() { w.finish_last().await } else { w.finish().await }.expect("finish");
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, total as u64);
    // Re-reading (what a sha512 close does) and then committing.
    let back: Vec<Bytes> = s.read_upload(&u, offset, &state).await.expect("read upload").try_collect().await.expect("read");
    assert!(back.concat() == data, "re-read upload differs");
    let d = Digest::sha256_of(&data);
    s.commit_upload(&u, offset, &state, &d).await.expect("commit");
    assert_eq!(s.stat(&d).await.expect("stat"), Some(total as u64));
    assert!(read_all(s, &d, None).await == data, "committed blob differs");
    let r = ByteRange { start: part as u64 - 10, end: part as u64 + 10 };
    assert_eq!(read_all(s, &d, Some(r)).await, &data[part - 10..=part + 10]);
    assert!(!s.list_uploads().await.expect("list uploads").iter().any(|x| x.id == u), "a committed upload leaves nothing behind");

    // Committed without a re-read, in one large write.
    let u = id(0x22);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    for piece in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    let state = w.finish().await.expect("finish");
    let mut rev = data.clone();
    rev.reverse();
    let d2 = Digest::sha256_of(&rev);
    // The store trusts the caller's digest; commit under another name to tell copies apart.
    s.commit_upload(&u, total as u64, &state, &d2).await.expect("commit");
    assert!(read_all(s, &d2, None).await == data);
    s.delete(&d2).await.expect("delete");

    // Aborting a multi-part upload.
    let u = id(0x23);
    let mut w = s.upload_writer(&u, 0, &[]).await.expect("writer");
    w.write(Bytes::copy_from_slice(&data[..part + 1])).await.expect("write");
    w.write(Bytes::copy_from_slice(&data[..100])).await.expect("write");
    let state = w.finish().await.expect("finish");
    s.abort_upload(&u, &state).await.expect("abort");
    assert!(!s.list_uploads().await.expect("list uploads").iter().any(|x| x.id == u));
}

