//! Thin handlers: each takes parsed inputs, makes one call into the engine and shapes the
//! response. Status codes for errors come from the error table, never from here.

use std::io;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use http_body_util::BodyExt;
use oci::{ByteRange, Digest, ErrorCode, Reference, RepoName, Tag, UploadId};
use registry::{Page, Registry, UploadState};
use serde_json::json;

use crate::error::ApiError;
use crate::routes::ManifestRef;

pub type ApiResult = Result<Response, ApiError>;

pub const DIGEST_HEADER: &str = "docker-content-digest";

/// Query parameters, in order (keys may repeat, as `tag` does).
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let raw = raw.unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| ApiError::new(ErrorCode::Unsupported, format!("malformed query string: {e}")))?;
        Ok(Query(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request body as a byte stream for the engine.
fn stream(body: Body) -> storage::ByteStream {
    Box::pin(TryStreamExt::map_err(body.into_data_stream(), io::Error::other))
}

/// The body, unless it is known to be empty (`Content-Length: 0`, or none at all).
fn nonempty(body: Body) -> Option<storage::ByteStream> {
    (!axum::body::HttpBody::is_end_stream(&body)).then(|| stream(body))
}

fn content_range(headers: &HeaderMap) -> Result<Option<ByteRange>, ApiError> {
    header_str(headers, header::CONTENT_RANGE)
        .map(|h| oci::range::parse_content_range(h).map_err(|e| ApiError::new(ErrorCode::RangeInvalid, e.to_string())))
        .transpose()
}

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>`, as the spec writes it ("0-0" for an empty session).
fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn upload_response(status: StatusCode, repo: &RepoName, state: &UploadState) -> Response {
    (
        status,
        [
            (header::LOCATION, upload_location(repo, &state.id)),
            (header::RANGE, range_value(state.offset)),
            (header::HeaderName::from_static("docker-upload-uuid"), state.id.to_string()),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response()
}

/// Attach what a client needs to resume to an upload error.
fn upload_error(e: registry::Error, repo: &RepoName, id: &UploadId) -> ApiError {
    let offset = match &e {
        registry::Error::RangeInvalid { offset } => Some(*offset),
        _ => None,
    };
    let mut err = ApiError::from(e).header(header::HeaderName::from_static("docker-upload-uuid"), id.as_str());
    if let Some(offset) = offset {
        err = err.header(header::LOCATION, upload_location(repo, id)).header(header::RANGE, range_value(offset));
    }
    err
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{repo}/blobs/{digest}")),
            (header::HeaderName::from_static(DIGEST_HEADER), digest.to_string()),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response()
}

pub async fn base() -> ApiResult {
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
}

// ---- blobs ----

pub async fn blob_head(reg: &Registry, repo: &RepoName, digest: &Digest) -> ApiResult {
    let size = reg.blob_stat(repo, digest).await?;
    Ok(blob_headers(StatusCode::OK, digest, size, None).body(Body::empty()).expect("valid response"))
}

fn blob_headers(status: StatusCode, digest: &Digest, size: u64, range: Option<ByteRange>) -> axum::http::response::Builder {
    let len = range.map_or(size, |r| r.len());
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(DIGEST_HEADER, digest.as_str())
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(r) = range {
        b = b.header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end));
    }
    b
}

pub async fn blob_get(reg: &Registry, repo: &RepoName, digest: &Digest, headers: &HeaderMap) -> ApiResult {
    // Whole-blob reads may go straight to object storage; ranged ones stay here, since not
    // every client repeats its Range header after a redirect.
    if !headers.contains_key(header::RANGE)
        && let Some(url) = reg.blob_redirect(repo, digest).await?
    {
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, url), (HeaderName::from_static("docker-content-digest"), digest.to_string()), (header::CONTENT_LENGTH, "0".to_owned())],
        )
            .into_response());
    }
    let read = reg.blob_get(repo, digest, header_str(headers, header::RANGE)).await?;
    let status = if read.range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    Ok(blob_headers(status, digest, read.size, read.range).body(Body::from_stream(read.body)).expect("valid response"))
}

pub async fn blob_delete(reg: &Registry, repo: &RepoName, digest: &Digest) -> ApiResult {
    reg.blob_delete(repo, digest).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

// ---- uploads ----

pub async fn upload_post(reg: &Registry, repo: &RepoName, query: &Query, headers: &HeaderMap, body: Body) -> ApiResult {
    if let Some(mount) = query.get("mount") {
        let digest: Digest = mount.parse().map_err(|e: oci::DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))?;
        let from = query
            .get("from")
            .map(|f| f.parse::<RepoName>().map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string())))
            .transpose()?;
        if reg.blob_mount(repo, &digest, from.as_ref()).await? {
            return Ok(blob_created(repo, &digest));
        }
        // Not mountable: fall through to an ordinary session, as the spec asks.
    } else if let Some(d) = query.get("digest") {
        let digest: Digest = d.parse().map_err(|e: oci::DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))?;
        reg.upload_whole(repo, &digest, stream(body)).await?;
        return Ok(blob_created(repo, &digest));
    }
    let _ = headers;
    let state = reg.upload_start(repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &state))
}

fn known_upload(id: Option<&UploadId>) -> Result<&UploadId, ApiError> {
    id.ok_or_else(|| ApiError::new(ErrorCode::BlobUploadUnknown, "upload session unknown or expired"))
}

pub async fn upload_get(reg: &Registry, repo: &RepoName, id: Option<&UploadId>) -> ApiResult {
    let id = known_upload(id)?;
    let state = reg.upload_status(repo, id).await.map_err(|e| upload_error(e, repo, id))?;
    Ok(upload_response(StatusCode::NO_CONTENT, repo, &state))
}

pub async fn upload_patch(reg: &Registry, repo: &RepoName, id: Option<&UploadId>, headers: &HeaderMap, body: Body) -> ApiResult {
    let id = known_upload(id)?;
    let range = content_range(headers)?;
    let state = reg.upload_chunk(repo, id, range, stream(body)).await.map_err(|e| upload_error(e, repo, id))?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &state))
}

pub async fn upload_put(reg: &Registry, repo: &RepoName, id: Option<&UploadId>, query: &Query, headers: &HeaderMap, body: Body) -> ApiResult {
    let id = known_upload(id)?;
    let digest: Digest = query
        .get("digest")
        .ok_or_else(|| ApiError::new(ErrorCode::DigestInvalid, "the digest query parameter is required to close an upload"))?
        .parse()
        .map_err(|e: oci::DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))?;
    let range = content_range(headers)?;
    let body = nonempty(body);
    reg.upload_finish(repo, id, &digest, range, body).await.map_err(|e| upload_error(e, repo, id))?;
    Ok(blob_created(repo, &digest))
}

pub async fn upload_delete(reg: &Registry, repo: &RepoName, id: Option<&UploadId>) -> ApiResult {
    let id = known_upload(id)?;
    reg.upload_cancel(repo, id).await.map_err(|e| upload_error(e, repo, id))?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

// ---- manifests ----

/// GET/DELETE of a reference that cannot exist is "unknown"; PUT of one is "invalid".
fn readable(reference: &ManifestRef) -> Result<&Reference, ApiError> {
    match reference {
        ManifestRef::Valid(r) => Ok(r),
        ManifestRef::Invalid(e) => Err(ApiError::new(ErrorCode::ManifestUnknown, format!("manifest unknown: {e}"))),
    }
}

pub async fn manifest_get(reg: &Registry, method: &Method, repo: &RepoName, reference: &ManifestRef) -> ApiResult {
    let m = reg.manifest_get(repo, readable(reference)?).await?;
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, m.media_type.as_str())
        .header(header::CONTENT_LENGTH, m.content.len())
        .header(DIGEST_HEADER, m.digest.as_str())
        .header(header::ETAG, format!("\"{}\"", m.digest));
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(m.content.clone()) };
    Ok(builder.body(body).expect("valid response"))
}

pub async fn manifest_put(reg: &Registry, repo: &RepoName, reference: &ManifestRef, query: &Query, headers: &HeaderMap, body: Body) -> ApiResult {
    let reference = match reference {
        ManifestRef::Valid(r) => r,
        ManifestRef::Invalid(oci::NameError::Digest(e)) => return Err(ApiError::new(ErrorCode::DigestInvalid, e.to_string())),
        ManifestRef::Invalid(e) => return Err(ApiError::new(ErrorCode::TagInvalid, e.to_string())),
    };
    let tags = query
        .all("tag")
        .map(|t| t.parse::<Tag>().map_err(|e| ApiError::new(ErrorCode::TagInvalid, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = reg.config().manifest_max_size;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(registry::Error::ManifestTooLarge { limit }.into()),
        Err(e) => return Err(registry::Error::Body(e.to_string()).into()),
    };
    let put = reg.manifest_put(repo, reference, header_str(headers, header::CONTENT_TYPE), bytes, &tags).await?;
    let mut resp = (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{repo}/manifests/{}", put.digest)),
            (header::HeaderName::from_static(DIGEST_HEADER), put.digest.to_string()),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
        .into_response();
    if let Some(subject) = put.subject
        && let Ok(v) = HeaderValue::from_str(subject.as_str())
    {
        resp.headers_mut().insert("oci-subject", v);
    }
    for t in &tags {
        if let Ok(v) = HeaderValue::from_str(t.as_str()) {
            resp.headers_mut().append("oci-tag", v);
        }
    }
    Ok(resp)
}

pub async fn manifest_delete(reg: &Registry, repo: &RepoName, reference: &ManifestRef) -> ApiResult {
    reg.manifest_delete(repo, readable(reference)?).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

// ---- listings ----

fn page_params(query: &Query) -> Result<(Option<u32>, Option<&str>), ApiError> {
    let n = query
        .get("n")
        .map(|n| n.parse::<u32>().map_err(|_| ApiError::from(registry::Error::PaginationInvalid(n.chars().take(20).collect()))))
        .transpose()?;
    Ok((n, query.get("last").filter(|l| !l.is_empty())))
}

fn with_link(mut resp: Response, path: &str, page: &Page) -> Response {
    if let (Some(n), Some(last)) = (page.next, page.names.last()) {
        let qs = serde_urlencoded::to_string([("n", n.to_string().as_str()), ("last", last.as_str())]).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?{qs}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

pub async fn tags(reg: &Registry, repo: &RepoName, query: &Query) -> ApiResult {
    let (n, last) = page_params(query)?;
    let page = reg.tags(repo, n, last).await?;
    let resp = axum::Json(json!({ "name": repo.as_str(), "tags": page.names })).into_response();
    Ok(with_link(resp, &format!("/v2/{repo}/tags/list"), &page))
}

/// The catalog; with `visible`, only the repositories it accepts (those the caller may pull).
pub async fn catalog(reg: &Registry, query: &Query, visible: Option<&(dyn Fn(&str) -> bool + Sync)>) -> ApiResult {
    let (n, last) = page_params(query)?;
    let page = match visible {
        None => reg.catalog(n, last).await?,
        Some(f) => reg.catalog_filtered(n, last, f).await?,
    };
    let resp = axum::Json(json!({ "repositories": page.names })).into_response();
    Ok(with_link(resp, "/v2/_catalog", &page))
}

pub async fn referrers(reg: &Registry, repo: &RepoName, digest: &Digest, query: &Query) -> ApiResult {
    let artifact_type = query.get("artifactType").filter(|t| !t.is_empty());
    let r = reg.referrers(repo, digest, artifact_type).await?;
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, oci::media::OCI_INDEX)], r.index).into_response();
    if r.filtered {
        resp.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
