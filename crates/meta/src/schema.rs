//! The schema, as numbered migrations. Each migration is one text with placeholders for the few
//! places SQLite and PostgreSQL differ; both backends run the same statements otherwise.

/// Backend dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A migration: one text for both backends, or one per backend where they must differ.
enum Migration {
    Both(&'static str),
    PerDialect { sqlite: &'static str, postgres: &'static str },
}

use Migration::{Both, PerDialect};

/// Migrations in order. Never edit a released one: add another.
const MIGRATIONS: &[Migration] = &[Both(r"
CREATE TABLE repositories (
    id {ID},
    name {NAME} NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- A repository may serve a blob only through a link: pushed, mounted or referenced there.
CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest TEXT NOT NULL REFERENCES blobs(digest),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);
-- Manifest documents are kept verbatim: the digest is over these exact bytes.
CREATE TABLE manifests (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    content {BYTES} NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject);
-- What each manifest references, so references can be checked and, later, collected.
CREATE TABLE manifest_blobs (
    repository_id BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, blob_digest)
);
CREATE INDEX manifest_blobs_blob ON manifest_blobs (blob_digest);
CREATE TABLE manifest_children (
    repository_id BIGINT NOT NULL,
    parent_digest TEXT NOT NULL,
    child_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, parent_digest, child_digest)
);
CREATE INDEX manifest_children_child ON manifest_children (repository_id, child_digest);
CREATE TABLE tags (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    name {NAME} NOT NULL,
    manifest_digest TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_manifest ON tags (repository_id, manifest_digest);
-- Upload sessions live here, not in memory, so any node can continue one.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    byte_offset BIGINT NOT NULL,
    hash_state {BYTES} NOT NULL,
    driver_state {BYTES} NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX uploads_updated ON uploads (updated_at);
"), Both(r"
-- What happened, for the audit log and webhooks. Rows are written in the transaction of the
-- change they describe (pulls, which change nothing, in batches).
CREATE TABLE events (
    id {ID},
    created_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT,
    tag TEXT,
    media_type TEXT,
    size BIGINT,
    from_repository TEXT,
    actor TEXT,
    address TEXT,
    request_id TEXT,
    user_agent TEXT,
    method TEXT
);
CREATE INDEX events_repository ON events (repository, id);
CREATE INDEX events_created ON events (created_at);
-- The webhook outbox: one row per event and endpoint that wants it, written with the event.
CREATE TABLE webhook_queue (
    id {ID},
    endpoint TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX webhook_queue_endpoint ON webhook_queue (endpoint, id);
-- Which node delivers an endpoint's queue (one at a time keeps per-repository order).
CREATE TABLE webhook_leases (
    endpoint TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until BIGINT NOT NULL,
    delivered BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    last_success_at BIGINT
);
"), Both(r"
-- Garbage collection. A link's used_at is when it was last created or mounted: an unreferenced
-- link is collected once it is older than the grace period.
ALTER TABLE repository_blobs ADD COLUMN used_at BIGINT NOT NULL DEFAULT 0;
UPDATE repository_blobs SET used_at = created_at;
CREATE INDEX repository_blobs_used ON repository_blobs (used_at);
-- When a blob lost a link (its grace period counts from the last one).
ALTER TABLE blobs ADD COLUMN released_at BIGINT;
-- Blobs collected, newest last. storage_deleted_at stays NULL until the collection has
-- deleted the bytes: meanwhile a push of the digest waits. A push that stored its own copy
-- and then finds a tombstone newer than the mark it read fails cleanly, instead of recording a
-- blob whose bytes may be gone.
CREATE TABLE blob_tombstones (
    id {ID},
    digest TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    storage_deleted_at BIGINT
);
CREATE INDEX blob_tombstones_digest ON blob_tombstones (digest, id);
CREATE INDEX blob_tombstones_deleted ON blob_tombstones (deleted_at);
"), Both(r"
-- Quotas (see meta::quota). Per namespace (a repository pattern from the configuration): an
-- upper bound of the distinct blob bytes its repositories link, raised under this row's lock
-- by every link into the namespace, and when it was last counted exactly.
CREATE TABLE quota_usage (
    namespace TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL,
    computed_at BIGINT NOT NULL
);
"), Both(r"
-- Garbage collection of untagged manifests (gc.untagged). When a manifest last lost something
-- that kept it: a tag (moved away or deleted), the index that listed it, or its subject. A PUT
-- of the manifest again sets it too. NULL: nothing since its push (created_at counts). Existing
-- manifests count from this migration, so an upgrade deletes nothing that lost a tag before it.
ALTER TABLE manifests ADD COLUMN untagged_at BIGINT;
UPDATE manifests SET untagged_at = {NOW_MS}
"), Both(r"
-- Whether a manifest of a repository references a blob: asked for every link garbage
-- collection looks at. The primary key leads with the manifest, and manifest_blobs_blob with
-- the blob alone, so without this index SQLite answered it by walking every reference of the
-- repository.
CREATE INDEX manifest_blobs_repository_blob ON manifest_blobs (repository_id, blob_digest)
"), PerDialect {
    // SQLite: the tables with short rows and a text primary key become WITHOUT ROWID tables,
    // stored in their primary key's B-tree. As rowid tables a row lived in a second B-tree in
    // insertion order, so a batch of rows in digest order (garbage collection's, a manifest's
    // references) touched one page per row there: a collection of 50,000 blobs wrote about
    // three WAL pages per row, and the rebuild cut its CPU by 29%. Tables are rebuilt the way SQLite
    // documents (foreign keys are off while a migration runs: see `MetaStore::migrate`).
    sqlite: r"
CREATE TABLE blobs_new (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    released_at BIGINT
) WITHOUT ROWID;
INSERT INTO blobs_new (digest, size, created_at, released_at) SELECT digest, size, created_at, released_at FROM blobs;
DROP TABLE blobs;
ALTER TABLE blobs_new RENAME TO blobs;
CREATE TABLE repository_blobs_new (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest TEXT NOT NULL REFERENCES blobs(digest),
    created_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
INSERT INTO repository_blobs_new (repository_id, digest, created_at, used_at) SELECT repository_id, digest, created_at, used_at FROM repository_blobs;
DROP TABLE repository_blobs;
ALTER TABLE repository_blobs_new RENAME TO repository_blobs;
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);
CREATE TABLE manifest_blobs_new (
    repository_id BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, blob_digest)
) WITHOUT ROWID;
INSERT INTO manifest_blobs_new (repository_id, manifest_digest, blob_digest) SELECT repository_id, manifest_digest, blob_digest FROM manifest_blobs;
DROP TABLE manifest_blobs;
ALTER TABLE manifest_blobs_new RENAME TO manifest_blobs;
CREATE INDEX manifest_blobs_blob ON manifest_blobs (blob_digest);
CREATE INDEX manifest_blobs_repository_blob ON manifest_blobs (repository_id, blob_digest);
CREATE TABLE manifest_children_new (
    repository_id BIGINT NOT NULL,
    parent_digest TEXT NOT NULL,
    child_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, parent_digest, child_digest)
) WITHOUT ROWID;
INSERT INTO manifest_children_new (repository_id, parent_digest, child_digest) SELECT repository_id, parent_digest, child_digest FROM manifest_children;
DROP TABLE manifest_children;
ALTER TABLE manifest_children_new RENAME TO manifest_children;
CREATE INDEX manifest_children_child ON manifest_children (repository_id, child_digest)
",
    // No query reads links by their last use (garbage collection walks them by repository
    // and digest); the index only cost every push and every collected link a write.
    postgres: r"
DROP INDEX repository_blobs_used
",
}];

/// The statements of migration `index` for `dialect`.
pub fn statements(dialect: Dialect, index: usize) -> Vec<String> {
    let (id, name, bytes, now_ms) = match dialect {
        // INTEGER PRIMARY KEY is SQLite's rowid alias: it allocates ids itself.
        Dialect::Sqlite => ("INTEGER PRIMARY KEY", "TEXT", "BLOB", "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"),
        // The C collation makes `ORDER BY name` byte order, as the spec's lexical order needs.
        Dialect::Postgres => ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "TEXT COLLATE \"C\"", "BYTEA", "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)"),
    };
    let text = match (&MIGRATIONS[index], dialect) {
        (Both(text), _) | (PerDialect { sqlite: text, .. }, Dialect::Sqlite) | (PerDialect { postgres: text, .. }, Dialect::Postgres) => *text,
    };
    let text = text.replace("{ID}", id).replace("{NAME}", name).replace("{BYTES}", bytes).replace("{NOW_MS}", now_ms);
    text.split(';')
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn count() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MetaError, MetaStore};
    use sqlx::{AssertSqlSafe, Connection, Executor, Row};

    const BLOB: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const CONFIG: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const MANIFEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    const INDEX: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

    /// A database as a release with the first `version` migrations left it, holding an image
    /// (two blobs, a tagged manifest, an index listing it) in `team/app`; with `dangling`, also
    /// a link to a blob that has no row (only possible with foreign keys off).
    async fn old_database(path: &std::path::Path, version: usize, dangling: bool) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("connect");
        conn.execute("PRAGMA foreign_keys = OFF").await.expect("pragma");
        conn.execute("CREATE TABLE berth_schema (version BIGINT NOT NULL)").await.expect("schema table");
        for v in 0..version {
            for stmt in statements(Dialect::Sqlite, v) {
                conn.execute(AssertSqlSafe(stmt)).await.expect("old migration");
            }
            sqlx::query("INSERT INTO berth_schema (version) VALUES ($1)").bind(v as i64 + 1).execute(&mut conn).await.expect("version");
        }
        let mut rows = vec![
            "INSERT INTO repositories (id, name, created_at) VALUES (1, 'team/app', 1)".to_owned(),
            format!("INSERT INTO blobs (digest, size, created_at) VALUES ('{BLOB}', 10, 1), ('{CONFIG}', 2, 1)"),
            format!("INSERT INTO repository_blobs (repository_id, digest, created_at, used_at) VALUES (1, '{BLOB}', 1, 1), (1, '{CONFIG}', 1, 1)"),
            format!(
                "INSERT INTO manifests (repository_id, digest, media_type, content, created_at) VALUES \
                 (1, '{MANIFEST}', 'application/vnd.oci.image.manifest.v1+json', X'7B7D', 1), \
                 (1, '{INDEX}', 'application/vnd.oci.image.index.v1+json', X'7B7D', 1)"
            ),
            format!("INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) VALUES (1, '{MANIFEST}', '{BLOB}'), (1, '{MANIFEST}', '{CONFIG}')"),
            format!("INSERT INTO manifest_children (repository_id, parent_digest, child_digest) VALUES (1, '{INDEX}', '{MANIFEST}')"),
            format!("INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES (1, 'v1', '{MANIFEST}', 1)"),
        ];
        if dangling {
            rows.push("INSERT INTO repository_blobs (repository_id, digest, created_at, used_at) VALUES (1, 'sha256:gone', 1, 1)".to_owned());
        }
        for r in rows {
            conn.execute(AssertSqlSafe(r)).await.expect("old row");
        }
        conn.close().await.expect("close");
    }

    async fn column(store: &MetaStore, sql: &str) -> Vec<String> {
        let rows = sqlx::query(AssertSqlSafe(sql.to_owned())).fetch_all(&store.read).await.expect("query");
        rows.iter().map(|r| r.try_get::<String, _>(0).expect("text")).collect()
    }

    #[tokio::test]
    async fn upgrading_sqlite_rebuilds_the_link_tables_without_rowid_and_keeps_every_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        old_database(&path, 6, false).await;
        let store = MetaStore::open_sqlite(&path, false).await.expect("open and migrate");
        assert_eq!(store.schema_version().await.expect("version"), count() as u64);
        let without_rowid = column(&store, "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID' ORDER BY name").await;
        assert_eq!(without_rowid, ["blobs", "manifest_blobs", "manifest_children", "repository_blobs"]);
        let indexes = column(&store, "SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE 'sqlite_%' AND tbl_name IN ('repository_blobs', 'manifest_blobs', 'manifest_children') ORDER BY name").await;
        assert_eq!(indexes, ["manifest_blobs_blob", "manifest_blobs_repository_blob", "manifest_children_child", "repository_blobs_digest"]);
        // Every row is still there, and reads through the store find them.
        let repo: oci::RepoName = "team/app".parse().expect("repo");
        assert_eq!(store.blob_in_repo(&repo, &BLOB.parse().expect("digest")).await.expect("link"), Some(10));
        assert_eq!(store.blob_in_repo(&repo, &CONFIG.parse().expect("digest")).await.expect("link"), Some(2));
        let tagged = store.manifest_by_tag(&repo, &"v1".parse().expect("tag")).await.expect("tag").expect("tagged");
        assert_eq!(tagged.digest.as_str(), MANIFEST);
        assert_eq!(column(&store, "SELECT blob_digest FROM manifest_blobs ORDER BY blob_digest").await, [BLOB, CONFIG]);
        assert_eq!(column(&store, "SELECT child_digest FROM manifest_children").await, [MANIFEST]);
        // Foreign keys are on again for the writes that follow.
        let orphan = sqlx::query("INSERT INTO repository_blobs (repository_id, digest, created_at, used_at) VALUES (1, 'sha256:nothing', 1, 1)");
        let refused = store.write_one(orphan).await.expect_err("a link to a blob with no row must be refused");
        assert!(refused.to_string().contains("FOREIGN KEY"), "{refused}");
        store.close().await;
    }

    #[tokio::test]
    async fn a_migration_that_would_leave_broken_references_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        old_database(&path, 6, true).await;
        match MetaStore::open_sqlite(&path, false).await {
            Err(MetaError::Corrupt(m)) => assert!(m.contains("migration 7") && m.contains("1 rows"), "{m}"),
            Err(e) => panic!("expected the check to refuse, got {e}"),
            Ok(_) => panic!("a database with a dangling link migrated"),
        }
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}", path.display())).await.expect("connect");
        let v: i64 = sqlx::query("SELECT MAX(version) AS v FROM berth_schema").fetch_one(&mut conn).await.expect("version").try_get("v").expect("v");
        assert_eq!(v, 6);
        let sql: String = sqlx::query("SELECT sql FROM sqlite_schema WHERE name = 'blobs'").fetch_one(&mut conn).await.expect("blobs").try_get("sql").expect("sql");
        assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
    }
}
