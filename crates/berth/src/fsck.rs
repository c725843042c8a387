//! `berth fsck`: the scrub of blob storage against the metadata database, as a command. Flags,
//! the progress line on stderr, the report (a table, or JSON) and the exit status live here;
//! what is checked and how an orphan is deleted safely is the engine's (`registry::fsck`).
//!
//! Exit status: 0 when nothing is wrong (or everything repairable was repaired), 1 when
//! problems remain, 2 when the check could not run (configuration, database or storage
//! unreachable).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use registry::{Damage, DamagedBlob, FsckOptions, FsckPhase, FsckProgress, FsckReport, ORPHAN_MIN_AGE, OrphanState};

use crate::config::{self, Config, DatabaseDriver, Overrides, StorageDriver};
use crate::{human, humantime};

/// Share of the recorded blobs re-hashed when neither `--sample` nor `--all` is given: enough
/// that repeated scrubs (each picks anew) cover everything over time, cheap enough to run often.
const DEFAULT_SAMPLE: f64 = 10.0;
/// At most this often a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Uses of one damaged blob listed in the table (all of them are in `--json`).
const USES_SHOWN: usize = 20;

#[derive(clap::Args)]
pub(crate) struct FsckArgs {
    /// YAML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for blobs and metadata (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Re-hash this percentage of the recorded blobs, chosen at random [default: 10]. Every
    /// blob's presence and size are checked regardless; 0 checks only those.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent, conflicts_with = "all")]
    sample: Option<f64>,
    /// Re-hash every recorded blob.
    #[arg(long)]
    all: bool,
    /// Delete orphaned blobs (stored, recorded nowhere) older than 1h. Damaged blobs are only
    /// ever reported.
    #[arg(long)]
    repair: bool,
    /// Blobs checked concurrently.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

pub(crate) fn main(args: &FsckArgs) -> ExitCode {
    let cfg = match config::load(args.config.as_deref(), crate::env_vars(), &Overrides { listen: None, data_dir: args.data_dir.clone() }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth fsck: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::runtime().block_on(run(&cfg, args)) {
        Ok(report) => {
            if report.problems() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("berth fsck: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cfg: &Config, args: &FsckArgs) -> anyhow::Result<FsckReport> {
    // Opening creates what is missing: pointed at the wrong place, an empty database would make
    // every stored blob look orphaned. A scrub checks an existing registry or none.
    if matches!(cfg.database, DatabaseDriver::Sqlite) && !cfg.sqlite_path.is_file() {
        anyhow::bail!("no metadata database at {} (check --data-dir or --config)", cfg.sqlite_path.display());
    }
    if matches!(cfg.storage, StorageDriver::Filesystem) && !cfg.blob_root.join("blobs").is_dir() {
        anyhow::bail!("no blob storage at {} (check --data-dir or --config)", cfg.blob_root.display());
    }
    let store = crate::open_storage(cfg).await?;
    let meta = crate::open_database(cfg).await?;
    let registry = registry::Registry::new(meta.clone(), store, cfg.registry.clone());
    let percent = if args.all { 100.0 } else { args.sample.unwrap_or(DEFAULT_SAMPLE) };
    let opts = FsckOptions { rehash_percent: percent, jobs: usize::from(args.jobs), repair: args.repair, orphan_min_age: ORPHAN_MIN_AGE };
    let what = match percent {
        p if p >= 100.0 => "re-hashing every blob".to_owned(),
        p if p <= 0.0 => "checking presence and size only".to_owned(),
        p => format!("re-hashing a {p}% sample"),
    };
    eprintln!("berth fsck: {what}, {} jobs{}", args.jobs, if args.repair { format!(", deleting orphans older than {}", humantime(ORPHAN_MIN_AGE)) } else { String::new() });
    let last = Mutex::new(None::<Instant>);
    let progress = |p: FsckProgress| {
        let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let finished = p.total > 0 && p.done == p.total;
        if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) && !finished {
            return;
        }
        *last = Some(Instant::now());
        eprintln!("berth fsck: {}", progress_line(&p));
    };
    let report = registry.fsck(&opts, &progress).await.context("fsck");
    meta.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&report, args.repair))?);
    } else {
        print!("{}", table(&report, args.repair));
    }
    Ok(report)
}

fn progress_line(p: &FsckProgress) -> String {
    let secs = p.elapsed.as_secs_f64();
    match p.phase {
        FsckPhase::Listing => "listing storage and the database's blobs".to_owned(),
        FsckPhase::Repairing => format!("deleting orphans: {}/{}", p.done, p.total),
        FsckPhase::Checking => {
            let pct = if p.total == 0 { 100.0 } else { p.done as f64 * 100.0 / p.total as f64 };
            let mut line = format!("checked {}/{} blobs ({pct:.0}%)", p.done, p.total);
            if p.bytes_total > 0 {
                line += &format!(", re-hashed {} of {} at {}/s", human(p.bytes), human(p.bytes_total), human(rate(p.bytes, secs) as u64));
            }
            // By bytes while there is hashing left (it dominates), by count otherwise.
            let eta = if p.bytes > 0 && p.bytes < p.bytes_total {
                Some((p.bytes_total - p.bytes) as f64 / rate(p.bytes, secs))
            } else if p.done > 0 && p.done < p.total {
                Some((p.total - p.done) as f64 * secs / p.done as f64)
            } else {
                None
            };
            if let Some(eta) = eta.filter(|e| e.is_finite()) {
                line += &format!(", ETA {}", eta_text(eta));
            }
            line
        }
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

fn eta_text(secs: f64) -> String {
    let s = secs.ceil() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Decimal megabytes per second of the re-hash.
fn mb_per_s(r: &FsckReport) -> f64 {
    rate(r.rehashed_bytes, r.check_seconds) / 1e6
}

fn is_corrupt(d: &Damage) -> bool {
    matches!(d, Damage::Corrupt { .. })
}
fn is_missing(d: &Damage) -> bool {
    matches!(d, Damage::Missing)
}
fn is_wrong_size(d: &Damage) -> bool {
    matches!(d, Damage::WrongSize { .. })
}
fn is_unreadable(d: &Damage) -> bool {
    matches!(d, Damage::Unreadable { .. })
}

/// How to fix a damaged blob, once per report.
const DAMAGE_HINT: &str = "\
No other copy of a damaged blob's bytes is left in this registry, and pushing the image again
does not repair it while the blob stays recorded (the push is deduplicated against the
database). To fix one, either put its original bytes back in storage under its digest (from a
backup, or from another registry that holds the image), or delete every manifest listed with
it, let garbage collection forget it (berth gc, once gc.grace has passed since its last push or
mount), and push the images again.
";

fn table(r: &FsckReport, repair: bool) -> String {
    let mut out = String::new();
    // Grouped by kind, the worst first.
    let rank = |d: &Damage| match d {
        Damage::Corrupt { .. } => 0,
        Damage::Missing => 1,
        Damage::WrongSize { .. } => 2,
        Damage::Unreadable { .. } => 3,
    };
    let mut damaged: Vec<&DamagedBlob> = r.damaged.iter().collect();
    damaged.sort_by_key(|d| rank(&d.damage));
    for d in damaged {
        out += &damaged_line(d);
        for u in d.used_by.iter().take(USES_SHOWN) {
            out += &match (&u.manifest, &u.via) {
                (Some(m), None) => format!("    used by {}@{m}{}\n", u.repository, tags(&u.tags)),
                (Some(m), Some(child)) => format!("    used by {}@{m}{}, an index holding {child}\n", u.repository, tags(&u.tags)),
                (None, _) => format!("    linked to {} (no manifest references it)\n", u.repository),
            };
        }
        if d.used_by.len() > USES_SHOWN {
            out += &format!("    ... and {} more (--json lists all)\n", d.used_by.len() - USES_SHOWN);
        }
        if d.used_by.is_empty() {
            out += "    used by nothing (garbage collection will forget it)\n";
        }
    }
    for o in &r.orphans {
        let age = o.age_seconds.map_or_else(|| "age unknown".to_owned(), |s| format!("{} old", humantime_approx(s)));
        let what = match o.state {
            OrphanState::Removed => "removed".to_owned(),
            OrphanState::Found if repair => "not removed".to_owned(),
            OrphanState::Found => "not removed (--repair deletes it)".to_owned(),
            OrphanState::Young => format!("kept: younger than {}, maybe a push about to record it", humantime(ORPHAN_MIN_AGE)),
            OrphanState::AgeUnknown => "kept: storage cannot tell its age".to_owned(),
            OrphanState::Failed => format!("FAILED to remove: {}", o.error.as_deref().unwrap_or("?")),
        };
        out += &format!("ORPHAN      {} ({}, {age}): {what}\n", o.digest, human(o.size));
    }
    if let Some(why) = &r.repair_refused {
        out += &format!("REPAIR REFUSED: {why}\n");
    }
    if !out.is_empty() {
        out += "\n";
    }
    let rows: Vec<(&str, String)> = vec![
        ("blobs recorded / stored", format!("{} / {}", r.recorded, r.stored)),
        ("checked (presence, size)", r.checked.to_string()),
        ("re-hashed", format!("{} blobs, {} in {:.2} s ({:.1} MB/s)", r.rehashed, human(r.rehashed_bytes), r.check_seconds, mb_per_s(r))),
        ("corrupt", r.damaged_count(is_corrupt).to_string()),
        ("missing", r.damaged_count(is_missing).to_string()),
        ("wrong size", r.damaged_count(is_wrong_size).to_string()),
        ("unreadable", r.damaged_count(is_unreadable).to_string()),
        (
            "orphans found / removed",
            format!(
                "{} / {}{}",
                r.orphans.len(),
                r.orphan_count(OrphanState::Removed),
                match r.orphan_count(OrphanState::Young) {
                    0 => String::new(),
                    n => format!(" ({n} younger than {} kept)", humantime(ORPHAN_MIN_AGE)),
                }
            ),
        ),
    ];
    out += "berth fsck summary\n";
    for (k, v) in rows {
        out += &format!("  {k:<26}{v}\n");
    }
    if r.collected_meanwhile > 0 {
        out += &format!("  {:<26}{}\n", "collected during the check", r.collected_meanwhile);
    }
    out += &match r.problems() {
        0 => "result: clean\n".to_owned(),
        n => format!("result: {n} problem{} left\n", if n == 1 { "" } else { "s" }),
    };
    if !r.damaged.is_empty() {
        out += "\n";
        out += DAMAGE_HINT;
    }
    if !repair && r.orphan_count(OrphanState::Found) > 0 {
        out += &format!("\nberth fsck --repair deletes orphans older than {} (after checking again that no row records them).\n", humantime(ORPHAN_MIN_AGE));
    }
    out
}

fn damaged_line(d: &DamagedBlob) -> String {
    match &d.damage {
        Damage::Corrupt { actual } => format!("CORRUPT     {} ({}): its bytes hash to {actual}\n", d.digest, human(d.size)),
        Damage::Missing => format!("MISSING     {} ({}): recorded, but not in storage\n", d.digest, human(d.size)),
        Damage::WrongSize { stored } => format!("WRONG SIZE  {}: recorded {} bytes, storage holds {stored}\n", d.digest, d.size),
        Damage::Unreadable { error } => format!("UNREADABLE  {} ({}): {error}\n", d.digest, human(d.size)),
    }
}

fn tags(t: &[String]) -> String {
    if t.is_empty() { " (untagged)".to_owned() } else { format!(" (tags: {})", t.join(", ")) }
}

fn humantime_approx(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3600 => format!("{}h", s / 3600),
        s if s >= 120 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn json(r: &FsckReport, repair: bool) -> serde_json::Value {
    serde_json::json!({
        "clean": r.problems() == 0,
        "problems": r.problems(),
        "repair": repair,
        "summary": {
            "recorded": r.recorded,
            "stored": r.stored,
            "checked": r.checked,
            "rehashed": r.rehashed,
            "rehashed_bytes": r.rehashed_bytes,
            "seconds": r.check_seconds,
            "mb_per_s": mb_per_s(r),
            "corrupt": r.damaged_count(is_corrupt),
            "missing": r.damaged_count(is_missing),
            "wrong_size": r.damaged_count(is_wrong_size),
            "unreadable": r.damaged_count(is_unreadable),
            "orphans_found": r.orphans.len(),
            "orphans_removed": r.orphan_count(OrphanState::Removed),
            "orphans_young": r.orphan_count(OrphanState::Young),
            "collected_meanwhile": r.collected_meanwhile,
        },
        "damaged": r.damaged,
        "orphans": r.orphans,
        "repair_refused": r.repair_refused,
    })
}
