//! `berth usage`: what each quota's namespace and each repository store, as a command. Flags and
//! the printed tables live here; what is counted is the engine's (`registry::usage_report`,
//! over `meta::quota`). It reads only the database, so it runs next to live servers.

use std::path::PathBuf;
use std::process::ExitCode;

use registry::{UsageReport, human_bytes};

use crate::config::{self, Config, Overrides};

#[derive(clap::Args)]
pub(crate) struct UsageArgs {
    /// YAML configuration file (its database section and policies.quotas are used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for blobs and metadata (data_dir), for the embedded SQLite database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON (the shape of GET /admin/usage).
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(args: &UsageArgs) -> ExitCode {
    let cfg = match config::load(args.config.as_deref(), crate::env_vars(), &Overrides { listen: None, data_dir: args.data_dir.clone() }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth usage: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::runtime().block_on(report(&cfg)) {
        Ok(r) if args.json => match serde_json::to_string_pretty(&r) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth usage: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            print!("{}", render(&r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth usage: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn report(cfg: &Config) -> anyhow::Result<UsageReport> {
    let meta = crate::open_database(cfg).await?;
    let r = registry::usage_report(&meta, &cfg.registry.policies.quotas).await;
    meta.close().await;
    Ok(r?)
}

/// The two tables, largest first: quotas (distinct bytes: a blob shared by repositories of the
/// namespace counts once) and repositories (linked bytes: a blob counts in each repository).
fn render(r: &UsageReport) -> String {
    let mut out = String::new();
    if r.quotas.is_empty() {
        out.push_str("No quotas configured (policies.quotas).\n");
    } else {
        let rows: Vec<[String; 5]> = r
            .quotas
            .iter()
            .map(|q| [q.namespace.to_string(), human_bytes(q.bytes), human_bytes(q.limit), format!("{:.1}%", q.percent), q.blobs.to_string()])
            .collect();
        out.push_str(&table(["QUOTA", "USED", "LIMIT", "USE%", "BLOBS"], &rows));
    }
    out.push('\n');
    if r.repositories.is_empty() {
        out.push_str("No repositories.\n");
    } else {
        let rows: Vec<[String; 3]> = r.repositories.iter().map(|u| [u.repository.clone(), human_bytes(u.bytes), u.blobs.to_string()]).collect();
        out.push_str(&table(["REPOSITORY", "LINKED", "BLOBS"], &rows));
    }
    out
}

/// Columns padded to their widest cell; the first left-aligned, the others right-aligned.
fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i == 0 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("  {cell:>w$}"));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(head);
    for row in rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let r = UsageReport {
            quotas: vec![registry::QuotaUsage { namespace: "team-a/**".parse().expect("pattern"), limit: 10 << 30, bytes: 5 << 30, blobs: 3, percent: 50.0 }],
            repositories: vec![registry::RepositoryUsage { repository: "team-a/app".into(), bytes: 1536, blobs: 2 }],
        };
        assert_eq!(
            render(&r),
            "QUOTA         USED     LIMIT   USE%  BLOBS\nteam-a/**  5.0 GiB  10.0 GiB  50.0%      3\n\nREPOSITORY   LINKED  BLOBS\nteam-a/app  1.5 KiB      2\n"
        );
    }
}
