//! Garbage collection's side of the metadata database: finding what nothing uses any more, and
//! removing it under the row locks that make it safe while pushes go on. The engine drives it
//! (`registry::gc`) and deletes the bytes; nothing here touches storage.
//!
//! The protocol (every step is one transaction; "lock" means a PostgreSQL row lock, and on
//! SQLite the single write connection, which runs one transaction at a time):
//!
//! 1. **Links.** A repository's link to a blob is garbage when no manifest of that repository
//!    references the blob and the link was last created or mounted (`used_at`) before the
//!    cutoff (now minus the grace period). [`MetaStore::gc_unlink`] locks the blob's row and then
//!    the link `FOR UPDATE`, re-checks both conditions with fresh statements, and deletes it. A manifest
//!    PUT share-locks every link it references before inserting its references, so either the
//!    collection waits and then sees the reference (and keeps the link), or it went first and
//!    the manifest PUT reports the blob missing (`MANIFEST_BLOB_UNKNOWN`: the client pushes the
//!    blob again). A mount or a push re-using the blob refreshes `used_at` under the same lock.
//! 2. **Blobs.** A blob with no link left whose last use is before the cutoff is garbage.
//!    [`MetaStore::gc_forget_blobs`] locks the blob's row `FOR UPDATE`, re-checks, writes a
//!    tombstone and deletes the row; only after that commits does the engine delete the bytes.
//!    The tombstone stays *pending* until the bytes are deleted ([`MetaStore::gc_bytes_deleted`];
//!    a collection that stopped in between is finished by the next one).
//!    A push that finds the blob recorded links it under a share lock on the same row (so it
//!    either waits for the collection and finds the blob absent, or the collection waits and
//!    sees its link). A push that finds it absent with a pending tombstone waits (its copy
//!    could be removed by the pending delete). A push that finds it absent otherwise stores its
//!    own copy and then records it with the tombstone mark it read before storing: if a
//!    tombstone for the digest appeared in between (the blob was recorded again by another push
//!    and collected again), that collection's delete may have removed the new copy, so the push
//!    fails cleanly (503, the client retries) instead of recording bytes that are gone.
//!
//! 0. **Untagged manifests** (only with `gc.untagged.enabled`, before the links).
//!    [`MetaStore::gc_untagged_candidates`] lists manifests with no tag, in no index of their
//!    repository, not a referrer of a manifest still there, that lost what kept them (a tag
//!    moved away or deleted, their index or subject deleted: `manifests.untagged_at`, set by
//!    those writers) or were pushed, if nothing ever kept them, before the cutoff.
//!    [`MetaStore::gc_delete_untagged`] deletes each with the protocol of
//!    `MetaStore::delete_untagged_manifest` (decide, lock the blob links of everything decided,
//!    decide again), the age part of both decisions and of the `DELETE` itself, so a tag or a
//!    PUT of the manifest racing the deletion keeps it. Its links' grace period starts then:
//!    steps 1 and 2 free the blobs later, as after a manifest DELETE.
//!
//! Nothing is ever decided from a walk of the blob storage.

use oci::Digest;
use sqlx::{AssertSqlSafe, Row};

use crate::schema::Dialect;
use crate::store::{MetaStore, now_ms, to_u64};
use crate::{MetaError, Result};

/// A link that may be garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCandidate {
    pub repository_id: i64,
    pub repository: String,
    pub digest: String,
}

/// A blob that may be garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCandidate {
    pub digest: Digest,
    pub size: u64,
}

/// "This link is referenced by a manifest of its repository."
const REFERENCED: &str = "EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = rb.repository_id AND mb.blob_digest = rb.digest)";

fn parse_digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|e| MetaError::Corrupt(format!("stored digest {s:?}: {e}")))
}

impl MetaStore {
    /// How many rows a collection should change per transaction. On SQLite every write of the
    /// process goes through one connection in turn, so a push's write waits behind at most one
    /// collection transaction: a few milliseconds at 100 rows with the set-based statements of
    /// that path. (50 rows kept a concurrent load a little better but made the collection of
    /// 50,000 blobs under load take 55 s instead of 51; see `docs/benchmarks.md`.) On
    /// PostgreSQL row locks let them run side by side, row by row: smaller ones.
    pub fn gc_rows_per_transaction(&self) -> usize {
        match self.dialect {
            Dialect::Sqlite => 100,
            Dialect::Postgres => 50,
        }
    }

    /// How long a collection should leave the database to other writers after one of its
    /// transactions took `took` (waiting for the connection included). On SQLite pushes queue
    /// behind the collection for the one write connection: giving back three times the time it
    /// took holds the collection to about a quarter of that connection while pushes run, and
    /// backs it off further when they make it wait. (Twice, a third of it, was the setting
    /// until the link tables became WITHOUT ROWID; the collection of 50,000 blobs under load
    /// then took 51-53 s, and 33 s after. The time saved went into a gentler pace.) On
    /// PostgreSQL nothing waits on it but the rows it locks: no pause.
    pub fn gc_pause(&self, took: std::time::Duration) -> std::time::Duration {
        match self.dialect {
            Dialect::Sqlite => took * 3,
            Dialect::Postgres => std::time::Duration::ZERO,
        }
    }

    /// Up to `limit` links last used before `cutoff_ms` that no manifest of their repository
    /// references, after `after` (keyset order: repository id, digest).
    pub async fn gc_link_candidates(&self, cutoff_ms: i64, after: Option<&LinkCandidate>, limit: u32) -> Result<Vec<LinkCandidate>> {
        let (after_repo, after_digest) = after.map_or((-1, ""), |c| (c.repository_id, c.digest.as_str()));
        let sql = format!(
            "SELECT rb.repository_id AS rid, r.name AS name, rb.digest AS digest FROM repository_blobs rb \
             JOIN repositories r ON r.id = rb.repository_id \
             WHERE rb.used_at < $1 AND NOT {REFERENCED} \
             AND (rb.repository_id > $2 OR (rb.repository_id = $2 AND rb.digest > $3)) \
             ORDER BY rb.repository_id, rb.digest LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(cutoff_ms).bind(after_repo).bind(after_digest).bind(i64::from(limit)).fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| Ok(LinkCandidate { repository_id: r.try_get("rid")?, repository: r.try_get("name")?, digest: r.try_get("digest")? }))
            .collect()
    }

    /// Remove the links of `batch` that are still unreferenced and last used before
    /// `cutoff_ms`, in one transaction. Returns how many were removed.
    ///
    /// Lock order on PostgreSQL, here and in every writer: a blob's row, then its links. Rows
    /// are taken in digest order, as a manifest PUT takes its links, so no two transactions
    /// wait on each other in a cycle.
    pub async fn gc_unlink(&self, batch: &[LinkCandidate], cutoff_ms: i64) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        match self.dialect {
            Dialect::Sqlite => self.gc_unlink_set(batch, cutoff_ms).await,
            Dialect::Postgres => self.gc_unlink_rows(batch, cutoff_ms).await,
        }
    }

    /// SQLite: the whole batch in two statements. The write connection runs one transaction at
    /// a time, so every statement of this one already sees everything committed before it and
    /// nothing can change in between: the per-row locks and re-checks of the PostgreSQL path
    /// have nothing to add, and each statement costs a hop to SQLite's worker thread while
    /// pushes queue behind this transaction.
    async fn gc_unlink_set(&self, batch: &[LinkCandidate], cutoff_ms: i64) -> Result<u64> {
        let n = batch.len();
        let values: Vec<String> = (0..n).map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3)).collect();
        let digests: Vec<String> = (0..n).map(|i| format!("${}", 2 * n + 2 + i)).collect();
        // `rb.digest IN` lets SQLite find the rows by index; the row values alone would scan.
        // (RETURNING cannot name the alias in SQLite.)
        let delete = format!(
            "DELETE FROM repository_blobs AS rb WHERE rb.digest IN ({}) AND (rb.repository_id, rb.digest) IN (VALUES {}) \
             AND rb.used_at < $1 AND NOT {REFERENCED} RETURNING digest, used_at",
            digests.join(", "),
            values.join(", ")
        );
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(AssertSqlSafe(delete)).bind(cutoff_ms);
        for c in batch {
            q = q.bind(c.repository_id).bind(&c.digest);
        }
        for c in batch {
            q = q.bind(&c.digest);
        }
        let rows = q.fetch_all(&mut *tx).await?;
        // Each blob was last in use when its latest removed link was: its own grace period
        // does not restart.
        let mut released: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for r in &rows {
            let used_at: i64 = r.try_get("used_at")?;
            let e = released.entry(r.try_get("digest")?).or_insert(used_at);
            *e = (*e).max(used_at);
        }
        if !released.is_empty() {
            let values: Vec<String> = (0..released.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
            let update = format!(
                "UPDATE blobs SET released_at = MAX(COALESCE(blobs.released_at, v.column2), v.column2) \
                 FROM (VALUES {}) AS v WHERE blobs.digest = v.column1",
                values.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(update));
            for (digest, used_at) in &released {
                q = q.bind(digest.as_str()).bind(*used_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// PostgreSQL: row by row, under the locks of the protocol in the module docs.
    async fn gc_unlink_rows(&self, batch: &[LinkCandidate], cutoff_ms: i64) -> Result<u64> {
        let mut batch: Vec<&LinkCandidate> = batch.iter().collect();
        batch.sort_by(|a, b| (&a.digest, a.repository_id).cmp(&(&b.digest, b.repository_id)));
        let mut tx = self.begin_write().await?;
        let lock_blob = format!("SELECT 1 AS x FROM blobs WHERE digest = $1{}", self.for_update());
        let lock_link = format!("SELECT used_at FROM repository_blobs WHERE repository_id = $1 AND digest = $2{}", self.for_update());
        let mut removed = 0;
        for c in batch {
            sqlx::query(AssertSqlSafe(lock_blob.as_str())).bind(&c.digest).fetch_optional(&mut *tx).await?;
            let Some(row) = sqlx::query(AssertSqlSafe(lock_link.as_str())).bind(c.repository_id).bind(&c.digest).fetch_optional(&mut *tx).await? else {
                continue;
            };
            let used_at: i64 = row.try_get("used_at")?;
            if used_at >= cutoff_ms {
                continue;
            }
            // A fresh statement after the lock: it sees references committed while we waited.
            let referenced = sqlx::query("SELECT 1 AS x FROM manifest_blobs WHERE repository_id = $1 AND blob_digest = $2 LIMIT 1")
                .bind(c.repository_id)
                .bind(&c.digest)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if referenced {
                continue;
            }
            sqlx::query("DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2").bind(c.repository_id).bind(&c.digest).execute(&mut *tx).await?;
            // The blob was last in use when this link was: its own grace period does not restart.
            sqlx::query("UPDATE blobs SET released_at = CASE WHEN released_at IS NULL OR released_at < $2 THEN $2 ELSE released_at END WHERE digest = $1")
                .bind(&c.digest)
                .bind(used_at)
                .execute(&mut *tx)
                .await?;
            removed += 1;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Up to `limit` blobs with no link, last used before `cutoff_ms`, after `after` (by digest).
    pub async fn gc_blob_candidates(&self, cutoff_ms: i64, after: Option<&Digest>, limit: u32) -> Result<Vec<BlobCandidate>> {
        let rows = sqlx::query(
            "SELECT digest, size FROM blobs b WHERE COALESCE(b.released_at, b.created_at) < $1 \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest) \
             AND b.digest > $2 ORDER BY b.digest LIMIT $3",
        )
        .bind(cutoff_ms)
        .bind(after.map_or("", Digest::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(BlobCandidate { digest: parse_digest(&r.try_get::<String, _>("digest")?)?, size: to_u64(r, "size")? })).collect()
    }

    /// What a collection with `cutoff_ms` would delete, without changing anything: blobs whose
    /// every link is garbage (or that have none), last used before the cutoff. Keyset by digest.
    pub async fn gc_dry_run(&self, cutoff_ms: i64, after: Option<&Digest>, limit: u32) -> Result<Vec<BlobCandidate>> {
        let sql = format!(
            "SELECT digest, size FROM blobs b WHERE COALESCE(b.released_at, b.created_at) < $1 \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest AND (rb.used_at >= $1 OR {REFERENCED})) \
             AND b.digest > $2 ORDER BY b.digest LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(cutoff_ms).bind(after.map_or("", Digest::as_str)).bind(i64::from(limit)).fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok(BlobCandidate { digest: parse_digest(&r.try_get::<String, _>("digest")?)?, size: to_u64(r, "size")? })).collect()
    }

    /// Forget the blobs of `batch` that still have no link and were last used before
    /// `cutoff_ms`: for each, a pending tombstone is written and the row deleted, all in one
    /// transaction. Returns those forgotten with their tombstone ids; the caller deletes their
    /// bytes and then calls [`MetaStore::gc_bytes_deleted`].
    pub async fn gc_forget_blobs(&self, batch: &[Digest], cutoff_ms: i64) -> Result<Vec<(i64, Digest)>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match self.dialect {
            Dialect::Sqlite => self.gc_forget_blobs_set(batch, cutoff_ms).await,
            Dialect::Postgres => self.gc_forget_blobs_rows(batch, cutoff_ms).await,
        }
    }

    /// SQLite: the whole batch in two statements (see [`MetaStore::gc_unlink_set`] for why
    /// that is the same protocol there).
    async fn gc_forget_blobs_set(&self, batch: &[Digest], cutoff_ms: i64) -> Result<Vec<(i64, Digest)>> {
        let placeholders: Vec<String> = (0..batch.len()).map(|i| format!("${}", i + 2)).collect();
        let delete = format!(
            "DELETE FROM blobs AS b WHERE b.digest IN ({}) AND COALESCE(b.released_at, b.created_at) < $1 \
             AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest) RETURNING digest",
            placeholders.join(", ")
        );
        let mut tx = self.begin_write().await?;
        let mut q = sqlx::query(AssertSqlSafe(delete)).bind(cutoff_ms);
        for d in batch {
            q = q.bind(d.as_str());
        }
        let deleted: Vec<String> = q.fetch_all(&mut *tx).await?.iter().map(|r| r.try_get("digest")).collect::<std::result::Result<_, _>>()?;
        let mut forgotten = Vec::with_capacity(deleted.len());
        if !deleted.is_empty() {
            let values: Vec<String> = (0..deleted.len()).map(|i| format!("(${}, $1)", i + 2)).collect();
            let insert = format!("INSERT INTO blob_tombstones (digest, deleted_at) VALUES {} RETURNING id, digest", values.join(", "));
            let mut q = sqlx::query(AssertSqlSafe(insert)).bind(now_ms());
            for d in &deleted {
                q = q.bind(d.as_str());
            }
            for r in q.fetch_all(&mut *tx).await? {
                forgotten.push((r.try_get("id")?, parse_digest(&r.try_get::<String, _>("digest")?)?));
            }
        }
        tx.commit().await?;
        Ok(forgotten)
    }

    /// PostgreSQL: row by row, under the locks of the protocol in the module docs.
    async fn gc_forget_blobs_rows(&self, batch: &[Digest], cutoff_ms: i64) -> Result<Vec<(i64, Digest)>> {
        let mut batch: Vec<&Digest> = batch.iter().collect();
        batch.sort();
        let mut tx = self.begin_write().await?;
        let lock = format!("SELECT COALESCE(released_at, created_at) AS last FROM blobs WHERE digest = $1{}", self.for_update());
        let now = now_ms();
        let mut forgotten = Vec::new();
        for digest in batch {
            let Some(row) = sqlx::query(AssertSqlSafe(lock.as_str())).bind(digest.as_str()).fetch_optional(&mut *tx).await? else {
                continue;
            };
            if row.try_get::<i64, _>("last")? >= cutoff_ms {
                continue;
            }
            let linked = sqlx::query("SELECT 1 AS x FROM repository_blobs WHERE digest = $1 LIMIT 1").bind(digest.as_str()).fetch_optional(&mut *tx).await?.is_some();
            if linked {
                continue;
            }
            let row = sqlx::query("INSERT INTO blob_tombstones (digest, deleted_at) VALUES ($1, $2) RETURNING id")
                .bind(digest.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM blobs WHERE digest = $1").bind(digest.as_str()).execute(&mut *tx).await?;
            forgotten.push((row.try_get("id")?, digest.clone()));
        }
        tx.commit().await?;
        Ok(forgotten)
    }

    /// The bytes of these tombstones' blobs are deleted (or were never there): pushes of those
    /// digests may store new copies again.
    pub async fn gc_bytes_deleted(&self, tombstones: &[i64]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        for chunk in tombstones.chunks(500) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!("UPDATE blob_tombstones SET storage_deleted_at = $1 WHERE id IN ({})", placeholders.join(", "));
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Tombstones whose bytes were not confirmed deleted, written before `before_ms`: left by
    /// a collection that stopped (crash, shutdown) between forgetting blobs and deleting them.
    pub async fn gc_pending_tombstones(&self, before_ms: i64) -> Result<Vec<(i64, Digest)>> {
        let rows = sqlx::query("SELECT id, digest FROM blob_tombstones WHERE storage_deleted_at IS NULL AND deleted_at < $1 ORDER BY id")
            .bind(before_ms)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, parse_digest(&r.try_get::<String, _>("digest")?)?))).collect()
    }

    /// Delete tombstones written before `before_ms` (a push's mark is read moments before it
    /// records its blob, so old tombstones can no longer matter). Returns how many.
    pub async fn gc_prune_tombstones(&self, before_ms: i64) -> Result<u64> {
        let r = self.write_one(sqlx::query("DELETE FROM blob_tombstones WHERE deleted_at < $1 AND storage_deleted_at IS NOT NULL").bind(before_ms)).await?;
        Ok(r.rows_affected())
    }
}
