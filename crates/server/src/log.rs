//! One structured log line per request: method, route template, repository, status, bytes in and
//! out, duration.

use std::time::Instant;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use oci::RepoName;

/// Route facts a handler leaves on its response for the log line.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub template: &'static str,
    pub repo: Option<RepoName>,
}

fn length(h: &axum::http::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let bytes_in = length(req.headers());
    let resp = next.run(req).await;
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
    );
    resp
}
