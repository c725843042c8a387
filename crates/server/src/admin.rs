//! The admin API: the audit log and webhook delivery state, as JSON.
//!
//! `GET /admin/audit?repository=&user=&action=&since=&until=&after=&limit=` lists recorded
//! events oldest first (`since`/`until` in RFC 3339 or milliseconds since the epoch; `after` an
//! event id, for paging). `GET /admin/webhooks` shows each endpoint's queue and delivery counts.
//! `GET /admin/usage` reports each quota's namespace and every repository by stored bytes.
//! `DELETE /admin/repositories/<name>` and `DELETE /admin/repositories/<name>/tags` delete in
//! bulk (see `admin_repos`). `POST /admin/gc?dry_run=&grace=` runs one garbage collection in
//! this process and answers its report (`409 CONFLICT` while one is running here).

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use oci::ErrorCode;
use registry::Registry;

use crate::error::ApiError;
use crate::handlers::Query;

fn millis(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    parse_rfc3339(v).ok_or_else(|| ApiError::new(ErrorCode::QueryInvalid, format!("{name}: {v:?} is not RFC 3339 or epoch milliseconds")))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` to epoch milliseconds (UTC only; what the audit log writes).
fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// The admin routes.
pub fn routes(registry: Registry) -> Router {
    Router::new()
        .route(
            "/admin/audit",
            get(|State(reg): State<Registry>, RawQuery(q): RawQuery| async move {
                let r = match Query::parse(q.as_deref()) {
                    Ok(query) => audit(&reg, &query).await,
                    Err(e) => Err(e),
                };
                r.unwrap_or_else(IntoResponse::into_response)
            }),
        )
        .route("/admin/webhooks", get(|State(reg): State<Registry>| async move { webhooks(&reg).await.unwrap_or_else(IntoResponse::into_response) }))
        .route("/admin/usage", get(|State(reg): State<Registry>| async move { usage(&reg).await.unwrap_or_else(IntoResponse::into_response) }))
        .route(
            "/admin/gc",
            post(|State(reg): State<Registry>, RawQuery(q): RawQuery| async move {
                let r = match Query::parse(q.as_deref()).and_then(|query| gc_params(&query)) {
                    Ok((dry_run, grace)) => gc(&reg, dry_run, grace).await,
                    Err(e) => Err(e),
                };
                r.unwrap_or_else(IntoResponse::into_response)
            }),
        )
        .with_state(registry.clone())
        .merge(crate::admin_repos::routes(registry))
}

pub async fn audit(reg: &Registry, query: &Query) -> Result<Response, ApiError> {
    let filter = meta::EventFilter {
        repository: query.get("repository").map(str::to_owned),
        actor: query.get("user").map(str::to_owned),
        action: query.get("action").map(str::to_owned),
        since: query.get("since").map(|v| millis("since", v)).transpose()?,
        until: query.get("until").map(|v| millis("until", v)).transpose()?,
        after_id: query.get("after").and_then(|v| v.parse().ok()),
        limit: query.get("limit").and_then(|v| v.parse().ok()).unwrap_or(1000),
    };
    let events = reg.audit(&filter).await?;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({ "events": events }))).into_response())
}

pub async fn webhooks(reg: &Registry) -> Result<Response, ApiError> {
    let status = reg.webhook_status().await?;
    Ok((StatusCode::OK, axum::Json(serde_json::json!({ "endpoints": status }))).into_response())
}

/// `dry_run` and `grace` of `POST /admin/gc`. Any other key is refused: a misspelt
/// `dry_run` must not turn into a real collection.
fn gc_params(query: &Query) -> Result<(bool, Option<std::time::Duration>), ApiError> {
    let invalid = |m: String| ApiError::new(ErrorCode::QueryInvalid, m);
    if let Some((k, _)) = query.0.iter().find(|(k, _)| k != "dry_run" && k != "grace") {
        return Err(invalid(format!("unknown parameter {k:?} (dry_run, grace)")));
    }
    let dry_run = match query.get("dry_run") {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => return Err(invalid(format!("dry_run: {other:?} must be true or false"))),
    };
    let grace = match query.get("grace") {
        None => None,
        Some(v) => Some(registry::parse_age(v).ok_or_else(|| invalid(format!("grace: {v:?} is not a duration like 10m, 24h or 0s")))?),
    };
    Ok((dry_run, grace))
}

/// One collection in this process, to its end; the report as JSON.
pub async fn gc(reg: &Registry, dry_run: bool, grace: Option<std::time::Duration>) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let run = reg
        .start_garbage_collection(dry_run, grace)
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "a garbage collection is already running on this server"))?;
    let r = run.await.map_err(|e| ApiError::new(ErrorCode::Unknown, format!("garbage collection task: {e}")))??;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "dry_run": r.dry_run,
            "untagged_deleted": r.untagged_deleted,
            "links_removed": r.links_removed,
            "blobs_deleted": r.blobs_deleted,
            "bytes_freed": r.bytes_freed,
            "storage_errors": r.storage_errors,
            "seconds": started.elapsed().as_secs_f64(),
        })),
    )
        .into_response())
}

pub async fn usage(reg: &Registry) -> Result<Response, ApiError> {
    let report = reg.usage().await?;
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_roundtrip() {
        for ms in [0i64, 951_782_400_123, 1_795_305_600_000, 1_795_390_123_456] {
            assert_eq!(parse_rfc3339(&registry::time::rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-11-22T00:00:00Z"), Some(1_795_305_600_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
