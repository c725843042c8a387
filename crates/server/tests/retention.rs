//! Retention through the engine (`Registry::run_retention`) with explicit push times: which
//! tags a policy deletes, which manifests go with them (untagged images, their referrers, an
//! index's children), what a dry run reports, immutable tags kept without failing the run, and
//! that garbage collection afterwards frees exactly the blobs only the deleted images used
//! while the kept images still pull byte for byte.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use oci::Digest;
use registry::{Fate, ImmutableRule, Policies, RegistryConfig, RetentionConfig, RetentionPolicy, RetentionReport, TagRegex};
use sqlx::Connection;
use support::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Set the push time of each `(repository, tag, days before now)`.
async fn push_times(t: &TestRegistry, now: i64, ages: &[(&str, &str, i64)]) {
    let url = format!("sqlite://{}", t.dir.path().join("meta.db").display());
    let mut c = sqlx::sqlite::SqliteConnection::connect(&url).await.expect("connect");
    for (repo, tag, days) in ages {
        let r = sqlx::query("UPDATE tags SET updated_at = ? WHERE name = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)")
            .bind(now - days * DAY_MS)
            .bind(*tag)
            .bind(*repo)
            .execute(&mut c)
            .await
            .expect("update");
        assert_eq!(r.rows_affected(), 1, "{repo}:{tag}");
    }
    c.close().await.expect("close");
}

/// An image: its manifest, digest and every blob (config first).
struct Image {
    manifest: Vec<u8>,
    digest: Digest,
    blobs: Vec<Vec<u8>>,
}

/// Push an image of `blobs` (config first) to `repo` under `reference` (a tag or, with
/// `None`, its digest), optionally as a referrer of `subject`.
async fn push(t: &TestRegistry, repo: &str, reference: Option<&str>, blobs: &[&[u8]], subject: Option<&Image>) -> Image {
    let mut descs = Vec::new();
    for b in blobs {
        descs.push((t.push_blob(repo, b).await, b.len()));
    }
    let layers: Vec<(&Digest, usize)> = descs[1..].iter().map(|(d, n)| (d, *n)).collect();
    let manifest = image_manifest((&descs[0].0, descs[0].1), &layers, subject.map(|_| "application/vnd.example.signature"), subject.map(|s| (&s.digest, s.manifest.len())));
    let digest = sha256(&manifest);
    let reference = reference.map_or_else(|| digest.to_string(), str::to_owned);
    let r = t.put_manifest(repo, &reference, OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", String::from_utf8_lossy(&r.body));
    Image { manifest, digest, blobs: blobs.iter().map(|b| b.to_vec()).collect() }
}

fn policy() -> RetentionPolicy {
    RetentionPolicy {
        keep_last: Some(2),
        keep_tags: vec![TagRegex::new(r"v\d+\.\d+\.\d+").expect("regex"), TagRegex::new("latest").expect("regex")],
        delete_older_than: Some(Duration::from_secs(90 * 86_400)),
        keep_at_least: 1,
        delete_untagged: true,
        ..RetentionPolicy::new("apps/**".parse().expect("pattern"))
    }
}

fn fates(r: &RetentionReport) -> Vec<(String, String, Fate)> {
    let mut v: Vec<_> = r.tags.iter().map(|t| (t.repository.clone(), t.tag.tag.clone(), t.fate.clone())).collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

async fn tag_list(t: &TestRegistry, repo: &str) -> Vec<String> {
    t.get(&format!("/v2/{repo}/tags/list")).await.json()["tags"].as_array().expect("tags").iter().map(|t| t.as_str().expect("tag").to_owned()).collect()
}

async fn pulls_whole(t: &TestRegistry, repo: &str, reference: &str, image: &Image) {
    let m = t.get(&format!("/v2/{repo}/manifests/{reference}")).await;
    assert_eq!(m.status, StatusCode::OK, "{repo}:{reference}");
    assert_eq!(m.body.as_ref(), image.manifest.as_slice(), "{repo}:{reference} manifest");
    for b in &image.blobs {
        let r = t.get(&format!("/v2/{repo}/blobs/{}", sha256(b))).await;
        assert_eq!(r.body.as_ref(), b.as_slice(), "{repo}:{reference} blob {}", sha256(b));
    }
}

#[tokio::test]
async fn retention_deletes_old_tags_and_their_images_and_gc_frees_only_their_blobs() {
    let t = registry().await;
    let repo = "apps/web";
    let shared: &[u8] = b"a base layer shared by a kept and a deleted image";
    let release = push(&t, repo, Some("v1.0.0"), &[b"cfg release", shared, b"release layer"], None).await;
    let latest = push(&t, repo, Some("latest"), &[b"cfg latest", b"latest layer"], None).await;
    let fresh = push(&t, repo, Some("pr-3"), &[b"cfg pr-3", b"pr-3 layer"], None).await;
    let old1 = push(&t, repo, Some("pr-1"), &[b"cfg pr-1", shared, b"pr-1 layer"], None).await;
    let old2 = push(&t, repo, Some("pr-2"), &[b"cfg pr-2", b"pr-2 layer"], None).await;
    // A signature of pr-1 (untagged referrer) and of latest.
    let sig1 = push(&t, repo, None, &[b"sig cfg 1", b"signature of pr-1"], Some(&old1)).await;
    let sig_latest = push(&t, repo, None, &[b"sig cfg 2", b"signature of latest"], Some(&latest)).await;
    // A multi-platform index whose children are untagged.
    let amd = push(&t, repo, None, &[b"cfg amd64", b"amd64 layer"], None).await;
    let arm = push(&t, repo, None, &[b"cfg arm64", b"arm64 layer"], None).await;
    let idx = index(&[(&amd.digest, amd.manifest.len()), (&arm.digest, arm.manifest.len())]);
    assert_eq!(t.put_manifest(repo, "multi", OCI_INDEX, &idx).await.status, StatusCode::CREATED);
    // Another repository no policy names, with an ancient tag.
    let untouched = push(&t, "tools/ci", Some("old"), &[b"cfg ci", b"ci layer"], None).await;

    let now = now_ms();
    push_times(&t, now, &[(repo, "latest", 1), (repo, "pr-3", 10), (repo, "pr-2", 95), (repo, "pr-1", 100), (repo, "multi", 200), (repo, "v1.0.0", 400), ("tools/ci", "old", 1000)]).await;
    let config = RetentionConfig { schedule: None, policies: vec![policy()] };

    // Dry run: pr-2, pr-1 and multi would go (older than 90 days, beyond the 2 newest, not
    // kept by name); nothing changes.
    let dry = t.registry.run_retention(&config, now, true).await.expect("dry run");
    let would = |tag: &str| (repo.to_owned(), tag.to_owned(), Fate::WouldDelete);
    assert_eq!(fates(&dry), [would("multi"), would("pr-1"), would("pr-2")]);
    assert!(dry.tags.iter().all(|t| t.last_tag && t.rule.contains("apps/**")), "{:?}", dry.tags);
    assert_eq!((dry.repositories, dry.tags_kept, dry.errors), (1, 3, 0));
    assert!(dry.manifests.is_empty());
    assert_eq!(tag_list(&t, repo).await.len(), 6);

    // For real, then again (nothing left to do).
    let done = t.registry.run_retention(&config, now, false).await.expect("run");
    let gone = |tag: &str| (repo.to_owned(), tag.to_owned(), Fate::Deleted);
    assert_eq!(fates(&done), [gone("multi"), gone("pr-1"), gone("pr-2")]);
    assert_eq!(done.errors, 0);
    let mut manifests: Vec<(String, &str)> = done.manifests.iter().map(|m| (m.digest.clone(), m.role)).collect();
    manifests.sort();
    let mut want = vec![
        (old1.digest.to_string(), "untagged"),
        (sig1.digest.to_string(), "referrer"),
        (old2.digest.to_string(), "untagged"),
        (sha256(&idx).to_string(), "untagged"),
        (amd.digest.to_string(), "child"),
        (arm.digest.to_string(), "child"),
    ];
    want.sort();
    assert_eq!(manifests, want);
    assert_eq!(tag_list(&t, repo).await, ["latest", "pr-3", "v1.0.0"]);
    let again = t.registry.run_retention(&config, now, false).await.expect("run again");
    assert_eq!((again.deleted(), again.manifests.len()), (0, 0));

    // Every deletion is an event.
    let audit = t.get("/admin/audit?repository=apps/web&action=delete").await.json();
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.iter().filter(|e| e["tag"].is_string()).count(), 3);
    assert_eq!(events.iter().filter(|e| e["tag"].is_null()).count(), 6);

    // Garbage collection now frees the blobs only the deleted images used.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gc = t.registry.collect_garbage(false, Some(Duration::ZERO), &|_| {}).await.expect("gc");
    let deleted_only: Vec<&Vec<u8>> = [&old1, &old2, &sig1, &amd, &arm].iter().flat_map(|i| i.blobs.iter()).filter(|b| b.as_slice() != shared).collect();
    assert_eq!(gc.blobs_deleted, deleted_only.len() as u64, "{gc:?}");
    for b in deleted_only {
        assert_eq!(t.registry.blobs().stat(&sha256(b)).await.expect("stat"), None, "{:?} is gone", String::from_utf8_lossy(b));
    }
    for (reference, image) in [("v1.0.0", &release), ("latest", &latest), ("pr-3", &fresh)] {
        pulls_whole(&t, repo, reference, image).await;
    }
    pulls_whole(&t, repo, &sig_latest.digest.to_string(), &sig_latest).await;
    pulls_whole(&t, "tools/ci", "old", &untouched).await;
}

#[tokio::test]
async fn retention_keeps_immutable_tags_and_goes_on() {
    let rule = ImmutableRule { repositories: "apps/**".parse().expect("pattern"), tags: vec!["pr-1".parse().expect("pattern")] };
    let t = registry_with(RegistryConfig { policies: Policies { immutable_tags: vec![rule], quotas: vec![] }, ..Default::default() }).await;
    let repo = "apps/api";
    let one = push(&t, repo, Some("pr-1"), &[b"cfg 1", b"layer 1"], None).await;
    push(&t, repo, Some("pr-2"), &[b"cfg 2", b"layer 2"], None).await;
    push(&t, repo, Some("main"), &[b"cfg 3", b"layer 3"], None).await;
    let now = now_ms();
    push_times(&t, now, &[(repo, "pr-1", 300), (repo, "pr-2", 200), (repo, "main", 0)]).await;
    let config = RetentionConfig { schedule: None, policies: vec![RetentionPolicy { keep_last: Some(1), keep_at_least: 0, ..RetentionPolicy::new("apps/**".parse().expect("pattern")) }] };
    let r = t.registry.run_retention(&config, now, false).await.expect("run");
    let f = fates(&r);
    assert_eq!(f.len(), 2);
    assert_eq!(f[1], (repo.to_owned(), "pr-2".to_owned(), Fate::Deleted));
    assert!(matches!(&f[0].2, Fate::Kept(why) if why.contains("immutable")), "{f:?}");
    assert_eq!(r.errors, 0);
    assert_eq!(tag_list(&t, repo).await, ["main", "pr-1"]);
    pulls_whole(&t, repo, "pr-1", &one).await;
}

#[tokio::test]
async fn keep_at_least_and_policies_in_order() {
    let t = registry().await;
    for (repo, tag) in [("apps/a", "x"), ("apps/a", "y"), ("apps/special/b", "x"), ("apps/special/b", "y")] {
        push(&t, repo, Some(tag), &[format!("cfg {repo} {tag}").as_bytes(), format!("layer {repo} {tag}").as_bytes()], None).await;
    }
    let now = now_ms();
    push_times(&t, now, &[("apps/a", "x", 500), ("apps/a", "y", 400), ("apps/special/b", "x", 500), ("apps/special/b", "y", 400)]).await;
    let old = |keep_at_least| RetentionPolicy { delete_older_than: Some(Duration::from_secs(86_400)), keep_at_least, ..RetentionPolicy::new("apps/**".parse().expect("pattern")) };
    // The first matching policy governs: apps/special/** keeps nothing back, apps/** keeps one.
    let special = RetentionPolicy { repositories: "apps/special/**".parse().expect("pattern"), ..old(0) };
    let config = RetentionConfig { schedule: None, policies: vec![special, old(1)] };
    let r = t.registry.run_retention(&config, now, false).await.expect("run");
    assert_eq!(r.repositories, 2);
    assert_eq!(tag_list(&t, "apps/a").await, ["y"], "keep_at_least 1 spares the newest");
    assert!(r.tags.iter().any(|t| t.tag.tag == "y" && matches!(&t.fate, Fate::Kept(w) if w.contains("keep_at_least"))));
    assert!(tag_list(&t, "apps/special/b").await.is_empty());
    // The repository stays (empty); its images went.
    assert_eq!(t.get("/v2/_catalog").await.json()["repositories"].as_array().expect("repos").len(), 2);
    assert_eq!(r.manifests.len(), 3);
}

#[tokio::test]
async fn retention_runs_on_its_schedule_until_shutdown() {
    let t = registry().await;
    push(&t, "apps/bg", Some("old"), &[b"cfg old", b"layer old"], None).await;
    push(&t, "apps/bg", Some("new"), &[b"cfg new", b"layer new"], None).await;
    push_times(&t, now_ms(), &[("apps/bg", "old", 2), ("apps/bg", "new", 1)]).await;
    let config = RetentionConfig { schedule: Some(Duration::from_millis(20)), policies: vec![RetentionPolicy { keep_last: Some(1), ..RetentionPolicy::new("apps/**".parse().expect("pattern")) }] };
    assert!(t.registry.spawn_retention(RetentionConfig { schedule: None, ..config.clone() }, tokio_util::sync::CancellationToken::new()).is_none(), "no schedule, no task");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = t.registry.spawn_retention(config, stop.clone()).expect("scheduled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tag_list(&t, "apps/bg").await != ["new"] {
        assert!(tokio::time::Instant::now() < deadline, "the background run never deleted the old tag");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The run deletes the tag, then its manifest, in separate transactions: the tag list can
    // change before the second deletion lands, so wait for both events.
    let audit = loop {
        let audit = t.get("/admin/audit?repository=apps/bg&action=delete").await.json();
        if audit["events"].as_array().expect("events").len() >= 2 {
            break audit;
        }
        assert!(tokio::time::Instant::now() < deadline, "the manifest was never deleted: {audit}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on cancel").expect("task");
    // Its events carry one request id per run.
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "the tag and its manifest: {audit}");
    assert!(events.iter().all(|e| e["request_id"].as_str().is_some_and(|id| id.starts_with("retention-"))), "{audit}");
}
