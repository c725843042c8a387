//! The registry engine: what the distribution API does, independent of HTTP.
//!
//! It owns upload sessions (hashing every byte on the way in and committing a blob only under
//! the digest it verified), manifest validation and storage, tags, referrers, the catalog, and
//! the background janitor that reclaims abandoned uploads. It talks to the metadata database
//! through `meta` and to blob bytes through `storage`.
//!
//! It knows nothing about axum, requests or responses: callers hand it parsed domain types
//! (`RepoName`, `Digest`, `Reference`, ...) and byte streams, and get domain results or an
//! [`Error`] whose variants name what went wrong in the spec's terms.

mod cache;
mod error;
pub mod events;
mod fsck;
mod gc;
mod janitor;
mod lifecycle;
mod manifests;
mod policy;
mod retention;
pub mod time;
mod uploads;
mod webhooks;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use error::Error;
pub use events::{AuditSink, EventsConfig, REQUEST, RequestContext, WebhookEndpoint, WebhookFormat};
pub use fsck::{Damage, DamagedBlob, FsckOptions, FsckPhase, FsckProgress, FsckReport, ORPHAN_MIN_AGE, OrphanBlob, OrphanState};
pub use gc::{GcGuard, GcProgress, GcReport, GcTotals};
pub use janitor::Sweep;
pub use lifecycle::{KeptTag, TagDeletion, TagFilter, TagReport, parse_age};
pub use manifests::{ManifestPut, Page, Referrers, MAX_PAGE};
pub use policy::{ImmutableRule, Policies, QuotaUsage, RepositoryUsage, UsageReport, human_bytes, usage_report};
pub use retention::{Fate, Keep, RetentionConfig, RetentionManifest, RetentionPolicy, RetentionReport, RetentionTag, TagRegex, Verdict, plan as retention_plan};
pub use uploads::once;
pub use uploads::{BlobRead, UploadState};

use meta::MetaStore;
use storage::BlobStore;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Engine settings (resolved from the config file by the binary).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Whether manifest, tag and blob DELETEs are allowed.
    pub delete_enabled: bool,
    /// Upload sessions idle for longer than this are dropped and their bytes reclaimed.
    pub upload_expiry: Duration,
    /// How often the janitor looks for expired uploads.
    pub janitor_interval: Duration,
    /// Largest manifest accepted, in bytes.
    pub manifest_max_size: usize,
    /// Memory for cached manifests, in bytes (0 turns the cache off).
    pub manifest_cache_bytes: usize,
    /// Blobs unused for longer than this are garbage (see `gc`).
    pub gc_grace: Duration,
    /// How often garbage is collected in the background (`None`: only on demand).
    pub gc_interval: Option<Duration>,
    /// Untagged manifests that lost their last tag (or index, or subject) longer ago than this
    /// are collected (`None`, the default: untagged manifests are kept; see `gc`).
    pub gc_untagged: Option<Duration>,
    /// Answer whole-blob GETs with a redirect to a URL valid this long, when the storage
    /// driver can issue one (bytes then flow from object storage, not through the registry).
    pub blob_redirect: Option<Duration>,
    /// Immutable tags and quotas (see `policy`).
    pub policies: Policies,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            delete_enabled: true,
            upload_expiry: Duration::from_secs(24 * 3600),
            janitor_interval: Duration::from_secs(600),
            manifest_max_size: 4 << 20,
            manifest_cache_bytes: 16 << 20,
            blob_redirect: None,
            gc_grace: Duration::from_secs(24 * 3600),
            gc_interval: Some(Duration::from_secs(3600)),
            gc_untagged: None,
            policies: Policies::default(),
        }
    }
}

/// The engine. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    meta: MetaStore,
    blobs: Arc<dyn BlobStore>,
    config: RegistryConfig,
    /// Manifests recently read, so hot tags are served without a database round trip.
    cache: cache::ManifestCache,
    /// Upload sessions with a request in flight on this node: a second concurrent request on
    /// the same session is refused rather than interleaving bytes. (The database's
    /// compare-and-set on the offset catches the same race across nodes.)
    busy_uploads: Mutex<HashSet<oci::UploadId>>,
    /// Audit and webhook plumbing.
    events: events::EventsRuntime,
    /// What this process's garbage collections did, for metrics.
    gc_stats: gc::GcStats,
}

impl Registry {
    pub fn new(meta: MetaStore, blobs: Arc<dyn BlobStore>, config: RegistryConfig) -> Registry {
        Registry::with_events(meta, blobs, config, EventsConfig::default())
    }

    /// A registry that records events as `events` says (audit sink, webhooks, pulls).
    pub fn with_events(meta: MetaStore, blobs: Arc<dyn BlobStore>, config: RegistryConfig, events: EventsConfig) -> Registry {
        let cache = cache::ManifestCache::new(config.manifest_cache_bytes);
        // Every link of a blob is charged against the quotas in the linking transaction.
        let meta = meta.with_quotas(config.policies.quotas.clone());
        let events = events::EventsRuntime::new(events);
        Registry { inner: Arc::new(Inner { meta, blobs, config, cache, busy_uploads: Mutex::default(), events, gc_stats: gc::GcStats::default() }) }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn meta(&self) -> &MetaStore {
        &self.inner.meta
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.inner.blobs
    }

    /// Usage figures for metrics (see [`meta::MetaStore::storage_totals`]).
    pub async fn storage_totals(&self, top: u32) -> Result<meta::StorageTotals> {
        Ok(self.inner.meta.storage_totals(top).await?)
    }

    /// Whether the database answers (for readiness probes).
    pub async fn ready(&self) -> Result<()> {
        self.inner.meta.ping().await?;
        Ok(())
    }

    pub(crate) fn require_delete(&self) -> Result<()> {
        if self.inner.config.delete_enabled { Ok(()) } else { Err(Error::Unsupported("deletes are disabled on this registry")) }
    }
}
