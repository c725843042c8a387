//! The behaviour every metadata backend must show. Each backend's tests call [`run`] on a fresh,
//! empty database.

use oci::{Digest, RepoName, Tag, UploadId};

use crate::{MetaError, MetaStore, NewManifest, TagPage, UploadUpdate};

fn repo(s: &str) -> RepoName {
    s.parse().expect("valid name")
}

fn tag(s: &str) -> Tag {
    s.parse().expect("valid tag")
}

/// Run every check, panicking on the first failure.
pub async fn run(m: &MetaStore) {
    let a = repo("team/a");
    let b = repo("team/b");
    let layer = Digest::sha256_of(b"layer");
    let config = Digest::sha256_of(b"config");

    // Blobs are served only where linked; a mount links without copying.
    assert_eq!(m.blob_in_repo(&a, &layer).await.expect("q"), None);
    m.link_blob(&a, &layer, 5, None, &[]).await.expect("link");
    m.link_blob(&a, &layer, 5, None, &[]).await.expect("link twice");
    m.link_blob(&a, &config, 6, None, &[]).await.expect("link");
    assert_eq!(m.blob_in_repo(&a, &layer).await.expect("q"), Some(5));
    assert_eq!(m.blob_in_repo(&b, &layer).await.expect("q"), None);
    assert_eq!(m.mount_blob(&b, &layer, Some(&repo("none")), &[]).await.expect("mount"), None);
    assert_eq!(m.mount_blob(&b, &layer, Some(&a), &[]).await.expect("mount"), Some(5));
    assert_eq!(m.blob_in_repo(&b, &layer).await.expect("q"), Some(5));
    assert!(m.unlink_blob(&b, &layer, &[]).await.expect("unlink"));
    assert!(!m.unlink_blob(&b, &layer, &[]).await.expect("unlink"));
    assert_eq!(m.blob_anywhere(&layer).await.expect("q"), Some(5));

    // Manifests check their references in the same transaction.
    let body = br#"{"manifest":1}"#;
    let digest = Digest::sha256_of(body);
    let missing = Digest::sha256_of(b"missing");
    let subject = Digest::sha256_of(b"subject");
    let mut nm = NewManifest {
        digest: &digest,
        media_type: oci::media::OCI_MANIFEST,
        content: body,
        artifact_type: Some("application/x.test"),
        subject: Some(&subject),
        annotations: Some(r#"{"k":"v"}"#.into()),
        blobs: vec![&config, &layer, &missing],
        children: vec![],
    };
    assert!(matches!(m.put_manifest(&a, &nm, &[tag("v1")], &[]).await, Err(MetaError::MissingBlob(d)) if d == missing.as_str()));
    assert!(m.manifest_by_tag(&a, &tag("v1")).await.expect("q").is_none());
    nm.blobs.pop();
    m.put_manifest(&a, &nm, &[tag("v1"), tag("latest")], &[]).await.expect("put");
    m.put_manifest(&a, &nm, &[tag("v1")], &[]).await.expect("put again");
    let got = m.manifest_by_tag(&a, &tag("latest")).await.expect("q").expect("found");
    assert_eq!(got.digest, digest);
    assert_eq!(got.content, body);
    assert_eq!(got.media_type, oci::media::OCI_MANIFEST);
    assert!(m.manifest_by_digest(&a, &digest).await.expect("q").is_some());
    assert!(m.manifest_by_digest(&b, &digest).await.expect("q").is_none());

    // Index children must be present.
    let index_body = br#"{"index":1}"#;
    let index = Digest::sha256_of(index_body);
    let mut ni = NewManifest {
        digest: &index,
        media_type: oci::media::OCI_INDEX,
        content: index_body,
        artifact_type: None,
        subject: None,
        annotations: None,
        blobs: vec![],
        children: vec![&digest, &missing],
    };
    assert!(matches!(m.put_manifest(&a, &ni, &[], &[]).await, Err(MetaError::MissingManifest(_))));
    ni.children.pop();
    m.put_manifest(&a, &ni, &[tag("multi")], &[]).await.expect("put index");

    // Referrers, with and without a filter.
    let refs = m.referrers(&a, &subject, None).await.expect("referrers");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, digest);
    assert_eq!(refs[0].size, body.len() as u64);
    assert_eq!(refs[0].artifact_type.as_deref(), Some("application/x.test"));
    assert_eq!(refs[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert_eq!(m.referrers(&a, &subject, Some("application/x.test")).await.expect("q").len(), 1);
    assert!(m.referrers(&a, &subject, Some("application/other")).await.expect("q").is_empty());
    assert!(m.referrers(&b, &subject, None).await.expect("q").is_empty());

    // Tags: byte order, keyset pages; the last write wins.
    for t in ["b", "A", "a", "c-1", "c_1", "Z"] {
        m.put_manifest(&a, &nm, &[tag(t)], &[]).await.expect("tag");
    }
    let all = m.list_tags(&a, None, 100).await.expect("q").expect("repo");
    assert_eq!(all.names, ["A", "Z", "a", "b", "c-1", "c_1", "latest", "multi", "v1"]);
    assert!(!all.more);
    let p1 = m.list_tags(&a, None, 3).await.expect("q").expect("repo");
    assert_eq!(p1, TagPage { names: vec!["A".into(), "Z".into(), "a".into()], more: true });
    let p2 = m.list_tags(&a, Some("a"), 100).await.expect("q").expect("repo");
    assert_eq!(p2.names.first().map(String::as_str), Some("b"));
    assert!(m.list_tags(&repo("nope"), None, 10).await.expect("q").is_none());
    m.put_manifest(&a, &ni, &[tag("v1")], &[]).await.expect("move tag");
    assert_eq!(m.manifest_by_tag(&a, &tag("v1")).await.expect("q").expect("found").digest, index);

    // Listings for copying a deployment: keyset pages in digest (tag) order, exact bytes.
    let mut linked = vec![(config.clone(), 6), (layer.clone(), 5)];
    linked.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    assert_eq!(m.repository_blobs(&a, None, 100).await.expect("q"), linked);
    assert_eq!(m.repository_blobs(&a, None, 1).await.expect("q"), linked[..1]);
    assert_eq!(m.repository_blobs(&a, Some(&linked[0].0), 100).await.expect("q"), linked[1..]);
    assert!(m.repository_blobs(&b, None, 100).await.expect("q").is_empty(), "b's only link was removed");
    assert!(m.repository_blobs(&repo("nope"), None, 100).await.expect("q").is_empty());
    let mut stored = vec![(digest.clone(), oci::media::OCI_MANIFEST, &body[..]), (index.clone(), oci::media::OCI_INDEX, &index_body[..])];
    stored.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    let listed = m.repository_manifests(&a, None, 100).await.expect("q");
    let listed: Vec<_> = listed.iter().map(|s| (s.digest.clone(), s.media_type.as_str(), s.content.as_slice())).collect();
    assert_eq!(listed, stored);
    let page2 = m.repository_manifests(&a, Some(&stored[0].0), 1).await.expect("q");
    assert_eq!(page2.iter().map(|s| s.digest.clone()).collect::<Vec<_>>(), [stored[1].0.clone()]);
    assert!(m.repository_manifests(&b, None, 100).await.expect("q").is_empty());
    let tags = m.repository_tags(&a, None, 100).await.expect("q");
    let names: Vec<&str> = tags.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["A", "Z", "a", "b", "c-1", "c_1", "latest", "multi", "v1"]);
    assert!(tags.iter().all(|(t, d)| *d == if matches!(t.as_str(), "multi" | "v1") { index.clone() } else { digest.clone() }));
    let after = m.repository_tags(&a, Some(&tag("c_1")), 2).await.expect("q");
    assert_eq!(after, [(tag("latest"), digest.clone()), (tag("multi"), index.clone())]);
    assert!(m.repository_tags(&repo("nope"), None, 100).await.expect("q").is_empty());

    // Deleting a tag leaves the manifest; deleting a manifest takes its tags.
    assert!(m.delete_tag(&a, &tag("v1"), &[]).await.expect("delete tag"));
    assert!(!m.delete_tag(&a, &tag("v1"), &[]).await.expect("delete tag"));
    assert!(m.manifest_by_digest(&a, &index).await.expect("q").is_some());
    assert!(m.delete_manifest(&a, &digest, &[]).await.expect("delete"));
    assert!(!m.delete_manifest(&a, &digest, &[]).await.expect("delete"));
    assert!(m.manifest_by_tag(&a, &tag("latest")).await.expect("q").is_none());
    assert_eq!(m.list_tags(&a, None, 100).await.expect("q").expect("repo").names, ["multi"]);

    // Catalog pages.
    let repos = m.list_repositories(None, 100).await.expect("q");
    assert_eq!(repos.names, ["team/a", "team/b"]);
    let repos = m.list_repositories(Some("team/a"), 1).await.expect("q");
    assert_eq!(repos, TagPage { names: vec!["team/b".into()], more: false });

    // Upload sessions: compare-and-set on the offset.
    let id: UploadId = "0123456789abcdef0123456789abcdef".parse().expect("id");
    m.create_upload(&id, &a, b"state0").await.expect("create");
    let s = m.upload(&id).await.expect("q").expect("session");
    assert_eq!((s.offset, s.hash_state.as_slice(), s.repository.as_str()), (0, &b"state0"[..], "team/a"));
    let up = UploadUpdate { id: &id, expected_offset: 0, offset: 10, hash_state: b"state1", driver_state: b"drv" };
    m.update_upload(&up).await.expect("update");
    assert!(matches!(m.update_upload(&up).await, Err(MetaError::Conflict)));
    let s = m.upload(&id).await.expect("q").expect("session");
    assert_eq!((s.offset, s.driver_state.as_slice()), (10, &b"drv"[..]));
    assert!(m.expired_uploads(std::time::Duration::from_secs(3600)).await.expect("q").is_empty());
    assert!(m.upload_exists(&id).await.expect("q"));
    let blob = Digest::sha256_of(b"uploaded");
    m.link_blob(&a, &blob, 8, Some(&id), &[]).await.expect("finish");
    assert!(m.upload(&id).await.expect("q").is_none());
    assert!(!m.delete_upload(&id).await.expect("delete"));
    assert!(m.all_blobs().await.expect("q").iter().any(|(d, s)| *d == blob && *s == 8));
    // Events: a batch larger than one multi-row insert, fanned out to two endpoints, then the
    // audit query, the outbox in order, failures and completion.
    let events: Vec<crate::NewEvent> = (0..450)
        .map(|i| crate::NewEvent {
            action: if i % 3 == 0 { "push" } else { "pull" },
            repository: format!("r{}", i % 2),
            digest: Some(format!("d{i}")),
            actor: (i == 7).then(|| "alice".to_owned()),
            endpoints: if i % 2 == 0 { vec!["ci".into(), "scan".into()] } else { vec!["ci".into()] },
            ..Default::default()
        })
        .collect();
    m.record_events(&events).await.expect("record");
    let all = m.events(&crate::EventFilter { limit: 10_000, ..Default::default() }).await.expect("events");
    assert_eq!(all.len(), 450);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all.iter().map(|e| e.digest.clone().unwrap_or_default()).collect::<Vec<_>>()[..3], ["d0", "d1", "d2"]);
    let f = crate::EventFilter { repository: Some("r0".into()), action: Some("push".into()), limit: 10_000, ..Default::default() };
    assert_eq!(m.events(&f).await.expect("events").len(), 75);
    let f = crate::EventFilter { actor: Some("alice".into()), limit: 10, ..Default::default() };
    assert_eq!(m.events(&f).await.expect("events")[0].digest.as_deref(), Some("d7"));
    assert!(m.claim_webhook_lease("ci", "node-a", std::time::Duration::from_secs(30)).await.expect("lease"));
    assert!(!m.claim_webhook_lease("ci", "node-b", std::time::Duration::from_secs(30)).await.expect("lease"));
    let due = m.due_deliveries("ci", 1000).await.expect("due");
    assert_eq!(due.len(), 450);
    assert_eq!(due.iter().map(|d| d.event.digest.clone().unwrap_or_default()).take(2).collect::<Vec<_>>(), ["d0", "d1"]);
    assert_eq!(m.due_deliveries("scan", 1000).await.expect("due").len(), 225);
    let first: Vec<i64> = due[..10].iter().map(|d| d.queue_id).collect();
    m.fail_deliveries("ci", &first, "receiver down", std::time::Duration::from_secs(60)).await.expect("fail");
    assert!(m.due_deliveries("ci", 1000).await.expect("due").is_empty(), "a failed head holds back the rest");
    let st = m.endpoint_status("ci").await.expect("status");
    assert_eq!((st.queued, st.failed_attempts, st.last_error.as_deref()), (450, 1, Some("receiver down")));
    let ids: Vec<i64> = due.iter().map(|d| d.queue_id).collect();
    m.complete_deliveries("ci", &ids).await.expect("complete");
    assert_eq!(m.endpoint_status("ci").await.expect("status").delivered, 450);
    m.release_webhook_lease("ci", "node-a").await.expect("release");
    assert!(m.claim_webhook_lease("ci", "node-b", std::time::Duration::from_secs(30)).await.expect("lease"));

    // Retention: nothing is pruned while a webhook still owes it; then everything old goes.
    m.record_events(&[crate::NewEvent { action: "push", repository: "r9".into(), endpoints: vec!["late".into()], ..Default::default() }]).await.expect("record");
    let future = crate::events::now_ms() + 60_000;
    let pruned = m.prune_events(future).await.expect("prune");
    assert_eq!(pruned, 225, "the 225 events the scan endpoint has not received stay");
    assert_eq!(m.events(&crate::EventFilter { limit: 1000, ..Default::default() }).await.expect("events").len(), 226, "as does the undelivered new one");

    // Usage: unique blob bytes in total, linked bytes per repository, open sessions.
    let totals = m.storage_totals(10).await.expect("totals");
    let all = m.all_blobs().await.expect("q");
    assert_eq!(totals.blob_count, all.len() as u64);
    assert_eq!(totals.total_bytes, all.iter().map(|(_, s)| s).sum::<u64>());
    assert_eq!(totals.open_uploads, 0);
    assert_eq!(totals.per_repo[0].repository, "team/a");
    assert_eq!((totals.per_repo[0].bytes, totals.per_repo[0].blobs), (5 + 6 + 8, 3));
    assert_eq!(m.storage_totals(0).await.expect("totals").per_repo.len(), 0);
    m.ping().await.expect("ping");
}

/// Garbage collection's queries and the locks-and-tombstones protocol (see `meta::gc`), on a
/// fresh database. Cutoffs in the future make everything "old" without waiting.
pub async fn run_gc(m: &MetaStore) {
    use crate::Dedup;
    let app = repo("gc/app");
    let other = repo("gc/other");
    let (keep, shared, orphan, cfg) = (Digest::sha256_of(b"keep"), Digest::sha256_of(b"shared"), Digest::sha256_of(b"orphan"), Digest::sha256_of(b"cfg"));
    for d in [&keep, &shared, &orphan, &cfg] {
        m.link_blob(&app, d, 10, None, &[]).await.expect("link");
    }
    assert_eq!(m.mount_blob(&other, &shared, Some(&app), &[]).await.expect("mount"), Some(10));
    let body = br#"{"schemaVersion":2}"#;
    let digest = Digest::sha256_of(body);
    let nm = NewManifest { digest: &digest, media_type: oci::media::OCI_MANIFEST, content: body, artifact_type: None, subject: None, annotations: None, blobs: vec![&cfg, &keep, &shared], children: vec![] };
    m.put_manifest(&app, &nm, &[tag("v1")], &[]).await.expect("manifest");
    let now = crate::events::now_ms();
    let (past, future) = (now - 60_000, now + 60_000);

    // Recent links are never candidates; old unreferenced ones are.
    assert!(m.gc_link_candidates(past, None, 100).await.expect("q").is_empty());
    let links = m.gc_link_candidates(future, None, 100).await.expect("q");
    let mut found: Vec<(String, String)> = links.iter().map(|c| (c.repository.clone(), c.digest.clone())).collect();
    found.sort();
    assert_eq!(found, [("gc/app".to_owned(), orphan.to_string()), ("gc/other".to_owned(), shared.to_string())]);
    // Paged: one at a time gives the same two.
    let first = m.gc_link_candidates(future, None, 1).await.expect("q");
    let second = m.gc_link_candidates(future, first.last(), 1).await.expect("q");
    assert_eq!(first.len() + second.len(), 2);
    assert_ne!(first, second);
    // The dry run sees through the links: only `orphan` would go (`shared` is referenced in app).
    let dry = m.gc_dry_run(future, None, 100).await.expect("dry run");
    assert_eq!(dry.iter().map(|b| &b.digest).collect::<Vec<_>>(), [&orphan]);
    assert!(m.gc_dry_run(past, None, 100).await.expect("dry run").is_empty());

    // Unlink both; a second attempt finds nothing; a recent cutoff refuses.
    for c in &links {
        assert_eq!(m.gc_unlink(std::slice::from_ref(c), past).await.expect("unlink"), 0, "not older than a past cutoff");
        assert_eq!(m.gc_unlink(std::slice::from_ref(c), future).await.expect("unlink"), 1);
        assert_eq!(m.gc_unlink(std::slice::from_ref(c), future).await.expect("unlink twice"), 0);
    }
    assert_eq!(m.blob_in_repo(&other, &shared).await.expect("q"), None);
    assert_eq!(m.blob_in_repo(&app, &shared).await.expect("q"), Some(10), "still referenced in app");
    let blobs = m.gc_blob_candidates(future, None, 100).await.expect("q");
    assert_eq!(blobs.iter().map(|b| &b.digest).collect::<Vec<_>>(), [&orphan]);

    // A push that finds the unlinked blob recorded links it again: it is no longer garbage.
    assert_eq!(m.link_existing(&other, &orphan, None, Some(10), None, &[]).await.expect("dedup"), Dedup::Linked(10));
    assert_eq!(m.gc_forget_blobs(std::slice::from_ref(&orphan), future).await.expect("forget").len(), 0, "linked again");
    assert!(matches!(m.link_existing(&other, &orphan, None, Some(11), None, &[]).await, Err(MetaError::Corrupt(_))), "size mismatch");
    let c = m.gc_link_candidates(future, None, 100).await.expect("q");
    assert_eq!(c.len(), 1);
    assert_eq!(m.gc_unlink(std::slice::from_ref(&c[0]), future).await.expect("unlink"), 1);
    let forgotten = m.gc_forget_blobs(std::slice::from_ref(&orphan), future).await.expect("forget");
    assert_eq!(forgotten.iter().map(|f| &f.1).collect::<Vec<_>>(), [&orphan]);
    assert_eq!(m.gc_forget_blobs(std::slice::from_ref(&orphan), future).await.expect("forget twice").len(), 0);
    assert_eq!(m.blob_anywhere(&orphan).await.expect("q"), None);
    // Until the collection confirms the bytes are gone, a push of the digest must wait.
    assert_eq!(m.link_existing(&other, &orphan, None, None, None, &[]).await.expect("dedup"), Dedup::Collecting);
    assert_eq!(m.gc_pending_tombstones(future).await.expect("pending").iter().map(|p| &p.1).collect::<Vec<_>>(), [&orphan]);
    assert!(m.gc_pending_tombstones(past).await.expect("pending").is_empty());
    assert_eq!(m.gc_prune_tombstones(future).await.expect("prune"), 0, "pending tombstones are kept");
    m.gc_bytes_deleted(&forgotten.iter().map(|f| f.0).collect::<Vec<_>>()).await.expect("bytes deleted");
    assert!(m.gc_pending_tombstones(future).await.expect("pending").is_empty());
    assert!(matches!(m.link_existing(&other, &orphan, None, None, None, &[]).await.expect("dedup"), Dedup::Absent { .. }));

    // The race: a push reads its mark, a collection of the same digest completes, then the push
    // records its own copy: refused (its bytes may be gone). A push with a fresh mark succeeds.
    let late = Digest::sha256_of(b"late");
    let Dedup::Absent { mark } = m.link_existing(&app, &late, None, Some(4), None, &[]).await.expect("dedup") else { panic!("late is new") };
    m.link_blob(&other, &late, 4, None, &[]).await.expect("someone else's push");
    let c = m.gc_link_candidates(future, None, 100).await.expect("q");
    assert_eq!(m.gc_unlink(std::slice::from_ref(c.iter().find(|c| c.digest == late.as_str()).expect("late's link")), future).await.expect("unlink"), 1);
    let forgotten = m.gc_forget_blobs(std::slice::from_ref(&late), future).await.expect("forget");
    assert_eq!(forgotten.len(), 1);
    assert!(matches!(m.link_new(&app, &late, 4, Some(mark), None, &[]).await, Err(MetaError::Collected(d)) if d == late.as_str()));
    m.gc_bytes_deleted(&[forgotten[0].0]).await.expect("bytes deleted");
    assert_eq!(m.blob_in_repo(&app, &late).await.expect("q"), None, "nothing recorded");
    let Dedup::Absent { mark } = m.link_existing(&app, &late, None, Some(4), None, &[]).await.expect("dedup") else { panic!("late is gone") };
    m.link_new(&app, &late, 4, Some(mark), None, &[]).await.expect("a push after the collection");
    assert_eq!(m.blob_in_repo(&app, &late).await.expect("q"), Some(4));

    // Deleting a manifest restarts the grace period of the links it kept alive.
    assert!(m.delete_manifest(&app, &digest, &[]).await.expect("delete"));
    let recent = m.gc_link_candidates(now - 1, None, 100).await.expect("q");
    assert!(recent.iter().all(|c| !(c.repository == "gc/app" && [keep.as_str(), shared.as_str(), cfg.as_str()].contains(&c.digest.as_str()))), "{recent:?}");
    let c = m.gc_link_candidates(future, None, 100).await.expect("q");
    assert_eq!(c.iter().filter(|c| c.repository == "gc/app").count(), 4, "keep, shared, cfg and late");

    // Batches are decided row by row, with what is true when they run: a manifest referencing
    // `shared` arrives after the listing, so the batch removes every link but that one, and
    // forgetting the four blobs forgets the three nothing links, each with its own tombstone.
    let body2 = br#"{"schemaVersion":2,"annotations":{"again":"shared"}}"#;
    let digest2 = Digest::sha256_of(body2);
    let nm2 = NewManifest { digest: &digest2, media_type: oci::media::OCI_MANIFEST, content: body2, artifact_type: None, subject: None, annotations: None, blobs: vec![&shared], children: vec![] };
    m.put_manifest(&app, &nm2, &[tag("v2")], &[]).await.expect("manifest");
    assert_eq!(m.gc_unlink(&c, future).await.expect("unlink batch"), c.len() as u64 - 1);
    assert_eq!(m.blob_in_repo(&app, &shared).await.expect("q"), Some(10));
    let four = [keep.clone(), shared.clone(), cfg.clone(), late.clone()];
    let mut forgotten = m.gc_forget_blobs(&four, future).await.expect("forget batch");
    forgotten.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected = vec![keep.clone(), cfg.clone(), late.clone()];
    expected.sort();
    assert_eq!(forgotten.iter().map(|f| f.1.clone()).collect::<Vec<_>>(), expected);
    let mut pending = m.gc_pending_tombstones(future).await.expect("pending");
    pending.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(pending, forgotten, "one tombstone per blob, with the ids returned");
    m.gc_bytes_deleted(&forgotten.iter().map(|f| f.0).collect::<Vec<_>>()).await.expect("bytes deleted");

    // Old tombstones are pruned.
    assert!(m.gc_prune_tombstones(future).await.expect("prune") >= 2);
}
