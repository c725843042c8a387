//! `berth repo delete`, `berth tags delete` and `berth retention run`: the admin API's bulk
//! deletions and the retention policies, run from the command line against the configured
//! stores (safe while servers run on the same data). Each parses its arguments into domain
//! types, makes one engine call and prints what happened; no registry logic lives here.
//!
//! Their events go to the database (the audit API and webhooks see them, delivered by a
//! running server); the audit file, which a server writes, does not get lines for them.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use oci::{RepoName, TagPattern};
use registry::{Fate, Registry, RetentionReport, TagDeletion, TagFilter};

use crate::config::{self, Config, Overrides};

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Delete a repository: its tags, manifests, blob links and upload sessions. Its blobs
    /// are deleted by garbage collection once gc.grace has passed (unless other repositories
    /// use them). Asks for confirmation unless --yes.
    Delete {
        /// The repository, e.g. team/app.
        #[arg(value_parser = parse_repo)]
        name: RepoName,
        /// YAML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for blobs and metadata (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum TagsCommand {
    /// Delete the tags of a repository that match a pattern (only the tags: their manifests
    /// stay).
    Delete {
        /// The repository, e.g. team/app.
        #[arg(value_parser = parse_repo)]
        name: RepoName,
        /// Tags to delete: `*` matches any run of characters (`pr-*`; `*` for all).
        #[arg(long, value_parser = parse_pattern)]
        pattern: TagPattern,
        /// Only tags last pushed longer ago than this (e.g. 30d, 12h).
        #[arg(long, value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// YAML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for blobs and metadata (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Apply the retention policies (retention.policies) once, now, and list what went.
    Run {
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// YAML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for blobs and metadata (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn parse_repo(s: &str) -> Result<RepoName, String> {
    s.parse().map_err(|e: oci::NameError| e.to_string())
}

fn parse_pattern(s: &str) -> Result<TagPattern, String> {
    s.parse().map_err(|e: oci::PatternError| e.to_string())
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    registry::parse_age(s).ok_or_else(|| format!("{s:?} is not an age like 30d, 12h or 90m"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Run `f` against the configured stores, and turn its outcome into an exit code with
/// `berth <what>: <error>` on failure.
fn run<F>(what: &str, config: Option<&Path>, data_dir: Option<PathBuf>, f: F) -> std::process::ExitCode
where
    F: AsyncFnOnce(&Config, &Registry) -> anyhow::Result<()>,
{
    let result = config::load(config, crate::env_vars(), &Overrides { listen: None, data_dir })
        .map_err(|e| anyhow::anyhow!("configuration error: {e}"))
        .and_then(|cfg| {
            crate::runtime().block_on(async {
                let store = crate::open_storage(&cfg).await?;
                let meta = crate::open_database(&cfg).await?;
                // Events are recorded (and queued for webhooks) in the database; this process
                // writes no audit file.
                let events = registry::EventsConfig { audit: registry::AuditSink::Off, ..cfg.events.clone() };
                let registry = Registry::with_events(meta.clone(), store, cfg.registry.clone(), events);
                let r = f(&cfg, &registry).await;
                meta.close().await;
                r
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth {what}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The engine's error, said for someone at a terminal.
fn explain(e: registry::Error, repo: &RepoName) -> anyhow::Error {
    match e {
        registry::Error::NameUnknown => anyhow::anyhow!("repository {repo} does not exist"),
        registry::Error::Unsupported(_) => anyhow::anyhow!("deletes are disabled by the configuration (storage.delete.enabled: false)"),
        other => anyhow::Error::new(other),
    }
}

pub fn repo(command: RepoCommand) -> std::process::ExitCode {
    let RepoCommand::Delete { name, config, data_dir, yes } = command;
    run("repo delete", config.as_deref(), data_dir, async move |cfg: &Config, registry: &Registry| {
        let s = registry.repository_summary(&name).await.map_err(|e| explain(e, &name))?;
        if !yes {
            eprint!(
                "Delete repository {name} ({} tags, {} manifests, {} blob links, {} uploads in progress)? This cannot be undone. [y/N] ",
                s.tags, s.manifests, s.blob_links, s.uploads
            );
            std::io::stderr().flush().ok();
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                anyhow::bail!("not confirmed; nothing was deleted");
            }
        }
        let r = registry.delete_repository(&name).await.map_err(|e| explain(e, &name))?;
        println!(
            "deleted repository {name}: {} tags, {} manifests, {} blob links, {} upload sessions; its blobs are deleted by garbage collection after gc.grace ({}s) unless other repositories use them",
            r.tags,
            r.manifests,
            r.blob_links,
            r.uploads,
            cfg.registry.gc_grace.as_secs()
        );
        Ok(())
    })
}

fn print_tags(repo: &RepoName, out: &TagDeletion) {
    let verb = if out.dry_run { "would delete" } else { "deleted" };
    for t in &out.deleted {
        println!("{verb} {repo}:{} {} (pushed {})", t.tag, t.digest, t.updated_at);
    }
    for k in &out.kept {
        println!("kept {repo}:{} {}: {}", k.tag.tag, k.tag.digest, k.reason);
    }
    println!("{} {} tags{}", if out.dry_run { "would delete" } else { "deleted" }, out.deleted.len(), if out.dry_run { "" } else { " (their manifests stay)" });
}

pub fn tags(command: TagsCommand) -> std::process::ExitCode {
    let TagsCommand::Delete { name, pattern, older_than, dry_run, config, data_dir } = command;
    run("tags delete", config.as_deref(), data_dir, async move |_: &Config, registry: &Registry| {
        let filter = TagFilter { pattern, older_than };
        let out = registry.delete_tags(&name, &filter, now_ms(), dry_run).await.map_err(|e| explain(e, &name))?;
        print_tags(&name, &out);
        Ok(())
    })
}

fn print_report(r: &RetentionReport) {
    for t in &r.tags {
        let what = format!("{}:{} {} (pushed {})", t.repository, t.tag.tag, t.tag.digest, t.tag.updated_at);
        match &t.fate {
            Fate::Deleted => println!("deleted {what} by {}", t.rule),
            Fate::WouldDelete => {
                let untagged = if t.last_tag { "; its manifest loses its last tag" } else { "" };
                println!("would delete {what} by {}{untagged}", t.rule);
            }
            Fate::Kept(why) => println!("kept {what}: {why}"),
        }
    }
    for m in &r.manifests {
        println!("deleted manifest {}@{} ({}, {})", m.repository, m.digest, m.media_type, m.role);
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} tags and {} manifests in {} repositories; {} tags kept by the policies{}",
        r.deleted(),
        r.manifests.len(),
        r.repositories,
        r.tags_kept,
        if r.dry_run { " (manifests are decided when tags are deleted: a dry run lists none)" } else { "" }
    );
}

pub fn retention(command: RetentionCommand) -> std::process::ExitCode {
    let RetentionCommand::Run { dry_run, config, data_dir } = command;
    run("retention run", config.as_deref(), data_dir, async move |cfg: &Config, registry: &Registry| {
        if cfg.retention.policies.is_empty() {
            println!("no retention policies are configured (retention.policies): nothing to do");
            return Ok(());
        }
        // The events of one run share a request id, so the audit log groups them.
        let ctx = registry::RequestContext { request_id: format!("retention-{:x}", now_ms()), ..Default::default() };
        let report = registry::REQUEST.scope(ctx, registry.run_retention(&cfg.retention, now_ms(), dry_run)).await?;
        print_report(&report);
        if report.errors > 0 {
            anyhow::bail!("{} deletions failed (see the log lines above)", report.errors);
        }
        Ok(())
    })
}
