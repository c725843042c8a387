//! Online garbage collection: blobs nothing uses any more are deleted, from the database and
//! then from storage, while pushes and pulls go on. The protocol that makes this safe against a
//! concurrent push, mount or manifest PUT of the same blob is written down, with the queries,
//! in `meta::gc`; this module drives it in batches and deletes the bytes.
//!
//! Liveness: a blob is in use while some repository links it through a manifest that
//! references it, or through a link created or mounted within the grace period (a push whose
//! manifest has not arrived yet). Deleting a manifest restarts the grace period of the links
//! it kept alive. Untagged manifests are not collected (they keep their blobs).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use oci::Digest;
use tokio_util::sync::CancellationToken;

use crate::{Registry, Result};

/// Candidates read per listing query.
const BATCH: u32 = 500;
/// Rows changed per transaction: small, so that on SQLite (one writer at a time) pushes never
/// wait long behind a collection, and few enough commits that a large collection stays fast.
const TX_ROWS: usize = 50;
/// A pending tombstone this old belongs to a collection that stopped before deleting the
/// bytes (a running one finishes a batch's deletes within moments).
const PENDING_STALE: Duration = Duration::from_secs(600);
/// Storage deletes in flight at once.
const STORAGE_DELETES_IN_FLIGHT: usize = 16;
/// Tombstones are kept this long: far longer than a push takes between reading its mark and
/// recording its blob.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a collection did (or, dry, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Repository links removed.
    pub links_removed: u64,
    /// Blobs deleted (or that would be).
    pub blobs_deleted: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Blobs forgotten by the database whose bytes storage failed to delete (left as orphans
    /// for the scrub; they are never served again).
    pub storage_errors: u64,
}

/// Where a collection is, for progress output.
#[derive(Debug, Clone, Copy)]
pub enum GcProgress {
    Links { removed: u64 },
    Blobs { deleted: u64, bytes: u64 },
}

fn cutoff(grace: Duration) -> i64 {
    let at = SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH);
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Registry {
    /// Delete the bytes of blobs the database forgot (their tombstones pending), several at a
    /// time, then mark the tombstones done so pushes of those digests may proceed. A failed
    /// delete leaves an orphan file for the scrub; its tombstone is marked done all the same,
    /// since a push may safely write over bytes that are still there. Returns the failures.
    async fn delete_bytes(&self, forgotten: Vec<(i64, Digest)>) -> Result<u64> {
        let ids: Vec<i64> = forgotten.iter().map(|(id, _)| *id).collect();
        let failures: Vec<(Digest, storage::StorageError)> = futures::stream::iter(forgotten)
            .map(|(_, d)| {
                let blobs = self.inner.blobs.clone();
                async move { blobs.delete(&d).await.err().map(|e| (d, e)) }
            })
            .buffer_unordered(STORAGE_DELETES_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for (d, e) in &failures {
            tracing::warn!(digest = %d, error = %e, "garbage blob forgotten but its bytes could not be deleted; the scrub will find them");
        }
        self.inner.meta.gc_bytes_deleted(&ids).await?;
        Ok(failures.len() as u64)
    }

    /// Collect garbage once, with the configured grace period (or `grace`).
    pub async fn collect_garbage(&self, dry_run: bool, grace: Option<Duration>, progress: &(dyn Fn(GcProgress) + Sync)) -> Result<GcReport> {
        let cut = cutoff(grace.unwrap_or(self.inner.config.gc_grace));
        let meta = &self.inner.meta;
        let mut report = GcReport { dry_run, ..GcReport::default() };
        if dry_run {
            let mut after = None;
            loop {
                let page = meta.gc_dry_run(cut, after.as_ref(), BATCH).await?;
                for b in &page {
                    report.blobs_deleted += 1;
                    report.bytes_freed += b.size;
                }
                progress(GcProgress::Blobs { deleted: report.blobs_deleted, bytes: report.bytes_freed });
                match page.last() {
                    Some(last) if page.len() == BATCH as usize => after = Some(last.digest.clone()),
                    _ => return Ok(report),
                }
            }
        }
        // 0. Bytes a stopped collection forgot but did not delete (pushes of those digests
        //    wait until this is done). Older than any running collection's batch could be.
        let stale = SystemTime::now().checked_sub(PENDING_STALE).unwrap_or(UNIX_EPOCH);
        let stale = stale.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let pending = meta.gc_pending_tombstones(stale).await?;
        if !pending.is_empty() {
            tracing::info!(blobs = pending.len(), "finishing the storage deletes of an interrupted collection");
            report.storage_errors += self.delete_bytes(pending).await?;
        }
        // 1. Links nothing references any more.
        let mut after = None;
        loop {
            let page = meta.gc_link_candidates(cut, after.as_ref(), BATCH).await?;
            for chunk in page.chunks(TX_ROWS) {
                report.links_removed += meta.gc_unlink(chunk, cut).await?;
            }
            progress(GcProgress::Links { removed: report.links_removed });
            match page.last() {
                Some(last) if page.len() == BATCH as usize => after = Some(last.clone()),
                _ => break,
            }
        }
        // 2. Blobs no link holds: forgotten by the database first, then deleted from storage.
        let mut after = None;
        loop {
            let page = meta.gc_blob_candidates(cut, after.as_ref(), BATCH).await?;
            let digests: Vec<Digest> = page.iter().map(|b| b.digest.clone()).collect();
            let sizes: HashMap<&Digest, u64> = page.iter().map(|b| (&b.digest, b.size)).collect();
            for chunk in digests.chunks(TX_ROWS) {
                let forgotten = meta.gc_forget_blobs(chunk, cut).await?;
                report.blobs_deleted += forgotten.len() as u64;
                report.bytes_freed += forgotten.iter().map(|(_, d)| sizes.get(d).copied().unwrap_or(0)).sum::<u64>();
                report.storage_errors += self.delete_bytes(forgotten).await?;
            }
            progress(GcProgress::Blobs { deleted: report.blobs_deleted, bytes: report.bytes_freed });
            match page.last() {
                Some(last) if page.len() == BATCH as usize => after = Some(last.digest.clone()),
                _ => break,
            }
        }
        let old = SystemTime::now().checked_sub(TOMBSTONE_TTL).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        if let Some(old) = old {
            meta.gc_prune_tombstones(i64::try_from(old.as_millis()).unwrap_or(0)).await?;
        }
        if report.links_removed > 0 || report.blobs_deleted > 0 {
            tracing::info!(
                links = report.links_removed,
                blobs = report.blobs_deleted,
                bytes = report.bytes_freed,
                storage_errors = report.storage_errors,
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// Collect garbage every `gc_interval` until `shutdown` is cancelled (the first run one
    /// interval after start). Every node may run it: each step is safe against the others.
    pub fn spawn_gc(&self, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.inner.config.gc_interval?;
        let registry = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        // Cancelled mid-run by shutdown: every step is its own transaction.
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            r = registry.collect_garbage(false, None, &|_| {}) => {
                                if let Err(e) = r {
                                    tracing::warn!(error = %e, "garbage collection failed; will retry");
                                }
                            }
                        }
                    }
                }
            }
        }))
    }
}
