//! `berth`: the command-line entry point. It parses flags, loads and validates the
//! configuration, wires the stores into the engine and the engine into the HTTP server, and owns
//! process concerns (logging, signals, exit codes). No registry logic lives here.

mod bench;
mod config;
mod fsck;
mod gc_cli;
mod import;
mod lifecycle;
mod migrate;
mod security;
mod usage;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatabaseDriver, LogFormat, Overrides, StorageDriver};

#[derive(Parser)]
#[command(name = "berth", version, about = "A container image registry (OCI Distribution v1.1)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry. With no flags: 127.0.0.1:5000, data under ./berth-data.
    Serve {
        /// Address to listen on (http.addr).
        #[arg(long)]
        listen: Option<String>,
        /// Directory for blobs and metadata (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// YAML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with the metadata database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Benchmark a running registry (berth or any other) over HTTP.
    Bench(bench::BenchArgs),
    /// Collect garbage now: blobs no manifest references and no recent push or mount holds.
    /// Safe while servers run on the same data.
    Gc {
        /// YAML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for blobs and metadata (data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Grace period instead of gc.grace (e.g. 1h). Pushes in flight longer than this may
        /// fail (cleanly) and must be retried.
        #[arg(long, value_parser = parse_duration_arg)]
        grace: Option<std::time::Duration>,
        #[command(flatten)]
        remote: gc_cli::RemoteArgs,
    },
    /// Scrub blob storage against the database: re-hash blobs, find missing, damaged and
    /// orphaned ones (exit 1 when problems remain). Safe while servers run on the same data.
    Fsck(fsck::FsckArgs),
    /// Show the storage each quota's namespace and each repository uses, largest first.
    Usage(usage::UsageArgs),
    /// Delete a whole repository (safe while servers run on the same data).
    Repo {
        #[command(subcommand)]
        command: lifecycle::RepoCommand,
    },
    /// Delete tags in bulk, by pattern and age (safe while servers run on the same data).
    Tags {
        #[command(subcommand)]
        command: lifecycle::TagsCommand,
    },
    /// Apply the retention policies now (safe while servers run on the same data).
    Retention {
        #[command(subcommand)]
        command: lifecycle::RetentionCommand,
    },
    /// Copy every blob, manifest and tag of one deployment into another (offline, resumable).
    Migrate(migrate::MigrateArgs),
    /// Load another registry's storage into berth (offline, resumable).
    Import {
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// Manage the users of password logins (an htpasswd file; a running server re-reads it).
    User {
        #[command(subcommand)]
        command: users::UserCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with BERTH_* variables applied); names the offending key.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply the migrations this version needs and report the schema version. `serve` does
    /// the same at start; run this on purpose before a rolling upgrade.
    Migrate {
        /// YAML configuration file (its database section is used).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory for blobs and metadata (data_dir), for the embedded SQLite database.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("BERTH_")).collect()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command: ConfigCommand::Check { file } } => match config::load(Some(&file), env_vars(), &Overrides::default())
            .and_then(|c| c.tls.as_ref().map(config::load_tls).transpose().map(|_| c))
        {
            Ok(_) => {
                println!("{}: ok", file.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                std::process::ExitCode::FAILURE
            }
        },
        Command::Serve { listen, data_dir, config } => {
            let cfg = match config::load(config.as_deref(), env_vars(), &Overrides { listen, data_dir }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("configuration error: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            init_logging(&cfg);
            match runtime().block_on(serve(cfg)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("berth: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Db { command: DbCommand::Migrate { config, data_dir } } => {
            let result = config::load(config.as_deref(), env_vars(), &Overrides { listen: None, data_dir })
                .map_err(|e| anyhow::anyhow!("configuration error: {e}"))
                .and_then(|cfg| runtime().block_on(db_migrate(&cfg)));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth db migrate: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => match runtime().block_on(bench::run(args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Gc { remote, dry_run, grace, .. } if remote.url.is_some() => gc_cli::main(&remote, dry_run, grace),
        Command::Gc { config, data_dir, dry_run, grace, remote: _ } => {
            let result = config::load(config.as_deref(), env_vars(), &Overrides { listen: None, data_dir })
                .map_err(|e| anyhow::anyhow!("configuration error: {e}"))
                .and_then(|cfg| runtime().block_on(gc(&cfg, dry_run, grace)));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth gc: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Fsck(args) => fsck::main(&args),
        Command::Usage(args) => usage::main(&args),
        Command::Repo { command } => lifecycle::repo(command),
        Command::Tags { command } => lifecycle::tags(command),
        Command::Retention { command } => lifecycle::retention(command),
        Command::Migrate(args) => migrate::main(args),
        Command::Import { command } => import::main(command),
        Command::User { command } => users::main(command),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log_level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stdout);
    match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested: no new connections; finishing requests in flight");
}

/// This node's stable id (kept in the data directory), so that after a restart it takes its
/// webhook delivery leases back at once instead of waiting for them to expire.
fn instance_id(data_dir: &std::path::Path) -> String {
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_owned();
        }
    }
    let id = format!("{:032x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() ^ u128::from(std::process::id()) << 64);
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!(error = %e, "could not store the instance id; webhook leases will wait to expire after a restart");
    }
    id
}

/// The configured blob store, checked to be reachable.
async fn open_storage(cfg: &Config) -> anyhow::Result<Arc<dyn storage::BlobStore>> {
    Ok(match &cfg.storage {
        StorageDriver::Filesystem => Arc::new(storage::fs::FsStore::open(&cfg.blob_root, cfg.fsync).context("opening blob storage")?),
        StorageDriver::S3(o) => {
            let s3 = storage::s3::S3Store::open(o).context("configuring S3 storage")?;
            s3.check().await.with_context(|| format!("reaching S3 bucket {:?}", o.bucket))?;
            Arc::new(s3)
        }
    })
}

/// The configured metadata database, migrated to this version's schema.
async fn open_database(cfg: &Config) -> anyhow::Result<meta::MetaStore> {
    match &cfg.database {
        DatabaseDriver::Sqlite => meta::MetaStore::open_sqlite(&cfg.sqlite_path, cfg.sqlite_full_sync)
            .await
            .with_context(|| format!("opening metadata database {}", cfg.sqlite_path.display())),
        DatabaseDriver::Postgres { url, max_connections } => meta::MetaStore::connect_postgres(url, *max_connections)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(url))),
    }
}

async fn db_migrate(cfg: &Config) -> anyhow::Result<()> {
    if let Some(dir) = cfg.sqlite_path.parent().filter(|d| !d.as_os_str().is_empty() && !cfg.database.shared()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let meta = open_database(cfg).await?;
    let version = meta.schema_version().await?;
    meta.close().await;
    let which = match &cfg.database {
        DatabaseDriver::Sqlite => format!("SQLite {}", cfg.sqlite_path.display()),
        DatabaseDriver::Postgres { url, .. } => format!("PostgreSQL {}", redact(url)),
    };
    println!("{which}: metadata schema at version {version}");
    Ok(())
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30s, 10m, 24h"))
}

/// `berth gc`: one collection against the configured stores, with progress on stderr.
async fn gc(cfg: &Config, dry_run: bool, grace: Option<std::time::Duration>) -> anyhow::Result<()> {
    let store = open_storage(cfg).await?;
    let meta = open_database(cfg).await?;
    // Deletions of untagged manifests are recorded (and queued for webhooks) in the database;
    // this process writes no audit file.
    let events = registry::EventsConfig { audit: registry::AuditSink::Off, ..cfg.events.clone() };
    let registry = registry::Registry::with_events(meta.clone(), store, cfg.registry.clone(), events);
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(std::time::Instant::now() - std::time::Duration::from_secs(1));
    let progress = |p: registry::GcProgress| {
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() < std::time::Duration::from_millis(500) {
            return;
        }
        *last = std::time::Instant::now();
        match p {
            registry::GcProgress::Untagged { deleted } => eprintln!("  untagged manifests {}: {deleted}", if dry_run { "to delete" } else { "deleted" }),
            registry::GcProgress::Links { removed } => eprintln!("  unused repository links removed: {removed}"),
            registry::GcProgress::Blobs { deleted, bytes } => eprintln!("  blobs {}: {deleted} ({})", if dry_run { "to delete" } else { "deleted" }, human(bytes)),
        }
    };
    gc_cli::note_if_server_running(cfg);
    let grace_used = grace.unwrap_or(cfg.registry.gc_grace);
    let untagged = cfg.registry.gc_untagged.map_or_else(|| "kept".to_owned(), |d| format!("collected after {}", humantime(d)));
    eprintln!("berth gc{}: grace period {}, untagged manifests {untagged}", if dry_run { " (dry run)" } else { "" }, humantime(grace_used));
    let r = registry.collect_garbage(dry_run, grace, &progress).await;
    meta.close().await;
    let r = r?;
    if dry_run {
        println!("untagged manifests to delete: {}", r.untagged_deleted);
        println!("would delete {} blobs, {} ({:.1} s)", r.blobs_deleted, human(r.bytes_freed), started.elapsed().as_secs_f64());
    } else {
        // Their blobs go in a later collection, gc.grace after the deletion.
        println!("untagged manifests deleted: {}", r.untagged_deleted);
        println!(
            "removed {} unused repository links; deleted {} blobs, {} ({:.1} s){}",
            r.links_removed,
            r.blobs_deleted,
            human(r.bytes_freed),
            started.elapsed().as_secs_f64(),
            if r.storage_errors > 0 { format!("; {} blobs could not be deleted from storage (see the log)", r.storage_errors) } else { String::new() }
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    for dir in [Some(cfg.data_dir.as_path()), cfg.sqlite_path.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let metrics = cfg.metrics.enabled.then(|| server::Metrics::new(server::metrics::MetricsOptions { storage_refresh: cfg.metrics.storage_refresh }));
    // Access control first: a missing users file or key should stop the start before anything
    // is opened.
    let security = Arc::new(security::build(&cfg.auth)?);
    // The TLS files are read before anything is opened, so a bad one stops the start at once.
    let tls = cfg.tls.as_ref().map(config::load_tls).transpose()?;
    let store = open_storage(&cfg).await?;
    // Every storage call is timed once here, for all drivers.
    let blobs: Arc<dyn storage::BlobStore> = match &metrics {
        Some(m) => Arc::new(storage::instrumented::Instrumented::new(store, m.storage_observer())),
        None => store,
    };
    let meta = open_database(&cfg).await?;
    let mut events = cfg.events.clone();
    events.instance = instance_id(&cfg.data_dir);
    let registry = registry::Registry::with_events(meta.clone(), blobs, cfg.registry.clone(), events);
    if let Some(m) = &metrics {
        m.set_storage_totals(server::metrics::registry_usage(registry.clone()));
        m.set_gc_source(registry.clone());
    }
    let stop = CancellationToken::new();
    let janitor = registry.spawn_janitor(stop.clone());
    let collector = registry.spawn_gc(stop.clone());
    let retention = registry.spawn_retention(cfg.retention.clone(), stop.clone());
    let event_tasks = registry.spawn_events(stop.clone());
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("binding {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !cfg.auth.enabled() {
        tracing::warn!(%addr, "listening on a non-loopback address without authentication: anyone who can reach it can push, pull and delete");
    }
    if !addr.ip().is_loopback() && tls.is_none() {
        tracing::warn!(%addr, "listening on a non-loopback address without TLS: credentials and image contents cross the network in the clear");
    }
    tracing::info!(%addr, tls = tls.is_some(), data_dir = %cfg.data_dir.display(), "berth listening");
    let ops = match cfg.metrics.listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding metrics.listen {a}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics, health probes and admin API listening");
            let app = server::ops_router(registry.clone(), metrics.clone());
            let stop = stop.clone();
            Some(tokio::spawn(async move { server::serve(l, app, async move { stop.cancelled().await }, std::time::Duration::from_secs(1)).await }))
        }
        None => None,
    };
    let obs = server::Observability { metrics: metrics.clone(), metrics_on_main: cfg.metrics.listen.is_none() };
    let app = server::secured_router(registry, obs, security);
    match tls {
        Some(tls) => server::serve(server::TlsListener::new(listener, tls)?, app, shutdown_signal(), cfg.shutdown_grace).await?,
        None => server::serve(listener, app, shutdown_signal(), cfg.shutdown_grace).await?,
    }
    stop.cancel();
    if let Some(t) = ops {
        let _ = t.await;
    }
    let _ = janitor.await;
    if let Some(t) = collector {
        let _ = t.await;
    }
    if let Some(t) = retention {
        let _ = t.await;
    }
    for t in event_tasks {
        let _ = t.await;
    }
    meta.close().await;
    tracing::info!("stopped");
    Ok(())
}
