//! Events: webhook deliveries (exact events, envelopes, outage and restart), the audit log file
//! and the admin API.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use registry::{AuditSink, EventsConfig, Registry, RegistryConfig, WebhookEndpoint, WebhookFormat};
use serde_json::Value;
use support::*;
use tokio_util::sync::CancellationToken;

/// A webhook receiver on a fixed port that can be started and stopped.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Value)>>>);

impl Received {
    fn events(&self) -> Vec<Value> {
        self.0.lock().unwrap().iter().flat_map(|(ct, body)| if ct.contains("cloudevents") { body.as_array().unwrap().clone() } else { body["events"].as_array().unwrap().clone() }).collect()
    }
}

async fn receiver(port: u16, got: Received) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let got = got.clone();
            async move {
                assert_eq!(headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer s3cret"));
                let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                got.0.lock().unwrap().push((ct, serde_json::from_slice(&body).unwrap()));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { s.cancelled().await }).await.unwrap();
    });
    (stop, task)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn endpoint(port: u16, format: WebhookFormat, actions: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        name: "ci".into(),
        url: format!("http://127.0.0.1:{port}/hook"),
        headers: vec![("Authorization".into(), "Bearer s3cret".into())],
        timeout: Duration::from_secs(5),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        repositories: vec!["team/**".into()],
        format,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        batch: 100,
    }
}

async fn registry_on(dir: &std::path::Path, events: EventsConfig) -> TestRegistry {
    let blobs = storage::fs::FsStore::open(dir, false).unwrap();
    let meta = meta::MetaStore::open_sqlite(&dir.join("meta.db"), false).await.unwrap();
    let registry = Registry::with_events(meta, Arc::new(blobs), RegistryConfig::default(), events);
    TestRegistry { router: server::router(registry.clone()), registry, dir: tempfile::tempdir().unwrap() }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_the_exact_events_with_distribution_envelope() {
    let port = free_port();
    let got = Received::default();
    let (stop_rx, _rx_task) = receiver(port, got.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let t = registry_on(dir.path(), EventsConfig { endpoints: vec![endpoint(port, WebhookFormat::Distribution, &[])], source: "registry.test:5000".into(), record_pulls: true, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());

    let (m, d) = t.push_image("team/app", "v1", "a").await;
    let pull = t.req("GET", "/v2/team/app/manifests/v1", &[("x-request-id", "pull-123")], vec![]).await;
    assert_eq!(pull.header("x-request-id"), Some("pull-123"));
    t.req("HEAD", "/v2/team/app/manifests/v1", &[], vec![]).await; // HEAD is not a pull
    t.push_image("other/app", "v1", "b").await; // filtered out by repository
    assert_eq!(t.req("DELETE", "/v2/team/app/manifests/v1", &[], vec![]).await.status, StatusCode::ACCEPTED);

    wait_for("5 events", || got.events().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = got.events();
    let summary: Vec<(String, String)> = events.iter().map(|e| (e["action"].as_str().unwrap().to_owned(), e["target"]["mediaType"].as_str().unwrap_or("-").to_owned())).collect();
    assert_eq!(
        summary,
        [
            ("push".into(), "application/octet-stream".into()),
            ("push".into(), "application/octet-stream".into()),
            ("push".into(), OCI_MANIFEST.into()),
            ("pull".into(), OCI_MANIFEST.into()),
            ("delete".into(), "-".into()),
        ]
    );
    let push = &events[2];
    assert_eq!(push["target"]["repository"], "team/app");
    assert_eq!(push["target"]["digest"], d.as_str());
    assert_eq!(push["target"]["tag"], "v1");
    assert_eq!(push["target"]["size"], m.len());
    assert_eq!(push["target"]["url"], format!("http://registry.test:5000/v2/team/app/manifests/{d}"));
    assert_eq!(push["source"]["addr"], "registry.test:5000");
    assert!(push["id"].as_str().unwrap().starts_with("berth-"));
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(events[3]["request"]["id"], "pull-123");
    assert_eq!(events[3]["request"]["method"], "GET");
    assert_eq!(events[4]["target"]["tag"], "v1");
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "each event once");
    assert!(got.0.lock().unwrap().iter().all(|(ct, _)| ct == "application/vnd.docker.distribution.events.v1+json"));

    let status = t.registry.webhook_status().await.unwrap();
    assert_eq!((status[0].queued, status[0].delivered), (0, 5));
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    stop_rx.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_events_and_a_restart_loses_none() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = || EventsConfig { endpoints: vec![endpoint(port, WebhookFormat::CloudEvents, &["push", "delete"])], ..Default::default() };

    // The receiver is down: events queue up.
    let t = registry_on(dir.path(), config()).await;
    let stop = CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());
    for i in 0..3 {
        t.push_image("team/x", &format!("t{i}"), &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = t.registry.webhook_status().await.unwrap();
    assert_eq!(status[0].queued, 9, "3 images of 2 blobs and a manifest each");
    assert!(status[0].failed_attempts >= 1);
    assert!(status[0].last_error.is_some());

    // Stop this registry with everything still queued, then start another on the same data.
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    drop(t);
    let got = Received::default();
    let (stop_rx, _rx) = receiver(port, got.clone()).await;
    let t = registry_on(dir.path(), config()).await;
    let stop = CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());
    t.req("DELETE", "/v2/team/x/manifests/t0", &[], vec![]).await;
    wait_for("10 events after restart", || got.events().len() >= 10).await;
    let events = got.events();
    assert_eq!(events.len(), 10);
    assert!(events.iter().all(|e| e["specversion"] == "1.0" && e["subject"] == "team/x"));
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.last(), Some(&"io.berth.registry.delete"), "in order: the delete comes last");
    assert_eq!(types.iter().filter(|t| **t == "io.berth.registry.push").count(), 9);
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    stop_rx.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_file_and_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let t = registry_on(dir.path(), EventsConfig { audit: AuditSink::File(log.clone()), record_pulls: true, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());
    let (_, d) = t.push_image("a/b", "v1", "x").await;
    t.get("/v2/a/b/manifests/v1").await;
    t.req("DELETE", &format!("/v2/a/b/manifests/{d}"), &[], vec![]).await;
    t.push_image("c/d", "v1", "y").await;
    stop.cancel(); // flushes queued pulls
    for task in tasks {
        task.await.unwrap();
    }

    let lines: Vec<Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Pulls are recorded in batches, so a pull's line may come after a later change's line; its
    // time is when it happened.
    let mut ab: Vec<(String, &str)> = lines.iter().filter(|l| l["repository"] == "a/b").map(|l| (l["time"].as_str().unwrap().to_owned(), l["action"].as_str().unwrap())).collect();
    let mut actions: Vec<&str> = ab.iter().map(|a| a.1).collect();
    actions.sort_unstable();
    assert_eq!(actions, ["delete", "pull", "push", "push", "push"]);
    ab.sort();
    let time_of = |action: &str| ab.iter().find(|a| a.1 == action).unwrap().0.clone();
    assert!(time_of("pull") <= time_of("delete"), "the pull happened before the delete: {ab:?}");
    assert!(lines.iter().all(|l| l["time"].as_str().unwrap().ends_with('Z') && l["requestId"].is_string()));

    let r = t.get("/admin/audit?repository=a/b&action=push").await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["repository"] == "a/b" && e["action"] == "push"));
    let all = t.get("/admin/audit?limit=1000").await.json()["events"].as_array().unwrap().len();
    assert_eq!(all, 8, "a/b: 3 pushes, a pull, a delete; c/d: 3 pushes");
    let page = t.get("/admin/audit?limit=2").await.json()["events"].as_array().unwrap().clone();
    let after = page[1]["id"].as_i64().unwrap();
    let next = t.get(&format!("/admin/audit?limit=2&after={after}")).await.json()["events"].as_array().unwrap().clone();
    assert!(next[0]["id"].as_i64().unwrap() > after);
    assert!(t.get("/admin/audit?until=1970-01-02T00:00:00Z").await.json()["events"].as_array().unwrap().is_empty());
    let bad = t.get("/admin/audit?since=yesterday").await;
    assert_eq!((bad.status, bad.error_code().as_str()), (StatusCode::BAD_REQUEST, "QUERY_INVALID"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_can_ask_for_tag_events_and_quota_refusals() {
    let port = free_port();
    let got = Received::default();
    let (stop_rx, _rx_task) = receiver(port, got.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = storage::fs::FsStore::open(dir.path(), false).unwrap();
    let meta = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.unwrap();
    let quota = meta::Quota { namespace: "team/**".parse().unwrap(), limit: 2000 };
    let config = RegistryConfig { policies: registry::Policies { immutable_tags: Vec::new(), quotas: vec![quota] }, ..RegistryConfig::default() };
    let events = EventsConfig { endpoints: vec![endpoint(port, WebhookFormat::Distribution, &["tag", "quota_exceeded"])], ..Default::default() };
    let registry = Registry::with_events(meta, Arc::new(blobs), config, events);
    let t = TestRegistry { router: server::router(registry.clone()), registry, dir };
    let stop = CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());

    // Blob pushes name no tag: not sent. The manifest pushed by tag is.
    let (_, d) = t.push_image("team/app", "v1", "a").await;
    // Over the quota: refused, and the refusal is an event.
    let big = vec![7u8; 5000];
    let r = t.req("POST", &format!("/v2/team/app/blobs/uploads/?digest={}", sha256(&big)), &[], big.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Deleting the tag names it.
    assert_eq!(t.req("DELETE", "/v2/team/app/manifests/v1", &[], vec![]).await.status, StatusCode::ACCEPTED);

    wait_for("3 events", || got.events().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = got.events();
    let summary: Vec<(String, String)> = events.iter().map(|e| (e["action"].as_str().unwrap().to_owned(), e["target"]["tag"].as_str().unwrap_or("-").to_owned())).collect();
    let mut sorted = summary.clone();
    sorted.sort();
    assert_eq!(sorted, [("delete".into(), "v1".into()), ("push".into(), "v1".into()), ("quota_exceeded".into(), "-".into())], "{events:?}");
    let refusal = events.iter().find(|e| e["action"] == "quota_exceeded").unwrap();
    assert_eq!(refusal["target"]["repository"], "team/app");
    assert_eq!(refusal["target"]["digest"], sha256(&big).as_str());
    assert_eq!(refusal["target"]["size"], 5000);
    assert!(events.iter().any(|e| e["action"] == "push" && e["target"]["digest"] == d.as_str()));
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    stop_rx.cancel();
}
