//! The policy behaviour every metadata backend must show: immutable tags refused inside the
//! writing transaction (`put_manifest_guarded`, `delete_manifest_guarded`), and quotas charged
//! in the linking transaction (see `meta::quota`), exactly, also when links race. Each
//! backend's tests call [`run`] on a fresh, empty database.

use futures::future::join_all;
use oci::{Digest, RepoName, RepoPattern, Tag};

use crate::{MetaError, MetaStore, NamespaceUsage, NewManifest, Quota};

fn repo(s: &str) -> RepoName {
    s.parse().expect("valid name")
}

fn tag(s: &str) -> Tag {
    s.parse().expect("valid tag")
}

fn pattern(s: &str) -> RepoPattern {
    s.parse().expect("valid pattern")
}

fn manifest<'a>(digest: &'a Digest, content: &'a [u8], blobs: Vec<&'a Digest>) -> NewManifest<'a> {
    NewManifest { digest, media_type: oci::media::OCI_MANIFEST, content, artifact_type: None, subject: None, annotations: None, blobs, children: vec![] }
}

fn is_quota(r: &crate::Result<()>, namespace: &str, used: u64, needed: u64) -> bool {
    matches!(r, Err(MetaError::QuotaExceeded { namespace: n, used: u, needed: d, .. }) if n == namespace && *u == used && *d == needed)
}

/// Run every check, panicking on the first failure.
pub async fn run(m: &MetaStore) {
    immutable_tags(m).await;
    quotas(m).await;
}

async fn immutable_tags(m: &MetaStore) {
    let r = repo("policy/app");
    let layer = Digest::sha256_of(b"policy layer");
    m.link_blob(&r, &layer, 12, None, &[]).await.expect("link");
    let (b1, b2) = (br#"{"image":1}"#, br#"{"image":2}"#);
    let (d1, d2) = (Digest::sha256_of(b1), Digest::sha256_of(b2));
    let immutable = [tag("v1")];

    // Created once; the same manifest again is fine (and several times in one call).
    m.put_manifest_guarded(&r, &manifest(&d1, b1, vec![&layer]), &[tag("v1")], &immutable, &[]).await.expect("create");
    m.put_manifest_guarded(&r, &manifest(&d1, b1, vec![&layer]), &[tag("v1"), tag("v1")], &immutable, &[]).await.expect("same again");
    // Moving it fails and the whole call changes nothing: no manifest, no other tag.
    let moved = m.put_manifest_guarded(&r, &manifest(&d2, b2, vec![&layer]), &[tag("latest"), tag("v1")], &immutable, &[]).await;
    assert!(matches!(&moved, Err(MetaError::ImmutableTag(t)) if t == "v1"), "{moved:?}");
    assert_eq!(m.manifest_by_tag(&r, &tag("v1")).await.expect("q").expect("tagged").digest, d1);
    assert!(m.manifest_by_tag(&r, &tag("latest")).await.expect("q").is_none());
    assert!(m.manifest_by_digest(&r, &d2).await.expect("q").is_none(), "rolled back");
    // Without the guard the same tag moves (the store does not know the rules).
    m.put_manifest_guarded(&r, &manifest(&d2, b2, vec![&layer]), &[tag("latest")], &immutable, &[]).await.expect("unprotected tag");

    // Racing creations of one protected tag for two manifests: exactly one wins.
    let results = join_all((0..8).map(|i| {
        let (d, b) = if i % 2 == 0 { (&d1, &b1[..]) } else { (&d2, &b2[..]) };
        let layer = &layer;
        let r = &r;
        async move { m.put_manifest_guarded(r, &manifest(d, b, vec![layer]), &[tag("v2")], &[tag("v2")], &[]).await }
    }))
    .await;
    let winner = m.manifest_by_tag(&r, &tag("v2")).await.expect("q").expect("tagged").digest;
    for (i, res) in results.iter().enumerate() {
        let mine = if i % 2 == 0 { &d1 } else { &d2 };
        assert_eq!(res.is_ok(), *mine == winner, "writer {i}: {res:?}");
    }

    // Deleting a manifest a protected tag points at is refused; unguarded, it goes.
    let protects = |t: &str| t.starts_with('v');
    let refused = m.delete_manifest_guarded(&r, &d1, Some(&protects), &[]).await;
    assert!(matches!(&refused, Err(MetaError::ImmutableTag(t)) if t == "v1" || t == "v2"), "{refused:?}");
    assert!(m.manifest_by_digest(&r, &d1).await.expect("q").is_some());
    // d2's tags (`latest`, perhaps `v2`) are not the protected one here: it goes.
    let only_v1 = |t: &str| t == "v1";
    assert!(m.delete_manifest_guarded(&r, &d2, Some(&only_v1), &[]).await.expect("guarded, allowed"));
    assert!(m.manifest_by_tag(&r, &tag("latest")).await.expect("q").is_none());
    assert!(m.delete_manifest_guarded(&r, &d1, None, &[]).await.expect("unguarded"));
    assert!(m.manifest_by_tag(&r, &tag("v1")).await.expect("q").is_none());
}

async fn quotas(m: &MetaStore) {
    let team = pattern("team-a/**");
    let single = pattern("team-a/x");
    let glob = pattern("team-*/*");
    let underscore = pattern("team_b/**");
    let q = m.clone().with_quotas(vec![
        Quota { namespace: team.clone(), limit: 100 },
        Quota { namespace: single.clone(), limit: 50 },
        Quota { namespace: underscore.clone(), limit: 10 },
    ]);
    let (x, y, z) = (repo("team-a/x"), repo("team-a/y"), repo("team-a/z"));
    let d = |s: &str| Digest::sha256_of(s.as_bytes());

    q.link_blob(&x, &d("one"), 40, None, &[]).await.expect("40 of 50 and of 100");
    // team-a/x's own limit is the first to bind.
    assert!(is_quota(&q.link_blob(&x, &d("two"), 20, None, &[]).await, "team-a/x", 40, 20));
    assert_eq!(q.blob_in_repo(&x, &d("two")).await.expect("q"), None, "nothing recorded");
    q.link_blob(&y, &d("two"), 20, None, &[]).await.expect("60 of 100");
    // Blobs the namespace holds cost nothing, through a push or a mount.
    q.link_blob(&y, &d("one"), 40, None, &[]).await.expect("already counted");
    assert_eq!(q.mount_blob(&z, &d("two"), Some(&y), &[]).await.expect("mount"), Some(20));
    // A blob from outside does not fit when it would pass the limit.
    m.link_blob(&repo("outside/r"), &d("big"), 41, None, &[]).await.expect("no quota out there");
    assert!(is_quota(&q.link_existing(&z, &d("big"), Some(&repo("outside/r")), None, None, &[]).await.map(|_| ()), "team-a/**", 60, 41));
    assert!(is_quota(&q.quota_check(&z, &d("big"), 41).await, "team-a/**", 60, 41));
    q.quota_check(&z, &d("big"), 40).await.expect("40 would fit");
    q.quota_check(&z, &d("one"), 40).await.expect("held already");
    q.quota_check(&repo("outside/r"), &d("huge"), u64::MAX).await.expect("no quota applies");

    // Usage: each blob once; the glob (matched outside SQL) agrees with the subtree.
    let usage = NamespaceUsage { bytes: 60, blobs: 2 };
    assert_eq!(q.namespace_usage(&team).await.expect("usage"), usage);
    assert_eq!(q.namespace_usage(&glob).await.expect("usage"), usage);
    assert_eq!(q.namespace_usage(&single).await.expect("usage"), NamespaceUsage { bytes: 40, blobs: 1 });
    assert_eq!(q.namespace_usage(&pattern("**")).await.expect("usage").bytes, 60 + 41 + 12);
    // `_` is not a wildcard for the database either.
    q.link_blob(&repo("teamxb/r"), &d("lookalike"), 11, None, &[]).await.expect("not team_b");
    assert_eq!(q.namespace_usage(&underscore).await.expect("usage"), NamespaceUsage::default());
    assert!(is_quota(&q.link_blob(&repo("team_b/r"), &d("lookalike"), 11, None, &[]).await, "team_b/**", 0, 11));

    // Unlinking lowers the usage; the stored bound is recounted before anything is refused.
    assert!(q.unlink_blob(&y, &d("two"), &[]).await.expect("unlink"));
    assert!(is_quota(&q.link_blob(&z, &d("three"), 41, None, &[]).await, "team-a/**", 60, 41), "two is still in z");
    assert!(q.unlink_blob(&z, &d("two"), &[]).await.expect("unlink"));
    q.link_blob(&z, &d("three"), 41, None, &[]).await.expect("81 of 100 after the recount");

    // Racing links: 19 bytes left, 10 distinct 5-byte blobs (3 fit) pushed twice each into
    // two repositories. Exactly 3 distinct blobs get in; a blob's second link is free.
    let blobs: Vec<Digest> = (0..10).map(|i| d(&format!("race {i}"))).collect();
    let (p, r) = (repo("team-a/p"), repo("team-a/r"));
    let results = join_all(blobs.iter().flat_map(|b| [(&p, b), (&r, b)]).map(|(repo, b)| {
        let q = &q;
        async move { (b, q.link_blob(repo, b, 5, None, &[]).await) }
    }))
    .await;
    let mut admitted: Vec<&Digest> = results.iter().filter(|(_, r)| r.is_ok()).map(|(b, _)| *b).collect();
    admitted.sort();
    admitted.dedup();
    assert_eq!(admitted.len(), 3, "{results:?}");
    for (_, res) in &results {
        assert!(matches!(res, Ok(()) | Err(MetaError::QuotaExceeded { .. })), "{res:?}");
    }
    assert_eq!(q.namespace_usage(&team).await.expect("usage").bytes, 96);

    // Every repository, largest first.
    let repos = q.repository_usage().await.expect("usage");
    let top: Vec<(&str, u64)> = repos.iter().take(2).map(|u| (u.repository.as_str(), u.bytes)).collect();
    assert_eq!(top, [("outside/r", 41), ("team-a/z", 41)], "ties by name");
    assert!(repos.windows(2).all(|w| w[0].bytes >= w[1].bytes), "{repos:?}");
    assert!(repos.iter().any(|u| u.repository == "team-a/y" && u.bytes == 40 && u.blobs == 1));
}
