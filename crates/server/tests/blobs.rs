//! Blob reads, uploads in every form, mounts and deletes, through the in-process router.

mod support;

use axum::http::StatusCode;
use oci::{Algorithm, Digest};
use registry::RegistryConfig;
use support::*;

#[tokio::test]
async fn base_endpoint() {
    let t = registry().await;
    let r = t.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
}

#[tokio::test]
async fn monolithic_push_then_head_get_and_ranges() {
    let t = registry().await;
    let data: Vec<u8> = (0..2048u32).map(|i| (i % 256) as u8).collect();
    let d = t.push_blob("a/b", &data).await;
    let head = t.req("HEAD", &format!("/v2/a/b/blobs/{d}"), &[], vec![]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some("2048"));
    assert_eq!(head.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(head.header("content-type"), Some("application/octet-stream"));
    assert!(head.body.is_empty());
    let get = t.get(&format!("/v2/a/b/blobs/{d}")).await;
    assert_eq!(get.body, data);
    assert_eq!(get.header("content-length"), Some("2048"));
    for (range, start, end) in [("bytes=500-1499", 500, 1499), ("bytes=500-", 500, 2047), ("bytes=-500", 1548, 2047), ("bytes=2000-5000", 2000, 2047)] {
        let r = t.req("GET", &format!("/v2/a/b/blobs/{d}"), &[("range", range)], vec![]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.body, data[start..=end], "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/2048").as_str()));
        assert_eq!(r.header("content-length"), Some((end - start + 1).to_string().as_str()));
    }
    for range in ["bytes=5000-10000", "bytes=500-0"] {
        let r = t.req("GET", &format!("/v2/a/b/blobs/{d}"), &[("range", range)], vec![]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */2048"));
    }
}

#[tokio::test]
async fn unknown_and_invalid_blob_requests() {
    let t = registry().await;
    let d = sha256(b"nope");
    let r = t.get(&format!("/v2/a/blobs/{d}")).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
    assert_eq!(r.json()["errors"][0]["detail"]["digest"], d.as_str());
    let r = t.get("/v2/a/blobs/sha256:123").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let r = t.get(&format!("/v2/Upper/blobs/{d}")).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "NAME_INVALID"));
    let r = t.get(&format!("/v2/{}/blobs/{d}", "a".repeat(300))).await;
    assert_eq!(r.error_code(), "NAME_INVALID");
    let r = t.get("/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t.req("PATCH", &format!("/v2/a/blobs/{d}"), &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));
}

#[tokio::test]
async fn a_wrong_digest_stores_nothing() {
    let t = registry().await;
    let claimed = sha256(b"something else");
    let r = t.req("POST", &format!("/v2/a/blobs/uploads/?digest={claimed}"), &[], b"actual".to_vec()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    assert_eq!(t.req("HEAD", &format!("/v2/a/blobs/{claimed}"), &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(std::fs::read_dir(t.dir.path().join("uploads")).unwrap().count(), 0, "the rejected upload's bytes are gone");
}

async fn start(t: &TestRegistry, repo: &str) -> String {
    let r = t.req("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-0"));
    let loc = r.header("location").expect("location").to_owned();
    assert!(loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")));
    assert_eq!(r.header("docker-upload-uuid"), loc.rsplit('/').next());
    loc
}

#[tokio::test]
async fn post_then_put_with_body() {
    let t = registry().await;
    let loc = start(&t, "c/d").await;
    let d = sha256(b"containerd style");
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[("content-length", "16")], b"containerd style".to_vec()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("location"), Some(format!("/v2/c/d/blobs/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(t.get(&format!("/v2/c/d/blobs/{d}")).await.body, "containerd style");
    // The session is gone once closed.
    assert_eq!(t.get(&loc).await.error_code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_upload_in_order_only() {
    let t = registry().await;
    let data: Vec<u8> = (0..42u8).collect();
    let loc = start(&t, "a").await;
    let r = t.req("PATCH", &loc, &[("content-range", "0-21"), ("content-length", "22")], data[..22].to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-21"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    // Skipping ahead, and repeating what was sent, are both refused with the current range.
    for range in ["30-41", "0-21"] {
        let r = t.req("PATCH", &loc, &[("content-range", range)], data[..12].to_vec()).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"), "{range}");
        assert_eq!(r.header("range"), Some("0-21"));
        assert_eq!(r.header("location"), Some(loc.as_str()));
    }
    let r = t.get(&loc).await;
    assert_eq!((r.status, r.header("range")), (StatusCode::NO_CONTENT, Some("0-21")));
    let r = t.req("PATCH", &loc, &[("content-range", "22-41")], data[22..].to_vec()).await;
    assert_eq!(r.header("range"), Some("0-41"));
    let d = sha256(&data);
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(t.get(&format!("/v2/a/blobs/{d}")).await.body, data);
}

#[tokio::test]
async fn chunk_whose_length_disagrees_with_its_range_is_refused() {
    let t = registry().await;
    let loc = start(&t, "a").await;
    let r = t.req("PATCH", &loc, &[("content-range", "0-9")], b"short".to_vec()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "SIZE_INVALID"));
    assert_eq!(t.get(&loc).await.header("range"), Some("0-0"), "nothing was accepted");
}

#[tokio::test]
async fn streamed_patches_then_final_chunk_in_put() {
    let t = registry().await;
    let loc = start(&t, "s").await;
    t.req("PATCH", &loc, &[], b"stream-".to_vec()).await;
    let r = t.req("PATCH", &loc, &[], b"ed ".to_vec()).await;
    assert_eq!(r.header("range"), Some("0-9"));
    let d = sha256(b"stream-ed upload");
    // A final chunk out of order is refused and the session survives.
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[("content-range", "20-25"), ("content-length", "6")], b"upload".to_vec()).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[("content-range", "10-15"), ("content-length", "6")], b"upload".to_vec()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(t.get(&format!("/v2/s/blobs/{d}")).await.body, "stream-ed upload");
}

#[tokio::test]
async fn wrong_final_digest_keeps_the_session() {
    let t = registry().await;
    let loc = start(&t, "a").await;
    t.req("PATCH", &loc, &[], b"abc".to_vec()).await;
    let r = t.req("PUT", &format!("{loc}?digest={}", sha256(b"xyz")), &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let r = t.req("PUT", &format!("{loc}?digest={}", sha256(b"abc")), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = t.req("PUT", &format!("{loc}?digest=sha256:nothex"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sha512_blobs_monolithic_and_chunked() {
    let t = registry().await;
    let d = Digest::of(Algorithm::Sha512, b"five twelve");
    let r = t.req("POST", &format!("/v2/a/blobs/uploads/?digest={d}"), &[], b"five twelve".to_vec()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let h = t.req("HEAD", &format!("/v2/a/blobs/{d}"), &[], vec![]).await;
    assert_eq!(h.header("docker-content-digest"), Some(d.as_str()));
    // The session does not know the algorithm until the final PUT.
    let data = vec![7u8; 3067];
    let d = Digest::of(Algorithm::Sha512, &data);
    let loc = start(&t, "a").await;
    let r = t.req("PATCH", &loc, &[("content-range", "0-1023")], data[..1024].to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let r = t.req("PATCH", &loc, &[("content-range", "1024-2047")], data[1024..2048].to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[("content-range", "2048-3066")], data[2048..].to_vec()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(t.get(&format!("/v2/a/blobs/{d}")).await.body, data);
    // And a sha512 mismatch is caught the same way.
    let loc = start(&t, "a").await;
    t.req("PATCH", &loc, &[], b"x".to_vec()).await;
    let r = t.req("PUT", &format!("{loc}?digest={}", Digest::of(Algorithm::Sha512, b"y")), &[], vec![]).await;
    assert_eq!(r.error_code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn empty_blob() {
    let t = registry().await;
    let loc = start(&t, "a").await;
    let d = sha256(b"");
    let r = t.req("PUT", &format!("{loc}?digest={d}"), &[("content-length", "0")], vec![]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let h = t.req("HEAD", &format!("/v2/a/blobs/{d}"), &[], vec![]).await;
    assert_eq!(h.header("content-length"), Some("0"));
    assert!(t.get(&format!("/v2/a/blobs/{d}")).await.body.is_empty());
}

#[tokio::test]
async fn unknown_sessions() {
    let t = registry().await;
    for loc in ["/v2/a/blobs/uploads/00000000000000000000000000000000", "/v2/a/blobs/uploads/not-an-id"] {
        let r = t.get(loc).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"));
        let r = t.req("PATCH", loc, &[], b"x".to_vec()).await;
        assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    }
    // A session belongs to its repository.
    let loc = start(&t, "a").await;
    let other = loc.replace("/v2/a/", "/v2/b/");
    assert_eq!(t.get(&other).await.error_code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cancel_discards_the_session_and_bytes() {
    let t = registry().await;
    let loc = start(&t, "a").await;
    t.req("PATCH", &loc, &[], b"doomed".to_vec()).await;
    let r = t.req("DELETE", &loc, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&loc).await.status, StatusCode::NOT_FOUND);
    assert_eq!(std::fs::read_dir(t.dir.path().join("uploads")).unwrap().count(), 0);
}

#[tokio::test]
async fn expired_sessions_are_unknown_and_reclaimed() {
    let t = registry_with(RegistryConfig { upload_expiry: std::time::Duration::from_millis(50), ..Default::default() }).await;
    let loc = start(&t, "a").await;
    t.req("PATCH", &loc, &[], b"abandoned".to_vec()).await;
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(t.get(&loc).await.error_code(), "BLOB_UPLOAD_UNKNOWN");
    let sweep = t.registry.sweep_uploads().await.unwrap();
    assert_eq!(sweep.expired_sessions, 1);
    assert_eq!(std::fs::read_dir(t.dir.path().join("uploads")).unwrap().count(), 0);
    // Bytes with no session at all (a crash mid-upload) are reclaimed too.
    std::fs::write(t.dir.path().join("uploads/0123456789abcdef0123456789abcdef"), b"orphan").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(t.registry.sweep_uploads().await.unwrap().orphaned_uploads, 1);
}

#[tokio::test]
async fn mounts() {
    let t = registry().await;
    let d = t.push_blob("src", b"shared layer").await;
    // From a repository that holds it: 201 and the blob's location.
    let r = t.req("POST", &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location"), Some(format!("/v2/dst/blobs/{d}").as_str()));
    assert_eq!(t.get(&format!("/v2/dst/blobs/{d}")).await.body, "shared layer");
    // From a repository that does not: an ordinary session.
    let r = t.req("POST", &format!("/v2/dst2/blobs/uploads/?mount={d}&from=elsewhere"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.header("location").unwrap().starts_with("/v2/dst2/blobs/uploads/"));
    // Without `from`: mounted when the registry holds it anywhere.
    let r = t.req("POST", &format!("/v2/dst3/blobs/uploads/?mount={d}"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = t.req("POST", &format!("/v2/dst3/blobs/uploads/?mount={}", sha256(b"unknown")), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // One copy on disk.
    let hex = d.hex();
    assert!(t.dir.path().join(format!("blobs/sha256/{}/{hex}", &hex[..2])).exists());
}

#[tokio::test]
async fn repositories_are_isolated_and_blob_delete_unlinks() {
    let t = registry().await;
    let d = t.push_blob("one", b"bytes").await;
    assert_eq!(t.get(&format!("/v2/two/blobs/{d}")).await.status, StatusCode::NOT_FOUND);
    t.push_blob("two", b"bytes").await;
    let r = t.req("DELETE", &format!("/v2/one/blobs/{d}"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(t.req("HEAD", &format!("/v2/one/blobs/{d}"), &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&format!("/v2/two/blobs/{d}")).await.body, "bytes");
    let r = t.req("DELETE", &format!("/v2/one/blobs/{d}"), &[], vec![]).await;
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn deletes_can_be_disabled() {
    let t = registry_with(RegistryConfig { delete_enabled: false, ..Default::default() }).await;
    let d = t.push_blob("a", b"kept").await;
    let r = t.req("DELETE", &format!("/v2/a/blobs/{d}"), &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));
    t.push_image("a", "v1", "x").await;
    let r = t.req("DELETE", "/v2/a/manifests/v1", &[], vec![]).await;
    assert_eq!(r.error_code(), "UNSUPPORTED");
}

#[tokio::test]
async fn many_clients_pushing_the_same_blob() {
    let t = std::sync::Arc::new(registry().await);
    let data = vec![42u8; 300_000];
    let mut tasks = Vec::new();
    for i in 0..16 {
        let t = t.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let repo = format!("r{}", i % 4);
            if i % 2 == 0 {
                t.push_blob(&repo, &data).await;
            } else {
                let r = t.req("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], vec![]).await;
                let loc = r.header("location").unwrap().to_owned();
                t.req("PATCH", &loc, &[], data[..1000].to_vec()).await;
                let r = t.req("PUT", &format!("{loc}?digest={}", sha256(&data)), &[], data[1000..].to_vec()).await;
                assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let d = sha256(&data);
    for i in 0..4 {
        assert_eq!(t.get(&format!("/v2/r{i}/blobs/{d}")).await.body.len(), data.len());
    }
    let files: usize = walk(&t.dir.path().join("blobs"));
    assert_eq!(files, 1, "one copy stored");
}

fn walk(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).unwrap().flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
}
