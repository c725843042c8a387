//! Prometheus metrics: HTTP request metrics recorded by a middleware, storage operation timings
//! fed by [`storage::instrumented`], and storage totals read from the metadata database when
//! scraped (cached). Served as OpenMetrics text on `GET /metrics`.
//!
//! Every label has a bounded set of values: request metrics are labelled by method (the seven
//! the API uses, anything else is `other`), route *template* (never a raw path, so no repository
//! name, digest, tag or upload id; anything that is not an API route is `other`) and status class;
//! storage timings by driver and operation. The only label with data-dependent values is
//! `repository` on the per-repository gauges, limited to the [`TOP_REPOSITORIES`] largest.
//! `docs/metrics.md` lists every metric.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;

use crate::log::RouteInfo;

/// The content type of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many repositories the per-repository gauges cover (the largest by bytes).
pub const TOP_REPOSITORIES: usize = 100;

/// Default for how long storage totals read from the database are reused between scrapes.
pub const DEFAULT_STORAGE_REFRESH: Duration = Duration::from_secs(30);

/// Longest wait for the storage totals at scrape time; past it the previous values are served.
const STORAGE_TOTALS_TIMEOUT: Duration = Duration::from_secs(10);

/// Histogram buckets for request and storage durations, in seconds: 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Left on the responses of the endpoints outside the API (`/metrics`, `/healthz`, `/readyz`)
/// so their requests are labelled with their path rather than `other`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnRoute(pub &'static str);

pub use meta::RepoUsage;

/// Usage figures from the metadata database, gathered at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageTotals {
    /// Storage size, blob and upload counts, and per-repository usage. `per_repo` need not be
    /// sorted or truncated: only the [`TOP_REPOSITORIES`] largest are exposed.
    pub storage: meta::StorageTotals,
    /// Webhook delivery state per configured endpoint.
    pub webhooks: Vec<meta::EndpointStatus>,
}

/// The provider that reads [`StorageTotals`] from `registry`.
pub fn registry_usage(registry: registry::Registry) -> StorageTotalsProvider {
    Arc::new(move || {
        let registry = registry.clone();
        Box::pin(async move {
            let top = u32::try_from(TOP_REPOSITORIES).unwrap_or(u32::MAX);
            Ok(StorageTotals {
                storage: registry.storage_totals(top).await.map_err(|e| e.to_string())?,
                webhooks: registry.webhook_status().await.map_err(|e| e.to_string())?,
            })
        })
    })
}

/// Reads the storage totals (from the metadata database), called at most once per refresh
/// interval, at scrape time.
pub type StorageTotalsProvider = Arc<dyn Fn() -> BoxFuture<'static, Result<StorageTotals, String>> + Send + Sync>;

/// Options for [`Metrics::new`].
#[derive(Debug, Clone, Copy)]
pub struct MetricsOptions {
    /// How long storage totals are reused between scrapes (`metrics.storage_refresh`).
    pub storage_refresh: Duration,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions { storage_refresh: DEFAULT_STORAGE_REFRESH }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    driver: &'static str,
    action: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every route label the middleware can see; anything else is "other".
const ROUTES: [&str; 14] = [
    "/v2/",
    "/v2/_catalog",
    "/v2/{name}/tags/list",
    "/v2/{name}/manifests/{reference}",
    "/v2/{name}/blobs/{digest}",
    "/v2/{name}/blobs/uploads/",
    "/v2/{name}/blobs/uploads/{id}",
    "/v2/{name}/referrers/{digest}",
    "/metrics",
    "/healthz",
    "/readyz",
    "/admin/audit",
    "/admin/webhooks",
    "other",
];
const METHODS: [&str; 8] = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The handles one request updates. Counters and histograms are shared handles: updating a
/// clone updates the series in the family.
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
}

/// A fixed table of lazily resolved [`Handles`]; a series appears in the output only once used.
struct Hot {
    slots: Vec<std::sync::OnceLock<Handles>>,
}

impl Hot {
    fn new() -> Hot {
        Hot { slots: (0..ROUTES.len() * METHODS.len() * CLASSES.len()).map(|_| std::sync::OnceLock::new()).collect() }
    }
}

fn index_of(table: &[&'static str], v: &str) -> usize {
    table.iter().position(|t| *t == v).unwrap_or(table.len() - 1)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Response bodies up to this size are counted when the response head leaves.
const SMALL_BODY: u64 = 64 * 1024;

/// The process's metrics. Cheap to clone; all clones share the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: prometheus_client::registry::Registry,
    /// Metric handles per (route, method, status class), resolved on first use so the hot path
    /// does no label hashing or family locking (see [`Hot`]).
    hot: Hot,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<DurationLabels>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    in_flight: Gauge,
    storage_seconds: HistogramFamily<StorageLabels>,
    storage_errors: Family<StorageLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
    /// Where the garbage collector's totals are read at each scrape.
    gc: GcSource,
    storage_refresh: Duration,
    provider: RwLock<Option<StorageTotalsProvider>>,
    /// What the storage collector exposes; replaced on each refresh.
    totals: Arc<RwLock<Option<StorageTotals>>>,
    /// When the totals were last asked for; also makes concurrent scrapes refresh once.
    refreshed_at: tokio::sync::Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(MetricsOptions::default())
    }
}

impl Metrics {
    pub fn new(options: MetricsOptions) -> Metrics {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register("registry_http_requests", "HTTP requests answered, by method, route template and status class", requests.clone());
        let durations: HistogramFamily<DurationLabels> = Family::new_with_constructor(duration_histogram);
        registry.register(
            "registry_http_request_duration_seconds",
            "Time from receiving a request to having its response head ready (a streamed body's transfer is not included), by method and route template",
            durations.clone(),
        );
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register("registry_http_request_bytes", "Request body bytes read, by route template", request_bytes.clone());
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register("registry_http_response_bytes", "Response body bytes sent, by route template", response_bytes.clone());
        let in_flight = Gauge::default();
        registry.register("registry_http_in_flight_requests", "Requests being handled, including responses whose body is still being sent", in_flight.clone());
        let storage_seconds: HistogramFamily<StorageLabels> = Family::new_with_constructor(duration_histogram);
        registry.register(
            "registry_storage_action_seconds",
            "Duration of blob store operations (for reads and writes: the time to open the stream or writer), by driver and action",
            storage_seconds.clone(),
        );
        let storage_errors = Family::<StorageLabels, Counter>::default();
        registry.register("berth_storage_action_errors", "Blob store operations that failed, by driver and action", storage_errors.clone());
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "berth_auth_failures",
            "Refused authentication and authorization, by reason: bad_credentials (wrong user or password), bad_token (invalid, expired or foreign token), throttled (too many failed logins), denied (authenticated or anonymous, but not allowed)",
            auth_failures.clone(),
        );
        let totals = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(StorageCollector { totals: totals.clone() }));
        let gc = GcSource::default();
        registry.register_collector(Box::new(gc.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                hot: Hot::new(),
                requests,
                durations,
                request_bytes,
                response_bytes,
                in_flight,
                storage_seconds,
                storage_errors,
                auth_failures,
                gc,
                storage_refresh: options.storage_refresh,
                provider: RwLock::new(None),
                totals,
                refreshed_at: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Count one refused request or login (`reason`: `bad_credentials`, `bad_token`,
    /// `throttled`, `denied`).
    pub fn auth_failure(&self, reason: &'static str) {
        self.inner.auth_failures.get_or_create(&AuthLabels { reason }).inc();
    }

    /// Expose the garbage collections of `registry` (runs, duration, what they freed), read
    /// at each scrape.
    pub fn set_gc_source(&self, registry: registry::Registry) {
        *self.inner.gc.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(registry);
    }

    /// Set where storage totals come from. Until this is called, the storage totals metrics are
    /// absent. (Set after construction because the provider usually needs the registry, which
    /// is built with [`Metrics::storage_observer`].)
    pub fn set_storage_totals(&self, provider: StorageTotalsProvider) {
        *self.inner.provider.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(provider);
    }

    /// The observer to give [`storage::instrumented::Instrumented`]: feeds
    /// `registry_storage_action_seconds` and `berth_storage_action_errors_total`.
    pub fn storage_observer(&self) -> storage::instrumented::Observer {
        // Hold the families only, not `self`: the registry holds the store, which holds this
        // observer, and the storage totals provider usually holds the registry.
        let seconds = self.inner.storage_seconds.clone();
        let errors = self.inner.storage_errors.clone();
        Arc::new(move |driver, action, elapsed, ok| {
            let labels = StorageLabels { driver, action };
            seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
            if !ok {
                errors.get_or_create(&labels).inc();
            }
        })
    }

    /// The OpenMetrics text exposition of every metric, refreshing the storage totals first if
    /// they are older than the refresh interval.
    pub async fn render(&self) -> String {
        self.refresh_storage_totals().await;
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }

    async fn refresh_storage_totals(&self) {
        let provider = self.inner.provider.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(provider) = provider else { return };
        let mut refreshed_at = self.inner.refreshed_at.lock().await;
        if refreshed_at.is_some_and(|t| t.elapsed() < self.inner.storage_refresh) {
            return;
        }
        // Recorded before asking, so a failing database is asked once per interval, not once
        // per scrape.
        *refreshed_at = Some(Instant::now());
        match tokio::time::timeout(STORAGE_TOTALS_TIMEOUT, provider()).await {
            Ok(Ok(mut totals)) => {
                totals.storage.per_repo.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.repository.cmp(&b.repository)));
                totals.storage.per_repo.truncate(TOP_REPOSITORIES);
                *self.inner.totals.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(totals);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: reading storage totals failed; serving the previous values"),
            Err(_) => tracing::warn!(timeout_secs = STORAGE_TOTALS_TIMEOUT.as_secs(), "metrics: reading storage totals timed out; serving the previous values"),
        }
    }

    /// Record one request: method, route (from the [`RouteInfo`] the dispatcher leaves on the
    /// response), status class, duration to the response head, body bytes both ways, and the
    /// in-flight gauge until the response body is finished or dropped.
    async fn track(&self, req: Request, next: Next) -> Response {
        let start = Instant::now();
        let m = &self.inner;
        let in_flight = InFlight::new(m.in_flight.clone());
        let method = method_label(req.method());
        // A request without a body (most GETs and HEADs) needs no counting wrapper.
        let read = (!http_body::Body::is_end_stream(req.body())).then(|| Arc::new(AtomicU64::new(0)));
        let req = match &read {
            None => req,
            Some(read) => {
                let read = read.clone();
                req.map(|body| {
                    Body::new(Counted {
                        inner: body,
                        on_data: move |n| {
                            read.fetch_add(n, Ordering::Relaxed);
                        },
                        _in_flight: None,
                    })
                })
            }
        };
        let resp = next.run(req).await;
        let route = match (resp.extensions().get::<RouteInfo>(), resp.extensions().get::<OwnRoute>()) {
            (Some(info), _) => info.template,
            (None, Some(own)) => own.0,
            (None, None) => "other",
        };
        let class = status_class(resp.status());
        let slot = (index_of(&ROUTES, route) * METHODS.len() + index_of(&METHODS, method)) * CLASSES.len() + index_of(&CLASSES, class);
        let h = m.hot.slots[slot].get_or_init(|| Handles {
            requests: m.requests.get_or_create(&RequestLabels { method, route, status_class: class }).clone(),
            duration: m.durations.get_or_create(&DurationLabels { method, route }).clone(),
            request_bytes: m.request_bytes.get_or_create(&RouteLabels { route }).clone(),
            response_bytes: m.response_bytes.get_or_create(&RouteLabels { route }).clone(),
        });
        h.requests.inc();
        h.duration.observe(start.elapsed().as_secs_f64());
        if let Some(read) = read {
            h.request_bytes.inc_by(read.load(Ordering::Relaxed));
        }
        // A small body of known size is as good as sent once the head is: count it now and skip
        // the wrapper. Streamed and large bodies are counted as they go.
        let size = http_body::Body::size_hint(resp.body()).exact();
        if let Some(n) = size.filter(|n| *n <= SMALL_BODY) {
            h.response_bytes.inc_by(n);
            drop(in_flight);
            return resp;
        }
        let sent = h.response_bytes.clone();
        resp.map(|body| {
            Body::new(Counted {
                inner: body,
                on_data: move |n| {
                    sent.inc_by(n);
                },
                _in_flight: Some(in_flight),
            })
        })
    }
}

/// Middleware recording the HTTP metrics (install with `from_fn_with_state`).
pub(crate) async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    metrics.track(req, next).await
}

/// `GET /metrics`.
pub(crate) async fn serve_metrics(State(metrics): State<Metrics>) -> Response {
    let text = metrics.render().await;
    let mut resp = ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], text).into_response();
    resp.extensions_mut().insert(OwnRoute("/metrics"));
    resp
}

/// A router serving `GET /metrics`.
pub(crate) fn routes(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(serve_metrics)).with_state(metrics)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// Decrements the in-flight gauge when dropped.
struct InFlight(Gauge);

impl InFlight {
    fn new(g: Gauge) -> InFlight {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A body that reports the length of every data frame passing through it, and otherwise
/// behaves exactly as the body it wraps (size hint included, so `Content-Length` is unchanged).
struct Counted<F> {
    inner: Body,
    on_data: F,
    _in_flight: Option<InFlight>,
}

impl<F: FnMut(u64) + Unpin> HttpBody for Counted<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (this.on_data)(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Exposes the garbage collector's totals (nothing until a registry is set).
#[derive(Clone, Default)]
struct GcSource(Arc<RwLock<Option<registry::Registry>>>);

impl std::fmt::Debug for GcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcSource")
    }
}

impl Collector for GcSource {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(t) = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(registry::Registry::gc_totals) else {
            return Ok(());
        };
        let counters = [
            ("berth_gc_runs", "Garbage collections run by this process (dry runs not counted).", t.runs),
            ("berth_gc_failures", "Garbage collections that stopped on an error.", t.failures),
            ("berth_gc_untagged_manifests_deleted", "Untagged manifests deleted by garbage collection (gc.untagged).", t.untagged_deleted),
            ("berth_gc_links_removed", "Repository-to-blob links removed by garbage collection.", t.links_removed),
            ("berth_gc_blobs_deleted", "Blobs deleted by garbage collection.", t.blobs_deleted),
            ("berth_gc_freed_bytes", "Bytes of the blobs deleted by garbage collection.", t.bytes_freed),
        ];
        for (name, help, value) in counters {
            prometheus_client::metrics::counter::ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        prometheus_client::metrics::counter::ConstCounter::new(t.seconds).encode(encoder.encode_descriptor(
            "berth_gc_duration_seconds",
            "Time spent in garbage collections, in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(t.last_seconds).encode(encoder.encode_descriptor(
            "berth_gc_last_duration_seconds",
            "How long the last garbage collection took, in seconds.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// Exposes the last storage totals read (nothing before the first successful read).
#[derive(Debug)]
struct StorageCollector {
    totals: Arc<RwLock<Option<StorageTotals>>>,
}

/// Name, help, and which number of a repository's usage.
type RepoGauge = (&'static str, &'static str, fn(&RepoUsage) -> u64);

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for StorageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.totals.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(t) = guard.as_ref() else { return Ok(()) };
        let single = [
            ("berth_uploads_in_progress", "Upload sessions open in the metadata database.", t.storage.open_uploads),
            ("registry_storage_size_bytes", "Bytes of all distinct blobs in storage (each counted once).", t.storage.total_bytes),
            ("registry_storage_blobs", "Number of distinct blobs in storage.", t.storage.blob_count),
        ];
        for (name, help, value) in single {
            let g = ConstGauge::new(gauge_value(value));
            g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let per_repo: [RepoGauge; 2] = [
            ("berth_repository_size_bytes", "Bytes of the blobs linked to a repository (largest 100 repositories only).", |r| r.bytes),
            ("berth_repository_blobs", "Number of blobs linked to a repository (largest 100 repositories only).", |r| r.blobs),
        ];
        for (name, help, value) in per_repo {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in &t.storage.per_repo {
                let labels = [("repository", r.repository.as_str())];
                ConstGauge::new(gauge_value(value(r))).encode(family.encode_family(&labels)?)?;
            }
        }
        if !t.webhooks.is_empty() {
            let mut family = encoder.encode_descriptor("berth_webhook_queue_depth", "Events waiting for delivery to a webhook endpoint.", None, MetricType::Gauge)?;
            for w in &t.webhooks {
                ConstGauge::new(w.queued).encode(family.encode_family(&[("endpoint", w.endpoint.as_str())])?)?;
            }
            let counters: [(&str, &str, fn(&meta::EndpointStatus) -> i64); 2] = [
                ("berth_webhook_deliveries", "Events delivered to a webhook endpoint.", |w| w.delivered),
                ("berth_webhook_failures", "Failed delivery attempts to a webhook endpoint.", |w| w.failed_attempts),
            ];
            for (name, help, value) in counters {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for w in &t.webhooks {
                    prometheus_client::metrics::counter::ConstCounter::new(u64::try_from(value(w)).unwrap_or(0)).encode(family.encode_family(&[("endpoint", w.endpoint.as_str())])?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::from_bytes(b"BREW").expect("method")), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(status_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }

    #[tokio::test]
    async fn storage_observer_feeds_the_histogram_and_error_counter() {
        let m = Metrics::default();
        let observe = m.storage_observer();
        observe("filesystem", "stat", Duration::from_millis(2), true);
        observe("filesystem", "get", Duration::from_millis(3), false);
        let text = m.render().await;
        assert!(text.contains(r#"registry_storage_action_seconds_count{driver="filesystem",action="stat"} 1"#), "{text}");
        assert!(text.contains(r#"berth_storage_action_errors_total{driver="filesystem",action="get"} 1"#), "{text}");
        assert!(!text.contains(r#"berth_storage_action_errors_total{driver="filesystem",action="stat"}"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
        // No provider: no storage totals.
        assert!(!text.contains("registry_storage_size_bytes"), "{text}");
    }
}
