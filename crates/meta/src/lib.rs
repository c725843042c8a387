//! The metadata store: repositories, blobs and their links to repositories, manifests and what
//! they reference, tags, and upload sessions.
//!
//! One code path serves SQLite (the embedded default) and PostgreSQL (scale-out), through sqlx's
//! `Any` driver; only the schema text differs per backend (see `schema`). This crate knows
//! nothing about HTTP or blob bytes: it records facts about content, never the content itself
//! (except manifest documents, which are small and served straight from here).
//!
//! On SQLite all writes go through one connection, so write transactions never meet
//! `SQLITE_BUSY`, and their WAL fsyncs happen off it and are shared (`writer`); reads use a
//! separate pool and, in WAL mode, never wait for writes.

pub(crate) mod events;
mod fsck;
mod gc;
mod lifecycle;
mod quota;
mod schema;
mod store;
mod writer;
pub mod testsuite;
pub mod testsuite_policy;
pub mod testsuite_lifecycle;

pub use events::{Delivery, EndpointStatus, Event, EventFilter, NewEvent};
pub use fsck::{BlobUse, UnrecordedClaim};
pub use gc::{BlobCandidate, LinkCandidate};
pub use lifecycle::{DeletedManifest, KeptBecause, RepositoryDeletion, RepositorySummary, Role, TagInfo, UntaggedCandidate, UntaggedOutcome};
pub use quota::{COUNTER_MAX_AGE_MS, NamespaceUsage, Quota};
pub use store::{
    Dedup, MetaStore, NewManifest, Referrer, RepoUsage, StorageTotals, StoredManifest, TagPage, UploadSession, UploadUpdate,
};

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A manifest references a blob that is not linked to its repository.
    #[error("blob {0} is not in this repository")]
    MissingBlob(String),
    /// An index references a manifest that is not in its repository.
    #[error("manifest {0} is not in this repository")]
    MissingManifest(String),
    /// An upload session was changed by another request since it was read.
    #[error("upload session changed concurrently")]
    Conflict,
    /// The database could not be reached or answered with an error.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A garbage collection deleted this blob while a push was storing its own copy; the
    /// push must be retried (its bytes may be gone).
    #[error("blob {0} was garbage collected during the push")]
    Collected(String),
    /// A tag that policy makes immutable would be moved to another manifest or deleted.
    #[error("tag {0} is immutable")]
    ImmutableTag(String),
    /// Linking a blob would take a namespace over its quota (sizes in bytes; `needed` is what
    /// the blob would add).
    #[error("quota exceeded for {namespace}: limit {limit} bytes, {used} used, {needed} needed")]
    QuotaExceeded { namespace: String, limit: u64, used: u64, needed: u64 },
    /// On SQLite, syncing the write-ahead log to disk failed: what was written since the last
    /// successful sync may not be on stable storage, and writes are refused until restart.
    #[error("database: syncing the metadata WAL failed ({0}); writes are refused until berth is restarted")]
    SyncFailed(String),
    /// The database holds something this version cannot read.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

impl MetaError {
    /// The database is unreachable, overloaded or shutting down (connection lost, no pool
    /// connection free in time, pool closed): the request may succeed if retried.
    pub fn is_transient(&self) -> bool {
        match self {
            MetaError::Database(e) => matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed),
            _ => false,
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;
