//! Parsing `/v2/...` paths into typed routes.
//!
//! Repository names contain slashes, so the router cannot match them segment by segment; the
//! path is read from its end instead (`.../manifests/<ref>`, `.../blobs/uploads/<id>`, ...).
//! Everything is parsed into domain types here, at the edge: handlers never see raw strings.

use oci::{Digest, ErrorCode, Reference, RepoName, UploadId};

use crate::error::ApiError;

/// What a `/v2/` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, ManifestRef),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, Option<UploadId>),
    Referrers(RepoName, Digest),
}

/// A manifest reference as given in the URL. An invalid one is kept, not rejected: GET and
/// DELETE of a reference that cannot exist answer "unknown", PUT answers "invalid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    Valid(Reference),
    Invalid(oci::NameError),
}

impl Route {
    /// The route's template, for logs and metrics (bounded cardinality).
    pub fn template(&self) -> &'static str {
        match self {
            Route::Base => "/v2/",
            Route::Catalog => "/v2/_catalog",
            Route::Tags(_) => "/v2/{name}/tags/list",
            Route::Manifest(..) => "/v2/{name}/manifests/{reference}",
            Route::Blob(..) => "/v2/{name}/blobs/{digest}",
            Route::UploadStart(_) => "/v2/{name}/blobs/uploads/",
            Route::Upload(..) => "/v2/{name}/blobs/uploads/{id}",
            Route::Referrers(..) => "/v2/{name}/referrers/{digest}",
        }
    }

    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(r) | Route::Manifest(r, _) | Route::Blob(r, _) | Route::UploadStart(r) | Route::Upload(r, _) | Route::Referrers(r, _) => {
                Some(r)
            }
        }
    }
}

fn name(segments: &[&str]) -> Result<RepoName, ApiError> {
    let joined = segments.join("/");
    joined.parse().map_err(|e: oci::NameError| ApiError::new(ErrorCode::NameInvalid, e.to_string()))
}

fn digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: oci::DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// Parse the path of a request under `/v2/`. `None` means no such route.
pub fn parse(path: &str) -> Option<Result<Route, ApiError>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Ok(Route::Base));
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Ok(Route::Catalog));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let tail = |k: usize| -> &[&str] { &segs[n - k..] };
    let route = if n >= 3 && tail(2) == ["tags", "list"] {
        name(&segs[..n - 2]).map(Route::Tags)
    } else if n >= 3 && tail(2) == ["blobs", "uploads"] {
        name(&segs[..n - 2]).map(Route::UploadStart)
    } else if n >= 4 && tail(3)[..2] == ["blobs", "uploads"] {
        let id = segs[n - 1];
        if id.is_empty() {
            name(&segs[..n - 3]).map(Route::UploadStart)
        } else {
            // An id that cannot exist is an unknown upload (404), not a malformed request.
            name(&segs[..n - 3]).map(|r| Route::Upload(r, id.parse().ok()))
        }
    } else if n >= 3 && segs[n - 2] == "blobs" {
        name(&segs[..n - 2]).and_then(|r| digest(segs[n - 1]).map(|d| Route::Blob(r, d)))
    } else if n >= 3 && segs[n - 2] == "manifests" {
        let reference = match segs[n - 1].parse::<Reference>() {
            Ok(r) => ManifestRef::Valid(r),
            Err(e) => ManifestRef::Invalid(e),
        };
        name(&segs[..n - 2]).map(|r| Route::Manifest(r, reference))
    } else if n >= 3 && segs[n - 2] == "referrers" {
        name(&segs[..n - 2]).and_then(|r| digest(segs[n - 1]).map(|d| Route::Referrers(r, d)))
    } else {
        return None;
    };
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(p: &str) -> Route {
        parse(p).expect("a route").expect("valid")
    }

    #[test]
    fn routes() {
        assert_eq!(ok("/v2/"), Route::Base);
        assert_eq!(ok("/v2"), Route::Base);
        assert_eq!(ok("/v2/_catalog"), Route::Catalog);
        assert!(matches!(ok("/v2/a/b/tags/list"), Route::Tags(r) if r.as_str() == "a/b"));
        assert!(matches!(ok("/v2/a/manifests/latest"), Route::Manifest(_, ManifestRef::Valid(Reference::Tag(_)))));
        assert!(matches!(ok("/v2/a/manifests/.bad"), Route::Manifest(_, ManifestRef::Invalid(_))));
        assert!(matches!(ok(&format!("/v2/a/blobs/{D}")), Route::Blob(..)));
        assert!(matches!(ok("/v2/a/blobs/uploads/"), Route::UploadStart(_)));
        assert!(matches!(ok("/v2/a/blobs/uploads"), Route::UploadStart(_)));
        assert!(matches!(ok("/v2/a/blobs/uploads/0123456789abcdef0123456789abcdef"), Route::Upload(_, Some(_))));
        assert!(matches!(ok("/v2/a/blobs/uploads/nonsense"), Route::Upload(_, None)));
        assert!(matches!(ok(&format!("/v2/a/referrers/{D}")), Route::Referrers(..)));
        // Names may contain segments that look like route words.
        assert!(matches!(ok("/v2/blobs/manifests/manifests/x"), Route::Manifest(r, _) if r.as_str() == "blobs/manifests"));
        assert!(matches!(ok("/v2/x/blobs/uploads/blobs/uploads/"), Route::UploadStart(r) if r.as_str() == "x/blobs/uploads"));
    }

    #[test]
    fn errors() {
        assert!(parse("/other").is_none());
        assert!(parse("/v2/a/unknown").is_none());
        assert_eq!(parse("/v2/A/tags/list").unwrap().unwrap_err().code, ErrorCode::NameInvalid);
        assert_eq!(parse("/v2/a/blobs/sha256:zz").unwrap().unwrap_err().code, ErrorCode::DigestInvalid);
        assert_eq!(parse("/v2/../x/tags/list").unwrap().unwrap_err().code, ErrorCode::NameInvalid);
    }
}
