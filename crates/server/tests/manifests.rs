//! Manifests, tags, referrers and the catalog, through the in-process router.

mod support;

use axum::http::StatusCode;
use oci::{Algorithm, Digest};
use registry::RegistryConfig;
use serde_json::json;
use support::*;

#[tokio::test]
async fn push_and_pull_by_tag_and_digest() {
    let t = registry().await;
    let (m, d) = t.push_image("lib/app", "v1", "a").await;
    for reference in ["v1".to_string(), d.to_string()] {
        let r = t.get(&format!("/v2/lib/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, m, "exact bytes");
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
        assert_eq!(r.header("content-length"), Some(m.len().to_string().as_str()));
        let h = t.req("HEAD", &format!("/v2/lib/app/manifests/{reference}"), &[], vec![]).await;
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.body.is_empty());
        assert_eq!(h.header("content-length"), Some(m.len().to_string().as_str()));
        assert_eq!(h.header("content-type"), Some(OCI_MANIFEST));
    }
}

#[tokio::test]
async fn put_response_headers() {
    let t = registry().await;
    let cd = t.push_blob("a", b"{}").await;
    let m = image_manifest((&cd, 2), &[], None, None);
    let r = t.put_manifest("a", "latest", OCI_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let d = sha256(&m);
    assert_eq!(r.header("location"), Some(format!("/v2/a/manifests/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(r.header("oci-subject"), None);
}

#[tokio::test]
async fn bytes_and_media_type_are_kept_verbatim() {
    let t = registry().await;
    let cd = t.push_blob("a", b"{}").await;
    // Odd whitespace and key order; no mediaType field, so the Content-Type decides.
    let body = format!("{{\n  \"schemaVersion\" : 2,\n\"config\":{{\"size\":2,\"digest\":\"{cd}\",\"mediaType\":\"application/vnd.docker.container.image.v1+json\"}},\"layers\":[] }}  ");
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let r = t.put_manifest("a", "d", docker, body.as_bytes()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let g = t.get("/v2/a/manifests/d").await;
    assert_eq!(g.body, body.as_bytes());
    assert_eq!(g.header("content-type"), Some(docker));
}

#[tokio::test]
async fn missing_references_are_refused_by_name() {
    let t = registry().await;
    let cd = t.push_blob("a", b"{}").await;
    let missing = sha256(b"never pushed");
    let m = image_manifest((&cd, 2), &[(&missing, 12)], None, None);
    let r = t.put_manifest("a", "v1", OCI_MANIFEST, &m).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"));
    assert_eq!(r.json()["errors"][0]["detail"]["digest"], missing.as_str());
    assert_eq!(t.get("/v2/a/manifests/v1").await.status, StatusCode::NOT_FOUND, "nothing was stored");
    // A blob present in another repository does not count.
    let other = t.push_blob("b", b"layer").await;
    let m = image_manifest((&cd, 2), &[(&other, 5)], None, None);
    assert_eq!(t.put_manifest("a", "v1", OCI_MANIFEST, &m).await.error_code(), "MANIFEST_BLOB_UNKNOWN");
    // Non-distributable layers (with urls) need not be present.
    let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    v["layers"][0]["urls"] = json!(["https://example.com/layer"]);
    let r = t.put_manifest("a", "foreign", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_manifests() {
    let t = registry().await;
    let cases: [(&str, &[u8], &str); 5] = [
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", br#"{"schemaVersion":1,"name":"a","tag":"x","fsLayers":[]}"#, "schema 1"),
        (OCI_MANIFEST, b"not json", "JSON"),
        (OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, "config"),
        (OCI_INDEX, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#, "does not match"),
        ("application/json", br#"{"schemaVersion":2}"#, "unsupported"),
    ];
    for (ct, body, needle) in cases {
        let r = t.put_manifest("a", "bad", ct, body).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"), "{needle}");
        let msg = r.json()["errors"][0]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
}

#[tokio::test]
async fn size_limit() {
    let t = registry_with(RegistryConfig { manifest_max_size: 4096, ..Default::default() }).await;
    let cd = t.push_blob("a", b"{}").await;
    let mut v: serde_json::Value = serde_json::from_slice(&image_manifest((&cd, 2), &[], None, None)).unwrap();
    v["annotations"] = json!({ "big": "x".repeat(5000) });
    let r = t.put_manifest("a", "big", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"));
    // The default allows the 4 MiB the spec asks for.
    let t = registry().await;
    let cd = t.push_blob("a", b"{}").await;
    v["config"]["digest"] = json!(cd.as_str());
    v["annotations"] = json!({ "big": "x".repeat(3_900_000) });
    assert_eq!(t.put_manifest("a", "big", OCI_MANIFEST, &serde_json::to_vec(&v).unwrap()).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn digests_and_references() {
    let t = registry().await;
    let cd = t.push_blob("a", b"{}").await;
    let m = image_manifest((&cd, 2), &[], None, None);
    // By digest: the body must hash to it, in the digest's own algorithm.
    let r = t.put_manifest("a", sha256(b"other").as_str(), OCI_MANIFEST, &m).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let r = t.put_manifest("a", "sha256:baddigeststring", OCI_MANIFEST, &m).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let d512 = Digest::of(Algorithm::Sha512, &m);
    let r = t.put_manifest("a", d512.as_str(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("docker-content-digest"), Some(d512.as_str()));
    assert_eq!(t.get(&format!("/v2/a/manifests/{d512}")).await.body, m);
    // Invalid tags: unknown on read, invalid on write.
    let r = t.get("/v2/a/manifests/.INVALID_MANIFEST_NAME").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    let r = t.put_manifest("a", ".bad", OCI_MANIFEST, &m).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "TAG_INVALID"));
    let r = t.get(&format!("/v2/a/manifests/{}", sha256(b"absent"))).await;
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    // Tags given as ?tag= on a push by digest.
    let d = sha256(&m);
    let r = t.put_manifest("a", &format!("{d}?tag=t1&tag=t2"), OCI_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers.get_all("oci-tag").iter().count(), 2);
    assert_eq!(t.get("/v2/a/manifests/t2").await.body, m);
}

#[tokio::test]
async fn indexes_need_their_children() {
    let t = registry().await;
    let (m1, d1) = t.push_image("multi", "amd64", "1").await;
    let absent = sha256(b"child");
    let r = t.put_manifest("multi", "all", OCI_INDEX, &index(&[(&d1, m1.len()), (&absent, 10)])).await;
    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");
    let (m2, d2) = t.push_image("multi", "arm64", "2").await;
    let idx = index(&[(&d1, m1.len()), (&d2, m2.len())]);
    let r = t.put_manifest("multi", "all", OCI_INDEX, &idx).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let g = t.get("/v2/multi/manifests/all").await;
    assert_eq!((g.body.as_ref(), g.header("content-type")), (idx.as_slice(), Some(OCI_INDEX)));
    // A Docker manifest list works the same way.
    let list = String::from_utf8(idx).unwrap().replace(OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json");
    let r = t.put_manifest("multi", "list", "application/vnd.docker.distribution.manifest.list.v2+json", list.as_bytes()).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn deletes() {
    let t = registry().await;
    let (_, d) = t.push_image("a", "v1", "x").await;
    t.put_manifest("a", "v2", OCI_MANIFEST, &t.get("/v2/a/manifests/v1").await.body).await;
    // A tag delete removes only the tag.
    assert_eq!(t.req("DELETE", "/v2/a/manifests/v1", &[], vec![]).await.status, StatusCode::ACCEPTED);
    assert_eq!(t.req("HEAD", "/v2/a/manifests/v1", &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&format!("/v2/a/manifests/{d}")).await.status, StatusCode::OK);
    assert_eq!(t.get("/v2/a/manifests/v2").await.status, StatusCode::OK);
    // A digest delete removes the manifest and every tag on it.
    assert_eq!(t.req("DELETE", &format!("/v2/a/manifests/{d}"), &[], vec![]).await.status, StatusCode::ACCEPTED);
    assert_eq!(t.req("HEAD", &format!("/v2/a/manifests/{d}"), &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.req("HEAD", "/v2/a/manifests/v2", &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert!(t.get("/v2/a/tags/list").await.json()["tags"].as_array().unwrap().is_empty());
    let r = t.req("DELETE", &format!("/v2/a/manifests/{d}"), &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
}

#[tokio::test]
async fn tag_overwrite_last_write_wins() {
    let t = registry().await;
    let (_, d1) = t.push_image("a", "latest", "1").await;
    let (m2, d2) = t.push_image("a", "latest", "2").await;
    assert_ne!(d1, d2);
    assert_eq!(t.get("/v2/a/manifests/latest").await.body, m2, "the cache must not serve the old tag");
    assert_eq!(t.get(&format!("/v2/a/manifests/{d1}")).await.status, StatusCode::OK, "the old image stays by digest");
}

#[tokio::test]
async fn concurrent_tag_writes_all_succeed() {
    let t = std::sync::Arc::new(registry().await);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.push_image("race", "same", &i.to_string()).await.1 }));
    }
    let mut digests = Vec::new();
    for task in tasks {
        digests.push(task.await.unwrap());
    }
    let served = sha256(&t.get("/v2/race/manifests/same").await.body);
    assert!(digests.contains(&served));
}

#[tokio::test]
async fn tag_pagination() {
    let t = registry().await;
    let (m, _) = t.push_image("p", "a", "x").await;
    for tag in ["c", "B", "b", "d", "a-1"] {
        t.put_manifest("p", tag, OCI_MANIFEST, &m).await;
    }
    let all = t.get("/v2/p/tags/list").await;
    assert_eq!(all.json(), json!({"name": "p", "tags": ["B", "a", "a-1", "b", "c", "d"]}));
    assert_eq!(all.header("link"), None);
    let p1 = t.get("/v2/p/tags/list?n=2").await;
    assert_eq!(p1.json()["tags"], json!(["B", "a"]));
    assert_eq!(p1.header("link"), Some("</v2/p/tags/list?n=2&last=a>; rel=\"next\""));
    let p2 = t.get("/v2/p/tags/list?n=2&last=a").await;
    assert_eq!(p2.json()["tags"], json!(["a-1", "b"]));
    let p3 = t.get("/v2/p/tags/list?n=2&last=b").await;
    assert_eq!(p3.json()["tags"], json!(["c", "d"]));
    assert_eq!(p3.header("link"), None, "no Link after the last page");
    assert_eq!(t.get("/v2/p/tags/list?last=b").await.json()["tags"], json!(["c", "d"]));
    let zero = t.get("/v2/p/tags/list?n=0").await;
    assert_eq!((zero.json()["tags"].clone(), zero.header("link")), (json!([]), None));
    assert_eq!(t.get("/v2/p/tags/list?n=-1").await.error_code(), "PAGINATION_NUMBER_INVALID");
    let r = t.get("/v2/unknown/tags/list").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
}

#[tokio::test]
async fn catalog_pagination() {
    let t = registry().await;
    for repo in ["z", "a/b", "a", "m/n/o"] {
        t.push_blob(repo, b"x").await;
    }
    assert_eq!(t.get("/v2/_catalog").await.json(), json!({"repositories": ["a", "a/b", "m/n/o", "z"]}));
    let p1 = t.get("/v2/_catalog?n=3").await;
    assert_eq!(p1.json()["repositories"], json!(["a", "a/b", "m/n/o"]));
    assert_eq!(p1.header("link"), Some("</v2/_catalog?n=3&last=m%2Fn%2Fo>; rel=\"next\""));
    assert_eq!(t.get("/v2/_catalog?n=3&last=m%2Fn%2Fo").await.json()["repositories"], json!(["z"]));
}

#[tokio::test]
async fn referrers() {
    let t = registry().await;
    // An empty list, even for a repository that does not exist.
    let subject = sha256(b"subject not pushed yet");
    let r = t.get(&format!("/v2/nothing/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(r.json(), json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}));
    assert_eq!(t.get("/v2/a/referrers/sha256:bad").await.status, StatusCode::BAD_REQUEST);

    // Referrers may arrive before their subject.
    let empty = t.push_blob("a", b"{}").await;
    let sig_layer = t.push_blob("a", b"signature").await;
    let sig = image_manifest((&empty, 2), &[(&sig_layer, 9)], Some("application/vnd.example.sig"), Some((&subject, 100)));
    let r = t.put_manifest("a", sha256(&sig).as_str(), OCI_MANIFEST, &sig).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
    // An image manifest without artifactType is listed under its config media type.
    let sbom = image_manifest((&empty, 2), &[], None, Some((&subject, 100)));
    t.put_manifest("a", "sbom", OCI_MANIFEST, &sbom).await;

    let r = t.get(&format!("/v2/a/referrers/{subject}")).await;
    let list = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let sig_entry = list.iter().find(|e| e["digest"] == sha256(&sig).as_str()).expect("signature listed");
    assert_eq!(sig_entry["artifactType"], "application/vnd.example.sig");
    assert_eq!(sig_entry["size"], sig.len());
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(sig_entry["annotations"], json!({"org.example.kind": "application/vnd.example.sig"}));
    let sbom_entry = list.iter().find(|e| e["digest"] == sha256(&sbom).as_str()).expect("sbom listed");
    assert_eq!(sbom_entry["artifactType"], "application/vnd.oci.image.config.v1+json");
    assert!(sbom_entry.get("annotations").is_none());

    let r = t.get(&format!("/v2/a/referrers/{subject}?artifactType=application/vnd.example.sig")).await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    // Deleting a referrer removes it from the list.
    t.req("DELETE", &format!("/v2/a/manifests/{}", sha256(&sig)), &[], vec![]).await;
    assert_eq!(t.get(&format!("/v2/a/referrers/{subject}")).await.json()["manifests"].as_array().unwrap().len(), 1);
}
