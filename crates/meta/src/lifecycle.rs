//! The lifecycle side of the metadata database: deleting a whole repository, listing tags with
//! the time they were last pushed (what retention decides on), and deleting a manifest only
//! when nothing keeps it any more (what makes retention free storage).
//!
//! Tags themselves are deleted through [`MetaStore::delete_tag`], the API's own path, so every
//! rule that guards a tag there (immutable tags) guards it against retention and bulk deletes
//! too. Nothing here decides *which* tags go (that is policy, in `registry::retention`), and
//! nothing here touches blob bytes: a deleted repository's blobs are left to garbage
//! collection, their grace period starting at the deletion.
//!
//! Locks (PostgreSQL; on SQLite the single write connection serializes writers) follow the order
//! of `meta::gc`: a blob's row, then its links, each in digest order.

use std::collections::HashSet;

use oci::{Digest, RepoName, Tag, UploadId};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::events::{NewEvent, insert_events};
use crate::store::{MetaStore, Tx, now_ms};
use crate::{MetaError, Result};

/// A tag with the manifest it points at and when it was last pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub tag: Tag,
    pub digest: Digest,
    /// Milliseconds since the Unix epoch: the last PUT that pointed the tag (moved or not).
    pub updated_at: i64,
}

/// What a repository holds, as counted by [`MetaStore::repository_summary`] or removed by
/// [`MetaStore::delete_repository`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepositorySummary {
    pub tags: u64,
    pub manifests: u64,
    /// Links to blobs (the blobs themselves are garbage collection's business).
    pub blob_links: u64,
    /// Upload sessions in progress.
    pub uploads: u64,
}

/// A repository deletion: what was removed, and the upload sessions whose bytes the caller
/// should discard (the janitor would reclaim them after `uploads.expiry` otherwise).
#[derive(Debug, Clone)]
pub struct RepositoryDeletion {
    pub removed: RepositorySummary,
    /// Session id and blob-store driver state of each upload that was in progress.
    pub uploads: Vec<(UploadId, Vec<u8>)>,
}

/// Why a manifest was deleted along with the one asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The manifest asked for.
    Root,
    /// A referrer (its `subject` is a deleted manifest): it describes something gone.
    Referrer,
    /// A child of a deleted index that nothing else keeps.
    Child,
}

/// One manifest deleted by [`MetaStore::delete_untagged_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub role: Role,
}

/// Why [`MetaStore::delete_untagged_manifest`] kept the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptBecause {
    /// It is not (any more) in the repository.
    Gone,
    /// A tag points at it (or at a referrer of it).
    Tagged { manifest: Digest, tag: String },
    /// An index that stays lists it (or a referrer of it).
    InIndex { manifest: Digest, index: Digest },
    /// What keeps it changed while it was being deleted; the next run decides again.
    Changed,
    /// It (or a referrer of it) lost what kept it, or was pushed, too recently for
    /// `gc.untagged.older_than`.
    Recent { manifest: Digest },
}

impl std::fmt::Display for KeptBecause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeptBecause::Gone => write!(f, "not in the repository"),
            KeptBecause::Tagged { manifest, tag } => write!(f, "{manifest} is tagged {tag}"),
            KeptBecause::InIndex { manifest, index } => write!(f, "{manifest} is listed by index {index}"),
            KeptBecause::Changed => write!(f, "changed while being deleted"),
            KeptBecause::Recent { manifest } => write!(f, "{manifest} was untagged or pushed too recently"),
        }
    }
}

/// An untagged manifest garbage collection may delete (see
/// [`MetaStore::gc_untagged_candidates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntaggedCandidate {
    pub repository_id: i64,
    /// The repository's name as stored.
    pub repository: String,
    pub digest: Digest,
}

/// The outcome of [`MetaStore::delete_untagged_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UntaggedOutcome {
    /// Deleted, with its referrers and the children nothing else keeps (the asked-for
    /// manifest first).
    Deleted(Vec<DeletedManifest>),
    Kept(KeptBecause),
}

fn parse<T: std::str::FromStr>(row: &AnyRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(col)?;
    s.parse().map_err(|e| MetaError::Corrupt(format!("{col} {s:?}: {e}")))
}

/// `$first, $first+1, ...`: `n` numbered placeholders (only these reach generated SQL text).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Statements per round trip when a list of digests is bound (well under both databases'
/// parameter limits).
const CHUNK: usize = 500;

impl MetaStore {
    async fn repository_id(&self, repo: &RepoName) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&self.read).await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// What `repo` holds, or `None` if it does not exist.
    pub async fn repository_summary(&self, repo: &RepoName) -> Result<Option<RepositorySummary>> {
        let Some(id) = self.repository_id(repo).await? else { return Ok(None) };
        let n = |table: &'static str, col: &'static str| {
            let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {col} = $1");
            async move { Ok::<_, MetaError>(u64::try_from(sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_one(&self.read).await?.try_get::<i64, _>("n")?).unwrap_or(0)) }
        };
        let uploads = sqlx::query("SELECT COUNT(*) AS n FROM uploads WHERE repository = $1").bind(repo.as_str()).fetch_one(&self.read).await?;
        Ok(Some(RepositorySummary {
            tags: n("tags", "repository_id").await?,
            manifests: n("manifests", "repository_id").await?,
            blob_links: n("repository_blobs", "repository_id").await?,
            uploads: u64::try_from(uploads.try_get::<i64, _>("n")?).unwrap_or(0),
        }))
    }

    /// Delete `repo` and everything it holds (tags, manifests and their references, blob
    /// links, upload sessions) in one transaction, recording `events` in it. The blobs that
    /// lost a link start their garbage collection grace period now. `None` if it did not exist.
    /// Fails with [`MetaError::ImmutableTag`] (and deletes nothing) if `protected` says one of
    /// its tags is immutable.
    pub async fn delete_repository(
        &self,
        repo: &RepoName,
        protected: Option<&(dyn Fn(&str) -> bool + Sync)>,
        events: &[NewEvent],
    ) -> Result<Option<RepositoryDeletion>> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        // Lock order of `meta::gc`: the blobs' rows, then the links, in digest order (then the
        // tags, which a manifest PUT takes after its links). The repository's own row goes
        // last: taking it first would deadlock against a manifest PUT that holds its links and
        // then checks the repository (a foreign key).
        let lock_blobs = format!(
            "SELECT digest FROM blobs WHERE digest IN (SELECT digest FROM repository_blobs WHERE repository_id = $1) ORDER BY digest{}",
            self.for_update()
        );
        sqlx::query(AssertSqlSafe(lock_blobs)).bind(id).fetch_all(&mut *tx).await?;
        let lock_links = format!("SELECT digest FROM repository_blobs WHERE repository_id = $1 ORDER BY digest{}", self.for_update());
        sqlx::query(AssertSqlSafe(lock_links)).bind(id).fetch_all(&mut *tx).await?;
        if let Some(protected) = protected {
            // Tags are upserted under their rows' locks (after the links, as here): locking them
            // makes a push of a protected tag either finish first (and be seen) or wait.
            let q = format!("SELECT name FROM tags WHERE repository_id = $1 ORDER BY name{}", self.for_update());
            for row in sqlx::query(AssertSqlSafe(q)).bind(id).fetch_all(&mut *tx).await? {
                let name: String = row.try_get("name")?;
                if protected(&name) {
                    return Err(MetaError::ImmutableTag(name));
                }
            }
        }
        // The grace period of every blob this repository held starts now (a blob another
        // repository still links is not garbage whatever this says).
        let now = now_ms();
        sqlx::query(
            "UPDATE blobs SET released_at = $2 WHERE digest IN (SELECT digest FROM repository_blobs WHERE repository_id = $1) \
             AND (released_at IS NULL OR released_at < $2)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let uploads = sqlx::query("SELECT id, driver_state FROM uploads WHERE repository = $1 ORDER BY id").bind(repo.as_str()).fetch_all(&mut *tx).await?;
        let uploads = uploads.iter().map(|r| Ok((parse(r, "id")?, r.try_get("driver_state")?))).collect::<Result<Vec<(UploadId, Vec<u8>)>>>()?;
        let mut deleted = Vec::new();
        for stmt in [
            "DELETE FROM tags WHERE repository_id = $1",
            "DELETE FROM manifest_blobs WHERE repository_id = $1",
            "DELETE FROM manifest_children WHERE repository_id = $1",
            "DELETE FROM manifests WHERE repository_id = $1",
            "DELETE FROM repository_blobs WHERE repository_id = $1",
        ] {
            deleted.push(sqlx::query(stmt).bind(id).execute(&mut *tx).await?.rows_affected());
        }
        let removed = RepositorySummary {
            tags: deleted[0],
            manifests: deleted[3],
            blob_links: deleted[4],
            uploads: sqlx::query("DELETE FROM uploads WHERE repository = $1").bind(repo.as_str()).execute(&mut *tx).await?.rows_affected(),
        };
        sqlx::query("DELETE FROM repositories WHERE id = $1").bind(id).execute(&mut *tx).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(Some(RepositoryDeletion { removed, uploads }))
    }

    /// Every tag of `repo` with its manifest and last push time, newest first (ties in byte
    /// order of the name). `None` if the repository does not exist.
    pub async fn repository_tag_times(&self, repo: &RepoName) -> Result<Option<Vec<TagInfo>>> {
        let Some(id) = self.repository_id(repo).await? else { return Ok(None) };
        let rows = sqlx::query("SELECT name, manifest_digest, updated_at FROM tags WHERE repository_id = $1 ORDER BY updated_at DESC, name")
            .bind(id)
            .fetch_all(&self.read)
            .await?;
        let tags = rows
            .iter()
            .map(|r| Ok(TagInfo { tag: parse(r, "name")?, digest: parse(r, "manifest_digest")?, updated_at: r.try_get("updated_at")? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(tags))
    }

    /// One tag's manifest and last push time, read from the write side (so a check right
    /// before a deletion sees the latest push).
    pub async fn tag_info(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagInfo>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT t.name, t.manifest_digest, t.updated_at FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|r| Ok(TagInfo { tag: parse(&r, "name")?, digest: parse(&r, "manifest_digest")?, updated_at: r.try_get("updated_at")? })).transpose()
    }

    /// Delete manifest `digest` of `repo` if nothing keeps it: no tag points at it, no index
    /// that stays lists it, and no referrer of it (a manifest whose subject it is) is kept by
    /// a tag or an index. Its referrers are deleted with it (they describe it), and so are its
    /// children (for an index) that nothing else keeps, recursively. All in one transaction,
    /// with one event per deleted manifest, built by `event`.
    ///
    /// A manifest PUT of the same image manifest racing this either commits first (its tag is
    /// then seen and the manifest kept) or waits on the manifest's blob links, locked here, and
    /// stores the manifest again after this commits.
    pub async fn delete_untagged_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        event: &(dyn Fn(&DeletedManifest) -> NewEvent + Sync),
    ) -> Result<UntaggedOutcome> {
        self.delete_unkept(repo, digest, None, event).await
    }

    /// [`MetaStore::delete_untagged_manifest`] for garbage collection (`gc.untagged`): also
    /// keeps the manifest unless it, and every referrer and child deleted with it, lost what
    /// kept it (or was pushed, if nothing ever did) before `cutoff_ms` (`untagged_at`, else
    /// `created_at`). Checked in both passes, so a PUT of the manifest again (which waits on
    /// its blob links) or a tag moved away from it meanwhile keeps it; a younger child simply
    /// stays, a younger referrer keeps its subject.
    pub async fn gc_delete_untagged(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff_ms: i64,
        event: &(dyn Fn(&DeletedManifest) -> NewEvent + Sync),
    ) -> Result<UntaggedOutcome> {
        self.delete_unkept(repo, digest, Some(cutoff_ms), event).await
    }

    async fn delete_unkept(
        &self,
        repo: &RepoName,
        digest: &Digest,
        cutoff_ms: Option<i64>,
        event: &(dyn Fn(&DeletedManifest) -> NewEvent + Sync),
    ) -> Result<UntaggedOutcome> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&mut *tx).await? else {
            return Ok(UntaggedOutcome::Kept(KeptBecause::Gone));
        };
        let id: i64 = row.try_get("id")?;
        // Decide, lock the blob links of everything decided (in digest order, as a manifest
        // PUT share-locks them), then decide again with fresh statements: what the locks made
        // wait is seen now. Only what both passes chose is deleted.
        let first = match unreferenced_set(&mut tx, id, digest, None, cutoff_ms).await? {
            Ok(set) => set,
            Err(kept) => return Ok(UntaggedOutcome::Kept(kept)),
        };
        let digests: Vec<&str> = first.iter().map(|m| m.digest.as_str()).collect();
        for chunk in digests.chunks(CHUNK) {
            let sql = format!(
                "SELECT digest FROM repository_blobs WHERE repository_id = $1 AND digest IN \
                 (SELECT blob_digest FROM manifest_blobs WHERE repository_id = $1 AND manifest_digest IN ({})) ORDER BY digest{}",
                placeholders(2, chunk.len()),
                self.for_update()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(id);
            for d in chunk {
                q = q.bind(*d);
            }
            q.fetch_all(&mut *tx).await?;
        }
        let allowed: HashSet<&str> = digests.iter().copied().collect();
        let set = match unreferenced_set(&mut tx, id, digest, Some(&allowed), cutoff_ms).await? {
            Ok(set) => set,
            Err(kept) => return Ok(UntaggedOutcome::Kept(kept)),
        };
        let now = now_ms();
        for m in &set {
            // The links this manifest kept alive start their grace period now, as with a
            // manifest DELETE.
            sqlx::query(
                "UPDATE repository_blobs SET used_at = $3 WHERE repository_id = $1 AND digest IN \
                 (SELECT blob_digest FROM manifest_blobs WHERE repository_id = $1 AND manifest_digest = $2)",
            )
            .bind(id)
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // With a cutoff, the age is a condition of the delete itself: on PostgreSQL it is
            // evaluated again after waiting on a writer holding the row (a PUT of an index's
            // child again, which locks no blob link), so such a PUT is never lost.
            let gone = sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2 AND COALESCE(untagged_at, created_at) < $3")
                .bind(id)
                .bind(m.digest.as_str())
                .bind(cutoff_ms.unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone == 0 {
                // Rolled back: the next run decides again.
                return Ok(UntaggedOutcome::Kept(KeptBecause::Changed));
            }
            for stmt in [
                "DELETE FROM manifest_blobs WHERE repository_id = $1 AND manifest_digest = $2",
                "DELETE FROM manifest_children WHERE repository_id = $1 AND parent_digest = $2",
            ] {
                sqlx::query(stmt).bind(id).bind(m.digest.as_str()).execute(&mut *tx).await?;
            }
        }
        let events: Vec<NewEvent> = set.iter().map(event).collect();
        insert_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(UntaggedOutcome::Deleted(set))
    }
}

impl MetaStore {
    /// Up to `limit` manifests after `after` (keyset: repository id, digest) that garbage
    /// collection of untagged manifests may delete: no tag points at one, no index of its
    /// repository lists it, it is not a referrer whose subject is still in the repository, and
    /// it lost what kept it (or, if nothing ever did, was pushed) before `cutoff_ms`. Whether
    /// each goes, and with what, is decided under locks by [`MetaStore::gc_delete_untagged`].
    pub async fn gc_untagged_candidates(&self, cutoff_ms: i64, after: Option<&UntaggedCandidate>, limit: u32) -> Result<Vec<UntaggedCandidate>> {
        let (after_repo, after_digest) = after.map_or((-1, ""), |c| (c.repository_id, c.digest.as_str()));
        let rows = sqlx::query(
            "SELECT m.repository_id AS rid, r.name AS name, m.digest AS digest FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE COALESCE(m.untagged_at, m.created_at) < $1 \
             AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) \
             AND NOT EXISTS (SELECT 1 FROM manifest_children c WHERE c.repository_id = m.repository_id AND c.child_digest = m.digest) \
             AND (m.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id AND s.digest = m.subject)) \
             AND (m.repository_id > $2 OR (m.repository_id = $2 AND m.digest > $3)) \
             ORDER BY m.repository_id, m.digest LIMIT $4",
        )
        .bind(cutoff_ms)
        .bind(after_repo)
        .bind(after_digest)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(UntaggedCandidate { repository_id: r.try_get("rid")?, repository: r.try_get("name")?, digest: parse(r, "digest")? })).collect()
    }

    /// What [`MetaStore::gc_delete_untagged`] would delete now, changing nothing (a dry run).
    pub async fn gc_untagged_plan(&self, repo: &RepoName, digest: &Digest, cutoff_ms: i64) -> Result<UntaggedOutcome> {
        let mut tx = Tx::Pool(self.read.begin().await?);
        let Some(row) = sqlx::query("SELECT id FROM repositories WHERE name = $1").bind(repo.as_str()).fetch_optional(&mut *tx).await? else {
            return Ok(UntaggedOutcome::Kept(KeptBecause::Gone));
        };
        let id: i64 = row.try_get("id")?;
        let out = match unreferenced_set(&mut tx, id, digest, None, Some(cutoff_ms)).await? {
            Ok(set) => UntaggedOutcome::Deleted(set),
            Err(kept) => UntaggedOutcome::Kept(kept),
        };
        tx.rollback().await?;
        Ok(out)
    }
}

/// The manifests deleting `root` takes with it (root first), or why it must stay. With
/// `allowed`, a manifest outside it is treated as kept. Reads only.
/// With `cutoff`, a manifest that lost what kept it (or was pushed) at or after it is kept.
async fn unreferenced_set(
    tx: &mut Tx,
    repo_id: i64,
    root: &Digest,
    allowed: Option<&HashSet<&str>>,
    cutoff: Option<i64>,
) -> Result<Result<Vec<DeletedManifest>, KeptBecause>> {
    let mut chosen: Vec<DeletedManifest> = Vec::new();
    let mut in_set: HashSet<Digest> = HashSet::new();
    let mut work = vec![(root.clone(), Role::Root)];
    while let Some((candidate, role)) = work.pop() {
        if in_set.contains(&candidate) {
            continue;
        }
        // The candidate and its referrers, transitively: they go together or not at all.
        let mut group: Vec<(Digest, String, Role)> = Vec::new();
        let mut queue = vec![(candidate.clone(), role)];
        let mut verdict = Ok(());
        while let Some((d, r)) = queue.pop() {
            if in_set.contains(&d) || group.iter().any(|(g, _, _)| *g == d) {
                continue;
            }
            let found = sqlx::query("SELECT media_type, COALESCE(untagged_at, created_at) AS since FROM manifests WHERE repository_id = $1 AND digest = $2")
                .bind(repo_id)
                .bind(d.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            let Some(found) = found else {
                if r == Role::Root {
                    verdict = Err(KeptBecause::Gone);
                    break;
                }
                continue;
            };
            if allowed.is_some_and(|a| !a.contains(d.as_str())) {
                // Not locked in the first pass: something changed; leave it for the next run.
                verdict = Err(KeptBecause::Changed);
                break;
            }
            if let Some(c) = cutoff {
                let since: i64 = found.try_get("since")?;
                if since >= c {
                    verdict = Err(KeptBecause::Recent { manifest: d.clone() });
                    break;
                }
            }
            group.push((d.clone(), found.try_get("media_type")?, r));
            let referrers = sqlx::query("SELECT digest FROM manifests WHERE repository_id = $1 AND subject = $2 ORDER BY digest").bind(repo_id).bind(d.as_str()).fetch_all(&mut **tx).await?;
            for row in &referrers {
                queue.push((parse(row, "digest")?, Role::Referrer));
            }
        }
        if verdict.is_ok() {
            'check: for (d, _, _) in &group {
                let tag = sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name LIMIT 1").bind(repo_id).bind(d.as_str()).fetch_optional(&mut **tx).await?;
                if let Some(tag) = tag {
                    verdict = Err(KeptBecause::Tagged { manifest: d.clone(), tag: tag.try_get("name")? });
                    break;
                }
                let parents = sqlx::query("SELECT parent_digest FROM manifest_children WHERE repository_id = $1 AND child_digest = $2 ORDER BY parent_digest")
                    .bind(repo_id)
                    .bind(d.as_str())
                    .fetch_all(&mut **tx)
                    .await?;
                for p in &parents {
                    let parent: Digest = parse(p, "parent_digest")?;
                    // A parent being deleted in this same transaction keeps nothing.
                    if !in_set.contains(&parent) && !group.iter().any(|(g, _, _)| *g == parent) {
                        verdict = Err(KeptBecause::InIndex { manifest: d.clone(), index: parent });
                        break 'check;
                    }
                }
            }
        }
        match verdict {
            Err(kept) if role == Role::Root => return Ok(Err(kept)),
            // A child something else keeps simply stays.
            Err(_) => continue,
            Ok(()) => {}
        }
        for (d, media_type, r) in group {
            let children = sqlx::query("SELECT child_digest FROM manifest_children WHERE repository_id = $1 AND parent_digest = $2 ORDER BY child_digest")
                .bind(repo_id)
                .bind(d.as_str())
                .fetch_all(&mut **tx)
                .await?;
            for c in &children {
                work.push((parse(c, "child_digest")?, Role::Child));
            }
            in_set.insert(d.clone());
            chosen.push(DeletedManifest { digest: d, media_type, role: r });
        }
    }
    Ok(Ok(chosen))
}
