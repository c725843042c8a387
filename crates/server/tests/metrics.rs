//! Metrics and health endpoints: a known workload against a router with metrics, the scrape
//! parsed by a real OpenMetrics parser, exact counts per route and status class, bytes, label
//! hygiene, scrape-time storage totals and their cache; `/healthz` and `/readyz`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use openmetrics_parser::{MetricNumber, OpenMetricsValue};
use registry::{Registry, RegistryConfig};
use server::metrics::{Metrics, MetricsOptions, RepoUsage, StorageTotals};
use server::{Observability, ops_router, router_with};
use storage::instrumented::Instrumented;
use support::{OCI_MANIFEST, TestRegistry, image_manifest, sha256};

const UPLOADS: &str = "/v2/{name}/blobs/uploads/";
const MANIFESTS: &str = "/v2/{name}/manifests/{reference}";
const BLOBS: &str = "/v2/{name}/blobs/{digest}";

/// Every route label a request metric may carry.
const ROUTES: &[&str] = &[
    "/v2/",
    "/v2/_catalog",
    "/v2/{name}/tags/list",
    MANIFESTS,
    BLOBS,
    UPLOADS,
    "/v2/{name}/blobs/uploads/{id}",
    "/v2/{name}/referrers/{digest}",
    "/metrics",
    "/healthz",
    "/readyz",
    "other",
];

struct Setup {
    t: TestRegistry,
    metrics: Metrics,
    /// How many times the storage totals provider was called.
    provider_calls: Arc<AtomicUsize>,
}

/// A registry whose blob store is instrumented, a router with metrics on the main listener, and
/// a storage totals provider: totals from the database's blob list, 2 open uploads, and 150
/// synthetic repositories (`team/repo-000` .. `team/repo-149`, bytes 1000 + i).
async fn setup(storage_refresh: Duration) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Metrics::new(MetricsOptions { storage_refresh });
    let fs = storage::fs::FsStore::open(dir.path(), false).expect("fs store");
    let blobs = Arc::new(Instrumented::new(Arc::new(fs), metrics.storage_observer()));
    let meta = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("sqlite");
    let registry = Registry::new(meta, blobs, RegistryConfig::default());
    let provider_calls = Arc::new(AtomicUsize::new(0));
    let (calls, reg) = (provider_calls.clone(), registry.clone());
    metrics.set_storage_totals(Arc::new(move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let reg = reg.clone();
        Box::pin(async move {
            let blobs = reg.meta().all_blobs().await.map_err(|e| e.to_string())?;
            Ok(StorageTotals {
                storage: meta::StorageTotals {
                    total_bytes: blobs.iter().map(|(_, s)| s).sum(),
                    blob_count: blobs.len() as u64,
                    open_uploads: 2,
                    per_repo: (0..150u64).map(|i| RepoUsage { repository: format!("team/repo-{i:03}"), bytes: 1000 + i, blobs: i % 7 }).collect(),
                },
                webhooks: vec![meta::EndpointStatus { endpoint: "ci".into(), queued: 4, delivered: 17, failed_attempts: 2, ..Default::default() }],
            })
        })
    }));
    let router = router_with(registry.clone(), Observability { metrics: Some(metrics.clone()), metrics_on_main: true });
    Setup { t: TestRegistry { router, registry, dir }, metrics, provider_calls }
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Counter(f64),
    Gauge(f64),
    Histogram { count: u64, sum: f64 },
    Other,
}

#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: Val,
}

/// Parse an exposition with a full OpenMetrics parser (it rejects anything malformed) and
/// flatten it to one entry per series.
fn parse(text: &str) -> Vec<Series> {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text).unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{text}"));
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().expect("labels").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let value = match &sample.value {
                OpenMetricsValue::Counter(c) => Val::Counter(c.value.as_f64()),
                OpenMetricsValue::Gauge(g) => Val::Gauge(g.as_f64()),
                OpenMetricsValue::Histogram(h) => Val::Histogram { count: h.count.expect("count"), sum: h.sum.as_ref().map_or(0.0, MetricNumber::as_f64) },
                _ => Val::Other,
            };
            out.push(Series { name: name.clone(), labels, value });
        }
    }
    out
}

async fn scrape(t: &TestRegistry) -> Vec<Series> {
    let r = t.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    parse(std::str::from_utf8(&r.body).expect("utf-8"))
}

fn find<'a>(s: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a Val> {
    s.iter().find(|x| x.name == name && labels.iter().all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v)) && x.labels.len() == labels.len()).map(|x| &x.value)
}

fn counter(s: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels) {
        Some(Val::Counter(v)) => *v,
        other => panic!("{name}{labels:?}: expected a counter, found {other:?}"),
    }
}

fn gauge(s: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels) {
        Some(Val::Gauge(v)) => *v,
        other => panic!("{name}{labels:?}: expected a gauge, found {other:?}"),
    }
}

fn histogram_count(s: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(s, name, labels) {
        Some(Val::Histogram { count, .. }) => *count,
        other => panic!("{name}{labels:?}: expected a histogram, found {other:?}"),
    }
}

#[tokio::test]
async fn a_known_workload_is_counted_exactly_by_route_and_status_class() {
    let s = setup(Duration::from_secs(30)).await;
    let t = &s.t;
    let repo = "team/app";

    // 3 blob pushes (monolithic POSTs, sent without a Content-Length header).
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let l1 = b"first layer ".repeat(300);
    let l2 = b"second layer ".repeat(500);
    let cd = t.push_blob(repo, &config).await;
    let d1 = t.push_blob(repo, &l1).await;
    let d2 = t.push_blob(repo, &l2).await;

    // 2 manifest PUTs.
    let m1 = image_manifest((&cd, config.len()), &[(&d1, l1.len())], None, None);
    let m2 = image_manifest((&cd, config.len()), &[(&d2, l2.len())], None, None);
    let mut manifest_bytes_out = 0;
    for (tag, m) in [("one", &m1), ("two", &m2)] {
        let r = t.put_manifest(repo, tag, OCI_MANIFEST, m).await;
        assert_eq!(r.status, StatusCode::CREATED);
        manifest_bytes_out += r.body.len();
    }

    // 5 manifest GETs (by tag and by digest) and 1 that is not found.
    let m2_digest = sha256(&m2);
    for uri in [
        format!("/v2/{repo}/manifests/one"),
        format!("/v2/{repo}/manifests/one"),
        format!("/v2/{repo}/manifests/one"),
        format!("/v2/{repo}/manifests/{m2_digest}"),
        format!("/v2/{repo}/manifests/{m2_digest}"),
        format!("/v2/{repo}/manifests/missing"),
    ] {
        let r = t.get(&uri).await;
        manifest_bytes_out += r.body.len();
    }
    // One blob HEAD: a Content-Length but no body.
    let r = t.req("HEAD", &format!("/v2/{repo}/blobs/{d2}"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some(l2.len().to_string().as_str()));
    // And a path outside the API.
    assert_eq!(t.get("/nowhere").await.status, StatusCode::NOT_FOUND);

    let m = scrape(t).await;

    // Request counts: exactly these series, besides the scrape itself (counted after its
    // response, so absent from the first scrape).
    let mut requests: Vec<(String, String, String, f64)> = m
        .iter()
        .filter(|x| x.name == "registry_http_requests")
        .map(|x| {
            let Val::Counter(v) = x.value else { panic!("not a counter: {x:?}") };
            (x.labels["method"].clone(), x.labels["route"].clone(), x.labels["status_class"].clone(), v)
        })
        .collect();
    requests.sort_by(|a, b| a.partial_cmp(b).expect("ordered"));
    let expected = [
        ("GET", "other", "4xx", 1.0),
        ("GET", MANIFESTS, "2xx", 5.0),
        ("GET", MANIFESTS, "4xx", 1.0),
        ("HEAD", BLOBS, "2xx", 1.0),
        ("POST", UPLOADS, "2xx", 3.0),
        ("PUT", MANIFESTS, "2xx", 2.0),
    ];
    let mut expected: Vec<(String, String, String, f64)> = expected.iter().map(|(a, b, c, d)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned(), *d)).collect();
    expected.sort_by(|a, b| a.partial_cmp(b).expect("ordered"));
    assert_eq!(requests, expected);

    // Durations: one observation per request, by method and route.
    assert_eq!(histogram_count(&m, "registry_http_request_duration_seconds", &[("method", "GET"), ("route", MANIFESTS)]), 6);
    assert_eq!(histogram_count(&m, "registry_http_request_duration_seconds", &[("method", "POST"), ("route", UPLOADS)]), 3);
    assert_eq!(histogram_count(&m, "registry_http_request_duration_seconds", &[("method", "PUT"), ("route", MANIFESTS)]), 2);

    // Bytes: body bytes actually read and sent (the pushes had no Content-Length header).
    let pushed = (config.len() + l1.len() + l2.len()) as f64;
    assert_eq!(counter(&m, "registry_http_request_bytes", &[("route", UPLOADS)]), pushed);
    assert_eq!(counter(&m, "registry_http_request_bytes", &[("route", MANIFESTS)]), (m1.len() + m2.len()) as f64);
    assert_eq!(counter(&m, "registry_http_response_bytes", &[("route", MANIFESTS)]), manifest_bytes_out as f64);
    assert!(manifest_bytes_out >= 3 * m1.len() + 2 * m2.len());
    assert_eq!(counter(&m, "registry_http_response_bytes", &[("route", BLOBS)]), 0.0, "a HEAD sends no body");

    // The scrape itself is the one request in flight.
    assert_eq!(gauge(&m, "registry_http_in_flight_requests", &[]), 1.0);

    // No request metric carries a repository, a digest, a tag or a raw path.
    for x in m.iter().filter(|x| x.name.starts_with("registry_http_")) {
        for (k, v) in &x.labels {
            assert!(!v.contains("sha256:") && !v.contains("team/") && !v.contains("missing") && !v.contains("nowhere"), "{}: {k}={v}", x.name);
            if k == "route" {
                assert!(ROUTES.contains(&v.as_str()), "{}: route {v} is not a template", x.name);
            }
        }
        assert!(x.labels.keys().all(|k| ["method", "route", "status_class", "le"].contains(&k.as_str())), "{x:?}");
    }

    // Storage operations, timed by the instrumented store: one commit per pushed blob.
    assert_eq!(histogram_count(&m, "registry_storage_action_seconds", &[("driver", "filesystem"), ("action", "commit_upload")]), 3);
    assert!(histogram_count(&m, "registry_storage_action_seconds", &[("driver", "filesystem"), ("action", "upload_writer")]) >= 3);
    assert!(find(&m, "berth_storage_action_errors", &[("driver", "filesystem"), ("action", "commit_upload")]).is_none());

    // Storage totals, from the provider at scrape time.
    assert_eq!(gauge(&m, "registry_storage_blobs", &[]), 3.0);
    assert_eq!(gauge(&m, "registry_storage_size_bytes", &[]), pushed);
    assert_eq!(gauge(&m, "berth_uploads_in_progress", &[]), 2.0);
    // Only the 100 largest of the 150 repositories.
    let repos: Vec<&Series> = m.iter().filter(|x| x.name == "berth_repository_size_bytes").collect();
    assert_eq!(repos.len(), 100);
    assert_eq!(m.iter().filter(|x| x.name == "berth_repository_blobs").count(), 100);
    assert_eq!(gauge(&m, "berth_repository_size_bytes", &[("repository", "team/repo-149")]), 1149.0);
    assert_eq!(gauge(&m, "berth_repository_blobs", &[("repository", "team/repo-149")]), (149 % 7) as f64);
    assert_eq!(gauge(&m, "berth_repository_size_bytes", &[("repository", "team/repo-050")]), 1050.0);
    assert!(find(&m, "berth_repository_size_bytes", &[("repository", "team/repo-049")]).is_none(), "not among the 100 largest");
    // Webhook delivery figures, per endpoint.
    assert_eq!(gauge(&m, "berth_webhook_queue_depth", &[("endpoint", "ci")]), 4.0);
    assert_eq!(counter(&m, "berth_webhook_deliveries", &[("endpoint", "ci")]), 17.0);
    assert_eq!(counter(&m, "berth_webhook_failures", &[("endpoint", "ci")]), 2.0);

    // The first scrape shows up in the next one; nothing in flight is left over but the scrape.
    let m = scrape(t).await;
    assert_eq!(counter(&m, "registry_http_requests", &[("method", "GET"), ("route", "/metrics"), ("status_class", "2xx")]), 1.0);
    assert!(counter(&m, "registry_http_response_bytes", &[("route", "/metrics")]) > 1000.0);
    assert_eq!(gauge(&m, "registry_http_in_flight_requests", &[]), 1.0);
}

#[tokio::test]
async fn storage_totals_are_read_once_per_refresh_interval() {
    let s = setup(Duration::from_secs(3600)).await;
    scrape(&s.t).await;
    s.t.push_blob("a", b"more bytes").await;
    let m = scrape(&s.t).await;
    assert_eq!(s.provider_calls.load(Ordering::SeqCst), 1, "the second scrape is served from the cache");
    assert_eq!(gauge(&m, "registry_storage_blobs", &[]), 0.0, "cached values until the interval passes");

    let s = setup(Duration::ZERO).await;
    scrape(&s.t).await;
    s.t.push_blob("a", b"more bytes").await;
    let m = scrape(&s.t).await;
    assert_eq!(s.provider_calls.load(Ordering::SeqCst), 2);
    assert_eq!(gauge(&m, "registry_storage_blobs", &[]), 1.0);
}

#[tokio::test]
async fn a_failing_provider_keeps_the_previous_totals_and_the_scrape_succeeds() {
    let s = setup(Duration::ZERO).await;
    s.t.push_blob("a", b"some bytes").await;
    assert_eq!(gauge(&scrape(&s.t).await, "registry_storage_blobs", &[]), 1.0);
    s.metrics.set_storage_totals(Arc::new(|| Box::pin(async { Err("database is down".to_owned()) })));
    let m = scrape(&s.t).await;
    assert_eq!(gauge(&m, "registry_storage_blobs", &[]), 1.0);
    assert_eq!(gauge(&m, "berth_repository_size_bytes", &[("repository", "team/repo-149")]), 1149.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let s = setup(Duration::from_secs(30)).await;
    let t = &s.t;
    let r = t.get("/healthz").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    let r = t.get("/readyz").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));

    t.registry.meta().close().await;
    let r = t.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("metadata database"), "{body}");
    assert!(!body.contains("blob storage"), "{body}");
    assert_eq!(t.get("/healthz").await.status, StatusCode::OK, "liveness does not depend on the database");

    let m = scrape(t).await;
    assert_eq!(counter(&m, "registry_http_requests", &[("method", "GET"), ("route", "/readyz"), ("status_class", "5xx")]), 1.0);
    assert_eq!(counter(&m, "registry_http_requests", &[("method", "GET"), ("route", "/healthz"), ("status_class", "2xx")]), 2.0);
}

#[tokio::test]
async fn the_plain_router_has_probes_but_no_metrics() {
    let t = support::registry().await;
    assert_eq!(t.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(t.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(t.get("/metrics").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_separate_admin_listener_serves_metrics_the_main_one_records() {
    let s = setup(Duration::from_secs(30)).await;
    let main = router_with(s.t.registry.clone(), Observability { metrics: Some(s.metrics.clone()), metrics_on_main: false });
    let main = TestRegistry { router: main, registry: s.t.registry.clone(), dir: tempfile::tempdir().expect("tempdir") };
    let admin = TestRegistry { router: ops_router(s.t.registry.clone(), Some(s.metrics.clone())), registry: s.t.registry.clone(), dir: tempfile::tempdir().expect("tempdir") };

    assert_eq!(main.get("/metrics").await.status, StatusCode::NOT_FOUND);
    assert_eq!(main.get("/admin/audit").await.status, StatusCode::NOT_FOUND, "the admin API moves to the operations listener");
    assert_eq!(admin.get("/admin/audit").await.status, StatusCode::OK);
    assert_eq!(main.get("/v2/").await.status, StatusCode::OK);
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);

    let m = scrape(&admin).await;
    assert_eq!(counter(&m, "registry_http_requests", &[("method", "GET"), ("route", "/v2/"), ("status_class", "2xx")]), 1.0);
    assert_eq!(counter(&m, "registry_http_requests", &[("method", "GET"), ("route", "other"), ("status_class", "4xx")]), 2.0, "/metrics and /admin are not on the main listener");
    assert!(m.iter().all(|x| x.labels.get("route").is_none_or(|r| r != "/healthz" && r != "/metrics")), "admin requests are not counted");
    assert_eq!(gauge(&m, "registry_http_in_flight_requests", &[]), 0.0);
    assert_eq!(main.get("/healthz").await.status, StatusCode::OK, "probes answer on both listeners");

    // Without metrics the admin listener still answers the probes.
    let bare = TestRegistry { router: ops_router(s.t.registry.clone(), None), registry: s.t.registry.clone(), dir: tempfile::tempdir().expect("tempdir") };
    assert_eq!(bare.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(bare.get("/metrics").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn garbage_collections_are_counted_and_recorded() {
    let Setup { t, metrics, .. } = setup(Duration::from_secs(60)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = t.registry.spawn_events(stop.clone());
    metrics.set_gc_source(t.registry.clone());
    // Before any collection: zeros.
    let s = scrape(&t).await;
    assert_eq!(counter(&s, "berth_gc_runs", &[]), 0.0);
    // Two blobs nothing references, collected with no grace period.
    for bytes in [b"stray one".as_slice(), b"stray two, longer"] {
        t.push_blob("team/app", bytes).await;
    }
    // (The grace period counts in milliseconds: let one pass.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = t.registry.collect_garbage(false, Some(Duration::ZERO), &|_| {}).await.expect("gc");
    assert_eq!(report.blobs_deleted, 2);
    // A dry run is not a run.
    t.registry.collect_garbage(true, Some(Duration::ZERO), &|_| {}).await.expect("dry run");
    let s = scrape(&t).await;
    assert_eq!(counter(&s, "berth_gc_runs", &[]), 1.0);
    assert_eq!(counter(&s, "berth_gc_failures", &[]), 0.0);
    assert_eq!(counter(&s, "berth_gc_blobs_deleted", &[]), 2.0);
    assert_eq!(counter(&s, "berth_gc_links_removed", &[]), 2.0);
    assert_eq!(counter(&s, "berth_gc_freed_bytes", &[]), (9 + 17) as f64);
    assert!(counter(&s, "berth_gc_duration_seconds", &[]) > 0.0);
    assert!(gauge(&s, "berth_gc_last_duration_seconds", &[]) > 0.0);
    // The collection is an event (for the audit log and webhooks that ask for `gc`).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = t.registry.audit(&meta::EventFilter { action: Some("gc".into()), limit: 10, ..Default::default() }).await.expect("audit");
        if let Some(e) = events.first() {
            assert_eq!(e.size, Some(26));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no gc event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for task in tasks {
        task.await.expect("task");
    }
}
