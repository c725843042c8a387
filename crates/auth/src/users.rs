//! `UserStore`: the htpasswd file as a running server sees it. It re-reads the file when it
//! changes (so `berth user add` takes effect without a restart), keeps the last good version
//! when a re-read fails, and remembers successful password checks for a few minutes, because
//! docker sends basic credentials on every request and each bcrypt check costs tens to hundreds
//! of milliseconds of CPU.
//!
//! Knows nothing about HTTP; runs bcrypt on tokio's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use crate::htpasswd::{Htpasswd, HtpasswdError};

/// How often the file's metadata is looked at, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long a successful check is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Remembered checks, at most (a few hundred kilobytes).
const CACHE_MAX: usize = 10_000;

/// Shared, reloading view of an htpasswd file. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct UserStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<FileState>,
    /// sha256(user, password, stored hash) -> expiry. The stored hash is part of the key, so a
    /// password change (a new hash) never meets an old entry; the password is part of it, so a
    /// remembered check only answers the very same credentials.
    cache: Mutex<HashMap<[u8; 32], Instant>>,
}

struct FileState {
    file: Arc<Htpasswd>,
    /// (mtime, length) when last read.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    // Lengths first, so no two different triples hash the same bytes.
    for part in [user, password, hash] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

impl UserStore {
    /// Reads the file now; a missing or invalid file is an error.
    pub fn open(path: &Path) -> Result<Self, HtpasswdError> {
        let stamp = stamp(path).map_err(|error| HtpasswdError::Io { path: path.to_owned(), error })?;
        let file = Htpasswd::load(path)?;
        Ok(UserStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                state: Mutex::new(FileState { file: Arc::new(file), stamp: Some(stamp), checked: Instant::now() }),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current file, re-read first if it changed (looked at once a second at most).
    pub fn current(&self) -> Arc<Htpasswd> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Arc<Htpasswd> {
        let mut st = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(st.checked) >= RELOAD_CHECK {
            st.checked = now;
            self.reload_if_changed(&mut st);
        }
        Arc::clone(&st.file)
    }

    fn reload_if_changed(&self, st: &mut FileState) {
        let path = &self.inner.path;
        let now_stamp = match stamp(path) {
            Ok(s) => s,
            Err(e) => {
                if st.stamp.take().is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "htpasswd file unreadable; keeping the users last read");
                }
                return;
            }
        };
        if st.stamp == Some(now_stamp) {
            return;
        }
        match Htpasswd::load(path) {
            Ok(f) => {
                tracing::info!(path = %path.display(), users = f.users().count(), "htpasswd file re-read");
                st.file = Arc::new(f);
                st.stamp = Some(now_stamp);
            }
            Err(e) => {
                // Remember the stamp anyway: the broken version is reported once, not every
                // second, and the next change is read again.
                st.stamp = Some(now_stamp);
                tracing::warn!(path = %path.display(), error = %e, "htpasswd file invalid; keeping the users last read");
            }
        }
    }

    /// Whether `password` is `user`'s. A check already made with the same credentials against the
    /// same stored hash in the last five minutes is answered from memory; otherwise bcrypt runs
    /// on the blocking pool (against a dummy hash for unknown users, so timing does not tell
    /// which users exist).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let file = self.current();
        // Only known users are remembered; an unknown user's check (against the dummy hash,
        // computed lazily) also runs on the blocking pool.
        let key = file.hash_of(user).map(|hash| cache_key(user, password, hash));
        if key.is_some_and(|k| self.cached(&k, Instant::now())) {
            return true;
        }
        let (u, pw) = (user.to_owned(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || file.verify(&u, &pw)).await.unwrap_or(false);
        if let (true, Some(k)) = (ok, key) {
            self.remember(k, Instant::now());
        }
        ok
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> bool {
        let cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(key).is_some_and(|exp| *exp > now)
    }

    fn remember(&self, key: [u8; 32], now: Instant) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, exp| *exp > now);
            if cache.len() >= CACHE_MAX {
                // Every entry is live: forgetting them all only costs one bcrypt per client.
                cache.clear();
            }
        }
        cache.insert(key, now + CACHE_TTL);
    }

    pub fn contains(&self, user: &str) -> bool {
        self.current().contains(user)
    }

    /// See [`Htpasswd::entry_fingerprint`].
    pub fn fingerprint(&self, user: &str) -> Option<String> {
        self.current().entry_fingerprint(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, users: &[(&str, &str)]) {
        let mut h = Htpasswd::default();
        for (u, p) in users {
            h.set(u, p, 4).expect("set");
        }
        h.save(path).expect("save");
    }

    #[tokio::test]
    async fn verifies_caches_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        write(&path, &[("alice", "pw-a")]);
        let store = UserStore::open(&path).expect("open");
        assert!(store.verify("alice", "pw-a").await);
        assert!(!store.verify("alice", "pw-b").await);
        assert!(!store.verify("bob", "pw-b").await);
        assert_eq!(store.inner.cache.lock().expect("lock").len(), 1, "only successes are remembered");
        // A second success is answered from the cache.
        assert!(store.verify("alice", "pw-a").await);
        let fp = store.fingerprint("alice").expect("fp");

        // `berth user add` rewrites the file; the store sees it on the next check after a second
        // (simulated here rather than slept).
        write(&path, &[("alice", "new"), ("bob", "pw-b")]);
        let later = Instant::now() + Duration::from_secs(2);
        assert!(store.current_at(later).contains("bob"));
        assert!(store.contains("bob"));
        assert_ne!(store.fingerprint("alice").expect("fp"), fp);
        assert!(!store.verify("alice", "pw-a").await, "the old password's cached success no longer applies");
        assert!(store.verify("alice", "new").await);
        assert!(store.verify("bob", "pw-b").await);

        // A broken file keeps the last good users.
        std::fs::write(&path, "alice:$apr1$x$y\n").expect("write");
        let later = later + Duration::from_secs(2);
        assert!(store.current_at(later).contains("bob"));
        // And a removed file too.
        std::fs::remove_file(&path).expect("rm");
        assert!(store.current_at(later + Duration::from_secs(2)).contains("bob"));
    }

    #[test]
    fn open_requires_the_file() {
        assert!(UserStore::open(Path::new("/nonexistent/htpasswd")).is_err());
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        write(&path, &[("a", "b")]);
        let store = UserStore::open(&path).expect("open");
        let now = Instant::now();
        for i in 0..CACHE_MAX + 5 {
            store.remember(cache_key("u", &i.to_string(), "h"), now);
        }
        assert!(store.inner.cache.lock().expect("lock").len() <= CACHE_MAX);
        assert!(store.cached(&cache_key("u", &(CACHE_MAX + 4).to_string(), "h"), now));
        assert!(!store.cached(&cache_key("u", &(CACHE_MAX + 4).to_string(), "h"), now + CACHE_TTL));
    }
}
