//! The error codes of the distribution spec (plus the few Distribution added that clients know).
//!
//! This is only the vocabulary. Which HTTP status each code travels with is decided in exactly one
//! place, the server crate's error table, because this crate knows nothing about HTTP.

/// One error code as it appears in the `{"errors":[{"code": ...}]}` envelope.
///
/// Some variants share a code string but differ in meaning (and so in HTTP status):
/// `ManifestTooLarge` is reported as `MANIFEST_INVALID`, with its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    RangeInvalid,
    PaginationNumberInvalid,
    /// A malformed query parameter outside the distribution API (admin endpoints).
    QueryInvalid,
    Unauthorized,
    Denied,
    /// A token that does not grant what the request needs: reported as `DENIED`, but with 401
    /// and a challenge naming the scope, so the client fetches a token for it.
    InsufficientScope,
    Unsupported,
    TooManyRequests,
    /// The request conflicts with work in progress (a garbage collection already running).
    Conflict,
    /// A route that does not exist.
    NotFound,
    /// The request was well formed but the server failed; details go to the log, not the client.
    Unknown,
    /// A backing service (database, storage) is unreachable; the client may retry.
    Unavailable,
}

impl ErrorCode {
    /// The code string sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid | ErrorCode::ManifestTooLarge => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::QueryInvalid => "QUERY_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied | ErrorCode::InsufficientScope => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}
