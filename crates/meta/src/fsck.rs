//! The scrub's side of the metadata database (`berth fsck`): which repositories, images and
//! tags a damaged blob breaks, and claiming a digest that no row records, so that stray bytes
//! under it can be deleted without racing a push that is about to record them.
//!
//! Nothing here touches storage or decides what is damaged: the engine (`registry::fsck`)
//! reads the bytes and asks.
//!
//! Why a claim, and not "check there is no row, then delete": a push stores its bytes first
//! and records them after (see `meta::gc`), so between the check and the delete a push of the
//! same digest may store its copy and record it, and the delete would then remove bytes the
//! database vouches for. A claim is the collection's protocol applied to a row that does not
//! exist: it inserts a placeholder row (which makes a concurrent insert of the same digest
//! wait: the primary key on PostgreSQL, the database's write lock on SQLite), writes a
//! tombstone and removes the placeholder, and stays uncommitted while the caller deletes the
//! bytes. A push that stored its copy meanwhile records it only after the claim commits, then
//! finds the tombstone newer than the mark it read before storing, and fails cleanly (the
//! client retries and stores the bytes again).

use oci::Digest;
use sqlx::Row;

use crate::store::{MetaStore, Tx, now_ms};
use crate::{MetaError, Result};

/// One way a blob is used: a manifest of a repository that references it (with the tags
/// pointing at that manifest), an index that holds such a manifest (`via` names the child),
/// or a bare link of a repository that no manifest there references.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobUse {
    pub repository: String,
    /// The manifest (or, with `via`, the index) affected; `None` for a bare link.
    pub manifest: Option<Digest>,
    pub tags: Vec<String>,
    /// For an index: its child manifest that references the blob.
    pub via: Option<Digest>,
}

/// A digest claimed by [`MetaStore::claim_unrecorded`]: no row records it, and none can be
/// written until the claim is committed (which also makes a push that stored the digest in
/// the meantime fail cleanly) or dropped (which changes nothing).
pub struct UnrecordedClaim {
    tx: Tx,
}

impl UnrecordedClaim {
    /// Commit the claim, after its bytes were deleted.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Give the claim up, changing nothing. (Dropping it does too, but later: on SQLite the
    /// write lock would be held until the connection is next used.)
    pub async fn release(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

fn digest(s: &str) -> Result<Digest> {
    s.parse().map_err(|e| MetaError::Corrupt(format!("stored digest {s:?}: {e}")))
}

impl MetaStore {
    /// Every use of blob `digest`: the manifests referencing it in each repository (with
    /// their tags), the indexes holding those manifests (one level up), and the repositories
    /// that link it with no manifest referencing it. Ordered by repository and manifest.
    pub async fn blob_users(&self, blob: &Digest) -> Result<Vec<BlobUse>> {
        let rows = sqlx::query(
            "SELECT mb.repository_id AS rid, r.name AS name, mb.manifest_digest AS m FROM manifest_blobs mb \
             JOIN repositories r ON r.id = mb.repository_id WHERE mb.blob_digest = $1 ORDER BY r.name, mb.manifest_digest",
        )
        .bind(blob.as_str())
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let rid: i64 = row.try_get("rid")?;
            let repository: String = row.try_get("name")?;
            let manifest = digest(&row.try_get::<String, _>("m")?)?;
            let tags = self.tags_of(rid, &manifest).await?;
            out.push(BlobUse { repository: repository.clone(), manifest: Some(manifest.clone()), tags, via: None });
            let parents = sqlx::query("SELECT parent_digest AS p FROM manifest_children WHERE repository_id = $1 AND child_digest = $2 ORDER BY parent_digest")
                .bind(rid)
                .bind(manifest.as_str())
                .fetch_all(&self.read)
                .await?;
            for p in &parents {
                let parent = digest(&p.try_get::<String, _>("p")?)?;
                let tags = self.tags_of(rid, &parent).await?;
                out.push(BlobUse { repository: repository.clone(), manifest: Some(parent), tags, via: Some(manifest.clone()) });
            }
        }
        let bare = sqlx::query(
            "SELECT r.name AS name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE rb.digest = $1 \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = rb.repository_id AND mb.blob_digest = rb.digest) \
             ORDER BY r.name",
        )
        .bind(blob.as_str())
        .fetch_all(&self.read)
        .await?;
        for row in &bare {
            out.push(BlobUse { repository: row.try_get("name")?, manifest: None, tags: Vec::new(), via: None });
        }
        Ok(out)
    }

    async fn tags_of(&self, repository_id: i64, manifest: &Digest) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND manifest_digest = $2 ORDER BY name")
            .bind(repository_id)
            .bind(manifest.as_str())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
    }

    /// Claim `digest` for deleting its bytes if no row records it (see the module comment).
    /// `None` when a row does: those bytes are in use and must stay. On SQLite the claim holds
    /// the database's write lock until it is committed or dropped: keep it short.
    pub async fn claim_unrecorded(&self, digest: &Digest) -> Result<Option<UnrecordedClaim>> {
        let mut tx = self.begin_write().await?;
        // The placeholder is the first statement, so on SQLite the transaction takes the write
        // lock before it reads anything (no stale snapshot), and on PostgreSQL it waits for a
        // concurrent uncommitted insert of the digest to finish and then sees its outcome.
        let inserted = sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES ($1, 0, $2) ON CONFLICT (digest) DO NOTHING")
            .bind(digest.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        // Written as done (`storage_deleted_at` set): the caller deletes the bytes before it
        // commits, so no push ever sees this tombstone while they are still there.
        sqlx::query("INSERT INTO blob_tombstones (digest, deleted_at, storage_deleted_at) VALUES ($1, $2, $2)")
            .bind(digest.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blobs WHERE digest = $1").bind(digest.as_str()).execute(&mut *tx).await?;
        Ok(Some(UnrecordedClaim { tx }))
    }
}

#[cfg(test)]
mod tests {
    use oci::RepoName;

    use crate::{Dedup, MetaError, MetaStore};

    fn app() -> RepoName {
        "app".parse().expect("name")
    }

    #[tokio::test]
    async fn a_claim_never_takes_a_recorded_digest_and_makes_a_racing_push_fail_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
        let recorded = oci::Digest::sha256_of(b"recorded");
        m.link_blob(&app(), &recorded, 8, None, &[]).await.expect("link");
        assert!(m.claim_unrecorded(&recorded).await.expect("claim").is_none(), "a recorded digest is never claimed");
        assert_eq!(m.blob_anywhere(&recorded).await.expect("read"), Some(8));

        // A push reads its mark, stores its copy; the scrub claims the digest and deletes the
        // bytes; the push then must not record them.
        let racing = oci::Digest::sha256_of(b"racing");
        let Dedup::Absent { mark } = m.link_existing(&app(), &racing, None, Some(6), None, &[]).await.expect("dedup") else { panic!("not recorded yet") };
        let claim = m.claim_unrecorded(&racing).await.expect("claim").expect("unrecorded");
        claim.commit().await.expect("commit");
        assert_eq!(m.blob_anywhere(&racing).await.expect("read"), None, "the placeholder is gone");
        assert!(matches!(m.link_new(&app(), &racing, 6, Some(mark), None, &[]).await, Err(MetaError::Collected(_))));
        // Pushed again (a new mark), it is recorded.
        let Dedup::Absent { mark } = m.link_existing(&app(), &racing, None, Some(6), None, &[]).await.expect("dedup") else { panic!("still unrecorded") };
        m.link_new(&app(), &racing, 6, Some(mark), None, &[]).await.expect("recorded");

        // A claim given up changes nothing.
        let other = oci::Digest::sha256_of(b"other");
        let Dedup::Absent { mark } = m.link_existing(&app(), &other, None, Some(5), None, &[]).await.expect("dedup") else { panic!("not recorded") };
        m.claim_unrecorded(&other).await.expect("claim").expect("unrecorded").release().await.expect("release");
        m.link_new(&app(), &other, 5, Some(mark), None, &[]).await.expect("no tombstone: recorded");
    }

    #[tokio::test]
    async fn blob_users_names_manifests_tags_indexes_and_bare_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
        let layer = oci::Digest::sha256_of(b"layer");
        let manifest = oci::Digest::sha256_of(b"manifest");
        let index = oci::Digest::sha256_of(b"index");
        m.link_blob(&app(), &layer, 5, None, &[]).await.expect("link");
        m.link_blob(&"other".parse().expect("name"), &layer, 5, None, &[]).await.expect("link");
        let new = |digest, blobs, children| crate::NewManifest {
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            content: b"{}",
            artifact_type: None,
            subject: None,
            annotations: None,
            blobs,
            children,
        };
        m.put_manifest(&app(), &new(&manifest, vec![&layer], vec![]), &["v1".parse().expect("tag")], &[]).await.expect("manifest");
        m.put_manifest(&app(), &new(&index, vec![], vec![&manifest]), &["latest".parse().expect("tag")], &[]).await.expect("index");
        let uses = m.blob_users(&layer).await.expect("users");
        assert_eq!(uses.len(), 3, "{uses:?}");
        assert_eq!((uses[0].repository.as_str(), uses[0].manifest.as_ref(), uses[0].tags.clone(), uses[0].via.as_ref()), ("app", Some(&manifest), vec!["v1".to_owned()], None));
        assert_eq!((uses[1].manifest.as_ref(), uses[1].tags.clone(), uses[1].via.as_ref()), (Some(&index), vec!["latest".to_owned()], Some(&manifest)));
        assert_eq!((uses[2].repository.as_str(), uses[2].manifest.as_ref()), ("other", None));
    }
}
