//! The admin API's deletions: a whole repository, and a repository's tags in bulk.
//!
//! - `DELETE /admin/repositories/<name>` deletes the repository (tags, manifests, blob links,
//!   upload sessions) and answers `202` with what was removed; its blobs are left to garbage
//!   collection.
//! - `DELETE /admin/repositories/<name>/tags?pattern=<glob>&older_than=<age>&dry_run=true`
//!   (or the same keys in a JSON body) deletes the matching tags, only the tags, and answers
//!   `200` with the list.
//!
//! Names contain slashes, so the path is read from its end: a last segment `tags` means the
//! tags of the name before it (a repository whose name ends in `/tags` is deleted with
//! `berth repo delete`). Both honour `storage.delete.enabled` like every other delete.
//! Parameters are parsed here into domain types; errors come from the error table.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use oci::{ErrorCode, RepoName, TagPattern};
use registry::{Registry, TagFilter};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::handlers::Query;
use crate::log::RouteInfo;

/// What a path under `/admin/repositories/` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Repository(RepoName),
    Tags(RepoName),
}

impl Target {
    fn template(&self) -> &'static str {
        match self {
            Target::Repository(_) => "/admin/repositories/{name}",
            Target::Tags(_) => "/admin/repositories/{name}/tags",
        }
    }

    fn repo(&self) -> &RepoName {
        match self {
            Target::Repository(r) | Target::Tags(r) => r,
        }
    }
}

fn parse_target(path: &str) -> Result<Target, ApiError> {
    let path = path.trim_start_matches('/');
    let name = |s: &str| s.parse::<RepoName>().map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string()));
    match path.strip_suffix("/tags") {
        Some(repo) if !repo.is_empty() => name(repo).map(Target::Tags),
        _ => name(path).map(Target::Repository),
    }
}

/// The parameters of a bulk tag deletion as a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsBody {
    pattern: Option<String>,
    older_than: Option<String>,
    dry_run: Option<bool>,
}

/// Largest JSON body accepted (three short fields).
const MAX_BODY: usize = 64 << 10;

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::QueryInvalid, message)
}

/// The filter and dry-run flag, from the query string and the body (the query wins).
async fn tag_params(query: &Query, body: Body) -> Result<(TagFilter, bool), ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| invalid(format!("reading the body: {e}")))?;
    let from_body: TagsBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        TagsBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("body: {e}")))?
    };
    let pattern = query.get("pattern").map(str::to_owned).or(from_body.pattern).ok_or_else(|| invalid("pattern is required (use * for every tag)".into()))?;
    let pattern: TagPattern = pattern.parse().map_err(|e| invalid(format!("pattern: {e}")))?;
    let older_than = match query.get("older_than").map(str::to_owned).or(from_body.older_than) {
        None => None,
        Some(v) => Some(registry::parse_age(&v).ok_or_else(|| invalid(format!("older_than: {v:?} is not an age like 30d, 12h or 90m")))?),
    };
    let dry_run = match query.get("dry_run") {
        None => from_body.dry_run.unwrap_or(false),
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => return Err(invalid(format!("dry_run: {other:?} must be true or false"))),
    };
    Ok((TagFilter { pattern, older_than }, dry_run))
}

async fn handle(reg: &Registry, method: &Method, target: &Target, query: &Query, body: Body) -> Result<Response, ApiError> {
    if method != Method::DELETE {
        return Err(ApiError::new(ErrorCode::Unsupported, format!("{method} is not supported on {}", target.template())));
    }
    match target {
        Target::Repository(repo) => {
            let removed = reg.delete_repository(repo).await?;
            Ok((StatusCode::ACCEPTED, axum::Json(json!({ "repository": repo.as_str(), "deleted": removed }))).into_response())
        }
        Target::Tags(repo) => {
            let (filter, dry_run) = tag_params(query, body).await?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let out = reg.delete_tags(repo, &filter, now, dry_run).await?;
            Ok((StatusCode::OK, axum::Json(json!({ "repository": repo.as_str(), "dry_run": out.dry_run, "deleted": out.deleted, "kept": out.kept }))).into_response())
        }
    }
}

/// The routes, merged into the admin API.
pub fn routes(registry: Registry) -> Router {
    Router::new()
        .route(
            "/admin/repositories/{*path}",
            any(|State(reg): State<Registry>, method: Method, Path(path): Path<String>, RawQuery(q): RawQuery, body: Body| async move {
                let target = match parse_target(&path) {
                    Ok(t) => t,
                    Err(e) => return e.into_response(),
                };
                let result = match Query::parse(q.as_deref()) {
                    Ok(query) => handle(&reg, &method, &target, &query, body).await,
                    Err(e) => Err(e),
                };
                let mut resp = result.unwrap_or_else(IntoResponse::into_response);
                resp.extensions_mut().insert(RouteInfo { template: target.template(), repo: Some(target.repo().clone()), user: None });
                resp
            }),
        )
        .with_state(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_from_their_end() {
        let repo = |s: &str| s.parse::<RepoName>().expect("name");
        assert_eq!(parse_target("team/app").expect("ok"), Target::Repository(repo("team/app")));
        assert_eq!(parse_target("/team/app/tags").expect("ok"), Target::Tags(repo("team/app")));
        assert_eq!(parse_target("tags").expect("ok"), Target::Repository(repo("tags")));
        assert_eq!(parse_target("a/tags/tags").expect("ok"), Target::Tags(repo("a/tags")));
        assert_eq!(parse_target("Team/App").expect_err("invalid").code, ErrorCode::NameInvalid);
        assert_eq!(parse_target("app/").expect_err("invalid").code, ErrorCode::NameInvalid);
    }
}
