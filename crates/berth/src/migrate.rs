//! `berth migrate`: copy one berth deployment into another, offline. The usual move is from the
//! embedded default (filesystem + SQLite) onto the scale-out mode (S3 + PostgreSQL):
//!
//! ```text
//! berth migrate --from CONFIG --to CONFIG [--from-data-dir DIR] [--to-data-dir DIR] [--jobs N]
//! ```
//!
//! Each side is a configuration file as `serve` reads it (an empty file is the embedded default;
//! `--from-data-dir`/`--to-data-dir` override its `data_dir` like `serve --data-dir`). `BERTH_*`
//! environment variables are *not* applied: one environment cannot say which side it means.
//!
//! What it copies, in this order: every blob linked to some repository (bytes read from the
//! source `BlobStore` and streamed into the destination, hashed on the way and committed only
//! under the digest they hash to), then each repository's blob links, its manifests (exact bytes,
//! same media type, same digest; an index after the manifests it lists, a referrer in any order
//! since its subject is not checked), and its tags. Then a verification pass re-reads both sides
//! and compares repositories, tags (and what each points at), manifests, blob links and blobs;
//! any difference makes the exit status non-zero.
//!
//! How: the source is read through `MetaStore` listings and `BlobStore::get`; the destination is
//! written through the registry engine (`Registry::upload_whole`, `blob_mount`, `manifest_put`),
//! so every byte and manifest is validated exactly as a push would be, and the destination's
//! event table records each change as a push or mount by user agent `berth-migrate` (no webhook
//! is queued: the destination's subscribers are not told about old content).
//!
//! Idempotent and resumable: an item the destination's metadata already has is skipped, so a
//! re-run after an interruption finishes the job and a re-run after success copies nothing (a
//! blob whose copy was cut short is copied again from its start).
//!
//! Not migrated: upload sessions in progress (clients restart them), blobs linked to no
//! repository (garbage waiting for collection), repositories left with no content, and the event
//! history (audit log and webhook outbox). Source and destination must not share a database;
//! sharing a bucket works but copies every blob onto itself.
//!
//! The source is only read, except that its schema is first brought up to date, as `serve`
//! would. Stop the source's servers first: writes made during a run may be missed (a re-run
//! picks up additions, never deletions; the verification pass reports either as a difference).
//!
//! The run's plumbing (counters, progress lines, bounded parallel blob copies, dependency order
//! of manifests) is shared with `berth import` (`crate::import`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use meta::MetaStore;
use oci::{Digest, Reference, RepoName, Tag};
use registry::{REQUEST, Registry, RequestContext};
use storage::{BlobStore, ByteStream};
use tokio::task::JoinSet;

use crate::config::{self, Config, DatabaseDriver, Overrides, StorageDriver};

/// Rows fetched per listing query.
const PAGE: u32 = 500;
/// A progress line after this many items (blobs, links, manifests, tags) ...
const PROGRESS_EVERY: u64 = 1000;
/// ... and at least this often while anything moves (one large blob can take minutes).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub(crate) struct MigrateArgs {
    /// Configuration of the deployment to copy from (an empty file: the embedded default).
    #[arg(long, value_name = "CONFIG", required_unless_present = "from_data_dir")]
    from: Option<PathBuf>,
    /// Configuration of the deployment to copy into.
    #[arg(long, value_name = "CONFIG", required_unless_present = "to_data_dir")]
    to: Option<PathBuf>,
    /// The source's data_dir (overrides its configuration, like `serve --data-dir`).
    #[arg(long, value_name = "DIR")]
    from_data_dir: Option<PathBuf>,
    /// The destination's data_dir.
    #[arg(long, value_name = "DIR")]
    to_data_dir: Option<PathBuf>,
    /// Blobs copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
}

pub(crate) fn main(args: MigrateArgs) -> ExitCode {
    match crate::runtime().block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("berth migrate: FAILED (see the errors above); re-running resumes where this run stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("berth migrate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: Option<&Path>, data_dir: Option<PathBuf>, side: &str) -> anyhow::Result<Config> {
    config::load(file, std::iter::empty::<(String, String)>(), &Overrides { listen: None, data_dir })
        .map_err(|e| anyhow!("{side} configuration{}: {e}", file.map(|f| format!(" {}", f.display())).unwrap_or_default()))
}

/// Where a configuration keeps its metadata, to refuse copying a database onto itself.
fn database_location(cfg: &Config) -> String {
    match &cfg.database {
        DatabaseDriver::Sqlite => format!("SQLite {}", absolute(&cfg.sqlite_path).display()),
        DatabaseDriver::Postgres { url, .. } => format!("PostgreSQL {}", crate::redact(url)),
    }
}

fn storage_location(cfg: &Config) -> String {
    match &cfg.storage {
        StorageDriver::Filesystem => format!("filesystem {}", absolute(&cfg.blob_root).display()),
        StorageDriver::S3(o) => format!("S3 {} bucket {} prefix {:?}", o.endpoint.as_deref().unwrap_or("(AWS)"), o.bucket, o.prefix.trim_matches('/')),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_owned())
}

async fn run(args: MigrateArgs) -> anyhow::Result<bool> {
    let from = load(args.from.as_deref(), args.from_data_dir, "source (--from)")?;
    let to = load(args.to.as_deref(), args.to_data_dir, "destination (--to)")?;
    let (src_db, dst_db) = (database_location(&from), database_location(&to));
    if src_db == dst_db {
        bail!("source and destination use the same database ({src_db}): berth migrate copies into another deployment");
    }
    let (src_store, dst_store) = (storage_location(&from), storage_location(&to));
    if src_store == dst_store {
        eprintln!("berth migrate: note: both sides use {src_store}; every blob is copied onto itself");
    }
    let (src_meta, src_blobs) = open_source(&from).await?;
    let dst = open_destination(&to).await.context("destination")?;
    eprintln!("berth migrate: from {src_db}, {src_store}");
    eprintln!("berth migrate: to   {dst_db}, {dst_store}");
    let run = Run::start("berth migrate");
    let ctx = run.context.clone();
    let outcome = REQUEST.scope(ctx, migrate(&src_meta, &src_blobs, &dst, args.jobs.into(), &run)).await;
    run.progress_stop().await;
    let result = match outcome {
        Ok(linked) => {
            run.summary();
            eprintln!("  not migrated: upload sessions in progress (clients start those again), the event history");
            let mismatches = verify(&src_meta, dst.meta(), &linked).await;
            match mismatches {
                Ok(m) if m.is_empty() && run.errors().is_empty() => Ok(true),
                Ok(m) => {
                    for line in &m {
                        eprintln!("berth migrate: MISMATCH: {line}");
                    }
                    run.print_errors();
                    Ok(false)
                }
                Err(e) => Err(e.context("verification")),
            }
        }
        Err(e) => {
            run.print_errors();
            Err(e)
        }
    };
    src_meta.close().await;
    dst.meta().close().await;
    result
}

async fn open_source(cfg: &Config) -> anyhow::Result<(MetaStore, Arc<dyn BlobStore>)> {
    // Opening creates what is missing; a mistyped source path must not look like an empty registry.
    if matches!(cfg.database, DatabaseDriver::Sqlite) && !cfg.sqlite_path.is_file() {
        bail!("source: no metadata database at {} (check --from / --from-data-dir)", cfg.sqlite_path.display());
    }
    if matches!(cfg.storage, StorageDriver::Filesystem) && !cfg.blob_root.is_dir() {
        bail!("source: no blob storage at {} (check --from / --from-data-dir)", cfg.blob_root.display());
    }
    let meta = crate::open_database(cfg).await.context("source")?;
    let blobs = crate::open_storage(cfg).await.context("source")?;
    Ok((meta, blobs))
}

/// The engine over the deployment `cfg` describes, creating its directories as `serve` does.
pub(crate) async fn open_destination(cfg: &Config) -> anyhow::Result<Registry> {
    for dir in [Some(cfg.data_dir.as_path()), cfg.sqlite_path.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let blobs = crate::open_storage(cfg).await?;
    let meta = crate::open_database(cfg).await?;
    // The default events settings: changes are recorded in the event table (the audit record
    // says where the content came from) but queued for no webhook endpoint.
    Ok(Registry::new(meta, blobs, cfg.registry.clone()))
}

/// Copy everything; returns the set of blobs linked in the source (what the destination must hold).
async fn migrate(src: &MetaStore, src_blobs: &Arc<dyn BlobStore>, dst: &Registry, jobs: usize, run: &Run) -> anyhow::Result<HashSet<Digest>> {
    let repos = all_repositories(src).await?;
    run.stats.repositories.store(repos.len() as u64, Ordering::Relaxed);

    // Blobs: each once, in parallel, linked to the first repository that has it.
    run.phase("blobs");
    let mut linked: HashSet<Digest> = HashSet::new();
    let mut unusable: HashSet<Digest> = HashSet::new();
    let mut copies = Copies::new(jobs, run);
    for repo in &repos {
        for (digest, size) in all_links(src, repo).await? {
            if !linked.insert(digest.clone()) {
                continue;
            }
            match present_blob(dst, &digest, size).await {
                Ok(true) => {
                    run.count(&run.stats.blobs_present, 1);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    run.error(format!("{e:#}"));
                    unusable.insert(digest);
                    continue;
                }
            }
            let (dst, src_blobs, repo, run2) = (dst.clone(), src_blobs.clone(), repo.clone(), run.clone());
            copies
                .spawn(digest.clone(), async move {
                    let body = src_blobs.get(&digest, None).await.with_context(|| format!("reading {digest} from the source storage"))?;
                    let n = copy_blob(&dst, &repo, &digest, body, &run2).await.map_err(|e| e.context(format!("source blob {digest}")))?;
                    if n != size {
                        // The bytes hash to the digest, so they are right and the source's record is not.
                        eprintln!("berth migrate: warning: {digest} is {n} bytes; the source recorded {size}");
                    }
                    Ok(())
                })
                .await;
        }
    }
    unusable.extend(copies.finish().await);
    let unreferenced = src.all_blobs().await?.iter().filter(|(d, _)| !linked.contains(d)).count();
    if unreferenced > 0 {
        eprintln!("berth migrate: {unreferenced} blobs linked to no repository are not copied (garbage waiting for collection)");
    }

    // Links, manifests and tags, repository by repository.
    let mut empty = 0usize;
    for repo in &repos {
        run.phase("links");
        let links = all_links(src, repo).await?;
        link_blobs(dst, repo, links.iter().map(|(d, _)| d).filter(|d| !unusable.contains(*d)), run).await?;
        run.phase("manifests");
        let (manifests, failed) = copy_manifests(src, dst, repo, run).await?;
        run.phase("tags");
        let tags = copy_tags(src, dst, repo, &failed, run).await?;
        if links.is_empty() && manifests == 0 && tags == 0 {
            empty += 1;
        }
    }
    if empty > 0 {
        eprintln!("berth migrate: {empty} repositories without blobs, manifests or tags are not created");
    }
    run.stats.repositories.store((repos.len() - empty) as u64, Ordering::Relaxed);
    Ok(linked)
}

/// Whether the destination already records `digest`; an error if with another size.
pub(crate) async fn present_blob(dst: &Registry, digest: &Digest, size: u64) -> anyhow::Result<bool> {
    match dst.meta().blob_anywhere(digest).await? {
        None => Ok(false),
        Some(s) if s == size => Ok(true),
        Some(s) => bail!("{digest}: the destination records {s} bytes, the source {size}"),
    }
}

/// Link each of `digests` to `repo` in the destination, where it is not linked yet.
pub(crate) async fn link_blobs<'a>(dst: &Registry, repo: &RepoName, digests: impl Iterator<Item = &'a Digest>, run: &Run) -> anyhow::Result<()> {
    for digest in digests {
        if dst.meta().blob_in_repo(repo, digest).await?.is_some() {
            continue;
        }
        if dst.blob_mount(repo, digest, None).await.with_context(|| format!("linking {digest} to {repo}"))? {
            run.count(&run.stats.links, 1);
        } else {
            run.error(format!("{repo}: blob {digest} is not in the destination, cannot link it"));
        }
    }
    Ok(())
}

/// Copy the manifests of `repo` the destination lacks, children first. Returns how many the
/// source has, and those that could not be copied.
async fn copy_manifests(src: &MetaStore, dst: &Registry, repo: &RepoName, run: &Run) -> anyhow::Result<(usize, HashSet<Digest>)> {
    let mut total = 0;
    let mut failed = HashSet::new();
    let mut after: Option<Digest> = None;
    // Indexes wait until every manifest they list is in; only their lists are kept meanwhile.
    let mut waiting: Vec<(Digest, Vec<Digest>)> = Vec::new();
    loop {
        let page = src.repository_manifests(repo, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        after = page.last().map(|m| m.digest.clone());
        total += page.len();
        for m in page {
            if dst.meta().manifest_by_digest(repo, &m.digest).await?.is_some() {
                run.count(&run.stats.manifests_present, 1);
                continue;
            }
            let children: Vec<Digest> = match oci::manifest::parse(Some(&m.media_type), &m.content) {
                Ok(p) => p.manifests.into_iter().map(|c| c.digest).collect(),
                Err(e) => {
                    run.error(format!("{repo}@{}: the source holds a manifest this version rejects: {e}", m.digest));
                    failed.insert(m.digest);
                    continue;
                }
            };
            if children.is_empty() {
                if !put_manifest(dst, repo, &m.digest, &m.media_type, m.content, &[], run).await {
                    failed.insert(m.digest);
                }
            } else {
                waiting.push((m.digest, children));
            }
        }
        if !full {
            break;
        }
    }
    let lists: HashMap<Digest, Vec<Digest>> = waiting.iter().cloned().collect();
    for digest in children_first(waiting) {
        if let Some(c) = lists.get(&digest).and_then(|children| children.iter().find(|c| failed.contains(*c))) {
            run.error(format!("{repo}@{digest}: lists {c}, which could not be copied"));
            failed.insert(digest);
            continue;
        }
        let m = src.manifest_by_digest(repo, &digest).await?.ok_or_else(|| anyhow!("{repo}@{digest} vanished from the source during the run"))?;
        if !put_manifest(dst, repo, &digest, &m.media_type, m.content, &[], run).await {
            failed.insert(digest);
        }
    }
    Ok((total, failed))
}

/// Point the destination's tags of `repo` where the source's point, except at manifests that
/// could not be copied (`failed`: already errors of the run). Returns how many the source has.
async fn copy_tags(src: &MetaStore, dst: &Registry, repo: &RepoName, failed: &HashSet<Digest>, run: &Run) -> anyhow::Result<usize> {
    let have = all_tags(dst.meta(), repo).await?;
    let mut total = 0;
    let mut after: Option<Tag> = None;
    loop {
        let page = src.repository_tags(repo, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        after = page.last().map(|(t, _)| t.clone());
        total += page.len();
        let mut wanted: BTreeMap<Digest, Vec<Tag>> = BTreeMap::new();
        for (tag, digest) in page {
            if have.get(&tag) == Some(&digest) {
                run.count(&run.stats.tags_present, 1);
            } else if failed.contains(&digest) {
                eprintln!("{}: {repo}:{tag} is not set: {digest} could not be copied", run.tool);
            } else {
                wanted.entry(digest).or_default().push(tag);
            }
        }
        for (digest, tags) in wanted {
            let m = src.manifest_by_digest(repo, &digest).await?.ok_or_else(|| anyhow!("{repo}@{digest} vanished from the source during the run"))?;
            put_manifest(dst, repo, &digest, &m.media_type, m.content, &tags, run).await;
        }
        if !full {
            break;
        }
    }
    Ok(total)
}

/// Store a manifest (and point `tags` at it) through the engine; a refusal is recorded as an
/// error of the run and the run goes on.
pub(crate) async fn put_manifest(dst: &Registry, repo: &RepoName, digest: &Digest, media_type: &str, content: Vec<u8>, tags: &[Tag], run: &Run) -> bool {
    let reference = Reference::Digest(digest.clone());
    let error = match dst.manifest_put(repo, &reference, Some(media_type), Bytes::from(content), tags).await {
        Ok(_) if tags.is_empty() => {
            run.count(&run.stats.manifests_copied, 1);
            return true;
        }
        Ok(_) => {
            run.count(&run.stats.tags_set, tags.len() as u64);
            return true;
        }
        // The source can hold such a manifest: deleting a blob or a listed manifest does not
        // check who references it. The destination refuses it, as it would refuse the push.
        Err(registry::Error::ManifestBlobUnknown(missing)) => format!(
            "{repo}@{digest}: references {missing}, which is not in {repo} (deleted after this manifest was pushed?); \
             delete the manifest or push what it references again, then re-run"
        ),
        Err(e) => format!("{repo}@{digest}: {e}"),
    };
    run.error(error);
    false
}

/// Stream `body` into the destination as blob `digest` of `repo`. The engine hashes it on the
/// way and commits it only if it hashes to `digest`. Returns its size.
pub(crate) async fn copy_blob(dst: &Registry, repo: &RepoName, digest: &Digest, body: ByteStream, run: &Run) -> anyhow::Result<u64> {
    let stats = run.stats.clone();
    let counted: ByteStream = Box::pin(body.inspect(move |chunk| {
        if let Ok(b) = chunk {
            stats.streamed.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
    }));
    match dst.upload_whole(repo, digest, counted).await {
        Ok(n) => {
            run.stats.bytes.fetch_add(n, Ordering::Relaxed);
            run.count(&run.stats.blobs_copied, 1);
            Ok(n)
        }
        Err(registry::Error::DigestMismatch { actual, .. }) => bail!("corrupt: the bytes hash to {actual}, not {digest}"),
        Err(e) => Err(anyhow!("copying into the destination: {e}")),
    }
}

/// `items` (a manifest and the manifests it lists) ordered so that each comes after those of its
/// children that are among `items`.
pub(crate) fn children_first(items: Vec<(Digest, Vec<Digest>)>) -> Vec<Digest> {
    let mut left: BTreeMap<Digest, Vec<Digest>> = items.into_iter().collect();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready: Vec<Digest> = left.iter().filter(|(_, children)| !children.iter().any(|c| left.contains_key(c))).map(|(d, _)| d.clone()).collect();
        if ready.is_empty() {
            // Content addresses cannot form a cycle; should a corrupt listing claim one, the
            // puts below fail and say which manifest is missing instead of this loop spinning.
            out.extend(left.into_keys());
            break;
        }
        for d in ready {
            left.remove(&d);
            out.push(d);
        }
    }
    out
}

// ---- listings ----

async fn all_repositories(m: &MetaStore) -> anyhow::Result<Vec<RepoName>> {
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = m.list_repositories(last.as_deref(), PAGE).await?;
        for name in &page.names {
            out.push(name.parse().map_err(|e| anyhow!("repository name {name:?} in the database: {e}"))?);
        }
        last = page.names.last().cloned();
        if !page.more {
            return Ok(out);
        }
    }
}

async fn all_links(m: &MetaStore, repo: &RepoName) -> anyhow::Result<Vec<(Digest, u64)>> {
    let mut out: Vec<(Digest, u64)> = Vec::new();
    loop {
        let page = m.repository_blobs(repo, out.last().map(|(d, _)| d), PAGE).await?;
        let full = page.len() == PAGE as usize;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

async fn all_tags(m: &MetaStore, repo: &RepoName) -> anyhow::Result<HashMap<Tag, Digest>> {
    let mut out = HashMap::new();
    let mut after: Option<Tag> = None;
    loop {
        let page = m.repository_tags(repo, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE as usize;
        after = page.last().map(|(t, _)| t.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Digest and media type of every manifest of `repo`, in digest order.
async fn all_manifests(m: &MetaStore, repo: &RepoName) -> anyhow::Result<Vec<(Digest, String)>> {
    let mut out: Vec<(Digest, String)> = Vec::new();
    loop {
        let page = m.repository_manifests(repo, out.last().map(|(d, _)| d), PAGE).await?;
        let full = page.len() == PAGE as usize;
        out.extend(page.into_iter().map(|s| (s.digest, s.media_type)));
        if !full {
            return Ok(out);
        }
    }
}

// ---- verification ----

/// Re-read both sides and list every difference (empty: the destination matches). Repositories
/// without content in the source are not expected in the destination.
async fn verify(src: &MetaStore, dst: &MetaStore, linked: &HashSet<Digest>) -> anyhow::Result<Vec<String>> {
    let mut bad = Vec::new();
    let (mut n_repos, mut n_tags, mut n_manifests, mut n_links) = ([0usize; 2], [0usize; 2], [0usize; 2], [0usize; 2]);
    let dst_repos: HashSet<RepoName> = all_repositories(dst).await?.into_iter().collect();
    let mut seen = HashSet::new();
    for repo in all_repositories(src).await? {
        let (st, dt) = (all_tags(src, &repo).await?, all_tags(dst, &repo).await?);
        let (sm, dm) = (all_manifests(src, &repo).await?, all_manifests(dst, &repo).await?);
        let (sl, dl) = (all_links(src, &repo).await?, all_links(dst, &repo).await?);
        // Each side is in its database's collation order; compare in one order.
        let (mut sm, mut dm, mut sl, mut dl) = (sm, dm, sl, dl);
        for v in [&mut sm, &mut dm] {
            v.sort_unstable();
        }
        for v in [&mut sl, &mut dl] {
            v.sort_unstable();
        }
        if st.is_empty() && sm.is_empty() && sl.is_empty() {
            continue;
        }
        seen.insert(repo.clone());
        n_repos[0] += 1;
        n_repos[1] += usize::from(dst_repos.contains(&repo));
        for (i, (t, m, l)) in [(&st, &sm, &sl), (&dt, &dm, &dl)].into_iter().enumerate() {
            n_tags[i] += t.len();
            n_manifests[i] += m.len();
            n_links[i] += l.len();
        }
        if st != dt {
            let differ = st.iter().filter(|(t, d)| dt.get(*t) != Some(*d)).count() + dt.keys().filter(|t| !st.contains_key(*t)).count();
            bad.push(format!("{repo}: tags: {} in the source, {} in the destination, {differ} differ", st.len(), dt.len()));
        }
        if sm != dm {
            bad.push(format!("{repo}: manifests: {} in the source, {} in the destination (or a media type differs)", sm.len(), dm.len()));
        }
        if sl != dl {
            bad.push(format!("{repo}: blob links: {} in the source, {} in the destination", sl.len(), dl.len()));
        }
    }
    for extra in dst_repos.difference(&seen) {
        bad.push(format!("{extra}: in the destination only"));
    }
    let dst_blobs = dst.all_blobs().await?;
    let dst_set: HashSet<&Digest> = dst_blobs.iter().map(|(d, _)| d).collect();
    let missing = linked.iter().filter(|d| !dst_set.contains(d)).count();
    if missing > 0 || dst_blobs.len() != linked.len() {
        bad.push(format!("blobs: {} in the source, {} in the destination, {missing} missing there", linked.len(), dst_blobs.len()));
    }
    let ok = |[s, d]: [usize; 2]| if s == d { format!("{s}") } else { format!("{s} vs {d}") };
    eprintln!(
        "verify: repositories {}, tags {}, manifests {}, blob links {}, blobs {}: {}",
        ok([n_repos[0], dst_repos.len()]),
        ok(n_tags),
        ok(n_manifests),
        ok(n_links),
        ok([linked.len(), dst_blobs.len()]),
        if bad.is_empty() { "ok" } else { "MISMATCH" }
    );
    Ok(bad)
}

// ---- the run's plumbing, shared with `berth import` ----

/// Counters of a run, updated by the copy tasks and read by the progress ticker.
#[derive(Default)]
pub(crate) struct Stats {
    pub repositories: AtomicU64,
    pub blobs_copied: AtomicU64,
    pub blobs_present: AtomicU64,
    /// Bytes of the blobs copied (committed).
    pub bytes: AtomicU64,
    /// Bytes streamed so far, including copies in progress (for the progress lines).
    pub streamed: AtomicU64,
    pub links: AtomicU64,
    pub manifests_copied: AtomicU64,
    pub manifests_present: AtomicU64,
    pub tags_set: AtomicU64,
    pub tags_present: AtomicU64,
    /// Items done, for a progress line every [`PROGRESS_EVERY`].
    items: AtomicU64,
}

/// The progress task and its stop signal.
type Ticker = (tokio::task::JoinHandle<()>, tokio_util::sync::CancellationToken);

/// One run of `migrate` or `import`: its counters, errors, progress output and event context.
#[derive(Clone)]
pub(crate) struct Run {
    pub tool: &'static str,
    pub stats: Arc<Stats>,
    pub context: RequestContext,
    started: Instant,
    phase: Arc<Mutex<&'static str>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// When the blob phase started, and how long it took: the throughput figure's window.
    blob_window: Arc<Mutex<(Option<Instant>, Option<Duration>)>>,
    ticker: Arc<Mutex<Option<Ticker>>>,
}

impl Run {
    /// Start the counters and the progress ticker (call inside the runtime).
    pub(crate) fn start(tool: &'static str) -> Run {
        let started = Instant::now();
        let id = format!("{}-{:x}", tool.replace(' ', "-"), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis());
        let context = RequestContext {
            request_id: id,
            method: String::new(),
            address: None,
            user_agent: Some(format!("{}/{}", tool.replace(' ', "-"), env!("CARGO_PKG_VERSION"))),
            actor: None,
        };
        let run = Run {
            tool,
            stats: Arc::default(),
            context,
            started,
            phase: Arc::new(Mutex::new("start")),
            errors: Arc::default(),
            blob_window: Arc::default(),
            ticker: Arc::default(),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let (r, s) = (run.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
                    () = s.cancelled() => return,
                }
                // Only when something moved.
                let now = r.stats.items.load(Ordering::Relaxed) + r.stats.streamed.load(Ordering::Relaxed);
                if now != last {
                    eprintln!("{}: {}", r.tool, r.line());
                    last = now;
                }
            }
        });
        *lock(&run.ticker) = Some((handle, stop));
        run
    }

    pub(crate) fn phase(&self, phase: &'static str) {
        let mut p = lock(&self.phase);
        let mut window = lock(&self.blob_window);
        match (*p == "blobs", phase == "blobs") {
            (false, true) => window.0 = Some(Instant::now()),
            (true, false) => window.1 = window.0.map(|t| t.elapsed()),
            _ => {}
        }
        *p = phase;
    }

    /// Add `n` to a counter; every [`PROGRESS_EVERY`] items, print a progress line.
    pub(crate) fn count(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        let before = self.stats.items.fetch_add(n, Ordering::Relaxed);
        if (before + n) / PROGRESS_EVERY != before / PROGRESS_EVERY {
            eprintln!("{}: {}", self.tool, self.line());
        }
    }

    /// Record (and print) an error; the run goes on and ends non-zero.
    pub(crate) fn error(&self, message: String) {
        eprintln!("{}: error: {message}", self.tool);
        lock(&self.errors).push(message);
    }

    pub(crate) fn errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    pub(crate) fn print_errors(&self) {
        let errors = self.errors();
        if !errors.is_empty() {
            eprintln!("{}: {} errors:", self.tool, errors.len());
            for e in &errors {
                eprintln!("  {e}");
            }
        }
    }

    pub(crate) async fn progress_stop(&self) {
        let ticker = lock(&self.ticker).take();
        if let Some((handle, stop)) = ticker {
            stop.cancel();
            let _ = handle.await;
        }
    }

    fn line(&self) -> String {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        format!(
            "[{:.0}s, {}] blobs {} copied ({}, {}/s), {} already there; links {}; manifests {} copied, {} already there; tags {} set, {} already set",
            elapsed.as_secs_f64(),
            lock(&self.phase),
            get(&s.blobs_copied),
            human(get(&s.streamed)),
            human(rate(get(&s.streamed), elapsed)),
            get(&s.blobs_present),
            get(&s.links),
            get(&s.manifests_copied),
            get(&s.manifests_present),
            get(&s.tags_set),
            get(&s.tags_present),
        )
    }

    /// The final figures, one kind per line.
    pub(crate) fn summary(&self) {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let blob_time = match *lock(&self.blob_window) {
            (_, Some(took)) => took,
            (Some(start), None) => start.elapsed(),
            (None, None) => Duration::ZERO,
        };
        eprintln!("{}: done in {:.1}s", self.tool, elapsed.as_secs_f64());
        eprintln!("  repositories: {}", get(&s.repositories));
        eprintln!(
            "  blobs: {} copied ({} in {:.1}s, {}/s), {} already there; {} more links",
            get(&s.blobs_copied),
            human(get(&s.bytes)),
            blob_time.as_secs_f64(),
            human(rate(get(&s.bytes), blob_time)),
            get(&s.blobs_present),
            get(&s.links)
        );
        eprintln!("  manifests: {} copied, {} already there", get(&s.manifests_copied), get(&s.manifests_present));
        eprintln!("  tags: {} set, {} already set", get(&s.tags_set), get(&s.tags_present));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rate(bytes: u64, over: Duration) -> u64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { (bytes as f64 / secs) as u64 } else { 0 }
}

/// `bytes` in binary units, for people.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// Blob copies running in parallel, at most `limit` at once, each in the run's event context.
pub(crate) struct Copies {
    set: JoinSet<(Digest, anyhow::Result<()>)>,
    limit: usize,
    run: Run,
    failed: HashSet<Digest>,
}

impl Copies {
    pub(crate) fn new(limit: usize, run: &Run) -> Copies {
        Copies { set: JoinSet::new(), limit: limit.max(1), run: run.clone(), failed: HashSet::new() }
    }

    /// Start copying `digest` (waiting for a free slot first).
    pub(crate) async fn spawn(&mut self, digest: Digest, copy: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        while self.set.len() >= self.limit {
            self.reap().await;
        }
        self.set.spawn(REQUEST.scope(self.run.context.clone(), async move { (digest, copy.await) }));
    }

    async fn reap(&mut self) {
        match self.set.join_next().await {
            Some(Ok((_, Ok(())))) | None => {}
            Some(Ok((digest, Err(e)))) => {
                self.run.error(format!("{e:#}"));
                self.failed.insert(digest);
            }
            Some(Err(e)) => self.run.error(format!("a copy task failed: {e}")),
        }
    }

    /// Wait for every copy; returns the digests that could not be copied.
    pub(crate) async fn finish(mut self) -> HashSet<Digest> {
        while !self.set.is_empty() {
            self.reap().await;
        }
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    #[test]
    fn children_come_first() {
        // top lists mid and a; mid lists a and b; b lists nothing pending; x is unrelated.
        let items = vec![(d("top"), vec![d("mid"), d("a")]), (d("mid"), vec![d("a"), d("b")]), (d("a"), vec![]), (d("b"), vec![d("elsewhere")]), (d("x"), vec![])];
        let order = children_first(items);
        let pos = |s: &str| order.iter().position(|x| *x == d(s)).expect("present");
        assert_eq!(order.len(), 5);
        assert!(pos("a") < pos("mid") && pos("b") < pos("mid") && pos("mid") < pos("top"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}
