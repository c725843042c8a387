//! Online garbage collection: blobs nothing uses any more are deleted, from the database and
//! then from storage, while pushes and pulls go on. The protocol that makes this safe against a
//! concurrent push, mount or manifest PUT of the same blob is written down, with the queries,
//! in `meta::gc`; this module drives it in batches and deletes the bytes.
//!
//! Liveness: a blob is in use while some repository links it through a manifest that
//! references it, or through a link created or mounted within the grace period (a push whose
//! manifest has not arrived yet). Deleting a manifest restarts the grace period of the links
//! it kept alive.
//!
//! Untagged manifests are kept (and keep their blobs) unless `gc_untagged` is set: then each
//! collection first deletes, one transaction each, the manifests with no tag, in no index of
//! their repository and not a referrer of a manifest still there, that lost their last tag (or
//! index, or subject; or were pushed, if nothing ever kept them) longer ago than that, with
//! their referrers and the children nothing else keeps (`meta::MetaStore::gc_delete_untagged`).
//! Their blobs go in a later collection, after the grace period, as after a manifest DELETE.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meta::{DeletedManifest, Role, UntaggedOutcome};
use oci::{Digest, RepoName};
use tokio_util::sync::CancellationToken;

use crate::events::{REQUEST, RequestContext};
use crate::lifecycle::{millis, now_ms};
use crate::{Registry, Result};

/// Candidates read per listing query.
const BATCH: u32 = 500;
/// A pending tombstone this old belongs to a collection that stopped before deleting the
/// bytes (a running one finishes a batch's deletes within moments).
const PENDING_STALE: Duration = Duration::from_secs(600);
/// Tombstones are kept this long: far longer than a push takes between reading its mark and
/// recording its blob.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Whether a collection started by this process's background task or admin API is running.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Held while this process runs a collection through its background task or the admin API:
/// at most one at a time, so a second request is refused (409) rather than run beside it (two
/// would compete for the same rows and, on SQLite, for the one write connection). Collections
/// in other processes (`berth gc` without `--url`, other nodes) are not counted: running
/// beside them is safe, only slower.
#[derive(Debug)]
pub struct GcGuard(());

impl GcGuard {
    /// The guard, or `None` while another holder has it.
    pub fn try_acquire() -> Option<GcGuard> {
        RUNNING.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| GcGuard(()))
    }
}

impl Drop for GcGuard {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Untagged manifests deleted (or that would be), with the referrers and index children
    /// that went with them (`gc_untagged`).
    pub untagged_deleted: u64,
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

/// This registry's collections so far (dry runs not counted), for metrics.
#[derive(Default)]
pub(crate) struct GcStats {
    runs: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
    last_micros: AtomicU64,
    untagged_deleted: AtomicU64,
    links_removed: AtomicU64,
    blobs_deleted: AtomicU64,
    bytes_freed: AtomicU64,
}

impl GcStats {
    fn record(&self, report: Option<&GcReport>, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        self.last_micros.store(micros, Ordering::Relaxed);
        match report {
            None => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            Some(r) => {
                self.untagged_deleted.fetch_add(r.untagged_deleted, Ordering::Relaxed);
                self.links_removed.fetch_add(r.links_removed, Ordering::Relaxed);
                self.blobs_deleted.fetch_add(r.blobs_deleted, Ordering::Relaxed);
                self.bytes_freed.fetch_add(r.bytes_freed, Ordering::Relaxed);
            }
        }
    }
}

/// Totals of the collections this registry ran (in this process; dry runs not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GcTotals {
    pub runs: u64,
    /// Collections that stopped on an error.
    pub failures: u64,
    pub seconds: f64,
    pub last_seconds: f64,
    pub untagged_deleted: u64,
    pub links_removed: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
}

impl Registry {
    /// What the collections of this process did so far.
    pub fn gc_totals(&self) -> GcTotals {
        let s = &self.inner.gc_stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GcTotals {
            runs: l(&s.runs),
            failures: l(&s.failures),
            seconds: l(&s.micros) as f64 / 1e6,
            last_seconds: l(&s.last_micros) as f64 / 1e6,
            untagged_deleted: l(&s.untagged_deleted),
            links_removed: l(&s.links_removed),
            blobs_deleted: l(&s.blobs_deleted),
            bytes_freed: l(&s.bytes_freed),
        }
    }
}

/// Where a collection is, for progress output.
#[derive(Debug, Clone, Copy)]
pub enum GcProgress {
    Untagged { deleted: u64 },
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
        let t = std::time::Instant::now();
        let failures = self.inner.blobs.delete_many(forgotten.into_iter().map(|(_, d)| d).collect()).await;
        // Deleting files takes the disk and CPU time the registry's load needs too (on the
        // embedded default, a quarter of the collection's CPU): give twice as much back.
        tokio::time::sleep(t.elapsed() * 2).await;
        for (d, e) in &failures {
            tracing::warn!(digest = %d, error = %e, "garbage blob forgotten but its bytes could not be deleted; the scrub will find them");
        }
        self.inner.meta.gc_bytes_deleted(&ids).await?;
        Ok(failures.len() as u64)
    }

    /// Collect garbage once, with the configured grace period (or `grace`).
    pub async fn collect_garbage(&self, dry_run: bool, grace: Option<Duration>, progress: &(dyn Fn(GcProgress) + Sync)) -> Result<GcReport> {
        let started = std::time::Instant::now();
        let result = self.collect_garbage_once(dry_run, grace, progress).await;
        if !dry_run {
            self.inner.gc_stats.record(result.as_ref().ok(), started.elapsed());
            if let Ok(r) = &result
                && (r.blobs_deleted > 0 || r.untagged_deleted > 0)
            {
                // One `gc` event per collection that deleted something, for the audit log and
                // the webhooks that ask for it.
                self.record_offpath("gc", None, None, None, Some(r.bytes_freed));
            }
        }
        result
    }

    async fn collect_garbage_once(&self, dry_run: bool, grace: Option<Duration>, progress: &(dyn Fn(GcProgress) + Sync)) -> Result<GcReport> {
        let cut = cutoff(grace.unwrap_or(self.inner.config.gc_grace));
        let meta = &self.inner.meta;
        let mut report = GcReport { dry_run, ..GcReport::default() };
        // 0. Untagged manifests, by policy (their blobs go in a later collection).
        self.collect_untagged(now_ms(), dry_run, &mut report, progress).await?;
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
            for chunk in page.chunks(meta.gc_rows_per_transaction()) {
                let t = std::time::Instant::now();
                report.links_removed += meta.gc_unlink(chunk, cut).await?;
                tokio::time::sleep(meta.gc_pause(t.elapsed())).await;
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
            // The page's bytes are deleted together (many in flight), after its transactions;
            // also when one of them fails, so that nothing stays pending.
            let mut forgotten_page = Vec::new();
            let mut failed = None;
            for chunk in digests.chunks(meta.gc_rows_per_transaction()) {
                let t = std::time::Instant::now();
                let result = meta.gc_forget_blobs(chunk, cut).await;
                tokio::time::sleep(meta.gc_pause(t.elapsed())).await;
                match result {
                    Ok(forgotten) => {
                        report.blobs_deleted += forgotten.len() as u64;
                        report.bytes_freed += forgotten.iter().map(|(_, d)| sizes.get(d).copied().unwrap_or(0)).sum::<u64>();
                        forgotten_page.extend(forgotten);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            report.storage_errors += self.delete_bytes(forgotten_page).await?;
            if let Some(e) = failed {
                return Err(e.into());
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
        if report.untagged_deleted > 0 || report.links_removed > 0 || report.blobs_deleted > 0 {
            tracing::info!(
                untagged_manifests = report.untagged_deleted,
                links = report.links_removed,
                blobs = report.blobs_deleted,
                bytes = report.bytes_freed,
                storage_errors = report.storage_errors,
                "garbage collected"
            );
        }
        Ok(report)
    }

    /// Phase 0, with `gc_untagged`: delete the untagged manifests that lost what kept them
    /// before `now_ms` minus it (dry: count what would go), each in its own transaction with
    /// one delete event per manifest. A deletion that fails is logged and the run goes on.
    async fn collect_untagged(&self, now_ms: i64, dry_run: bool, report: &mut GcReport, progress: &(dyn Fn(GcProgress) + Sync)) -> Result<()> {
        // Events of one collection share a request id, so the audit log groups them.
        let ctx = RequestContext { request_id: format!("gc-{}", uuid::Uuid::new_v4().simple()), ..RequestContext::default() };
        REQUEST.scope(ctx, self.collect_untagged_scoped(now_ms, dry_run, report, progress)).await
    }

    async fn collect_untagged_scoped(&self, now_ms: i64, dry_run: bool, report: &mut GcReport, progress: &(dyn Fn(GcProgress) + Sync)) -> Result<()> {
        let Some(older_than) = self.inner.config.gc_untagged else { return Ok(()) };
        let cut = now_ms.saturating_sub(millis(older_than));
        let meta = &self.inner.meta;
        // A dry run counts a manifest once, however many candidates would take it.
        let mut counted: HashSet<(i64, Digest)> = HashSet::new();
        let mut after = None;
        loop {
            let page = meta.gc_untagged_candidates(cut, after.as_ref(), BATCH).await?;
            for c in &page {
                let Ok(repo) = c.repository.parse::<RepoName>() else {
                    tracing::warn!(repository = %c.repository, "garbage collection skips a repository whose stored name is invalid");
                    continue;
                };
                if dry_run {
                    if let UntaggedOutcome::Deleted(set) = meta.gc_untagged_plan(&repo, &c.digest, cut).await? {
                        for m in set {
                            if counted.insert((c.repository_id, m.digest.clone())) {
                                tracing::info!(repository = %repo, digest = %m.digest, media_type = %m.media_type, role = role_name(m.role), "gc (dry run): untagged manifest would be deleted");
                                report.untagged_deleted += 1;
                            }
                        }
                    }
                } else {
                    report.untagged_deleted += self.delete_untagged_garbage(&repo, &c.digest, cut, older_than).await;
                }
            }
            progress(GcProgress::Untagged { deleted: report.untagged_deleted });
            match page.last() {
                Some(last) if page.len() == BATCH as usize => after = Some(last.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Delete one untagged manifest (with what goes with it) if it is still garbage. Returns
    /// how many manifests went.
    async fn delete_untagged_garbage(&self, repo: &RepoName, digest: &Digest, cut: i64, older_than: Duration) -> u64 {
        let recorded = Mutex::new(Vec::new());
        let event = |m: &DeletedManifest| {
            let e = self.deleted_manifest_event(repo, m);
            recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e.clone());
            e
        };
        let outcome = self.inner.meta.gc_delete_untagged(repo, digest, cut, &event).await;
        self.inner.cache.invalidate(repo);
        match outcome {
            Ok(UntaggedOutcome::Deleted(gone)) => {
                self.committed(&recorded.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
                let older_than = crate::retention::human_duration(older_than);
                for m in &gone {
                    tracing::info!(repository = %repo, digest = %m.digest, media_type = %m.media_type, role = role_name(m.role), older_than = %older_than, "gc: untagged manifest deleted");
                }
                gone.len() as u64
            }
            Ok(UntaggedOutcome::Kept(why)) => {
                tracing::debug!(repository = %repo, digest = %digest, reason = %why, "gc: untagged manifest kept");
                0
            }
            Err(e) => {
                tracing::warn!(repository = %repo, digest = %digest, error = %e, "garbage collection could not delete an untagged manifest; the run goes on");
                0
            }
        }
    }

    /// Start one collection in a task of its own (the admin API's `POST /admin/gc`), unless
    /// one is running in this process already (`None`). It holds the process's [`GcGuard`] and
    /// runs to its end even if whoever started it stops waiting (a client that hangs up), so
    /// it never leaves tombstones pending for the next collection to finish.
    pub fn start_garbage_collection(&self, dry_run: bool, grace: Option<Duration>) -> Option<tokio::task::JoinHandle<Result<GcReport>>> {
        let running = GcGuard::try_acquire()?;
        let registry = self.clone();
        Some(tokio::spawn(async move {
            let _running = running;
            registry.collect_garbage(dry_run, grace, &|_| {}).await
        }))
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
                        let Some(_running) = GcGuard::try_acquire() else {
                            tracing::info!("background garbage collection skipped: a collection is already running in this process");
                            continue;
                        };
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

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Root => "untagged",
        Role::Referrer => "referrer",
        Role::Child => "child",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use meta::{EventFilter, MetaStore};
    use oci::Reference;

    use super::*;
    use crate::{RegistryConfig, once};

    const DAY: i64 = 86_400_000;
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    async fn registry(dir: &Path, untagged: Option<Duration>) -> Registry {
        let meta = MetaStore::open_sqlite(&dir.join("meta.db"), false).await.expect("database");
        let blobs = Arc::new(storage::fs::FsStore::open(dir.join("store"), false).expect("storage"));
        Registry::new(meta, blobs, RegistryConfig { gc_untagged: untagged, ..RegistryConfig::default() })
    }

    struct Fixture {
        r: Registry,
        repo: RepoName,
        config: Digest,
    }

    impl Fixture {
        async fn blob(&self, content: &[u8]) -> Digest {
            let d = Digest::sha256_of(content);
            self.r.upload_whole(&self.repo, &d, once(Bytes::copy_from_slice(content))).await.expect("push");
            d
        }

        /// An image manifest with its own layer, optionally a referrer of `subject`, pushed
        /// under `tag` or by digest. Returns its digest and size.
        async fn image(&self, name: &str, subject: Option<&(Digest, usize)>, tag: Option<&str>) -> (Digest, usize) {
            let layer = self.blob(format!("layer of {name}").as_bytes()).await;
            let subject = subject.map_or(String::new(), |(d, n)| format!(r#","subject":{{"mediaType":"{MANIFEST}","digest":"{d}","size":{n}}}"#));
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]{subject}}}"#,
                self.config
            );
            self.put(MANIFEST, body, tag).await
        }

        async fn index(&self, children: &[&(Digest, usize)], tag: Option<&str>) -> (Digest, usize) {
            let list: Vec<String> = children.iter().map(|(d, n)| format!(r#"{{"mediaType":"{MANIFEST}","digest":"{d}","size":{n}}}"#)).collect();
            self.put(INDEX, format!(r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#, list.join(",")), tag).await
        }

        async fn put(&self, media_type: &str, body: String, tag: Option<&str>) -> (Digest, usize) {
            let d = Digest::sha256_of(body.as_bytes());
            let reference = tag.map_or_else(|| Reference::Digest(d.clone()), |t| Reference::Tag(t.parse().expect("tag")));
            let n = body.len();
            self.r.manifest_put(&self.repo, &reference, Some(media_type), Bytes::from(body), &[]).await.expect("manifest");
            (d, n)
        }

        async fn present(&self, d: &Digest) -> bool {
            self.r.inner.meta.manifest_by_digest(&self.repo, d).await.expect("q").is_some()
        }
    }

    async fn untagged_now(r: &Registry, now: i64, dry_run: bool) -> GcReport {
        let mut report = GcReport { dry_run, ..GcReport::default() };
        r.collect_untagged(now, dry_run, &mut report, &|_| {}).await.expect("gc");
        report
    }

    #[tokio::test]
    async fn untagged_manifests_are_collected_by_policy_and_what_keeps_one_is_respected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let week = Duration::from_secs(7 * 86_400);
        // Both registries share the database: one with the policy off, one with it on.
        let off = registry(dir.path(), None).await;
        let on = registry(dir.path(), Some(week)).await;
        let repo: RepoName = "gc/app".parse().expect("name");
        let f = Fixture { r: on.clone(), repo: repo.clone(), config: Digest::sha256_of(b"{}") };
        f.blob(b"{}").await;
        let old = f.image("old", None, None).await;
        let tagged = f.image("tagged", None, Some("v1")).await;
        let child = f.image("child", None, None).await;
        let index = f.index(&[&child], Some("multi")).await;
        let live_sig = f.image("live-sig", Some(&tagged), None).await;
        let doomed = f.image("doomed", None, Some("doomed")).await;
        let dead_sig = f.image("dead-sig", Some(&doomed), None).await;
        let loose_child = f.image("loose-child", None, None).await;
        let loose_index = f.index(&[&loose_child], None).await;
        on.manifest_delete(&repo, &Reference::Digest(doomed.0.clone())).await.expect("delete");
        // A clock 30 days on: every manifest above is older than the week.
        let later = now_ms() + 30 * DAY;

        let r = untagged_now(&off, later, false).await;
        assert_eq!(r.untagged_deleted, 0, "off by default: nothing goes");
        let r = untagged_now(&on, now_ms(), false).await;
        assert_eq!(r.untagged_deleted, 0, "all of them are younger than the week");
        let dry = untagged_now(&on, later, true).await;
        assert_eq!(dry.untagged_deleted, 4, "old, dead-sig, loose-index and its child: {dry:?}");
        for d in [&old, &dead_sig, &loose_index, &loose_child] {
            assert!(f.present(&d.0).await, "a dry run deletes nothing");
        }

        let r = untagged_now(&on, later, false).await;
        assert_eq!(r.untagged_deleted, 4, "{r:?}");
        for d in [&old, &dead_sig, &loose_index, &loose_child] {
            assert!(!f.present(&d.0).await, "{} is collected", d.0);
        }
        for d in [&tagged, &child, &index, &live_sig] {
            assert!(f.present(&d.0).await, "{} stays: tagged, in a tagged index, or a referrer of a live subject", d.0);
        }
        assert_eq!(untagged_now(&on, later, false).await.untagged_deleted, 0, "nothing left to collect");
        let filter = EventFilter { repository: Some("gc/app".into()), action: Some("delete".into()), limit: 100, ..Default::default() };
        let events = on.inner.meta.events(&filter).await.expect("events");
        let gc_events: Vec<_> = events.iter().filter(|e| e.request_id.as_deref().is_some_and(|id| id.starts_with("gc-"))).collect();
        assert_eq!(gc_events.len(), 4, "one delete event per manifest, with the collection's request id: {events:?}");
        assert!(gc_events.iter().all(|e| e.request_id == gc_events[0].request_id), "one request id per collection");

        // The blobs go in a later collection, after the grace period, as after a DELETE.
        let old_layer = Digest::sha256_of(b"layer of old");
        tokio::time::sleep(Duration::from_millis(3)).await;
        let r = on.collect_garbage(false, Some(Duration::ZERO), &|_| {}).await.expect("gc");
        assert_eq!(r.untagged_deleted, 0, "the real clock: what is left is young");
        assert!(r.blobs_deleted >= 1, "{r:?}");
        assert!(on.blobs().stat(&old_layer).await.expect("stat").is_none(), "the collected manifest's layer is gone");
        assert!(on.blobs().stat(&Digest::sha256_of(b"layer of tagged")).await.expect("stat").is_some());
    }
}
