//! `MetaStore`: every query berth runs against its metadata database.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci::{Digest, RepoName, Tag, UploadId};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

use crate::events::{NewEvent, bind_events, events_insert_sql, insert_events};
use crate::writer::{AnyQuery, Connect, WriteTx, Writer};
use crate::schema::{self, Dialect};
use crate::{MetaError, Result};

/// The metadata database.
#[derive(Debug, Clone)]
pub struct MetaStore {
    /// Pool for reads; on PostgreSQL, for writes too.
    pub(crate) read: AnyPool,
    /// SQLite's one write connection, which serializes writers in-process (SQLite allows one
    /// writer at a time anyway, and waiting here is cheaper and fairer than retrying
    /// `SQLITE_BUSY`), and makes commits durable off the connection (see `meta::writer`).
    /// `None` on PostgreSQL.
    pub(crate) writer: Option<Arc<Writer>>,
    pub(crate) dialect: Dialect,
    /// Quotas every link of a blob is charged against (see `meta::quota`); none unless
    /// [`MetaStore::with_quotas`] set them.
    pub(crate) quotas: std::sync::Arc<[crate::Quota]>,
}

/// What [`MetaStore::link_existing`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// The blob was recorded: it is now linked to the repository too (size as recorded).
    Linked(u64),
    /// Not recorded (or not in the `from` repository). `mark` is the newest garbage collection
    /// tombstone at that moment, for [`MetaStore::link_new`].
    Absent { mark: i64 },
    /// A garbage collection forgot this blob and has not yet deleted its bytes: storing a new
    /// copy now could be undone by that delete. Ask again shortly.
    Collecting,
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest to record, with what it references.
#[derive(Debug, Clone)]
pub struct NewManifest<'a> {
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub content: &'a [u8],
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a Digest>,
    /// JSON object text of the manifest's annotations.
    pub annotations: Option<String>,
    /// Blobs that must be linked to the repository (config, layers).
    pub blobs: Vec<&'a Digest>,
    /// Manifests that must be in the repository (index children).
    pub children: Vec<&'a Digest>,
}

/// One entry of a referrers listing.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    /// JSON object text.
    pub annotations: Option<String>,
}

/// An upload session.
#[derive(Debug, Clone)]
pub struct UploadSession {
    pub id: UploadId,
    pub repository: RepoName,
    /// Bytes accepted so far.
    pub offset: u64,
    /// Saved sha256 state of the bytes accepted so far.
    pub hash_state: Vec<u8>,
    /// Opaque blob-store state (multipart ids and the like).
    pub driver_state: Vec<u8>,
    pub updated_at: SystemTime,
}

/// A change to an upload session after a chunk was stored.
#[derive(Debug, Clone)]
pub struct UploadUpdate<'a> {
    pub id: &'a UploadId,
    /// The offset the chunk was written at; the update only applies if the session is still
    /// there, so two requests racing on one session cannot both succeed.
    pub expected_offset: u64,
    pub offset: u64,
    pub hash_state: &'a [u8],
    pub driver_state: &'a [u8],
}

/// Usage figures for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageTotals {
    pub total_bytes: u64,
    pub blob_count: u64,
    pub open_uploads: u64,
    /// The largest repositories, by bytes of linked blobs (a blob shared by two repositories
    /// counts in each).
    pub per_repo: Vec<RepoUsage>,
}

/// One repository's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoUsage {
    pub repository: String,
    pub bytes: u64,
    pub blobs: u64,
}

/// A page of a name listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    pub names: Vec<String>,
    /// Whether names after the last one exist.
    pub more: bool,
}

pub(crate) fn now_ms() -> i64 {
    ms(SystemTime::now())
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn parse<T: FromStr>(row: &AnyRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(col)?;
    s.parse().map_err(|e| MetaError::Corrupt(format!("{col} {s:?}: {e}")))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(row: &AnyRow, col: &str) -> Result<u64> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| MetaError::Corrupt(format!("{col} is negative")))
}

/// A database transaction: a pooled one (PostgreSQL, and read-only snapshots), or one on
/// SQLite's write connection. Either dereferences to the connection to run
/// statements on, and is rolled back if dropped without [`Tx::commit`].
pub(crate) enum Tx {
    Pool(sqlx::Transaction<'static, sqlx::Any>),
    Write(WriteTx),
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Pool(t) => Ok(t.commit().await?),
            Tx::Write(t) => t.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        match self {
            Tx::Pool(t) => Ok(t.rollback().await?),
            Tx::Write(t) => t.rollback().await,
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            Tx::Pool(t) => t,
            Tx::Write(t) => t,
        }
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            Tx::Pool(t) => t,
            Tx::Write(t) => t,
        }
    }
}

impl MetaStore {
    /// Open (creating if needed) the SQLite database at `path` and bring its schema up to date.
    pub async fn open_sqlite(path: &Path, synchronous_full: bool) -> Result<MetaStore> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let connect = sqlite_writer_connect(url.clone());
        // With `synchronous: full`, commits wait for a sync of the WAL (see `meta::writer`).
        let wal = synchronous_full.then(|| {
            let mut p = path.as_os_str().to_owned();
            p.push("-wal");
            std::path::PathBuf::from(p)
        });
        let writer = Writer::new(connect, wal).map_err(|e| MetaError::Database(sqlx::Error::Io(e)))?;
        // The writer first: it creates the file and switches it to WAL before readers open it.
        writer.begin().await?.rollback().await?;
        // A local file does not go away: no ping each time a connection is taken.
        let read = AnyPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .after_connect(|conn, _| Box::pin(configure_sqlite(conn, true)))
            .connect(&url)
            .await?;
        let store = MetaStore { read, writer: Some(writer), dialect: Dialect::Sqlite, quotas: std::sync::Arc::new([]) };
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to PostgreSQL at `url` and bring its schema up to date.
    pub async fn connect_postgres(url: &str, max_connections: u32) -> Result<MetaStore> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(max_connections).connect(url).await?;
        let store = MetaStore { read: pool, writer: None, dialect: Dialect::Postgres, quotas: std::sync::Arc::new([]) };
        store.migrate().await?;
        Ok(store)
    }

    /// Apply the migrations the database has not seen, each in its own transaction.
    pub async fn migrate(&self) -> Result<()> {
        let Some(writer) = &self.writer else {
            return self.migrate_each().await;
        };
        // SQLite changes a table's definition by building a new table and dropping the old one,
        // which foreign keys forbid while other tables reference it; they cannot be switched off
        // inside a transaction. So they are off on the write connection while migrations run,
        // and each migration checks them all before it commits.
        writer.execute_one(sqlx::query("PRAGMA foreign_keys = OFF")).await?;
        let result = self.migrate_each().await;
        writer.execute_one(sqlx::query("PRAGMA foreign_keys = ON")).await?;
        result
    }

    async fn migrate_each(&self) -> Result<()> {
        loop {
            let mut tx = self.begin_write().await?;
            if self.dialect == Dialect::Postgres {
                // Nodes starting together must not run one migration twice, nor race on creating
                // `berth_schema` itself (concurrent `CREATE TABLE IF NOT EXISTS` fails on
                // PostgreSQL with a unique violation in `pg_type`), so the lock is taken before
                // any table exists: an advisory lock, scoped to this database and released at
                // commit. (On SQLite the single write connection and the database lock do this.)
                // The key is b"berthmig" as a big-endian integer.
                tx.execute("SELECT pg_advisory_xact_lock(7090199032658487655)").await?;
            }
            tx.execute("CREATE TABLE IF NOT EXISTS berth_schema (version BIGINT NOT NULL)").await?;
            let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM berth_schema").fetch_one(&mut *tx).await?;
            let version = usize::try_from(row.try_get::<i64, _>("v")?).unwrap_or(0);
            if version >= schema::count() {
                tx.commit().await?;
                return Ok(());
            }
            for stmt in schema::statements(self.dialect, version) {
                tx.execute(AssertSqlSafe(stmt)).await?;
            }
            if self.dialect == Dialect::Sqlite {
                let broken = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut *tx).await?;
                if !broken.is_empty() {
                    return Err(MetaError::Corrupt(format!("migration {} would leave {} rows without the row they reference", version + 1, broken.len())));
                }
            }
            sqlx::query("INSERT INTO berth_schema (version) VALUES ($1)").bind(to_i64(version as u64 + 1)).execute(&mut *tx).await?;
            tx.commit().await?;
            tracing::info!(version = version + 1, "applied metadata migration");
        }
    }

    /// The schema version the database is at (the number of migrations applied).
    pub async fn schema_version(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM berth_schema").fetch_one(&self.read).await?;
        Ok(u64::try_from(row.try_get::<i64, _>("v")?).unwrap_or(0))
    }

    /// Check the database answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.read.close().await;
    }

    async fn ensure_repo(tx: &mut Tx, repo: &RepoName) -> Result<i64> {
        // Usually the repository exists: one statement. (An upsert with RETURNING would also be
        // one, but on PostgreSQL it locks the row and would serialize every write to the
        // repository until commit.)
        let found = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&mut **tx).await?;
        if let Some(row) = found {
            return Ok(row.try_get("id")?);
        }
        sqlx::query("INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(repo.as_str())
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_one(&mut **tx).await?;
        Ok(row.try_get("id")?)
    }

    async fn repo_id(&self, repo: &RepoName) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&self.read).await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    // ---- blobs ----

    /// Size of `digest` if it is linked to `repo`.
    pub async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
             JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| to_u64(&r, "size")).transpose()
    }

    /// Size of `digest` if any repository holds it.
    pub async fn blob_anywhere(&self, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1").bind(digest.as_str()).fetch_optional(&self.read).await?;
        row.map(|r| to_u64(&r, "size")).transpose()
    }

    /// Begin a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes fails with "database is
    /// locked" when another process (a `berth gc` or `berth fsck` next to the server) wrote in
    /// between, while an immediate one waits for the lock (up to `busy_timeout`).
    pub(crate) async fn begin_write(&self) -> Result<Tx> {
        Ok(match &self.writer {
            Some(w) => Tx::Write(w.begin().await?),
            None => Tx::Pool(self.read.begin().await?),
        })
    }

    /// Run one write statement as a transaction of its own: on SQLite in autocommit mode, one
    /// round trip to the write connection's worker thread where `BEGIN` and `COMMIT` around it
    /// would make three (the write connection is the registry's one serialized resource).
    pub(crate) async fn write_one(&self, q: AnyQuery<'_>) -> Result<sqlx::any::AnyQueryResult> {
        match &self.writer {
            Some(w) => w.execute_one(q).await,
            None => Ok(q.execute(&self.read).await?),
        }
    }

    /// Row-lock clauses: PostgreSQL takes row locks where garbage collection and writers meet;
    /// SQLite needs none (one write connection runs one transaction at a time).
    pub(crate) fn for_share(&self) -> &'static str {
        if self.dialect == Dialect::Postgres { " FOR SHARE" } else { "" }
    }

    pub(crate) fn for_update(&self) -> &'static str {
        if self.dialect == Dialect::Postgres { " FOR UPDATE" } else { "" }
    }

    /// Record a stored blob and link it to `repo`, creating the repository if needed. When an
    /// upload session is given it is removed in the same transaction. (No collection check:
    /// for callers that know no collection runs; pushes use [`MetaStore::link_existing`] and
    /// [`MetaStore::link_new`].)
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64, finished_upload: Option<&UploadId>, events: &[NewEvent]) -> Result<()> {
        self.link_new(repo, digest, size, None, finished_upload, events).await
    }

    /// Link `digest` to `repo` if the blob is recorded (and, with `from`, linked there): the
    /// deduplicating commit of a push, and a mount. The blob's row is share-locked, so a
    /// concurrent collection of it either finishes first (then `Absent`) or waits and then sees
    /// the new link. `size`, when given, must match the recorded size. An upload session given
    /// is removed in the same transaction when the blob is linked.
    pub async fn link_existing(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        size: Option<u64>,
        finished_upload: Option<&UploadId>,
        events: &[NewEvent],
    ) -> Result<Dedup> {
        if from.is_none() {
            // Most pushes bring blobs the registry does not have yet: find that out with one
            // read, which neither waits for the write connection nor, on SQLite, for a WAL
            // sync. (It locks nothing, and needs to lock nothing:
            // the write transaction below reads the same without locks when the blob is
            // absent, and `link_new` checks the mark under the lock.)
            let row = sqlx::query(
                "SELECT (SELECT size FROM blobs WHERE digest = $1) AS size, \
                 (SELECT COUNT(*) FROM blob_tombstones WHERE digest = $1 AND storage_deleted_at IS NULL) AS collecting, \
                 (SELECT COALESCE(MAX(id), 0) FROM blob_tombstones) AS mark",
            )
            .bind(digest.as_str())
            .fetch_one(&self.read)
            .await?;
            if row.try_get::<Option<i64>, _>("size")?.is_none() {
                if row.try_get::<i64, _>("collecting")? > 0 {
                    return Ok(Dedup::Collecting);
                }
                return Ok(Dedup::Absent { mark: row.try_get("mark")? });
            }
        }
        let mut tx = self.begin_write().await?;
        let absent = |mark| Ok(Dedup::Absent { mark });
        if let Some(from) = from {
            let q = format!(
                "SELECT 1 AS x FROM repository_blobs WHERE digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1){}",
                self.for_share()
            );
            if sqlx::query(AssertSqlSafe(q)).bind(from.as_str()).bind(digest.as_str()).fetch_optional(&mut *tx).await?.is_none() {
                return absent(Self::tombstone_mark(&mut tx).await?);
            }
        }
        let q = format!("SELECT size FROM blobs WHERE digest = $1{}", self.for_share());
        let Some(row) = sqlx::query(AssertSqlSafe(q)).bind(digest.as_str()).fetch_optional(&mut *tx).await? else {
            let collecting = sqlx::query("SELECT 1 AS x FROM blob_tombstones WHERE digest = $1 AND storage_deleted_at IS NULL")
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if collecting {
                return Ok(Dedup::Collecting);
            }
            return absent(Self::tombstone_mark(&mut tx).await?);
        };
        let recorded = to_u64(&row, "size")?;
        if let Some(size) = size
            && size != recorded
        {
            return Err(MetaError::Corrupt(format!("{digest} recorded with size {recorded}, uploaded with {size}")));
        }
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        self.charge_quotas(&mut tx, repo, digest, recorded).await?;
        Self::upsert_link(&mut tx, repo_id, digest).await?;
        if let Some(id) = finished_upload {
            sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        }
        let events: Vec<NewEvent> = events.iter().map(|e| NewEvent { size: Some(recorded), ..e.clone() }).collect();
        insert_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(Dedup::Linked(recorded))
    }

    /// Record a blob whose bytes the caller has just stored, and link it to `repo`. With
    /// `mark` (from [`Dedup::Absent`], read before the bytes were stored), fails with
    /// [`MetaError::Collected`] if a garbage collection deleted this digest since: its storage
    /// delete may have removed the bytes just stored, so recording them would be a lie.
    pub async fn link_new(&self, repo: &RepoName, digest: &Digest, size: u64, mark: Option<i64>, finished_upload: Option<&UploadId>, events: &[NewEvent]) -> Result<()> {
        if self.dialect == Dialect::Sqlite
            && crate::quota::applicable(&self.quotas, repo).is_empty()
            && events.len() <= 16
            && events.iter().all(|e| e.endpoints.is_empty())
        {
            return self.link_new_batched(repo, digest, size, mark, finished_upload, events).await;
        }
        let mut tx = self.begin_write().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest.as_str())
            .bind(to_i64(size))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        if let Some(mark) = mark {
            // The insert does not wait when the row exists (PostgreSQL's ON CONFLICT DO
            // NOTHING takes no lock): share-lock it, so that a collection holding it has
            // committed (row gone: collected) or must wait for us and then see our link. (On
            // SQLite no other writer runs until we commit: the row the insert found or made
            // is there.)
            if self.dialect == Dialect::Postgres {
                let q = format!("SELECT 1 AS x FROM blobs WHERE digest = $1{}", self.for_share());
                if sqlx::query(AssertSqlSafe(q)).bind(digest.as_str()).fetch_optional(&mut *tx).await?.is_none() {
                    return Err(MetaError::Collected(digest.to_string()));
                }
            }
            // After the lock: a collection of this digest has committed its tombstone (or not begun).
            let collected = sqlx::query("SELECT 1 AS x FROM blob_tombstones WHERE digest = $1 AND id > $2")
                .bind(digest.as_str())
                .bind(mark)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if collected {
                return Err(MetaError::Collected(digest.to_string()));
            }
        }
        self.charge_quotas(&mut tx, repo, digest, size).await?;
        Self::upsert_link(&mut tx, repo_id, digest).await?;
        if let Some(id) = finished_upload {
            sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`MetaStore::link_new`] on SQLite, without quotas or webhook deliveries to queue: every
    /// statement in one batch, sent to SQLite's worker thread at once. The write connection is
    /// the registry's one serialized resource, and each round trip to it while a transaction
    /// holds it (a wake-up of the worker, then of the waiting task) costs more than the
    /// statement; this makes three (`BEGIN`, the batch, `COMMIT`) of what were eight. Without
    /// other writers, the checks need no order: a collection found by the first statement
    /// rolls everything back.
    async fn link_new_batched(&self, repo: &RepoName, digest: &Digest, size: u64, mark: Option<i64>, finished_upload: Option<&UploadId>, events: &[NewEvent]) -> Result<()> {
        let now = now_ms();
        let mut sql = String::from(
            "SELECT COUNT(*) AS collected FROM blob_tombstones WHERE digest = $2 AND id > $4; \
             INSERT INTO repositories (name, created_at) VALUES ($1, $5) ON CONFLICT (name) DO NOTHING; \
             INSERT INTO blobs (digest, size, created_at) VALUES ($2, $3, $5) ON CONFLICT (digest) DO NOTHING; \
             INSERT INTO repository_blobs (repository_id, digest, created_at, used_at) VALUES ((SELECT id FROM repositories WHERE name = $1), $2, $5, $5) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET used_at = excluded.used_at; \
             DELETE FROM uploads WHERE id = $6",
        );
        if !events.is_empty() {
            sql.push_str("; ");
            sql.push_str(&events_insert_sql(7, events.len()));
        }
        let q = sqlx::query(AssertSqlSafe(sql))
            .bind(repo.as_str())
            .bind(digest.as_str())
            .bind(to_i64(size))
            // Without a mark, no tombstone counts.
            .bind(mark.unwrap_or(i64::MAX))
            .bind(now)
            .bind(finished_upload.map(UploadId::as_str));
        let q = bind_events(q, events, now);
        let mut tx = self.begin_write().await?;
        let rows = q.fetch_all(&mut *tx).await?;
        let collected: i64 = rows.first().ok_or_else(|| MetaError::Corrupt("the tombstone count returned no row".into()))?.try_get("collected")?;
        if collected > 0 {
            tx.rollback().await?;
            return Err(MetaError::Collected(digest.to_string()));
        }
        tx.commit().await
    }

    /// Create the link, or mark an existing one used now (which restarts its grace period).
    async fn upsert_link(tx: &mut Tx, repo_id: i64, digest: &Digest) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO repository_blobs (repository_id, digest, created_at, used_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET used_at = excluded.used_at",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The newest tombstone's id (0 when there is none).
    async fn tombstone_mark(tx: &mut Tx) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) AS m FROM blob_tombstones").fetch_one(&mut **tx).await?;
        Ok(row.try_get("m")?)
    }

    /// Link a blob some repository already holds to `repo` (a cross-repository mount).
    /// Returns its size, or `None` if the blob is not known (or not in `from`, when given).
    pub async fn mount_blob(&self, repo: &RepoName, digest: &Digest, from: Option<&RepoName>, events: &[NewEvent]) -> Result<Option<u64>> {
        match self.link_existing(repo, digest, from, None, None, events).await? {
            Dedup::Linked(size) => Ok(Some(size)),
            Dedup::Absent { .. } | Dedup::Collecting => Ok(None),
        }
    }

    /// Remove the link between `repo` and `digest`. Returns whether there was one.
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest, events: &[NewEvent]) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // Lock order everywhere: the blob's row, then its links (see `meta::gc`).
        let q = format!("SELECT 1 AS x FROM blobs WHERE digest = $1{}", self.for_update());
        sqlx::query(AssertSqlSafe(q)).bind(digest.as_str()).fetch_optional(&mut *tx).await?;
        let r = sqlx::query("DELETE FROM repository_blobs WHERE digest = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)")
            .bind(repo.as_str())
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        let found = r.rows_affected() > 0;
        if found {
            // The blob's grace period (should this have been its last link) starts now.
            sqlx::query("UPDATE blobs SET released_at = $2 WHERE digest = $1").bind(digest.as_str()).bind(now_ms()).execute(&mut *tx).await?;
            insert_events(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    // ---- manifests and tags ----

    /// Record a manifest in `repo` and point `tags` at it, in one transaction. Fails with
    /// `MissingBlob`/`MissingManifest` (and changes nothing) when a reference is absent.
    pub async fn put_manifest(&self, repo: &RepoName, m: &NewManifest<'_>, tags: &[Tag], events: &[NewEvent]) -> Result<()> {
        self.put_manifest_guarded(repo, m, tags, &[], events).await
    }

    /// [`MetaStore::put_manifest`], where the tags in `immutable` may be created or re-pointed
    /// at the manifest they already point at, but not moved: such a move fails with
    /// [`MetaError::ImmutableTag`] and changes nothing. Decided by the tag upsert itself, so
    /// two writers racing on a new immutable tag cannot both win.
    pub async fn put_manifest_guarded(&self, repo: &RepoName, m: &NewManifest<'_>, tags: &[Tag], immutable: &[Tag], events: &[NewEvent]) -> Result<()> {
        if self.dialect == Dialect::Sqlite
            && m.children.is_empty()
            && immutable.is_empty()
            && m.blobs.len() <= 1000
            && tags.len() <= 100
            && events.len() <= 16
            && events.iter().all(|e| e.endpoints.is_empty())
        {
            return self.put_manifest_batched(repo, m, tags, events).await;
        }
        let mut tx = self.begin_write().await?;
        let repo_id = Self::ensure_repo(&mut tx, repo).await?;
        // Share-locked (PostgreSQL): a collection of one of these links waits for this
        // transaction and then sees the manifest's reference, or finished first and the
        // reference is reported missing (the client pushes the blob again).
        if let Some(missing) = Self::first_missing(&mut tx, "repository_blobs", "digest", repo_id, &m.blobs, self.for_share()).await? {
            return Err(MetaError::MissingBlob(missing));
        }
        if let Some(missing) = Self::first_missing(&mut tx, "manifests", "digest", repo_id, &m.children, "").await? {
            return Err(MetaError::MissingManifest(missing));
        }
        let now = now_ms();
        let insert = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repository_id, digest) DO NOTHING",
        )
        .bind(repo_id);
        let inserted = bind_manifest(insert, m).bind(now).execute(&mut *tx).await?.rows_affected();
        if inserted > 0 {
            Self::insert_refs(&mut tx, "manifest_blobs", "manifest_digest", "blob_digest", repo_id, m.digest, &m.blobs).await?;
            Self::insert_refs(&mut tx, "manifest_children", "parent_digest", "child_digest", repo_id, m.digest, &m.children).await?;
        } else if tags.is_empty() {
            // Pushed again untagged (say, as a child before its index): its age for
            // `gc.untagged` counts from now, like a new one's.
            sqlx::query("UPDATE manifests SET untagged_at = $3 WHERE repository_id = $1 AND digest = $2").bind(repo_id).bind(m.digest.as_str()).bind(now).execute(&mut *tx).await?;
        }
        // Tags are upserted in one global order (byte order, duplicates once) so that writers
        // racing on the same tags lock their rows in the same order and cannot deadlock.
        let mut tags: Vec<&Tag> = tags.iter().collect();
        tags.sort_unstable();
        tags.dedup();
        // The manifests the tags move away from lost a tag now (see `untagged_at`), marked in
        // one statement (immutable tags do not move).
        let movable: Vec<&str> = tags.iter().filter(|t| !immutable.contains(**t)).map(|t| t.as_str()).collect();
        if !movable.is_empty() {
            let list: Vec<String> = (0..movable.len()).map(|i| format!("${}", i + 4)).collect();
            let sql = format!(
                "UPDATE manifests SET untagged_at = $3 WHERE repository_id = $1 AND digest <> $2 AND digest IN \
                 (SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name IN ({}))",
                list.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(repo_id).bind(m.digest.as_str()).bind(now);
            for t in &movable {
                q = q.bind(*t);
            }
            q.execute(&mut *tx).await?;
        }
        for tag in tags {
            let guarded = immutable.contains(tag);
            let upsert = if guarded {
                // Updates (and so counts) only a row already pointing at this manifest.
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET updated_at = excluded.updated_at WHERE tags.manifest_digest = excluded.manifest_digest"
            } else {
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at"
            };
            let n = sqlx::query(upsert).bind(repo_id).bind(tag.as_str()).bind(m.digest.as_str()).bind(now).execute(&mut *tx).await?.rows_affected();
            if guarded && n == 0 {
                return Err(MetaError::ImmutableTag(tag.to_string()));
            }
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`MetaStore::put_manifest_guarded`] on SQLite for an image manifest (no children, no
    /// immutable tags, no webhook deliveries to queue): every statement in one batch, as
    /// [`MetaStore::link_new_batched`] does and for the same reason. A missing blob found by
    /// the batch's one query rolls everything back.
    async fn put_manifest_batched(&self, repo: &RepoName, m: &NewManifest<'_>, tags: &[Tag], events: &[NewEvent]) -> Result<()> {
        const REPO: &str = "(SELECT id FROM repositories WHERE name = $1)";
        let mut blobs: Vec<&str> = m.blobs.iter().map(|d| d.as_str()).collect();
        blobs.sort_unstable();
        blobs.dedup();
        let mut tags: Vec<&str> = tags.iter().map(Tag::as_str).collect();
        tags.sort_unstable();
        tags.dedup();
        // $1-$8 below, then the blobs, the tags and the events' values. Only numbered
        // placeholders are generated into the text; every value is bound.
        let (first_blob, first_tag) = (9, 9 + blobs.len());
        let first_event = first_tag + tags.len();
        let list = |first: usize, n: usize| (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>();
        let mut sql = vec!["INSERT INTO repositories (name, created_at) VALUES ($1, $8) ON CONFLICT (name) DO NOTHING".to_owned()];
        if !blobs.is_empty() {
            let values: Vec<String> = list(first_blob, blobs.len()).iter().map(|p| format!("({p})")).collect();
            sql.push(format!(
                "WITH w(d) AS (VALUES {}) SELECT d AS missing FROM w WHERE NOT EXISTS \
                 (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = {REPO} AND rb.digest = w.d) ORDER BY d LIMIT 1",
                values.join(", ")
            ));
        }
        sql.push(format!(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, content, created_at) \
             VALUES ({REPO}, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (repository_id, digest) DO NOTHING"
        ));
        if tags.is_empty() {
            // Pushed again untagged: its age for `gc.untagged` counts from now, like a new
            // one's. `changes()` is the insert's just before: 0 when the manifest was there.
            sql.push(format!("UPDATE manifests SET untagged_at = $8 WHERE repository_id = {REPO} AND digest = $2 AND changes() = 0"));
        }
        if !blobs.is_empty() {
            // When the manifest was there already, so are these rows: nothing is inserted.
            let rows: Vec<String> = list(first_blob, blobs.len()).iter().map(|p| format!("({REPO}, $2, {p})")).collect();
            sql.push(format!("INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) VALUES {} ON CONFLICT DO NOTHING", rows.join(", ")));
        }
        if !tags.is_empty() {
            sql.push(format!(
                "UPDATE manifests SET untagged_at = $8 WHERE repository_id = {REPO} AND digest <> $2 AND digest IN \
                 (SELECT manifest_digest FROM tags WHERE repository_id = {REPO} AND name IN ({}))",
                list(first_tag, tags.len()).join(", ")
            ));
            for p in list(first_tag, tags.len()) {
                sql.push(format!(
                    "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ({REPO}, {p}, $2, $8) \
                     ON CONFLICT (repository_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at"
                ));
            }
        }
        if !events.is_empty() {
            sql.push(events_insert_sql(first_event, events.len()));
        }
        let now = now_ms();
        let mut q = bind_manifest(sqlx::query(AssertSqlSafe(sql.join("; "))).bind(repo.as_str()), m).bind(now);
        for d in &blobs {
            q = q.bind(*d);
        }
        for t in &tags {
            q = q.bind(*t);
        }
        let q = bind_events(q, events, now);
        let mut tx = self.begin_write().await?;
        let rows = q.fetch_all(&mut *tx).await?;
        if let Some(row) = rows.first() {
            let missing: String = row.try_get("missing")?;
            tx.rollback().await?;
            return Err(MetaError::MissingBlob(missing));
        }
        tx.commit().await
    }

    /// The first of `digests` with no row in `table` for the repository, in one query.
    async fn first_missing(tx: &mut Tx, table: &'static str, column: &'static str, repo_id: i64, digests: &[&Digest], lock: &'static str) -> Result<Option<String>> {
        let mut wanted: Vec<&str> = digests.iter().map(|d| d.as_str()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(None);
        }
        // Only numbered placeholders are generated into the text; every value is bound.
        let placeholders: Vec<String> = (0..wanted.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!("SELECT {column} AS d FROM {table} WHERE repository_id = $1 AND {column} IN ({}) ORDER BY {column}{lock}", placeholders.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(repo_id);
        for d in &wanted {
            q = q.bind(*d);
        }
        let found: std::collections::HashSet<String> = q.fetch_all(&mut **tx).await?.iter().map(|r| r.try_get("d")).collect::<Result<_, _>>()?;
        Ok(wanted.into_iter().find(|d| !found.contains(*d)).map(str::to_owned))
    }

    /// Record `parent`'s references in `table`, in one multi-row insert.
    async fn insert_refs(
        tx: &mut Tx,
        table: &'static str,
        parent_col: &'static str,
        child_col: &'static str,
        repo_id: i64,
        parent: &Digest,
        children: &[&Digest],
    ) -> Result<()> {
        let mut children: Vec<&str> = children.iter().map(|d| d.as_str()).collect();
        children.sort_unstable();
        children.dedup();
        if children.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = (0..children.len()).map(|i| format!("($1, $2, ${})", i + 3)).collect();
        let sql = format!("INSERT INTO {table} (repository_id, {parent_col}, {child_col}) VALUES {} ON CONFLICT DO NOTHING", rows.join(", "));
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(repo_id).bind(parent.as_str());
        for c in children {
            q = q.bind(c);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    fn manifest_from_row(row: &AnyRow) -> Result<StoredManifest> {
        Ok(StoredManifest { digest: parse(row, "digest")?, media_type: row.try_get("media_type")?, content: row.try_get("content")? })
    }

    pub async fn manifest_by_digest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(Self::manifest_from_row).transpose()
    }

    pub async fn manifest_by_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM tags t JOIN repositories r ON r.id = t.repository_id \
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(Self::manifest_from_row).transpose()
    }

    /// Delete a manifest and every tag pointing at it. Returns whether it existed.
    pub async fn delete_manifest(&self, repo: &RepoName, digest: &Digest, events: &[NewEvent]) -> Result<bool> {
        self.delete_manifest_guarded(repo, digest, None, events).await
    }

    /// [`MetaStore::delete_manifest`], refused with [`MetaError::ImmutableTag`] (deleting
    /// nothing) when a tag pointing at the manifest is one `immutable` says may not go. The
    /// tags are read under a row lock in the deleting transaction.
    pub async fn delete_manifest_guarded(&self, repo: &RepoName, digest: &Digest, immutable: Option<&(dyn Fn(&str) -> bool + Sync)>, events: &[NewEvent]) -> Result<bool> {
        let Some(repo_id) = self.repo_id(repo).await? else { return Ok(false) };
        let mut tx = self.begin_write().await?;
        if let Some(immutable) = immutable {
            let q = format!("SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name{}", self.for_update());
            for row in sqlx::query(AssertSqlSafe(q)).bind(repo_id).bind(digest.as_str()).fetch_all(&mut *tx).await? {
                let name: String = row.try_get("name")?;
                if immutable(&name) {
                    return Err(MetaError::ImmutableTag(name));
                }
            }
        }
        let deleted = sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // The links this manifest kept alive start their grace period now (a client that
        // deletes an image and pushes it again finds its layers still there).
        sqlx::query(
            "UPDATE repository_blobs SET used_at = $3 WHERE repository_id = $1 AND digest IN \
             (SELECT blob_digest FROM manifest_blobs WHERE repository_id = $1 AND manifest_digest = $2)",
        )
        .bind(repo_id)
        .bind(digest.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if deleted > 0 {
            // Its children and referrers lost what kept them now (see `untagged_at`).
            sqlx::query(
                "UPDATE manifests SET untagged_at = $3 WHERE repository_id = $1 AND (subject = $2 OR digest IN \
                 (SELECT child_digest FROM manifest_children WHERE repository_id = $1 AND parent_digest = $2))",
            )
            .bind(repo_id)
            .bind(digest.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        for stmt in [
            "DELETE FROM tags WHERE repository_id = $1 AND manifest_digest = $2",
            "DELETE FROM manifest_blobs WHERE repository_id = $1 AND manifest_digest = $2",
            "DELETE FROM manifest_children WHERE repository_id = $1 AND parent_digest = $2",
        ] {
            sqlx::query(stmt).bind(repo_id).bind(digest.as_str()).execute(&mut *tx).await?;
        }
        if deleted > 0 {
            insert_events(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Delete one tag. Returns whether it existed.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag, events: &[NewEvent]) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The manifest it pointed at lost a tag now (see `untagged_at`).
        sqlx::query(
            "UPDATE manifests SET untagged_at = $3 WHERE repository_id = (SELECT id FROM repositories WHERE name = $1) AND digest = \
             (SELECT t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = $1 AND t.name = $2)",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query("DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&mut *tx)
            .await?;
        let found = r.rows_affected() > 0;
        if found {
            insert_events(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    /// Tags of `repo` after `last`, in byte order, at most `limit`. `None` if the repository
    /// does not exist.
    pub async fn list_tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<Option<TagPage>> {
        let Some(repo_id) = self.repo_id(repo).await? else { return Ok(None) };
        let rows = sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(repo_id)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.read)
            .await?;
        Ok(Some(page(&rows, limit)?))
    }

    /// Repository names after `last`, in byte order, at most `limit`. Keyset pagination on the
    /// unique index: every page costs the same however deep the walk.
    pub async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<TagPage> {
        let rows = sqlx::query("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.read)
            .await?;
        page(&rows, limit)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally only those of `artifact_type`.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            // LENGTH of a BYTEA is an INT4 on PostgreSQL, an INTEGER (64-bit) on SQLite: one type.
            "SELECT m.digest, m.media_type, CAST(LENGTH(m.content) AS BIGINT) AS size, m.artifact_type, m.annotations \
             FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 = '' OR m.artifact_type = $3) ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type.unwrap_or(""))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: parse(r, "digest")?,
                    media_type: r.try_get("media_type")?,
                    size: to_u64(r, "size")?,
                    artifact_type: r.try_get("artifact_type")?,
                    annotations: r.try_get("annotations")?,
                })
            })
            .collect()
    }

    // ---- upload sessions ----

    pub async fn create_upload(&self, id: &UploadId, repo: &RepoName, hash_state: &[u8]) -> Result<()> {
        let now = now_ms();
        self.write_one(
            sqlx::query(
                "INSERT INTO uploads (id, repository, byte_offset, hash_state, driver_state, created_at, updated_at) VALUES ($1, $2, 0, $3, $4, $5, $5)",
            )
            .bind(id.as_str())
            .bind(repo.as_str())
            .bind(hash_state.to_vec())
            .bind(Vec::<u8>::new())
            .bind(now),
        )
        .await?;
        Ok(())
    }

    pub async fn upload(&self, id: &UploadId) -> Result<Option<UploadSession>> {
        let row = sqlx::query("SELECT id, repository, byte_offset, hash_state, driver_state, updated_at FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    /// Record a stored chunk. Fails with `Conflict` if the session moved or vanished meanwhile.
    pub async fn update_upload(&self, u: &UploadUpdate<'_>) -> Result<()> {
        let r = self
            .write_one(
                sqlx::query("UPDATE uploads SET byte_offset = $2, hash_state = $3, driver_state = $4, updated_at = $5 WHERE id = $1 AND byte_offset = $6")
                    .bind(u.id.as_str())
                    .bind(to_i64(u.offset))
                    .bind(u.hash_state.to_vec())
                    .bind(u.driver_state.to_vec())
                    .bind(now_ms())
                    .bind(to_i64(u.expected_offset)),
            )
            .await?;
        if r.rows_affected() == 0 {
            return Err(MetaError::Conflict);
        }
        Ok(())
    }

    pub async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        let r = self.write_one(sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id.as_str())).await?;
        Ok(r.rows_affected() > 0)
    }

    /// Sessions untouched for longer than `idle`.
    pub async fn expired_uploads(&self, idle: Duration) -> Result<Vec<UploadSession>> {
        let cutoff = ms(SystemTime::now() - idle);
        let rows = sqlx::query(
            "SELECT id, repository, byte_offset, hash_state, driver_state, updated_at FROM uploads WHERE updated_at < $1 ORDER BY updated_at LIMIT 1000",
        )
        .bind(cutoff)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(upload_from_row).collect()
    }

    /// Which of `ids` have a session.
    pub async fn upload_exists(&self, id: &UploadId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS x FROM uploads WHERE id = $1").bind(id.as_str()).fetch_optional(&self.read).await?;
        Ok(row.is_some())
    }

    // ---- usage (metrics) ----

    /// Stored bytes and blobs in total, open upload sessions, and the `top` repositories by the
    /// bytes of the blobs linked to them. Full scans: call at most every few seconds.
    pub async fn storage_totals(&self, top: u32) -> Result<StorageTotals> {
        // SUM(bigint) is NUMERIC on PostgreSQL, which the Any driver cannot decode: cast.
        let t = sqlx::query("SELECT COUNT(*) AS blobs, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM blobs").fetch_one(&self.read).await?;
        let u = sqlx::query("SELECT COUNT(*) AS uploads FROM uploads").fetch_one(&self.read).await?;
        let rows = sqlx::query(
            "SELECT r.name AS name, CAST(SUM(b.size) AS BIGINT) AS bytes, COUNT(*) AS blobs \
             FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest \
             GROUP BY r.name ORDER BY bytes DESC, r.name LIMIT $1",
        )
        .bind(i64::from(top))
        .fetch_all(&self.read)
        .await?;
        Ok(StorageTotals {
            total_bytes: to_u64(&t, "bytes")?,
            blob_count: to_u64(&t, "blobs")?,
            open_uploads: to_u64(&u, "uploads")?,
            per_repo: rows
                .iter()
                .map(|r| Ok(RepoUsage { repository: r.try_get("name")?, bytes: to_u64(r, "bytes")?, blobs: to_u64(r, "blobs")? }))
                .collect::<Result<_>>()?,
        })
    }

    // ---- listings (berth migrate: copying one deployment into another) ----

    /// Blobs linked to `repo`, with their sizes, in digest order after `after`, at most `limit`.
    /// Empty if the repository does not exist.
    pub async fn repository_blobs(&self, repo: &RepoName, after: Option<&Digest>, limit: u32) -> Result<Vec<(Digest, u64)>> {
        let rows = sqlx::query(
            "SELECT rb.digest, b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
             JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest > $2 ORDER BY rb.digest LIMIT $3",
        )
        .bind(repo.as_str())
        .bind(after.map_or("", Digest::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((parse(r, "digest")?, to_u64(r, "size")?))).collect()
    }

    /// Manifests of `repo` (exact bytes and media type), in digest order after `after`, at most
    /// `limit`. Empty if the repository does not exist.
    pub async fn repository_manifests(&self, repo: &RepoName, after: Option<&Digest>, limit: u32) -> Result<Vec<StoredManifest>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.digest > $2 ORDER BY m.digest LIMIT $3",
        )
        .bind(repo.as_str())
        .bind(after.map_or("", Digest::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(Self::manifest_from_row).collect()
    }

    /// Tags of `repo` with the manifest each points at, in byte order after `after`, at most
    /// `limit`. Empty if the repository does not exist.
    pub async fn repository_tags(&self, repo: &RepoName, after: Option<&Tag>, limit: u32) -> Result<Vec<(Tag, Digest)>> {
        let rows = sqlx::query(
            "SELECT t.name, t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id \
             WHERE r.name = $1 AND t.name > $2 ORDER BY t.name LIMIT $3",
        )
        .bind(repo.as_str())
        .bind(after.map_or("", Tag::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((parse(r, "name")?, parse(r, "manifest_digest")?))).collect()
    }

    // ---- consistency checks (tests, fsck) ----

    /// Every blob digest recorded, with its size.
    pub async fn all_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let rows = sqlx::query("SELECT digest, size FROM blobs ORDER BY digest").fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok((parse(r, "digest")?, to_u64(r, "size")?))).collect()
    }
}

fn page(rows: &[AnyRow], limit: u32) -> Result<TagPage> {
    let mut names = rows.iter().map(|r| r.try_get::<String, _>("name")).collect::<Result<Vec<_>, _>>()?;
    let more = names.len() > limit as usize;
    names.truncate(limit as usize);
    Ok(TagPage { names, more })
}

fn upload_from_row(r: &AnyRow) -> Result<UploadSession> {
    let updated: i64 = r.try_get("updated_at")?;
    Ok(UploadSession {
        id: parse(r, "id")?,
        repository: parse(r, "repository")?,
        offset: to_u64(r, "byte_offset")?,
        hash_state: r.try_get("hash_state")?,
        driver_state: r.try_get("driver_state")?,
        updated_at: UNIX_EPOCH + Duration::from_millis(u64::try_from(updated).unwrap_or(0)),
    })
}

/// Bind a manifest's values in the column order both manifest inserts use: digest, media
/// type, artifact type, subject, annotations, content.
fn bind_manifest<'q>(q: AnyQuery<'q>, m: &NewManifest<'_>) -> AnyQuery<'q> {
    q.bind(m.digest.as_str()).bind(m.media_type).bind(m.artifact_type).bind(m.subject.map(Digest::as_str)).bind(m.annotations.as_deref()).bind(m.content)
}

/// Opens SQLite's write connection at `url`, configured.
pub(crate) fn sqlite_writer_connect(url: String) -> Connect {
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
            configure_sqlite(&mut conn, false).await?;
            Ok(conn)
        })
    })
}

/// Per-connection SQLite settings.
async fn configure_sqlite(conn: &mut sqlx::AnyConnection, read_only: bool) -> Result<(), sqlx::Error> {
    // WAL: readers never block the writer nor each other. busy_timeout covers the
    // checkpointer and other processes (berth CLI commands) sharing the file.
    conn.execute("PRAGMA journal_mode = WAL").await?;
    // Commits write the WAL without syncing it; `meta::writer` syncs it when durability is
    // asked for (`synchronous: full`), off the write connection.
    conn.execute("PRAGMA synchronous = NORMAL").await?;
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    // Statement journals (a multi-row statement inside a transaction keeps one, to
    // undo just that statement) and sort spills stay in memory: as files, SQLite
    // creates and unlinks one per statement, which cost garbage collection, whose
    // batches are such statements, a sixth of its time.
    conn.execute("PRAGMA temp_store = MEMORY").await?;
    if read_only {
        conn.execute("PRAGMA query_only = ON").await?;
    } else {
        // Every write of the process runs here: a page cache larger than SQLite's
        // default 2 MiB keeps the indexes a write walks in memory rather than re-read
        // from the operating system, statement after statement (it grows only as
        // pages are used).
        conn.execute("PRAGMA cache_size = -16384").await?;
        // Checkpoint every 32 MiB of WAL, not SQLite's 4 MiB: a page written by many
        // transactions in between (index interiors, hot leaves) is copied into the
        // database once per checkpoint, and a garbage collection's batches otherwise
        // spent a fifth of their time checkpointing.
        conn.execute("PRAGMA wal_autocheckpoint = 8192").await?;
    }
    Ok(())
}
