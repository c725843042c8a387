//! Garbage collection's side of the metadata database: finding what nothing uses any more, and
//! removing it under the row locks that make it safe while pushes go on. The engine drives it
//! (`registry::gc`) and deletes the bytes; nothing here touches storage.
//!
//! The protocol (every step is one transaction; "lock" means a PostgreSQL row lock, and on
//! SQLite the single write connection, which runs one transaction at a time):
//!
//! 1. **Links.** A repository's link to a blob is garbage when no manifest of that repository
//!    references the blob and the link was last created or mounted (`used_at`) before the
//!    cutoff (now minus the grace period). [`MetaStore::gc_unlink`] locks the link
//!    `FOR UPDATE`, re-checks both conditions with fresh statements, and deletes it. A manifest
//!    PUT share-locks every link it references before inserting its references, so either the
//!    collection waits and then sees the reference (and keeps the link), or it went first and
//!    the manifest PUT reports the blob missing (`MANIFEST_BLOB_UNKNOWN`: the client pushes the
//!    blob again). A mount or a push re-using the blob refreshes `used_at` under the same lock.
//! 2. **Blobs.** A blob with no link left whose last use is before the cutoff is garbage.
//!    [`MetaStore::gc_forget_blob`] locks the blob's row `FOR UPDATE`, re-checks, writes a
//!    tombstone and deletes the row; only after that commits does the engine delete the bytes.
//!    A push that finds the blob recorded links it under a share lock on the same row (so it
//!    either waits for the collection and finds the blob absent, or the collection waits and
//!    sees its link). A push that finds it absent stores its own copy and then records it with
//!    the tombstone mark it read before storing: if a tombstone for the digest appeared in
//!    between, the collection's storage delete may have removed the new copy, so the push
//!    fails cleanly (503, the client retries) instead of recording bytes that are gone.
//!
//! Nothing is ever decided from a walk of the blob storage.

use oci::Digest;
use sqlx::{AssertSqlSafe, Row};

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

    /// Remove the link `c` if it is still unreferenced and last used before `cutoff_ms`.
    /// Returns whether it was removed.
    pub async fn gc_unlink(&self, c: &LinkCandidate, cutoff_ms: i64) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let q = format!("SELECT used_at FROM repository_blobs WHERE repository_id = $1 AND digest = $2{}", self.for_update());
        let Some(row) = sqlx::query(AssertSqlSafe(q)).bind(c.repository_id).bind(&c.digest).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let used_at: i64 = row.try_get("used_at")?;
        if used_at >= cutoff_ms {
            return Ok(false);
        }
        // A fresh statement after the lock: it sees references committed while we waited.
        let referenced = sqlx::query("SELECT 1 AS x FROM manifest_blobs WHERE repository_id = $1 AND blob_digest = $2 LIMIT 1")
            .bind(c.repository_id)
            .bind(&c.digest)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if referenced {
            return Ok(false);
        }
        sqlx::query("DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2").bind(c.repository_id).bind(&c.digest).execute(&mut *tx).await?;
        // The blob was last in use when this link was: its own grace period does not restart.
        sqlx::query("UPDATE blobs SET released_at = CASE WHEN released_at IS NULL OR released_at < $2 THEN $2 ELSE released_at END WHERE digest = $1")
            .bind(&c.digest)
            .bind(used_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
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

    /// Forget blob `digest` if it still has no link and was last used before `cutoff_ms`: a
    /// tombstone is written and the row deleted, in one transaction. Returns whether it was;
    /// the caller then deletes the bytes.
    pub async fn gc_forget_blob(&self, digest: &Digest, cutoff_ms: i64) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let q = format!("SELECT COALESCE(released_at, created_at) AS last FROM blobs WHERE digest = $1{}", self.for_update());
        let Some(row) = sqlx::query(AssertSqlSafe(q)).bind(digest.as_str()).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        if row.try_get::<i64, _>("last")? >= cutoff_ms {
            return Ok(false);
        }
        let linked = sqlx::query("SELECT 1 AS x FROM repository_blobs WHERE digest = $1 LIMIT 1").bind(digest.as_str()).fetch_optional(&mut *tx).await?.is_some();
        if linked {
            return Ok(false);
        }
        sqlx::query("INSERT INTO blob_tombstones (digest, deleted_at) VALUES ($1, $2)").bind(digest.as_str()).bind(now_ms()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1").bind(digest.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Delete tombstones written before `before_ms` (a push's mark is read moments before it
    /// records its blob, so old tombstones can no longer matter). Returns how many.
    pub async fn gc_prune_tombstones(&self, before_ms: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM blob_tombstones WHERE deleted_at < $1").bind(before_ms).execute(&self.write).await?;
        Ok(r.rows_affected())
    }
}
