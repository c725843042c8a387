//! Bulk deletions through the admin API: a whole repository (`DELETE
//! /admin/repositories/<name>`) and a repository's tags by pattern and age (`DELETE
//! /admin/repositories/<name>/tags`), with what they leave behind, the events they record,
//! `storage.delete.enabled`, immutable tags, and garbage collection afterwards.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use registry::{ImmutableRule, Policies, RegistryConfig};
use serde_json::json;
use sqlx::Connection;
use support::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Pretend `tag` of `repo` was last pushed `days` ago (an explicit timestamp: no waiting).
async fn age_tag(t: &TestRegistry, repo: &str, tag: &str, days: i64) {
    let url = format!("sqlite://{}", t.dir.path().join("meta.db").display());
    let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.expect("connect");
    let r = sqlx::query("UPDATE tags SET updated_at = ? WHERE name = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)")
        .bind(now_ms() - days * DAY_MS)
        .bind(tag)
        .bind(repo)
        .execute(&mut c)
        .await
        .expect("update");
    assert_eq!(r.rows_affected(), 1, "{repo}:{tag}");
    c.close().await.expect("close");
}

fn tags_of(r: &Resp, key: &str) -> Vec<String> {
    let mut v: Vec<String> = r.json()[key].as_array().expect("list").iter().map(|t| t["tag"].as_str().expect("tag").to_owned()).collect();
    v.sort();
    v
}

async fn tag_list(t: &TestRegistry, repo: &str) -> Vec<String> {
    let r = t.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["tags"].as_array().expect("tags").iter().map(|t| t.as_str().expect("tag").to_owned()).collect()
}

#[tokio::test]
async fn deleting_a_repository_removes_everything_it_holds() {
    let t = registry().await;
    let (m1, d1) = t.push_image("app", "v1", "one").await;
    let (_, d2) = t.push_image("app", "v2", "two").await;
    // A layer of app mounted into other, and used there, stays; an upload in progress goes.
    let layer_one = sha256(b"layer of one");
    assert_eq!(t.req("POST", &format!("/v2/other/blobs/uploads/?mount={layer_one}&from=app"), &[], "").await.status, StatusCode::CREATED);
    let other_config = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = t.push_blob("other", other_config).await;
    let kept = image_manifest((&cd, other_config.len()), &[(&layer_one, 12)], None, None);
    assert_eq!(t.put_manifest("other", "v1", OCI_MANIFEST, &kept).await.status, StatusCode::CREATED);
    let session = t.req("POST", "/v2/app/blobs/uploads/", &[], "").await;
    assert_eq!(session.status, StatusCode::ACCEPTED);
    let location = session.header("location").expect("location").to_owned();

    let r = t.req("DELETE", "/admin/repositories/app", &[], "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "repository": "app", "deleted": { "tags": 2, "manifests": 2, "blob_links": 4, "uploads": 1 } }));

    // Gone from the catalog and from every API; the other repository is whole.
    assert_eq!(t.get("/v2/_catalog").await.json()["repositories"], json!(["other"]));
    let r = t.get("/v2/app/tags/list").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    for d in [&d1, &d2] {
        assert_eq!(t.get(&format!("/v2/app/manifests/{d}")).await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(t.get("/v2/app/manifests/v1").await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&format!("/v2/app/blobs/{layer_one}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&location).await.status, StatusCode::NOT_FOUND, "the upload session is gone");
    assert_eq!(t.get(&format!("/v2/other/blobs/{layer_one}")).await.body.as_ref(), b"layer of one");

    // One delete event for the repository.
    let audit = t.get("/admin/audit?repository=app&action=delete").await.json();
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0]["digest"].clone(), events[0]["tag"].clone()), (json!(null), json!(null)));

    // Deleted once; a bad name or another method is refused by the error table.
    let r = t.req("DELETE", "/admin/repositories/app", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    let r = t.req("DELETE", "/admin/repositories/Bad/Name", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "NAME_INVALID"));
    let r = t.get("/admin/repositories/other").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));

    // The blobs are garbage now (their grace period started at the deletion); what other
    // links stays.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gc = t.registry.collect_garbage(false, Some(Duration::ZERO), &|_| {}).await.expect("gc");
    assert_eq!(gc.blobs_deleted, 3, "one's config, two's config and layer: {gc:?}");
    for b in [&b"layer of two"[..], br#"{"architecture":"amd64","os":"linux","seed":"one"}"#] {
        assert_eq!(t.registry.blobs().stat(&sha256(b)).await.expect("stat"), None);
    }
    assert_eq!(t.get(&format!("/v2/other/blobs/{layer_one}")).await.body.as_ref(), b"layer of one");
    assert_eq!(t.get("/v2/other/manifests/v1").await.body.as_ref(), kept.as_slice());
    // The name is free again: a push makes a new, empty-handed repository.
    let (again, _) = t.push_image("app", "v1", "one").await;
    assert_eq!(again, m1);
    assert_eq!(tag_list(&t, "app").await, ["v1"]);
}

#[tokio::test]
async fn bulk_tag_deletion_by_pattern_and_age() {
    let t = registry().await;
    let (_, d) = t.push_image("app", "pr-1", "pr").await;
    for tag in ["pr-2", "pr-3", "main", "v1"] {
        t.push_image("app", tag, "pr").await;
    }
    age_tag(&t, "app", "pr-1", 40).await;
    age_tag(&t, "app", "pr-2", 20).await;
    age_tag(&t, "app", "main", 60).await;

    // Dry run first: nothing changes.
    let r = t.req("DELETE", "/admin/repositories/app/tags?pattern=pr-*&older_than=30d&dry_run=true", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["dry_run"], json!(true));
    assert_eq!(tags_of(&r, "deleted"), ["pr-1"]);
    assert_eq!(r.json()["deleted"][0]["digest"], json!(d.as_str()));
    assert_eq!(tag_list(&t, "app").await.len(), 5);

    let r = t.req("DELETE", "/admin/repositories/app/tags?pattern=pr-*&older_than=30d", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!((r.json()["dry_run"].clone(), tags_of(&r, "deleted")), (json!(false), vec!["pr-1".to_owned()]));
    // The same through a JSON body, without an age.
    let r = t.req("DELETE", "/admin/repositories/app/tags", &[("content-type", "application/json")], r#"{"pattern": "pr-*"}"#).await;
    assert_eq!(tags_of(&r, "deleted"), ["pr-2", "pr-3"]);
    assert_eq!(tag_list(&t, "app").await, ["main", "v1"]);
    // Only the tags went: the manifest is still there by digest.
    assert_eq!(t.get(&format!("/v2/app/manifests/{d}")).await.status, StatusCode::OK);
    let audit = t.get("/admin/audit?repository=app&action=delete").await.json();
    let tags: Vec<&str> = audit["events"].as_array().expect("events").iter().filter_map(|e| e["tag"].as_str()).collect();
    assert_eq!(tags.len(), 3, "one delete event per tag: {tags:?}");

    // Bad parameters are named; an unknown repository is NAME_UNKNOWN.
    for (uri, body, needle) in [
        ("/admin/repositories/app/tags", "", "pattern is required"),
        ("/admin/repositories/app/tags?pattern=a/b", "", "pattern"),
        ("/admin/repositories/app/tags?pattern=x&older_than=soon", "", "older_than"),
        ("/admin/repositories/app/tags?pattern=x&dry_run=maybe", "", "dry_run"),
        ("/admin/repositories/app/tags", r#"{"pattern": "x", "olderThan": "1d"}"#, "olderThan"),
        ("/admin/repositories/app/tags", "not json", "body"),
    ] {
        let r = t.req("DELETE", uri, &[], body).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "QUERY_INVALID"), "{uri} {body}");
        let message = r.json()["errors"][0]["message"].as_str().expect("message").to_owned();
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
    }
    let r = t.req("DELETE", "/admin/repositories/nope/tags?pattern=*", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    assert_eq!(tag_list(&t, "app").await, ["main", "v1"], "nothing changed");
}

#[tokio::test]
async fn admin_deletes_honour_delete_enabled() {
    let t = registry_with(RegistryConfig { delete_enabled: false, ..Default::default() }).await;
    t.push_image("app", "v1", "one").await;
    for uri in ["/admin/repositories/app", "/admin/repositories/app/tags?pattern=*"] {
        let r = t.req("DELETE", uri, &[], "").await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"), "{uri}");
    }
    assert_eq!(tag_list(&t, "app").await, ["v1"]);
}

#[tokio::test]
async fn immutable_tags_survive_bulk_deletes() {
    let rule = ImmutableRule { repositories: "prod/**".parse().expect("pattern"), tags: vec!["v*".parse().expect("pattern")] };
    let t = registry_with(RegistryConfig { policies: Policies { immutable_tags: vec![rule], quotas: vec![] }, ..Default::default() }).await;
    for tag in ["v1", "v2", "dev"] {
        t.push_image("prod/app", tag, tag).await;
    }
    let r = t.req("DELETE", "/admin/repositories/prod/app/tags?pattern=*", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(tags_of(&r, "deleted"), ["dev"]);
    assert_eq!(tags_of(&r, "kept"), ["v1", "v2"]);
    assert!(r.json()["kept"][0]["reason"].as_str().expect("reason").contains("immutable"));
    // A repository holding an immutable tag cannot be deleted either.
    let r = t.req("DELETE", "/admin/repositories/prod/app", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::FORBIDDEN, "DENIED"));
    assert_eq!(tag_list(&t, "prod/app").await, ["v1", "v2"]);
}
