//! `berth import distribution`: load the filesystem storage of a CNCF Distribution registry
//! (`registry:2`) into berth, offline, whatever storage and database berth's configuration
//! selects:
//!
//! ```text
//! berth import distribution --root DIR [--config CONFIG] [--data-dir DIR] [--jobs N]
//! ```
//!
//! `DIR` is Distribution's `rootdirectory` (the directory holding `docker/`). The destination is
//! read like `serve` reads it: the file, then `BERTH_*` variables, then `--data-dir`.
//!
//! What is read under `DIR/docker/registry/v2`:
//!
//! ```text
//! blobs/<alg>/<xx>/<hex>/data                                  blob bytes (manifests too)
//! repositories/<name...>/_layers/<alg>/<hex>/link              the repository links that blob
//! repositories/<name...>/_manifests/revisions/<alg>/<hex>/link the repository has that manifest
//! repositories/<name...>/_manifests/tags/<tag>/current/link    tag -> manifest digest
//! ```
//!
//! A directory is a repository when it holds `_manifests` or `_layers`; names nest (`a/b/c`), and
//! a repository may sit inside another's directory. A link is the file's content (`sha256:<hex>`),
//! as Distribution reads it; a directory without its `link` file was deleted.
//!
//! Per repository: its layer blobs are copied (hashed on the way; a blob whose bytes do not hash
//! to its digest is an error naming its path), then its manifests (bytes read from the blob
//! store and checked against their digest, media type from the document's `mediaType` or its
//! shape), an index after the manifests it lists, then its tags. Distribution is lax where berth
//! is not: a manifest may reference a blob its repository has no link to; if the blob store has
//! it, it is linked. What berth cannot hold is skipped with a warning and counted: Docker schema 1
//! manifests, documents berth rejects, manifests whose blobs or listed manifests are nowhere,
//! tags pointing at a skipped or absent manifest, links to blobs the store lacks. The exit status
//! is non-zero only for real errors (corrupt or unreadable data, a destination failure).
//!
//! Not imported: uploads in progress (`_uploads`), tag histories (`tags/<tag>/index`), blobs no
//! repository links. Writes go through the registry engine (`Registry::upload_whole`,
//! `blob_mount`, `manifest_put`), so everything is validated as a push would be and recorded as
//! push/mount events by user agent `berth-import` (queued for no webhook). Idempotent and
//! resumable as `berth migrate` is (see `crate::migrate`, whose run plumbing this shares): what
//! the destination's metadata has is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, anyhow, bail};
use oci::manifest::ManifestError;
use oci::{Digest, RepoName, Tag};
use registry::{REQUEST, Registry};
use storage::ByteStream;

use crate::config::{self, Overrides};
use crate::migrate::{Copies, Run, children_first, copy_blob, link_blobs, open_destination, present_blob, put_manifest};

#[derive(clap::Subcommand)]
pub(crate) enum ImportCommand {
    /// Load a CNCF Distribution (registry:2) filesystem storage root.
    Distribution(DistributionArgs),
}

#[derive(clap::Args)]
pub(crate) struct DistributionArgs {
    /// Distribution's storage root: the directory that contains `docker/`.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// berth's configuration file (where to import to).
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// berth's data_dir (overrides the configuration, like `serve --data-dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Blobs copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
}

pub(crate) fn main(command: ImportCommand) -> ExitCode {
    let ImportCommand::Distribution(args) = command;
    match crate::runtime().block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("berth import: FAILED (see the errors above); re-running resumes where this run stopped");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("berth import: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Distribution's storage, as files.
struct Layout {
    v2: PathBuf,
}

/// What a repository holds, as its link files say.
#[derive(Debug)]
struct DistRepo {
    name: RepoName,
    dir: PathBuf,
    layers: Vec<Digest>,
    revisions: Vec<Digest>,
    tags: Vec<(Tag, Digest)>,
}

/// What a walk of `repositories/` found.
#[derive(Debug, Default)]
struct Scan {
    repos: Vec<DistRepo>,
    /// Things that cannot be imported, with why.
    skipped: Vec<String>,
    /// Upload sessions in progress (not imported).
    uploads: usize,
}

/// A manifest of a repository that can be stored.
struct Importable {
    media_type: String,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
}

impl Layout {
    fn open(root: &Path) -> anyhow::Result<Layout> {
        let v2 = root.join("docker/registry/v2");
        if !v2.is_dir() {
            bail!("{} is not a Distribution storage root: {} does not exist", root.display(), v2.display());
        }
        Ok(Layout { v2 })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.v2.join("blobs").join(d.algorithm().as_str()).join(&hex[..2]).join(hex).join("data")
    }

    /// Walk `repositories/` (blocking file I/O: run off the async threads).
    fn scan(&self) -> anyhow::Result<Scan> {
        let mut scan = Scan::default();
        let top = self.v2.join("repositories");
        if top.is_dir() {
            walk(&top, &mut Vec::new(), &mut scan)?;
        }
        Ok(scan)
    }
}

fn subdirs(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        if path.is_dir() {
            out.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, name: &mut Vec<String>, scan: &mut Scan) -> anyhow::Result<()> {
    let children = subdirs(dir)?;
    if children.iter().any(|(n, _)| n == "_manifests" || n == "_layers") {
        let text = name.join("/");
        match text.parse::<RepoName>() {
            Ok(repo) => {
                let read = read_repo(repo, dir, scan)?;
                scan.repos.push(read);
            }
            Err(e) => scan.skipped.push(format!("repository {text:?} ({}): invalid name: {e}", dir.display())),
        }
    }
    if let Some((_, uploads)) = children.iter().find(|(n, _)| n == "_uploads") {
        scan.uploads += subdirs(uploads)?.len();
    }
    // Path components never start with `_` in a repository name: those are Distribution's.
    for (child, path) in children.into_iter().filter(|(n, _)| !n.starts_with('_')) {
        name.push(child);
        walk(&path, name, scan)?;
        name.pop();
    }
    Ok(())
}

/// Every `<dir>/<alg>/<hex>/link` under `dir`, read.
fn links(dir: &Path, what: &str, repo: &RepoName, scan: &mut Scan) -> anyhow::Result<Vec<Digest>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for (_, alg) in subdirs(dir)? {
        for (_, entry) in subdirs(&alg)? {
            if let Some(d) = read_link(&entry.join("link"), what, repo, scan)? {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// A link file's digest; `None` if absent (deleted) or unreadable as a digest (noted as skipped).
fn read_link(path: &Path, what: &str, repo: &RepoName, scan: &mut Scan) -> anyhow::Result<Option<Digest>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match text.trim().parse::<Digest>() {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            scan.skipped.push(format!("{repo}: {what} link {}: {:?} is not a digest: {e}", path.display(), text.trim()));
            Ok(None)
        }
    }
}

fn read_repo(name: RepoName, dir: &Path, scan: &mut Scan) -> anyhow::Result<DistRepo> {
    let layers = links(&dir.join("_layers"), "layer", &name, scan)?;
    let revisions = links(&dir.join("_manifests/revisions"), "manifest", &name, scan)?;
    let mut tags = Vec::new();
    let tag_dir = dir.join("_manifests/tags");
    if tag_dir.is_dir() {
        for (tag, path) in subdirs(&tag_dir)? {
            let Ok(t) = tag.parse::<Tag>() else {
                scan.skipped.push(format!("{name}: tag {tag:?}: not a valid tag name"));
                continue;
            };
            if let Some(d) = read_link(&path.join("current/link"), "tag", &name, scan)? {
                tags.push((t, d));
            }
        }
    }
    Ok(DistRepo { name, dir: dir.to_owned(), layers, revisions, tags })
}

/// How many skips of each kind, and each one's line.
#[derive(Default)]
struct Skips {
    schema1: usize,
    lines: Vec<String>,
}

impl Skips {
    fn add(&mut self, line: String) {
        eprintln!("berth import: warning: skipped {line}");
        self.lines.push(line);
    }
}

async fn run(args: DistributionArgs) -> anyhow::Result<bool> {
    let cfg = config::load(args.config.as_deref(), crate::env_vars(), &Overrides { listen: None, data_dir: args.data_dir })
        .map_err(|e| anyhow!("configuration error: {e}"))?;
    let layout = Layout::open(&args.root)?;
    let dst = open_destination(&cfg).await?;
    let run = Run::start("berth import");
    let outcome = REQUEST.scope(run.context.clone(), import(layout, &dst, args.jobs.into(), &run)).await;
    run.progress_stop().await;
    dst.meta().close().await;
    let (found, imported, skips, uploads) = outcome.inspect_err(|_| run.print_errors())?;
    run.stats.repositories.store(imported as u64, Ordering::Relaxed);
    run.summary();
    eprintln!("  repositories found: {found} ({} with nothing importable)", found - imported);
    let others = skips.lines.len() - skips.schema1;
    eprintln!("  skipped: {} Docker schema 1 manifests, {others} other items", skips.schema1);
    for line in &skips.lines {
        eprintln!("    {line}");
    }
    eprintln!("  not imported: {uploads} uploads in progress (_uploads), tag histories (index/), blobs no repository links");
    run.print_errors();
    Ok(run.errors().is_empty())
}

/// Returns (repositories found, repositories with something imported, skips, uploads in progress).
async fn import(layout: Layout, dst: &Registry, jobs: usize, run: &Run) -> anyhow::Result<(usize, usize, Skips, usize)> {
    run.phase("scan");
    let (layout, scan) = tokio::task::spawn_blocking(move || layout.scan().map(|s| (layout, s))).await.context("scanning task")??;
    let mut skips = Skips::default();
    for line in scan.skipped {
        skips.add(line);
    }
    let found = scan.repos.len();
    run.stats.repositories.store(found as u64, Ordering::Relaxed);

    // Read every manifest once: check its bytes, learn what it needs, set aside what berth
    // cannot store. The bytes are read again when stored (they are small, repositories many).
    run.phase("manifests (reading)");
    let mut plans: Vec<(BTreeMap<Digest, Importable>, Vec<Digest>)> = Vec::new();
    for repo in &scan.repos {
        let mut manifests = BTreeMap::new();
        for digest in &repo.revisions {
            let path = layout.blob_path(digest);
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    skips.add(format!("{}@{digest}: manifest bytes missing from the blob store ({})", repo.name, path.display()));
                    continue;
                }
                Err(e) => {
                    run.error(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let actual = Digest::of(digest.algorithm(), &bytes);
            if actual != *digest {
                run.error(format!("{}: corrupt manifest blob: its bytes hash to {actual}, not {digest}", path.display()));
                continue;
            }
            let limit = dst.config().manifest_max_size;
            if bytes.len() > limit {
                skips.add(format!("{}@{digest}: {} bytes, larger than manifests.max_size ({limit})", repo.name, bytes.len()));
                continue;
            }
            match oci::manifest::parse(None, &bytes) {
                Ok(p) => {
                    let blobs = p.blobs.into_iter().filter(|b| !b.external).map(|b| b.digest).collect();
                    let children = p.manifests.into_iter().map(|m| m.digest).collect();
                    manifests.insert(digest.clone(), Importable { media_type: p.media_type, blobs, children });
                }
                Err(ManifestError::Schema1) => {
                    skips.schema1 += 1;
                    skips.add(format!("{}@{digest}: Docker schema 1 manifest (berth stores schema 2 and OCI only)", repo.name));
                }
                Err(e) => skips.add(format!("{}@{digest}: {e}", repo.name)),
            }
        }
        // The blobs this repository needs: its layer links, and what its manifests reference
        // (linked too, as Distribution served them), where the blob store has them.
        let mut needed: Vec<Digest> = Vec::new();
        let mut listed: HashSet<&Digest> = HashSet::new();
        let mut in_store: HashMap<Digest, bool> = HashMap::new();
        let layer_set: HashSet<&Digest> = repo.layers.iter().collect();
        for d in repo.layers.iter().chain(manifests.values().flat_map(|m| m.blobs.iter())) {
            if !listed.insert(d) {
                continue;
            }
            let present = layout.blob_path(d).is_file();
            in_store.insert(d.clone(), present);
            if present {
                needed.push(d.clone());
            } else if layer_set.contains(d) {
                skips.add(format!("{}: layer link to {d}, which is not in the blob store", repo.name));
            }
        }
        // A manifest is importable if its blobs exist and the manifests it lists are importable.
        loop {
            let drop: Vec<(Digest, String)> = manifests
                .iter()
                .filter_map(|(d, m)| {
                    let why = if let Some(b) = m.blobs.iter().find(|b| !in_store.get(*b).copied().unwrap_or(false)) {
                        format!("references blob {b}, which is not in the blob store")
                    } else if let Some(c) = m.children.iter().find(|c| !manifests.contains_key(*c)) {
                        format!("lists manifest {c}, which is not imported (absent from the repository or skipped)")
                    } else {
                        return None;
                    };
                    Some((d.clone(), why))
                })
                .collect();
            if drop.is_empty() {
                break;
            }
            for (d, why) in drop {
                manifests.remove(&d);
                skips.add(format!("{}@{d}: {why}", repo.name));
            }
        }
        plans.push((manifests, needed));
    }

    // Blobs: each once, in parallel, linked to the first repository that needs it.
    run.phase("blobs");
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut unusable: HashSet<Digest> = HashSet::new();
    let mut copies = Copies::new(jobs, run);
    for (repo, (_, needed)) in scan.repos.iter().zip(&plans) {
        for digest in needed {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let path = layout.blob_path(digest);
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) => {
                    run.error(format!("{}: {e}", path.display()));
                    unusable.insert(digest.clone());
                    continue;
                }
            };
            match present_blob(dst, digest, size).await {
                Ok(true) => {
                    run.count(&run.stats.blobs_present, 1);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    run.error(format!("{}: {e:#}", path.display()));
                    unusable.insert(digest.clone());
                    continue;
                }
            }
            let (dst, repo, digest, run2) = (dst.clone(), repo.name.clone(), digest.clone(), run.clone());
            copies
                .spawn(digest.clone(), async move {
                    let file = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
                    let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
                    copy_blob(&dst, &repo, &digest, body, &run2).await.map_err(|e| e.context(path.display().to_string()))?;
                    Ok(())
                })
                .await;
        }
    }
    unusable.extend(copies.finish().await);

    // Links, manifests and tags, repository by repository.
    let mut imported = 0;
    for (repo, (manifests, needed)) in scan.repos.iter().zip(plans) {
        let name = &repo.name;
        run.phase("links");
        link_blobs(dst, name, needed.iter().filter(|d| !unusable.contains(*d)), run).await?;
        run.phase("manifests");
        // A manifest needing a blob that failed to copy, or listing a manifest that failed, is
        // not attempted: the failure is already an error of the run.
        let mut failed: HashSet<Digest> = HashSet::new();
        let order = children_first(manifests.iter().map(|(d, m)| (d.clone(), m.children.clone())).collect());
        for digest in order {
            let Some(m) = manifests.get(&digest) else { continue };
            if let Some(b) = m.blobs.iter().chain(&m.children).find(|b| unusable.contains(*b) || failed.contains(*b)) {
                eprintln!("berth import: {name}@{digest} is not imported: {b} could not be");
                failed.insert(digest);
                continue;
            }
            if dst.meta().manifest_by_digest(name, &digest).await?.is_some() {
                run.count(&run.stats.manifests_present, 1);
                continue;
            }
            let path = layout.blob_path(&digest);
            let bytes = tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?;
            if !put_manifest(dst, name, &digest, &m.media_type, bytes, &[], run).await {
                failed.insert(digest);
            }
        }
        run.phase("tags");
        let mut wanted: BTreeMap<Digest, Vec<Tag>> = BTreeMap::new();
        for (tag, digest) in &repo.tags {
            if failed.contains(digest) {
                eprintln!("berth import: {name}:{tag} is not set: {digest} could not be imported");
                continue;
            }
            if !manifests.contains_key(digest) {
                let why = if repo.revisions.contains(digest) { "which was skipped" } else { "which is not in the repository" };
                skips.add(format!("{name}:{tag}: points at {digest}, {why}"));
                continue;
            }
            match dst.meta().manifest_by_tag(name, tag).await? {
                Some(m) if m.digest == *digest => run.count(&run.stats.tags_present, 1),
                _ => wanted.entry(digest.clone()).or_default().push(tag.clone()),
            }
        }
        for (digest, tags) in wanted {
            let Some(m) = manifests.get(&digest) else { continue };
            let path = layout.blob_path(&digest);
            let bytes = tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?;
            put_manifest(dst, name, &digest, &m.media_type, bytes, &tags, run).await;
        }
        if !needed.is_empty() || !manifests.is_empty() {
            imported += 1;
        } else {
            eprintln!("berth import: {name} ({}): nothing importable", repo.dir.display());
        }
    }
    Ok((found, imported, skips, scan.uploads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_repositories_and_reads_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = dir.path().join("docker/registry/v2");
        let d = Digest::sha256_of(b"x");
        let write = |p: &str, text: &str| {
            let path = v2.join("repositories").join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write(&format!("a/_layers/sha256/{}/link", d.hex()), d.as_str());
        write(&format!("a/b/c/_manifests/revisions/sha256/{}/link", d.hex()), d.as_str());
        write("a/b/c/_manifests/tags/v1/current/link", d.as_str());
        write(&format!("a/b/c/_manifests/tags/v1/index/sha256/{}/link", d.hex()), d.as_str());
        write("a/b/c/_uploads/0123/data", "partial");
        std::fs::create_dir_all(v2.join(format!("repositories/a/_layers/sha256/{}", Digest::sha256_of(b"deleted").hex()))).expect("mkdir");
        write(&format!("Bad/_layers/sha256/{}/link", d.hex()), d.as_str());
        let scan = Layout::open(dir.path()).expect("layout").scan().expect("scan");
        let names: Vec<&str> = scan.repos.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "a/b/c"]);
        assert_eq!(scan.repos[0].layers, std::slice::from_ref(&d), "the deleted link is not read");
        assert_eq!(scan.repos[1].revisions, std::slice::from_ref(&d));
        assert_eq!(scan.repos[1].tags, [("v1".parse().expect("tag"), d.clone())]);
        assert_eq!(scan.uploads, 1);
        assert_eq!(scan.skipped.len(), 1, "{:?}", scan.skipped);
        assert!(Layout::open(&dir.path().join("nope")).is_err());
    }
}
