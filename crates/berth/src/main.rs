//! `berth`: the command-line entry point. It parses flags, loads and validates the
//! configuration, wires the stores into the engine and the engine into the HTTP server, and owns
//! process concerns (logging, signals, exit codes). No registry logic lives here.

mod bench;
mod config;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, Overrides};

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
    /// Benchmark a running registry (berth or any other) over HTTP.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (with BERTH_* variables applied); names the offending key.
    Check { file: PathBuf },
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("BERTH_")).collect()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command: ConfigCommand::Check { file } } => match config::load(Some(&file), env_vars(), &Overrides::default()) {
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
        Command::Bench(args) => match runtime().block_on(bench::run(args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
    for dir in [Some(cfg.data_dir.as_path()), cfg.sqlite_path.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let blobs = storage::fs::FsStore::open(&cfg.blob_root, cfg.fsync).context("opening blob storage")?;
    let meta = meta::MetaStore::open_sqlite(&cfg.sqlite_path, cfg.sqlite_full_sync)
        .await
        .with_context(|| format!("opening metadata database {}", cfg.sqlite_path.display()))?;
    let registry = registry::Registry::new(meta.clone(), Arc::new(blobs), cfg.registry.clone());
    let stop = CancellationToken::new();
    let janitor = registry.spawn_janitor(stop.clone());
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("binding {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address without authentication: anyone who can reach it can push, pull and delete");
    }
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "berth listening");
    server::serve(listener, server::router(registry), shutdown_signal(), cfg.shutdown_grace).await?;
    stop.cancel();
    let _ = janitor.await;
    meta.close().await;
    tracing::info!("stopped");
    Ok(())
}
