//! The engine's error type: one variant per distinct outcome a client must be told about.

use oci::{Digest, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown(Digest),
    #[error("upload session unknown or expired")]
    UploadUnknown,
    #[error("{0}")]
    UploadInvalid(String),
    /// A chunk did not start where the session ends; `offset` is what the session holds.
    #[error("chunk must start at offset {offset}")]
    RangeInvalid { offset: u64 },
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("provided digest {expected} does not match the content ({actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("manifest references {0}, which is not in this repository")]
    ManifestBlobUnknown(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("invalid pagination number {0:?}")]
    PaginationInvalid(String),
    #[error("{0}")]
    Unsupported(&'static str),
    /// A push or delete would move or remove a tag that an immutable-tags rule protects.
    #[error("tag is immutable: {repository}:{tag} matches the immutable_tags rule ({rule})")]
    TagImmutable { repository: oci::RepoName, tag: String, rule: crate::ImmutableRule },
    /// Linking a blob would take a namespace over its quota (sizes in bytes).
    #[error(
        "quota exceeded for {namespace}: {} limit, {} used, this blob needs {}",
        crate::human_bytes(*limit),
        crate::human_bytes(*used),
        crate::human_bytes(*needed)
    )]
    QuotaExceeded { namespace: String, limit: u64, used: u64, needed: u64 },
    /// Reading the request body failed: the client went away or sent a malformed body.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// A backing service is overloaded or unreachable; the client may retry.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A backing service failed. The text is for the log, never for the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The spec error code this outcome is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BlobUnknown(_) => ErrorCode::BlobUnknown,
            Error::UploadUnknown => ErrorCode::BlobUploadUnknown,
            Error::UploadInvalid(_) | Error::Body(_) => ErrorCode::BlobUploadInvalid,
            Error::RangeInvalid { .. } | Error::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            Error::DigestMismatch { .. } | Error::DigestInvalid(_) => ErrorCode::DigestInvalid,
            Error::SizeInvalid(_) => ErrorCode::SizeInvalid,
            Error::ManifestInvalid(_) => ErrorCode::ManifestInvalid,
            Error::ManifestTooLarge { .. } => ErrorCode::ManifestTooLarge,
            Error::ManifestUnknown => ErrorCode::ManifestUnknown,
            Error::ManifestBlobUnknown(_) => ErrorCode::ManifestBlobUnknown,
            Error::NameUnknown => ErrorCode::NameUnknown,
            Error::PaginationInvalid(_) => ErrorCode::PaginationNumberInvalid,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::TagImmutable { .. } | Error::QuotaExceeded { .. } => ErrorCode::Denied,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Unknown,
        }
    }
}

impl From<meta::MetaError> for Error {
    fn from(e: meta::MetaError) -> Self {
        match e {
            meta::MetaError::MissingBlob(d) | meta::MetaError::MissingManifest(d) => Error::ManifestBlobUnknown(d),
            meta::MetaError::QuotaExceeded { namespace, limit, used, needed } => Error::QuotaExceeded { namespace, limit, used, needed },
            e if e.is_transient() => Error::Unavailable(e.to_string()),
            // The push raced a garbage collection of the same blob: pushing again succeeds.
            e @ meta::MetaError::Collected(_) => Error::Unavailable(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<storage::StorageError> for Error {
    fn from(e: storage::StorageError) -> Self {
        match e {
            // The session says more bytes were accepted than storage holds (an unsynced upload
            // file lost to a power failure): the client must start over.
            storage::StorageError::OffsetMismatch { .. } => Error::UploadInvalid(format!("upload data was lost ({e}); start a new upload")),
            storage::StorageError::Unavailable(m) => Error::Unavailable(format!("storage: {m}")),
            other => Error::Internal(format!("storage: {other}")),
        }
    }
}
