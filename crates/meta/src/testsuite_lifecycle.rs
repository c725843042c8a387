//! The lifecycle behaviour every metadata backend must show (see `meta::lifecycle`): tag
//! listings with push times, deleting a manifest only when nothing keeps it (with its
//! referrers and orphaned children), and deleting a whole repository. Each backend's tests
//! call [`run`] on a fresh, empty database.

use oci::{Digest, RepoName, Tag, UploadId};
use sqlx::Row;

use crate::{DeletedManifest, KeptBecause, MetaStore, NewEvent, NewManifest, Role, UntaggedOutcome};

fn repo(s: &str) -> RepoName {
    s.parse().expect("valid name")
}

fn tag(s: &str) -> Tag {
    s.parse().expect("valid tag")
}

fn deleted(o: &UntaggedOutcome) -> Vec<(Digest, Role)> {
    match o {
        UntaggedOutcome::Deleted(v) => v.iter().map(|m| (m.digest.clone(), m.role)).collect(),
        UntaggedOutcome::Kept(k) => panic!("kept: {k}"),
    }
}

fn event(repo: &RepoName) -> impl Fn(&DeletedManifest) -> NewEvent + Sync + '_ {
    move |m| NewEvent { action: "delete", repository: repo.to_string(), digest: Some(m.digest.to_string()), media_type: Some(m.media_type.clone()), ..Default::default() }
}

/// A manifest document named `name`, stored in `r` with `blobs`, `children`, `subject` and `tags`.
async fn put(m: &MetaStore, r: &RepoName, name: &str, blobs: &[&Digest], children: &[&Digest], subject: Option<&Digest>, tags: &[&str]) -> Digest {
    let body = format!(r#"{{"name":"{name}"}}"#).into_bytes();
    let digest = Digest::sha256_of(&body);
    let media_type = if children.is_empty() { oci::media::OCI_MANIFEST } else { oci::media::OCI_INDEX };
    let nm = NewManifest {
        digest: &digest,
        media_type,
        content: &body,
        artifact_type: None,
        subject,
        annotations: None,
        blobs: blobs.to_vec(),
        children: children.to_vec(),
    };
    let tags: Vec<Tag> = tags.iter().map(|t| tag(t)).collect();
    m.put_manifest(r, &nm, &tags, &[]).await.expect("put manifest");
    digest
}

async fn released_at(m: &MetaStore, d: &Digest) -> Option<i64> {
    sqlx::query("SELECT released_at FROM blobs WHERE digest = $1").bind(d.as_str()).fetch_one(&m.read).await.expect("q").try_get("released_at").expect("col")
}

/// Run every check, panicking on the first failure.
pub async fn run(m: &MetaStore) {
    let app = repo("life/app");
    let other = repo("life/other");
    let blob = |s: &str| Digest::sha256_of(s.as_bytes());
    let (cfg, l1, l2, shared) = (blob("cfg"), blob("l1"), blob("l2"), blob("shared"));
    for d in [&cfg, &l1, &l2, &shared] {
        m.link_blob(&app, d, 3, None, &[]).await.expect("link");
    }
    m.mount_blob(&other, &shared, Some(&app), &[]).await.expect("mount");
    let m1 = put(m, &app, "m1", &[&cfg, &l1, &shared], &[], None, &["v1", "also-v1"]).await;
    let m2 = put(m, &app, "m2", &[&cfg, &l2], &[], None, &["v2"]).await;
    let sig1 = put(m, &app, "sig1", &[&cfg], &[], Some(&m1), &[]).await;
    let sig2 = put(m, &app, "sig2", &[&cfg], &[], Some(&m2), &["sig2"]).await;
    let c1 = put(m, &app, "c1", &[&cfg, &l1], &[], None, &[]).await;
    let c2 = put(m, &app, "c2", &[&cfg, &l2], &[], None, &["c2"]).await;
    let idx = put(m, &app, "idx", &[], &[&c1, &c2], None, &["multi"]).await;
    let idx2 = put(m, &app, "idx2", &[], &[&c2], None, &["multi2"]).await;

    // Tag listings carry the manifest and the push time, newest first.
    let tags = m.repository_tag_times(&app).await.expect("q").expect("repo");
    let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
    let mut sorted = tags.clone();
    sorted.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then_with(|| a.tag.cmp(&b.tag)));
    assert_eq!(tags, sorted, "newest first, ties by name");
    let mut all = names.clone();
    all.sort_unstable();
    assert_eq!(all, ["also-v1", "c2", "multi", "multi2", "sig2", "v1", "v2"]);
    assert!(tags.iter().all(|t| t.updated_at > 0));
    assert_eq!(tags.iter().find(|t| t.tag.as_str() == "v1").map(|t| t.digest.clone()), Some(m1.clone()));
    assert!(m.repository_tag_times(&repo("life/none")).await.expect("q").is_none());
    let v1 = m.tag_info(&app, &tag("v1")).await.expect("q").expect("tag");
    assert_eq!((v1.digest.clone(), v1.updated_at), (m1.clone(), tags.iter().find(|t| t.tag.as_str() == "v1").map_or(0, |t| t.updated_at)));
    assert!(m.tag_info(&app, &tag("nope")).await.expect("q").is_none());

    // A tagged manifest stays; once untagged it goes with its untagged referrer.
    let ev = event(&app);
    assert_eq!(
        m.delete_untagged_manifest(&app, &m1, &ev).await.expect("q"),
        UntaggedOutcome::Kept(KeptBecause::Tagged { manifest: m1.clone(), tag: "also-v1".into() })
    );
    assert!(m.delete_tag(&app, &tag("v1"), &[]).await.expect("untag"));
    assert!(m.delete_tag(&app, &tag("also-v1"), &[]).await.expect("untag"));
    let out = m.delete_untagged_manifest(&app, &m1, &ev).await.expect("delete");
    assert_eq!(deleted(&out), [(m1.clone(), Role::Root), (sig1.clone(), Role::Referrer)]);
    assert!(m.manifest_by_digest(&app, &m1).await.expect("q").is_none());
    assert!(m.manifest_by_digest(&app, &sig1).await.expect("q").is_none());
    assert!(m.referrers(&app, &m1, None).await.expect("q").is_empty());
    assert_eq!(m.blob_in_repo(&app, &l1).await.expect("q"), Some(3), "links stay: garbage collection decides about them");
    let events = m.events(&crate::EventFilter { repository: Some("life/app".into()), action: Some("delete".into()), limit: 100, ..Default::default() }).await.expect("events");
    let mut digests: Vec<String> = events.iter().filter_map(|e| e.digest.clone()).collect();
    digests.sort();
    let mut want = vec![m1.to_string(), sig1.to_string()];
    want.sort();
    assert_eq!(digests, want, "one event per deleted manifest, in the same transaction");
    assert_eq!(m.delete_untagged_manifest(&app, &m1, &ev).await.expect("q"), UntaggedOutcome::Kept(KeptBecause::Gone));
    assert_eq!(m.delete_untagged_manifest(&repo("life/none"), &m1, &ev).await.expect("q"), UntaggedOutcome::Kept(KeptBecause::Gone));

    // A tagged referrer keeps its subject.
    assert!(m.delete_tag(&app, &tag("v2"), &[]).await.expect("untag"));
    assert_eq!(
        m.delete_untagged_manifest(&app, &m2, &ev).await.expect("q"),
        UntaggedOutcome::Kept(KeptBecause::Tagged { manifest: sig2.clone(), tag: "sig2".into() })
    );
    assert!(m.manifest_by_digest(&app, &m2).await.expect("q").is_some());

    // An index goes with the children nothing else keeps; a child another index lists stays.
    assert!(m.delete_tag(&app, &tag("multi"), &[]).await.expect("untag"));
    let out = m.delete_untagged_manifest(&app, &idx, &ev).await.expect("delete");
    assert_eq!(deleted(&out), [(idx.clone(), Role::Root), (c1.clone(), Role::Child)]);
    assert!(m.manifest_by_digest(&app, &c2).await.expect("q").is_some(), "c2 is tagged");
    assert!(m.delete_tag(&app, &tag("c2"), &[]).await.expect("untag"));
    assert_eq!(
        m.delete_untagged_manifest(&app, &c2, &ev).await.expect("q"),
        UntaggedOutcome::Kept(KeptBecause::InIndex { manifest: c2.clone(), index: idx2.clone() })
    );
    // Untagging idx2 then deleting it takes c2 (now untagged and in no other index).
    assert!(m.delete_tag(&app, &tag("multi2"), &[]).await.expect("untag"));
    let out = m.delete_untagged_manifest(&app, &idx2, &ev).await.expect("delete");
    assert_eq!(deleted(&out), [(idx2.clone(), Role::Root), (c2.clone(), Role::Child)]);
    let left: Vec<Digest> = m.repository_manifests(&app, None, 100).await.expect("q").into_iter().map(|s| s.digest).collect();
    let mut want = vec![m2.clone(), sig2.clone()];
    want.sort();
    assert_eq!(left, want);

    // Deleting a repository: everything it holds, in one transaction, with its event.
    let id: UploadId = "00112233445566778899aabbccddeeff".parse().expect("id");
    m.create_upload(&id, &app, b"h").await.expect("upload");
    let summary = m.repository_summary(&app).await.expect("q").expect("repo");
    assert_eq!(summary, crate::RepositorySummary { tags: 1, manifests: 2, blob_links: 4, uploads: 1 });
    assert!(m.repository_summary(&repo("life/none")).await.expect("q").is_none());
    assert_eq!(released_at(m, &l1).await, None);
    let v_tags = |t: &str| t.starts_with("sig");
    assert!(matches!(m.delete_repository(&app, Some(&v_tags), &[]).await, Err(crate::MetaError::ImmutableTag(t)) if t == "sig2"), "a protected tag refuses the whole deletion");
    assert_eq!(m.repository_summary(&app).await.expect("q"), Some(summary), "nothing was deleted");
    let before = crate::events::now_ms();
    let ev = NewEvent { action: "delete", repository: app.to_string(), ..Default::default() };
    let gone = m.delete_repository(&app, None, std::slice::from_ref(&ev)).await.expect("delete").expect("existed");
    assert_eq!(gone.removed, summary);
    assert_eq!(gone.uploads.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(), std::slice::from_ref(&id));
    assert!(m.delete_repository(&app, None, &[]).await.expect("delete").is_none(), "deleted once");
    assert_eq!(m.list_repositories(None, 100).await.expect("q").names, ["life/other"], "gone from the catalog");
    assert!(m.list_tags(&app, None, 10).await.expect("q").is_none());
    assert!(m.manifest_by_digest(&app, &m2).await.expect("q").is_none());
    assert!(m.upload(&id).await.expect("q").is_none());
    for d in [&cfg, &l1, &l2, &shared] {
        assert_eq!(m.blob_in_repo(&app, d).await.expect("q"), None);
        assert!(released_at(m, d).await.is_some_and(|t| t >= before), "{d}'s grace period starts at the deletion");
        assert_eq!(m.blob_anywhere(d).await.expect("q"), Some(3), "the blobs themselves are garbage collection's");
    }
    assert_eq!(m.blob_in_repo(&other, &shared).await.expect("q"), Some(3), "another repository's link stays");
    let f = crate::EventFilter { repository: Some("life/app".into()), action: Some("delete".into()), limit: 100, ..Default::default() };
    assert_eq!(m.events(&f).await.expect("events").iter().filter(|e| e.digest.is_none() && e.tag.is_none()).count(), 1);
    // The name can be used again: a push creates a fresh, empty repository.
    m.link_blob(&app, &l1, 3, None, &[]).await.expect("push again");
    assert_eq!(m.repository_summary(&app).await.expect("q").expect("repo"), crate::RepositorySummary { blob_links: 1, ..Default::default() });
}

/// Garbage collection of untagged manifests (`gc.untagged`): which manifests are candidates,
/// how their age counts (`untagged_at`, set when a tag or keeper leaves them), and that the
/// deletion re-checks the age. Run on a fresh, empty database.
pub async fn run_untagged_gc(m: &MetaStore) {
    const DAY: i64 = 86_400_000;
    let app = repo("gcu/app");
    let blob = |s: &str| Digest::sha256_of(s.as_bytes());
    let (cfg, layer) = (blob("gcu-cfg"), blob("gcu-layer"));
    for d in [&cfg, &layer] {
        m.link_blob(&app, d, 3, None, &[]).await.expect("link");
    }
    let now = crate::events::now_ms();
    let cutoff = now - 7 * DAY;
    // Pushed (and, with NULL, never untagged since) 30 days ago.
    let age = |d: Digest| async move {
        m.write_one(sqlx::query("UPDATE manifests SET created_at = $1, untagged_at = NULL WHERE digest = $2").bind(now - 30 * DAY).bind(d.as_str())).await.expect("age");
    };
    let candidates = || async {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            // Pages of 2: the keyset walk must not skip or repeat anything.
            let page = m.gc_untagged_candidates(cutoff, after.as_ref(), 2).await.expect("candidates");
            all.extend(page.iter().map(|c| c.digest.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => after = Some(last.clone()),
                _ => break,
            }
        }
        all.sort();
        all
    };
    let sorted = |mut v: Vec<Digest>| {
        v.sort();
        v
    };
    let ev = event(&app);

    let old = put(m, &app, "old", &[&cfg, &layer], &[], None, &[]).await;
    let tagged = put(m, &app, "tagged", &[&cfg], &[], None, &["keep"]).await;
    let child = put(m, &app, "child", &[&cfg], &[], None, &[]).await;
    let index = put(m, &app, "index", &[], &[&child], None, &["multi"]).await;
    let live_ref = put(m, &app, "live-ref", &[&cfg], &[], Some(&tagged), &[]).await;
    let doomed = put(m, &app, "doomed", &[&cfg], &[], None, &["doomed"]).await;
    let orphan_ref = put(m, &app, "orphan-ref", &[&cfg], &[], Some(&doomed), &[]).await;
    let young = put(m, &app, "young", &[&cfg], &[], None, &[]).await;
    let moved = put(m, &app, "moved", &[&cfg], &[], None, &["moving"]).await;
    let untagged_now = put(m, &app, "untagged-now", &[&cfg], &[], None, &["bye"]).await;
    let loose_index = put(m, &app, "loose-index", &[], &[&old], None, &[]).await;
    for d in [&old, &tagged, &child, &index, &live_ref, &doomed, &orphan_ref, &moved, &untagged_now, &loose_index] {
        age(d.clone()).await;
    }
    // Only the untagged index qualifies now: `old` is listed by it, the rest are tagged, in a
    // tagged index, referrers of a live subject, or young.
    assert_eq!(candidates().await, std::slice::from_ref(&loose_index));

    // Losing the last tag (moved away or deleted) restarts the clock; so does a PUT again.
    let _newer = put(m, &app, "newer", &[&cfg], &[], None, &["moving"]).await;
    assert!(m.delete_tag(&app, &tag("bye"), &[]).await.expect("untag"));
    assert!(m.manifest_by_digest(&app, &moved).await.expect("q").is_some());
    assert_eq!(candidates().await, std::slice::from_ref(&loose_index), "a manifest that lost its tag just now is kept");
    let since = |d: Digest| async move {
        sqlx::query("SELECT untagged_at FROM manifests WHERE digest = $1").bind(d.as_str()).fetch_one(&m.read).await.expect("q").try_get::<Option<i64>, _>("untagged_at").expect("col")
    };
    assert!(since(moved.clone()).await.is_some_and(|t| t >= now) && since(untagged_now.clone()).await.is_some_and(|t| t >= now));
    assert_eq!(m.gc_delete_untagged(&app, &moved, cutoff, &ev).await.expect("q"), UntaggedOutcome::Kept(KeptBecause::Recent { manifest: moved.clone() }));
    assert_eq!(m.gc_delete_untagged(&app, &young, cutoff, &ev).await.expect("q"), UntaggedOutcome::Kept(KeptBecause::Recent { manifest: young.clone() }));

    // A referrer of a deleted subject lost its keeper at the deletion: collected once that is
    // old enough, like any untagged manifest.
    assert!(m.delete_manifest(&app, &doomed, &[]).await.expect("delete"));
    assert!(!candidates().await.contains(&orphan_ref), "its subject went just now");
    age(orphan_ref.clone()).await;
    assert_eq!(candidates().await, sorted(vec![loose_index.clone(), orphan_ref.clone()]));

    // The dry run's plan changes nothing; the deletion takes the index with the child only it kept.
    assert_eq!(deleted(&m.gc_untagged_plan(&app, &loose_index, cutoff).await.expect("plan")), [(loose_index.clone(), Role::Root), (old.clone(), Role::Child)]);
    assert!(m.manifest_by_digest(&app, &loose_index).await.expect("q").is_some());
    assert_eq!(deleted(&m.gc_delete_untagged(&app, &loose_index, cutoff, &ev).await.expect("q")), [(loose_index.clone(), Role::Root), (old.clone(), Role::Child)]);
    assert_eq!(deleted(&m.gc_delete_untagged(&app, &orphan_ref, cutoff, &ev).await.expect("q")), [(orphan_ref.clone(), Role::Root)]);
    assert!(candidates().await.is_empty());
    for gone in [&loose_index, &old, &orphan_ref] {
        assert!(m.manifest_by_digest(&app, gone).await.expect("q").is_none());
    }
    for kept in [&tagged, &child, &index, &live_ref, &young, &moved, &untagged_now] {
        assert!(m.manifest_by_digest(&app, kept).await.expect("q").is_some(), "{kept} stays");
    }

    // An old untagged subject with a young referrer stays (the referrer may be a fresh
    // signature of an image still in use); a child pushed again meanwhile stays too.
    let subject = put(m, &app, "subject", &[&cfg], &[], None, &[]).await;
    age(subject.clone()).await;
    let fresh_sig = put(m, &app, "fresh-sig", &[&cfg], &[], Some(&subject), &[]).await;
    assert_eq!(candidates().await, std::slice::from_ref(&subject));
    assert_eq!(m.gc_delete_untagged(&app, &subject, cutoff, &ev).await.expect("q"), UntaggedOutcome::Kept(KeptBecause::Recent { manifest: fresh_sig.clone() }));
    age(fresh_sig.clone()).await;
    let c = put(m, &app, "c", &[&cfg], &[], None, &[]).await;
    let idx = put(m, &app, "idx", &[], &[&c], None, &[]).await;
    age(c.clone()).await;
    age(idx.clone()).await;
    let _ = put(m, &app, "c", &[&cfg], &[], None, &[]).await;
    assert_eq!(deleted(&m.gc_delete_untagged(&app, &idx, cutoff, &ev).await.expect("q")), [(idx.clone(), Role::Root)], "the child pushed again stays");
    assert!(m.manifest_by_digest(&app, &c).await.expect("q").is_some());
    assert_eq!(
        deleted(&m.gc_delete_untagged(&app, &subject, cutoff, &ev).await.expect("q")),
        [(subject.clone(), Role::Root), (fresh_sig.clone(), Role::Referrer)]
    );
    let events = m.events(&crate::EventFilter { repository: Some("gcu/app".into()), action: Some("delete".into()), limit: 100, ..Default::default() }).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.digest.is_some()).count(), 6, "one event per deleted manifest");
}
