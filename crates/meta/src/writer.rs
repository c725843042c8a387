//! SQLite's one write connection, and the WAL syncs that make its commits durable.
//!
//! Why not `synchronous = FULL`: with it, every commit fsyncs the WAL before it returns, while
//! it holds the one write connection. A push is many small transactions (the upload session,
//! its chunks, the blob's link, the manifest); concurrent pushes queued behind each other's
//! fsyncs and spent most of their time waiting for the disk.
//!
//! Instead the connection runs with `synchronous = NORMAL` (a commit writes the WAL without
//! syncing it, which a process crash cannot undo), and a transaction that must be durable
//! waits, after its commit and without the connection, for an `fdatasync` of the WAL file
//! that began after its commit. One sync runs at a time and covers every commit before it, so
//! the transactions committed while one runs share the next. The WAL is a log: a sync that
//! covers a commit covers every commit before it too.
//!
//! The price: for the moment between a commit and its sync, other connections can read
//! what a power loss could still take back. Anything berth does on the strength of a write
//! (answering a client, deleting a blob's bytes) waits for the sync first.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use sqlx::any::{AnyArguments, AnyQueryResult};
use sqlx::{AnyConnection, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use crate::{MetaError, Result};

/// Opens and configures the write connection (again after it broke).
pub(crate) type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<AnyConnection, sqlx::Error>> + Send + Sync>;

/// A statement with its arguments bound.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

pub(crate) struct Writer {
    conn: Arc<Mutex<Conn>>,
    connect: Connect,
    /// `None` when commits need not wait for a sync (`synchronous: normal`).
    syncer: Option<Arc<Syncer>>,
}

struct Conn {
    /// `None` until first used, and after it broke.
    conn: Option<AnyConnection>,
    /// A transaction was left open (its holder was dropped, or its end failed): roll it back
    /// before the next one begins.
    dirty: bool,
}

/// The thread that syncs the WAL, and what it shares with the writer. A thread rather than a
/// task: a sync is a blocking call, and waking a parked thread costs less than a task that
/// hands the call to the blocking pool and waits for it.
struct Syncer {
    wal: PathBuf,
    /// Commits made on the connection, counted under its lock (so in WAL order).
    committed: AtomicU64,
    state: std::sync::Mutex<SyncState>,
    wake: std::sync::Condvar,
    /// How many commits are known synced; bumped (or just touched, on failure) after each sync.
    synced: watch::Sender<u64>,
}

#[derive(Default)]
struct SyncState {
    /// A commit waits for a sync that has not begun yet.
    requested: bool,
    /// The writer is gone: the thread ends.
    closed: bool,
    /// Set when a sync failed. The kernel may have dropped the pages it could not write, and
    /// a later sync could then succeed without them: nothing written since can be called
    /// durable, so every write fails until berth is restarted (as PostgreSQL does).
    failed: Option<Arc<str>>,
}

impl Syncer {
    fn start(wal: PathBuf) -> std::io::Result<Arc<Syncer>> {
        let s = Arc::new(Syncer {
            wal,
            committed: AtomicU64::new(0),
            state: std::sync::Mutex::new(SyncState::default()),
            wake: std::sync::Condvar::new(),
            synced: watch::Sender::new(0),
        });
        let me = s.clone();
        std::thread::Builder::new().name("berth-wal-sync".into()).spawn(move || me.run())?;
        Ok(s)
    }

    fn run(&self) {
        loop {
            {
                let mut st = self.state.lock().expect("sync state");
                while !st.requested && !st.closed {
                    st = self.wake.wait(st).expect("sync state");
                }
                if !st.requested {
                    return;
                }
                st.requested = false;
            }
            // Every commit counted so far has returned, so its frames are in the file. The
            // file is opened each time: should SQLite ever delete and recreate the WAL (it
            // does when the last connection closes), a kept descriptor would sync the old one.
            let target = self.committed.load(Ordering::SeqCst);
            // No WAL at all means SQLite checkpointed everything into the database (syncing it)
            // and removed the log: nothing is left to sync.
            let synced = match std::fs::File::open(&self.wal) {
                Ok(f) => f.sync_data(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            // Wake every waiter, whether the count moved or not.
            match synced {
                Ok(()) => self.synced.send_modify(|n| *n = (*n).max(target)),
                Err(e) => {
                    tracing::error!(error = %e, wal = %self.wal.display(), "syncing the metadata WAL failed: refusing writes until restart");
                    self.state.lock().expect("sync state").failed = Some(Arc::from(e.to_string()));
                    self.synced.send_modify(|_| ());
                }
            }
        }
    }

    fn check(&self) -> Result<()> {
        match &self.state.lock().expect("sync state").failed {
            Some(why) => Err(MetaError::SyncFailed(why.to_string())),
            None => Ok(()),
        }
    }

    /// Wait until a sync covers commit number `seq`.
    async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.synced.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            {
                let mut st = self.state.lock().expect("sync state");
                if let Some(why) = &st.failed {
                    return Err(MetaError::SyncFailed(why.to_string()));
                }
                st.requested = true;
            }
            self.wake.notify_one();
            // A sync that ends wakes everybody; one that began before this commit does not
            // cover it, and the loop asks for the next.
            if rx.changed().await.is_err() {
                return Err(MetaError::SyncFailed("the WAL sync thread is gone".into()));
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(s) = &self.syncer {
            s.state.lock().expect("sync state").closed = true;
            s.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("wal", &self.syncer.as_ref().map(|s| &s.wal)).finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(connect: Connect, wal: Option<PathBuf>) -> std::io::Result<Arc<Writer>> {
        let syncer = wal.map(Syncer::start).transpose()?;
        Ok(Arc::new(Writer { conn: Arc::new(Mutex::new(Conn { conn: None, dirty: false })), connect, syncer }))
    }

    fn check(&self) -> Result<()> {
        self.syncer.as_ref().map_or(Ok(()), |s| s.check())
    }

    /// Count a commit just made (under the connection's lock); returns its number.
    fn committed(&self) -> u64 {
        self.syncer.as_ref().map_or(0, |s| s.committed.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Wait until commit number `seq` is on stable storage.
    async fn durable(&self, seq: u64) -> Result<()> {
        match &self.syncer {
            Some(s) => s.durable(seq).await,
            None => Ok(()),
        }
    }

    /// Begin a write transaction: wait for the connection, then `BEGIN IMMEDIATE` (see
    /// `MetaStore::begin_write`).
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<WriteTx> {
        self.check()?;
        let mut guard = self.conn.clone().lock_owned().await;
        let c = &mut *guard;
        if c.dirty {
            rollback(c).await;
        }
        if c.conn.is_none() {
            c.conn = Some((self.connect)().await?);
        }
        // Marked before the statement runs: should this future be dropped in the middle of
        // it, the next transaction rolls back whatever it did.
        c.dirty = true;
        if let Err(e) = c.conn.as_mut().expect("connected above").execute("BEGIN IMMEDIATE").await {
            rollback(c).await;
            return Err(e.into());
        }
        Ok(WriteTx { guard: Some(guard), writer: self.clone() })
    }

    /// Run one statement in autocommit mode (its own transaction, one round trip to SQLite's
    /// worker thread instead of three), then wait until it is durable.
    pub(crate) async fn execute_one(self: &Arc<Self>, q: AnyQuery<'_>) -> Result<AnyQueryResult> {
        self.check()?;
        let mut guard = self.conn.lock().await;
        let c = &mut *guard;
        if c.dirty {
            rollback(c).await;
        }
        if c.conn.is_none() {
            c.conn = Some((self.connect)().await?);
        }
        let r = match q.execute(c.conn.as_mut().expect("connected above")).await {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, sqlx::Error::Database(_)) {
                    c.conn = None;
                }
                return Err(e.into());
            }
        };
        let seq = self.committed();
        drop(guard);
        self.durable(seq).await?;
        Ok(r)
    }

    /// Roll back what is open, sync what was committed, close the connection (shutdown).
    pub(crate) async fn close(self: &Arc<Self>) {
        let mut c = self.conn.lock().await;
        if c.dirty {
            rollback(&mut c).await;
        }
        // Before the connection closes: closing the last one removes the WAL.
        let last = self.syncer.as_ref().map_or(0, |s| s.committed.load(Ordering::SeqCst));
        if let Err(e) = self.durable(last).await {
            tracing::warn!(error = %e, "syncing the metadata WAL at shutdown failed");
        }
        if let Some(conn) = c.conn.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// Roll back whatever transaction the connection has open; a connection that cannot is
/// dropped, to be reopened.
async fn rollback(c: &mut Conn) {
    c.dirty = false;
    let Some(conn) = c.conn.as_mut() else { return };
    // "No transaction is active" (the BEGIN never ran) is fine; anything else leaves the
    // connection in doubt.
    if let Err(e) = conn.execute("ROLLBACK").await
        && !matches!(e, sqlx::Error::Database(_))
    {
        c.conn = None;
    }
}

/// A write transaction on the write connection, which it holds. Dereferences to the
/// connection; ends with [`WriteTx::commit`] or [`WriteTx::rollback`]. Dropped without either,
/// it is rolled back when the next transaction begins.
pub(crate) struct WriteTx {
    guard: Option<OwnedMutexGuard<Conn>>,
    writer: Arc<Writer>,
}

impl WriteTx {
    /// Commit, then wait until the commit is on stable storage (with `synchronous: full`).
    pub(crate) async fn commit(mut self) -> Result<()> {
        let mut guard = self.guard.take().expect("a live transaction holds the connection");
        let c = &mut *guard;
        if let Err(e) = c.conn.as_mut().expect("a transaction runs on a connection").execute("COMMIT").await {
            rollback(c).await;
            return Err(e.into());
        }
        c.dirty = false;
        let seq = self.writer.committed();
        drop(guard);
        self.writer.durable(seq).await
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        let mut guard = self.guard.take().expect("a live transaction holds the connection");
        rollback(&mut guard).await;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // Ended without commit (an error returned early, or the request was cancelled): roll
        // back now rather than when the next transaction begins, so that the database's
        // write lock is not held meanwhile (a `berth gc` process may be waiting for it).
        if let Some(mut guard) = self.guard.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if guard.dirty {
                    rollback(&mut guard).await;
                }
            });
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.guard.as_ref().and_then(|c| c.conn.as_ref()).expect("a live transaction holds the connection")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.guard.as_mut().and_then(|c| c.conn.as_mut()).expect("a live transaction holds the connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    async fn writer(dir: &std::path::Path, wal: Option<PathBuf>) -> Arc<Writer> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        let w = Writer::new(crate::store::sqlite_writer_connect(url), wal).expect("writer");
        let mut tx = w.begin().await.expect("begin");
        tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)").await.expect("create");
        tx.commit().await.expect("commit");
        w
    }

    fn wal_of(dir: &std::path::Path) -> PathBuf {
        dir.join("t.db-wal")
    }

    async fn count(w: &Arc<Writer>) -> i64 {
        let mut tx = w.begin().await.expect("begin");
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM t").fetch_one(&mut *tx).await.expect("count").try_get("n").expect("n");
        tx.rollback().await.expect("rollback");
        n
    }

    #[tokio::test]
    async fn a_commit_returns_once_a_sync_covers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path(), Some(wal_of(dir.path()))).await;
        let s = w.syncer.clone().expect("a syncer with a WAL");
        // Many writers at once: each, when its commit returns, is covered by a finished sync.
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (w, s) = (w.clone(), s.clone());
                tokio::spawn(async move {
                    // This commit's number will be larger than any counted now.
                    let before = s.committed.load(Ordering::SeqCst);
                    if i % 2 == 0 {
                        w.execute_one(sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'one')").bind(i)).await.expect("insert");
                    } else {
                        let mut tx = w.begin().await.expect("begin");
                        sqlx::query("INSERT INTO t (k, v) VALUES ($1, 'tx')").bind(i).execute(&mut *tx).await.expect("insert");
                        tx.commit().await.expect("commit");
                    }
                    // A sync that began after this commit has ended.
                    let synced = *s.synced.borrow();
                    assert!(synced > before, "returned at {synced} synced, committed after {before}");
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(count(&w).await, 64);
        // Every commit (the table, 64 inserts) is covered.
        assert!(*s.synced.borrow() >= s.committed.load(Ordering::SeqCst));
        assert_eq!(s.committed.load(Ordering::SeqCst), 65);
    }

    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back_and_the_connection_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path(), Some(wal_of(dir.path()))).await;
        let mut tx = w.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (k, v) VALUES (1, 'lost')").execute(&mut *tx).await.expect("insert");
        drop(tx);
        let mut tx = w.begin().await.expect("begin after a drop");
        sqlx::query("INSERT INTO t (k, v) VALUES (2, 'kept')").execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
        // A statement error in autocommit mode changes nothing and leaves the connection usable.
        assert!(w.execute_one(sqlx::query("INSERT INTO t (k, v) VALUES (2, 'duplicate')")).await.is_err());
        let mut tx = w.begin().await.expect("begin");
        let rows = sqlx::query("SELECT k, v FROM t").fetch_all(&mut *tx).await.expect("select");
        tx.rollback().await.expect("rollback");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].try_get::<String, _>("v").expect("v"), "kept");
    }

    #[tokio::test]
    async fn a_failed_sync_refuses_every_write_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A WAL path that cannot be opened (a path under a regular file): the sync fails.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("file");
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let w = Writer::new(crate::store::sqlite_writer_connect(url), Some(file.join("t.db-wal"))).expect("writer");
        let tx = w.begin().await.expect("begin");
        let err = tx.commit().await.expect_err("the commit's sync fails");
        assert!(matches!(err, MetaError::SyncFailed(_)), "{err}");
        assert!(matches!(w.begin().await, Err(MetaError::SyncFailed(_))));
        assert!(matches!(w.execute_one(sqlx::query("SELECT 1")).await, Err(MetaError::SyncFailed(_))));
    }

    #[tokio::test]
    async fn without_a_wal_to_sync_commits_do_not_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path(), None).await;
        assert!(w.syncer.is_none());
        w.execute_one(sqlx::query("INSERT INTO t (k, v) VALUES (1, 'a')")).await.expect("insert");
        assert_eq!(count(&w).await, 1);
        w.close().await;
    }
}
