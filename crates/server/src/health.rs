//! Health probes, outside the distribution API (plain text, not the spec's error envelope).
//!
//! - `GET /healthz`: 200 `ok` whenever the process can answer (liveness).
//! - `GET /readyz`: 200 `ok` when the metadata database answers a ping and the blob store
//!   answers a `stat` of one fixed digest (one cheap call each, run concurrently, each bounded
//!   by [`CHECK_TIMEOUT`]); otherwise 503 with one short line per failed check. The errors
//!   themselves are logged, not sent.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use oci::Digest;
use registry::Registry;

use crate::metrics::OwnRoute;

/// Longest a readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn text(route: &'static str, status: StatusCode, body: String) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], body).into_response();
    resp.extensions_mut().insert(OwnRoute(route));
    resp
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> Response {
    text("/healthz", StatusCode::OK, "ok".to_owned())
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(reg): State<Registry>) -> Response {
    // The empty blob's digest: whether it is stored does not matter, only that the store answers.
    let probe = Digest::sha256_of(b"");
    let (db, blobs) = tokio::join!(tokio::time::timeout(CHECK_TIMEOUT, reg.ready()), tokio::time::timeout(CHECK_TIMEOUT, reg.blobs().stat(&probe)),);
    let mut problems = Vec::new();
    match db {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: metadata database check failed");
            problems.push("metadata database: not answering");
        }
        Err(_) => {
            tracing::warn!(timeout_ms = CHECK_TIMEOUT.as_millis(), "readiness: metadata database check timed out");
            problems.push("metadata database: timed out");
        }
    }
    match blobs {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(driver = reg.blobs().driver(), error = %e, "readiness: blob storage check failed");
            problems.push("blob storage: not answering");
        }
        Err(_) => {
            tracing::warn!(driver = reg.blobs().driver(), timeout_ms = CHECK_TIMEOUT.as_millis(), "readiness: blob storage check timed out");
            problems.push("blob storage: timed out");
        }
    }
    if problems.is_empty() { text("/readyz", StatusCode::OK, "ok".to_owned()) } else { text("/readyz", StatusCode::SERVICE_UNAVAILABLE, problems.join("\n")) }
}

/// A router serving `/healthz` and `/readyz`.
pub(crate) fn routes(registry: Registry) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(registry)
}
