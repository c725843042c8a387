//! The scrub (`berth fsck`): blob storage checked against the metadata database. Every blob the
//! database records is looked for in storage and its size compared; a share of them (or all)
//! is read back and re-hashed; every stored blob that no row records (an orphan: left by a
//! crash between a collection's database delete and its storage delete, or by a push that
//! stored its bytes and then failed to record them) is reported and, on request, deleted.
//!
//! Safe next to running servers. Reading changes nothing, and every finding a concurrent push
//! or collection could explain is checked again before it is reported: a blob recorded but
//! absent may just have been collected, an unrecorded one may just have been recorded. Only
//! orphans are ever deleted, only when older than a safety margin (a younger one may be a push
//! about to record it), and only under a claim of their digest in the database
//! (`meta::fsck`), which a racing push cannot slip past. Damaged blobs are reported with the
//! images they break and never changed: the registry holds no other copy to repair them from.
//!
//! Knows nothing about flags, output formats or the terminal: the binary renders the report.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use meta::{BlobUse, MetaStore};
use oci::{Digest, Hasher};
use storage::{BlobStore, StorageError};

use crate::{Error, Registry, Result};

/// Orphans younger than this are left alone: a push stores its bytes a moment before it
/// records them, and a large upload's commit (or a sha512 re-read) can take a while.
pub const ORPHAN_MIN_AGE: Duration = Duration::from_secs(3600);
/// How often the caller hears how far the check is.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What to check and whether to repair.
#[derive(Debug, Clone)]
pub struct FsckOptions {
    /// Share of the recorded blobs, in percent, whose bytes are read back and re-hashed (a
    /// random sample; 100 re-hashes all). Every recorded blob's presence and size are checked
    /// regardless.
    pub rehash_percent: f64,
    /// Blobs checked concurrently.
    pub jobs: usize,
    /// Delete orphans older than `orphan_min_age`.
    pub repair: bool,
    pub orphan_min_age: Duration,
}

/// Where a scrub is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsckPhase {
    /// Listing storage and reading the database's blob rows.
    Listing,
    /// Checking blobs (`done` of `total`; `bytes` of `bytes_total` re-hashed).
    Checking,
    /// Deleting orphans (`done` of `total`).
    Repairing,
}

/// Progress, reported about every second while checking.
#[derive(Debug, Clone, Copy)]
pub struct FsckProgress {
    pub phase: FsckPhase,
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
    /// Since the phase started.
    pub elapsed: Duration,
}

/// What is wrong with a recorded blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Damage {
    /// Its bytes hash to another digest.
    Corrupt { actual: Digest },
    /// Recorded, but storage does not hold it.
    Missing,
    /// Storage holds another number of bytes than the database recorded.
    WrongSize { stored: u64 },
    /// Storage failed to read it.
    Unreadable { error: String },
}

/// A recorded blob whose bytes are gone or wrong, and what it breaks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DamagedBlob {
    pub digest: Digest,
    /// The size the database recorded.
    pub size: u64,
    #[serde(flatten)]
    pub damage: Damage,
    /// The images (manifests and their tags, indexes holding them) and repositories that use it.
    pub used_by: Vec<BlobUse>,
}

/// What became of an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanState {
    /// Old enough to be garbage, and still stored (no repair asked for, or it was refused).
    Found,
    /// Younger than the safety margin: maybe a push about to record it. Left alone, and not a
    /// problem (a later scrub sees it again if it stays unrecorded).
    Young,
    /// The storage driver cannot tell its age: left alone.
    AgeUnknown,
    Removed,
    /// Deleting it failed (see `error`).
    Failed,
}

/// A stored blob that no database row records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrphanBlob {
    pub digest: Digest,
    pub size: u64,
    pub age_seconds: Option<u64>,
    pub state: OrphanState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a scrub.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Blobs the database records.
    pub recorded: u64,
    /// Blobs storage holds.
    pub stored: u64,
    /// Recorded blobs whose presence and size were checked.
    pub checked: u64,
    /// Recorded blobs read back and re-hashed, and their bytes.
    pub rehashed: u64,
    pub rehashed_bytes: u64,
    /// How long checking took (the re-hash throughput's window).
    pub check_seconds: f64,
    /// Recorded blobs a garbage collection removed while the scrub ran (not problems).
    pub collected_meanwhile: u64,
    pub damaged: Vec<DamagedBlob>,
    pub orphans: Vec<OrphanBlob>,
    /// Why orphans were not removed although a repair was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_refused: Option<String>,
}

impl FsckReport {
    /// Damaged blobs of the kind `which` selects.
    pub fn damaged_count(&self, which: impl Fn(&Damage) -> bool) -> usize {
        self.damaged.iter().filter(|d| which(&d.damage)).count()
    }

    pub fn orphan_count(&self, state: OrphanState) -> usize {
        self.orphans.iter().filter(|o| o.state == state).count()
    }

    /// Problems left after the scrub: every damaged blob, and every orphan old enough to be
    /// garbage that is still stored. Zero means clean (or everything repairable repaired).
    pub fn problems(&self) -> usize {
        self.damaged.len() + self.orphans.iter().filter(|o| matches!(o.state, OrphanState::Found | OrphanState::AgeUnknown | OrphanState::Failed)).count()
    }
}

/// One blob to look at.
enum Item {
    Recorded { digest: Digest, size: u64, rehash: bool },
    Unrecorded { digest: Digest },
}

/// What looking at one blob found.
enum Finding {
    Fine,
    Damaged { digest: Digest, size: u64, damage: Damage },
    Orphan { digest: Digest, size: u64, modified: Option<SystemTime> },
    /// A recorded blob collected meanwhile.
    Collected,
    /// An unrecorded one that was recorded (a push finished) or removed meanwhile.
    Settled,
}

/// State shared by the check workers.
struct Work {
    items: Vec<Item>,
    next: AtomicUsize,
    done: AtomicU64,
    /// Bytes re-hashed so far, including blobs still being read.
    bytes: AtomicU64,
    rehashed: AtomicU64,
    findings: Mutex<Vec<Finding>>,
}

impl Registry {
    /// Scrub blob storage against the database (see the module comment).
    pub async fn fsck(&self, opts: &FsckOptions, progress: &(dyn Fn(FsckProgress) + Sync)) -> Result<FsckReport> {
        let meta = &self.inner.meta;
        let blobs = &self.inner.blobs;
        let started = Instant::now();
        progress(FsckProgress { phase: FsckPhase::Listing, done: 0, total: 0, bytes: 0, bytes_total: 0, elapsed: Duration::ZERO });
        // Storage first, then the database: a blob pushed in between is recorded but maybe not
        // listed, and recorded blobs are looked up one by one anyway; listed the other way
        // round, it would look like an orphan until checked again.
        let mut stored = blobs.list().await?;
        stored.sort();
        stored.dedup();
        let recorded = meta.all_blobs().await?;
        let known: HashSet<&Digest> = recorded.iter().map(|(d, _)| d).collect();
        let chosen = sample(&recorded, opts.rehash_percent);
        let mut bytes_total = 0;
        let mut items: Vec<Item> = recorded
            .iter()
            .zip(chosen)
            .map(|((digest, size), rehash)| {
                if rehash {
                    bytes_total += size;
                }
                Item::Recorded { digest: digest.clone(), size: *size, rehash }
            })
            .collect();
        items.extend(stored.iter().filter(|d| !known.contains(d)).map(|d| Item::Unrecorded { digest: d.clone() }));
        let mut report = FsckReport { recorded: recorded.len() as u64, stored: stored.len() as u64, ..FsckReport::default() };
        drop(known);
        drop(recorded);

        let total = items.len() as u64;
        let work = Arc::new(Work { items, next: AtomicUsize::new(0), done: AtomicU64::new(0), bytes: AtomicU64::new(0), rehashed: AtomicU64::new(0), findings: Mutex::default() });
        let checking = Instant::now();
        let snapshot = |work: &Work| FsckProgress {
            phase: FsckPhase::Checking,
            done: work.done.load(Ordering::Relaxed),
            total,
            bytes: work.bytes.load(Ordering::Relaxed),
            bytes_total,
            elapsed: checking.elapsed(),
        };
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..opts.jobs.max(1) {
            let (work, blobs, meta) = (work.clone(), blobs.clone(), meta.clone());
            // Separate tasks, so hashing spreads over the runtime's threads.
            workers.spawn(async move { worker(&work, blobs.as_ref(), &meta).await });
        }
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                joined = workers.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        workers.abort_all();
                        return Err(e);
                    }
                    Some(Err(e)) => {
                        workers.abort_all();
                        return Err(Error::Internal(format!("fsck worker failed: {e}")));
                    }
                },
                _ = tick.tick() => progress(snapshot(&work)),
            }
        }
        progress(snapshot(&work));
        report.check_seconds = checking.elapsed().as_secs_f64();
        report.rehashed = work.rehashed.load(Ordering::Relaxed);
        report.rehashed_bytes = work.bytes.load(Ordering::Relaxed);
        let findings = std::mem::take(&mut *work.findings.lock().unwrap_or_else(PoisonError::into_inner));
        let now = SystemTime::now();
        for f in findings {
            match f {
                Finding::Fine => report.checked += 1,
                Finding::Collected => report.collected_meanwhile += 1,
                Finding::Settled => {}
                Finding::Damaged { digest, size, damage } => {
                    // Collected while we looked: nothing is broken any more.
                    if meta.blob_anywhere(&digest).await?.is_none() {
                        report.collected_meanwhile += 1;
                        continue;
                    }
                    report.checked += 1;
                    let used_by = meta.blob_users(&digest).await?;
                    report.damaged.push(DamagedBlob { digest, size, damage, used_by });
                }
                Finding::Orphan { digest, size, modified } => {
                    let age = modified.map(|m| now.duration_since(m).unwrap_or(Duration::ZERO));
                    let state = match age {
                        None => OrphanState::AgeUnknown,
                        Some(a) if a < opts.orphan_min_age => OrphanState::Young,
                        Some(_) => OrphanState::Found,
                    };
                    report.orphans.push(OrphanBlob { digest, size, age_seconds: age.map(|a| a.as_secs()), state, error: None });
                }
            }
        }
        report.damaged.sort_by(|a, b| a.digest.cmp(&b.digest));
        report.orphans.sort_by(|a, b| a.digest.cmp(&b.digest));
        self.settle_orphans(&mut report, opts, progress).await?;
        tracing::info!(
            checked = report.checked,
            rehashed = report.rehashed,
            damaged = report.damaged.len(),
            orphans = report.orphans.len(),
            seconds = started.elapsed().as_secs_f64(),
            "fsck finished"
        );
        Ok(report)
    }

    /// Look at each old orphan once more (it may have been recorded or deleted since it was
    /// seen) and, when repairing, delete it under a claim of its digest.
    async fn settle_orphans(&self, report: &mut FsckReport, opts: &FsckOptions, progress: &(dyn Fn(FsckProgress) + Sync)) -> Result<()> {
        let old = report.orphans.iter().filter(|o| o.state == OrphanState::Found).count();
        let mut repair = opts.repair;
        // A database that does not belong to this storage (a wrong configuration, a restored
        // backup of something else) makes every blob look orphaned: refuse to act on that.
        if repair && old > 0 && old * 2 > report.stored as usize {
            report.repair_refused = Some(format!(
                "{old} of the {} stored blobs are recorded nowhere: more than half, as if the database did not belong to this storage \
                 (check the configuration and data directory); nothing was deleted",
                report.stored
            ));
            repair = false;
        }
        let started = Instant::now();
        let mut done = 0;
        let mut keep = Vec::with_capacity(report.orphans.len());
        for mut o in std::mem::take(&mut report.orphans) {
            if o.state != OrphanState::Found {
                keep.push(o);
                continue;
            }
            progress(FsckProgress { phase: FsckPhase::Repairing, done, total: old as u64, bytes: 0, bytes_total: 0, elapsed: started.elapsed() });
            done += 1;
            if let Some(state) = self.settle_orphan(&mut o, repair, opts.orphan_min_age).await? {
                o.state = state;
                keep.push(o);
            }
        }
        report.orphans = keep;
        Ok(())
    }

    /// The state `o` ends in, or `None` when it turned out not to be an orphan after all.
    async fn settle_orphan(&self, o: &mut OrphanBlob, repair: bool, min_age: Duration) -> Result<Option<OrphanState>> {
        let (meta, blobs) = (&self.inner.meta, &self.inner.blobs);
        if !repair {
            if meta.blob_anywhere(&o.digest).await?.is_some() || matches!(blobs.inspect(&o.digest).await, Ok(None)) {
                return Ok(None);
            }
            return Ok(Some(OrphanState::Found));
        }
        let Some(claim) = meta.claim_unrecorded(&o.digest).await? else {
            return Ok(None);
        };
        // Looked at again under the claim: a push may have stored a fresh copy since the scan
        // (it will fail to record it once the claim commits, but a fresh copy is left alone).
        let outcome = match blobs.inspect(&o.digest).await {
            Ok(None) => None,
            Ok(Some(info)) if info.modified.is_none_or(|m| SystemTime::now().duration_since(m).unwrap_or(Duration::ZERO) < min_age) => Some(OrphanState::Young),
            Ok(Some(_)) => match blobs.delete(&o.digest).await {
                Ok(()) => {
                    claim.commit().await?;
                    tracing::info!(digest = %o.digest, size = o.size, "fsck removed an orphaned blob");
                    return Ok(Some(OrphanState::Removed));
                }
                Err(e) => {
                    o.error = Some(e.to_string());
                    Some(OrphanState::Failed)
                }
            },
            Err(e) => {
                o.error = Some(e.to_string());
                Some(OrphanState::Failed)
            }
        };
        claim.release().await?;
        Ok(outcome)
    }
}

/// Which of `recorded` to re-hash: `percent` of them, chosen at random (a new choice each run,
/// so repeated sampled scrubs cover everything over time).
fn sample(recorded: &[(Digest, u64)], percent: f64) -> Vec<bool> {
    let n = recorded.len();
    if percent >= 100.0 {
        return vec![true; n];
    }
    let mut chosen = vec![false; n];
    if percent.is_nan() || percent <= 0.0 {
        return chosen;
    }
    let k = ((n as f64 * percent / 100.0).ceil() as usize).min(n);
    let seed = RandomState::new();
    let mut order: Vec<(u64, usize)> = recorded.iter().enumerate().map(|(i, (d, _))| (seed.hash_one(d.as_str()), i)).collect();
    order.sort_unstable();
    for &(_, i) in &order[..k] {
        chosen[i] = true;
    }
    chosen
}

async fn worker(work: &Work, blobs: &dyn BlobStore, meta: &MetaStore) -> Result<()> {
    loop {
        let i = work.next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = work.items.get(i) else { return Ok(()) };
        let finding = match item {
            Item::Recorded { digest, size, rehash } => check_recorded(work, blobs, meta, digest, *size, *rehash).await?,
            Item::Unrecorded { digest } => check_unrecorded(blobs, meta, digest).await?,
        };
        work.findings.lock().unwrap_or_else(PoisonError::into_inner).push(finding);
        work.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A storage failure that says nothing about the blob (the service is unreachable) ends the
/// scrub; any other is a finding about this blob.
fn unreadable(e: StorageError) -> Result<Damage> {
    match e {
        StorageError::Unavailable(m) => Err(Error::Unavailable(format!("storage: {m}"))),
        other => Ok(Damage::Unreadable { error: other.to_string() }),
    }
}

async fn check_recorded(work: &Work, blobs: &dyn BlobStore, meta: &MetaStore, digest: &Digest, size: u64, rehash: bool) -> Result<Finding> {
    let damaged = |damage| Ok(Finding::Damaged { digest: digest.clone(), size, damage });
    match blobs.stat(digest).await {
        Ok(None) => return absent(meta, digest, size).await,
        Ok(Some(stored)) if stored != size => return damaged(Damage::WrongSize { stored }),
        Ok(Some(_)) => {}
        Err(e) => return damaged(unreadable(e)?),
    }
    if !rehash {
        return Ok(Finding::Fine);
    }
    let mut stream = match blobs.get(digest, None).await {
        Ok(s) => s,
        Err(StorageError::NotFound) => return absent(meta, digest, size).await,
        Err(e) => return damaged(unreadable(e)?),
    };
    let mut hasher = Hasher::new(digest.algorithm());
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return damaged(Damage::Unreadable { error: format!("reading: {e}") }),
        };
        hasher.update(&chunk);
        read += chunk.len() as u64;
        work.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    work.rehashed.fetch_add(1, Ordering::Relaxed);
    let actual = hasher.finish();
    if actual != *digest {
        return damaged(Damage::Corrupt { actual });
    }
    if read != size {
        // The right bytes, but not as many as stat said: replaced while we read. Say so.
        return damaged(Damage::WrongSize { stored: read });
    }
    Ok(Finding::Fine)
}

/// A recorded blob storage does not hold: collected since the database was read, or missing.
async fn absent(meta: &MetaStore, digest: &Digest, size: u64) -> Result<Finding> {
    if meta.blob_anywhere(digest).await?.is_some() {
        return Ok(Finding::Damaged { digest: digest.clone(), size, damage: Damage::Missing });
    }
    Ok(Finding::Collected)
}

async fn check_unrecorded(blobs: &dyn BlobStore, meta: &MetaStore, digest: &Digest) -> Result<Finding> {
    // Recorded since the database was read: a push finished.
    if meta.blob_anywhere(digest).await?.is_some() {
        return Ok(Finding::Settled);
    }
    match blobs.inspect(digest).await {
        Ok(None) => Ok(Finding::Settled),
        Ok(Some(info)) => Ok(Finding::Orphan { digest: digest.clone(), size: info.size, modified: info.modified }),
        Err(StorageError::Unavailable(m)) => Err(Error::Unavailable(format!("storage: {m}"))),
        // Unknown size and age: reported, never deleted.
        Err(e) => {
            tracing::warn!(%digest, error = %e, "fsck could not inspect an unrecorded blob");
            Ok(Finding::Orphan { digest: digest.clone(), size: 0, modified: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use oci::{Reference, RepoName};

    use super::*;
    use crate::{RegistryConfig, once};

    async fn registry(dir: &Path) -> Registry {
        let meta = MetaStore::open_sqlite(&dir.join("meta.db"), false).await.expect("database");
        let blobs = Arc::new(storage::fs::FsStore::open(dir.join("store"), false).expect("storage"));
        Registry::new(meta, blobs, RegistryConfig::default())
    }

    fn file(dir: &Path, d: &Digest) -> PathBuf {
        dir.join("store/blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
    }

    fn opts(percent: f64, repair: bool) -> FsckOptions {
        FsckOptions { rehash_percent: percent, jobs: 3, repair, orphan_min_age: ORPHAN_MIN_AGE }
    }

    /// Stored by hand, as a crash would leave it, written `age` ago.
    fn orphan(dir: &Path, content: &[u8], age: Duration) -> Digest {
        let d = Digest::sha256_of(content);
        let path = file(dir, &d);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        let f = std::fs::File::options().write(true).open(&path).expect("open");
        f.set_modified(SystemTime::now() - age).expect("mtime");
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsck_reports_each_kind_of_damage_with_its_images_and_removes_only_old_orphans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        let app: RepoName = "team/app".parse().expect("name");
        let push = |content: &'static [u8]| {
            let r = r.clone();
            let app = app.clone();
            async move {
                let d = Digest::sha256_of(content);
                r.upload_whole(&app, &d, once(Bytes::from_static(content))).await.expect("push");
                d
            }
        };
        let config = push(br#"{"architecture":"amd64","os":"linux"}"#).await;
        let corrupt = push(b"a layer whose bytes will rot").await;
        let missing = push(b"a layer that will vanish").await;
        let short = push(b"a layer that will be cut short").await;
        let fine = push(b"a layer that stays whole").await;
        let layers: Vec<String> = [&corrupt, &missing, &short, &fine].iter().map(|d| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":1}}"#)).collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{}]}}"#,
            layers.join(",")
        );
        let put = r
            .manifest_put(&app, &Reference::Tag("v1".parse().expect("tag")), Some("application/vnd.oci.image.manifest.v1+json"), Bytes::from(manifest), &[])
            .await
            .expect("manifest");
        let none = |_| {};

        let clean = r.fsck(&opts(100.0, false), &none).await.expect("fsck");
        assert_eq!((clean.problems(), clean.recorded, clean.stored, clean.checked, clean.rehashed), (0, 5, 5, 5, 5), "{clean:?}");

        let mut bytes = std::fs::read(file(dir.path(), &corrupt)).expect("read");
        bytes[3] ^= 0x20;
        std::fs::write(file(dir.path(), &corrupt), bytes).expect("rot");
        std::fs::remove_file(file(dir.path(), &missing)).expect("remove");
        std::fs::File::options().write(true).open(file(dir.path(), &short)).and_then(|f| f.set_len(5)).expect("truncate");
        let old = orphan(dir.path(), b"left by a crash", Duration::from_secs(3 * 3600));
        let young = orphan(dir.path(), b"a push about to record it", Duration::from_secs(60));

        let found = r.fsck(&opts(100.0, false), &none).await.expect("fsck");
        assert_eq!(found.problems(), 4, "{found:#?}");
        let by = |d: &Digest| found.damaged.iter().find(|x| x.digest == *d).unwrap_or_else(|| panic!("{d} not reported: {found:#?}"));
        assert!(matches!(&by(&corrupt).damage, Damage::Corrupt { actual } if *actual != corrupt));
        assert_eq!(by(&missing).damage, Damage::Missing);
        assert_eq!(by(&short).damage, Damage::WrongSize { stored: 5 });
        let uses = &by(&corrupt).used_by;
        assert_eq!(uses.len(), 1, "{uses:?}");
        assert_eq!((uses[0].repository.as_str(), uses[0].manifest.as_ref(), uses[0].tags.as_slice()), ("team/app", Some(&put.digest), &["v1".to_owned()][..]));
        let state = |d: &Digest| found.orphans.iter().find(|o| o.digest == *d).map(|o| o.state);
        assert_eq!((state(&old), state(&young)), (Some(OrphanState::Found), Some(OrphanState::Young)));
        assert!(file(dir.path(), &old).exists(), "nothing is deleted without repair");

        // Presence and size only: the rotten bytes go unnoticed, the rest does not.
        let quick = r.fsck(&opts(0.0, false), &none).await.expect("fsck");
        assert_eq!((quick.rehashed, quick.damaged.len(), quick.orphans.len()), (0, 2, 2), "{quick:#?}");

        let repaired = r.fsck(&opts(100.0, true), &none).await.expect("fsck");
        assert_eq!(repaired.problems(), 3, "the damaged blobs stay: {repaired:#?}");
        let state = |d: &Digest| repaired.orphans.iter().find(|o| o.digest == *d).map(|o| o.state);
        assert_eq!((state(&old), state(&young)), (Some(OrphanState::Removed), Some(OrphanState::Young)));
        assert!(!file(dir.path(), &old).exists());
        assert!(file(dir.path(), &young).exists());
        assert!(file(dir.path(), &fine).exists() && file(dir.path(), &corrupt).exists(), "recorded blobs are never deleted");
        // The digest is free again: pushing it records it.
        r.upload_whole(&app, &old, once(Bytes::from_static(b"left by a crash"))).await.expect("push the removed orphan's bytes");
        assert!(file(dir.path(), &old).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repair_refuses_when_most_stored_blobs_are_recorded_nowhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        let a = orphan(dir.path(), b"one", Duration::from_secs(7200));
        let b = orphan(dir.path(), b"two", Duration::from_secs(7200));
        let report = r.fsck(&opts(10.0, true), &|_| {}).await.expect("fsck");
        assert!(report.repair_refused.is_some(), "{report:#?}");
        assert_eq!(report.orphan_count(OrphanState::Found), 2);
        assert_eq!(report.problems(), 2);
        assert!(file(dir.path(), &a).exists() && file(dir.path(), &b).exists());
    }

    #[test]
    fn sample_takes_the_share_asked_for() {
        let recorded: Vec<(Digest, u64)> = (0..1000u32).map(|i| (Digest::sha256_of(&i.to_be_bytes()), 1)).collect();
        let count = |p| sample(&recorded, p).iter().filter(|&&b| b).count();
        assert_eq!((count(0.0), count(10.0), count(100.0), count(0.01), count(33.3)), (0, 100, 1000, 1, 333));
        assert_ne!(sample(&recorded, 10.0), sample(&recorded, 10.0), "a new choice each run");
    }
}
