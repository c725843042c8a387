//! An in-memory cache of manifests by (repository, reference).
//!
//! Invalidation rule: every write to a repository's manifests or tags bumps a global generation
//! after it commits and drops that repository's entries. A reader notes the generation before
//! its database read and stores the result only if the generation is unchanged when it is done,
//! so a read that raced a write can never park a stale answer in the cache. The rule holds for
//! one process; nodes sharing a database must not enable the cache without a cross-node signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meta::StoredManifest;
use oci::RepoName;

pub(crate) struct ManifestCache {
    budget: usize,
    generation: AtomicU64,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    repos: HashMap<RepoName, HashMap<String, Arc<StoredManifest>>>,
    bytes: usize,
}

impl ManifestCache {
    pub(crate) fn new(budget: usize) -> Self {
        ManifestCache { budget, generation: AtomicU64::new(0), inner: Mutex::default() }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, repo: &RepoName, reference: &str) -> Option<Arc<StoredManifest>> {
        if self.budget == 0 {
            return None;
        }
        let entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.repos.get(repo)?.get(reference).cloned()
    }

    /// Store `m` if nothing was written since `generation` was read.
    pub(crate) fn put(&self, generation: u64, repo: &RepoName, reference: &str, m: Arc<StoredManifest>) {
        let size = m.content.len() + reference.len() + 64;
        if self.budget == 0 || size > self.budget / 16 {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.bytes + size > self.budget {
            // Crude but bounded: start over rather than track recency on every hit.
            entries.repos.clear();
            entries.bytes = 0;
        }
        if entries.repos.entry(repo.clone()).or_default().insert(reference.to_owned(), m).is_none() {
            entries.bytes += size;
        }
    }

    /// Called after a write to `repo` committed.
    pub(crate) fn invalidate(&self, repo: &RepoName) {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = entries.repos.remove(repo) {
            let freed: usize = old.iter().map(|(k, m)| m.content.len() + k.len() + 64).sum();
            entries.bytes = entries.bytes.saturating_sub(freed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8) -> Arc<StoredManifest> {
        Arc::new(StoredManifest { digest: oci::Digest::sha256_of(&[n]), media_type: "m".into(), content: vec![n; 10] })
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let c = ManifestCache::new(1 << 20);
        let repo: RepoName = "a".parse().unwrap();
        let g = c.generation();
        c.invalidate(&repo); // a write commits while the read is in flight
        c.put(g, &repo, "latest", manifest(1));
        assert!(c.get(&repo, "latest").is_none());
        let g = c.generation();
        c.put(g, &repo, "latest", manifest(2));
        assert_eq!(c.get(&repo, "latest").unwrap().content[0], 2);
        c.invalidate(&repo);
        assert!(c.get(&repo, "latest").is_none());
    }

    #[test]
    fn stays_within_budget() {
        let c = ManifestCache::new(16 * 200);
        let repo: RepoName = "a".parse().unwrap();
        for i in 0..100u8 {
            c.put(c.generation(), &repo, &i.to_string(), manifest(i));
            assert!(c.inner.lock().unwrap().bytes <= 16 * 200);
        }
    }
}
