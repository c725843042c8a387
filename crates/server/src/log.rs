//! One structured log line per request (method, route template, repository, status, bytes in
//! and out, duration, request id), and the request context the engine's events carry: the
//! request id (the client's `X-Request-Id` when it sent a sane one, else a new one, echoed in the
//! response), the client address and user agent.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use oci::RepoName;
use registry::{REQUEST, RequestContext};

/// Route facts a handler leaves on its response for the log line.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub template: &'static str,
    pub repo: Option<RepoName>,
    /// The authenticated user (`None`: anonymous, or access control is off).
    pub user: Option<String>,
}

pub const REQUEST_ID: &str = "x-request-id";

fn length(h: &axum::http::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A client-supplied request id is kept if it is short and printable, so it can be logged and
/// echoed safely.
fn client_request_id(req: &Request) -> Option<String> {
    let v = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.to_owned())
}

pub async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let bytes_in = length(req.headers());
    let request_id = client_request_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let ctx = RequestContext {
        request_id: request_id.clone(),
        method: method.to_string(),
        address: crate::ConnInfo::of(req.extensions()).map(|c| c.addr.ip().to_string()),
        user_agent: req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(256).collect()),
        actor: None,
    };
    let mut resp = REQUEST.scope(ctx, next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let info = resp.extensions().get::<RouteInfo>();
    tracing::info!(
        target: "berth::access",
        method = %method,
        route = info.map_or("-", |i| i.template),
        repository = info.and_then(|i| i.repo.as_ref()).map_or("-", RepoName::as_str),
        status = resp.status().as_u16(),
        bytes_in,
        bytes_out = length(resp.headers()),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        request_id = %request_id,
        // Last, so tools matching the earlier fields' order keep working.
        user = info.and_then(|i| i.user.as_deref()).unwrap_or("-"),
    );
    resp
}
