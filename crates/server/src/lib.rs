//! The HTTP face of berth: the axum router for the distribution API, thin handlers, the one
//! error table, request logging, and `serve` with explicit, bounded shutdown.
//!
//! This is the only crate that knows axum. It knows nothing about SQL or file paths: it parses
//! requests into domain types, calls the [`registry::Registry`] engine once, and shapes the answer.

mod admin;
mod admin_repos;
pub mod error;
mod handlers;
mod health;
mod log;
pub mod metrics;
pub mod routes;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;
use registry::Registry;
use tokio::net::TcpListener;

pub use error::ApiError;
use handlers::{ApiResult, Query};
pub use metrics::Metrics;
use routes::Route;

/// Build the router for `registry`: the distribution API, `/healthz`, `/readyz` and the admin
/// API, without metrics.
pub fn router(registry: Registry) -> Router {
    router_with(registry, Observability { metrics: None, metrics_on_main: true })
}

/// What the main listener exposes besides the API and the health probes.
#[derive(Clone, Default)]
pub struct Observability {
    /// Record HTTP metrics into these (`None`: no metrics).
    pub metrics: Option<Metrics>,
    /// Also serve `GET /metrics` and the admin API on the main listener (when no separate
    /// operations listener is configured; with one, they are served only there).
    pub metrics_on_main: bool,
}

/// Build the router for `registry` with `obs`: the API, `/healthz`, `/readyz`, and `/metrics`
/// and the admin API when `obs.metrics_on_main`; every request recorded in `obs.metrics` and
/// logged.
pub fn router_with(registry: Registry, obs: Observability) -> Router {
    let mut app = Router::new().fallback(dispatch).with_state(registry.clone()).merge(health::routes(registry.clone()));
    if obs.metrics_on_main {
        app = app.merge(admin::routes(registry));
    }
    if let Some(m) = obs.metrics {
        if obs.metrics_on_main {
            app = app.merge(metrics::routes(m.clone()));
        }
        app = app.layer(axum::middleware::from_fn_with_state(m, metrics::track));
    }
    app.layer(axum::middleware::from_fn(log::log_request))
}

/// The router for a separate operations listener: `/healthz`, `/readyz`, the admin API
/// (`/admin/audit`, `/admin/webhooks`), and `/metrics` when `metrics` is given. Its requests are
/// neither logged nor counted in the HTTP metrics.
pub fn ops_router(registry: Registry, metrics: Option<Metrics>) -> Router {
    let app = health::routes(registry.clone()).merge(admin::routes(registry));
    match metrics {
        Some(m) => app.merge(metrics::routes(m)),
        None => app,
    }
}

/// The one entry point for every request: parse the path into a [`Route`], then hand the parsed
/// parts to the handler for that route and method.
async fn dispatch(State(reg): State<Registry>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let route = match routes::parse(parts.uri.path()) {
        Some(Ok(route)) => route,
        Some(Err(e)) => return finish(Err(e), None),
        None => return finish(Err(ApiError::new(ErrorCode::NotFound, "no such route")), None),
    };
    let result = match Query::parse(parts.uri.query()) {
        Ok(query) => handle(&reg, &parts.method, &route, &query, &parts.headers, body).await,
        Err(e) => Err(e),
    };
    finish(result, Some(&route))
}

async fn handle(reg: &Registry, method: &Method, route: &Route, query: &Query, headers: &axum::http::HeaderMap, body: Body) -> ApiResult {
    let m = method.clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => handlers::base().await,
        (Route::Catalog, Method::GET) => handlers::catalog(reg, query).await,
        (Route::Tags(repo), Method::GET) => handlers::tags(reg, repo, query).await,
        (Route::Manifest(repo, r), Method::GET | Method::HEAD) => handlers::manifest_get(reg, method, repo, r).await,
        (Route::Manifest(repo, r), Method::PUT) => handlers::manifest_put(reg, repo, r, query, headers, body).await,
        (Route::Manifest(repo, r), Method::DELETE) => handlers::manifest_delete(reg, repo, r).await,
        (Route::Blob(repo, d), Method::HEAD) => handlers::blob_head(reg, repo, d).await,
        (Route::Blob(repo, d), Method::GET) => handlers::blob_get(reg, repo, d, headers).await,
        (Route::Blob(repo, d), Method::DELETE) => handlers::blob_delete(reg, repo, d).await,
        (Route::UploadStart(repo), Method::POST) => handlers::upload_post(reg, repo, query, headers, body).await,
        (Route::Upload(repo, id), Method::GET) => handlers::upload_get(reg, repo, id.as_ref()).await,
        (Route::Upload(repo, id), Method::PATCH) => handlers::upload_patch(reg, repo, id.as_ref(), headers, body).await,
        (Route::Upload(repo, id), Method::PUT) => handlers::upload_put(reg, repo, id.as_ref(), query, headers, body).await,
        (Route::Upload(repo, id), Method::DELETE) => handlers::upload_delete(reg, repo, id.as_ref()).await,
        (Route::Referrers(repo, d), Method::GET) => handlers::referrers(reg, repo, d, query).await,
        _ => Err(ApiError::new(ErrorCode::Unsupported, format!("{method} is not supported on {}", route.template()))),
    }
}

/// Add the headers every API response carries and the route facts the request log needs.
fn finish(result: ApiResult, route: Option<&Route>) -> Response {
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    if let Some(route) = route {
        resp.extensions_mut().insert(log::RouteInfo { template: route.template(), repo: route.repo().cloned() });
    }
    resp
}

/// Serve `router` on `listener` until `shutdown` resolves; then stop accepting, let in-flight
/// requests finish for at most `grace`, and return.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static, grace: Duration) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    // Connection info gives the request log and events the client's address.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "in-flight requests did not finish within the grace period; stopping anyway");
            Ok(())
        }
    }
}
