//! The one error table: every error code's HTTP status is decided in [`status`], and the JSON
//! envelope `{"errors":[{code,message,detail}]}` is built only in `IntoResponse`. No handler picks
//! a status for an error. 5xx details are logged, never sent.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;
use serde_json::{Value, json};

/// The HTTP status each code travels with.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BlobUnknown
        | ErrorCode::BlobUploadUnknown
        | ErrorCode::ManifestUnknown
        | ErrorCode::NameUnknown
        | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadInvalid
        | ErrorCode::DigestInvalid
        | ErrorCode::ManifestBlobUnknown
        | ErrorCode::ManifestInvalid
        | ErrorCode::NameInvalid
        | ErrorCode::SizeInvalid
        | ErrorCode::TagInvalid
        | ErrorCode::PaginationNumberInvalid
        | ErrorCode::QueryInvalid => StatusCode::BAD_REQUEST,
        ErrorCode::ManifestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::Unauthorized | ErrorCode::InsufficientScope => StatusCode::UNAUTHORIZED,
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
    /// Headers the client needs to recover (the upload's `Range`, a `Content-Range`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), detail: None, headers: Vec::new() }
    }

    pub fn detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn header(mut self, name: HeaderName, value: impl AsRef<str>) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, v));
        }
        self
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> ApiError {
        let code = e.code();
        let mut err = ApiError::new(code, e.to_string());
        match &e {
            registry::Error::BlobUnknown(d) => err = err.detail(json!({ "digest": d })),
            registry::Error::ManifestBlobUnknown(d) => err = err.detail(json!({ "digest": d })),
            registry::Error::DigestMismatch { expected, actual } => err = err.detail(json!({ "expected": expected, "actual": actual })),
            registry::Error::ManifestTooLarge { limit } => err = err.detail(json!({ "limit": limit })),
            registry::Error::TagImmutable { repository, tag, rule } => err = err.detail(json!({ "repository": repository.as_str(), "tag": tag, "rule": rule })),
            registry::Error::QuotaExceeded { namespace, limit, used, needed } => {
                err = err.detail(json!({ "namespace": namespace, "limit": limit, "used": used, "needed": needed }));
            }
            registry::Error::RangeNotSatisfiable { size } => err = err.header(header::CONTENT_RANGE, format!("bytes */{size}")),
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(self.code);
        let message = if self.code == ErrorCode::Unavailable {
            tracing::warn!(code = self.code.as_str(), error = %self.message, "request failed; the client may retry");
            "service temporarily unavailable; retry the request".to_owned()
        } else if status.is_server_error() {
            tracing::error!(code = self.code.as_str(), error = %self.message, "request failed");
            "internal server error".to_owned()
        } else {
            self.message
        };
        let mut entry = json!({ "code": self.code.as_str(), "message": message });
        if let Some(d) = self.detail
            && !status.is_server_error()
        {
            entry["detail"] = d;
        }
        let body = json!({ "errors": [entry] }).to_string();
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        if self.code == ErrorCode::Unavailable {
            // Clients (containerd, docker) back off and retry a 503 that says when.
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_server_errors_hide_details() {
        assert_eq!(status(ErrorCode::RangeInvalid), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(status(ErrorCode::ManifestTooLarge), StatusCode::PAYLOAD_TOO_LARGE);
        let resp = ApiError::new(ErrorCode::Unknown, "disk /secret/path failed").into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn unavailable_is_a_503_with_retry_after() {
        let resp = ApiError::new(ErrorCode::Unavailable, "storage: SlowDown").into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
