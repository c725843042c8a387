//! The schema, as numbered migrations. Each migration is one text with placeholders for the few
//! places SQLite and PostgreSQL differ; both backends run the same statements otherwise.

/// Backend dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Migrations in order. Never edit a released one: add another.
const MIGRATIONS: &[&str] = &[r"
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
", r"
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
", r"
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
", r"
-- Quotas (see meta::quota). Per namespace (a repository pattern from the configuration): an
-- upper bound of the distinct blob bytes its repositories link, raised under this row's lock
-- by every link into the namespace, and when it was last counted exactly.
CREATE TABLE quota_usage (
    namespace TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL,
    computed_at BIGINT NOT NULL
);
", r"
-- Garbage collection of untagged manifests (gc.untagged). When a manifest last lost something
-- that kept it: a tag (moved away or deleted), the index that listed it, or its subject. A PUT
-- of the manifest again sets it too. NULL: nothing since its push (created_at counts). Existing
-- manifests count from this migration, so an upgrade deletes nothing that lost a tag before it.
ALTER TABLE manifests ADD COLUMN untagged_at BIGINT;
UPDATE manifests SET untagged_at = {NOW_MS}
", r"
-- Whether a manifest of a repository references a blob: asked for every link garbage
-- collection looks at. The primary key leads with the manifest, and manifest_blobs_blob with
-- the blob alone, so without this index SQLite answered it by walking every reference of the
-- repository.
CREATE INDEX manifest_blobs_repository_blob ON manifest_blobs (repository_id, blob_digest)
"];

/// The statements of migration `index` for `dialect`.
pub fn statements(dialect: Dialect, index: usize) -> Vec<String> {
    let (id, name, bytes, now_ms) = match dialect {
        // INTEGER PRIMARY KEY is SQLite's rowid alias: it allocates ids itself.
        Dialect::Sqlite => ("INTEGER PRIMARY KEY", "TEXT", "BLOB", "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"),
        // The C collation makes `ORDER BY name` byte order, as the spec's lexical order needs.
        Dialect::Postgres => ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "TEXT COLLATE \"C\"", "BYTEA", "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)"),
    };
    let text = MIGRATIONS[index].replace("{ID}", id).replace("{NAME}", name).replace("{BYTES}", bytes).replace("{NOW_MS}", now_ms);
    text.split(';')
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn count() -> usize {
    MIGRATIONS.len()
}
