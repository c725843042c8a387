//! The HTTP face of berth: the axum router for the distribution API, thin handlers, the one
//! error table, request logging, and `serve` with explicit, bounded shutdown.
//!
//! This is the only crate that knows axum. It knows nothing about SQL or file paths: it parses
//! requests into domain types, calls the [`registry::Registry`] engine once, and shapes the answer.

mod admin;
mod admin_repos;
pub mod auth;
pub mod error;
mod handlers;
mod health;
mod log;
pub mod metrics;
pub mod routes;
pub mod tls;
mod token;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;
use registry::Registry;

pub use auth::{Mode as AuthMode, Security, TokenService, UploadLimits};
pub use error::ApiError;
use handlers::{ApiResult, Query};
pub use metrics::Metrics;
pub use tls::{ConnInfo, TlsListener};
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
/// logged. No access control.
pub fn router_with(registry: Registry, obs: Observability) -> Router {
    secured_router(registry, obs, Arc::new(Security::open()))
}

/// [`router_with`] under `security`: every API request authenticated and authorized, the token
/// endpoint at `/auth/token` in token mode, and the admin API and `/metrics` for admins only.
pub fn secured_router(registry: Registry, obs: Observability, security: Arc<Security>) -> Router {
    if let Some(m) = &obs.metrics {
        let _ = security.metrics.set(m.clone());
    }
    let state = App { registry: registry.clone(), security };
    let mut app = Router::new()
        .route("/auth/token", axum::routing::any(token::endpoint))
        .fallback(dispatch)
        .with_state(state.clone())
        .merge(health::routes(registry.clone()));
    if obs.metrics_on_main {
        let mut admin = admin::routes(registry);
        if let Some(m) = &obs.metrics {
            admin = admin.merge(metrics::routes(m.clone()));
        }
        app = app.merge(admin.route_layer(axum::middleware::from_fn_with_state(state, require_admin)));
    }
    if let Some(m) = obs.metrics {
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

/// What every request handler shares: the engine and the access control in force.
#[derive(Clone)]
pub(crate) struct App {
    pub registry: Registry,
    pub security: Arc<Security>,
}

/// The connection facts access control needs, from the request's extensions and headers.
pub(crate) fn conn_of<B>(req: &axum::http::Request<B>) -> auth::Conn {
    let info = ConnInfo::of(req.extensions());
    auth::Conn {
        ip: info.map(|c| c.addr.ip()),
        tls: info.is_some_and(|c| c.tls),
        client_identity: info.and_then(|c| c.client_identity.clone()),
        host: auth::header_value(req.headers(), &axum::http::header::HOST).map(str::to_owned),
    }
}

/// The one entry point for every request: parse the path into a [`Route`], decide whether the
/// caller may do what it asks, then hand the parsed parts to the handler for that route and
/// method.
async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let conn = conn_of(&req);
    let (parts, body) = req.into_parts();
    let route = match routes::parse(parts.uri.path()) {
        Some(Ok(route)) => route,
        Some(Err(e)) => return finish(Err(e), None, None),
        None => return finish(Err(ApiError::new(ErrorCode::NotFound, "no such route")), None, None),
    };
    let mut query = match Query::parse(parts.uri.query()) {
        Ok(query) => query,
        Err(e) => return finish(Err(e), Some(&route), None),
    };
    let security = &app.security;
    let caller = match security.authenticate(&parts.headers, &conn).await {
        Ok(caller) => caller,
        Err(e) => return finish(Err(e), Some(&route), None),
    };
    let need = need(&route, &parts.method);
    if let Err(e) = security.authorize(&caller, &need, &conn) {
        app.registry.record_access_event(denial(&need), route.repo(), caller.identity.user.as_deref());
        return finish(Err(e), Some(&route), caller.identity.user.as_deref());
    }
    // A mount needs pull on the source; without it the request is an ordinary upload, as the
    // spec has a registry do when it cannot mount. A mount without `from` would search every
    // repository, so only unrestricted callers get it.
    if matches!(route, Route::UploadStart(_)) && parts.method == Method::POST && query.get("mount").is_some() {
        let source_ok = match query.get("from").map(str::parse::<oci::RepoName>) {
            Some(Ok(from)) => security.may(&caller, &from, ::auth::Action::Pull),
            Some(Err(_)) => true, // the handler answers NAME_INVALID
            None => security.is_admin(&caller),
        };
        if !source_ok {
            query.0.retain(|(k, _)| k != "mount" && k != "from");
        }
    }
    let _slot = match (&route, &parts.method) {
        (Route::UploadStart(_), &Method::POST) | (Route::Upload(..), &Method::PATCH | &Method::PUT) => {
            match security.uploads.acquire(caller.identity.user.as_deref()) {
                Ok(slot) => slot,
                Err(e) => return finish(Err(e), Some(&route), caller.identity.user.as_deref()),
            }
        }
        _ => None,
    };
    // The catalog lists what the caller's identity may pull, by the policy: a token for the
    // catalog names no repositories.
    let visible = |name: &str| name.parse::<oci::RepoName>().is_ok_and(|r| security.policy.allows(&caller.identity, &r, ::auth::Action::Pull));
    let catalog_filter: Option<&(dyn Fn(&str) -> bool + Sync)> =
        if security.is_open() || matches!(security.mode, auth::Mode::External { .. }) { None } else { Some(&visible) };
    let user = caller.identity.user.clone();
    let work = handle(&app.registry, &parts.method, &route, &query, &parts.headers, body, catalog_filter);
    let result = match &user {
        // The events of a signed-in caller's request name the caller.
        Some(u) => {
            let mut ctx = registry::REQUEST.try_with(Clone::clone).unwrap_or_default();
            ctx.actor = Some(u.clone());
            registry::REQUEST.scope(ctx, work).await
        }
        // Anonymous (and every request with access control off): the context as it is, at no
        // cost on the hot path.
        None => work.await,
    };
    finish(result, Some(&route), user.as_deref())
}

/// What `route` with `method` needs from the caller.
fn need(route: &Route, method: &Method) -> auth::Need {
    use ::auth::Action;
    let action = match (route, method) {
        (Route::Base, _) => return auth::Need::Login,
        (Route::Catalog, _) => return auth::Need::Catalog,
        (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => Action::Delete,
        (Route::Manifest(..), &Method::PUT) | (Route::UploadStart(_) | Route::Upload(..), _) => Action::Push,
        _ => Action::Pull,
    };
    match route.repo() {
        Some(repo) => auth::Need::Repo(repo.clone(), action),
        None => auth::Need::Login,
    }
}

/// The audit action of a refused `need`.
fn denial(need: &auth::Need) -> &'static str {
    match need {
        auth::Need::Repo(_, ::auth::Action::Pull) => "denied_pull",
        auth::Need::Repo(_, ::auth::Action::Push) => "denied_push",
        auth::Need::Repo(_, ::auth::Action::Delete) => "denied_delete",
        auth::Need::Catalog => "denied_catalog",
        auth::Need::Admin => "denied_admin",
        auth::Need::Login => "denied_login",
    }
}

/// The admin API and `/metrics` on the main listener: admins only (everyone when access
/// control is off).
async fn require_admin(State(app): State<App>, req: Request, next: axum::middleware::Next) -> Response {
    if app.security.is_open() {
        return next.run(req).await;
    }
    let conn = conn_of(&req);
    let caller = match app.security.authenticate(req.headers(), &conn).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = app.security.authorize(&caller, &auth::Need::Admin, &conn) {
        app.registry.record_access_event("denied_admin", None, caller.identity.user.as_deref());
        return e.into_response();
    }
    next.run(req).await
}

async fn handle(
    reg: &Registry,
    method: &Method,
    route: &Route,
    query: &Query,
    headers: &axum::http::HeaderMap,
    body: Body,
    catalog_filter: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> ApiResult {
    let m = method.clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => handlers::base().await,
        (Route::Catalog, Method::GET) => handlers::catalog(reg, query, catalog_filter).await,
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
fn finish(result: ApiResult, route: Option<&Route>, user: Option<&str>) -> Response {
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    if let Some(route) = route {
        resp.extensions_mut().insert(log::RouteInfo { template: route.template(), repo: route.repo().cloned(), user: user.map(str::to_owned) });
    }
    resp
}

/// Serve `router` on `listener` (a `tokio::net::TcpListener` or a [`TlsListener`]) until
/// `shutdown` resolves; then stop accepting, let in-flight requests finish for at most `grace`,
/// and return. Every request carries its [`ConnInfo`].
pub async fn serve<L>(listener: L, router: Router, shutdown: impl Future<Output = ()> + Send + 'static, grace: Duration) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    ConnInfo: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    // Connection info gives the request log, events and access control the client's address,
    // and whether (and as whom) it came over TLS.
    let service = router.into_make_service_with_connect_info::<ConnInfo>();
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
