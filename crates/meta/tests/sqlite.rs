//! The metadata suite on SQLite, the embedded default.

#[tokio::test]
async fn sqlite_passes_the_metadata_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), true).await.expect("open");
    meta::testsuite::run(&store).await;
    store.close().await;
    // Reopening runs no migration twice and keeps the data.
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), true).await.expect("reopen");
    assert_eq!(store.list_repositories(None, 10).await.expect("q").names, ["team/a", "team/b"]);
}

#[tokio::test]
async fn sqlite_passes_the_policy_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
    meta::testsuite_policy::run(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_gc_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
    meta::testsuite::run_gc(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_lifecycle_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
    meta::testsuite_lifecycle::run(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_untagged_gc_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = meta::MetaStore::open_sqlite(&dir.path().join("meta.db"), false).await.expect("open");
    meta::testsuite_lifecycle::run_untagged_gc(&store).await;
}
