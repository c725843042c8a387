//! `berth gc --url`: ask a running server to collect (`POST /admin/gc`), so the collection runs
//! inside it and shares its database connections (on SQLite, its one write connection) instead
//! of contending with it for the database file from a second process. Also the note the local
//! `berth gc` prints when a server seems to be running on the same SQLite database.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::{Config, DatabaseDriver};

/// The flags of `berth gc` that send the collection to a running server.
#[derive(Args, Debug, Default)]
pub struct RemoteArgs {
    /// Ask the server at this URL (its admin API: the `metrics.listen` address when that is
    /// set) to collect, instead of collecting from this process. Recommended on SQLite while
    /// a server runs: pushes then do not wait on the database file lock.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "data_dir"])]
    pub url: Option<String>,
    /// Log in as this user (an admin) with basic credentials.
    #[arg(long, requires = "url")]
    pub user: Option<String>,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
}

/// `berth gc --url URL`.
pub fn main(remote: &RemoteArgs, dry_run: bool, grace: Option<Duration>) -> ExitCode {
    match crate::runtime().block_on(run(remote, dry_run, grace)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth gc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The report `POST /admin/gc` answers.
#[derive(serde::Deserialize)]
struct Report {
    #[serde(default)]
    untagged_deleted: u64,
    links_removed: u64,
    blobs_deleted: u64,
    bytes_freed: u64,
    storage_errors: u64,
}

async fn run(remote: &RemoteArgs, dry_run: bool, grace: Option<Duration>) -> anyhow::Result<()> {
    let base = remote.url.as_deref().unwrap_or_default().trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--url {base:?}: expected http://HOST:PORT or https://HOST:PORT");
    }
    let password = match &remote.user {
        Some(_) if remote.password_stdin => Some(crate::users::password_from_stdin()?),
        Some(user) => Some(password_from_terminal(user)?),
        None => None,
    };
    let mut query = format!("dry_run={dry_run}");
    if let Some(g) = grace {
        query.push_str(&format!("&grace={}ms", g.as_millis()));
    }
    let grace_text = grace.map_or_else(|| "the server's gc.grace".to_owned(), crate::humantime);
    eprintln!("berth gc{}: asking {base} to collect, grace period {grace_text}", if dry_run { " (dry run)" } else { "" });
    let started = Instant::now();
    let client = reqwest::Client::builder().build().context("building the HTTP client")?;
    let mut req = client.post(format!("{base}/admin/gc?{query}"));
    if let Some(user) = &remote.user {
        req = req.basic_auth(user, password);
    }
    let resp = req.send().await.with_context(|| format!("reaching {base}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("reading the answer of {base}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        let hint = match status.as_u16() {
            401 => "; pass an admin's --user (and --password-stdin)",
            403 => "; the admin API is for the users auth.admins names",
            404 | 405 => "; is this berth's admin API? (with metrics.listen set it is served only on that address)",
            409 => "; try again when it has finished",
            _ => "",
        };
        bail!("{base} answered {status}: {message}{hint}");
    }
    let r: Report = serde_json::from_slice(&body).with_context(|| format!("{base} answered something other than a collection report: {}", String::from_utf8_lossy(&body)))?;
    // The same lines as the local `berth gc`.
    let secs = started.elapsed().as_secs_f64();
    if dry_run {
        println!("untagged manifests to delete: {}", r.untagged_deleted);
        println!("would delete {} blobs, {} ({secs:.1} s)", r.blobs_deleted, crate::human(r.bytes_freed));
    } else {
        println!("untagged manifests deleted: {}", r.untagged_deleted);
        println!(
            "removed {} unused repository links; deleted {} blobs, {} ({secs:.1} s){}",
            r.links_removed,
            r.blobs_deleted,
            crate::human(r.bytes_freed),
            if r.storage_errors > 0 { format!("; {} blobs could not be deleted from storage (see the server's log)", r.storage_errors) } else { String::new() }
        );
    }
    Ok(())
}

fn password_from_terminal(user: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("standard input is not a terminal: pass the password with --password-stdin");
    }
    rpassword::prompt_password(format!("Password for {user}: ")).context("reading the password")
}

/// Before a local collection on SQLite: if something listens on the configured server address,
/// say that asking the server is gentler on its pushes.
pub fn note_if_server_running(cfg: &Config) {
    if !matches!(cfg.database, DatabaseDriver::Sqlite) {
        return;
    }
    let mut addr = cfg.metrics.listen.unwrap_or(cfg.addr);
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        let scheme = if cfg.tls.is_some() && cfg.metrics.listen.is_none() { "https" } else { "http" };
        eprintln!(
            "note: something is listening on {addr}; if it is the server on this database, `berth gc --url {scheme}://{addr}` collects inside it, \
             where the collection does not compete with its pushes for the SQLite file lock"
        );
    }
}
