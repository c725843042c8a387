//! Online garbage collection through the API: what nothing uses goes (from the database and
//! from storage), everything in use stays, and a collection racing pushes that reuse the same
//! layers never loses a blob an accepted manifest references. The race test runs on SQLite and,
//! with `TEST_POSTGRES_URL`, on PostgreSQL (required under `CI=true`).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use oci::Digest;
use registry::{Registry, RegistryConfig};
use support::{OCI_MANIFEST, TestRegistry, image_manifest, sha256};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn gc_now(r: &Registry, dry_run: bool) -> registry::GcReport {
    // Everything last used before this instant is old enough.
    tokio::time::sleep(Duration::from_millis(3)).await;
    r.collect_garbage(dry_run, Some(Duration::ZERO), &|_| {}).await.expect("gc")
}

#[tokio::test]
async fn gc_deletes_what_nothing_uses_and_keeps_every_image() {
    let t = support::registry().await;
    let (kept, _) = t.push_image("app", "v1", "kept").await;
    let stray = t.push_blob("app", b"a blob no manifest references").await;
    let (_, doomed) = t.push_image("app", "v2", "doomed").await;
    let doomed_layer = sha256(b"layer of doomed");
    assert_eq!(t.req("DELETE", &format!("/v2/app/manifests/{doomed}"), &[], "").await.status, StatusCode::ACCEPTED);
    // The kept image's layer is also mounted elsewhere, then unlinked there by a DELETE.
    let kept_layer = sha256(b"layer of kept");
    assert_eq!(t.req("POST", &format!("/v2/other/blobs/uploads/?mount={kept_layer}&from=app"), &[], "").await.status, StatusCode::CREATED);
    assert_eq!(t.req("DELETE", &format!("/v2/other/blobs/{kept_layer}"), &[], "").await.status, StatusCode::ACCEPTED);

    // Inside the grace period nothing goes.
    let r = t.registry.collect_garbage(false, Some(Duration::from_secs(3600)), &|_| {}).await.expect("gc");
    assert_eq!((r.links_removed, r.blobs_deleted), (0, 0));

    let dry = gc_now(&t.registry, true).await;
    assert!(dry.dry_run);
    // stray, and the doomed image's config and layer.
    assert_eq!(dry.blobs_deleted, 3, "{dry:?}");
    assert!(t.registry.blobs().stat(&stray).await.expect("stat").is_some(), "a dry run deletes nothing");

    let r = gc_now(&t.registry, false).await;
    assert_eq!((r.links_removed, r.blobs_deleted, r.bytes_freed, r.storage_errors), (3, 3, dry.bytes_freed, 0), "{r:?}");
    for d in [&stray, &doomed_layer] {
        assert_eq!(t.registry.blobs().stat(d).await.expect("stat"), None, "{d} deleted from storage");
        assert_eq!(t.get(&format!("/v2/app/blobs/{d}")).await.status, StatusCode::NOT_FOUND);
    }
    // The kept image pulls whole.
    let m = t.get("/v2/app/manifests/v1").await;
    assert_eq!(m.body.as_ref(), kept.as_slice());
    assert_eq!(t.get(&format!("/v2/app/blobs/{kept_layer}")).await.body.as_ref(), b"layer of kept");
    // A second run finds nothing more.
    let again = gc_now(&t.registry, false).await;
    assert_eq!((again.links_removed, again.blobs_deleted), (0, 0));
    // A deleted blob can be pushed again.
    t.push_blob("app", b"a blob no manifest references").await;
    assert_eq!(t.get(&format!("/v2/app/blobs/{stray}")).await.body.as_ref(), b"a blob no manifest references");
}

/// Push `layers` (skipping those HEAD says are there, as docker does), then the manifest.
/// Returns the manifest on success, `None` when the registry asked for a retry.
async fn try_push(t: &TestRegistry, repo: &str, tag: &str, config: &[u8], layers: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut descs = Vec::new();
    for blob in std::iter::once(config).chain(layers.iter().map(Vec::as_slice)) {
        let d = sha256(blob);
        if t.req("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], "").await.status != StatusCode::OK {
            let r = t.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], blob.to_vec()).await;
            match r.status {
                StatusCode::CREATED => {}
                StatusCode::SERVICE_UNAVAILABLE => return None,
                s => panic!("blob push answered {s}: {:?}", String::from_utf8_lossy(&r.body)),
            }
        }
        descs.push((d, blob.len()));
    }
    let layer_refs: Vec<(&Digest, usize)> = descs[1..].iter().map(|(d, n)| (d, *n)).collect();
    let m = image_manifest((&descs[0].0, descs[0].1), &layer_refs, None, None);
    let r = t.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    match r.status {
        StatusCode::CREATED => Some(m),
        // The collection took a link between our HEAD/upload and the manifest: push again.
        StatusCode::BAD_REQUEST if r.error_code() == "MANIFEST_BLOB_UNKNOWN" => None,
        StatusCode::SERVICE_UNAVAILABLE => None,
        s => panic!("manifest push answered {s}: {:?}", String::from_utf8_lossy(&r.body)),
    }
}

/// Images each pusher pushes.
const ROUNDS: u64 = 24;

/// Pushers re-using a few base layers, a deleter untagging old images, and a collector with
/// no grace period at all, all at once. Afterwards every image still tagged pulls byte for
/// byte, and the collector did delete things.
async fn race(t: TestRegistry) {
    let t = Arc::new(t);
    let base: Arc<Vec<Vec<u8>>> = Arc::new((0..3).map(|i| noise(1000 + i, 20_000 + i as usize)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let collector = {
        let (t, stop) = (t.clone(), stop.clone());
        tokio::spawn(async move {
            let mut total = registry::GcReport::default();
            while !stop.load(Ordering::SeqCst) {
                let r = t.registry.collect_garbage(false, Some(Duration::ZERO), &|_| {}).await.expect("gc");
                total.links_removed += r.links_removed;
                total.blobs_deleted += r.blobs_deleted;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            total
        })
    };
    let mut pushers = Vec::new();
    for p in 0..4u64 {
        let (t, base, retries) = (t.clone(), base.clone(), retries.clone());
        pushers.push(tokio::spawn(async move {
            let mut pushed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for i in 0..ROUNDS {
                let repo = format!("race/r{}", (p + i) % 3);
                let tag = format!("p{p}-i{i}");
                let config = format!(r#"{{"architecture":"amd64","os":"linux","p":{p},"i":{i}}}"#).into_bytes();
                let mut layers: Vec<Vec<u8>> = base.iter().take(1 + (i % 3) as usize).cloned().collect();
                layers.push(noise(p * 100 + i, 5_000));
                let mut attempts = 0;
                let m = loop {
                    attempts += 1;
                    assert!(attempts < 200, "push {repo}:{tag} kept failing");
                    if let Some(m) = try_push(&t, &repo, &tag, &config, &layers).await {
                        break m;
                    }
                    retries.fetch_add(1, Ordering::SeqCst);
                };
                // Every other image is deleted again, which turns its unique layer into garbage.
                if i % 2 == 1 {
                    let d = sha256(&m);
                    assert_eq!(t.req("DELETE", &format!("/v2/{repo}/manifests/{d}"), &[], "").await.status, StatusCode::ACCEPTED);
                } else {
                    pushed.insert(format!("{repo}:{tag}"), m);
                }
            }
            pushed
        }));
    }
    let mut images = BTreeMap::new();
    for p in pushers {
        images.extend(p.await.expect("pusher"));
    }
    stop.store(true, Ordering::SeqCst);
    let total = collector.await.expect("collector");
    // One more collection with nothing in flight, then every remaining image must be whole.
    gc_now(&t.registry, false).await;
    for (name, m) in &images {
        let (repo, tag) = name.split_once(':').expect("name");
        let got = t.get(&format!("/v2/{repo}/manifests/{tag}")).await;
        assert_eq!(got.body.as_ref(), m.as_slice(), "{name}");
        let doc: serde_json::Value = serde_json::from_slice(m).expect("json");
        let descs = std::iter::once(&doc["config"]).chain(doc["layers"].as_array().expect("layers"));
        for desc in descs {
            let d: Digest = desc["digest"].as_str().expect("digest").parse().expect("digest");
            let r = t.get(&format!("/v2/{repo}/blobs/{d}")).await;
            if r.status != StatusCode::OK {
                // Say which layer lost it: the repository's link, the blob's row, or the bytes.
                let repo_name: oci::RepoName = repo.parse().expect("repo");
                let link = t.registry.meta().blob_in_repo(&repo_name, &d).await.expect("q");
                let row = t.registry.meta().blob_anywhere(&d).await.expect("q");
                let bytes = t.registry.blobs().stat(&d).await.expect("stat");
                panic!("{name}: {d} lost ({}): link {link:?}, row {row:?}, bytes {bytes:?}", r.status);
            }
            assert_eq!(sha256(&r.body), d, "{name}: {d} corrupt");
        }
    }
    assert_eq!(images.len(), 4 * ROUNDS as usize / 2);
    assert!(total.blobs_deleted > 0, "the collector deleted nothing: {total:?}");
    let _ = std::io::stderr().write_all(format!("race: {} images kept, collector {total:?}, {} pushes retried\n", images.len(), retries.load(Ordering::SeqCst)).as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_pushes_never_loses_a_blob_sqlite() {
    race(support::registry().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_racing_pushes_never_loses_a_blob_postgres() {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "TEST_POSTGRES_URL is unset and CI=true");
        let _ = std::io::stderr().write_all(b"\n*** SKIPPED, NOT TESTED ON POSTGRESQL: TEST_POSTGRES_URL is unset ***\n");
        return;
    };
    use sqlx::{Connection, Executor};
    let name = format!("gc_race_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::postgres::PgConnection::connect(&url).await.expect("connect");
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
    c.close().await.expect("close");
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    let meta = meta::MetaStore::connect_postgres(&format!("{base}/{name}"), 16).await.expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = storage::fs::FsStore::open(dir.path(), false).expect("fs");
    let config = RegistryConfig { manifest_cache_bytes: 0, ..RegistryConfig::default() };
    let registry = Registry::new(meta, Arc::new(blobs), config);
    race(TestRegistry { router: server::router(registry.clone()), registry, dir }).await;
}

/// `POST /admin/gc`: one collection inside the server, its report as JSON; a dry run changes
/// nothing; a second request while one runs in this process is refused; bad parameters are
/// named.
#[tokio::test]
async fn admin_gc_collects_inside_the_server() {
    let t = support::registry().await;
    let (kept, _) = t.push_image("app", "v1", "kept").await;
    let garbage: &[u8] = b"garbage for the admin API";
    let stray = t.push_blob("app", garbage).await;
    tokio::time::sleep(Duration::from_millis(3)).await;

    // With the configured grace period (24 h) nothing goes.
    let r = t.req("POST", "/admin/gc", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!((j["dry_run"].as_bool(), j["links_removed"].as_u64(), j["blobs_deleted"].as_u64()), (Some(false), Some(0), Some(0)), "{j}");

    let r = t.req("POST", "/admin/gc?dry_run=true&grace=0s", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!((j["dry_run"].as_bool(), j["blobs_deleted"].as_u64(), j["bytes_freed"].as_u64()), (Some(true), Some(1), Some(garbage.len() as u64)), "{j}");
    assert!(t.registry.blobs().stat(&stray).await.expect("stat").is_some(), "a dry run deletes nothing");

    // One collection at a time in a process: the background task and the API share the guard.
    let held = registry::GcGuard::try_acquire().expect("no collection is running");
    let r = t.req("POST", "/admin/gc?grace=0s", &[], "").await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::CONFLICT, "CONFLICT"));
    assert!(t.registry.start_garbage_collection(false, None).is_none());
    drop(held);
    assert_eq!(t.get(&format!("/v2/app/blobs/{stray}")).await.status, StatusCode::OK, "the refused request collected nothing");

    for q in ["grace=soon", "grace=", "dry_run=maybe", "dryrun=true"] {
        let r = t.req("POST", &format!("/admin/gc?{q}"), &[], "").await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "QUERY_INVALID"), "{q}");
    }
    assert_eq!(t.req("GET", "/admin/gc", &[], "").await.status, StatusCode::METHOD_NOT_ALLOWED);

    let r = t.req("POST", "/admin/gc?dry_run=false&grace=0s", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!(
        (j["links_removed"].as_u64(), j["blobs_deleted"].as_u64(), j["bytes_freed"].as_u64(), j["storage_errors"].as_u64(), j["untagged_deleted"].as_u64()),
        (Some(1), Some(1), Some(garbage.len() as u64), Some(0), Some(0)),
        "{j}"
    );
    assert!(j["seconds"].as_f64().is_some(), "{j}");
    assert_eq!(t.registry.blobs().stat(&stray).await.expect("stat"), None, "deleted from storage");
    assert_eq!(t.get(&format!("/v2/app/blobs/{stray}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(t.get("/v2/app/manifests/v1").await.body.as_ref(), kept.as_slice(), "the image stays");
    assert!(registry::GcGuard::try_acquire().is_some(), "the guard is released when the collection ends");
}
