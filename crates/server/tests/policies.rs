//! Immutable tags and quotas through the in-process router: what is refused (403 `DENIED`, with
//! the tag and rule or the quota's figures in the body), what stays allowed (re-pushing the same
//! manifest, tags outside the rules, blobs a namespace already holds), and what a refusal leaves
//! behind (nothing).

mod support;

use axum::http::StatusCode;
use oci::Digest;
use registry::{ImmutableRule, Policies, RegistryConfig};
use serde_json::json;
use support::*;

fn immutable_config() -> RegistryConfig {
    let rule = ImmutableRule { repositories: "prod/**".parse().expect("pattern"), tags: vec!["v*".parse().expect("pattern"), "release-*".parse().expect("pattern")] };
    RegistryConfig { policies: Policies { immutable_tags: vec![rule], quotas: vec![] }, ..Default::default() }
}

/// An image manifest over blobs already pushed to `repo` (config and one layer of `seed`).
async fn image(t: &TestRegistry, repo: &str, seed: &str) -> (Vec<u8>, Digest) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer = format!("layer of {seed}").into_bytes();
    let cd = t.push_blob(repo, config.as_bytes()).await;
    let ld = t.push_blob(repo, &layer).await;
    let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], None, None);
    let d = sha256(&m);
    (m, d)
}

fn assert_denied(r: &Resp, needles: &[&str]) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "DENIED");
    let message = r.json()["errors"][0]["message"].as_str().expect("message").to_owned();
    for n in needles {
        assert!(message.contains(n), "{message:?} does not mention {n:?}");
    }
}

#[tokio::test]
async fn immutable_tags_cannot_move_but_can_be_pushed_again() {
    let t = registry_with(immutable_config()).await;
    let (m1, d1) = image(&t, "prod/app", "one").await;
    let (m2, d2) = image(&t, "prod/app", "two").await;
    assert_eq!(t.put_manifest("prod/app", "v1.0", OCI_MANIFEST, &m1).await.status, StatusCode::CREATED);

    // The same manifest again (docker re-running a push): fine, by tag and by digest + ?tag=.
    assert_eq!(t.put_manifest("prod/app", "v1.0", OCI_MANIFEST, &m1).await.status, StatusCode::CREATED);
    assert_eq!(t.put_manifest("prod/app", &format!("{d1}?tag=v1.0"), OCI_MANIFEST, &m1).await.status, StatusCode::CREATED);

    // Another manifest under the tag: refused, naming the tag and the rule.
    let r = t.put_manifest("prod/app", "v1.0", OCI_MANIFEST, &m2).await;
    assert_denied(&r, &["tag is immutable", "prod/app:v1.0", "prod/**", "v*"]);
    assert_eq!(r.json()["errors"][0]["detail"], json!({ "repository": "prod/app", "tag": "v1.0", "rule": { "repositories": "prod/**", "tags": ["v*", "release-*"] } }));
    let r = t.put_manifest("prod/app", &format!("{d2}?tag=v1.0"), OCI_MANIFEST, &m2).await;
    assert_denied(&r, &["v1.0"]);
    assert_eq!(t.get("/v2/prod/app/manifests/v1.0").await.header("docker-content-digest"), Some(d1.as_str()));

    // One PUT, several tags: one protected tag that would move refuses the whole PUT.
    let r = t.put_manifest("prod/app", &format!("{d2}?tag=latest&tag=v1.0"), OCI_MANIFEST, &m2).await;
    assert_denied(&r, &["v1.0"]);
    assert_eq!(t.get("/v2/prod/app/manifests/latest").await.status, StatusCode::NOT_FOUND, "nothing of the refused PUT was written");

    // Unprotected tags move freely; a new protected tag may be created, then it holds.
    assert_eq!(t.put_manifest("prod/app", "latest", OCI_MANIFEST, &m1).await.status, StatusCode::CREATED);
    assert_eq!(t.put_manifest("prod/app", "latest", OCI_MANIFEST, &m2).await.status, StatusCode::CREATED);
    assert_eq!(t.put_manifest("prod/app", "release-2", OCI_MANIFEST, &m2).await.status, StatusCode::CREATED);
    assert_denied(&t.put_manifest("prod/app", "release-2", OCI_MANIFEST, &m1).await, &["release-2", "release-*"]);

    // Outside the rule's repositories, the same tag names are ordinary.
    let (n1, _) = image(&t, "dev/app", "one").await;
    let (n2, _) = image(&t, "dev/app", "two").await;
    assert_eq!(t.put_manifest("dev/app", "v1.0", OCI_MANIFEST, &n1).await.status, StatusCode::CREATED);
    assert_eq!(t.put_manifest("dev/app", "v1.0", OCI_MANIFEST, &n2).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn immutable_tags_and_what_they_point_at_cannot_be_deleted() {
    let t = registry_with(immutable_config()).await;
    let (m1, d1) = image(&t, "prod/app", "one").await;
    let (m2, d2) = image(&t, "prod/app", "two").await;
    assert_eq!(t.put_manifest("prod/app", "v1", OCI_MANIFEST, &m1).await.status, StatusCode::CREATED);
    assert_eq!(t.put_manifest("prod/app", "latest", OCI_MANIFEST, &m2).await.status, StatusCode::CREATED);

    // The tag itself.
    let r = t.req("DELETE", "/v2/prod/app/manifests/v1", &[], "").await;
    assert_denied(&r, &["tag is immutable", "prod/app:v1", "prod/**"]);
    // The manifest it points at, by digest (which would take the tag with it).
    let r = t.req("DELETE", &format!("/v2/prod/app/manifests/{d1}"), &[], "").await;
    assert_denied(&r, &["prod/app:v1"]);
    assert_eq!(t.get("/v2/prod/app/manifests/v1").await.status, StatusCode::OK);
    assert_eq!(t.get(&format!("/v2/prod/app/manifests/{d1}")).await.status, StatusCode::OK);

    // A protected name that does not exist is simply unknown.
    let r = t.req("DELETE", "/v2/prod/app/manifests/v9", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    // Unprotected tags, and manifests only they point at, go as usual.
    assert_eq!(t.req("DELETE", "/v2/prod/app/manifests/latest", &[], "").await.status, StatusCode::ACCEPTED);
    assert_eq!(t.put_manifest("prod/app", "latest", OCI_MANIFEST, &m2).await.status, StatusCode::CREATED);
    assert_eq!(t.req("DELETE", &format!("/v2/prod/app/manifests/{d2}"), &[], "").await.status, StatusCode::ACCEPTED);
    assert_eq!(t.get("/v2/prod/app/manifests/latest").await.status, StatusCode::NOT_FOUND);
    let tags = t.get("/v2/prod/app/tags/list").await.json();
    assert_eq!(tags["tags"], json!(["v1"]));
}

fn quota_config(limit: u64) -> RegistryConfig {
    let quota = meta::Quota { namespace: "team-a/**".parse().expect("pattern"), limit };
    RegistryConfig { policies: Policies { immutable_tags: vec![], quotas: vec![quota] }, ..Default::default() }
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

#[tokio::test]
async fn quotas_refuse_blobs_that_do_not_fit_and_count_each_blob_once() {
    let t = registry_with(quota_config(1000)).await;
    let big = t.push_blob("team-a/x", &bytes(1, 600)).await;
    let mid = t.push_blob("team-a/x", &bytes(2, 300)).await;

    // 900 of 1000 used: 200 more bytes do not fit, monolithically or chunked.
    let small = bytes(3, 200);
    let sd = sha256(&small);
    let r = t.req("POST", &format!("/v2/team-a/x/blobs/uploads/?digest={sd}"), &[], small.clone()).await;
    assert_denied(&r, &["quota exceeded for team-a/**: 1000 B limit, 900 B used, this blob needs 200 B"]);
    assert_eq!(r.json()["errors"][0]["detail"], json!({ "namespace": "team-a/**", "limit": 1000, "used": 900, "needed": 200 }));
    let loc = t.req("POST", "/v2/team-a/y/blobs/uploads/", &[], "").await.header("location").expect("location").to_owned();
    assert_eq!(t.req("PATCH", &loc, &[], small.clone()).await.status, StatusCode::ACCEPTED);
    let r = t.req("PUT", &format!("{loc}?digest={sd}"), &[], "").await;
    assert_denied(&r, &["quota exceeded for team-a/**"]);
    // The refusal leaves nothing: no blob, no session, no bytes.
    assert_eq!(t.req("HEAD", &format!("/v2/team-a/y/blobs/{sd}"), &[], "").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&loc).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.registry.blobs().stat(&sd).await.expect("stat"), None);

    // A blob the namespace already holds costs nothing: pushed to another repository of it,
    // or mounted there.
    assert_eq!(t.push_blob("team-a/y", &bytes(1, 600)).await, big);
    let r = t.req("POST", &format!("/v2/team-a/z/blobs/uploads/?mount={mid}&from=team-a/x"), &[], "").await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Outside the namespace there is no limit; mounting from there into it is charged.
    let other = t.push_blob("other/app", &small).await;
    let r = t.req("POST", &format!("/v2/team-a/x/blobs/uploads/?mount={other}&from=other/app"), &[], "").await;
    assert_denied(&r, &["quota exceeded for team-a/**", "900 B used", "needs 200 B"]);
    assert_eq!(t.req("HEAD", &format!("/v2/team-a/x/blobs/{other}"), &[], "").await.status, StatusCode::NOT_FOUND);

    // Unlinking frees room: 300 bytes still linked in team-a/z, so only when they go there too.
    assert_eq!(t.req("DELETE", &format!("/v2/team-a/x/blobs/{mid}"), &[], "").await.status, StatusCode::ACCEPTED);
    assert_denied(&t.req("POST", &format!("/v2/team-a/x/blobs/uploads/?digest={sd}"), &[], small.clone()).await, &["900 B used"]);
    assert_eq!(t.req("DELETE", &format!("/v2/team-a/z/blobs/{mid}"), &[], "").await.status, StatusCode::ACCEPTED);
    t.push_blob("team-a/x", &small).await;

    // The usage report: distinct bytes per namespace, linked bytes per repository.
    let u = t.get("/admin/usage").await;
    assert_eq!(u.status, StatusCode::OK);
    let u = u.json();
    assert_eq!(u["quotas"], json!([{ "namespace": "team-a/**", "limit": 1000, "bytes": 800, "blobs": 2, "percent": 80.0 }]));
    let repos: Vec<(String, u64)> = u["repositories"].as_array().expect("list").iter().map(|r| (r["repository"].as_str().expect("name").to_owned(), r["bytes"].as_u64().expect("bytes"))).collect();
    assert_eq!(repos, [("team-a/x".to_owned(), 800), ("team-a/y".to_owned(), 600), ("other/app".to_owned(), 200), ("team-a/z".to_owned(), 0)]);
}
