//! Storage quotas' side of the metadata database: how many distinct blob bytes the repositories
//! of a namespace (a repository pattern) link, and the check that keeps a push or mount from
//! taking a namespace over its limit. The engine says which quotas exist (`registry::policy`
//! hands them to [`MetaStore::with_quotas`]); this module counts and refuses, inside
//! `link_existing` and `link_new`, the two ways a blob gets linked. It knows nothing about
//! configuration files or HTTP.
//!
//! **What counts.** A namespace's usage is the sum of the sizes of the distinct blobs linked to
//! any repository whose name matches its pattern: a layer shared by ten repositories of the
//! namespace counts once, and a blob already counted costs nothing to link again. Manifests
//! are not counted (they live in the database, are small, and are bounded by
//! `manifests.max_size`).
//!
//! **How it is enforced, exactly.** `quota_usage` holds one row per namespace: `bytes`, an
//! upper bound of the namespace's usage, and `computed_at`, when it was last counted exactly.
//! Every link of a blob into a namespace with a quota happens in a transaction that first locks
//! that row (`FOR UPDATE` on PostgreSQL; on SQLite the single write connection serializes
//! transactions anyway), decides the blob's cost (zero if a repository of the namespace already
//! links it, read after the lock so a concurrent link of the same blob is seen), and adds the
//! cost to `bytes` in the same transaction as the link. So links into one namespace are
//! serialized across all nodes, and `bytes` never falls below the true usage: unlinks, garbage
//! collection and deletions lower the usage without touching the row, which only makes the
//! bound looser, never wrong. When the bound says a blob does not fit, or it is older than
//! [`COUNTER_MAX_AGE_MS`], the usage is counted exactly (one aggregate over the namespace's
//! links, still under the lock) before deciding: a push is refused only if the exact usage plus
//! its cost exceeds the limit, and never admitted over it. The common commit costs a row lock,
//! one indexed lookup by digest and one row update; the aggregate runs at most once per
//! namespace per [`COUNTER_MAX_AGE_MS`], plus once per push that is refused or close to refusal.
//!
//! The guarantee holds among nodes that share the quota configuration; a node started without
//! a quota links without counting, and its links are seen at the next exact count.
//!
//! Lock order: the blob's row (taken by the linking transaction first, see `meta::gc`), then
//! the quota rows in pattern order, then the link. Garbage collection never takes a quota row.

use std::collections::HashSet;

use oci::{Digest, RepoName, RepoPattern};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use crate::store::{MetaStore, RepoUsage, Tx, now_ms, to_u64};
use crate::{MetaError, Result};

/// A stored bound older than this is recounted exactly before it is trusted, which bounds how
/// long links made by a node without the quota (during a rolling configuration change) can go
/// unseen.
pub const COUNTER_MAX_AGE_MS: i64 = 60_000;

/// A storage limit on a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub namespace: RepoPattern,
    /// Bytes.
    pub limit: u64,
}

/// A namespace's usage: distinct blobs linked to its repositories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceUsage {
    pub bytes: u64,
    pub blobs: u64,
}

/// `text` for a LIKE pattern with `!` as the escape character (repository names may contain
/// `_`, a LIKE wildcard).
fn like_escape(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len() + 1), |mut s, c| {
        if matches!(c, '!' | '%' | '_') {
            s.push('!');
        }
        s.push(c);
        s
    })
}

/// The LIKE pattern every name matching `ns` also matches (a superset, narrowed in Rust).
fn like_superset(ns: &RepoPattern) -> String {
    format!("{}%", like_escape(ns.like_prefix()))
}

/// Whether a repository of `ns` links `digest`.
async fn in_namespace(conn: &mut AnyConnection, ns: &RepoPattern, digest: &Digest) -> Result<bool> {
    let rows = sqlx::query(
        "SELECT r.name AS name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
         WHERE rb.digest = $1 AND r.name LIKE $2 ESCAPE '!'",
    )
    .bind(digest.as_str())
    .bind(like_superset(ns))
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        if stored_name(r)?.is_some_and(|n| ns.matches(&n)) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn stored_name(row: &sqlx::any::AnyRow) -> Result<Option<RepoName>> {
    let s: String = row.try_get("name")?;
    // A name this version cannot parse matches no pattern (it cannot have been pushed to).
    Ok(s.parse().ok())
}

/// `ns`'s usage, counted now.
async fn count_usage(conn: &mut AnyConnection, ns: &RepoPattern) -> Result<NamespaceUsage> {
    // Patterns a prefix test decides exactly (`p/**`, `**`, a plain name) are summed by the
    // database; any other glob is narrowed by its literal prefix there and matched here.
    let exact = ns.subtree().map(|p| (p, if p.is_empty() { "%".to_owned() } else { format!("{}/%", like_escape(p)) })).or_else(|| ns.literal().map(|n| (n, String::new())));
    if let Some((name, like)) = exact {
        // SUM(bigint) is NUMERIC on PostgreSQL, which the Any driver cannot decode: cast.
        let row = sqlx::query(
            "SELECT COUNT(*) AS blobs, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes FROM blobs b WHERE b.digest IN \
             (SELECT rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
              WHERE r.name = $1 OR r.name LIKE $2 ESCAPE '!')",
        )
        .bind(name)
        .bind(like)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(NamespaceUsage { bytes: to_u64(&row, "bytes")?, blobs: to_u64(&row, "blobs")? });
    }
    let rows = sqlx::query(
        "SELECT r.name AS name, rb.digest AS digest, b.size AS size FROM repository_blobs rb \
         JOIN repositories r ON r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest WHERE r.name LIKE $1 ESCAPE '!'",
    )
    .bind(like_superset(ns))
    .fetch_all(&mut *conn)
    .await?;
    let mut seen = HashSet::new();
    let mut usage = NamespaceUsage::default();
    for r in &rows {
        if stored_name(r)?.is_some_and(|n| ns.matches(&n)) && seen.insert(r.try_get::<String, _>("digest")?) {
            usage.bytes += to_u64(r, "size")?;
            usage.blobs += 1;
        }
    }
    Ok(usage)
}

/// The quotas that apply to `repo`, each once, in the order their rows are locked (by pattern,
/// so two transactions needing the same rows cannot deadlock).
pub(crate) fn applicable<'a>(quotas: &'a [Quota], repo: &RepoName) -> Vec<&'a Quota> {
    let mut mine: Vec<&Quota> = quotas.iter().filter(|q| q.namespace.matches(repo)).collect();
    mine.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    mine.dedup_by(|a, b| a.namespace == b.namespace);
    mine
}

fn exceeded(q: &Quota, used: u64, needed: u64) -> MetaError {
    MetaError::QuotaExceeded { namespace: q.namespace.to_string(), limit: q.limit, used, needed }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl MetaStore {
    /// This store, charging every link of a blob (a push's commit, a mount) against `quotas`:
    /// a link that does not fit fails with [`MetaError::QuotaExceeded`] and changes nothing.
    pub fn with_quotas(self, quotas: Vec<Quota>) -> MetaStore {
        MetaStore { quotas: quotas.into(), ..self }
    }

    /// Charge linking `digest` (`size` bytes) to `repo` against every quota that applies, inside
    /// the linking transaction `tx`, before the link is written. Fails with
    /// [`MetaError::QuotaExceeded`] (the caller rolls back) if it does not fit.
    pub(crate) async fn charge_quotas(&self, tx: &mut Tx, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        for q in applicable(&self.quotas, repo) {
            let ns = q.namespace.as_str();
            sqlx::query("INSERT INTO quota_usage (namespace, bytes, computed_at) VALUES ($1, 0, 0) ON CONFLICT (namespace) DO NOTHING")
                .bind(ns)
                .execute(&mut **tx)
                .await?;
            let lock = format!("SELECT bytes, computed_at FROM quota_usage WHERE namespace = $1{}", self.for_update());
            let row = sqlx::query(AssertSqlSafe(lock)).bind(ns).fetch_one(&mut **tx).await?;
            // After the lock: a link of the same blob committed meanwhile is seen.
            if in_namespace(tx, &q.namespace, digest).await? {
                continue;
            }
            let (bound, counted_at) = (to_u64(&row, "bytes")?, row.try_get::<i64, _>("computed_at")?);
            let now = now_ms();
            if now - counted_at < COUNTER_MAX_AGE_MS && bound.saturating_add(size) <= q.limit {
                sqlx::query("UPDATE quota_usage SET bytes = $2 WHERE namespace = $1").bind(ns).bind(to_i64(bound + size)).execute(&mut **tx).await?;
                continue;
            }
            let used = count_usage(tx, &q.namespace).await?.bytes;
            if used.saturating_add(size) > q.limit {
                return Err(exceeded(q, used, size));
            }
            sqlx::query("UPDATE quota_usage SET bytes = $2, computed_at = $3 WHERE namespace = $1")
                .bind(ns)
                .bind(to_i64(used + size))
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Whether linking `digest` (`size` bytes) to `repo` would fit every quota that applies,
    /// as things stand: `Err(QuotaExceeded)` if not. No lock is taken (the linking transaction
    /// decides); a push asks before it stores a new blob, so that a refusal leaves no bytes
    /// behind.
    pub async fn quota_check(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let mine = applicable(&self.quotas, repo);
        if mine.is_empty() {
            return Ok(());
        }
        let mut conn = self.read.acquire().await?;
        for q in mine {
            if in_namespace(&mut conn, &q.namespace, digest).await? {
                continue;
            }
            let row = sqlx::query("SELECT bytes, computed_at FROM quota_usage WHERE namespace = $1").bind(q.namespace.as_str()).fetch_optional(&mut *conn).await?;
            if let Some(row) = row
                && now_ms() - row.try_get::<i64, _>("computed_at")? < COUNTER_MAX_AGE_MS
                && to_u64(&row, "bytes")?.saturating_add(size) <= q.limit
            {
                continue;
            }
            let used = count_usage(&mut conn, &q.namespace).await?.bytes;
            if used.saturating_add(size) > q.limit {
                return Err(exceeded(q, used, size));
            }
        }
        Ok(())
    }

    /// `ns`'s usage, counted now (for reports; a full aggregate over the namespace's links).
    pub async fn namespace_usage(&self, ns: &RepoPattern) -> Result<NamespaceUsage> {
        let mut conn = self.read.acquire().await?;
        count_usage(&mut conn, ns).await
    }

    /// Every repository with the bytes and number of blobs linked to it (a blob shared by two
    /// repositories counts in each), largest first.
    pub async fn repository_usage(&self) -> Result<Vec<RepoUsage>> {
        let rows = sqlx::query(
            "SELECT r.name AS name, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes, COUNT(b.digest) AS blobs \
             FROM repositories r LEFT JOIN repository_blobs rb ON rb.repository_id = r.id LEFT JOIN blobs b ON b.digest = rb.digest \
             GROUP BY r.name ORDER BY bytes DESC, r.name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(RepoUsage { repository: r.try_get("name")?, bytes: to_u64(r, "bytes")?, blobs: to_u64(r, "blobs")? })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_escape("a_b%c!d"), "a!_b!%c!!d");
        assert_eq!(like_superset(&"team_a/**".parse().expect("pattern")), "team!_a%");
        assert_eq!(like_superset(&"**".parse().expect("pattern")), "%");
    }
}
